"""A speed target as a global budget of measured time.

With block ``s`` fitted as ``t_s(w) = a_s + b_s w`` (scaled into the whole model) and the fixed time ``F``
(`smart_hf.latency.model`), a model keeping ``w_s`` units everywhere is predicted to run
``T(w) = F + U(w)``, ``U(w) = sum_s (a_s + b_s w_s)``, which equals the dense time at full width; where the latency
model has knots (the measured whole-model times, `smart_hf.latency.calibrate`), ``T`` runs through them in straight
lines instead (`whole_seconds`). Asking ``T_dense / T(w) = target`` is a knapsack over units of cost ``b_s``:

    sum_s b_s w_s = k,   k = U(T_dense / target) - sum_s a_s,

with ``U(T)`` the block time that gives the whole time ``T`` (`block_seconds_for`, the inverse of `whole_seconds`);
so every coupled unit's budget cost becomes its marginal time ``b_s`` (in nanoseconds, so that the budget's integer
rounding is far below a unit) and the existing global budget keeps cost ``k``, i.e. the equivalent sparsity
``1 - k / sum_s b_s units_s``. The fastest model the guards allow keeps each layer's minimum (its reserved units,
rounded up to the width multiple); a target beyond it is refused with the largest reachable speed-up.
"""

from __future__ import annotations

import math

from ..core.widths import allowed_counts

__all__ = ["NS", "block_seconds", "block_seconds_for", "predicted_seconds", "speed_budget", "whole_seconds"]

NS = 1e9  # budget cost unit: nanoseconds per unit


def whole_seconds(latency: dict, block_seconds: float) -> float:
    """The whole model's time for a block time ``U = sum_s (a_s + b_s w_s)``: ``T = F + U``, or, where the latency
    model has knots ``(U_i, T_i)``, the straight line through the two knots around ``U``; below the lowest knot the
    lowest segment's line, or ``T_1 U / U_1`` where that is larger (the line would reach 0 above ``U = 0``).

    Args:
        latency: a latency model (`measure_latency_model`; ``"knots"`` may be absent or None).
        block_seconds: ``U`` in seconds (the scaled block fits' sum).

    Returns:
        ``T`` in seconds.
    """
    knots = latency.get("knots")
    if not knots or len(knots) < 2:
        return latency["fixed_seconds"] + block_seconds
    i = next((j for j in range(1, len(knots) - 1) if block_seconds < knots[j][0]), len(knots) - 1)
    (u0, t0), (u1, t1) = knots[i - 1], knots[i]
    line = t0 + (block_seconds - u0) * (t1 - t0) / (u1 - u0)
    return max(line, t0 * block_seconds / u0) if block_seconds < u0 else line


def block_seconds_for(latency: dict, seconds: float) -> float:
    """The inverse of `whole_seconds`: the block time ``U`` at which the whole model runs ``seconds``.

    Args:
        latency: a latency model.
        seconds: the whole model's time ``T``.

    Returns:
        ``U`` in seconds.
    """
    knots = latency.get("knots")
    if not knots or len(knots) < 2:
        return seconds - latency["fixed_seconds"]
    i = next((j for j in range(1, len(knots) - 1) if seconds < knots[j][1]), len(knots) - 1)
    (u0, t0), (u1, t1) = knots[i - 1], knots[i]
    on_line = u0 + (seconds - t0) * (u1 - u0) / (t1 - t0)
    return min(on_line, u0 * seconds / t0) if seconds < t0 else on_line


def predicted_seconds(latency: dict, kept: dict[str, int]) -> float:
    """``T(w) = whole_seconds(sum_s (a_s + b_s w_s))`` for ``kept = {owner: w_s}`` (owners not listed keep every
    unit).

    Args:
        latency: a latency model (`measure_latency_model`).
        kept: kept units per owner.

    Returns:
        The predicted forward time in seconds.
    """
    return whole_seconds(latency, block_seconds(latency, kept))


def block_seconds(latency: dict, kept: dict[str, int] | None = None) -> float:
    """``U(w) = sum_s (a_s + b_s w_s)`` over every owner of ``latency``.

    Args:
        latency: a latency model, or just its ``{"blocks", "owners"}`` (the block fits as they stand).
        kept: kept units per owner (owners not listed, or all with None, keep every unit).

    Returns:
        ``U`` in seconds.
    """
    kept = kept or {}
    total = 0.0
    for owner, sig in latency["owners"].items():
        block = latency["blocks"][sig]
        total += block["a"] + block["b"] * kept.get(owner, block["units"])
    return total


def speed_budget(latency: dict, owners: list[str], minimums: list[int], multiple: int, target: float) -> dict:
    """The unit costs and the equivalent sparsity that make ``T_dense / T(w) = target`` (module docstring).

    Args:
        latency: a latency model measured for every owner in ``owners``.
        owners: the prepared owners (one per coupled layer), in budget-group order.
        minimums: per owner, the fewest units it must keep (the budget's reserved units).
        multiple: the FFN / conv width multiple (the minimum is rounded up to it).
        target: the speed-up asked for (> 1).

    Returns:
        ``{"unit_cost_ns": [per owner], "sparsity", "target", "max_speedup", "dense_seconds",
        "predicted_seconds"}``.

    Raises:
        ValueError: when ``target`` exceeds the largest speed-up the smallest allowed widths give (named).
    """
    blocks = [latency["blocks"][latency["owners"][o]] for o in owners]
    floor = {}
    for owner, block, lo in zip(owners, blocks, minimums):
        step = 1 if block["kind"] == "heads" else multiple
        floor[owner] = allowed_counts(block["units"], step, lo)[0]
    dense = latency["dense_seconds"]
    fastest = predicted_seconds(latency, floor)
    max_speedup = dense / fastest if fastest > 0 else math.inf
    if target > max_speedup:
        raise ValueError(
            f"target_speedup={target:g} is out of reach: keeping the fewest units the budget allows (min_layer_density"
            f", width multiple {multiple}) is predicted to run {max_speedup:.2f}x faster at this shape. Ask for at "
            f"most {math.floor(max_speedup * 100) / 100:.2f}, or lower min_layer_density."
        )
    costs = [b["b"] for b in blocks]
    capacity = sum(c * b["units"] for c, b in zip(costs, blocks))
    k = block_seconds_for(latency, dense / target) - block_seconds(latency, {o: 0 for o in owners})
    return {
        "unit_cost_ns": [c * NS for c in costs],
        "sparsity": min(max(1.0 - k / capacity, 0.0), 1.0 - 1e-9) if capacity > 0 else 0.0,
        "target": target,
        "max_speedup": max_speedup,
        "dense_seconds": dense,
        "predicted_seconds": dense / target,
    }
