#!/usr/bin/env python
"""Inference benchmark of pruned models: dense vs squashed vs slim vs BSR, with the ideal FLOP-ratio speed-up.

For a DeiT-tiny-shaped ViT (192 hidden, 12 layers, 224px, 197 tokens) and a MiniLM-L6-shaped BERT (384 hidden,
6 layers, 128 tokens), random weights, CPU, ``--threads`` intra-op threads, ``torch.inference_mode``:

* ``dense``: the plain model.
* ``squashed``: SMART ``block`` (``--block`` x ``--block``) masks at ``--sparsity``, hardened and squashed: zeros
  stored dense -- what the pruned artifact costs with stock transformers.
* ``bsr``: the same squashed model after ``smart_hf.to_sparse_kernels(model, "bsr")``.
* ``slim``: SMART ``channel`` masks at ``--sparsity``, squashed and ``smart_hf.slim(model)`` (uniform): pruned FFN
  channels removed; channel masks on attention / output projections stay as zeros in place.

For every batch size it reports the median latency (``--repeats`` warm runs), the measured speed-up over dense, the
*ideal* speed-up (dense FLOPs / FLOPs if every zero weight were skipped; linears, convs and the attention matmuls
counted), the parameter/weight memory and the peak memory allocated during one forward (torch profiler with
``profile_memory``, op granularity). Prints a markdown table and writes JSON to ``--out``.

    HF_HUB_OFFLINE=1 python scripts/bench_inference.py              # full run
    HF_HUB_OFFLINE=1 python scripts/bench_inference.py --smoke      # seconds; for CI
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smart_hf as sh  # noqa: E402
from smart_hf.sparse import BSRLinear  # noqa: E402

warnings.filterwarnings("ignore", message=".*Sparse BSR tensor support is in beta.*")


def build(name: str, smoke: bool):
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    if name == "deit-tiny":
        kw = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768)
        kw.update(image_size=224, patch_size=16, num_labels=1000)
        if smoke:
            kw.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
            kw.update(image_size=32, patch_size=8, num_labels=10)
        cfg = ViTConfig(**kw)
        return ViTForImageClassification(cfg).eval(), lambda b: {
            "pixel_values": torch.randn(b, 3, cfg.image_size, cfg.image_size)
        }
    kw = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)
    seq = 128
    if smoke:
        kw.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
        seq = 16
    cfg = BertConfig(**kw, num_labels=2)
    return BertForSequenceClassification(cfg).eval(), lambda b: {
        "input_ids": torch.randint(0, cfg.vocab_size, (b, seq)),
        "attention_mask": torch.ones(b, seq, dtype=torch.long),
    }


def flops(model: nn.Module, inputs: dict) -> tuple[float, float]:
    """(dense FLOPs, FLOPs with every zero weight skipped) of one forward: linears, convs, attention matmuls."""
    totals = [0.0, 0.0]
    handles = []

    def linear_hook(module, args, _out):
        x = args[0]
        if isinstance(module, BSRLinear):
            dense_w = module.out_features * module.in_features
            nnz = int((module.weight.to_dense() != 0).sum())
            rows = x.numel() // module.in_features
        else:
            dense_w, nnz, rows = module.weight.numel(), int((module.weight != 0).sum()), x.numel() // x.shape[-1]
        totals[0] += 2 * rows * dense_w
        totals[1] += 2 * rows * nnz

    def conv_hook(module, _args, out):
        positions = out.numel() // out.shape[1]
        totals[0] += 2 * positions * module.weight.numel()
        totals[1] += 2 * positions * int((module.weight != 0).sum())

    for module in model.modules():
        if isinstance(module, (nn.Linear, BSRLinear)):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    with torch.inference_mode():
        model(**inputs)
    for h in handles:
        h.remove()
    cfg = model.config
    if "pixel_values" in inputs:
        b, seq = inputs["pixel_values"].shape[0], (cfg.image_size // cfg.patch_size) ** 2 + 1
    else:
        b, seq = inputs["input_ids"].shape
    attention = cfg.num_hidden_layers * 4 * b * seq * seq * cfg.hidden_size  # QK^T and AV
    return totals[0] + attention, totals[1] + attention


def weight_bytes(model: nn.Module) -> int:
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.layout == torch.sparse_bsr:
            total += sum(x.numel() * x.element_size() for x in (t.crow_indices(), t.col_indices(), t.values()))
        else:
            total += t.numel() * t.element_size()
    return total


def peak_forward_bytes(model: nn.Module, inputs: dict) -> int:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**inputs)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def latency_ms(model: nn.Module, inputs: dict, repeats: int) -> list[float]:
    with torch.inference_mode():
        model(**inputs)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**inputs)
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def variants(name: str, smoke: bool, sparsity: float, block: int):
    torch.manual_seed(0)
    dense, make_inputs = build(name, smoke)
    state = {k: v.clone() for k, v in dense.state_dict().items()}

    def fresh():
        model, _ = build(name, smoke)
        model.load_state_dict(state)
        return model.eval()

    squashed = fresh()
    sh.prepare_model(squashed, sh.SmartConfig(pattern="block", block_shape=[block, block], sparsity=sparsity))
    sh.squash(squashed)
    bsr = fresh()
    bsr.load_state_dict(squashed.state_dict())
    bsr.config.smart_hf = squashed.config.smart_hf
    converted = sh.to_sparse_kernels(bsr, format="bsr")["converted"]
    slim = fresh()
    sh.prepare_model(slim, sh.SmartConfig(pattern="channel", sparsity=sparsity))
    slim_summary = sh.slim(slim)
    # the slim model's "ideal" counts the remaining in-place zeros of the channel masks as skippable too
    return (
        make_inputs,
        {"dense": dense, "squashed": squashed, "bsr": bsr, "slim": slim},
        {
            "bsr_layers": len(converted),
            "slim_intermediate_size": slim.config.intermediate_size,
            "slim_params_removed": slim_summary["params_removed"],
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat (seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--block", type=int, default=32, help="block side for the block/BSR variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["deit-tiny", "minilm-l6"])
    parser.add_argument("--out", default="docs/results/bench_inference.json")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.batches, args.block, args.sparsity = 1, [1, 2], 8, [0.5]
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for sparsity in args.sparsity:
            make_inputs, models, info = variants(name, args.smoke, sparsity, args.block)
            for batch in args.batches:
                inputs = make_inputs(batch)
                base = None
                for variant, model in models.items():
                    times = latency_ms(model, inputs, args.repeats)
                    dense_flops, nnz_flops = flops(model, inputs)
                    median = statistics.median(times)
                    base = median if variant == "dense" else base
                    if variant == "dense":
                        ref_flops = dense_flops
                    row = {
                        "model": name,
                        "sparsity": sparsity,
                        "batch": batch,
                        "variant": variant,
                        "median_ms": median,
                        "min_ms": min(times),
                        "all_ms": times,
                        "speedup": base / median,
                        "ideal_speedup": ref_flops / nnz_flops,
                        "executed_flops_ratio": ref_flops / dense_flops,
                        "weight_mb": weight_bytes(model) / 2**20,
                        "peak_forward_mb": peak_forward_bytes(model, inputs) / 2**20,
                        **info,
                    }
                    rows.append(row)
                    print(
                        f"{name} s={sparsity} b={batch} {variant}: {median:.2f} ms ({row['speedup']:.2f}x, "
                        f"ideal {row['ideal_speedup']:.2f}x)",
                        file=sys.stderr,
                    )
    header = (
        "| model | sparsity | batch | variant | median ms | speed-up | ideal (FLOPs) | weights MB | peak fwd MB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    print(header)
    for r in rows:
        print(
            f"| {r['model']} | {r['sparsity']} | {r['batch']} | {r['variant']} | {r['median_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['weight_mb']:.2f} | {r['peak_forward_mb']:.2f} |"
        )
    result = {
        "benchmark": "inference",
        "smoke": args.smoke,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "environment": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_1m_at_end": os.getloadavg()[0],
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "settings": {"repeats": args.repeats, "block": args.block, "sparsity": args.sparsity, "batches": args.batches},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
