#!/usr/bin/env python
"""Quality of coupled units: SMART ``pattern="coupled"`` against Torch-Pruning's dependency-graph pruning of the
same units (FFN neurons + whole attention heads) at the same FLOPs and the same optimizer steps.

Per (task, seed): one dense pretrain; then every method gets the same post-dense window of AdamW steps (same seeded
batches, warm-up + cosine LR; `benchmarks.quality.core`):

* ``smart``: ``SmartConfig(pattern="coupled", sparsity=f, coupled_tokens=T)`` -- one global budget over FFN neurons
  and heads, cost = per-token MACs at the task's sequence length; soft search over the first half of the window,
  hard-mask fine-tune over the second; then ``squash`` + ``slim(mode="per_layer")`` (the units are removed).
* ``tp_magnitude`` / ``tp_taylor``: Torch-Pruning's ``BasePruner`` with ``GroupMagnitudeImportance(p=2)`` /
  ``GroupTaylorImportance`` (gradients of 4 calibration batches), ``global_pruning=True``, whole heads
  (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``) and FFN neurons; the residual stream is
  protected (output projections, fc2 and the classifier in ``ignored_layers``), so both methods prune the same kind
  of units. One-shot at the start of the window, then the whole window fine-tunes. Its ratio (heads and neurons
  alike) is bisected so its MACs match the SMART model's of the same seed (the table shows both).
* ``dense``: keeps training (the reference).

MACs are counted on one example (linears, convs and the attention matmuls with the heads each block really has).
Reports test accuracy / error per method: mean over seeds and a 95% t-interval.

    HF_HUB_OFFLINE=1 python -m benchmarks.coupled_quality                 # digits + MiniLM, 3 seeds, f=0.5
    HF_HUB_OFFLINE=1 python -m benchmarks.coupled_quality --smoke         # tiny models, a few steps
"""

from __future__ import annotations

import argparse
import copy
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
from transformers.pytorch_utils import Conv1D

import smart_hf as sh
from benchmarks.quality import run as quality_run
from benchmarks.quality.core import (
    SmartMethod,
    Task,
    WindowMethod,
    accuracy,
    batch_indices,
    take,
    train_steps,
    weight_groups,
)

T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
METHODS = ("dense", "smart", "tp_magnitude", "tp_taylor")


def digits_task(smoke: bool, layers: int) -> Task:
    """The quality benchmark's digits task (`benchmarks.quality.run.digits_task`) with a 120-step window; the
    attention cost of a head counts 17 tokens."""
    task = quality_run.digits_task(smoke, 1.0, layers)
    return dataclasses.replace(task, window=task.window if smoke else 120, extra={"T": 17})


def minilm_task(smoke: bool, layers: int) -> Task:
    """The quality benchmark's MiniLM tweets task (`benchmarks.quality.run.minilm_task`, 5,000 test tweets) with a
    120-step window; the attention cost of a head counts 48 tokens."""
    task = quality_run.minilm_task(smoke, 1.0)
    return dataclasses.replace(task, window=task.window if smoke else 120, extra={"T": 48})


TASKS = {"digits": digits_task, "minilm": minilm_task}


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def count_macs(model: nn.Module, inputs: dict) -> int:
    """MACs of one forward: every Linear / Conv2d / transformers Conv1D, plus ``Q K^T`` and ``A V`` of every
    attention block with the query width it really has (``2 * B * T^2 * width``)."""
    total, handles = [0], []

    def hook(module, args, out):
        if isinstance(module, nn.Conv2d):
            total[0] += (out.numel() // out.shape[1]) * module.weight.numel()
        else:
            total[0] += (args[0].numel() // args[0].shape[-1]) * module.weight.numel()

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, Conv1D)):
            handles.append(module.register_forward_hook(hook))
    model.eval()
    logits = model(**inputs).logits
    for h in handles:
        h.remove()
    batch = logits.shape[0]
    tokens = inputs["input_ids"].shape[1] if "input_ids" in inputs else _vision_tokens(model)
    for (query, _, _), _ in attention_projections(model):
        total[0] += 2 * batch * tokens * tokens * query.out_features  # query width = kept heads * head size
    return int(total[0])


