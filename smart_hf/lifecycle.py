"""The SMART lifecycle on a prepared model: temperature, stages, hardening and squashing.

``prepare_model`` -> (``set_mode(model, "dense")`` for a dense pre-train) -> ``update_temperature`` every optimizer
step of the structure search -> ``harden`` (binary masks, frozen scores) -> fine-tune with ``apply_hard_masks_``
after every optimizer step -> ``squash`` (a plain transformers model with zeros baked in); a loop with its own
optimizer calls `zero_pruned_optimizer_state` right after hardening. `smart_hf.SmartStages` (``smart_hf/stages.py``) runs these in order
around the optimizer steps of any loop; `SmartTrainer`, `SmartCallback` and the benchmarks go through it.
"""

from __future__ import annotations

import logging
import math
import numbers

import torch
from torch import nn

from .constants import (
    CALIBRATED_SCORE_INITS,
    MASK_NAME,
    SCORE_LR_NM,
    SCORE_LR_STRUCTURED,
    SCORES_NAME,
    STATE_MODULE_NAME,
)
from .core.budget import budget_progress
from .core.schedule import DynamicState, dynamic_update, temperature_at
from .coupled_owners import coupled_records
from .distributed import is_sharded, whole_parameters, zero_own_rows_
from .fisher import unit_fisher
from .layers import detach_smart_layer
from .metadata import PruningMetadata, SparsityReport, build
from .metadata import write as write_metadata
from .report import sparsity_report
from .scores import collect_activation_stats, init_scores_
from .state import MODES, SmartState

logger = logging.getLogger(__name__)

__all__ = [
    "apply_hard_masks_",
    "get_smart_state",
    "harden",
    "is_prepared",
    "reinit_scores",
    "score_parameter_groups",
    "set_mode",
    "set_temperature",
    "squash",
    "update_temperature",
    "zero_pruned_optimizer_state",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP/accelerate wrappers (followed via ``.module`` until one holds the SMART state)."""
    while not hasattr(model, STATE_MODULE_NAME) and hasattr(model, "module"):
        if type(model).__name__ == "FullyShardedDataParallel":
            raise ValueError(
                "smart_hf does not support FSDP1 (FullyShardedDataParallel): its flat parameters hide the per-layer "
                "weights and scores that masks are applied to. Use FSDP2: fsdp_version: 2 in the accelerate config "
                "(recipes/accelerate/fsdp.yaml) or torch.distributed.fsdp.fully_shard."
            )
        model = model.module
    return model


def is_prepared(model: nn.Module) -> bool:
    """True when ``model`` (or the model inside DDP/accelerate wrappers) is prepared for SMART (not yet squashed).

    Args:
        model: any model, possibly wrapped by DDP / accelerate.

    Returns:
        Whether it carries a `SmartState`.

    Raises:
        ValueError: the model is wrapped by FSDP1 (`unwrap_model`).
    """
    return isinstance(getattr(unwrap_model(model), STATE_MODULE_NAME, None), SmartState)


def get_smart_state(model: nn.Module) -> SmartState:
    """The `SmartState` of a prepared model (unwraps DDP/accelerate wrappers via ``.module``).

    Args:
        model: a prepared model, possibly wrapped by DDP / accelerate.

    Returns:
        Its `SmartState`.

    Raises:
        ValueError: the model is not prepared (or is wrapped by FSDP1).
    """
    state = getattr(unwrap_model(model), STATE_MODULE_NAME, None)
    if not isinstance(state, SmartState):
        raise ValueError(
            "model is not prepared for SMART; call smart_hf.prepare_model(model, SmartConfig(...)) first."
        )
    return state


def set_temperature(model: nn.Module, tau: float) -> None:
    """Set the temperature used by the next soft forward (at least ``MIN_TEMPERATURE`` = 1e-6, as the schedule).

    Args:
        model: a prepared model.
        tau: the temperature, a finite number > 0.

    Raises:
        ValueError: ``tau`` is not a finite positive number, or the model is not prepared.
    """
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {tau!r}; e.g. 1.0 early, 1e-4 at the end.")
    get_smart_state(model).set_temperature(tau)


def set_mode(model: nn.Module, mode: str) -> None:
    """``"dense"`` (masks off: dense pre-training), ``"soft"`` (structure search) or ``"hard"`` (use `harden`).

    Args:
        model: a prepared model.
        mode: ``"dense"`` or ``"soft"``.

    Raises:
        ValueError: an unknown mode, ``"hard"`` (call `harden`), a model already hardened, or not prepared.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}.")
    if mode == "hard":
        raise ValueError("use smart_hf.harden(model) to enter the hard-mask stage (it computes the masks).")
    state = get_smart_state(model)
    if state.is_hard:
        raise ValueError(
            "masks are already hardened; the hard stage is final (prepare a fresh model to search again)."
        )
    state.set_mode(mode)


