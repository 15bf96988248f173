"""The latency model of a model at the user's shape: dense time, and each kind of coupled block timed vs. width.

``measure_latency_model(model, sets, batch, seq_len)`` times

* the dense forward (median of repeats),
* every distinct block (`block_signature`: all layers of a BERT share one FFN and one attention signature, so one
  block per kind is timed, per-layer only where layers differ) at a grid of kept widths, and fits ``t(w) = a + b w``
  by least squares (``b >= 0``; a fit with ``b <= 0``, i.e. noise, falls back to ``t(w) = t(units) * w / units``);
* the whole model with every block narrowed to a quarter of its units (`smart_hf.latency.calibrate`): blocks run
  slower inside the model than alone, so their fits are scaled by the ``c`` of ``T(w) = F + c sum_s t_s(w_s)``
  fitted through the dense and the narrowed whole-model times (``c = 1`` when that fit is nonsense);
* the fixed time, what pruning cannot remove (embeddings, norms, the head, residuals, framework overhead):
  ``F = dense - c * sum over sets of t_s(units_s)``; the prediction runs through the dense and every narrowed
  whole-model time in straight lines (``knots``, `smart_hf.latency.calibrate`), so full width predicts the dense time
  exactly.

The result is cached as JSON under ``$SMART_HF_CACHE`` (default ``$HF_HOME/smart_hf``, i.e.
``~/.cache/huggingface/smart_hf``) in ``latency/<hash>.json``, keyed by device name, dtype, threads, input shape,
torch version and the model's layer shapes; the key is stored in the file and compared in full on load, so a
latency model measured on another device, dtype, thread count or shape is never reused.

Cost of a build: one timed forward to capture the block input shapes (it also warms the dense model up), one
warm-up of the rebuilt blocks and the narrowed model, then rounds of the dense forward, the narrowed one and every
block at every grid width -- 7 rounds or more until `MIN_SECONDS` are spent (short forwards get more rounds), and no
round after the third once ``max_seconds`` are spent. A round costs about 1.5 dense forwards, since the grid of one
block per kind sums to ~2.5 full blocks and the narrowed model runs in about a quarter of the dense time. When the
capture's forward takes `WARMUP_SKIP_SECONDS` or more, there is no warm-up round and that forward counts as the dense
forward's first sample: such a build costs about 4.5 dense forwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn

from ..coupling import CoupledSet
from .blocks import block_signature, capture_input_shapes, rebuild_block
from .budget import block_seconds
from .calibrate import NARROW_SHARES, Narrowing, fit_scale, narrow_width
from .timing import (
    latency_inputs,
    load_average,
    spread,
    time_call,
    time_round_robin,
    warn_if_noisy,
    warn_if_width_blind,
)

__all__ = ["cache_dir", "latency_key", "measure_latency_model", "width_grid"]

# Rounds of the round-robin timing continue until this much time is spent: a 50 ms forward timed 7 times moved the
# predicted speed-up of one set of widths between 2.8x and 3.9x from build to build, 40 times (~4 s) within 3.3-3.5x.
MIN_SECONDS = 4.0
# A dense forward at least this long skips the warm-up round of the narrowed model and the blocks, and the shape
# capture's forward is the dense forward's first sample (a BERT-base at 32 x 128 on one CPU thread: 11-14 s a forward).
WARMUP_SKIP_SECONDS = 2.0

# 2: block fits scaled into the whole model (`smart_hf.latency.calibrate`), a ``calibration`` record;
# 3: the narrowed forward timed without its module swaps (2 counted them: ~1.6 ms per forward on a 6-layer BERT);
# 4: predictions through every measured whole-model time (``knots``), also where the fixed time is negative
SCHEMA = 4


def cache_dir() -> Path:
    """Where latency models are cached: ``$SMART_HF_CACHE``, else ``$HF_HOME/smart_hf``, else
    ``~/.cache/huggingface/smart_hf``.

    Returns:
        The directory (not created here).
    """
    if os.environ.get("SMART_HF_CACHE"):
        return Path(os.environ["SMART_HF_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "smart_hf"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{device.type}:{cpu}"


def latency_key(model: nn.Module, inputs: dict) -> dict:
    """What a cached latency model must match: device name, dtype, threads, input shapes, torch version and a hash
    of the model's class and parameter shapes.

    Args:
        model: the (unprepared) model.
        inputs: its timing inputs (`latency_inputs`).

    Returns:
        The key as a JSON-serialisable dict.
    """
    param = next(model.parameters())
    layers = hashlib.sha256(
        repr([type(model).__name__] + [(n, tuple(p.shape)) for n, p in model.named_parameters()]).encode()
    ).hexdigest()[:16]
    return {
        "schema": SCHEMA,
        "device": _device_name(param.device),
        "dtype": str(param.dtype),
        "threads": torch.get_num_threads(),
        "shape": {k: list(v.shape) for k, v in inputs.items() if torch.is_tensor(v)},
        "torch": torch.__version__,
        "layers": layers,
    }


def width_grid(units: int, multiple: int = 1) -> list[int]:
    """The kept widths timed for a block of ``units``: 1/8, 1/4, 1/2, 3/4 and all of it, rounded to ``multiple``
    where that stays inside ``[1, units]``.

    Args:
        units: the block's units.
        multiple: the width multiple of the kind (1 for heads).

    Returns:
        Sorted distinct widths.
    """
    out = set()
    for share in (0.125, 0.25, 0.5, 0.75, 1.0):
        w = max(1, round(share * units))
        rounded = max(multiple, round(w / multiple) * multiple) if units >= multiple else w
        out.add(min(units, rounded))
    return sorted(out)


def _fit(widths: list[int], seconds: list[float], units: int) -> tuple[float, float]:
    """Least-squares ``t = a + b w`` with ``a >= 0`` (a negative intercept, i.e. noise, refits through the origin:
    ``b = sum w t / sum w^2``); ``b <= 0`` falls back to ``t = t(units) w / units``."""
    mw, mt = statistics.fmean(widths), statistics.fmean(seconds)
    var = sum((w - mw) ** 2 for w in widths)
    slope = sum((w - mw) * (t - mt) for w, t in zip(widths, seconds)) / var if var > 0 else 0.0
    intercept = mt - slope * mw
    if intercept < 0:
        intercept, slope = 0.0, sum(w * t for w, t in zip(widths, seconds)) / sum(w * w for w in widths)
    if slope <= 0:
        return 0.0, seconds[-1] / units
    return intercept, slope


def _time_all(model, inputs, sets, shapes, multiple: int, max_seconds: float, first_dense: float | None) -> tuple:
    """The dense forward, the whole model narrowed to every share of `NARROW_SHARES` and every distinct block at its
    width grid, timed round-robin in one pass; returns the times, the block fits, ``{owner: signature}`` and
    ``{share: {owner: kept}}``.

    ``first_dense``, the shape capture's forward time when that forward was long, is the dense forward's first
    sample, and no warm-up round runs; otherwise one untimed round warms everything up but the dense forward."""
    fns, grids, owners, first = {"dense": lambda: model(**inputs)}, {}, {}, {}
    timed = [cset for cset in sets if cset.owner in shapes]
    narrow = {share: {c.owner: narrow_width(c, share, multiple) for c in timed} for share in NARROW_SHARES}
    contexts = {("narrow", share): Narrowing(model, timed, kept) for share, kept in narrow.items()}
    fns.update({name: fns["dense"] for name in contexts})
    for cset in timed:
        sig = block_signature(model, cset, shapes[cset.owner])
        owners[cset.owner] = sig
        if sig in grids:
            continue
        first[sig] = cset
        grids[sig] = width_grid(cset.units, 1 if cset.kind == "heads" else multiple)
        for w in grids[sig]:
            fns[(sig, w)] = rebuild_block(model, cset, shapes[cset.owner], w)
    device = next(model.parameters()).device
    taken = {} if first_dense is None else {"dense": [first_dense]}
    times = time_round_robin(  # the dense model was warmed by the shape capture
        fns, device, warmup=int(first_dense is None), max_seconds=max_seconds, warm=("dense",), contexts=contexts,
        min_seconds=MIN_SECONDS, taken=taken,
    )
    blocks = {}
    for sig, grid in grids.items():
        medians = [statistics.median(times[(sig, w)]) for w in grid]
        a, b = _fit(grid, medians, first[sig].units)
        blocks[sig] = {"kind": first[sig].kind, "units": first[sig].units, "widths": grid, "seconds": medians}
        blocks[sig].update(a=a, b=b, spread=max(spread(times[(sig, w)]) for w in grid))
    return times, blocks, owners, narrow


def _measure(model, inputs, sets, multiple: int, max_seconds: float) -> tuple:
    """Capture the block input shapes in one timed dense forward (also the dense warm-up), then `_time_all` in eval
    mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        seconds = []
        shapes = capture_input_shapes(
            model, sets, lambda: seconds.extend(time_call(lambda: model(**inputs), device, repeats=1, warmup=0))
        )
        # one-off first-call costs are negligible against a forward of seconds: that forward is the dense forward's
        # first sample (a BERT-base at 32 x 128 on one thread: 4.5 dense forwards a build instead of 5.5), no warm-up
        first_dense = seconds[0] if seconds[0] >= WARMUP_SKIP_SECONDS else None
        return _time_all(model, inputs, sets, shapes, multiple, max_seconds, first_dense)
    finally:
        model.train(was_training)


