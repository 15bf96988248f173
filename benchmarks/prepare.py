#!/usr/bin/env python
"""Set-up cost: ``prepare_model`` (scores, automatic start temperatures) before the first training step.

``tau_start="auto"`` (the default) finds, per budget group, the temperature at which the soft mask has the target
fractionality (`smart_hf.core.schedule.auto_temperature`, a root finder that needs 7-10 soft top-k evaluations of
the group); each evaluation is a soft top-k over every unit of the group, seconds on CPU for a BERT-base-sized model,
so that search is most of the set-up cost. This benchmark times ``prepare_model`` through the public API on randomly
initialised models built from configs (offline) for 2:4 and 4x4 blocks at 50% (global and per-layer budget). To time
another version of the code, check it out and run the same command; the numbers of the bisection the root finder
replaced stay recorded in git history (commit 672d375).

    HF_HUB_OFFLINE=1 python -m benchmarks.prepare           # a few minutes on 2 shared cores
    HF_HUB_OFFLINE=1 python -m benchmarks.prepare --smoke   # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

import smart_hf as sh

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


def time_prepare(build, pattern: dict) -> dict:
    """Seconds of one ``prepare_model`` (the defaults: ``tau_start="auto"``) and the number of layers it prepared."""
    torch.manual_seed(0)
    model = build()
    start = time.perf_counter()
    sh.prepare_model(model, sh.SmartConfig(**pattern))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "layers": len(sh.sparsity_report(model)["layers"])}


def run(models: dict) -> list[dict]:
    rows = []
    for model_name, build in models.items():
        for pattern_name, pattern in PATTERNS.items():
            rows.append({"model": model_name, "pattern": pattern_name, **time_prepare(build, pattern)})
            print(markdown(rows[-1:], header=False), flush=True)
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = ["| model | pattern | layers | prepare_model s |", "|---|---|---|---|"] if header else []
    lines += [f"| {r['model']} | {r['pattern']} | {r['layers']} | {r['seconds']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one tiny model; seconds")
    parser.add_argument("--out", default="docs/results/prepare/start_temperature.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads)
    start = time.perf_counter()
    rows = run(SMOKE_MODELS if args.smoke else {name: MODELS[name] for name in args.models})
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
