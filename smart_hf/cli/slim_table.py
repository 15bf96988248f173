"""What the main job's final table adds for coupled units: the slim artifact against the dense model, measured.

For ``pattern="coupled"`` the trained model is squashed and slimmed (``mode="uniform"`` for ``budget="layer"``,
stock-loadable where the config can express the sizes; else ``"per_layer"``, loaded with stock
``from_pretrained(..., trust_remote_code=True)`` or `smart_hf.load_slim`) and
written to ``<output_dir>/slim``. Three models are then compared on one batch of the test split: the dense
architecture (a fresh model built from the same config: its cost does not depend on the weight values), the pruned
artifact with its zeros stored in place, and the slim artifact. Per model: parameters, size of ``model.safetensors``
and the median forward latency over ``repeats`` rounds, timed round-robin (one forward of each model per round) so a
shared machine's load hits all three alike; the 1-minute load average is recorded with them.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from ..artifact.card import write_folder_card
from ..artifact.export import save_pruned
from ..lifecycle import get_smart_state, squash
from ..slim import slim
from ..slim.describe import removed_units, slim_summary_line
from ..slim.portable import slim_layer_widths

__all__ = ["coupled_artifact_rows", "format_artifact_rows", "round_robin_latency_ms"]

WEIGHTS_FILE = "model.safetensors"


def _file_mb(folder: str) -> float:
    return os.path.getsize(os.path.join(folder, WEIGHTS_FILE)) / 2**20


@torch.no_grad()
def cost_removed(model: nn.Module) -> float:
    """Fraction of the coupled units' budget cost (weights, + attention MACs with ``coupled_tokens``) the hard masks
    remove, over every targeted set of a prepared ``model``."""
    state = get_smart_state(model)
    total = kept = 0.0
    for gi, group in enumerate(state.groups):
        for layer, mask in zip(group.layers, state.hard_group_masks(gi)):
            cost = layer.__dict__["_smart_coupled"].unit_cost
            total += cost * mask.numel()
            kept += cost * float(mask.sum())
    return 1.0 - kept / max(total, 1.0)


def round_robin_latency_ms(models: dict[str, nn.Module], inputs: dict, repeats: int) -> dict[str, list[float]]:
    """Per model, ``repeats`` forward times in ms, measured round-robin (one forward of every model per round, after
    one warm-up each): on a shared machine every model sees the same background load, so the ratios between them stay
    meaningful even when the absolute times are not. `benchmarks.inference` times its variants with it too."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(**inputs)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                times[name].append(1e3 * (time.perf_counter() - start))
    return times


def _batch(dataset, size: int, device) -> dict:
    rows = dataset[: min(size, len(dataset))]
    return {k: v.to(device) for k, v in rows.items() if k != "labels" and torch.is_tensor(v)}


def coupled_artifact_rows(
    model: nn.Module,
    dense_factory,
    output_dir: str,
    test_dataset,
    batch_size: int,
    budget: str,
    artifact_dir: str | None,
    repeats: int = 20,
) -> dict:
    """Slim a copy of the trained (prepared) ``model``, save it under ``output_dir/slim`` and measure it against the
    dense architecture (``dense_factory()``) and the pruned artifact in ``artifact_dir`` (see module docstring).
    Returns ``{"dense"|"pruned"|"slim": {"parameters", "file_mb", "latency_ms"}, "slim_dir", "slim_mode",
    "slim_loading", "removed_units", "widths_per_layer", "summary_line", "measured_speedup", "max_abs_logit_diff",
    "loadavg_1m", "batch"}``; the slim folder's card is rewritten with the measured speed-up (eager, this batch).

    Args:
        model: the trained, prepared model (not modified).
        dense_factory: builds the dense architecture.
        output_dir: the run's output folder (``slim/`` is written under it).
        test_dataset: the test split (one batch is used).
        batch_size: the batch size timed.
        budget: ``"layer"`` slims uniformly, anything else per layer.
        artifact_dir: the pruned artifact's folder (its file size), or ``None``.
        repeats: timed rounds.

    Returns:
        The dict described above.
    """
    mode = "uniform" if budget == "layer" else "per_layer"
    removed = cost_removed(model)
    target = get_smart_state(model).smart_config.target_speedup
    pruned = squash(copy.deepcopy(model)).eval()
    slim_model = copy.deepcopy(pruned)
    summary = slim(slim_model, mode=mode)
    slim_dir = os.path.join(output_dir, "slim")
    save_pruned(slim_model, slim_dir, save_plots=False, replace_folder=True)
    dense = dense_factory().to(next(pruned.parameters()).device).eval()
    inputs = _batch(test_dataset, batch_size, next(pruned.parameters()).device)
    with torch.inference_mode():
        diff = float((pruned(**inputs).logits - slim_model.eval()(**inputs).logits).abs().max())
    models = {"dense": dense, "pruned": pruned, "slim": slim_model}
    rows = _size_and_latency_rows(models, inputs, repeats, {"pruned": artifact_dir, "slim": slim_dir})
    batch = len(next(iter(inputs.values())))
    measured = {"eager": {f"batch {batch}": rows["dense"]["latency_ms"] / rows["slim"]["latency_ms"]}}
    write_folder_card(slim_dir, measured_speedup=measured)
    return {
        **rows,
        "cost_removed": removed,
        "slim_dir": slim_dir,
        "slim_mode": mode,
        **_slim_facts(summary),
        "measured_speedup": measured,
        "target_speedup": target,
        "left_masked": len(summary["left_masked"]),
        "max_abs_logit_diff": diff,
        "loadavg_1m": os.getloadavg()[0],
        "batch": batch,
    }


