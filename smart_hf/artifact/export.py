"""Writing a pruned model that stock transformers loads: squashed weights, ``smart_config.json``, a sparsity report,
a model card.

`save_pruned` works on a prepared model (or a squashed / slimmed one) without modifying or copying it: it builds the
squashed state dict (hard masks baked into the targeted weights, every ``smart_`` tensor dropped), whose keys are
exactly those of the original model, and lets ``save_pretrained`` write it. An FSDP2-sharded model is gathered into
that state dict directly (`squashed_state_dict`); rank 0 writes it through a weightless (meta-device) instance of
the model's own class. ``config.json`` gains a ``smart_hf`` entry (pattern, sparsity, per-layer
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
def squashed_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The state dict `squash` would produce, computed without touching ``model``.

    Uses the hard masks if the model is hardened, otherwise the masks `harden` would pick now. An FSDP2-sharded
    model's whole state dict is gathered (offloaded to CPU) with ``torch.distributed.checkpoint``.

    Args:
        model: a prepared model (plain, wrapped by DDP / accelerate, or sharded by FSDP2).

    Returns:
        The squashed state dict, keyed as the original model's; ``None`` on the ranks other than 0 of a sharded
        model (collective: every rank must call it).

    Raises:
        ValueError: the model is not prepared.
    """
    return _squashed_weights(unwrap_model(model), get_smart_state(model))


def _squashed_weights(root: nn.Module, state) -> dict[str, torch.Tensor] | None:
    """`squashed_state_dict` of the prepared model ``root`` whose `SmartState` is ``state``."""
    masks = [m for index in range(len(state.groups)) for m in state.hard_group_masks(index)]
    whole = _whole_state_dict(root)
    if whole is None:
        return None
    out = {k: v for k, v in whole.items() if not is_smart_name(k)}
    for name, layer, mask in zip(state.targeted_module_names, state.layers, masks):
        weight = out[f"{name}.weight"]
        out[f"{name}.weight"] = layer.smart_layout.apply(weight, mask.to(weight.device))
    return out


