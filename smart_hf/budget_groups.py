"""Budget groups: the layers whose masks come from one top-k, and the solver that turns their scores into masks.

A global budget couples every targeted layer through one shift ``t``, so masks cannot be computed layer by layer.
`build_groups` sorts the prepared layers into groups: each N:M layer and each per-layer-budget layer is its own
group; global-budget layers with the same sparsity share one. The solver then maps a group's scores, a temperature
and a budget to masks, one per layer (in each layer's ``score_shape``):

* `soft_group_masks`: the differentiable soft top-k of the search (`soft_topk`), warm-started at the group's last
  shift;
* `hard_group_masks`: the binary top-k that hardening freezes (`hard_topk`), the same budget;
* `soft_nm_batch`: the soft masks of several N:M groups with one budget, temperature and row length, from one
  fused short-row top-k over all their rows (`smart_hf.core.fused_topk.short_row_topk`).

A global group is solved on one flat row: the layers' scores concatenated (`flatten_scores`), each unit weighted by
what it costs in weights (`unit_cost_vector`), each layer's best ``reserved`` units kept outside the ranking
(`reserved_unit_mask`, the ``min_layer_density`` guard); the flat mask is cut back into layers by `split_flat_mask`.
The flat-row functions take plain tensors and hold no state: they can be used and tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .core.budget import global_weight_budget, layer_keep_units, reserved_units
from .core.fused_topk import short_row_topk
from .core.topk import hard_topk, soft_topk
from .distributed import full_tensor

__all__ = [
    "BudgetGroup",
    "build_groups",
    "flatten_scores",
    "hard_group_masks",
    "nm_batch_key",
    "reserved_unit_mask",
    "soft_global_topk",
    "soft_group_masks",
    "soft_nm_batch",
    "split_flat_mask",
    "temperature_sets",
    "unit_budget_cost",
    "unit_cost_vector",
]

GROUP_KINDS = ("nm", "layer", "global")


@dataclass
class BudgetGroup:
    """Layers whose masks come from one top-k.

    Attributes:
        kind: ``"nm"`` (rows of m, keep n), ``"layer"`` (one row, keep ``k`` units) or ``"global"`` (one
            cost-weighted row over all layers, keep ``k`` weights).
        layers: the prepared layers (each has ``smart_layout`` and ``smart_scores``).
        k: the budget at the target sparsity, in the group's units (see `capacity`).
        reserved: global groups: how many of each layer's best units are always kept (``min_layer_density``).
        shift_warm_start: the last soft solve's shift, in score units: the next solve starts from it.
        cost: global groups: the weights per unit, concatenated over the layers (built once, `unit_cost_vector`).
    """

    kind: str
    layers: list
    k: float
    reserved: list[int] = field(default_factory=list)
    shift_warm_start: torch.Tensor | None = None
    cost: torch.Tensor | None = None

    def unit_counts(self) -> list[int]:
        """Returns:
        The number of units of each layer, in order."""
        return [layer.smart_layout.num_units for layer in self.layers]

    def capacity(self) -> float:
        """What "keep everything" means for ``k``: m per N:M row, the units of a layer, the weights of a group.

        Returns:
            The budget that keeps every unit, in the units of ``k``.
        """
        if self.kind == "nm":
            return float(self.layers[0].smart_layout.m)
        if self.kind == "layer":
            return float(self.layers[0].smart_layout.num_units)
        # the group's own cost units: weights, or for coupled owners the whole units' cost (`unit_budget_cost`)
        return float(sum(layer.smart_layout.num_units * unit_budget_cost(layer) for layer in self.layers))


def unit_budget_cost(layer) -> int:
    """What one unit of ``layer`` costs in a global budget.

    Args:
        layer: a prepared layer.

    Returns:
        Its weights per unit (``smart_layout.unit_cost``), or for the owner of a coupled set the cost of the whole
        unit over every layer it spans (`smart_hf.coupling`).
    """
    binding = layer.__dict__.get("_smart_coupled")
    return layer.smart_layout.unit_cost if binding is None else binding.unit_cost


def build_groups(layers: list, sparsities: list[float], budget: str, min_layer_density: float) -> list[BudgetGroup]:
    """Group prepared layers by how their budget is shared.

    Args:
        layers: the prepared layers, in model order.
        sparsities: the target sparsity of each layer.
        budget: ``"layer"`` (each structured layer keeps its own share) or ``"global"`` (layers of one sparsity share
            one cost-weighted budget). N:M layers are always their own group.
        min_layer_density: in a global group, the share of each layer's units that is always kept.

    Returns:
        The groups: N:M and per-layer groups in layer order, then one global group per sparsity.

    Raises:
        ValueError: a global budget is smaller than what ``min_layer_density`` reserves.
    """
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


# --- flat rows: plain tensors in, tensors out ---
def flatten_scores(scores: list[torch.Tensor], device) -> torch.Tensor:
    """The scores of a group as one flat row: ``cat([s.reshape(-1) for s in scores])`` on ``device``.

    Args:
        scores: each layer's (whole) scores, any shapes.
        device: where the row is built (the first layer's).

    Returns:
        A 1-D tensor of ``sum(s.numel())`` scores.

    Raises:
        ValueError: a score is NaN or Inf (the ranking would silently pick a NaN as "best").
    """
    flat = torch.cat([s.reshape(-1).to(device) for s in scores])
    if not torch.isfinite(flat).all():
        raise ValueError(
            "mask scores contain NaN or Inf (a diverged search); lower the score learning rate "
            "(score_learning_rate), enable gradient clipping (max_grad_norm) and restart from the last good "
            "checkpoint."
        )
    return flat


def split_flat_mask(flat_mask: torch.Tensor, shapes: list[tuple[int, ...]], devices: list) -> list[torch.Tensor]:
    """Cut a group's flat mask back into one mask per layer (the inverse of `flatten_scores`).

    Args:
        flat_mask: a tensor of ``sum(prod(shape))`` values, in layer order.
        shapes: each layer's score shape.
        devices: where each layer's mask goes (its scores' device).

    Returns:
        One mask per layer, ``flat_mask``'s values reshaped to ``shapes[i]`` on ``devices[i]``.
    """
    pieces = torch.split(flat_mask.reshape(-1), [int(torch.Size(shape).numel()) for shape in shapes])
    return [piece.reshape(shape).to(device) for piece, shape, device in zip(pieces, shapes, devices)]


def unit_cost_vector(unit_costs: list[int], unit_counts: list[int], device) -> torch.Tensor:
    """The cost of every unit of a flat row: layer ``i``'s ``unit_counts[i]`` units each cost ``unit_costs[i]``.

    Args:
        unit_costs: weights per unit of each layer (`unit_budget_cost`).
        unit_counts: units of each layer.
        device: where the vector is built.

    Returns:
        A float32 tensor of ``sum(unit_counts)`` costs.
    """
    pieces = [torch.full((count,), float(cost), device=device) for cost, count in zip(unit_costs, unit_counts)]
    return torch.cat(pieces)


def _top_units(scores: torch.Tensor, q: int) -> torch.Tensor:
    """Boolean mask of the ``q`` best units (q is small): ``argmax`` for one (lowest index wins a tie), else a
    partial ``topk`` instead of the full sort of `hard_topk` -- this runs on every forward."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if q == 1:
        return keep.index_fill_(0, scores.argmax().reshape(1), True)
    return keep.index_fill_(0, torch.topk(scores, q, sorted=False).indices, True)


