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

import safetensors.torch
import torch
from torch import nn
from transformers.utils import SAFE_WEIGHTS_NAME

from ..config import SmartConfig
from ..constants import REPORT_NAME, first_items, is_smart_name
from ..distributed import has_sharded_parameters
from ..inject import adapter_module_names, prepare_model
from ..lifecycle import get_smart_state, is_prepared, pruning_metadata, unwrap_model
from ..metadata import PruningMetadata, slim_summary
from ..metadata import read as read_metadata
from ..metadata import write as write_metadata
from ..report import sparsity_report
from .atomic import staged_directory
from .card import metrics_from_log_history, write_model_card
from .invariants import refilled_layers
from .plots import save_plots as write_plots

logger = logging.getLogger(__name__)

__all__ = ["save_pruned", "save_state_dict", "squashed_state_dict", "unsharded_copy"]


@torch.no_grad()
def squashed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `squash` would produce, computed without touching ``model``.

    Uses the hard masks if the model is hardened, otherwise the masks `harden` would pick now.
    """
    state = get_smart_state(model)
    root = unwrap_model(model)
    out = {k: v for k, v in root.state_dict().items() if not is_smart_name(k)}
    masks = [m for index in range(len(state.groups)) for m in state.hard_group_masks(index)]
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
    command: list[str] | None = None,
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
    adapters = adapter_module_names(root)
    if adapters:
        raise ValueError(
            f"save_pruned got a model with PEFT adapters ({adapters[0]}, ...); merge them first, keeping the sparsity: "
            "merged = smart_hf.integrations.peft.merge_and_unload(peft_model); save_pruned(merged, folder). (To keep "
            "the adapter separate, save it with peft_model.save_pretrained.)"
        )
    if is_prepared(root):
        state = get_smart_state(root)
        metadata, report = pruning_metadata(state)
        smart_config = state.smart_config
    elif read_metadata(config):
        metadata, report = read_metadata(config), sparsity_report(root)
        smart_config = SmartConfig.from_dict(metadata["config"])
    else:
        raise ValueError(
            "save_pruned needs a model prepared with smart_hf.prepare_model, or a squashed SMART model "
            "(with config.smart_hf); for a plain model use model.save_pretrained."
        )
    _check_weights_obey_masks(report, metadata, is_prepared(root))
    # a kill mid-save leaves the previous artifact intact
    with staged_directory(output_dir, replace=replace_folder) as folder:
        _write_weights(root, config, metadata, folder)
        smart_config.save_pretrained(folder)
        with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        if processing_class is not None:
            processing_class.save_pretrained(folder)
        if model_card and config is not None:
            write_model_card(
                folder,
                config,
                metadata,
                report,
                metrics=metrics if metrics is not None else metrics_from_log_history(log_history),
                base_model=base_model,
                command=command,
            )
        if save_plots:
            write_plots(report, log_history or [], folder, stages)
    return str(output_dir)


def _check_weights_obey_masks(report: dict, metadata: PruningMetadata, prepared: bool) -> None:
    """Refuse to write an artifact whose report would disagree with its weights: non-zero weights in pruned units
    of a hardened model (PEFT's own merge_and_unload, or a training step not followed by apply_hard_masks_), or a
    squashed model whose zeros were refilled. Refused rather than repaired: re-masking would silently drop
    whatever update put the values there."""
    problems = [f"{row['name']}: {p}" for row in report["layers"] for p in row["problems"]]
    if not prepared:
        problems += refilled_layers(report["layers"], metadata)
    if problems:
        shown = first_items(problems)
        raise ValueError(
            f"save_pruned refuses to write weights that contradict the pruning masks ({shown}). A LoRA merge with "
            "PEFT's merge_and_unload, or a training step not followed by smart_hf.apply_hard_masks_, writes into "
            "pruned weights. Merge with smart_hf.integrations.peft.merge_and_unload (it re-applies the masks and "
            "reports what they removed), or zero them with smart_hf.apply_hard_masks_(model) (prepared model)."
        )


def _write_weights(root: nn.Module, config, metadata: PruningMetadata, folder: str) -> None:
    """``config.json`` (with the ``smart_hf`` entry, set only for the write) and the squashed / slim weights."""
    previous = read_metadata(config) if config is not None else None
    if config is not None:
        write_metadata(config, metadata)
    try:
        if is_prepared(root):
            root.save_pretrained(folder, state_dict=squashed_state_dict(root))
        elif (slim_summary(metadata) or {}).get("mode") == "per_layer":
            # a per-layer slim model's config cannot express its sizes: `load_slim` rebuilds them from the metadata
            root.config.architectures = [type(root).__name__]
            save_state_dict(root, folder)
            root.config.save_pretrained(folder)
        else:
            root.save_pretrained(folder)
    finally:
        if config is not None:
            write_metadata(config, previous)


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded, CPU) copy of an FSDP2-sharded prepared model on rank 0; ``None`` on the other ranks.

    Collective: every rank must call it. The full state dict is gathered with ``torch.distributed.checkpoint``
    (offloaded to CPU), and rank 0 rebuilds the model from its config, prepares it with the same `SmartConfig` and
    loads the state strictly -- so export code written for plain models (squashing, reports, cards) runs unchanged.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    base_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    config = model.config
    copy = base_class._from_config(config) if hasattr(base_class, "_from_config") else base_class(config)
    copy = prepare_model(copy, get_smart_state(model).smart_config)
    copy.load_state_dict(full, strict=True)
    return copy.eval()


def save_state_dict(model: nn.Module, output_dir: str | os.PathLike) -> None:
    """Write ``model.safetensors`` with the model's *own* state-dict keys (no renaming, unlike ``save_pretrained``).

    The one safetensors writer for files that are loaded back with a plain ``load_state_dict``: per-layer slim
    models (`load_slim`) and `SmartTrainer` checkpoints (``resume_from_checkpoint``). Tensors that share storage
    (tied embeddings) are cloned, since safetensors refuses shared storage.
    """
    os.makedirs(output_dir, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach()
        tensors[key] = value.clone().contiguous() if value.data_ptr() in seen else value.contiguous()
        seen.add(value.data_ptr())
    safetensors.torch.save_file(tensors, os.path.join(output_dir, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
