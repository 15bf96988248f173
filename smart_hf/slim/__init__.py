"""Physically smaller models: remove pruned FFN channels, attention heads and CNN chain channels (`slim`), and load
any pruned artifact back (`load_slim`). `api` plans and applies, `ffn` / `heads` / `cnn` know one kind of unit each,
`surgery` builds the smaller modules, `load` rebuilds per-layer slim models from their recorded sizes."""

from .api import MODES, slim, slimmed_widths
from .ffn import find_ffn_pairs
from .heads import head_pruning_overrides
from .load import auto_model_class, load_slim

__all__ = [
    "MODES",
    "auto_model_class",
    "find_ffn_pairs",
    "head_pruning_overrides",
    "load_slim",
    "slim",
    "slimmed_widths",
]