@torch.no_grad()
def reserved_unit_mask(scores: list[torch.Tensor], reserved: list[int], device) -> torch.Tensor:
    """Which units of a flat row are kept outside the shared ranking: each layer's ``reserved[i]`` best.

    Args:
        scores: each layer's (whole) scores.
        reserved: how many units of each layer are kept (small).
        device: where the mask is built.

    Returns:
        A boolean tensor of ``sum(s.numel())`` values, in the order of `flatten_scores`.
    """
    return torch.cat([_top_units(s.detach().reshape(-1).to(device), q) for s, q in zip(scores, reserved)])


def soft_global_topk(flat, cost, reserved, k: float, temperature: float, shift_init=None):
    """The soft top-k of a global group's flat row: reserved units are 1, the rest share what is left of ``k``.

    ``f_free = soft_topk(flat[free], k - sum(cost[reserved]), temperature, cost=cost[free])``: the kept cost,
    ``sum(cost * f)``, is exactly ``k``.

    Args:
        flat: the flat scores (`flatten_scores`), shape ``(N,)``.
        cost: the cost of each unit (`unit_cost_vector`), shape ``(N,)``.
        reserved: the reserved units (`reserved_unit_mask`), boolean, shape ``(N,)``.
        k: the budget, in weights.
        temperature: the soft top-k temperature.
        shift_init: a warm start for the shift solve (in logit units), or ``None``.

    Returns:
        ``(mask, shift)``: the soft mask, shape ``(N,)``, and the float64 shift (``inf`` when every unit is reserved).
    """
    free = ~reserved
    mask = reserved.to(torch.promote_types(flat.dtype, torch.float32))
    k_free = k - float((cost * mask).sum())
    if not free.any():  # every unit is reserved: the mask is all ones, no shift to solve
        return mask, torch.tensor(float("inf"), dtype=torch.float64, device=flat.device)
    k_free = _within_capacity(k_free, cost[free])
    mask_free, shift = soft_topk(
        flat[free], k_free, temperature, cost=cost[free], shift_init=shift_init, return_shift=True
    )
    return mask.masked_scatter(free, mask_free), shift