def _size_and_latency_rows(models: dict, inputs: dict, repeats: int, folders: dict) -> dict:
    """``{name: {"parameters", "nonzero_parameters", "file_mb", "latency_ms"}}`` for the dense, pruned and slim
    models: the median of round-robin timings; the file size of the dense model saved here and of the pruned and
    slim ``folders`` (a ``None`` folder: no size)."""
    times = round_robin_latency_ms(models, inputs, repeats)
    latency = {name: statistics.median(values) for name, values in times.items()}
    with tempfile.TemporaryDirectory() as tmp:
        models["dense"].save_pretrained(tmp)
        dense_mb = _file_mb(tmp)
    files = {"dense": dense_mb, "pruned": _file_mb(folders["pruned"]) if folders["pruned"] else None}
    files["slim"] = _file_mb(folders["slim"])
    return {
        name: {
            "parameters": sum(p.numel() for p in m.parameters()),
            "nonzero_parameters": sum(int((p != 0).sum()) for p in m.parameters()),
            "file_mb": files[name],
            "latency_ms": latency[name],
        }
        for name, m in models.items()
    }


def _slim_facts(summary: dict) -> dict:
    """What `slim` reported, as the table's JSON keeps it: how the folder loads, the units removed per kind, the
    widths per layer and the one-line summary."""
    return {
        "slim_loading": summary["loading"],
        "removed_units": {kind: list(pair) for kind, pair in removed_units(summary).items()},
        "widths_per_layer": {str(k): {u: list(w) for u, w in v.items()} for k, v in slim_layer_widths(summary).items()},
        "summary_line": slim_summary_line(summary),
    }


def format_artifact_rows(extra: dict) -> list[str]:
    """Table lines: parameters, file size and latency of dense / pruned / slim, the speed-up over dense, and what
    slimming removed and how the slim folder loads.

    Args:
        extra: `coupled_artifact_rows`' result.

    Returns:
        The lines.
    """
    lines = [
        f"coupled units: {100 * extra['cost_removed']:.1f}% of their cost removed",
        f"{'artifact':<10}{'params':>12}{'non-zero':>12}{'file MB':>10}{'latency ms':>12}{'speed-up':>10}",
    ]
    for name in ("dense", "pruned", "slim"):
        row = extra[name]
        size = "n/a" if row["file_mb"] is None else f"{row['file_mb']:.2f}"
        lines.append(
            f"{name:<10}{row['parameters']:>12,}{row['nonzero_parameters']:>12,}{size:>10}{row['latency_ms']:>12.2f}"
            f"{extra['dense']['latency_ms'] / row['latency_ms']:>9.2f}x"
        )
    if extra.get("target_speedup"):
        achieved = extra["dense"]["latency_ms"] / extra["slim"]["latency_ms"]
        lines.append(
            f"speed target: {extra['target_speedup']:.2f}x asked, {achieved:.2f}x measured (slim vs dense, eager, "
            f"batch {extra['batch']}; {100 * (achieved / extra['target_speedup'] - 1):+.0f}%)"
        )
    if "summary_line" in extra:
        loading = {
            "stock": "stock from_pretrained",
            "trust_remote_code": "stock from_pretrained(..., trust_remote_code=True) or smart_hf.load_slim",
            "load_slim": "smart_hf.load_slim",
        }.get(extra.get("slim_loading"), "smart_hf.load_slim")
        lines.append(f"{extra['summary_line']}; loads with {loading}")
    lines.append(
        f"slim ({extra['slim_mode']}) in {extra['slim_dir']}: outputs == pruned (max |logit diff| "
        f"{extra['max_abs_logit_diff']:.1e}); latency: median forward of a batch of {extra['batch']} test examples, "
        f"round-robin, load average {extra['loadavg_1m']:.1f}"
    )
    return lines
