"""Physically smaller models: remove pruned FFN channels, attention heads and CNN chain channels (`slim`), and load
any pruned artifact back (`load_slim`). `api` plans and applies, `ffn` / `heads` / `cnn` know one kind of unit each,
`surgery` builds the smaller modules, `load` rebuilds per-layer slim models from their recorded sizes, `portable`
makes per-layer slim models loadable by stock transformers (``trust_remote_code=True``, the static file in
``remote/``), `describe` says what slimming removed."""

from .api import MODES, slim, slimmed_widths
from .describe import slim_summary_line
from .ffn import find_ffn_pairs
from .heads import head_pruning_overrides
from .load import auto_model_class, load_config, load_slim

__all__ = [
    "MODES",
    "auto_model_class",
    "find_ffn_pairs",
    "head_pruning_overrides",
    "load_config",
    "load_slim",
    "slim",
    "slim_summary_line",
    "slimmed_widths",
]
