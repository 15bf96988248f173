"""Whole-model calibration of the block fits: blocks run slower inside the model than timed alone.

A block timed alone reuses one input and its weights stay in cache; inside the model its input comes from the
previous block and the caches hold other layers' weights, so the sum of the blocks timed alone underestimates their
share of the dense time, and the fixed time ``F = dense - sum of the blocks`` comes out too large -- a budget built on
it cuts too much (a MiniLM asked for 3x ran 7x). The whole model is timed with every coupled block narrowed to one
share of its units (`Narrowing`: fresh random modules swapped in around the timed call, so no copy of the model is
made), and `fit_scale` fits

    T(w) = F + c * sum_s (a_s + b_s w_s)

through the dense time (``F = T_dense - c * S_full``, so full width still predicts the dense time exactly) and, by
least squares, through the narrowed whole-model times: ``c = sum_i dT_i dS_i / sum_i dS_i^2`` with
``dT_i = T_dense - T_i`` and ``dS_i = S_full - S_i``. A scale outside ``[1 / MAX_SCALE, MAX_SCALE]`` (noise) falls
back to ``c = 1``, the blocks' own fits.

The prediction passes through every measured whole-model time: the *knots* ``(U_i, T_i)``, ``U_i = c S_i``, and ``(c
S_full, T_dense)``, joined by straight lines (`smart_hf.latency.budget.whole_seconds`). Below the narrowest knot the
lowest segment's line continues, or the time falls in proportion to ``U`` where that line would cross zero first. A
negative ``F`` is frequent at batch 8 and 32 on CPU (6 of 16 builds), where the whole model gains more from
narrowing than its blocks timed alone do; forcing ``F >= 0`` instead predicted a MiniLM narrowed to a quarter 10%
slower than it ran, and its 2x and 3x targets overshot by 9% and 13%.

One narrowed share, a quarter, is timed. A MiniLM at batch 32 narrowed to 0.375 / 0.5 / 0.75 of its units once ran
5-7% faster than the line through the quarter-width and dense times, but a second knot at half width did not land
targets closer: side by side on the same builds (MiniLM and DeiT-small, batch 8 and 32, 1.5 / 2 / 3x, one CPU
thread, 9 timed rounds) the quarter alone missed by 6.9% on average (10 of 12 within 10%) and quarter and half by
8.3% (7 of 12), while the half width costs half a dense forward per round.
"""

from __future__ import annotations

import math

from torch import nn

from ..coupling import CoupledSet
from .blocks import _resized

__all__ = ["MAX_SCALE", "NARROW_SHARES", "Narrowing", "fit_scale", "narrow_width"]

# The shares of every block's units the whole model is timed at: a quarter covers the widths of a 3x target, and
# costs a quarter of a dense forward per round (a half width as well did not help: module docstring).
NARROW_SHARES = (0.25,)
# Blocks inside the model measured up to ~1.3x slower than alone on CPU; a scale beyond 3x either way is noise.
MAX_SCALE = 3.0

_HEAD_ATTRS = ("num_attention_heads", "num_heads")


def narrow_width(cset: CoupledSet, share: float, multiple: int = 1) -> int:
    """The kept units of ``cset`` at ``share`` of its units: rounded, at least 1, FFN / conv widths rounded to
    ``multiple`` where that stays inside ``[1, units]``.

    Args:
        cset: the coupled set.
        share: the share of its units to keep (0..1].
        multiple: the FFN / conv width multiple (heads keep whole heads).

    Returns:
        The kept units.
    """
    w = max(1, round(share * cset.units))
    step = 1 if cset.kind == "heads" else multiple
    if cset.units >= step > 1:
        w = max(step, round(w / step) * step)
    return min(cset.units, w)


