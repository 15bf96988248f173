"""Budgets: how many units (or weights) a layer or a group of layers keeps. Pure integer/float functions.

* ``budget="layer"``: a layer with ``U`` units keeps ``round((1 - sparsity) * U)`` units (at least 1).
* ``budget="global"``: all targeted layers share one top-k over their units, each weighted by its cost (weights per
  unit), with weight budget ``K = (1 - sparsity) * sum(weights)``. Before the shared ranking every layer reserves its
  best ``max(1, ceil(min_layer_density * U))`` units, so no layer can be removed entirely.
* N:M keeps exactly ``n`` of every ``m`` weights: no budget choice to make.

Achieved sparsity equals the target within one unit (half a unit's cost for the global ranking, see
``hard_topk``).
"""

from __future__ import annotations

import math

__all__ = ["annealed_budget", "budget_progress", "global_weight_budget", "layer_keep_units", "reserved_units"]


def _check_sparsity(sparsity: float) -> None:
    # budgets are pure arithmetic: an out-of-range sparsity would silently clamp to "keep one unit" or "keep all"
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}; e.g. 0.5 keeps half the weights.")


def layer_keep_units(num_units: int, sparsity: float) -> int:
    """Units a layer keeps under a per-layer budget: ``round((1 - sparsity) * num_units)``, clamped to [1, U]."""
    _check_sparsity(sparsity)
    if num_units < 1:
        raise ValueError(f"a layer needs at least one unit, got num_units={num_units}.")
    return int(min(num_units, max(1, round((1.0 - sparsity) * num_units))))


def reserved_units(num_units: int, min_layer_density: float) -> int:
    """Units a layer keeps regardless of the global ranking: ``max(1, ceil(min_layer_density * U))``."""
    return int(min(num_units, max(1, math.ceil(min_layer_density * num_units - 1e-9))))


def global_weight_budget(total_weights: int, sparsity: float) -> float:
    """Weights the whole group keeps: ``round((1 - sparsity) * total_weights)``."""
    _check_sparsity(sparsity)
    return float(round((1.0 - sparsity) * total_weights))


def budget_progress(step: int, total_steps: int, anneal_fraction: float) -> float:
    """Budget anneal progress ``p_b`` at search ``step`` of ``total_steps``: 0 keeps everything, 1 is the target.

    ``p_b = 1 - (1 - min(1, step / (anneal_fraction * total_steps)))**3`` (Zhu & Gupta's cubic sparsity schedule:
    fast early, gentle near the target); ``anneal_fraction = 0`` gives 1 from the first step (no anneal).
    """
    if not 0.0 <= anneal_fraction <= 1.0:
        raise ValueError(f"anneal_fraction must be in [0, 1], got {anneal_fraction}; e.g. 2/3, or 0 for no anneal.")
    if anneal_fraction == 0.0:
        return 1.0
    p = min(1.0, max(0.0, step / max(anneal_fraction * total_steps, 1e-12)))
    return 1.0 - (1.0 - p) ** 3


def annealed_budget(k_target: float, capacity: float, progress: float) -> float:
    """The budget at anneal ``progress`` in [0, 1]: ``capacity - (capacity - k_target) * progress`` (linear in the
    progress, so the *kept* amount follows `budget_progress`'s cubic). ``capacity`` is what "keep everything" means:
    ``m`` for an N:M row, the unit count of a layer budget, the total weight cost of a global group."""
    return capacity - (capacity - k_target) * min(1.0, max(0.0, progress))
