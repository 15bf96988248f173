"""Wall-clock timing on a possibly busy machine: medians of repeats, their spread, and dummy model inputs.

Every measurement is a median of ``repeats`` runs after a warm-up, under ``torch.inference_mode`` (CUDA synchronised
around each run). The spread ``(p90 - p10) / median`` of the repeats says how far a number can be trusted; above
`SPREAD_WARN` a warning names it and the machine's load, since a busy machine (other processes sharing the cores)
stretches some runs and not others.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings

import torch
from torch import nn

__all__ = [
    "SPREAD_WARN",
    "latency_inputs",
    "load_average",
    "spread",
    "time_call",
    "time_round_robin",
    "warn_if_noisy",
    "warn_if_width_blind",
]

# A spread above this (p90 - p10 over the median of the repeats) is reported: on a quiet machine CPU forwards of
# more than a millisecond repeat within a few percent, so 15% means other work is sharing the cores.
SPREAD_WARN = 0.15
# Image side used for vision configs without ``image_size`` (transformers' ResNet): the ImageNet resolution.
CNN_IMAGE_SIZE = 224


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS has none).

    Returns:
        The load average, or None.
    """
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def spread(times: list[float]) -> float:
    """``(p90 - p10) / median`` of ``times`` (0 for fewer than 3 values).

    Args:
        times: run times (any unit).

    Returns:
        The relative spread.
    """
    if len(times) < 3:
        return 0.0
    ordered = sorted(times)
    lo, hi = ordered[int(0.1 * (len(ordered) - 1))], ordered[int(round(0.9 * (len(ordered) - 1)))]
    return (hi - lo) / max(statistics.median(ordered), 1e-12)


def warn_if_noisy(label: str, value: float) -> bool:
    """Warn (UserWarning) when a measured spread exceeds `SPREAD_WARN`, naming the spread and the load.

    Args:
        label: what was measured (for the message).
        value: its spread (`spread`).

    Returns:
        True when it warned.
    """
    if value <= SPREAD_WARN:
        return False
    load = load_average()
    warnings.warn(
        f"smart_hf latency: the timings of {label} spread by {100 * value:.0f}% between repeats (load average "
        f"{load if load is None else round(load, 2)}): the machine is busy, so the speed-up reached may differ from "
        "the target. Measure on a quiet machine (the latency model is cached per device, dtype, threads and shape; "
        "delete the cache file to re-measure).",
        stacklevel=3,
    )
    return True


