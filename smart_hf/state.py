"""`SmartState`: the model-level mask state and the budget groups that turn scores into masks.

A global budget couples every targeted layer through one shift ``t``, so masks cannot be computed layer by layer.
`SmartState` (registered as the sub-module ``smart_state`` of the prepared model) holds:

* buffers (checkpointed with the model, broadcast by DDP): ``temperature``, ``mode`` (0 dense, 1 soft search,
  2 hard), and the dynamic rule's ``tau_scale`` / ``ref_fractionality`` / ``ref_step``;
* the budget groups: each N:M layer and each per-layer-budget layer is its own group; global-budget layers with the
  same sparsity share one.

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

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from .core.budget import annealed_budget, global_weight_budget, layer_keep_units, reserved_units
from .core.schedule import MIN_TEMPERATURE, auto_temperature
from .core.topk import hard_topk, soft_topk
from .distributed import full_tensor
from .latency.widths import round_group_widths

MODES = ("dense", "soft", "hard")  # the public mode names (`SmartState.mode_name`, `SmartState.set_mode`)
# The ``mode`` buffer stores the index into MODES (checkpointed as an integer); `_mode` mirrors it in Python.
_DENSE, _SOFT, _HARD = range(3)


@dataclass
class BudgetGroup:
    """Layers whose masks come from one top-k. ``kind``: ``"nm"`` (rows of m, keep n), ``"layer"`` (one row, keep
    ``k`` units) or ``"global"`` (one cost-weighted row over all layers, keep ``k`` weights)."""

    kind: str
    layers: list
    k: float
    reserved: list[int] = field(default_factory=list)
    shift_x: torch.Tensor | None = None  # last shift, in score units (warm start for the next solve)
    cost: torch.Tensor | None = None  # weights per unit, concatenated over the layers (global groups)

    def unit_counts(self) -> list[int]:
        return [layer.smart_layout.num_units for layer in self.layers]

    def capacity(self) -> float:
        """What "keep everything" means for ``k``: m per N:M row, the units of a layer, the weights of a group."""
        if self.kind == "nm":
            return float(self.layers[0].smart_layout.m)
        if self.kind == "layer":
            return float(self.layers[0].smart_layout.num_units)
        # the group's own cost units: weights, or for coupled owners the whole units' cost (`unit_budget_cost`)
        return float(sum(layer.smart_layout.num_units * unit_budget_cost(layer) for layer in self.layers))


def unit_budget_cost(layer) -> int:
    """What one unit of ``layer`` costs in a global budget: its weights (``smart_layout.unit_cost``), or for the
    owner of a coupled set the cost of the whole unit over every layer it spans (`smart_hf.coupling`)."""
    binding = layer.__dict__.get("_smart_coupled")
    return layer.smart_layout.unit_cost if binding is None else binding.unit_cost


def build_groups(layers: list, sparsities: list[float], budget: str, min_layer_density: float) -> list[BudgetGroup]:
    """Group prepared layers by how their budget is shared. Raises if a global budget cannot honour the guard."""
    groups, shared = [], {}
    for layer, sparsity in zip(layers, sparsities):
        layout = layer.smart_layout
        if layout.pattern == "nm":
            groups.append(BudgetGroup("nm", [layer], float(layout.n)))
        elif budget == "layer":
            groups.append(BudgetGroup("layer", [layer], float(layer_keep_units(layout.num_units, sparsity))))
        else:
            shared.setdefault(sparsity, []).append(layer)
    for sparsity, members in shared.items():
        total = sum(m.smart_layout.num_units * unit_budget_cost(m) for m in members)
        reserved = [reserved_units(m.smart_layout.num_units, min_layer_density) for m in members]
        reserved_cost = sum(q * unit_budget_cost(m) for q, m in zip(reserved, members))
        k = global_weight_budget(total, sparsity)
        if reserved_cost > k:
            raise ValueError(
                f"sparsity={sparsity} leaves {k:.0f} weights but min_layer_density={min_layer_density} "
                f"reserves {reserved_cost}; lower min_layer_density or sparsity."
            )
        groups.append(BudgetGroup("global", members, k, reserved))
    return groups


def _sync_after_load(module: SmartState, _incompatible_keys) -> None:
    module.sync_from_buffers()


def _top_units(scores: torch.Tensor, q: int) -> torch.Tensor:
    """Boolean mask of the ``q`` best units (q is small): ``argmax`` for one (lowest index wins a tie), else a
    partial ``topk`` instead of the full sort of `hard_topk` -- this runs on every forward."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if q == 1:
        return keep.index_fill_(0, scores.argmax().reshape(1), True)
    return keep.index_fill_(0, torch.topk(scores, q, sorted=False).indices, True)


