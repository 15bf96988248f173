#!/usr/bin/env python
"""Training-cost benchmark: SMART search and fine-tune steps against a dense ``Trainer`` step, in one run.

The main job's model shape (DeiT-tiny: hidden 192, ``--layers`` blocks, 3 heads, MLP 768) at two token counts
(``--shapes``): ``17tok`` (8x8 inputs, patch 2, batch 32) and ``197tok`` (28x28, patch 2, batch 8; DeiT-tiny's count
at 224 px). Inputs are random pixels and labels (a step's cost does not depend on the data).

For every shape a plain ``transformers.Trainer`` (dense, the 1.00x limit) and one ``SmartTrainer`` run per pattern
(``--patterns``: 2:4, 1:4, 4x4 blocks at 50%, channels at 50%, coupled units at 50%) train from copies of one model.
A SMART run has ``pretrain_steps=0``, a search of ``3 * (steps + skip)`` steps -- the budget anneal (the default,
2/3 of the search) covers the first two thirds, so the search is timed both *during* the anneal (every N:M row has a
fractional budget) and *after* it -- then ``steps + skip`` fine-tune steps with the hard mask. A step is the interval
between consecutive ``on_step_end`` callbacks: data, forward, backward, clipping, the optimizer (the Trainer's default
fused AdamW) and every callback included (on CUDA the clock synchronizes first). The first ``--skip`` steps of each
stage, and the hardening step, are not counted. Ratios: median (and min) step time / the dense step of the same
shape and the same mode. ``--compile`` adds every run again with ``torch_compile=True`` (dense too), side by side.

The order of the runs rotates every round (``--rounds``) so a noisy minute hits all of them alike; the machine's
load average is recorded before and after (``os.getloadavg``): on a shared machine, compare ratios, not times.

Only public names are used. Older code is timed by running this same file against an older checkout, e.g.
``git worktree add /tmp/old <commit> && (cd /tmp/old && PYTHONPATH=$PWD python -m benchmarks.overhead ...)``
(copy this file there if the old one differs); the numbers of the code before the short-row N:M solver and the
clean-weight hard stage (when this benchmark patched them in) stay recorded in docs/benchmarks.md.

    HF_HUB_OFFLINE=1 python -m benchmarks.overhead                     # 24 runs; 23 min at load 8 on 2 cores
    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --compile           # + torch.compile (slower: compiling)
    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --device cuda       # on a GPU
    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --quick             # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

import smart_hf as sh

from ._common import environment, result_header, write_json

GOALS = {"search_anneal": 1.15, "search": 1.15, "finetune": 1.05}
PATTERNS = {
    "nm2:4": dict(pattern="nm"),
    "nm1:4": dict(pattern="nm", n=1, m=4),
    "block4x4@0.5": dict(pattern="block", block_shape=[4, 4], sparsity=0.5),
    "channel@0.5": dict(pattern="channel", sparsity=0.5),
    "coupled@0.5": dict(pattern="coupled", sparsity=0.5),
}
SHAPES = {"17tok": dict(image_size=8, batch=32), "197tok": dict(image_size=28, batch=8)}
STAGES = ("search_anneal", "search", "finetune")


class RandomImages(torch.utils.data.Dataset):
    """``count`` random 1-channel images of ``size`` x ``size`` with labels in [0, 10), fixed by the seed."""

    def __init__(self, size: int, count: int = 512, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(count, 1, size, size, generator=gen)
        self.labels = torch.randint(0, 10, (count,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


class StepClock(TrainerCallback):
    """Records ``time.perf_counter()`` at every ``on_step_end`` and which stage the step was in."""

    def __init__(self, cuda: bool):
        self.stamps, self.stages, self.cuda = [], [], cuda

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.stamps.append(self._now())

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        smart = sh.get_smart_state(model) if sh.is_prepared(model) else None
        if smart is None:
            self.stages.append("dense")
        elif smart.is_hard:
            self.stages.append("finetune")
        else:
            self.stages.append("search_anneal" if float(smart.budget_progress) < 1.0 else "search")

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(self._now())

    def by_stage(self, skip: int) -> dict[str, list[float]]:
        """Step times in ms per stage, the first ``skip`` of each stage dropped (the first step of a stage pays for
        the switch: hardening, a recompile)."""
        out = {}
        for stage, a, b in zip(self.stages, self.stamps, self.stamps[1:]):
            out.setdefault(stage, []).append(1000 * (b - a))
        return {stage: times[skip:] for stage, times in out.items()}


def common_args(out: str, max_steps: int, batch: int, device: str, compile_: bool) -> dict:
    return dict(
        output_dir=out,
        max_steps=max_steps,
        per_device_train_batch_size=batch,
        learning_rate=5e-4,
        weight_decay=0.05,
        lr_scheduler_type="constant",
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        torch_compile=compile_,
    )


def time_run(model, train, shape: dict, args, pattern: dict | None, out: str, compile_: bool) -> dict:
    """Step times per stage of one dense (``pattern=None``) or SMART run."""
    stage = args.steps + args.skip
    clock = StepClock(args.device == "cuda")
    if pattern is None:
        targs = TrainingArguments(**common_args(out, stage, shape["batch"], args.device, compile_))
        Trainer(model=model, args=targs, train_dataset=train, callbacks=[clock]).train()
        return clock.by_stage(args.skip)
    targs = sh.SmartTrainingArguments(
        **common_args(out, 4 * stage, shape["batch"], args.device, compile_),
        pretrain_steps=0,
        search_steps=3 * stage,
        save_plots=False,
        collapse_action="off",
    )
    smart_config = sh.SmartConfig(**pattern, coupled_tokens=shape["tokens"]) if pattern["pattern"] == "coupled" else None
    trainer = sh.SmartTrainer(
        model=model,
        args=targs,
        train_dataset=train,
        callbacks=[clock],
        smart_config=smart_config or sh.SmartConfig(**pattern),
    )
    trainer.train()
    return clock.by_stage(args.skip)


def stats(times: list[float], dense: list[float]) -> dict:
    med, dmed = statistics.median(times), statistics.median(dense)
    return {
        "median_ms": med,
        "min_ms": min(times),
        "steps": len(times),
        "all_ms": times,
        "ratio_of_medians": med / dmed,
        "ratio_of_mins": min(times) / min(dense),
    }


def run(args) -> dict:
    width = dict(hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=args.layers)
    if args.quick:
        width = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    bases, data, times = {}, {}, {}
    for name in args.shapes:
        shape = {**SHAPES[name], "tokens": (SHAPES[name]["image_size"] // 2) ** 2 + 1}
        torch.manual_seed(0)
        config = ViTConfig(image_size=shape["image_size"], patch_size=2, num_channels=1, num_labels=10, **width)
        bases[name] = (ViTForImageClassification(config), shape)
        data[name] = RandomImages(shape["image_size"])
        times[name] = {}
    jobs = [(s, mode, p) for s in args.shapes for mode in modes for p in [None, *args.patterns]]
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):  # rotate the order, so a noisy minute hits every variant alike
            for name, mode, pattern in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                base, shape = bases[name]
                model = copy.deepcopy(base)
                got = time_run(model, data[name], shape, args, PATTERNS.get(pattern), out, mode == "compiled")
                for stage, t in got.items():
                    key = f"{mode}/dense" if pattern is None else f"{mode}/{pattern}/{stage}"
                    times[name].setdefault(key, []).extend(t)
    result = {}
    for name in args.shapes:
        variants, goals = {}, {}
        for key, t in times[name].items():
            if not t:
                continue
            mode = key.split("/")[0]
            variants[key] = stats(t, times[name][f"{mode}/dense"])
            stage = key.split("/")[-1]
            if stage in GOALS:
                ratio = variants[key]["ratio_of_medians"]
                goals[key] = {"goal": f"<= {GOALS[stage]}", "ratio_of_medians": ratio, "met": ratio <= GOALS[stage]}
        for pattern in args.patterns if args.compile else []:  # compiled no slower than eager
            for stage in STAGES:
                eager, compiled = variants.get(f"eager/{pattern}/{stage}"), variants.get(f"compiled/{pattern}/{stage}")
                if eager and compiled:
                    ratio = compiled["median_ms"] / eager["median_ms"]
                    goals[f"compiled_vs_eager/{pattern}/{stage}"] = {"goal": "<= 1.0", "ratio": ratio, "met": ratio <= 1}
        _, shape = bases[name]
        result[name] = {**shape, "variants": variants, "goals": goals}
    return result


def markdown(result: dict) -> str:
    shapes = list(result)
    head = " | ".join(f"{s}: median ms (min) | ratio of medians (of mins)" for s in shapes)
    lines = [f"| variant | {head} |", "|---" * (1 + 2 * len(shapes)) + "|"]
    names = list(dict.fromkeys(n for s in shapes for n in result[s]["variants"]))
    for name in names:
        cells = []
        for s in shapes:
            v = result[s]["variants"].get(name)
            cells.append(
                "- | -"
                if v is None
                else f"{v['median_ms']:.1f} ({v['min_ms']:.1f}) | {v['ratio_of_medians']:.3f}x ({v['ratio_of_mins']:.3f}x)"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "| goal | " + " | ".join(f"{s}: ratio, met" for s in shapes) + " |", "|---" * (1 + len(shapes)) + "|"]
    for name in dict.fromkeys(n for s in shapes for n in result[s]["goals"]):
        cells = []
        for s in shapes:
            g = result[s]["goals"].get(name)
            ratio = None if g is None else g.get("ratio_of_medians", g.get("ratio"))
            cells.append("-" if g is None else f"{ratio:.3f}, {'yes' if g['met'] else 'no'}")
        goal = next(result[s]["goals"][name]["goal"] for s in shapes if name in result[s]["goals"])
        lines.append(f"| {name} {goal} | {' | '.join(cells)} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="ViT blocks (12 = DeiT-tiny, the main job)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=list(PATTERNS))
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage and round")
    parser.add_argument("--skip", type=int, default=1, help="warm-up steps per stage, not timed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time every run with torch_compile=True")
    parser.add_argument("--quick", "--smoke", action="store_true", help="a 1-block tiny ViT, 2 steps: seconds")
    parser.add_argument("--out", default="docs/results/overhead/deit_all_patterns.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.skip, args.rounds = 2, 1, 1
    if min(args.steps, args.rounds, args.layers, args.threads) < 1 or args.skip < 0:
        raise SystemExit("--steps, --rounds, --layers and --threads must be >= 1 and --skip >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA build of torch and a visible GPU; run without it on CPU.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads, device=args.device)  # its load average is the one at the start
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    start = time.perf_counter()
    result = run(args)
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload = {
        **result_header("overhead", args.quick, argv, env),
        "setup": {
            "layers": args.layers,
            "steps": args.steps,
            "skip": args.skip,
            "rounds": args.rounds,
            "patterns": args.patterns,
            "compile": args.compile,
            "device": args.device,
            "optimizer": "Trainer default (adamw_torch_fused), max_grad_norm 1.0",
        },
        "shapes": result,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(payload, args.out)
    print(f"load average: start {env.get('loadavg_start')}, end {env['loadavg_end']}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