def warn_if_width_blind(kind: str, widths: list[int], seconds: list[float]) -> bool:
    """Warn (UserWarning) when a block of a millisecond or more barely gets faster with fewer units: from the
    smallest to the largest timed width its time must grow by at least a quarter of the width ratio minus one
    (``t_max / t_min >= 1 + (w_max / w_min - 1) / 4``; a healthy CPU measurement grows about linearly). Flat times
    mean every call waited alike -- other processes, or more torch threads than free cores (2 threads on a busy
    2-core machine timed a DeiT-tiny FFN block at 40 ms for 96 and for 768 neurons) -- and a budget built on them
    is wrong.

    Args:
        kind: the block's kind (for the message).
        widths: the timed widths, ascending.
        seconds: their median times.

    Returns:
        True when it warned.
    """
    if len(widths) < 2 or seconds[-1] < 1e-3 or seconds[0] <= 0:
        return False  # below a millisecond dispatch overhead legitimately dominates
    if seconds[-1] / seconds[0] >= 1 + (widths[-1] / widths[0] - 1) / 4:
        return False
    warnings.warn(
        f"smart_hf latency: the {kind} block took {1e3 * seconds[0]:.2f} ms with {widths[0]} units and "
        f"{1e3 * seconds[-1]:.2f} ms with {widths[-1]}: its time hardly depends on its width, so the latency model "
        f"is wrong (load average {load_average()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} "
        "cores). Measure on a quiet machine, with no more torch threads than free cores (torch.set_num_threads); "
        "delete the cached latency model (smart_hf.latency.cache_dir()) to measure again.",
        stacklevel=3,
    )
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int = 5, warmup: int = 1, max_seconds: float = 5.0) -> list[float]:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (at least 3,
    fewer than ``repeats`` once ``max_seconds`` is spent), under ``torch.inference_mode``.

    Args:
        fn: a callable without arguments.
        device: where it runs (CUDA is synchronised around each call).
        repeats: the most timed calls.
        warmup: untimed calls first.
        max_seconds: time after which no further repeat starts (3 always run).

    Returns:
        The timed calls' durations in seconds.
    """
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        start_all = time.perf_counter()
        for i in range(repeats):
            if i >= 3 and time.perf_counter() - start_all > max_seconds:
                break
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


def time_round_robin(
    fns: dict,
    device: torch.device,
    repeats: int = 7,
    warmup: int = 1,
    max_seconds: float = 30.0,
    warm: tuple = (),
    contexts: dict | None = None,
    min_seconds: float = 0.0,
    taken: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every ``fns[name]()``, timed in turns: each round calls every function once, so load
    that comes and goes on a shared machine stretches all of them alike and their ratios stay meaningful.

    Rounds run until ``repeats`` are done and ``min_seconds`` are spent (short calls get more rounds for the same
    precision; at most ``8 * repeats``); after 3 rounds no further one starts once ``max_seconds`` are spent.

    Args:
        fns: name -> callable without arguments.
        device: where they run (CUDA is synchronised around each call).
        repeats: rounds wanted.
        warmup: untimed rounds first.
        max_seconds: time after which no further round starts (3 always run).
        warm: names already warmed up by the caller (skipped in the warm-up rounds).
        contexts: name -> a reusable context manager entered around that name's call, outside the timed region
            (`smart_hf.latency.calibrate.Narrowing`).
        min_seconds: keep adding rounds beyond ``repeats`` until this much time is spent.
        taken: name -> durations the caller has already timed; they stand in for that name's calls in the first
            rounds (a forward of seconds the caller had to run anyway is not run again).

    Returns:
        name -> the timed calls' durations in seconds.
    """
    contexts = contexts or {}
    times = {name: list((taken or {}).get(name, ())) for name in fns}
    skip = {name: len(durations) for name, durations in times.items()}
    with torch.inference_mode():
        for _ in range(warmup):
            for name, fn in fns.items():
                if name not in warm:
                    with contexts.get(name, contextlib.nullcontext()):
                        fn()
        start_all = time.perf_counter()
        for i in range(8 * repeats):
            elapsed = time.perf_counter() - start_all
            if (i >= 3 and elapsed > max_seconds) or (i >= repeats and elapsed >= min_seconds):
                break
            for name, fn in fns.items():
                if i < skip[name]:
                    continue
                with contexts.get(name, contextlib.nullcontext()):
                    _sync(device)
                    start = time.perf_counter()
                    fn()
                    _sync(device)
                    times[name].append(time.perf_counter() - start)
    return times


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def latency_inputs(model: nn.Module, batch: int, seq_len: int) -> dict:
    """Random inputs of the user's shape for ``model``: ``pixel_values`` ``(batch, channels, size, size)`` for a
    vision config (``num_channels``, side ``image_size`` or `CNN_IMAGE_SIZE`; the token count follows from the
    image), else ``input_ids`` ``(batch, seq_len)`` (no KV cache for decoders).

    Args:
        model: a transformers model (its ``config`` is read).
        batch: the batch size.
        seq_len: tokens per sequence (text models).

    Returns:
        Keyword inputs on the model's device (pixel values in its dtype).

    Raises:
        ValueError: when the config names neither image channels nor a vocabulary.
    """
    device, dtype = _model_device_dtype(model)
    cfg = getattr(model, "config", None)
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", None)
    if channels is not None and not getattr(cfg, "vocab_size", None):
        size = size or CNN_IMAGE_SIZE  # CNN configs (ResNet) carry no image size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        gen = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(batch, channels, h, w, generator=gen).to(device, dtype)}
    vocab = getattr(cfg, "vocab_size", None)
    if not vocab:
        raise ValueError(
            f"target_speedup cannot build inputs for {type(model).__name__}: its config has neither num_channels "
            "(images) nor vocab_size (text); use a sparsity budget for this model."
        )
    gen = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)}
    if getattr(cfg, "use_cache", None) is not None:
        inputs["use_cache"] = False
    return inputs
