"""Pruning to a speed: a latency model measured on the device, a budget of measured time, and the speed-up check.

``SmartConfig(pattern="coupled", target_speedup=2.0)`` goes through here at `smart_hf.prepare_model`:
`measure_for_prepare` times the dense model and each kind of coupled block at the user's shape (cached on disk,
`smart_hf.latency.model`), `apply_speed_budget` turns every coupled unit's budget cost into its marginal time and
returns the sparsity of the global budget that spends ``dense time / target`` (`smart_hf.latency.budget`). After
`smart_hf.slim`, `measure_speedup` times the real slim model against the dense one.
"""

from __future__ import annotations

from torch import nn

from ..core.budget import reserved_units
from ..coupling import find_coupled_sets
from .budget import NS, block_seconds, block_seconds_for, predicted_seconds, speed_budget, whole_seconds
from .model import cache_dir, latency_key, measure_latency_model, width_grid
from .speedup import measure_speedup
from .timing import SPREAD_WARN, latency_inputs, load_average
from .widths import resolved_width_multiple, round_group_widths

__all__ = [
    "NS",
    "SPREAD_WARN",
    "apply_speed_budget",
    "block_seconds",
    "block_seconds_for",
    "cache_dir",
    "latency_inputs",
    "latency_key",
    "load_average",
    "measure_for_prepare",
    "measure_latency_model",
    "measure_speedup",
    "predicted_seconds",
    "resolved_width_multiple",
    "round_group_widths",
    "speed_budget",
    "width_grid",
    "whole_seconds",
]


def measure_for_prepare(model: nn.Module, config, owners: list[str]) -> dict:
    """The latency model of ``model`` at ``config``'s shape for the coupled sets owned by ``owners``: measured now,
    before SMART is attached, or read from the cache.

    Args:
        model: the unprepared model (its device and dtype are the ones timed).
        config: the `SmartConfig` (``latency_batch_size``, ``latency_seq_len``, width multiple).
        owners: the owners of the coupled sets about to be prepared.

    Returns:
        The latency model (`measure_latency_model`).
    """
    device = next(model.parameters()).device
    sets = [s for s in find_coupled_sets(model) if s.owner in set(owners)]
    multiple = resolved_width_multiple(config, device)
    return measure_latency_model(model, sets, config.latency_batch_size, config.latency_seq_len, multiple)


def apply_speed_budget(layers: list, owners: list[str], latency: dict, config) -> dict:
    """Give every prepared coupled owner its marginal time as budget cost and solve the budget for the target.

    Args:
        layers: the prepared owner layers (each with its `CoupledBinding`), aligned with ``owners``.
        owners: their module names.
        latency: the latency model (`measure_for_prepare`).
        config: the `SmartConfig` with ``target_speedup``.

    Returns:
        The budget (`speed_budget`) plus ``"width_multiple"``, ``"latency_cached"`` and ``"latency_scale"`` (the
        whole-model scale of the block fits, `smart_hf.latency.calibrate`); its ``"sparsity"`` is the global
        budget's.

    Raises:
        ValueError: when the target is out of reach (the largest reachable speed-up named).
    """
    multiple = resolved_width_multiple(config, layers[0].weight.device)
    minimums = [max(1, reserved_units(layer.smart_layout.num_units, config.min_layer_density)) for layer in layers]
    budget = speed_budget(latency, owners, minimums, multiple, config.target_speedup)
    for layer, cost in zip(layers, budget["unit_cost_ns"]):
        layer._smart_coupled.unit_cost = float(cost)
    scale = latency.get("calibration", {}).get("scale")
    return {**budget, "width_multiple": multiple, "latency_cached": latency.get("cached", False), "latency_scale": scale}