def _whole_state_dict(root: nn.Module) -> dict[str, torch.Tensor] | None:
    """``root.state_dict()``; for an FSDP2-sharded model the gathered whole one on rank 0 (CPU), ``None`` elsewhere."""
    if not has_sharded_parameters(root):
        return root.state_dict()
    import torch.distributed as dist  # only sharded models need torch.distributed (absent from some builds)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return whole if dist.get_rank() == 0 else None


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
    with matplotlib installed and ``save_plots``, PNG plots. The model is not modified.

    The write is atomic (`smart_hf.atomic.staged_directory`). An FSDP2-sharded prepared model is gathered into the
    squashed state dict directly: call it on every rank; rank 0 writes.

    Args:
        model: a prepared model (plain, wrapped by DDP / accelerate, or sharded by FSDP2), or a squashed / slimmed
            SMART model.
        output_dir: the artifact folder.
        processing_class: a tokenizer / image processor saved beside the model.
        log_history: the Trainer's log history (plots, and the card's default metrics).
        save_plots: write PNG plots (needs matplotlib).
        stages: the stage lengths the plots mark.
        metrics: ``{name: value}`` for the card; by default the last ``eval_*`` / ``dense_*`` values of
            ``log_history``.
        base_model: the Hub id that was pruned (default: from the config when it is a Hub id).
        model_card: write ``README.md``.
        replace_folder: ``output_dir`` holds only this artifact: it is swapped as one unit and files of an older
            artifact do not linger.
        command: the command line shown in the card.

    Returns:
        ``output_dir``.

    Raises:
        ValueError: the model carries PEFT adapters, is neither prepared nor a squashed SMART model, is sharded and
            no longer prepared, or holds weights that contradict its masks.
    """
    root, state, metadata, report, smart_config = _artifact_description(model)
    config = getattr(root, "config", None)
    _check_weights_obey_masks(report, metadata, state is not None)
    weights = None if state is None else _squashed_weights(root, state)  # collective under FSDP2
    if state is not None and weights is None:  # not rank 0: it took part in the gathers, rank 0 writes
        return str(output_dir)
    with staged_directory(output_dir, replace=replace_folder) as folder:  # a kill mid-save keeps the old artifact
        _write_weights(root, config, metadata, folder, weights)
        _write_side_files(folder, smart_config, report, processing_class)
        if model_card and config is not None:
            card_metrics = metrics if metrics is not None else metrics_from_log_history(log_history)
            write_model_card(
                folder, config, metadata, report, metrics=card_metrics, base_model=base_model, command=command
            )
        if save_plots:
            write_plots(report, log_history or [], folder, stages)
    return str(output_dir)


def _write_side_files(folder: str, smart_config: SmartConfig, report: dict, processing_class) -> None:
    """``smart_config.json``, the sparsity report and, when given, the tokenizer / image processor."""
    smart_config.save_pretrained(folder)
    with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    if processing_class is not None:
        processing_class.save_pretrained(folder)


def _artifact_description(model: nn.Module):
    """``(root, state, metadata, report, smart_config)`` of the model to save: ``root`` is the model inside its
    wrappers; the rest comes from its `SmartState` while prepared (``state`` is then set; collective under FSDP2),
    else from the ``config.smart_hf`` of a squashed model."""
    root = unwrap_model(model)
    adapters = adapter_module_names(root)
    if adapters:
        raise ValueError(
            f"save_pruned got a model with PEFT adapters ({adapters[0]}, ...); merge them first, keeping the sparsity: "
            "merged = smart_hf.integrations.peft.merge_and_unload(peft_model); save_pruned(merged, folder). (To keep "
            "the adapter separate, save it with peft_model.save_pretrained.)"
        )
    if is_prepared(root):
        state = get_smart_state(root)
        return (root, state, *pruning_metadata(state), state.smart_config)
    if has_sharded_parameters(root):
        raise ValueError(
            "save_pruned gathers an FSDP2-sharded model only while it is prepared (not squashed or slimmed); save "
            "it before squashing, or squash and save an unsharded model."
        )
    metadata = read_metadata(getattr(root, "config", None))
    if not metadata:
        raise ValueError(
            "save_pruned needs a model prepared with smart_hf.prepare_model, or a squashed SMART model "
            "(with config.smart_hf); for a plain model use model.save_pretrained."
        )
    return root, None, metadata, sparsity_report(root), SmartConfig.from_dict(metadata["config"])


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


def _write_weights(root: nn.Module, config, metadata: PruningMetadata, folder: str, squashed: dict | None):
    """``config.json`` (with the ``smart_hf`` entry, set only for the write) and the ``squashed`` weights of a
    prepared model, or a squashed / slim model's own."""
    previous = read_metadata(config) if config is not None else None
    if config is not None:
        write_metadata(config, metadata)
    try:
        if squashed is not None:
            _stock_writer(root, squashed).save_pretrained(folder, state_dict=squashed)
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


def _stock_writer(root: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """What writes ``state_dict`` with ``save_pretrained``: ``root`` itself, or for an FSDP2-sharded model a
    weightless (meta-device) instance of its own transformers class -- the sharded class would name itself in
    ``config.architectures``. Weights tied in the model are made one tensor in ``state_dict`` again (the gather
    copies them apart), so ``save_pretrained`` drops the duplicates as it does for the model itself."""
    if not has_sharded_parameters(root):
        return root
    from torch.distributed.fsdp import FSDPModule

    base_class = next(c for c in type(root).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        shell = base_class._from_config(root.config)
    first_key = {}
    for key, tensor in shell.state_dict(keep_vars=True).items():
        first = first_key.setdefault(id(tensor), key)
        if first != key and first in state_dict and key in state_dict:
            state_dict[key] = state_dict[first]
    return shell


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded, CPU) copy of an FSDP2-sharded prepared model on rank 0; ``None`` on the other ranks.

    Collective: every rank must call it. The full state dict is gathered with ``torch.distributed.checkpoint``
    (offloaded to CPU), and rank 0 rebuilds the model from its config, prepares it with the same `SmartConfig` and
    loads the state strictly. (`save_pruned` needs no copy: it gathers the squashed state dict directly.)

    Args:
        model: an FSDP2-sharded prepared model.

    Returns:
        The plain prepared copy on rank 0, ``None`` on the other ranks.
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