def update_temperature(model: nn.Module, step: int, total_steps: int) -> float:
    """Advance the temperature schedule to optimizer ``step`` of a search lasting ``total_steps``; returns tau.

    For ``temperature_schedule="dynamic"`` this also runs the feedback rule on the fractionality of the last soft
    forward, and when it cuts tau it jitters every score by ``dynamic_jitter * tau`` with a generator seeded by
    ``(seed, step)`` -- identical on every rank. It also advances the budget anneal (``budget_anneal``): the soft
    budget falls from keeping everything to the target over that share of the search (docs/method.md §8).

    Args:
        model: a prepared model.
        step: the optimizer step within the search (0-based).
        total_steps: the search's length in optimizer steps.

    Returns:
        The temperature set (floored at ``MIN_TEMPERATURE``).

    Raises:
        ValueError: the model is not prepared.
    """
    state = get_smart_state(model)
    cfg = state.smart_config
    progress = budget_progress(step, total_steps, cfg.budget_anneal)
    state.set_budget_progress(progress)
    tau_start = 1.0 if cfg.tau_start is None else cfg.tau_start  # auto: relative to each group's own start
    tau = temperature_at(step, total_steps, tau_start, cfg.tau_end, cfg.temperature_schedule)
    # a mask that gets *less* binary while the budget anneals is not stuck: the dynamic rule waits for the target
    if cfg.temperature_schedule == "dynamic" and progress >= 1.0:
        tau *= _dynamic_step(state, cfg, step)
    elif cfg.temperature_schedule == "dynamic":
        tau *= float(state.tau_scale)
    state.set_temperature(tau)  # floors at MIN_TEMPERATURE
    return state.tau


def _dynamic_step(state: SmartState, cfg, step: int) -> float:
    frac = state.fractionality()
    if frac != frac:  # NaN: no soft forward with gradients yet
        return float(state.tau_scale)
    before = DynamicState(float(state.tau_scale), float(state.ref_fractionality), int(state.ref_step))
    after, cut = dynamic_update(before, step, frac, cfg.dynamic_window, cfg.dynamic_min_decrease, cfg.dynamic_cut)
    state.tau_scale.fill_(after.scale)
    state.ref_fractionality.fill_(after.ref_fractionality)
    state.ref_step.fill_(after.ref_step)
    if cut and cfg.dynamic_jitter > 0:
        _jitter_scores_(state, cfg.dynamic_jitter * state.tau, seed=int(cfg.score_seed) * 1_000_003 + int(step))
        logger.info("smart_hf: mask stuck at fractionality %.4f; tau scale cut to %.3g", frac, after.scale)
    return after.scale


@torch.no_grad()
def _jitter_scores_(state: SmartState, amplitude: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)  # the same seed on every rank: the same jitter everywhere
    with whole_parameters(state.layers, (SCORES_NAME,), write_back=(SCORES_NAME,)):
        for layer in state.layers:
            noise = torch.randn(layer.smart_scores.shape, generator=generator)
            scale = state.group_temperature(layer._smart_slot[0]) / state.tau  # in the group's own temperature
            layer.smart_scores.add_(amplitude * scale * noise.to(layer.smart_scores.device))


