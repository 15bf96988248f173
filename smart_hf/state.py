"""`SmartState`: the model-level SMART state -- buffers, mode, and the per-forward mask cache.

`SmartState` (registered as the sub-module ``smart_state`` of the prepared model) holds:

* buffers (checkpointed with the model, broadcast by DDP): ``temperature``, ``mode`` (0 dense, 1 soft search,
  2 hard), the dynamic rule's ``tau_scale`` / ``ref_fractionality`` / ``ref_step``, the per-group start
  temperatures and the budget anneal's progress, with Python mirrors read once per forward (`SmartStateBuffers`);
* the budget groups (`smart_hf.budget_groups`, which also solves their masks from the scores);
* the per-forward mask cache.

Soft masks are computed once per model forward, in a forward pre-hook on the root model, for every group (one soft
top-k each); the layers read their slice. Solving them there, before any block runs, is what makes activation
(gradient) checkpointing work: a block that the backward pass re-runs (`torch.utils.checkpoint`, transformers'
``gradient_checkpointing_enable``) must compute exactly what its forward computed, so it must not solve a top-k
itself -- which would record other tensors than its forward did, move the warm start and recount the
fractionality. The masks therefore stay cached after the forward, for those recomputations; the next root forward
replaces them. A reentrant checkpoint back-propagates every re-run block on its own, so a block re-run that way
gets the forward's mask value with an autograd graph of its own (`SmartState._replay_mask`). A layer called outside
a root forward (and outside a backward pass) computes its group on the spot, uncached: slower, never stale.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .budget_groups import (
    BudgetGroup,
    build_groups,
    hard_group_masks,
    nm_batch_key,
    soft_group_masks,
    soft_nm_batch,
    temperature_sets,
    unit_budget_cost,
)
from .core.budget import annealed_budget
from .core.schedule import MIN_TEMPERATURE, auto_temperature
from .distributed import full_tensor
from .latency.widths import round_group_widths

# `BudgetGroup`, `build_groups` and `unit_budget_cost` live in `smart_hf.budget_groups`; re-exported here for callers
# that import them from the state module.
__all__ = ["MODES", "BudgetGroup", "SmartState", "build_groups", "unit_budget_cost"]

MODES = ("dense", "soft", "hard")  # the public mode names (`SmartState.mode_name`, `SmartState.set_mode`)
# The ``mode`` buffer stores the index into MODES (checkpointed as an integer); `_mode` mirrors it in Python.
_DENSE, _SOFT, _HARD = range(3)


def _sync_after_load(module: SmartStateBuffers, _incompatible_keys) -> None:
    module.sync_from_buffers()


def _in_backward() -> bool:
    """True while autograd runs a backward pass, where activation checkpointing re-runs blocks (the test FSDP2's own
    hooks use)."""
    return torch._C._current_graph_task_id() != -1


class SmartStateBuffers(nn.Module):
    """The stored part of the SMART state: the buffers, their Python mirrors (the mode, the temperatures, the budget
    anneal's progress) and the budget groups. `SmartState` adds the per-forward mask cache.

    Args:
        config: the model's `SmartConfig`.
        groups: its budget groups (`smart_hf.budget_groups.build_groups`).
    """

    def __init__(self, config, groups: list[BudgetGroup]):
        super().__init__()
        # with tau_start=None ("auto") the temperature is relative: group g uses temperature * group_tau[g]
        tau0 = 1.0 if config.tau_start is None else float(config.tau_start)
        self.register_buffer("temperature", torch.tensor(tau0, dtype=torch.float64))
        self.register_buffer("mode", torch.tensor(_SOFT, dtype=torch.int64))
        self.register_buffer("tau_scale", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("ref_fractionality", torch.tensor(float("inf"), dtype=torch.float64))
        self.register_buffer("ref_step", torch.tensor(0, dtype=torch.int64))
        # fractionality of the last training forward; a buffer so a resumed run's dynamic rule sees the same value
        self.register_buffer("last_fractionality", torch.tensor(float("nan"), dtype=torch.float64))
        # per-group start temperature (tau_start="auto") and the budget anneal's progress (1 = target budget)
        self.register_buffer("group_tau", torch.ones(len(groups), dtype=torch.float64))
        self.register_buffer("budget_progress", torch.tensor(1.0, dtype=torch.float64))
        self._group_tau, self._progress = [1.0] * len(groups), 1.0
        self.smart_config = config
        self.groups = groups
        for group_index, group in enumerate(groups):
            for layer_index, layer in enumerate(group.layers):
                layer._smart_slot = (group_index, layer_index)  # a plain attribute: deepcopy/pickle keep it right
        self._mode, self._tau = _SOFT, tau0
        self.register_load_state_dict_post_hook(_sync_after_load)  # a module-level function: picklable

    @property
    def layers(self) -> list:
        """The prepared layers, group by group."""
        return [layer for group in self.groups for layer in group.layers]

    def forward(self, x=None, *_args, **_kwargs):
        """Identity: containers that call every child in turn (a root ``nn.Sequential``) pass through it."""
        return x

    def _apply(self, fn, recurse=True):
        # `model.half()` / `.to(torch.bfloat16)` must move these buffers but not round them: a bf16 temperature
        # of 1e-4 is 1.0013e-4, and the dynamic rule's reference values would drift the same way
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            if self._buffers[name].dtype != old.dtype:  # keep the exact value, take only the new device
                self._buffers[name] = old.to(self._buffers[name].device)
        return self

    # --- python mirrors of the buffers (read once per forward, not once per layer) ---
    def sync_from_buffers(self) -> None:
        """Read the buffers into their Python mirrors (after a load, a broadcast, or at each root forward)."""
        tau, mode = torch.stack([self.temperature, self.mode.to(torch.float64)]).tolist()
        self._tau, self._mode = float(tau), int(mode)
        progress, *group_tau = torch.cat([self.budget_progress.reshape(1), self.group_tau]).tolist()
        self._progress, self._group_tau = float(progress), group_tau

    def set_temperature(self, tau: float) -> None:
        """Set the (relative, with tau_start="auto") temperature.

        Args:
            tau: the temperature; raised to ``MIN_TEMPERATURE``, the operator's tested floor (below it
                ``scores / tau`` overflows: a subnormal tau gave NaN masks).
        """
        tau = max(float(tau), MIN_TEMPERATURE)
        self.temperature.fill_(tau)
        self._tau = tau

    def set_mode(self, mode: str) -> None:
        """Switch the mode. Only the lifecycle and the callback switch modes; users call `smart_hf.set_mode` /
        `smart_hf.harden`, which validate the transition.

        Args:
            mode: ``"dense"`` (masks off), ``"soft"`` (search) or ``"hard"`` (frozen masks).

        Raises:
            ValueError: ``mode`` is not one of `MODES`.
        """
        code = MODES.index(mode)
        self.mode.fill_(code)
        self._mode = code

    def set_budget_progress(self, progress: float) -> None:
        """Set the budget anneal's progress.

        Args:
            progress: in [0, 1]; soft masks keep `annealed_budget` (0 = everything, 1 = the target).
        """
        self.budget_progress.fill_(float(progress))
        self._progress = float(progress)

    def set_group_temperatures(self, taus: list[float]) -> None:
        """Set every group's start temperature (``tau_start="auto"``).

        Args:
            taus: one temperature per group, in group order.
        """
        self.group_tau.copy_(torch.tensor(taus, dtype=torch.float64))
        self._group_tau = [float(t) for t in taus]

    def group_temperature(self, group_index: int) -> float:
        """The temperature a group uses now: the schedule's value times the group's start temperature.

        Args:
            group_index: the group's index in ``groups``.

        Returns:
            The temperature of its next soft solve.
        """
        return self._tau * self._group_tau[group_index]

    def soft_budget(self, group: BudgetGroup) -> float:
        """The ``k`` of a group's soft top-k now.

        Args:
            group: one of ``groups``.

        Returns:
            Its target budget, or during the budget anneal more (see `annealed_budget`).
        """
        if self._progress >= 1.0:
            return group.k
        return annealed_budget(group.k, group.capacity(), self._progress)

    @torch.no_grad()
    def calibrate_temperatures_(self, target: float) -> list[float]:
        """``tau_start="auto"``: give every group the start temperature at which its soft mask, at the target budget,
        has mean ``min(f, 1 - f)`` equal to ``target`` (`auto_temperature`); the schedule then runs relative to it.
        The N:M groups of one row shape share one temperature, calibrated on all their rows together: the same
        budget rule holds in every one of them, and a shared temperature lets the forward solve their rows in one
        batch (`_soft_nm_batch`).

        Args:
            target: the mean ``min(f, 1 - f)`` each group's start mask should have.

        Returns:
            The start temperature of every group, in group order (also stored, `set_group_temperatures`).
        """
        taus = [1.0] * len(self.groups)
        for members in temperature_sets(self.groups):
            tau = auto_temperature(partial(self._target_fractionality, members), target)
            for group_index in members:
                taus[group_index] = tau
        for group in self.groups:
            group.shift_warm_start = None
        self.set_group_temperatures(taus)
        return taus

    def _temperature_sets(self) -> list[list[int]]:
        return temperature_sets(self.groups)

    def _target_fractionality(self, members: list[int], tau: float) -> float:
        """Mean ``min(f, 1 - f)`` over the soft masks of groups ``members`` at temperature ``tau`` and the target
        budget."""
        groups = [self.groups[index] for index in members]
        masks = [m for group in groups for m in soft_group_masks(group, tau, group.k, warm=False)]
        return float(sum(torch.minimum(m, 1 - m).sum() for m in masks) / sum(m.numel() for m in masks))

    @property
    def mode_name(self) -> str:
        """The current mode: ``"dense"``, ``"soft"`` or ``"hard"`` (read-only; see `set_mode`)."""
        return MODES[self._mode]

    @property
    def is_hard(self) -> bool:
        """Whether the masks are hardened (frozen)."""
        return self._mode == _HARD

    @property
    def tau(self) -> float:
        """The temperature the next soft forward uses (`set_temperature`)."""
        return self._tau



class SmartState(SmartStateBuffers):
    """Model-level SMART state: the stored state (`SmartStateBuffers`) and the per-forward mask cache with its
    replay for activation checkpointing. Created by `prepare_model`; use the lifecycle functions rather than this
    class.

    Args:
        config: the model's `SmartConfig`.
        groups: its budget groups (`smart_hf.budget_groups.build_groups`).
    """

    def __init__(self, config, groups: list[BudgetGroup]):
        super().__init__(config, groups)
        self._cache: dict | None = None  # group index -> masks of the last root forward (`begin_forward`)
        self._in_root_forward = False
        # slots a reentrant checkpoint read without gradients; kept across forwards (two forwards, one backward)
        self._replayed: set[tuple[int, int]] = set()
        self._frac: dict[int, tuple[torch.Tensor, int]] = {}
        self.hook_handles: list = []

    def __getstate__(self):
        # the cached masks carry their forward's autograd graph, which deepcopy / pickle cannot copy (a teacher
        # snapshot, an EMA copy); a copy starts without them, as before its first forward
        return {**super().__getstate__(), "_cache": None, "_replayed": set(), "_in_root_forward": False}

    # --- root forward hooks ---
    @torch.compiler.disable  # host-side solve and Python state: run eagerly, no guards on tau / budgets
    def begin_forward(self, *_args, **_kwargs) -> None:
        """Root forward pre-hook: solve every group's soft masks now, outside any checkpointed block."""
        self.sync_from_buffers()
        self._cache, self._in_root_forward = {}, True
        if self._mode == _SOFT:
            for group_index, group in enumerate(self.groups):
                if group_index in self._cache:  # solved with an earlier N:M group of the same batch
                    continue
                if group.kind == "nm":
                    self._cache.update(self._soft_nm_batch(group_index))
                else:
                    self._cache[group_index] = self.soft_group_masks(group_index)

    @torch.compiler.disable  # host-side solve and Python state: run eagerly, no guards on tau / budgets
    def end_forward(self, *_args, **_kwargs) -> None:
        """Root forward hook (also on an exception): close the forward and record its fractionality."""
        # the masks stay cached for the backward pass's recomputations; the next root forward replaces them
        self._in_root_forward = False
        if self._frac:
            total = sum(s.double().to(self.last_fractionality.device) for s, _ in self._frac.values())
            self.last_fractionality.copy_(total / max(sum(c for _, c in self._frac.values()), 1))
            self._frac = {}

    # --- masks ---
    @torch.compiler.disable  # host-side solve and Python state: run eagerly, no guards on tau / budgets
    def unit_mask(self, layer) -> torch.Tensor | None:
        """The mask of a layer in unit space, as its forward uses it now.

        Args:
            layer: a prepared layer of this model.

        Returns:
            Its mask (``score_shape``): the frozen one once hardened, the soft one of this root forward while
            searching (cached; recomputed on the spot outside a root forward); ``None`` in dense mode.
        """
        if self._mode == _DENSE:
            return None
        if self._mode == _HARD:
            return layer.smart_mask
        group_index, layer_index = layer._smart_slot
        cached = self._cache.get(group_index) if self._cache is not None else None
        if cached is not None and self._in_root_forward:
            if cached[layer_index].requires_grad and not torch.is_grad_enabled():  # a reentrant checkpoint's no-grad
                self._replayed.add((group_index, layer_index))
            return cached[layer_index]
        if cached is not None and _in_backward():  # activation checkpointing re-runs the layer
            if (group_index, layer_index) in self._replayed:
                return self._replay_mask(group_index, layer_index)
            return cached[layer_index]
        masks = self.soft_group_masks(group_index)
        if self._in_root_forward and self._cache is not None:
            self._cache[group_index] = masks
        return masks[layer_index]

    def _replay_mask(self, group_index: int, layer_index: int) -> torch.Tensor:
        """The mask for a reentrant checkpoint's recomputation: the forward's value with a graph of its own.

        A reentrant checkpoint back-propagates every re-run block separately, so the blocks cannot share the group's
        graph into the scores (the first would free it). The group is solved again from the same scores (warm-started
        at the forward's shift, so the solver stops at once): the value returned is the forward's exactly, the
        gradient that of the new solve. The warm start and the fractionality record stay as the forward left them.
        """
        group = self.groups[group_index]
        shift_warm_start, fractionality = group.shift_warm_start, dict(self._frac)
        try:
            fresh = self.soft_group_masks(group_index)[layer_index]
        finally:
            group.shift_warm_start, self._frac = shift_warm_start, fractionality
        return self._cache[group_index][layer_index].detach() + (fresh - fresh.detach())

    def soft_group_masks(self, group_index: int) -> list[torch.Tensor]:
        """A group's soft masks at its temperature and budget now (`smart_hf.budget_groups.soft_group_masks`,
        warm-started), recording their fractionality when gradients are on.

        Args:
            group_index: the group's index in ``groups``.

        Returns:
            One mask per layer of the group (its ``score_shape``), differentiable in the scores.
        """
        group = self.groups[group_index]
        masks = soft_group_masks(group, self.group_temperature(group_index), self.soft_budget(group))
        if torch.is_grad_enabled():
            self._frac[group_index] = (
                sum(torch.minimum(m, 1 - m).detach().sum() for m in masks),
                sum(m.numel() for m in masks),
            )
        return masks

    def _soft_masks(self, group_index: int, tau: float, k: float, warm: bool = True) -> list[torch.Tensor]:
        """Soft masks of a group at temperature ``tau`` and budget ``k``, nothing recorded (a calibration probe)."""
        return soft_group_masks(self.groups[group_index], tau, k, warm)

    def _soft_nm_batch(self, group_index: int) -> dict[int, list[torch.Tensor]]:
        """Soft masks of every N:M group that can share one `soft_nm_batch` with group ``group_index`` (same budget,
        temperature, row length, dtype and device), by group index."""
        key = self._nm_batch_key(group_index)
        members = [j for j, g in enumerate(self.groups) if g.kind == "nm" and self._nm_batch_key(j) == key]
        scores = [full_tensor(self.groups[j].layers[0].smart_scores) for j in members]
        recording = torch.is_grad_enabled()
        pieces, frac = soft_nm_batch(scores, key[0], key[1], with_fractionality=recording)
        if recording:  # one entry for the batch (fractionality() averages over units anyway), summed by the solve
            self._frac[group_index] = (frac, sum(piece.numel() for piece in pieces))
        return {j: [piece] for j, piece in zip(members, pieces)}

    def _nm_batch_key(self, group_index: int) -> tuple:
        group = self.groups[group_index]
        return nm_batch_key(group, self.group_temperature(group_index), self.soft_budget(group))

    def hard_group_masks(self, group_index: int, use_frozen: bool = True) -> list[torch.Tensor]:
        """A group's binary masks: what an export or a report uses, and what `smart_hf.harden` freezes.

        Args:
            group_index: the group's index in ``groups``.
            use_frozen: once hardened, return the frozen masks (``smart_mask``); ``False`` solves them from the
                scores (`smart_hf.budget_groups.hard_group_masks`) in every mode. Before hardening both solve.

        Returns:
            One ``{0, 1}`` mask per layer of the group (its ``score_shape``).

        Raises:
            ValueError: a score is NaN or Inf.
        """
        if use_frozen and self._mode == _HARD:
            return [layer.smart_mask for layer in self.groups[group_index].layers]
        group = self.groups[group_index]
        masks = hard_group_masks(group)
        if group.kind == "global":  # coupled FFN / conv widths rounded to the width multiple (1: unchanged)
            masks = round_group_widths(group, masks, self.smart_config)
        return masks


    def fractionality(self) -> float:
        """How far the soft masks are from binary.

        Returns:
            Mean ``min(f, 1 - f)`` over all units in the last root forward with gradients (NaN before the first;
            0 once hardened).
        """
        if self._mode == _HARD:
            return 0.0
        if self._frac:  # a layer was called outside a root forward: fold its groups in now
            self.end_forward()
        return float(self.last_fractionality)
