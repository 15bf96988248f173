#!/usr/bin/env python
"""Quality at equal speed: SMART ``pattern="coupled"`` with a speed target against Torch-Pruning (magnitude,
Taylor) and Kwon et al.'s Fisher mask search, every method at the same predicted time and the same optimizer steps.

Per (task, seed): one dense pretrain and one latency model (`smart_hf.latency.measure_for_prepare`, measured on this
machine at the task's shape and cached: MiniLM batch 32 x 48 tokens, the tweets' length; digits batch 32, the tokens
from the image size, 17). Then per target speed-up ``t`` every method gets the same post-dense window of AdamW steps
(same seeded batches, warm-up + cosine LR; `benchmarks.quality.core`):

* ``smart``: ``SmartConfig(pattern="coupled", target_speedup=t, latency_batch_size=32, latency_seq_len=S)`` -- one
  global budget of measured time over FFN neurons and heads; soft search over the first half of the window,
  hard-mask fine-tune over the second; then ``squash`` + ``slim(mode="per_layer")`` (the units are removed).
* ``smart_fisher``: the same with ``score_init="fisher"`` -- the initial scores are each unit's empirical Fisher per
  unit of its measured time (`smart_hf.fisher`), on the 512 labelled examples the Fisher mask search uses.
* ``tp_magnitude`` / ``tp_taylor``: Torch-Pruning's ``BasePruner`` with ``GroupMagnitudeImportance(p=2)`` /
  ``GroupTaylorImportance`` (gradients of 4 calibration batches), ``global_pruning=True``, whole heads
  (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``) and FFN neurons; the residual stream is
  protected (output projections, fc2 and the classifier in ``ignored_layers``), so every method prunes the same
  kind of units. One-shot at the start of the window, then the whole window fine-tunes. Its head and neuron ratios
  are searched (`benchmarks.torch_pruning_baseline.TorchPruningCoupled`) so that the pruned model's predicted
  time (`smart_hf.latency.predicted_seconds` of its kept heads / neurons per layer) matches the SMART model's of the same seed and target;
  ratios where Torch-Pruning would empty a layer (it then skips the layer, which keeps every unit) are not used.
* ``kwon_fisher``: `benchmarks.fisher_pruning` -- Fisher importance of head / neuron masks on 512 training examples
  and the mask search of Kwon et al. (2022) to the SMART model's predicted time; the masks stay through the window.
* ``dense``: keeps training (the reference; once per seed).

Every row records its kept heads and FFN neurons per layer, its predicted time and its measured speed-up: its
architecture rebuilt from those widths (random weights) timed against the dense one (`smart_hf.latency.
measure_speedup`, batch x seq of the latency model). A baseline row also records ``reached`` (its predicted time
within 3% of the SMART model's) and ``time_vs_smart``; the table marks a method whose rows missed it.
``--time-only RESULT.json`` re-times every row of a result file (e.g. on a quiet machine after training under load)
and rewrites the speed columns and the summary. The summary per (task, target, method): test accuracy mean with a
95% t-interval over seeds, the paired-by-seed difference SMART minus each baseline (mean, 95% CI), predicted and
measured speed-up.

    HF_HUB_OFFLINE=1 python -m benchmarks.coupled_quality --seeds 0 1 2 3 4 --targets 1.5 2 3
    HF_HUB_OFFLINE=1 python -m benchmarks.coupled_quality --time-only RESULT.json  # re-time on a quiet machine
    HF_HUB_OFFLINE=1 python -m benchmarks.coupled_quality --smoke         # tiny models, a few steps
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import smart_hf as sh
from benchmarks.fisher_pruning import FisherMaskMethod
from benchmarks.quality import run as quality_run
from benchmarks.quality.core import (
    DenseMethod,
    SmartMethod,
    Task,
    accuracy,
    batch_indices,
    take,
    train_steps,
    weight_groups,
)
from benchmarks.quality.widths import kept_widths, per_layer, rebuild, unit_widths
from benchmarks.torch_pruning_baseline import MATCH_TOLERANCE, TorchPruningCoupled

T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
METHODS = ("dense", "smart", "smart_fisher", "tp_magnitude", "tp_taylor", "kwon_fisher")
SMART_METHODS = ("smart", "smart_fisher")  # the SMART rows every baseline is compared with, paired by seed
LATENCY_BATCH = 32
DEFAULT_OUT = "docs/results/coupled_quality/minilm_digits_equal_speed.json"


def digits_task(smoke: bool, layers: int) -> Task:
    """The quality benchmark's digits task (`benchmarks.quality.run.digits_task`) with a 120-step window; timed at
    batch 32 (17 tokens from the 8x8 image, patch 2)."""
    task = quality_run.digits_task(smoke, 1.0, layers)
    return dataclasses.replace(task, window=task.window if smoke else 120, extra={"seq_len": 17})


def minilm_task(smoke: bool, layers: int) -> Task:
    """The quality benchmark's MiniLM tweets task (`benchmarks.quality.run.minilm_task`, 5,000 test tweets) with a
    120-step window; timed at batch 32 x 48 tokens (the tweets' padded length)."""
    task = quality_run.minilm_task(smoke, 1.0)
    return dataclasses.replace(task, window=task.window if smoke else 120, extra={"seq_len": 48})


TASKS = {"digits": digits_task, "minilm": minilm_task}


@dataclass(frozen=True)
class SpeedSpec:
    """What `SmartMethod` needs from a pattern spec: the SmartConfig of a speed target at the task's shape."""

    target: float
    seq_len: int

    def smart_config(self, **overrides) -> sh.SmartConfig:
        return sh.SmartConfig(
            pattern="coupled",
            target_speedup=self.target,
            latency_batch_size=LATENCY_BATCH,
            latency_seq_len=self.seq_len,
            **overrides,
        )


class SmartCoupled(SmartMethod):
    """`SmartMethod` with coupled units; ``finish`` squashes and slims (per layer), so the units are removed."""

    name = "smart"

    def finish(self, model):
        model = super().finish(model)
        sh.slim(model, mode="per_layer")
        return model


def latency_of(model: nn.Module, seq_len: int) -> dict:
    """The latency model SMART uses for ``model`` at the task's shape (measured once, then read from the cache)."""
    config = SpeedSpec(2.0, seq_len).smart_config()
    owners = [name for name, *_ in sh.find_targets(model, config)]
    return sh.latency.measure_for_prepare(model, config, owners)


def run_one(task: Task, dense_state: dict, seed: int, method) -> tuple[nn.Module, dict]:
    """One row: ``method`` from the dense weights through the window, evaluated."""
    torch.manual_seed(seed)
    model = task.build_model(seed)
    model.load_state_dict(dense_state)
    calibration = getattr(method, "calibration", None) or [
        take(task.splits["train"], idx)
        for idx in batch_indices(len(task.splits["train"]["labels"]), task.batch_size, 4, seed + 7)
    ]
    groups = method.prepare(model, task, {"calibration": calibration, "window": task.window})
    train_steps(model, task, seed + 1, task.window, groups, method)
    model = method.finish(model)
    row = {
        "val_acc": accuracy(model, task.splits["validation"], task.eval_batch),
        "test_acc": accuracy(model, task.splits["test"], task.eval_batch),
        "params": sum(p.numel() for p in model.parameters()),
    }
    row.update(getattr(method, "record", {}))
    return model, row


def measure_row(dense: nn.Module, latency: dict, widths: dict, kept: dict, seq_len: int, repeats: int) -> dict:
    """Predicted and measured speed of the architecture with ``kept`` units per owner against ``dense``."""
    predicted = sh.latency.predicted_seconds(latency, kept)
    slim = rebuild(dense, latency, widths, kept)
    measured = sh.latency.measure_speedup(dense, slim, (LATENCY_BATCH, seq_len), repeats=repeats)
    return {
        "predicted_seconds": predicted,
        "predicted_speedup": latency["dense_seconds"] / predicted,
        "measured_speedup": measured["speedup"],
        "measured_spread": measured["spread"],
        "measured_load": measured["load"],
    }


def matched(seconds: float, smart_seconds: float) -> dict:
    """Whether a baseline's predicted time is the SMART model's (within `MATCH_TOLERANCE`).

    Args:
        seconds: the baseline model's predicted seconds.
        smart_seconds: the SMART model's, same seed and target.

    Returns:
        ``{"reached": bool, "time_vs_smart": seconds / smart_seconds}``.
    """
    ratio = seconds / smart_seconds
    return {"reached": abs(ratio - 1) <= MATCH_TOLERANCE, "time_vs_smart": ratio}


def make_method(name: str, task: Task, target: float, ctx: dict):
    """The window method ``name`` at ``target``; the baselines aim at ``ctx["smart_seconds"]``."""
    if name == "smart":
        return SmartCoupled(SpeedSpec(target, task.extra["seq_len"]))
    if name == "smart_fisher":  # Fisher scores on the same 512 labelled examples as the Fisher mask search
        method = SmartCoupled(SpeedSpec(target, task.extra["seq_len"]), score_init="fisher", calibration_batches=8)
        method.name, method.calibration = name, ctx["fisher_batches"]
        return method
    if "smart_seconds" not in ctx:
        raise ValueError("put 'smart' before the baselines in --methods: they match its predicted time")
    if name == "kwon_fisher":
        return FisherMaskMethod(ctx["latency"], ctx["smart_seconds"], ctx["fisher_batches"])
    return TorchPruningCoupled(name.removeprefix("tp_"), ctx["latency"], ctx["widths"], ctx["smart_seconds"])


def smoke_target(latency: dict) -> float:
    """A speed-up the smoke models surely reach: 40% of the way to the predicted speed-up of half the units
    everywhere (mostly embeddings and overhead, they get only a little faster, and by how much depends on the load
    the latency model was measured under)."""
    half = {o: max(1, latency["blocks"][sig]["units"] // 2) for o, sig in latency["owners"].items()}
    reach = latency["dense_seconds"] / sh.latency.predicted_seconds(latency, half)
    return round(1 + 0.4 * (reach - 1), 4)


def run_seed(task: Task, seed: int, targets: list[float], methods: list[str], repeats: int) -> list[dict]:
    """Every method of ``methods`` at every target for one seed (``targets`` empty: `smoke_target`)."""
    model = task.build_model(seed)
    train_steps(model, task, seed, task.dense_steps, weight_groups(model, task.weight_decay))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    seq_len = task.extra["seq_len"]
    latency = latency_of(model, seq_len)
    targets = targets or [smoke_target(latency)]
    widths = unit_widths(model, latency)
    train = task.splits["train"]
    fisher = [take(train, i) for i in batch_indices(len(train["labels"]), 64, 8, seed + 7)]  # 512 examples
    plan = [("dense", None)] if "dense" in methods else []
    plan += [(name, t) for t in targets for name in methods if name != "dense"]
    rows, ctx, unreachable = [], {}, set()
    for name, target in plan:
        start = time.perf_counter()
        if name == "smart":
            ctx = {"latency": latency, "widths": widths, "fisher_batches": fisher}
        if target in unreachable:  # the baselines match the SMART model's time: none to match
            continue
        method = DenseMethod() if name == "dense" else make_method(name, task, target, ctx)
        try:
            pruned, row = run_one(task, dense_state, seed, method)
        except ValueError as error:  # a target beyond the smallest widths is recorded, the other targets still run
            if name not in SMART_METHODS or "out of reach" not in str(error):
                raise
            unreachable.add(target)
            rows.append({"task": task.name, "seed": seed, "method": name, "target": target, "error": str(error)})
            print(f"{task.name} seed {seed} {name} @ {target}: {error}", file=sys.stderr)
            continue
        kept = row.pop("kept", None) or kept_widths(pruned, widths)
        if name == "smart":
            ctx["smart_seconds"] = sh.latency.predicted_seconds(latency, kept)
        elif name != "dense":  # the comparison holds only at the SMART model's time
            row.update(matched(sh.latency.predicted_seconds(latency, kept), ctx["smart_seconds"]))
        seconds = time.perf_counter() - start
        row.update(task=task.name, seed=seed, method=name, target=target, widths=kept, seconds=seconds)
        row.update(per_layer(latency, kept), seq_len=seq_len, latency_dense_seconds=latency["dense_seconds"])
        row.update(measure_row(model, latency, widths, kept, seq_len, repeats))
        rows.append(row)
        print(
            f"{task.name} seed {seed} {name} @ {target}: test {row['test_acc']:.4f} predicted "
            f"{row['predicted_speedup']:.2f}x{'' if row.get('reached', True) else ' (SMART time NOT reached)'} "
            f"measured {row['measured_speedup']:.2f}x ({seconds:.0f}s)",
            file=sys.stderr,
        )
    return rows


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T_95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def summarize(rows: list[dict]) -> list[dict]:
    """Per (task, target, method): accuracy mean / 95% CI, speed-ups, and SMART minus the method paired by seed."""
    out = []
    rows = [r for r in rows if "error" not in r]
    keys = {(r["task"], r["target"], r["method"]) for r in rows}
    for task, target, method in sorted(keys, key=lambda k: (k[0], k[1] or 0, METHODS.index(k[2]))):
        group = {r["seed"]: r for r in rows if (r["task"], r["target"], r["method"]) == (task, target, method)}
        mean, half = _interval([r["test_acc"] for r in group.values()])
        entry = {"task": task, "target": target, "method": method, "seeds": len(group)}
        entry.update(test_acc_mean=mean, test_acc_ci95=half, test_error_mean=1 - mean)
        for key in ("predicted_speedup", "measured_speedup"):
            entry[f"{key}_mean"] = statistics.fmean(r[key] for r in group.values())
        if method not in ("smart", "dense"):  # seeds whose row is at the SMART model's time
            entry["reached"] = sum(r.get("reached", True) for r in group.values())
        for variant in SMART_METHODS:  # e.g. smart_minus_acc_mean, smart_fisher_minus_acc_mean
            smart = {r["seed"]: r for r in rows if (r["task"], r["target"], r["method"]) == (task, target, variant)}
            paired = [smart[s]["test_acc"] - group[s]["test_acc"] for s in sorted(group) if s in smart]
            if method not in (*SMART_METHODS, "dense") and paired:
                entry[f"{variant}_minus_acc_mean"], entry[f"{variant}_minus_acc_ci95"] = _interval(paired)
        out.append(entry)
    return out


def print_table(summary: list[dict]) -> None:
    print(
        "| task | target | method | seeds | test acc (mean ± 95% CI) | SMART − method | SMART (Fisher) − method | "
        "predicted speed-up | measured speed-up |\n|---|---|---|---|---|---|---|---|---|"
    )
    for s in summary:
        diffs = []
        for variant in SMART_METHODS:  # paired by seed, 95% CI
            mean, half = s.get(f"{variant}_minus_acc_mean"), s.get(f"{variant}_minus_acc_ci95")
            diffs.append("–" if mean is None else f"{100 * mean:+.2f} ± {100 * half:.2f}")
        diff = " | ".join(diffs)
        off = ""
        if s.get("reached", s["seeds"]) < s["seeds"]:  # not at SMART's speed: the difference is not at equal speed
            off = f" (SMART's time missed: {s['seeds'] - s['reached']}/{s['seeds']} seeds)"
        print(
            f"| {s['task']} | {s['target'] or 'dense'} | {s['method']} | {s['seeds']} | "
            f"{100 * s['test_acc_mean']:.2f} ± {100 * s['test_acc_ci95']:.2f}% | {diff} | "
            f"{s['predicted_speedup_mean']:.2f}x{off} | {s['measured_speedup_mean']:.2f}x |"
        )


def environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_end": os.getloadavg()[0],
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def retime(path: str, repeats: int, threads: int) -> dict:
    """Re-time every row of a result file from its recorded widths (fresh models, random dense weights)."""
    result = json.loads(Path(path).read_text())
    settings = result["settings"]
    for name in sorted({r["task"] for r in result["rows"]}):
        key = "digits" if name.startswith("digits") else "minilm"  # task names: digits-deit, minilm-tweets
        task = TASKS[key](settings["smoke"], settings["digits_layers"])
        dense = task.build_model(0)
        latency = latency_of(dense, task.extra["seq_len"])
        widths = unit_widths(dense, latency)
        for row in (r for r in result["rows"] if r["task"] == name and "error" not in r):
            row.update(measure_row(dense, latency, widths, row["widths"], task.extra["seq_len"], repeats))
    result["summary"] = summarize(result["rows"])
    result["timing_environment"] = environment(threads)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["minilm", "digits"], choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0..4 (--smoke: 0)")
    parser.add_argument("--targets", type=float, nargs="+", help="speed-ups; default 1.5 2 3 (--smoke: see smoke_target)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--digits-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of each row's measured speed-up")
    parser.add_argument("--time-only", metavar="RESULT.json", help="re-time the rows of a result file and rewrite it")
    parser.add_argument("--out", default=DEFAULT_OUT, help="result JSON (default: the --time-only file)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1, 2, 3, 4])
    args.targets = args.targets or ([] if args.smoke else [1.5, 2.0, 3.0])  # smoke: `smoke_target` per seed
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.time_only:
        result = retime(args.time_only, args.repeats, args.threads)
        out = args.time_only if args.out == DEFAULT_OUT else args.out
    else:
        rows = []
        for name in args.tasks:
            task = TASKS[name](args.smoke, args.digits_layers)
            for seed in args.seeds:
                rows += run_seed(task, seed, args.targets, args.methods, args.repeats)
        result = {
            "benchmark": "coupled_quality_equal_speed",
            "smoke": args.smoke,
            "command": " ".join(["python -m benchmarks.coupled_quality", *(argv or sys.argv[1:])]),
            "environment": environment(args.threads),
            "settings": vars(args),
            "summary": summarize(rows),
            "rows": rows,
        }
        out = args.out
    print_table(result["summary"])
    for row in (r for r in result["rows"] if "error" in r):
        print(f"\n{row['task']} seed {row['seed']} target {row['target']}: {row['error']}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