def _head_attrs(attention: nn.Module, cset: CoupledSet, kept: int) -> dict[str, int]:
    """The head-count attributes of ``attention`` and their values with ``kept`` units (head size unchanged)."""
    heads = kept * cset.heads_per_unit
    values = {a: heads for a in _HEAD_ATTRS}
    values.update(num_key_value_heads=kept, all_head_size=heads * cset.head_dim, split_size=kept * cset.head_dim)
    return {a: v for a, v in values.items() if isinstance(getattr(attention, a, None), int)}


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Narrowing:
    """A reusable context manager that narrows every set in ``sets`` of ``model`` to ``kept[owner]`` units while
    entered.

    Entering swaps fresh modules of the narrowed shapes (random weights: only the time matters; `rebuild_block`'s
    resizing) and the head-count attributes into the model; leaving swaps the originals back, also on error, so the
    model is unchanged outside the ``with`` block and no copy of it is made. The swap itself (a few microseconds per
    module: ~1.6 ms for a 6-layer BERT) is kept out of timed regions by entering outside them
    (`smart_hf.latency.timing.time_round_robin`'s ``contexts``): inside them it made a narrowed MiniLM at batch 1
    look 12% slower than its slim copy.

    Args:
        model: the unprepared model.
        sets: the coupled sets to narrow.
        kept: kept units per set owner (a set not listed keeps all of them).
    """

    def __init__(self, model: nn.Module, sets: list[CoupledSet], kept: dict[str, int]):
        self.model = model
        resizes, self._attrs = {}, []  # {name: [(axis, entries)]}, [(module, attribute, original, narrowed)]
        for cset in sets:
            w = kept.get(cset.owner, cset.units)
            if w == cset.units:
                continue
            for m in cset.members:  # a conv between two chains is one set's consumer and the next one's producer
                resizes.setdefault(m.name, []).append((m.axis, m.chunks * w * m.width))
            if cset.kind == "heads" and cset.attention is not None:
                attention = model.get_submodule(cset.attention)
                self._attrs += [(attention, a, getattr(attention, a), v)
                                for a, v in _head_attrs(attention, cset, w).items()]
        self._modules = []  # (name, original, narrowed)
        for name, steps in resizes.items():
            narrowed = original = model.get_submodule(name)
            for axis, entries in steps:
                narrowed = _resized(narrowed, axis, entries)
            self._modules.append((name, original, narrowed))

    def _swap(self, narrow: bool) -> None:
        for name, original, narrowed in self._modules:
            _set(self.model, name, narrowed if narrow else original)
        for module, attr, original, narrowed in self._attrs:
            setattr(module, attr, narrowed if narrow else original)

    def __enter__(self) -> nn.Module:
        self._swap(True)
        return self.model

    def __exit__(self, *exc) -> None:
        self._swap(False)


def fit_scale(dense: float, full: float, points: list[tuple[float, float]]) -> dict:
    """Fit ``T = F + c S`` through ``(full, dense)`` and, by least squares, the narrowed ``points``; the knots of the
    prediction through every measured time (module docstring).

    Args:
        dense: the dense whole-model time ``T_dense`` (seconds).
        full: ``S_full``, the sum of the block fits at full width (seconds).
        points: ``(S_i, T_i)`` per narrowed whole-model run: the sum of the block fits at its widths and its
            measured time (seconds).

    Returns:
        ``{"scale": c, "fixed_seconds": F, "knots": [[U_i, T_i], ..., [c S_full, T_dense]] or None, "fallback": None
        or why the blocks' own fits were kept}``, knots increasing in both (a measured time out of order, i.e. noise,
        is left out). With a fallback ``c = 1``, no knots and ``F = dense - full`` (which may be negative: the caller
        handles it).
    """
    ds = [full - s for s, _ in points]
    dt = [dense - t for _, t in points]
    denom = sum(d * d for d in ds)
    scale = sum(a * b for a, b in zip(dt, ds)) / denom if denom > 0 else math.nan
    why = None
    if not math.isfinite(scale) or full <= 0 or dense <= 0:
        why = "no narrowed time differs from the dense one"
    elif not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        why = f"the fitted scale {scale:.2f} is outside [{1 / MAX_SCALE:.2f}, {MAX_SCALE:g}] (noise)"
    if why is not None:
        return {"scale": 1.0, "fixed_seconds": dense - full, "knots": None, "fallback": why}
    knots = [[scale * full, dense]]
    for s, t in sorted(points, reverse=True):
        if 0 < t < knots[0][1] and 0 < s * scale < knots[0][0]:
            knots.insert(0, [scale * s, t])
    if len(knots) == 1:
        return {"scale": 1.0, "fixed_seconds": dense - full, "knots": None, "fallback": "no narrowed time is usable"}
    return {"scale": scale, "fixed_seconds": dense - scale * full, "knots": knots, "fallback": None}