def _within_capacity(k: float, cost: torch.Tensor) -> float:
    """``k`` lowered to the units' total cost when it exceeds it by float rounding only (relative 1e-6): a budget of
    the whole capacity, summed in float64 from float32 measured costs (the start of the budget anneal), may round
    just above the float32 sum the solver checks; a real excess is left for the solver to refuse."""
    capacity = float(cost.sum(dtype=torch.float64))
    return capacity if capacity < k <= capacity * (1 + 1e-6) else k


@torch.no_grad()
def _hard_global_topk(flat, cost, reserved, k: float) -> torch.Tensor:
    """The binary counterpart of `soft_global_topk`: reserved units kept, the rest ranked under the remaining cost."""
    free = ~reserved
    mask = reserved.to(flat.dtype)
    k_free = k - float((cost * mask).sum())
    if free.any():  # else every unit is reserved (sparsity 0 on one-unit layers): nothing left to rank
        k_free = _within_capacity(k_free, cost[free])
        mask = mask.masked_scatter(free, hard_topk(flat[free], k_free, cost[free]))
    return mask


# --- groups of prepared layers ---
def _whole_scores(group: BudgetGroup) -> list[torch.Tensor]:
    return [full_tensor(layer.smart_scores) for layer in group.layers]


def _flat_row(group: BudgetGroup):
    """A layer / global group's flat row: ``(flat scores, unit costs, reserved units)`` (``None, None`` for a layer
    group)."""
    device = group.layers[0].smart_scores.device
    scores = _whole_scores(group)
    flat = flatten_scores(scores, device)
    if group.kind == "layer":
        return flat, None, None
    if group.cost is None or group.cost.device != device:  # fixed per group: build once
        group.cost = unit_cost_vector([unit_budget_cost(layer) for layer in group.layers], group.unit_counts(), device)
    return flat, group.cost, reserved_unit_mask(scores, group.reserved, device)


def _split(group: BudgetGroup, flat_mask: torch.Tensor) -> list[torch.Tensor]:
    shapes = [layer.smart_layout.score_shape for layer in group.layers]
    return split_flat_mask(flat_mask, shapes, [layer.smart_scores.device for layer in group.layers])


