#!/usr/bin/env python
"""Training-cost benchmark: a SMART search step and a fine-tune step against a dense ``Trainer`` step (issue 6).

The same DeiT-tiny-shaped ViT on 8x8 digits (hidden 192, ``--layers`` blocks, batch 32) is trained by a plain
``transformers.Trainer`` (dense) and by ``SmartTrainer`` (``pretrain_steps=0``: ``--steps`` search steps, then
``--steps`` fine-tune steps with the hard mask), for 4x4 blocks at 50% and for 2:4. Every run starts from a copy of
one model; the runs alternate over ``--rounds`` rounds so machine noise hits all of them alike. A step's time is the
interval between consecutive ``on_step_end`` callbacks: data loading, forward, backward, optimizer and every
callback (the temperature update, ``apply_hard_masks_``) included. The first ``--skip`` steps of each stage and the
hardening step are not counted. Ratios: median (and min) step time of a stage / that of the dense Trainer.

    HF_HUB_OFFLINE=1 python -m benchmarks.overhead           # ~5 min on 2 cores; docs/results/bench_overhead.json
    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --smoke   # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

import smart_hf as sh
from smart_hf import SmartTrainer, SmartTrainingArguments
from smart_hf.cli.data import load_digits_splits
from smart_hf.layers import SmartLayerMixin

from ._common import environment, result_header, write_json

GOALS = {"search": 1.15, "finetune": 1.05}
PATTERNS = {"block4x4@0.5": dict(pattern="block", block_shape=[4, 4], sparsity=0.5), "nm2:4": dict(pattern="nm")}
# A proposed library change, measured here by patching: in the hard stage the pruned weights are already zero
# (harden + apply_hard_masks_ after every step), so the forward could use the weight as is, like a dense layer.
PLAIN_HARD = "block4x4@0.5+plain_hard_forward"


@contextlib.contextmanager
def plain_hard_forward():
    """Patch ``SmartLayerMixin.smart_weight`` to skip the mask multiply once the masks are hard."""
    original = SmartLayerMixin.smart_weight

    def smart_weight(self):
        return self.weight if self._smart_state.is_hard else original(self)

    SmartLayerMixin.smart_weight = smart_weight
    try:
        yield
    finally:
        SmartLayerMixin.smart_weight = original


class StepClock(TrainerCallback):
    """Records ``time.perf_counter()`` at every ``on_step_end`` (the interval between two is one full step)."""

    def __init__(self):
        self.stamps = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        """``intervals_ms()[i]`` is step ``i + 1``'s duration (step 0 also includes the Trainer's set-up)."""
        return [1000 * (b - a) for a, b in zip(self.stamps, self.stamps[1:])]


def common_args(out: str, max_steps: int, seed: int) -> dict:
    return dict(
        output_dir=out,
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        weight_decay=0.05,
        lr_scheduler_type="constant",
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=True,
    )


def time_dense(model, train, steps: int, skip: int, out: str) -> list[float]:
    clock = StepClock()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**common_args(out, steps + skip, 0)),
        train_dataset=train,
        callbacks=[clock],
    )
    trainer.train()
    return clock.intervals_ms()[skip:]


def time_smart(model, train, steps: int, skip: int, out: str, pattern: dict) -> tuple[list[float], list[float]]:
    """(search step times, fine-tune step times) of one SmartTrainer run of ``2 * (steps + skip)`` steps."""
    stage = steps + skip
    args = SmartTrainingArguments(
        **common_args(out, 2 * stage, 0),
        pretrain_steps=0,
        search_steps=stage,
        score_learning_rate=0.05,
        save_plots=False,
    )
    clock = StepClock()
    trainer = SmartTrainer(
        model=model, args=args, train_dataset=train, callbacks=[clock], smart_config=sh.SmartConfig(**pattern)
    )
    trainer.train()
    times = clock.intervals_ms()
    # times[stage] is the first fine-tune step: it includes harden() and zeroing the optimizer moments
    return times[skip:stage], times[stage + skip :]


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
    if args.smoke:
        width = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, num_labels=10, **width)
    torch.manual_seed(0)
    base = ViTForImageClassification(config)
    train = load_digits_splits(image_size=8, num_channels=1)["train"]
    names = list(PATTERNS) + ([PLAIN_HARD] if args.plain_hard else [])
    times = {"dense": []} | {f"{p}/{s}": [] for p in names for s in ("search", "finetune")}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):  # alternate, so a noisy minute hits every variant
            times["dense"] += time_dense(copy.deepcopy(base), train, args.steps, args.skip, out)
            for name, pattern in PATTERNS.items():
                search, finetune = time_smart(copy.deepcopy(base), train, args.steps, args.skip, out, pattern)
                times[f"{name}/search"] += search
                times[f"{name}/finetune"] += finetune
            if args.plain_hard:
                with plain_hard_forward():
                    search, finetune = time_smart(
                        copy.deepcopy(base), train, args.steps, args.skip, out, PATTERNS["block4x4@0.5"]
                    )
                times[f"{PLAIN_HARD}/search"] += search
                times[f"{PLAIN_HARD}/finetune"] += finetune
    variants = {name: stats(t, times["dense"]) for name, t in times.items()}
    goals = {}
    for name in names:
        for stage, limit in GOALS.items():
            ratio = variants[f"{name}/{stage}"]["ratio_of_medians"]
            goals[f"{name}/{stage}"] = {"goal": f"<= {limit}", "ratio_of_medians": ratio, "met": ratio <= limit}
    return {"variants": variants, "goals": goals}


def markdown(result: dict) -> str:
    lines = ["| variant | median ms (min) | steps | ratio of medians | ratio of mins |", "|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['median_ms']:.1f} ({v['min_ms']:.1f}) | {v['steps']} | "
            f"{v['ratio_of_medians']:.3f}x | {v['ratio_of_mins']:.3f}x |"
        )
    lines += ["", "| goal | ratio of medians | met |", "|---|---|---|"]
    for name, g in result["goals"].items():
        lines.append(f"| {name} {g['goal']} | {g['ratio_of_medians']:.3f} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="ViT blocks (12 = DeiT-tiny, the main job)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per stage and round")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps per stage, not timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--plain-hard", action="store_true", help="also time block 4x4 with the hard-stage forward unmasked (proposal)"
    )
    parser.add_argument("--out", default="docs/results/bench_overhead.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.skip, args.rounds = 2, 1, 1
    if min(args.steps, args.rounds, args.layers) < 1 or args.skip < 0:
        raise ValueError("--steps, --rounds and --layers must be >= 1 and --skip >= 0")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run(args)
    payload = {
        **result_header("overhead", args.smoke, argv, environment(threads=args.threads)),
        "setup": {"layers": args.layers, "batch": 32, "steps": args.steps, "skip": args.skip, "rounds": args.rounds},
        **result,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(payload, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
