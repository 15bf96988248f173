#!/usr/bin/env python
"""Speed targets: does ``SmartConfig(target_speedup=...)`` give the speed-up asked for?

For the MiniLM-L6 shape (BERT, 384 hidden, 6 layers, 12 heads, FFN 1536, 128 tokens) and the DeiT-small shape (ViT,
384 hidden, 12 layers, 6 heads, FFN 1536, 224px / 16 = 197 tokens), random weights, CPU, ``--threads`` threads: for
every target and batch size the dense model is prepared with ``pattern="coupled", target_speedup=target,
latency_batch_size=batch`` (the latency model is measured at that batch and cached), hardened at the prepare-time
(magnitude) scores without training, slimmed ``per_layer``, and timed against the dense model round-robin
(``--repeats`` forwards each, medians). The table shows target, achieved, the error, the width multiple, the
latency model's predicted time, the time prepare took and the machine's 1-minute load before and after.

    HF_HUB_OFFLINE=1 python -m benchmarks.speed_target                       # 1.5 / 2 / 3 x, batch 1 / 8 / 32
    HF_HUB_OFFLINE=1 python -m benchmarks.speed_target --smoke               # tiny shapes, seconds
    HF_HUB_OFFLINE=1 python -m benchmarks.speed_target --models minilm-l6 --batches 8 --repeats 5

``--build`` times instead how long building the latency model takes (no cache) for the BERT-base shape (768 hidden,
12 layers, 12 heads, FFN 3072) at ``--batches`` x 128 tokens, ``--build-repeats`` builds one after another
(``--smoke``: a 2-layer BERT):

    HF_HUB_OFFLINE=1 python -m benchmarks.speed_target --build --batches 32
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from unittest import mock

import torch

import smart_hf as sh

from ._common import environment, load_average, result_header, write_json
from .engines import round_robin_ms

MODELS = ("minilm-l6", "deit-small")
RESULTS = "docs/results/speed_target"


def build(name: str, smoke: bool):
    """``(model, seq_len)`` of one benchmark shape, random weights, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    kw = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    if smoke:
        kw = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256)
    torch.manual_seed(0)
    if name == "deit-small":
        kw.update(num_attention_heads=6 if not smoke else 4, num_hidden_layers=12 if not smoke else 2)
        kw.update(image_size=224 if not smoke else 32, patch_size=16 if not smoke else 8, num_labels=1000)
        return ViTForImageClassification(ViTConfig(**kw)).eval(), 0
    kw.update(num_hidden_layers=6 if not smoke else 2, vocab_size=30522 if not smoke else 100, num_labels=2)
    return BertForSequenceClassification(BertConfig(**kw)).eval(), 128 if not smoke else 16


def build_bert_base(smoke: bool):
    """The BERT-base shape (``smoke``: 2 layers of 128 hidden, FFN 1024), random weights, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    kw = dict(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024)
    return BertForSequenceClassification(BertConfig(num_labels=2, **(kw if smoke else {}))).eval()


def _cache_in(folder: str):
    """The latency cache in ``folder`` while the context lasts (the environment restored after)."""
    return mock.patch.dict(os.environ, {"SMART_HF_CACHE": folder})


def build_time_rows(args) -> list[dict]:
    """``--build-repeats`` times per ``--batches`` entry, on the BERT-base shape at 128 tokens: the latency model's
    build with an empty cache (what a 2x speed target measures), then ``prepare_model`` at 2x reading it from the
    cache (the rest of prepare); seconds, the dense forward's time and the load."""
    rows = []
    for batch in args.batches:
        for repeat in range(args.build_repeats):
            model = build_bert_base(args.smoke)
            cfg = sh.SmartConfig(pattern="coupled", target_speedup=2.0, latency_batch_size=batch, latency_seq_len=128)
            owners = [name for name, *_ in sh.find_targets(model, cfg)]
            with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings(), _cache_in(cache):
                warnings.simplefilter("ignore")  # the spread warning: the load columns say how busy the machine was
                load_before, start = load_average(), time.perf_counter()
                latency = sh.latency.measure_for_prepare(model, cfg, owners)
                build_s, start = time.perf_counter() - start, time.perf_counter()
                sh.prepare_model(model, cfg)
                prepare_s = time.perf_counter() - start
            rows.append({"model": "bert-base", "batch": batch, "seq_len": 128, "repeat": repeat, "build_s": build_s,
                         "prepare_cached_s": prepare_s, "latency_cached": latency["cached"],
                         "latency_model_dense_ms": 1e3 * latency["dense_seconds"],
                         "load_before": load_before, "load_after": load_average()})
            print(f"bert-base b={batch} build {repeat}: {build_s:.1f} s, then prepare {prepare_s:.1f} s", file=sys.stderr)
    return rows


