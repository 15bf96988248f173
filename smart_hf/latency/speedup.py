"""The speed-up a slim model really gives: the dense and the slim model timed side by side at one shape."""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from .timing import latency_inputs, load_average, spread, time_round_robin

__all__ = ["measure_speedup"]


def measure_speedup(
    dense_model: nn.Module,
    slim_model: nn.Module,
    shape: tuple[int, int],
    repeats: int = 10,
    target: float | None = None,
) -> dict:
    """Time ``dense_model`` and ``slim_model`` round-robin (one forward of each per round, after a warm-up each, so
    a shared machine's load hits both alike) on the same random inputs of ``shape`` and report the speed-up.

    Args:
        dense_model: the unpruned model (eval mode is set for the timing and restored).
        slim_model: the slimmed model, on the same device and dtype.
        shape: ``(batch, seq_len)``; vision models take their token count from the image size.
        repeats: timed rounds.
        target: the speed-up asked for, recorded beside the achieved one.

    Returns:
        ``{"batch", "seq_len", "dense_ms", "slim_ms", "speedup", "target", "spread", "load", "threads",
        "device"}`` with medians in milliseconds and the larger of the two spreads.

    Raises:
        ValueError: for ``repeats < 1`` or a shape with a value < 1.
    """
    batch, seq_len = (int(v) for v in shape)
    if repeats < 1 or batch < 1 or seq_len < 1:
        raise ValueError(f"measure_speedup needs repeats >= 1 and a shape of positive ints, got {repeats}, {shape}.")
    inputs = latency_inputs(dense_model, batch, seq_len)
    models = {"dense": dense_model, "slim": slim_model}
    modes = {name: m.training for name, m in models.items()}
    device = next(dense_model.parameters()).device
    try:
        for m in models.values():
            m.eval()
        fns = {name: (lambda m=m: m(**inputs)) for name, m in models.items()}
        seconds = time_round_robin(fns, device, repeats=repeats, max_seconds=math.inf)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    times = {name: [1e3 * t for t in values] for name, values in seconds.items()}
    dense_ms, slim_ms = statistics.median(times["dense"]), statistics.median(times["slim"])
    return {
        "batch": batch,
        "seq_len": seq_len,
        "dense_ms": dense_ms,
        "slim_ms": slim_ms,
        "speedup": dense_ms / slim_ms,
        "target": target,
        "spread": max(spread(times["dense"]), spread(times["slim"])),
        "load": load_average(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
