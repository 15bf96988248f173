#!/usr/bin/env python
"""Set-up cost: ``prepare_model`` (scores, automatic start temperatures) before the first training step.

``tau_start="auto"`` (the default) finds, per budget group, the temperature at which the soft mask has the target
fractionality (`smart_hf.core.schedule.auto_temperature`). Each evaluation of that function is a soft top-k over
every unit of the group, which is seconds on CPU for a BERT-base-sized model, so the number of evaluations is the
set-up cost. This benchmark times ``prepare_model`` on randomly initialised models built from configs (offline) for
2:4 and 4x4 blocks at 50% (global and per-layer budget), with the current root finder and, with ``--previous``, the
bisection it replaced (40 halvings of ``[1e-6, 1e4]`` in log tau, patched in), side by side in one run. It also
reports how far the two start temperatures are apart (the new one stops at a relative fractionality error of 1e-4).

    HF_HUB_OFFLINE=1 python -m benchmarks.prepare --previous   # a few minutes on 2 shared cores
    HF_HUB_OFFLINE=1 python -m benchmarks.prepare --smoke      # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

import smart_hf as sh
from smart_hf import state as state_module

from ._common import environment, result_header, write_json

MODELS = {
    "deit-tiny (digits, 12 blocks)": lambda: ViTForImageClassification(
        ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            num_labels=10,
            hidden_size=192,
            num_attention_heads=3,
            intermediate_size=768,
            num_hidden_layers=12,
        )  # fmt: skip
    ),
    "minilm-l6 size": lambda: BertForSequenceClassification(
        BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2)
    ),
    "bert-base size": lambda: BertForSequenceClassification(BertConfig(num_labels=2)),
}
SMOKE_MODELS = {
    "tiny bert": lambda: BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2)
    )
}
PATTERNS = {
    "nm2:4": dict(pattern="nm"),
    "block4x4@0.5 (global)": dict(pattern="block", block_shape=[4, 4], sparsity=0.5),
    "block4x4@0.5 (layer)": dict(pattern="block", block_shape=[4, 4], sparsity=0.5, budget="layer"),
}


def bisection_temperature(fractionality_at, target: float, lo: float = 1e-6, hi: float = 1e4, iters: int = 40):
    """The previous ``auto_temperature``: the same cap and fallbacks, then 40 bisection steps on ``log tau``."""
    target = min(target, 0.5 * fractionality_at(hi))
    if target <= 0.0:
        return hi
    if fractionality_at(lo) > target:
        return 1.0
    log_lo, log_hi = math.log(lo), math.log(hi)
    for _ in range(iters):
        mid = 0.5 * (log_lo + log_hi)
        if fractionality_at(math.exp(mid)) > target:
            log_hi = mid
        else:
            log_lo = mid
    return math.exp(0.5 * (log_lo + log_hi))


@contextlib.contextmanager
def counted(previous: bool):
    """Count the fractionality evaluations of `prepare_model`, with the current or the previous root finder."""
    finder = bisection_temperature if previous else state_module.auto_temperature
    record = {"evaluations": 0, "start_temperatures": []}

    def counting(fractionality_at, target, **kwargs):
        def evaluate(tau):
            record["evaluations"] += 1
            return fractionality_at(tau)

        tau = finder(evaluate, target, **kwargs)
        record["start_temperatures"].append(tau)
        return tau

    original = state_module.auto_temperature
    state_module.auto_temperature = counting
    try:
        yield record
    finally:
        state_module.auto_temperature = original


def time_prepare(build, pattern: dict, previous: bool) -> dict:
    torch.manual_seed(0)
    model = build()
    with counted(previous) as record:
        start = time.perf_counter()
        sh.prepare_model(model, sh.SmartConfig(**pattern))  # the defaults: tau_start="auto"
        seconds = time.perf_counter() - start
    groups = len(sh.get_smart_state(model).groups)
    return {"seconds": seconds, "groups": groups, **record}


def run(models: dict, previous: bool) -> list[dict]:
    rows = []
    for model_name, build in models.items():
        for pattern_name, pattern in PATTERNS.items():
            row = {"model": model_name, "pattern": pattern_name, "now": time_prepare(build, pattern, False)}
            if previous:
                row["previous"] = time_prepare(build, pattern, True)
                now, old = row["now"]["start_temperatures"], row["previous"]["start_temperatures"]
                row["speedup"] = row["previous"]["seconds"] / row["now"]["seconds"]
                row["max_relative_tau_difference"] = max(abs(a - b) / b for a, b in zip(now, old))
            rows.append(row)
            print(markdown([row], header=False), flush=True)
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| model | pattern | groups | prepare_model s: now (evaluations) | previous (evaluations) | speed-up "
            "| max rel. tau0 difference |",
            "|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        now, old = r["now"], r.get("previous")
        previous = f"{old['seconds']:.2f} ({old['evaluations']})" if old else "-"
        speedup = f"{r['speedup']:.2f}x" if old else "-"
        diff = f"{r['max_relative_tau_difference']:.1e}" if old else "-"
        lines.append(
            f"| {r['model']} | {r['pattern']} | {now['groups']} | {now['seconds']:.2f} ({now['evaluations']}) | "
            f"{previous} | {speedup} | {diff} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previous", action="store_true", help="also time the previous bisection (patched in)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one tiny model; seconds")
    parser.add_argument("--out", default="docs/results/bench_prepare.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads)
    start = time.perf_counter()
    rows = run(SMOKE_MODELS if args.smoke else {name: MODELS[name] for name in args.models}, args.previous)
    payload = {
        **result_header("prepare", args.smoke, argv, env),
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(payload, args.out)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
