#!/usr/bin/env python
"""Training-cost benchmark: SMART search and fine-tune steps against a dense ``Trainer`` step (issue 13, item 6).

The main job's model shape (DeiT-tiny: hidden 192, ``--layers`` blocks, 3 heads, MLP 768) on the digits, at two
token counts measured side by side in one run (``--shapes``):

* ``17tok``: 8x8 images, patch 2 = 17 tokens, batch 32 (the main job's inputs);
* ``197tok``: the same digits upsampled to 28x28, patch 2 = 197 tokens (DeiT-tiny's count at 224 px), batch 8.

Each shape is trained by a plain ``transformers.Trainer`` (dense) and by ``SmartTrainer`` (``pretrain_steps=0``:
``--steps`` search steps, then ``--steps`` fine-tune steps with the hard mask) for 4x4 blocks at 50% and for 2:4.
``--previous`` also times the code paths of the library before issue 13 (N:M: one general safeguarded top-k solve
per layer; hard stage: ``weight * mask`` in every forward and the mask compared with 0 at every re-masking), patched
in by `previous_code_paths`, so before/after ratios come from the same run and the same load.

Every run starts from a copy of one model; the order of the runs rotates every round (``--rounds``) so machine noise
hits all of them alike. A step's time is the interval between consecutive ``on_step_end`` callbacks: data loading,
forward, backward, gradient clipping, the optimizer (the Trainer's default fused AdamW) and every callback (the
temperature update, ``apply_hard_masks_``) included. The first ``--skip`` steps of each stage and the hardening step
are not counted. Ratios: median (and min) step time of a stage / that of the dense Trainer of the same shape.

    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --previous   # ~10-20 min on 2 shared cores
    HF_HUB_OFFLINE=1 python -m benchmarks.overhead --smoke      # seconds; what CI runs
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
from smart_hf.core import topk
from smart_hf.layers import SmartLayerMixin
from smart_hf.state import SmartState

from ._common import environment, result_header, write_json

GOALS = {"search": 1.15, "finetune": 1.05}
PATTERNS = {"block4x4@0.5": dict(pattern="block", block_shape=[4, 4], sparsity=0.5), "nm2:4": dict(pattern="nm")}
SHAPES = {"17tok": dict(image_size=8, batch=32), "197tok": dict(image_size=28, batch=8)}
PREVIOUS = " (previous code)"


@contextlib.contextmanager
def previous_code_paths():
    """Patch the library back to its code paths before issue 13: N:M masks by the general solver, one call per layer
    (with the per-layer fractionality), and the hard stage multiplying the weight by the mask in every forward."""
    patches = [
        (topk, "_short_rows_apply", lambda *args, **kwargs: False),
        (SmartState, "_soft_nm_batch", lambda self, gi: {gi: self.soft_group_masks(gi)}),
        (SmartLayerMixin, "_smart_clean_key", lambda self: None),
        (SmartLayerMixin, "_smart_zero_pruned_", lambda self, t: self.smart_layout.zero_pruned_(t, self.smart_mask)),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


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


def common_args(out: str, max_steps: int, batch: int) -> dict:
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
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )


def time_dense(model, train, batch: int, steps: int, skip: int, out: str) -> list[float]:
    clock = StepClock()
    args = TrainingArguments(**common_args(out, steps + skip, batch))
    Trainer(model=model, args=args, train_dataset=train, callbacks=[clock]).train()
    return clock.intervals_ms()[skip:]


def time_smart(model, train, batch: int, steps: int, skip: int, out: str, pattern: dict):
    """(search step times, fine-tune step times) of one SmartTrainer run of ``2 * (steps + skip)`` steps."""
    stage = steps + skip
    args = SmartTrainingArguments(
        **common_args(out, 2 * stage, batch),
        pretrain_steps=0,
        search_steps=stage,
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


def _jobs(names: list[str]) -> list[tuple[str, str | None]]:
    return [("dense", None)] + [(name, pattern) for name in names for pattern in [name.replace(PREVIOUS, "")]]


def run(args) -> dict:
    width = dict(hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=args.layers)
    if args.smoke:
        width = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    names = list(PATTERNS) + ([name + PREVIOUS for name in PATTERNS] if args.previous else [])
    bases, data, times = {}, {}, {}
    for shape in args.shapes:
        size = SHAPES[shape]["image_size"]
        torch.manual_seed(0)
        bases[shape] = ViTForImageClassification(
            ViTConfig(image_size=size, patch_size=2, num_channels=1, num_labels=10, **width)
        )
        data[shape] = load_digits_splits(image_size=size, num_channels=1)["train"]
        times[shape] = {"dense": []} | {f"{n}/{s}": [] for n in names for s in ("search", "finetune")}
    jobs = [(shape, job) for shape in args.shapes for job in _jobs(names)]
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):  # rotate the order, so a noisy minute hits every variant alike
            for shape, (name, pattern) in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                model, train, batch = copy.deepcopy(bases[shape]), data[shape], SHAPES[shape]["batch"]
                if pattern is None:
                    times[shape]["dense"] += time_dense(model, train, batch, args.steps, args.skip, out)
                    continue
                with previous_code_paths() if name.endswith(PREVIOUS) else contextlib.nullcontext():
                    search, finetune = time_smart(model, train, batch, args.steps, args.skip, out, PATTERNS[pattern])
                times[shape][f"{name}/search"] += search
                times[shape][f"{name}/finetune"] += finetune
    result = {}
    for shape in args.shapes:
        variants = {name: stats(t, times[shape]["dense"]) for name, t in times[shape].items()}
        goals = {}
        for name in PATTERNS:  # the goals are for the current code
            for stage, limit in GOALS.items():
                ratio = variants[f"{name}/{stage}"]["ratio_of_medians"]
                goals[f"{name}/{stage}"] = {"goal": f"<= {limit}", "ratio_of_medians": ratio, "met": ratio <= limit}
        result[shape] = {
            **SHAPES[shape],
            "tokens": (SHAPES[shape]["image_size"] // 2) ** 2 + 1,
            "variants": variants,
            "goals": goals,
        }
    return result


def markdown(result: dict) -> str:
    shapes = list(result)
    head = " | ".join(f"{s}: median ms (min) | ratio of medians (of mins)" for s in shapes)
    lines = [f"| variant | {head} |", "|---" * (1 + 2 * len(shapes)) + "|"]
    for name in result[shapes[0]]["variants"]:
        cells = []
        for s in shapes:
            v = result[s]["variants"][name]
            cells.append(
                f"{v['median_ms']:.1f} ({v['min_ms']:.1f}) | {v['ratio_of_medians']:.3f}x ({v['ratio_of_mins']:.3f}x)"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "| goal | " + " | ".join(f"{s}: ratio of medians, met" for s in shapes) + " |",
        "|---" * (1 + len(shapes)) + "|",
    ]
    for name, g in result[shapes[0]]["goals"].items():
        cells = [
            f"{result[s]['goals'][name]['ratio_of_medians']:.3f}, {'yes' if result[s]['goals'][name]['met'] else 'no'}"
            for s in shapes
        ]
        lines.append(f"| {name} {g['goal']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="ViT blocks (12 = DeiT-tiny, the main job)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per stage and round")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps per stage, not timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--previous", action="store_true", help="also time the library's code paths before issue 13 (patched in)"
    )
    parser.add_argument("--out", default="docs/results/bench_overhead.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.skip, args.rounds = 2, 1, 1
    if min(args.steps, args.rounds, args.layers) < 1 or args.skip < 0:
        raise ValueError("--steps, --rounds and --layers must be >= 1 and --skip >= 0")
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads)  # before the run: its load average is the one at the start
    start = time.perf_counter()
    result = run(args)
    payload = {
        **result_header("overhead", args.smoke, argv, env),
        "setup": {
            "layers": args.layers,
            "steps": args.steps,
            "skip": args.skip,
            "rounds": args.rounds,
            "previous": args.previous,
            "optimizer": "Trainer default (adamw_torch_fused), max_grad_norm 1.0",
        },
        "shapes": result,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(payload, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
