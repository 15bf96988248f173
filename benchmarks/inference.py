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
* ``slim-heads``: ``channel`` masks at ``--sparsity`` with a per-layer budget plus value-projection head blocks
  (``smart_hf.head_pruning_overrides(model, --head-sparsity)``), ``slim(model, mode="per_layer")``: pruned FFN
  channels *and* whole attention heads removed (DeiT-tiny has 3 heads: ``--head-sparsity 0.5`` keeps
  ``round(1.5) = 2``; MiniLM keeps 6 of 12).

* ``coupled``: ``SmartConfig(pattern="coupled")`` at ``--sparsity`` = the fraction of the encoder's per-token MACs
  removed (linears + the attention matmuls at the benchmark's sequence length, ``coupled_tokens``), one global
  budget over FFN neurons and attention heads (`smart_hf.coupling`), ``slim(model, mode="per_layer")``: every
  pruned unit removed from every layer it spans.
* ``coupled-uniform``: the same with ``budget="layer"`` (the same count of neurons / heads in every block) and
  ``slim(model, mode="uniform")`` -- stock ``from_pretrained`` loads it where the config can express the sizes
  (ViT/DeiT: FFN and heads; BERT: FFN only, its heads stay masked and are listed in ``coupled-uniform_left_masked``).

``--models resnet-50`` (not in the default list: seconds per forward on a small CPU) benchmarks a ResNet-50 (224px)
with variants ``dense`` and ``slim`` (``channel`` masks, ``slim(model, mode="per_layer")``: conv -> BN -> conv chains).
Its BatchNorm statistics are randomised so that pruned channels emit constants of both signs, as in a trained net:
the ones feeding a zero-padded 3x3 conv with a non-zero constant stay masked (`slim` reports them).

For every batch size it reports the median latency (``--repeats`` warm runs, taken round-robin over the variants so
that a shared machine's load hits all of them alike), the measured speed-up over dense, the
*ideal* speed-up (dense FLOPs / FLOPs if every zero weight were skipped; linears, convs and the attention matmuls
of the heads each model really has counted), the parameter/weight memory and the peak memory allocated during one forward (torch profiler with
``profile_memory``, op granularity). Prints a markdown table and writes JSON to ``--out``.

    HF_HUB_OFFLINE=1 python -m benchmarks.inference              # full run
    HF_HUB_OFFLINE=1 python -m benchmarks.inference --smoke      # seconds; for CI (the four original variants)
    HF_HUB_OFFLINE=1 python -m benchmarks.inference --models resnet-50 --batches 1 8
    HF_HUB_OFFLINE=1 python -m benchmarks.inference --variants coupled --engines eager compile onnx

``--engines eager compile onnx`` runs every variant in each engine (`benchmarks.engines`: outputs checked equal to
eager's before timing) and reports each engine's speed-up over the dense model *in the same engine*, and its ratio
to eager's speed-up. ``--device cuda`` runs eager / compile on the GPU (ONNX Runtime stays a CPU engine here). The
1-minute load average is recorded before and after every batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import torch
from torch import nn

import smart_hf as sh

from ._common import environment, load_average, result_header, write_json
from .engines import ENGINES, engine_runners, round_robin_ms
from .macs import attention_macs

warnings.filterwarnings("ignore", message=".*Sparse BSR tensor support is in beta.*")


VARIANTS = ("dense", "squashed", "bsr", "slim", "slim-heads", "coupled", "coupled-uniform")
SMOKE_VARIANTS = ("dense", "squashed", "bsr", "slim")
CNN_VARIANTS = ("dense", "slim", "coupled")


def build(name: str, smoke: bool):
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    if name == "resnet-50":
        return build_resnet(smoke)
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


def build_resnet(smoke: bool):
    """ResNet-50 (transformers' default ResNetConfig, 224px) with randomised BatchNorm statistics (see docstring)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1]) if smoke else ResNetConfig()
    size = 32 if smoke else 224
    model = ResNetForImageClassification(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    return model, lambda b: {"pixel_values": torch.randn(b, 3, size, size)}


def _is_bsr(module: nn.Module) -> bool:
    """A linear whose weight is stored block-sparse (`smart_hf.to_sparse_kernels(model, "bsr")`)."""
    weight = getattr(module, "weight", None)
    return hasattr(module, "in_features") and weight is not None and weight.layout == torch.sparse_bsr


def flops(model: nn.Module, inputs: dict) -> tuple[float, float]:
    """(dense FLOPs, FLOPs with every zero weight skipped) of one forward: linears, convs, attention matmuls."""
    totals = [0.0, 0.0]
    handles = []

    def linear_hook(module, args, _out):
        x = args[0]
        if _is_bsr(module):
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
        if isinstance(module, nn.Linear) or _is_bsr(module):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    with torch.inference_mode():
        model(**inputs)
    for h in handles:
        h.remove()
    attention = 2 * attention_flops_macs(model, inputs)  # QK^T and AV, 2 FLOPs per MAC
    return totals[0] + attention, totals[1] + attention


def attention_flops_macs(model: nn.Module, inputs: dict) -> int:
    """MACs of the attention matmuls with the heads each block really has (slim-heads removes some): one value
    projection per block (BERT ``attention.self.value``, ViT ``attention.v_proj``), its width / the head size."""
    cfg = model.config
    if not hasattr(cfg, "num_attention_heads"):
        return 0
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    widths = [
        m.out_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.endswith(("attention.self.value", "attention.v_proj"))
    ]
    if "pixel_values" in inputs:
        b, seq = inputs["pixel_values"].shape[0], (cfg.image_size // cfg.patch_size) ** 2 + 1
    else:
        b, seq = inputs["input_ids"].shape
    return sum(attention_macs(seq, width // head_dim, head_dim, b) for width in widths)


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


def variants(name: str, smoke: bool, sparsity: float, block: int, wanted: tuple[str, ...], head_sparsity: float):
    """The pruned variants of one model at one sparsity (same random weights), plus facts about them."""
    torch.manual_seed(0)
    dense, make_inputs = build(name, smoke)
    state = {k: v.clone() for k, v in dense.state_dict().items()}

    def fresh():
        model, _ = build(name, smoke)
        model.load_state_dict(state)
        return model.eval()

    models, info = {"dense": dense}, {}
    if "squashed" in wanted or "bsr" in wanted:
        squashed = fresh()
        sh.prepare_model(squashed, sh.SmartConfig(pattern="block", block_shape=[block, block], sparsity=sparsity))
        sh.squash(squashed)
        models["squashed"] = squashed
    if "bsr" in wanted:
        bsr = fresh()
        bsr.load_state_dict(squashed.state_dict())
        bsr.config.smart_hf = squashed.config.smart_hf
        info["bsr_layers"] = len(sh.to_sparse_kernels(bsr, format="bsr")["converted"])
        models["bsr"] = bsr
    if "slim" in wanted:
        slim = fresh()
        sh.prepare_model(slim, sh.SmartConfig(pattern="channel", sparsity=sparsity))
        summary = sh.slim(slim, mode="per_layer" if name == "resnet-50" else "uniform")
        info["slim_params_removed"] = summary["params_removed"]
        info["slim_heads_kept_per_layer"] = [h["after"] for h in summary["heads"]]  # whole heads a channel mask hit
        info["slim_conv_channels_left_masked"] = sum(c["kept_masked"] for c in summary["convs"])
        models["slim"] = slim
    if "slim-heads" in wanted:
        heads = fresh()
        overrides = sh.head_pruning_overrides(heads, sparsity=head_sparsity)
        sh.prepare_model(
            heads, sh.SmartConfig(pattern="channel", sparsity=sparsity, budget="layer", overrides=overrides)
        )
        summary = sh.slim(heads, mode="per_layer")
        info["heads_kept_per_layer"] = [h["after"] for h in summary["heads"]]
        info["heads_params_removed"] = summary["params_removed"]
        models["slim-heads"] = heads
    for variant, budget, mode in (("coupled", "global", "per_layer"), ("coupled-uniform", "layer", "uniform")):
        if variant in wanted:  # sparsity = fraction of the encoder's per-token MACs (linears + attention) removed
            coupled = fresh()
            sh.prepare_model(
                coupled,
                sh.SmartConfig(
                    pattern="coupled", sparsity=sparsity, budget=budget, coupled_tokens=tokens(name, smoke)
                ),
            )
            summary = sh.slim(coupled, mode=mode)
            info[f"{variant}_params_removed"] = summary["params_removed"]
            info[f"{variant}_left_masked"] = [entry["name"] for entry in summary["left_masked"]]
            models[variant] = coupled
    models = {k: v for k, v in models.items() if k in wanted}
    return make_inputs, models, info


def tokens(name: str, smoke: bool) -> int:
    """Sequence length of the benchmark inputs (the length a coupled head's attention cost is counted at)."""
    if name == "resnet-50":
        return 0
    if name == "deit-tiny":
        return 17 if smoke else 197
    return 16 if smoke else 128


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat (seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--block", type=int, default=32, help="block side for the block/BSR variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["deit-tiny", "minilm-l6"], help="also: resnet-50")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=None, help="default: all (--smoke: the four original ones)"
    )
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["eager"], help="eager, compile, onnx")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--head-sparsity", type=float, default=0.5, help="fraction of heads pruned (slim-heads)")
    parser.add_argument("--out", default="docs/results/inference/coupled.json")
    return parser


def _batch_rows(name, sparsity, batch, models, runners, make_inputs, args, info) -> list[dict]:
    """One row per (variant, engine) at one batch size, all timed round-robin in one pass."""
    inputs = {k: v.to(args.device) for k, v in make_inputs(batch).items()}
    load_before = load_average()
    flat = {(v, e): run for v, per in runners.items() for e, run in per.items()}
    all_times = round_robin_ms({f"{v}/{e}": run for (v, e), run in flat.items()}, inputs, args.repeats)
    medians = {key: statistics.median(all_times[f"{key[0]}/{key[1]}"]) for key in flat}
    ref_flops = flops(models["dense"], inputs)[0]
    rows = []
    for (variant, engine), median in medians.items():
        dense_flops, nnz_flops = flops(models[variant], inputs)
        speedup = medians[("dense", engine)] / median if ("dense", engine) in medians else None
        rows.append(
            {
                "model": name,
                "sparsity": sparsity,
                "batch": batch,
                "variant": variant,
                "engine": engine,
                "median_ms": median,
                "min_ms": min(all_times[f"{variant}/{engine}"]),
                "all_ms": all_times[f"{variant}/{engine}"],
                "speedup": speedup,
                "speedup_vs_eager": _vs_eager(medians, variant, speedup),
                "ideal_speedup": ref_flops / nnz_flops,
                "executed_flops_ratio": ref_flops / dense_flops,
                "weight_mb": weight_bytes(models[variant]) / 2**20,
                "peak_forward_mb": peak_forward_bytes(models[variant], inputs) / 2**20 if args.device == "cpu" else None,
                "load_before": load_before,
                "load_after": load_average(),
                **info,
            }
        )
        print(f"{name} s={sparsity} b={batch} {variant}/{engine}: {median:.2f} ms ({speedup}x)", file=sys.stderr)
    return rows


def _vs_eager(medians: dict, variant: str, speedup: float | None) -> float | None:
    """An engine's speed-up as a share of eager's (1.0 = it keeps all of eager's speed-up)."""
    keys = (("dense", "eager"), (variant, "eager"))
    if speedup is None or not all(k in medians for k in keys):
        return None
    return speedup / (medians[keys[0]] / medians[keys[1]])


def _print_table(rows: list[dict]) -> None:
    print(
        "| model | sparsity | batch | variant | engine | median ms | speed-up | vs eager's | ideal (FLOPs) | "
        "weights MB | load |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        vs = "" if r["speedup_vs_eager"] is None else f"{100 * r['speedup_vs_eager']:.0f}%"
        load = "" if r["load_before"] is None else f"{r['load_before'][0]:.1f}"
        print(
            f"| {r['model']} | {r['sparsity']} | {r['batch']} | {r['variant']} | {r['engine']} | "
            f"{r['median_ms']:.2f} | {r['speedup'] or float('nan'):.2f}x | {vs} | {r['ideal_speedup']:.2f}x | {r['weight_mb']:.2f} | "
            f"{load} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.repeats, args.batches, args.block, args.sparsity = 1, [1, 2], 8, [0.5]
    if args.device == "cuda" and "onnx" in args.engines:
        raise SystemExit("--engines onnx runs ONNX Runtime on the CPU here; drop onnx or use --device cpu.")
    wanted = tuple(dict.fromkeys(("dense", *(args.variants or (SMOKE_VARIANTS if args.smoke else VARIANTS)))))
    engines = tuple(dict.fromkeys(args.engines))
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for sparsity in args.sparsity:
            kinds = tuple(v for v in wanted if v in CNN_VARIANTS) if name == "resnet-50" else wanted
            make_inputs, models, info = variants(name, args.smoke, sparsity, args.block, kinds, args.head_sparsity)
            models = {k: m.to(args.device) for k, m in models.items()}
            example = {k: v.to(args.device) for k, v in make_inputs(2).items()}
            runners, engine_info = {}, {}
            for variant, model in models.items():
                runners[variant], errors, build_s, failed = engine_runners(model, engines, example)
                engine_info[variant] = {"max_abs_diff_vs_eager": errors, "build_s": build_s, "engine_failed": failed}
                for engine, why in failed.items():
                    print(f"{name} {variant}: {engine} left out ({why})", file=sys.stderr)
            for batch in args.batches:
                batch_rows = _batch_rows(name, sparsity, batch, models, runners, make_inputs, args, info)
                for row in batch_rows:
                    row.update(engine_info[row["variant"]])
                rows += batch_rows
    _print_table(rows)
    result = {
        **result_header("inference", args.smoke, argv, environment(threads=torch.get_num_threads())),
        "settings": {
            "repeats": args.repeats,
            "block": args.block,
            "sparsity": args.sparsity,
            "head_sparsity": args.head_sparsity,
            "batches": args.batches,
            "variants": list(wanted),
            "engines": list(engines),
            "device": args.device,
        },
        "rows": rows,
    }
    write_json(result, args.out)  # creates the folder
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