def _in_backward() -> bool:
    """True while autograd runs a backward pass, where activation checkpointing re-runs blocks (the test FSDP2's own
    hooks use)."""
    return torch._C._current_graph_task_id() != -1


class SmartState(nn.Module):
    """Model-level SMART state. Created by `prepare_model`; use the lifecycle functions rather than this class."""

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
        for gi, group in enumerate(groups):
            for li, layer in enumerate(group.layers):
                layer._smart_slot = (gi, li)  # a plain attribute, so deepcopy/pickle keep it right
        self._cache: dict | None = None  # group index -> masks of the last root forward (`begin_forward`)
        self._in_root_forward = False
        # slots a reentrant checkpoint read without gradients; kept across forwards (two forwards, one backward)
        self._replayed: set[tuple[int, int]] = set()
        self._frac: dict[int, tuple[torch.Tensor, int]] = {}
        self._mode, self._tau = _SOFT, tau0
        self.hook_handles: list = []
        self.register_load_state_dict_post_hook(_sync_after_load)  # a module-level function: picklable

    def __getstate__(self):
        # the cached masks carry their forward's autograd graph, which deepcopy / pickle cannot copy (a teacher
        # snapshot, an EMA copy); a copy starts without them, as before its first forward
        return {**super().__getstate__(), "_cache": None, "_replayed": set(), "_in_root_forward": False}

    @property
    def layers(self) -> list:
        return [layer for g in self.groups for layer in g.layers]

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
        tau, mode = torch.stack([self.temperature, self.mode.to(torch.float64)]).tolist()
        self._tau, self._mode = float(tau), int(mode)
        progress, *group_tau = torch.cat([self.budget_progress.reshape(1), self.group_tau]).tolist()
        self._progress, self._group_tau = float(progress), group_tau

    def set_temperature(self, tau: float) -> None:
        """Set the (relative, with tau_start="auto") temperature; never below ``MIN_TEMPERATURE``, the operator's
        tested floor (below it ``scores / tau`` overflows: a subnormal tau gave NaN masks)."""
        tau = max(float(tau), MIN_TEMPERATURE)
        self.temperature.fill_(tau)
        self._tau = tau

    def set_mode(self, mode: str) -> None:
        """``"dense"`` (masks off), ``"soft"`` (search) or ``"hard"`` (frozen masks). Only the lifecycle and the
        callback switch modes; users call `smart_hf.set_mode` / `smart_hf.harden`, which validate the transition."""
        code = MODES.index(mode)
        self.mode.fill_(code)
        self._mode = code

    def set_budget_progress(self, progress: float) -> None:
        """Budget anneal progress in [0, 1]: soft masks keep `annealed_budget` (0 = everything, 1 = the target)."""
        self.budget_progress.fill_(float(progress))
        self._progress = float(progress)

    def set_group_temperatures(self, taus: list[float]) -> None:
        self.group_tau.copy_(torch.tensor(taus, dtype=torch.float64))
        self._group_tau = [float(t) for t in taus]

    def group_temperature(self, gi: int) -> float:
        """The temperature group ``gi`` uses now: the schedule's value times the group's start temperature."""
        return self._tau * self._group_tau[gi]

    def soft_budget(self, group: BudgetGroup) -> float:
        """The ``k`` of the soft top-k: the target, or during the budget anneal more (see `annealed_budget`)."""
        if self._progress >= 1.0:
            return group.k
        return annealed_budget(group.k, group.capacity(), self._progress)

    @torch.no_grad()
    def calibrate_temperatures_(self, target: float) -> list[float]:
        """``tau_start="auto"``: give every group the start temperature at which its soft mask, at the target budget,
        has mean ``min(f, 1 - f)`` equal to ``target`` (`auto_temperature`); the schedule then runs relative to it.
        The N:M groups of one row shape share one temperature, calibrated on all their rows together: the same
        budget rule holds in every one of them, and a shared temperature lets the forward solve their rows in one
        batch (`_soft_nm_batch`)."""
        taus = [1.0] * len(self.groups)
        for members in self._temperature_sets():
            tau = auto_temperature(partial(self._target_fractionality, members), target)
            for gi in members:
                taus[gi] = tau
        for group in self.groups:
            group.shift_x = None
        self.set_group_temperatures(taus)
        return taus

    def _temperature_sets(self) -> list[list[int]]:
        """Indices of the groups that share a start temperature: each layer / global group alone, and the N:M
        groups by (n, row length, dtype, device)."""
        sets, nm = [], {}
        for gi, group in enumerate(self.groups):
            if group.kind == "nm":
                scores = group.layers[0].smart_scores
                nm.setdefault((group.k, tuple(scores.shape[1:]), scores.dtype, scores.device), []).append(gi)
            else:
                sets.append([gi])
        return sets + list(nm.values())

    def _target_fractionality(self, members: list[int], tau: float) -> float:
        """Mean ``min(f, 1 - f)`` over the soft masks of groups ``members`` at temperature ``tau`` and the target
        budget."""
        masks = [m for gi in members for m in self._soft_masks(gi, tau, self.groups[gi].k, warm=False)]
        return float(sum(torch.minimum(m, 1 - m).sum() for m in masks) / sum(m.numel() for m in masks))

    @property
    def mode_name(self) -> str:
        """The current mode: ``"dense"``, ``"soft"`` or ``"hard"`` (read-only; see `set_mode`)."""
        return MODES[self._mode]

    @property
    def is_hard(self) -> bool:
        return self._mode == _HARD

    @property
    def tau(self) -> float:
        """The temperature the next soft forward uses (`set_temperature`)."""
        return self._tau

    # --- root forward hooks ---
    def begin_forward(self, *_args, **_kwargs) -> None:
        """Root forward pre-hook: solve every group's soft masks now, outside any checkpointed block."""
        self.sync_from_buffers()
        self._cache, self._in_root_forward = {}, True
        if self._mode == _SOFT:
            for gi, group in enumerate(self.groups):
                if gi in self._cache:  # solved with an earlier N:M group of the same batch
                    continue
                if group.kind == "nm":
                    self._cache.update(self._soft_nm_batch(gi))
                else:
                    self._cache[gi] = self.soft_group_masks(gi)

    def end_forward(self, *_args, **_kwargs) -> None:
        # the masks stay cached for the backward pass's recomputations; the next root forward replaces them
        self._in_root_forward = False
        if self._frac:
            total = sum(s.double().to(self.last_fractionality.device) for s, _ in self._frac.values())
            self.last_fractionality.copy_(total / max(sum(c for _, c in self._frac.values()), 1))
            self._frac = {}

    # --- masks ---
    def unit_mask(self, layer) -> torch.Tensor | None:
        """The mask of ``layer`` in unit space (``score_shape``), or ``None`` in dense mode."""
        if self._mode == _DENSE:
            return None
        if self._mode == _HARD:
            return layer.smart_mask
        gi, li = layer._smart_slot
        cached = self._cache.get(gi) if self._cache is not None else None
        if cached is not None and self._in_root_forward:
            if cached[li].requires_grad and not torch.is_grad_enabled():  # a reentrant checkpoint's no-grad pass
                self._replayed.add((gi, li))
            return cached[li]
        if cached is not None and _in_backward():  # activation checkpointing re-runs the layer
            return self._replay_mask(gi, li) if (gi, li) in self._replayed else cached[li]
        masks = self.soft_group_masks(gi)
        if self._in_root_forward and self._cache is not None:
            self._cache[gi] = masks
        return masks[li]

    def _replay_mask(self, gi: int, li: int) -> torch.Tensor:
        """The mask for a reentrant checkpoint's recomputation: the forward's value with a graph of its own.

        A reentrant checkpoint back-propagates every re-run block separately, so the blocks cannot share the group's
        graph into the scores (the first would free it). The group is solved again from the same scores (warm-started
        at the forward's shift, so the solver stops at once): the value returned is the forward's exactly, the
        gradient that of the new solve. The warm start and the fractionality record stay as the forward left them.
        """
        group = self.groups[gi]
        shift_x, frac = group.shift_x, dict(self._frac)
        try:
            fresh = self.soft_group_masks(gi)[li]
        finally:
            group.shift_x, self._frac = shift_x, frac
        return self._cache[gi][li].detach() + (fresh - fresh.detach())

    def soft_group_masks(self, gi: int) -> list[torch.Tensor]:
        group = self.groups[gi]
        masks = self._soft_masks(gi, self.group_temperature(gi), self.soft_budget(group))
        if torch.is_grad_enabled():
            self._frac[gi] = (
                sum(torch.minimum(m, 1 - m).detach().sum() for m in masks),
                sum(m.numel() for m in masks),
            )
        return masks

    def _soft_masks(self, gi: int, tau: float, k: float, warm: bool = True) -> list[torch.Tensor]:
        """Soft masks of group ``gi`` at temperature ``tau`` and budget ``k`` (``warm``: start the shift solve from,
        and store, the group's last shift)."""
        group = self.groups[gi]
        if group.kind == "nm":
            return [soft_topk(full_tensor(group.layers[0].smart_scores), k, tau)]
        flat, cost, reserved = self._flat_scores(group)
        init = None if group.shift_x is None or not warm else -group.shift_x / tau
        if group.kind == "layer":
            f, shift = soft_topk(flat, k, tau, shift_init=init, return_shift=True)
        else:
            f, shift = self._soft_global(flat, cost, reserved, k, tau, init)
        if warm:
            group.shift_x = (-shift * tau).detach()
        return self._split(group, f)

    def _nm_batch_key(self, gi: int) -> tuple:
        group = self.groups[gi]
        scores = group.layers[0].smart_scores
        tau = self.group_temperature(gi)
        return (self.soft_budget(group), tau, tuple(scores.shape[1:]), scores.dtype, scores.device)

    def _soft_nm_batch(self, gi: int) -> dict[int, list[torch.Tensor]]:
        """Soft masks of every N:M group with group ``gi``'s budget, temperature, row length, dtype and device from
        one `soft_topk` over their concatenated rows (one copy of the scores instead of ~30 small ops and a host
        sync per layer and Newton step). Rows are independent, so the masks equal the per-group ones."""
        key = self._nm_batch_key(gi)
        members = [j for j, g in enumerate(self.groups) if g.kind == "nm" and self._nm_batch_key(j) == key]
        scores = [full_tensor(self.groups[j].layers[0].smart_scores) for j in members]
        k, tau = key[0], key[1]
        f = soft_topk(scores[0] if len(scores) == 1 else torch.cat(scores), k, tau)
        if torch.is_grad_enabled():  # one entry for the batch: fractionality() averages over units anyway
            # sum min(f, 1 - f) = N / 2 - sum |f - 1/2|: two passes over the N:M-sized mask instead of three
            distance = torch.sub(f.detach(), 0.5).abs_().sum(dtype=torch.float64)
            self._frac[gi] = (0.5 * f.numel() - distance, f.numel())
        return {j: [piece] for j, piece in zip(members, torch.split(f, [s.shape[0] for s in scores]))}

    def binary_group_masks(self, gi: int) -> list[torch.Tensor]:
        """The frozen masks once hardened, else the ones `harden` would pick now (what an export or report uses)."""
        if self._mode == _HARD:
            return [layer.smart_mask for layer in self.groups[gi].layers]
        return self.hard_group_masks(gi)

    @torch.no_grad()
    def hard_group_masks(self, gi: int) -> list[torch.Tensor]:
        group = self.groups[gi]
        if group.kind == "nm":
            return [hard_topk(full_tensor(group.layers[0].smart_scores), group.k)]
        flat, cost, reserved = self._flat_scores(group)
        if group.kind == "layer":
            return self._split(group, hard_topk(flat, group.k))
        free = ~reserved
        f = reserved.to(flat.dtype)
        k_free = group.k - float((cost * f).sum())
        if free.any():  # else every unit is reserved (sparsity 0 on one-unit layers): nothing left to rank
            f = f.masked_scatter(free, hard_topk(flat[free], k_free, cost[free]))
        return round_group_widths(group, self._split(group, f), self.smart_config)  # coupled width multiples

    def _flat_scores(self, group: BudgetGroup):
        device = group.layers[0].smart_scores.device
        flat = torch.cat([full_tensor(layer.smart_scores).reshape(-1).to(device) for layer in group.layers])
        if not torch.isfinite(flat).all():  # the reserved-unit ranking below would silently pick a NaN as "best"
            raise ValueError(
                "mask scores contain NaN or Inf (a diverged search); lower the score learning rate "
                "(score_learning_rate), enable gradient clipping (max_grad_norm) and restart from the last good "
                "checkpoint."
            )
        if group.kind == "layer":
            return flat, None, None
        if group.cost is None or group.cost.device != device:  # fixed per group: build once
            group.cost = torch.cat(
                [
                    torch.full((layer.smart_layout.num_units,), float(unit_budget_cost(layer)), device=device)
                    for layer in group.layers
                ]
            )
        with torch.no_grad():  # each layer's best `reserved` units are kept outside the shared ranking
            reserved = torch.cat(
                [
                    _top_units(full_tensor(layer.smart_scores).detach().reshape(-1).to(device), q)
                    for layer, q in zip(group.layers, group.reserved)
                ]
            )
        return flat, group.cost, reserved

    @staticmethod
    def _soft_global(flat, cost, reserved, k, tau, init):
        free = ~reserved
        f = reserved.to(torch.promote_types(flat.dtype, torch.float32))
        k_free = k - float((cost * f).sum())
        if not free.any():  # every unit is reserved: the mask is all ones, no shift to solve
            return f, torch.tensor(float("inf"), dtype=torch.float64, device=flat.device)
        f_free, shift = soft_topk(flat[free], k_free, tau, cost=cost[free], shift_init=init, return_shift=True)
        return f.masked_scatter(free, f_free), shift

    @staticmethod
    def _split(group: BudgetGroup, flat_mask: torch.Tensor) -> list[torch.Tensor]:
        pieces = torch.split(flat_mask.reshape(-1), group.unit_counts())
        return [
            p.reshape(layer.smart_layout.score_shape).to(layer.smart_scores.device)
            for p, layer in zip(pieces, group.layers)
        ]

    def fractionality(self) -> float:
        """Mean ``min(f, 1 - f)`` over all units in the last root forward with gradients (NaN before the first)."""
        if self._mode == _HARD:
            return 0.0
        if self._frac:  # a layer was called outside a root forward: fold its groups in now
            self.end_forward()
        return float(self.last_fractionality)