def soft_group_masks(group: BudgetGroup, temperature: float, k: float, warm: bool = True) -> list[torch.Tensor]:
    """The soft masks of ``group`` at ``temperature`` and budget ``k``.

    Args:
        group: the budget group.
        temperature: the soft top-k temperature (the group's own, see `SmartState.group_temperature`).
        k: the budget (the target ``group.k``, or more during the budget anneal).
        warm: start the shift solve from ``group.shift_warm_start`` and store the new shift there.

    Returns:
        One mask per layer (its ``score_shape``), differentiable in the scores.

    Raises:
        ValueError: a score is NaN or Inf.
    """
    if group.kind == "nm":
        masks, _ = soft_nm_batch([full_tensor(group.layers[0].smart_scores)], k, temperature)
        return masks
    flat, cost, reserved = _flat_row(group)
    init = None if group.shift_warm_start is None or not warm else -group.shift_warm_start / temperature
    if group.kind == "layer":
        mask, shift = soft_topk(flat, k, temperature, shift_init=init, return_shift=True)
    else:
        mask, shift = soft_global_topk(flat, cost, reserved, k, temperature, init)
    if warm:
        group.shift_warm_start = (-shift * temperature).detach()
    return _split(group, mask)


@torch.no_grad()
def hard_group_masks(group: BudgetGroup) -> list[torch.Tensor]:
    """The binary masks `smart_hf.harden` freezes for ``group``: the top ``group.k`` of its scores.

    Args:
        group: the budget group.

    Returns:
        One ``{0, 1}`` mask per layer (its ``score_shape``, the scores' dtype, at least float32).

    Raises:
        ValueError: a score is NaN or Inf.
    """
    if group.kind == "nm":
        return [hard_topk(full_tensor(group.layers[0].smart_scores), group.k)]
    flat, cost, reserved = _flat_row(group)
    if group.kind == "layer":
        return _split(group, hard_topk(flat, group.k))
    return _split(group, _hard_global_topk(flat, cost, reserved, group.k))


def nm_batch_key(group: BudgetGroup, temperature: float, k: float) -> tuple:
    """What N:M groups must share to be solved in one batch (`soft_nm_batch`).

    Args:
        group: an N:M group.
        temperature: its temperature now.
        k: its budget now.

    Returns:
        ``(k, temperature, row shape, dtype, device)`` of its scores.
    """
    scores = group.layers[0].smart_scores
    return (k, temperature, tuple(scores.shape[1:]), scores.dtype, scores.device)


def soft_nm_batch(
    scores: list[torch.Tensor], k: float, temperature: float, with_fractionality: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Soft N:M masks of several groups from one fused short-row top-k over all their rows (`short_row_topk`: no
    concatenated copy, cache-blocked, one autograd node). Rows are independent, so each mask equals the soft top-k
    of that group's scores alone (`soft_topk`, the reference, within float rounding).

    Args:
        scores: each group's (whole) scores, shape ``(rows_i, m)``, one row length, dtype and device.
        k: the budget of every row (``0 <= k <= m``; fractional during the budget anneal).
        temperature: the temperature of every row.
        with_fractionality: also return ``sum min(f, 1 - f)`` over all the masks.

    Returns:
        ``(masks, fractionality)``: one mask per group (its scores' shape) and the float64 0-dim sum of
        ``min(f, 1 - f)`` (``None`` unless ``with_fractionality``).

    Raises:
        ValueError: a score is NaN or Inf, or ``k`` is outside ``[0, m]``.
    """
    m = scores[0].shape[-1]
    if 0 < k < m and 2 <= m <= 64:
        masks, frac = short_row_topk(scores, k, temperature, with_fractionality)
        return masks, frac if with_fractionality else None
    # k = m (the start of the budget anneal) or k = 0: every unit on / off; no shift to solve
    masks = [soft_topk(s, k, temperature) for s in scores]
    if not with_fractionality:
        return masks, None
    return masks, sum(torch.minimum(f, 1 - f).detach().sum(dtype=torch.float64) for f in masks)


def temperature_sets(groups: list[BudgetGroup]) -> list[list[int]]:
    """Indices of the groups that share a start temperature (``tau_start="auto"``).

    Args:
        groups: the model's budget groups.

    Returns:
        Each layer / global group alone, then the N:M groups by (n, row length, dtype, device).
    """
    sets, nm = [], {}
    for group_index, group in enumerate(groups):
        if group.kind == "nm":
            scores = group.layers[0].smart_scores
            nm.setdefault((group.k, tuple(scores.shape[1:]), scores.dtype, scores.device), []).append(group_index)
        else:
            sets.append([group_index])
    return sets + list(nm.values())