def _vision_tokens(model) -> int:
    cfg = model.config
    return (cfg.image_size // cfg.patch_size) ** 2 + 1


@dataclass(frozen=True)
class CoupledSpec:
    """What `SmartMethod` needs from a pattern spec: the SmartConfig."""

    sparsity: float
    tokens: int

    def smart_config(self, **overrides) -> sh.SmartConfig:
        return sh.SmartConfig(pattern="coupled", sparsity=self.sparsity, coupled_tokens=self.tokens, **overrides)


class SmartCoupled(SmartMethod):
    """`SmartMethod` with coupled units; ``finish`` squashes and slims (per layer), so the MACs are real."""

    name = "smart"

    def finish(self, model):
        sh.slim(model, mode="per_layer")
        return model


# the q / k / v projections of an attention module of the two model families benchmarked, and its head-size attribute
_PROJECTIONS = {("query", "key", "value"): "attention_head_size", ("q_proj", "k_proj", "v_proj"): "head_dim"}


def attention_projections(model: nn.Module) -> list[tuple[list[nn.Linear], int]]:
    """``([query, key, value], head size)`` of every self-attention of the benchmarked BERT and ViT models, as
    Torch-Pruning's ``num_heads`` needs them (``self.{query,key,value}`` + ``attention_head_size``,
    ``{q,k,v}_proj`` + ``head_dim``)."""
    found = []
    for module in model.modules():
        for names, size in _PROJECTIONS.items():
            layers = [getattr(module, name, None) for name in names]
            if all(isinstance(layer, nn.Linear) for layer in layers) and isinstance(getattr(module, size, None), int):
                found.append((layers, getattr(module, size)))
    return found


def _heads_and_ignored(model: nn.Module) -> tuple[dict, list]:
    """Torch-Pruning's ``num_heads`` (q/k/v -> heads) and the layers whose outputs are the residual stream: the
    classifier and the layers SMART's coupled units end in (``find_targets`` of ``pattern="coupled"``: every
    attention output projection and FFN fc2), so that both methods prune the same kind of units."""
    ignored = [m for n, m in model.named_modules() if n.split(".")[-1] == "classifier"]
    ignored += [module for _, module, _, _ in sh.find_targets(model, sh.SmartConfig(pattern="coupled"))]
    num_heads = {}
    for layers, size in attention_projections(model):
        num_heads.update({layer: layers[0].out_features // size for layer in layers})
    return num_heads, ignored


def tp_prune(model: nn.Module, ratio: float, importance, example: dict) -> None:
    """Torch-Pruning's dependency-graph pruning of heads and FFN neurons at ``ratio`` (see the module docstring)."""
    import torch_pruning as tp

    num_heads, ignored = _heads_and_ignored(model)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=importance,
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    for module in model.modules():  # head-count attributes (the head size is unchanged)
        for attr, proj in (("num_attention_heads", "query"), ("num_attention_heads", "q_proj")):
            if isinstance(getattr(module, attr, None), int) and hasattr(module, proj):
                width = getattr(module, proj).out_features
                size = getattr(module, "attention_head_size", None) or module.head_dim
                setattr(module, attr, width // size)
                if hasattr(module, "all_head_size"):
                    module.all_head_size = width


class TorchPruningCoupled(WindowMethod):
    """One-shot Torch-Pruning at the start of the window, ratio bisected to the target MACs; then fine-tune."""

    def __init__(self, importance: str, target_macs: int):
        self.importance, self.target, self.name = importance, target_macs, f"tp_{importance}"

    def _importance(self):
        import torch_pruning as tp

        if self.importance == "taylor":
            return tp.importance.GroupTaylorImportance()
        return tp.importance.GroupMagnitudeImportance(p=2)

    def prepare(self, model, task, ctx):
        example = {k: v[:1] for k, v in model_inputs(ctx["calibration"][0]).items()}  # one row, as the target
        if self.importance == "taylor":  # Taylor importance reads the accumulated weight gradients
            model.zero_grad()
            for batch in ctx["calibration"]:
                model(**batch).loss.backward()
        low, high, best = 0.0, 0.95, None
        for _ in range(10):
            mid = (low + high) / 2
            trial = copy.deepcopy(model)
            for source, target in zip(model.parameters(), trial.parameters()):  # deepcopy drops .grad
                target.grad = None if source.grad is None else source.grad.clone()
            tp_prune(trial, mid, self._importance(), example)
            macs = count_macs(trial, example)
            if macs > self.target:
                low = mid
            else:
                high, best = mid, mid
        ratio = high if best is None else best
        tp_prune(model, ratio, self._importance(), example)
        model.zero_grad(set_to_none=True)
        self.record = {"tp_ratio": ratio}
        return weight_groups(model, task.weight_decay)


def run_one(task: Task, dense_state: dict, seed: int, method, example: dict) -> dict:
    """One row: ``method`` from the dense weights through the window, evaluated; MACs measured on ``example``."""
    torch.manual_seed(seed)
    model = task.build_model(seed)
    model.load_state_dict(dense_state)
    calibration = [
        take(task.splits["train"], idx)
        for idx in batch_indices(len(task.splits["train"]["labels"]), task.batch_size, 4, seed + 7)
    ]
    groups = method.prepare(model, task, {"calibration": calibration, "window": task.window})
    train_steps(model, task, seed + 1, task.window, groups, method)
    model = method.finish(model)
    row = {
        "val_acc": accuracy(model, task.splits["validation"], task.eval_batch),
        "test_acc": accuracy(model, task.splits["test"], task.eval_batch),
        "macs": count_macs(model, example),
        "params": sum(p.numel() for p in model.parameters()),
    }
    row.update(getattr(method, "record", {}))
    return row


def run_seed(task: Task, seed: int, fraction: float, methods: list[str]) -> list[dict]:
    model = task.build_model(seed)
    train_steps(model, task, seed, task.dense_steps, weight_groups(model, task.weight_decay))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    example = model_inputs(take(task.splits["test"], torch.arange(1)))
    dense_macs = count_macs(model, example)
    rows, target = [], None
    for name in methods:
        start = time.perf_counter()
        if name == "dense":
            method = WindowMethod()
            method.prepare = lambda m, t, ctx: weight_groups(m, t.weight_decay)
        elif name == "smart":
            method = SmartCoupled(CoupledSpec(fraction, task.extra["T"]))
        else:
            if target is None:
                raise ValueError("put 'smart' before the Torch-Pruning methods: they match its MACs")
            method = TorchPruningCoupled(name.removeprefix("tp_"), target)
        row = run_one(task, dense_state, seed, method, example)
        if name == "smart":
            target = row["macs"]
        row.update(
            task=task.name,
            seed=seed,
            method=name,
            fraction=fraction,
            dense_macs=dense_macs,
            macs_removed=1 - row["macs"] / dense_macs,
            seconds=time.perf_counter() - start,
        )
        rows.append(row)
        print(
            f"{task.name} seed {seed} {name}: test {row['test_acc']:.4f} MACs removed {row['macs_removed']:.3f}",
            file=sys.stderr,
        )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["task"], r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1]))):
        accs = [r["test_acc"] for r in rows if (r["task"], r["method"]) == key]
        removed = [r["macs_removed"] for r in rows if (r["task"], r["method"]) == key]
        mean = statistics.fmean(accs)
        half = T_95.get(len(accs) - 1, 1.96) * statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else 0.0
        out.append(
            {
                "task": key[0],
                "method": key[1],
                "seeds": len(accs),
                "test_acc_mean": mean,
                "test_acc_ci95": half,
                "test_error_mean": 1 - mean,
                "macs_removed_mean": statistics.fmean(removed),
            }
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["digits", "minilm"], choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.5, help="fraction of the targeted MACs removed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--digits-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/results/coupled_quality/digits_coupled.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.tasks:
        task = TASKS[name](args.smoke, args.digits_layers)
        for seed in args.seeds:
            rows += run_seed(task, seed, args.fraction, args.methods)
    summary = summarize(rows)
    print(
        "| task | method | seeds | test acc (mean ± 95% CI) | test error | MACs removed |\n|---|---|---|---|---|---|"
    )
    for s in summary:
        print(
            f"| {s['task']} | {s['method']} | {s['seeds']} | {100 * s['test_acc_mean']:.2f} ± "
            f"{100 * s['test_acc_ci95']:.2f}% | {100 * s['test_error_mean']:.2f}% | {s['macs_removed_mean']:.3f} |"
        )
    result = {
        "benchmark": "coupled_quality",
        "smoke": args.smoke,
        "command": " ".join(["python -m benchmarks.coupled_quality", *(argv or sys.argv[1:])]),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "loadavg_1m_at_end": os.getloadavg()[0],
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "settings": vars(args),
        "summary": summary,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
