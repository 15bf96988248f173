"""Temperature schedules for the structure-search stage, as pure functions of the optimizer step.

``p = clamp(step / total_steps, 0, 1)`` is the search progress.

* ``exponential``: ``tau = tau_start * (tau_end / tau_start) ** p`` (geometric: every step divides tau by the same
  factor, so the mask hardens at a steady rate in log-temperature).
* ``cosine``: ``tau = tau_end + (tau_start - tau_end) * (1 + cos(pi p)) / 2``.
* ``linear``: ``tau = tau_start + (tau_end - tau_start) * p``.
* ``constant``: ``tau = tau_start`` (an ablation: a fixed tau keeps tied scores fractional forever).
* ``dynamic`` (SMART's trick, our reconstruction, docs/method.md): the exponential base multiplied by a scale that a
  feedback rule lowers. Every ``window`` steps the mask fractionality (mean of ``min(f, 1 - f)``) is compared with the
  value one window earlier; if it fell by less than ``min_decrease`` (relative), the mask is stuck near a non-sparse
  stationary point (uniform or tied scores are stationary at *every* tau), so tau is cut by ``cut`` and the caller
  jitters the scores by ``jitter * tau`` (seeded, identical on every rank) to break the ties. Lower tau then amplifies
  the jitter (gain ~ 1/tau) until the mask is binary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DynamicState", "dynamic_update", "temperature_at"]

MIN_TEMPERATURE = 1e-6  # the operator is tested down to here
_BINARY_ENOUGH = 1e-4  # fractionality below which there is nothing left to escape from


def temperature_at(step: int, total_steps: int, tau_start: float, tau_end: float, schedule: str) -> float:
    """Base temperature at optimizer ``step`` of a search stage lasting ``total_steps`` steps."""
    p = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule in ("exponential", "dynamic"):
        return tau_start * (tau_end / tau_start) ** p
    if schedule == "cosine":
        return tau_end + (tau_start - tau_end) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return tau_start + (tau_end - tau_start) * p
    if schedule == "constant":
        return tau_start
    raise ValueError(
        f"unknown temperature schedule {schedule!r}; choose one of dynamic, exponential, cosine, linear, constant."
    )


@dataclass(frozen=True)
class DynamicState:
    """State of the dynamic rule: the tau scale, and the fractionality/step of the last check."""

    scale: float = 1.0
    ref_fractionality: float = math.inf
    ref_step: int = 0


def dynamic_update(
    state: DynamicState, step: int, fractionality: float, window: int, min_decrease: float, cut: float
) -> tuple[DynamicState, bool]:
    """One check of the dynamic rule; returns the new state and whether tau was cut (the caller then jitters)."""
    if step - state.ref_step < window:
        return state, False
    stuck = fractionality > _BINARY_ENOUGH and fractionality > state.ref_fractionality * (1.0 - min_decrease)
    scale = state.scale * cut if stuck else state.scale
    return DynamicState(scale=scale, ref_fractionality=fractionality, ref_step=step), stuck