def _calibrate(times: dict, blocks: dict, owners: dict, narrow: dict) -> dict:
    """Scale the block fits into the whole model (`fit_scale`) in place; returns the fixed time and the record."""
    dense_s = statistics.median(times["dense"])
    fits = {"blocks": blocks, "owners": owners}
    full = block_seconds(fits)
    points = [(block_seconds(fits, kept), statistics.median(times[("narrow", share)]))
              for share, kept in narrow.items()]
    fit = fit_scale(dense_s, full, points) if owners else {"fallback": "no coupled block timed"}
    scale, knots = fit.get("scale", 1.0), fit.get("knots")
    if fit["fallback"] is not None and full > dense_s:  # blocks alone slower than the whole model: scale into it
        warnings.warn(
            f"smart_hf latency: the coupled blocks timed alone took {full / dense_s:.2f}x the whole dense forward "
            f"(load average {load_average()}); their fits are scaled into the dense time. Measure on a quiet machine.",
            stacklevel=3,
        )
        scale = dense_s / full
    for block in blocks.values():
        block["a"], block["b"] = block["a"] * scale, block["b"] * scale
    record = {"scale": scale, "fallback": fit["fallback"], "shares": list(narrow), "block_sums": [p[0] for p in points],
              "whole_seconds": [p[1] for p in points]}
    fixed = dense_s - scale * full if knots else max(dense_s - scale * full, 0.0)
    return {"fixed_seconds": fixed, "knots": knots, "calibration": record}


