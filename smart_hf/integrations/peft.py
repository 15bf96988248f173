"""PEFT (LoRA) with SMART: the orders that compose, and a merge that keeps the pruned base exactly sparse.

Supported (each is tested in ``tests/integrations/test_peft.py``):

1. **Prune the base while LoRA trains.** ``prepare_model(base, SmartConfig(...))`` first, then this module's
   `get_peft_model` (not PEFT's: PEFT freezes every parameter but the adapters, the mask scores included), then
   train with `SmartTrainer` or `SmartCallback`. The base weights are masked and searched; the adapters train dense
   and are never pruned (they are added after ``prepare_model`` chose its targets).
2. **LoRA on a pruned model.** A hardened prepared model, or a pruned artifact loaded with stock
   ``from_pretrained``, plus LoRA (this `get_peft_model` or PEFT's): the base masks are fixed, the adapters train.
3. **Merge keeping the sparsity.** `merge_and_unload` merges the LoRA updates into the base, zeroes every pruned
   weight again (the prepared model's hard masks; for a loaded artifact, the zeros of its pruned layers) and reports
   how much of the update the mask removed. ``save_pruned(merged, folder)`` then writes an artifact that
   `check_sparsity` accepts.

Every other order fails with a ValueError naming the fix: ``prepare_model`` on a model that already has adapters
(they would be pruned), a structure search whose scores PEFT froze, ``save_pruned`` of an unmerged PEFT model,
``save_pruned`` after PEFT's own ``merge_and_unload`` wrote updates into pruned weights, and adapter types other than
LoRA (their merges are not a plain weight update).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..lifecycle import apply_hard_masks_, get_smart_state, is_prepared, unwrap_model
from ..metadata import read as read_metadata

try:  # an optional dependency: only the functions below need it
    import peft
except ImportError:  # pragma: no cover
    peft = None

logger = logging.getLogger(__name__)

__all__ = ["get_peft_model", "merge_and_unload"]


def _require_peft() -> None:
    if peft is None:  # pragma: no cover
        raise ImportError("smart_hf.integrations.peft needs the peft package: pip install peft")


def get_peft_model(model: nn.Module, peft_config, adapter_name: str = "default", **kwargs):
    """``peft.get_peft_model`` for a model prepared with `prepare_model`: SMART keeps searching the base's masks
    (the mask scores stay trainable) while the LoRA adapters train. Only LoRA without DoRA is accepted, and
    ``modules_to_save`` may not name a pruned layer (PEFT would train a copy that the masks do not govern).

    Args:
        model: a model prepared with `prepare_model` (searching or hardened).
        peft_config: a ``peft.LoraConfig`` without ``use_dora``.
        adapter_name: the adapter's name, as in PEFT.
        **kwargs: passed on to ``peft.get_peft_model``.

    Returns:
        The PEFT model; while the search runs, its mask scores stay trainable.

    Raises:
        ImportError: peft is not installed.
        ValueError: ``model`` is not prepared, ``peft_config`` is not LoRA (or uses DoRA), or its
            ``modules_to_save`` names a pruned layer.
    """
    _require_peft()
    state = get_smart_state(model)
    if not isinstance(peft_config, peft.LoraConfig) or getattr(peft_config, "use_dora", False):
        raise ValueError(
            f"smart_hf composes with LoRA (peft.LoraConfig without use_dora), got {type(peft_config).__name__}"
            f"{' with use_dora=True' if getattr(peft_config, 'use_dora', False) else ''}: other adapters' merges are "
            "not a plain weight update that the masks can be re-applied to. Use LoraConfig(use_dora=False)."
        )
    pruned = set(state.targeted_module_names)
    saved = [m for m in peft_config.modules_to_save or [] if any(n == m or n.endswith("." + m) for n in pruned)]
    if saved:
        raise ValueError(
            f"modules_to_save={saved} names layers SMART prunes; PEFT would train an unmasked copy of them. "
            "Remove them from modules_to_save (LoRA target_modules may name them)."
        )
    peft_model = peft.get_peft_model(model, peft_config, adapter_name=adapter_name, **kwargs)
    if not state.is_hard:  # PEFT froze everything but the adapters; the search needs its scores
        for layer in state.layers:
            layer.smart_scores.requires_grad_(True)
    return peft_model


def merge_and_unload(peft_model, return_report: bool = False, **merge_kwargs):
    """Merge the LoRA adapters into a pruned base and keep its sparsity exact.

    ``peft_model``: a PEFT model whose base is a hardened prepared model (pruned weights are those of its hard masks)
    or a pruned artifact loaded with ``from_pretrained`` (pruned weights are the zeros of the layers its
    ``config.smart_hf`` lists). Every pruned weight is zero again after the merge; the part of the update that fell
    on them is dropped and measured: ``removed_fraction = ||dW * (1 - M)||_F^2 / ||dW||_F^2`` per layer and in total
    (logged at INFO).

    Args:
        peft_model: the PEFT model (from `get_peft_model` or PEFT's own).
        return_report: also return the report of the update the masks removed.
        **merge_kwargs: passed on to PEFT's ``merge_and_unload`` (``safe_merge``, ``adapter_names``).

    Returns:
        The merged base model, or ``(model, report)`` with ``return_report=True``; the report holds
        ``removed_fraction`` (in total), ``layers`` (the fraction per layer), ``update_norm`` and ``removed_norm``.

    Raises:
        ImportError: peft is not installed.
        ValueError: ``peft_model`` is no PEFT model, its prepared base is still searching (not hardened), or its
            base was not pruned by smart_hf.
    """
    _require_peft()
    if not callable(getattr(peft_model, "get_base_model", None)):
        raise ValueError(
            f"merge_and_unload needs a PEFT model (from get_peft_model), got {type(peft_model).__name__}; a model "
            "without adapters has nothing to merge: save it with smart_hf.save_pruned."
        )
    base = peft_model.get_base_model()
    kept = _kept_entries(base)
    report = _removed_update(base, kept)
    merged = peft_model.merge_and_unload(**merge_kwargs)
    _rezero(merged, kept)
    logger.info(
        "smart_hf: merged LoRA into the pruned base; the masks removed %.2f%% of the update's energy (%d layers)",
        100 * report["removed_fraction"],
        len(report["layers"]),
    )
    return (merged, report) if return_report else merged


def _kept_entries(base: nn.Module) -> dict[str, torch.Tensor | None]:
    """Pruned layer name -> boolean ``True`` at the weights that stay (``None``: the prepared model's own masks)."""
    if is_prepared(base):
        state = get_smart_state(base)
        if not state.is_hard:
            raise ValueError(
                "merge_and_unload needs final masks, but the structure search is still running; merge after training "
                "(SmartCallback and SmartTrainer harden at the end) or call smart_hf.harden(model) first."
            )
        return {name: None for name in state.targeted_module_names}
    layers = (read_metadata(base) or {}).get("layers")
    if not layers:
        raise ValueError(
            "merge_and_unload needs a base pruned by smart_hf: a model prepared with prepare_model (and hardened) or "
            "a pruned artifact loaded with from_pretrained (its config.json has a smart_hf entry); for any other "
            "model use PEFT's own merge_and_unload."
        )
    modules = dict(base.named_modules())
    return {name: _base_layer(modules[name]).weight.detach() != 0 for name in layers if name in modules}


def _base_layer(module: nn.Module) -> nn.Module:
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


@torch.no_grad()
def _removed_update(base: nn.Module, kept: dict) -> dict:
    """How much of each LoRA update falls on pruned weights (before merging, from PEFT's ``get_delta_weight``)."""
    modules, layers = dict(base.named_modules()), {}
    removed_total = update_total = 0.0
    for name in kept:
        module = modules.get(name)
        if module is None or not callable(getattr(module, "get_delta_weight", None)):
            continue  # no adapter on this pruned layer
        base_layer = module.get_base_layer()
        adapters = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
        if not adapters:
            continue
        delta = sum(module.get_delta_weight(a).float() for a in adapters)
        keep = kept[name]
        kept_part = base_layer.smart_layout.apply(delta, base_layer.smart_mask) if keep is None else delta * keep
        removed, update = float((delta - kept_part).square().sum()), float(delta.square().sum())
        layers[name] = removed / update if update > 0 else 0.0
        removed_total, update_total = removed_total + removed, update_total + update
    return {
        "layers": layers,
        "removed_fraction": removed_total / update_total if update_total > 0 else 0.0,
        "update_norm": update_total**0.5,
        "removed_norm": removed_total**0.5,
    }


@torch.no_grad()
def _rezero(merged: nn.Module, kept: dict) -> None:
    if is_prepared(merged):
        apply_hard_masks_(merged)
        return
    modules = dict(unwrap_model(merged).named_modules())
    for name, keep in kept.items():
        modules[name].weight.mul_(keep.to(modules[name].weight.dtype))
