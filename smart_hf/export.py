"""Writing a pruned model that stock transformers loads: squashed weights, ``smart_config.json``, a sparsity report,
a model card.

`save_pruned` works on a prepared model (or a squashed / slimmed one) without modifying or copying it: it builds the squashed state dict (hard
masks baked into the targeted weights, every ``smart_`` tensor dropped), whose keys are exactly those of the original
model, and lets ``save_pretrained`` write it. ``config.json`` gains a ``smart_hf`` entry (pattern, sparsity, per-layer
layout) that `sparsity_report` can check after loading.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from .atomic import staged_directory
from .constants import REPORT_NAME, is_smart_name
from .distributed import has_sharded_parameters, unsharded_copy
from .lifecycle import get_smart_state, pruning_metadata, unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["save_pruned", "squashed_state_dict"]


@torch.no_grad()
def squashed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `squash` would produce, computed without touching ``model``.

    Uses the hard masks if the model is hardened, otherwise the masks `harden` would pick now.
    """
    state = get_smart_state(model)
    root = unwrap_model(model)
    out = {k: v for k, v in root.state_dict().items() if not is_smart_name(k)}
    masks = [m for gi in range(len(state.groups)) for m in state.binary_group_masks(gi)]
    names = dict(zip(map(id, state.layers), state.targeted_module_names))
    for layer, mask in zip(state.layers, masks):
        key = f"{names[id(layer)]}.weight"
        out[key] = layer.smart_layout.apply(layer.weight.detach(), mask)
    return out


def save_pruned(
    model: nn.Module,
    output_dir: str | os.PathLike,
    processing_class=None,
    log_history=None,
    save_plots: bool = True,
    stages=None,
    metrics: dict | None = None,
    base_model: str | None = None,
    model_card: bool = True,
    replace_folder: bool = False,
) -> str:
    """Save a prepared (or squashed / slimmed) model as a stock-loadable pruned checkpoint plus ``smart_config.json``,
    the sparsity report (``smart_sparsity.json``), a model card (``README.md``, see `smart_hf.hub.model_card`) and,
    with matplotlib installed and ``save_plots``, PNG plots. Returns ``output_dir``. The model is not modified.

    ``metrics`` (``{name: value}``) go into the card; by default the last ``eval_*``/``dense_*`` values of
    ``log_history``. ``base_model``: the Hub id that was pruned (default: from the config when it is a Hub id).
    The write is atomic (`smart_hf.atomic.staged_directory`); ``replace_folder=True`` declares that ``output_dir``
    holds only this artifact, so it is swapped as one unit and files of an older artifact do not linger.
    An FSDP2-sharded model is gathered first: call it on every rank; rank 0 writes.
    """
    root = unwrap_model(model)
    if has_sharded_parameters(root):
        root = unsharded_copy(root)
        if root is None:  # not rank 0: it took part in the gather, rank 0 writes
            return str(output_dir)
    config = getattr(root, "config", None)
    if hasattr(root, "smart_state"):
        state = get_smart_state(root)
        metadata = pruning_metadata(state)
        smart_config = state.smart_config
    elif getattr(config, "smart_hf", None):
        from .config import SmartConfig
        from .report import sparsity_report

        metadata = {**config.smart_hf, "report": sparsity_report(root)}
        smart_config = SmartConfig.from_dict(config.smart_hf["config"])
    else:
        raise ValueError(
            "save_pruned needs a model prepared with smart_hf.prepare_model, or a squashed SMART model "
            "(with config.smart_hf); for a plain model use model.save_pretrained."
        )
    # a kill mid-save leaves the previous artifact intact
    with staged_directory(output_dir, replace=replace_folder) as folder:
        _write_weights(root, config, metadata, folder)
        smart_config.save_pretrained(folder)
        with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as fh:
            json.dump(metadata["report"], fh, indent=2)
        if processing_class is not None:
            processing_class.save_pretrained(folder)
        if model_card and config is not None:
            from .hub import metrics_from_log_history, write_model_card

            card_metadata = {k: v for k, v in metadata.items() if k != "report"}
            write_model_card(
                folder,
                config,
                card_metadata,
                metadata["report"],
                metrics=metrics if metrics is not None else metrics_from_log_history(log_history),
                base_model=base_model,
            )
        if save_plots:
            from .plots import save_plots as _save_plots

            _save_plots(metadata["report"], log_history or [], folder, stages)
    return str(output_dir)


def _write_weights(root: nn.Module, config, metadata: dict, folder: str) -> None:
    """``config.json`` (with the ``smart_hf`` entry, set only for the write) and the squashed / slim weights."""
    previous = getattr(config, "smart_hf", None) if config is not None else None
    if config is not None:
        config.smart_hf = {k: v for k, v in metadata.items() if k != "report"}
    try:
        if hasattr(root, "smart_state"):
            root.save_pretrained(folder, state_dict=squashed_state_dict(root))
        elif (metadata.get("slim") or {}).get("mode") == "per_layer":
            from .slimming import save_slim_weights

            save_slim_weights(root, folder)
        else:
            root.save_pretrained(folder)
    finally:
        if config is not None:
            if previous is None:
                del config.smart_hf
            else:
                config.smart_hf = previous
