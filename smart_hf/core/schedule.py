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

__all__ = ["DynamicState", "auto_temperature", "dynamic_update", "temperature_at"]

MIN_TEMPERATURE = 1e-6  # the operator is tested down to here
_BINARY_ENOUGH = 1e-4  # fractionality below which there is nothing left to escape from


def temperature_at(step: int, total_steps: int, tau_start: float, tau_end: float, schedule: str) -> float:
    """Base temperature at optimizer ``step`` of a search stage lasting ``total_steps`` steps.

    Args:
        step: optimizer steps into the search (clamped to ``[0, total_steps]``).
        total_steps: length of the search stage in optimizer steps.
        tau_start: temperature at step 0.
        tau_end: temperature at the last step.
        schedule: ``"dynamic"`` / ``"exponential"`` (geometric), ``"cosine"``, ``"linear"`` or ``"constant"``.

    Returns:
        The temperature (a float).

    Raises:
        ValueError: for an unknown ``schedule``.
    """
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
    """One check of the dynamic rule: every ``window`` steps, cut the tau scale by ``cut`` when the fractionality
    fell by less than ``min_decrease`` (relative) since the last check and is not yet binary enough.

    Args:
        state: the rule's state after the last check.
        step: the current optimizer step.
        fractionality: mean ``min(f, 1 - f)`` of the soft masks now.
        window: steps between two checks.
        min_decrease: relative decrease of the fractionality that counts as progress.
        cut: factor applied to the scale when stuck (< 1).

    Returns:
        ``(new state, whether tau was cut)``; the caller jitters the scores after a cut.
    """
    if step - state.ref_step < window:
        return state, False
    stuck = fractionality > _BINARY_ENOUGH and fractionality > state.ref_fractionality * (1.0 - min_decrease)
    scale = state.scale * cut if stuck else state.scale
    return DynamicState(scale=scale, ref_fractionality=fractionality, ref_step=step), stuck


def auto_temperature(
    fractionality_at, target: float, lo: float = 1e-6, hi: float = 1e4, iters: int = 60, rtol: float = 1e-4
) -> float:
    """The temperature at which ``fractionality_at(tau)`` (mean ``min(f, 1 - f)`` of a soft top-k, which grows with
    tau) equals ``target`` to a relative ``rtol``: a root of ``g(u) = log(fractionality_at(e^u) / target)`` in
    ``u = log tau`` on ``[log lo, log hi]``.

    The search is Dekker's method: a secant step from the last two iterates when it lands between the best iterate
    and the bracket's midpoint, a bisection otherwise, and a bisection whenever the bracket did not halve in two
    steps or an end's mask is exactly binary (``g = -inf``). In log-log coordinates ``g`` is nearly linear for
    small tau (only units within ~tau of the threshold are fractional, so the fractionality grows about in
    proportion to tau), so it converges in 7-10 evaluations where bisection to the same precision took 42 -- each
    one a soft top-k of every unit of the group, seconds on CPU for a BERT-base-sized model. The bracket shrinks at
    every step, so it always converges.

    The target is capped at half the fractionality at ``hi`` (about the uniform mask's ``min(k/N, 1 - k/N)``): at 90%
    sparsity no mask is more fractional than 0.1, and "0.05" then means "half as fractional as uniform".
    Returns 1.0 when even ``lo`` leaves the mask above the target (tied scores, e.g. ``score_init="constant"``:
    their mask is ``k/N`` at every tau, so only the dynamic rule's jitter can break them), and ``hi`` for a group
    whose mask is binary at every tau (it keeps everything).

    Args:
        fractionality_at: ``tau -> mean min(f, 1 - f)`` of the soft masks at temperature ``tau``.
        target: the fractionality wanted, in ``(0, 0.5)``.
        lo: smallest temperature searched.
        hi: largest temperature searched.
        iters: most evaluations of ``fractionality_at``.
        rtol: relative tolerance on the fractionality.

    Returns:
        The temperature (a float in ``[lo, hi]``, or 1.0 as described above).

    Raises:
        ValueError: when ``target`` is not in ``(0, 0.5)``.
    """
    if not 0.0 < target < 0.5:
        raise ValueError(f"target fractionality must be in (0, 0.5), got {target}; e.g. 0.05.")
    high_end = fractionality_at(hi)
    target = min(target, 0.5 * high_end)
    if target <= 0.0:
        return hi
    low_end = fractionality_at(lo)
    if low_end > target:
        return 1.0

    def gap(fractionality: float) -> float:
        return math.log(fractionality / target) if fractionality > 0 else -math.inf

    log_root = _dekker_root(
        lambda u: gap(fractionality_at(math.exp(u))), (math.log(lo), gap(low_end)), (math.log(hi), gap(high_end)),
        iters, rtol,
    )  # fmt: skip
    return math.exp(log_root)


def _dekker_root(g, low: tuple[float, float], high: tuple[float, float], iters: int, rtol: float) -> float:
    """A root of ``g`` by Dekker's method (see `auto_temperature`) in the bracket ``low = (a, g(a))``,
    ``high = (b, g(b))``, whose ``g`` values have opposite signs (``-inf`` allowed): the first iterate ``u`` with
    ``|g(u)| <= rtol``, else the bracket's midpoint after ``iters`` evaluations of ``g``."""
    a, g_a = low  # the contrapoint: g(a) has the other sign than g(b)
    b, g_b = high  # the best iterate so far
    c, g_c = a, g_a  # the previous iterate
    widths = [math.inf, math.inf]
    for _ in range(iters):
        if abs(g_a) < abs(g_b):
            a, b, g_a, g_b = b, a, g_b, g_a
            c, g_c = a, g_a
        mid = 0.5 * (a + b)
        u = mid
        slow = abs(b - a) > 0.5 * widths[-2]  # the bracket did not halve in two steps: bisect
        if math.isfinite(g_c) and g_c != g_b and not slow:
            secant = b - g_b * (b - c) / (g_b - g_c)
            if min(b, mid) < secant < max(b, mid):
                u = secant
        g_u = g(u)
        if abs(g_u) <= rtol:
            return u
        widths.append(abs(b - a))
        c, g_c = b, g_b
        if (g_u > 0) != (g_b > 0):
            a, g_a = b, g_b
        b, g_b = u, g_u
    return 0.5 * (a + b)