def score_parameter_groups(model: nn.Module, lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups for the mask scores: no weight decay, and one learning rate per kind of group.

    ``lr=None`` (the default of `SmartTrainingArguments.score_learning_rate`): ``SCORE_LR_NM`` (0.2) for N:M groups
    and ``SCORE_LR_STRUCTURED`` (1.0) for blocks, channels and coupled units, as a step of the start logits
    ``m / tau0``: the stored scores are in those units with the default ``score_scale="start_temperature"``; with a
    fixed ``tau_start`` the rate is multiplied by it, with ``score_scale="standardized"`` by each group's start
    temperature as calibrated when this is called. A number is used as is for every score (no conversion).

    Add the groups to the optimizer with the weights' groups, e.g.
    ``AdamW(weight_groups + score_parameter_groups(model))``; `SmartTrainer` does this itself.

    Args:
        model: a prepared model.
        lr: one learning rate for every score, or ``None`` for the per-kind defaults described above.

    Returns:
        ``[{"params", "lr", "weight_decay": 0.0}]``, one group per learning rate (trainable scores only).

    Raises:
        ValueError: the model is not prepared.
    """
    state = get_smart_state(model)
    cfg = state.smart_config
    buckets: dict[float, list] = {}
    for gi, group in enumerate(state.groups):
        if lr is not None:
            rate = float(lr)
        else:
            rate = SCORE_LR_NM if group.kind == "nm" else SCORE_LR_STRUCTURED
            if cfg.tau_start is not None:
                rate *= float(cfg.tau_start)
            elif cfg.score_scale == "standardized":
                rate *= state.group_temperature(gi) / state.tau
        trainable = [layer.smart_scores for layer in group.layers if layer.smart_scores.requires_grad]
        buckets.setdefault(rate, []).extend(trainable)
    return [{"params": params, "lr": rate, "weight_decay": 0.0} for rate, params in buckets.items() if params]


def reinit_scores(model: nn.Module, calibration_data=None) -> None:
    """Re-initialise the scores from the current weights (e.g. after a dense pre-train), per ``score_init``.

    Args:
        model: a prepared model.
        calibration_data: input batches, needed for ``score_init="activation"`` / ``"fisher"`` (the calibration
            pass runs on the dense network).

    Raises:
        ValueError: ``score_init="activation"`` / ``"fisher"`` without ``calibration_data``, or the model is not
            prepared.
    """
    state = get_smart_state(model)
    cfg = state.smart_config
    act_stats = None
    if cfg.score_init in CALIBRATED_SCORE_INITS:
        if calibration_data is None:
            raise ValueError(f"score_init={cfg.score_init!r} needs calibration_data to re-initialise the scores.")
        previous = state.mode_name
        state.set_mode("dense")  # calibrate on the dense network, not a half-masked one
        try:
            collect = unit_fisher if cfg.score_init == "fisher" else collect_activation_stats
            act_stats = collect(model, state.layers, calibration_data, cfg.calibration_batches)
        finally:
            state.set_mode(previous)
    # After the calibration forwards: FSDP2 re-registers its own parameters around every forward.
    with whole_parameters(state.layers, ("weight", SCORES_NAME), write_back=(SCORES_NAME,)):
        init_scores_(state, cfg, act_stats)
    for group in state.groups:
        group.shift_warm_start = None


@torch.no_grad()
def harden(model: nn.Module) -> None:
    """Freeze binary masks (`hard_topk` of the scores, same budgets), stop score gradients, zero pruned weights.

    A model already hardened is left as it is.

    Args:
        model: a prepared model.

    Raises:
        ValueError: the model is not prepared.
    """
    state = get_smart_state(model)
    if state.is_hard:
        return
    for gi, group in enumerate(state.groups):
        for layer, mask in zip(group.layers, state.hard_group_masks(gi)):
            getattr(layer, MASK_NAME).copy_(mask)
    for layer in state.layers:
        layer.smart_scores.requires_grad_(False)
    state.set_mode("hard")
    apply_hard_masks_(model)


@torch.no_grad()
def zero_pruned_optimizer_state(model: nn.Module, optimizer) -> None:
    """Zero the optimizer's per-weight state (Adam's moments) at the pruned entries of every SMART weight.

    Call it right after `harden` (`SmartStages` does): a moment left over from the search would keep pushing a
    pruned weight after the mask froze, only to be zeroed again by `apply_hard_masks_` every step.

    Args:
        model: a prepared, hardened model (DDP / accelerate wrappers are unwrapped).
        optimizer: a ``torch.optim.Optimizer`` (an accelerate-wrapped one is unwrapped via ``.optimizer``), or
            ``None`` (nothing to zero). State tensors shaped like the weight are masked; others (step counts) are
            left alone.

    Raises:
        ValueError: the model is not prepared.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    if optimizer is None:
        return
    for layer in get_smart_state(model).layers:
        moments = optimizer.state.get(layer.weight, {})
        for value in moments.values():
            if torch.is_tensor(value) and value.shape == layer.weight.shape:
                value.copy_(layer.smart_layout.apply(value, layer.smart_mask))