def _load_cached(path: Path, key: dict) -> dict | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def _save(path: Path, payload: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a parallel run never reads half a file
    except OSError:
        pass  # a read-only cache only costs the next run a re-measurement


def measure_latency_model(
    model: nn.Module,
    sets: list[CoupledSet],
    batch: int,
    seq_len: int,
    multiple: int = 1,
    use_cache: bool = True,
    max_seconds: float = 30.0,
) -> dict:
    """Measure (or load from the cache) the latency model of ``model`` at ``batch x seq_len`` (module docstring).

    Args:
        model: the unprepared model, on the device and in the dtype it will serve in.
        sets: its coupled sets to time (`smart_hf.coupling.find_coupled_sets`).
        batch: batch size of the timed inputs.
        seq_len: tokens per sequence (text models; vision models use their image size).
        multiple: the FFN / conv width multiple (the timed grid is rounded to it).
        use_cache: read and write the on-disk cache.
        max_seconds: no further round of the round-robin timing starts after this (3 rounds always run).

    Returns:
        ``{"key", "dense_seconds", "dense_spread", "fixed_seconds", "knots", "blocks": {signature: fit}, "owners":
        {owner: signature}, "calibration": {"scale", "fallback", "shares", "block_sums", "whole_seconds"}, "load",
        "cached"}``; the block fits ``a``, ``b`` are already scaled by ``calibration["scale"]``; ``knots`` are the
        measured whole-model times the prediction runs through (`smart_hf.latency.calibrate`, `whole_seconds`).

    Raises:
        ValueError: from `latency_inputs` for a model it cannot build inputs for.
    """
    inputs = latency_inputs(model, batch, seq_len)
    key = latency_key(model, inputs)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "latency" / f"{digest}.json"
    cached = _load_cached(path, key) if use_cache else None
    if cached is not None and all(s.owner in cached["owners"] for s in sets):
        return {**cached, "cached": True}
    times, blocks, owners, narrow = _measure(model, inputs, sets, multiple, max_seconds)
    dense = times["dense"]
    payload = {
        "key": key,
        "dense_seconds": statistics.median(dense),
        "dense_spread": spread(dense),
        **_calibrate(times, blocks, owners, narrow),  # fixed time: the model predicts the dense time exactly
        "blocks": blocks,
        "owners": owners,
        "load": load_average(),
    }
    warn_if_noisy("the dense forward", payload["dense_spread"])
    worst = max((b["spread"] for b in blocks.values()), default=0.0)
    warn_if_noisy("the coupled blocks", worst if math.isfinite(worst) else 0.0)
    for block in blocks.values():
        warn_if_width_blind(block["kind"], block["widths"], block["seconds"])
    if use_cache:
        _save(path, payload)
    return {**payload, "cached": False}