def inputs_for(model, batch: int, seq: int) -> dict:
    cfg = model.config
    if seq == 0:
        return {"pixel_values": torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size)}
    return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq))}


def one_run(name: str, target: float, batch: int, args) -> dict:
    """Prepare at ``target`` for ``batch``, harden, slim and time against dense; one result row."""
    dense, seq = build(name, args.smoke)
    model = copy.deepcopy(dense)
    cfg = sh.SmartConfig(
        pattern="coupled", target_speedup=target, latency_batch_size=batch, latency_seq_len=max(seq, 1)
    )
    load_before, start = load_average(), time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sh.prepare_model(model, cfg)
        except ValueError as err:  # an unreachable target: reported as such
            return {"model": name, "target": target, "batch": batch, "error": str(err), "load_before": load_before}
    prepare_s = time.perf_counter() - start
    speed = sh.get_smart_state(model).speed_target
    sh.harden(model)
    summary = sh.slim(model, mode="per_layer")
    times = round_robin_ms(
        {"dense": lambda x: dense(**x), "slim": lambda x: model(**x)}, inputs_for(dense, batch, seq), args.repeats
    )
    dense_ms, slim_ms = statistics.median(times["dense"]), statistics.median(times["slim"])
    achieved = dense_ms / slim_ms
    return {
        "model": name,
        "target": target,
        "batch": batch,
        "achieved": achieved,
        "error_pct": 100 * (achieved / target - 1),
        "dense_ms": dense_ms,
        "slim_ms": slim_ms,
        "dense_all_ms": times["dense"],
        "slim_all_ms": times["slim"],
        "predicted_slim_ms": 1e3 * speed["predicted_seconds"],
        "latency_model_dense_ms": 1e3 * speed["dense_seconds"],
        "max_speedup": speed["max_speedup"],
        "width_multiple": speed["width_multiple"],
        "latency_cached": speed["latency_cached"],
        "latency_scale": speed.get("latency_scale"),
        "prepare_s": prepare_s,
        "params_removed": summary["params_removed"],
        "noise_warnings": [str(w.message)[:160] for w in caught if "spread" in str(w.message)],
        "load_before": load_before,
        "load_after": load_average(),
    }


def _print_table(rows: list[dict]) -> None:
    print(
        "| model | batch | target | achieved | error | dense ms | slim ms | prepare s | cached | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        load = "" if r.get("load_before") is None else f"{r['load_before'][0]:.1f}"
        if "error" in r:
            print(f"| {r['model']} | {r['batch']} | {r['target']} | refused: {r['error'][:80]} | | | | | | {load} |")
            continue
        print(
            f"| {r['model']} | {r['batch']} | {r['target']:.2f}x | {r['achieved']:.2f}x | {r['error_pct']:+.1f}% | "
            f"{r['dense_ms']:.1f} | {r['slim_ms']:.1f} | {r['prepare_s']:.1f} | {r['latency_cached']} | {load} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats (seconds)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--build", action="store_true", help="time cold latency-model builds of BERT-base instead")
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--out", help="result JSON (default: minilm_deit_small_coupled.json, --build: bert_base_...)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.batches, args.build_repeats = 2, [1, 4], 1
    torch.set_num_threads(args.threads)
    if args.build:
        return _write_build_times(args, argv)
    rows = []
    for name in args.models:
        for batch in args.batches:
            for target in args.targets:
                rows.append(one_run(name, target, batch, args))
                r = rows[-1]
                print(f"{name} b={batch} target {target}: {r.get('achieved', r.get('error'))}", file=sys.stderr)
    _print_table(rows)
    result = {
        **result_header("speed_target", args.smoke, argv, environment(threads=torch.get_num_threads())),
        "settings": {"targets": args.targets, "batches": args.batches, "repeats": args.repeats},
        "rows": rows,
    }
    write_json(result, args.out or f"{RESULTS}/minilm_deit_small_coupled.json")  # creates the folder
    return 0


def _write_build_times(args, argv) -> int:
    rows = build_time_rows(args)
    print("| batch | repeat | latency model build, s | then prepare, s | dense forward, ms | load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        load = "" if r["load_before"] is None else f"{r['load_before'][0]:.1f}"
        print(
            f"| {r['batch']} | {r['repeat']} | {r['build_s']:.1f} | {r['prepare_cached_s']:.1f} | "
            f"{r['latency_model_dense_ms']:.0f} | {load} |"
        )
    result = {
        **result_header("speed_target", args.smoke, argv, environment(threads=torch.get_num_threads())),
        "settings": {"batches": args.batches, "build_repeats": args.build_repeats},
        "rows": rows,
    }
    write_json(result, args.out or f"{RESULTS}/bert_base_latency_model_build.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