@torch.no_grad()
def apply_hard_masks_(model: nn.Module) -> None:
    """Set every pruned weight to exactly zero in place (call after each fine-tune optimizer step).

    It also records that the weights are clean, so the following forwards use each weight as is and mask only its
    gradient (`SmartLayerMixin.smart_weight`); until it is called again after an optimizer step (or any write to a
    weight or mask), layers multiply the weight by the mask, so skipping it never computes with pruned weights.

    Args:
        model: a prepared, hardened model (an FSDP2-sharded one zeroes each rank's own rows).

    Raises:
        ValueError: the masks are not hardened, the model is not prepared, or a coupled model is FSDP-sharded.
    """
    state = get_smart_state(model)
    if not state.is_hard:
        raise ValueError("apply_hard_masks_ needs hardened masks; call smart_hf.harden(model) first.")
    for layer in state.layers:
        if is_sharded(layer.weight) and "_smart_coupled" in layer.__dict__:
            # the owner zeroes its partners' rows in other (differently sharded) layers: not done shard-wise yet
            raise ValueError(
                "pattern='coupled' does not support FSDP-sharded models yet (the pruned units' rows in the other "
                "layers of a coupled set would not be zeroed); train it with DDP or in one process, or use "
                "pattern='channel' under FSDP."
            )
        if is_sharded(layer.weight):  # FSDP2: each rank zeroes the pruned entries of its own rows
            zero_own_rows_(layer.weight, _pruned_entries(layer))
        else:
            layer.smart_apply_hard_mask_()


def _pruned_entries(layer: nn.Module) -> torch.Tensor:
    """Boolean ``True`` at the pruned entries of the (whole) weight, built once per frozen mask: the per-step
    re-masking of a shard then only selects its rows of it."""
    cached = layer.__dict__.get("_smart_pruned_entries")
    if cached is None or not torch.equal(cached[0], layer.smart_mask):
        pruned = layer.smart_layout.expand(layer.smart_mask == 0).expand(layer.weight.shape)
        cached = (layer.smart_mask.clone(), pruned)
        layer.__dict__["_smart_pruned_entries"] = cached
    return cached[1]


@torch.no_grad()
def squash(model: nn.Module) -> nn.Module:
    """Bake the hard masks into the weights and remove every SMART addition, in place.

    Hardens first if needed. Afterwards the model has its original module classes and state-dict keys, so
    ``save_pretrained`` writes a checkpoint that stock ``from_pretrained`` loads; ``model.config.smart_hf`` records
    the pattern and per-layer layout so `sparsity_report` can still check it.

    Args:
        model: a prepared model (not sharded).

    Returns:
        ``model``, squashed.

    Raises:
        ValueError: the model is not prepared, or is FSDP-sharded.
    """
    state = get_smart_state(model)
    if any(is_sharded(layer.weight) for layer in state.layers):
        raise ValueError(
            "squash needs whole parameters, but this model is sharded by FSDP; save with SmartTrainer.save_model "
            "(it gathers a full state dict first) or squash an unsharded copy."
        )
    harden(model)
    apply_hard_masks_(model)
    metadata, _report = pruning_metadata(state)
    for layer in state.layers:
        detach_smart_layer(layer)
    for handle in state.hook_handles:
        handle.remove()
    delattr(model, STATE_MODULE_NAME)
    if getattr(model, "config", None) is not None:
        write_metadata(model, metadata)
    return model


def pruning_metadata(state: SmartState) -> tuple[PruningMetadata, SparsityReport]:
    """What a pruned artifact records about itself (``config.smart_hf``, see `smart_hf.metadata`) and the report
    it was built from (what ``smart_sparsity.json`` holds)."""
    report = sparsity_report(state)
    metadata = build(state.smart_config.to_dict(), report)
    records = coupled_records(state.layers)
    if records:  # the sets a check or `slim` must see whole (the partners are not SMART layers)
        metadata["coupled"] = records
    speed = getattr(state, "speed_target", None)
    if speed:  # the solved time budget, so that `check_sparsity` can verify a squashed model against it
        metadata["speed_target"] = {k: v for k, v in speed.items() if k != "unit_cost_ns"}
    return metadata, report
