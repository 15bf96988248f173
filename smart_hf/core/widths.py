"""Kernel-friendly widths: per-layer kept-unit counts rounded to a multiple under one cost budget.

A global budget picks units one by one, so a layer may keep 1013 FFN neurons; matmul kernels run whole tiles
(8-64 columns), so 1013 costs about what 1024 does. `round_widths` moves every layer to an allowed count (a
multiple of its ``multiple``, or the layer's full width) while keeping the total cost ``sum_l c_l * cost_l`` as
close to the budget ``k`` as chunk steps allow, and keeps, in every layer, its ``c_l`` highest-scored units.

Rounding rule: each layer first goes to the allowed count nearest its current one (never below its minimum). Then,
while the total is above ``k``, the chunk (the units between a layer's count and its next lower allowed count)
with the lowest mean score is dropped, and while below, the chunk with the highest mean score above a layer's
count is added -- each only while the step brings the total closer to ``k``. Scores are compared across layers
as the global top-k compares them.
"""

from __future__ import annotations

import torch

__all__ = ["allowed_counts", "round_widths"]


def allowed_counts(units: int, multiple: int, minimum: int = 1) -> list[int]:
    """Kept counts a layer of ``units`` may have: the multiples of ``multiple`` in ``[minimum, units]`` plus
    ``units`` itself; the smallest multiple at or above ``minimum`` when ``minimum`` is not one.

    Args:
        units: the layer's number of units (> 0).
        multiple: the width multiple (>= 1).
        minimum: the fewest units the layer must keep (>= 0).

    Returns:
        The sorted allowed counts (never empty: ``units`` is always allowed).

    Raises:
        ValueError: for ``units < 1`` or ``multiple < 1``.
    """
    if units < 1 or multiple < 1:
        raise ValueError(f"allowed_counts needs units >= 1 and multiple >= 1, got {units} and {multiple}.")
    counts = [c for c in range(multiple, units + 1, multiple) if c >= max(minimum, 1)]
    return sorted(set(counts + [units]))


def _nearest(counts: list[int], kept: int) -> int:
    """The allowed count nearest ``kept`` (the larger one on a tie: rounding must not starve a layer)."""
    return min(counts, key=lambda c: (abs(c - kept), -c))


def round_widths(
    scores: list[torch.Tensor],
    masks: list[torch.Tensor],
    multiples: list[int],
    costs: list[float],
    budget: float,
    minimums: list[int] | None = None,
) -> list[torch.Tensor]:
    """Round every layer's kept units to an allowed count under one cost budget (see the module docstring).

    Args:
        scores: per layer, the unit scores, shape ``(units_l,)`` (any float dtype).
        masks: per layer, the current binary mask ``(units_l,)`` (the global top-k's); only its kept count is read.
        multiples: per layer, the width multiple (1 = any count).
        costs: per layer, the cost of one unit (> 0).
        budget: the total cost ``k`` to stay closest to.
        minimums: per layer, the fewest units to keep (default 1 each).

    Returns:
        Per layer, a ``{0, 1}`` mask of ``masks[l]``'s shape and dtype keeping the ``c_l`` best-scored units
        (ties: the lower index), ``c_l`` an allowed count (`allowed_counts`).

    Raises:
        ValueError: when the lists differ in length.
    """
    n = len(scores)
    minimums = [1] * n if minimums is None else minimums
    if not len(masks) == len(multiples) == len(costs) == len(minimums) == n:
        raise ValueError("round_widths needs one score tensor, mask, multiple, cost and minimum per layer.")
    orders = [torch.sort(s.detach().double().reshape(-1), descending=True, stable=True) for s in scores]
    allowed = [allowed_counts(s.numel(), q, lo) for s, q, lo in zip(scores, multiples, minimums)]
    counts = [_nearest(a, int(m.sum())) for a, m in zip(allowed, masks)]

    def total() -> float:
        return sum(c * w for c, w in zip(counts, costs))

    def chunk_mean(li: int, lo: int, hi: int) -> float:
        return float(orders[li].values[lo:hi].mean())

    while True:  # each pass moves one chunk towards the budget, or stops
        over = total() - budget
        steps = []
        for li, (a, c) in enumerate(zip(allowed, counts)):
            pos = a.index(c)
            if over > 0 and pos > 0:  # drop the layer's worst chunk
                steps.append((chunk_mean(li, a[pos - 1], c), li, a[pos - 1]))
            elif over < 0 and pos + 1 < len(a):  # add its best missing chunk (negated: the min is the best)
                steps.append((-chunk_mean(li, c, a[pos + 1]), li, a[pos + 1]))
        if not steps:
            break
        _, li, new = min(steps)
        if abs(over + (new - counts[li]) * costs[li]) >= abs(over):
            break
        counts[li] = new
    out = []
    for (values, order), mask, c in zip(orders, masks, counts):
        keep = torch.zeros(values.numel(), dtype=mask.dtype, device=mask.device)
        keep[order[:c].to(mask.device)] = 1
        out.append(keep.reshape(mask.shape))
    return out
