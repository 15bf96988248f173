"""Shared machinery of the quality benchmark: tasks, the seeded training loop, SMART and dense as methods, and the
measurement of what a method really pruned.

Every method sees the same protocol (``run_window``): load the cached dense weights, ``method.prepare`` (prune,
attach scores or parametrizations; returns the optimizer's parameter groups), then ``window`` AdamW steps over the
same seeded batches with the same warm-up + cosine LR schedule, calling ``method.before_step`` / ``after_step``
around every step, then ``method.finish`` and the evaluation. Accuracy is measured on the validation and the test
split; sparsity on the final weights of the targeted layers (the layers SMART targets by default).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

import smart_hf as sh
from smart_hf.core.granularity import canonical_weight


@dataclass
class Task:
    """One benchmark task: data as tensors, a model factory and the training sizes (optimizer steps)."""

    name: str
    build_model: callable  # seed -> fresh model (pretrained or random init)
    splits: dict  # split -> dict of tensors (model inputs + "labels")
    batch_size: int
    lr: float
    weight_decay: float
    dense_steps: int  # stage 0: the shared dense pretrain
    window: int  # post-dense steps every method gets
    warmup: int
    eval_batch: int = 256
    extra: dict = field(default_factory=dict)


def batch_indices(num_rows: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` index batches drawn epoch by epoch from seeded permutations: identical for every method."""
    generator = torch.Generator().manual_seed(seed)
    out, perm = [], torch.empty(0, dtype=torch.long)
    while len(out) < steps:
        if len(perm) < batch_size:
            perm = torch.randperm(num_rows, generator=generator)
        out.append(perm[:batch_size])
        perm = perm[batch_size:]
    return out


def take(split: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in split.items()}


def warmup_cosine(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train_steps(model, task: Task, seed: int, steps: int, groups: list, method=None, teacher=None, alpha=0.0):
    """AdamW over ``groups`` for ``steps`` seeded batches (seed offset keeps dense pretrain and window apart)."""
    optimizer = torch.optim.AdamW(groups, lr=task.lr, weight_decay=task.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(task.warmup, steps))
    train = task.splits["train"]
    model.train()
    for step, idx in enumerate(batch_indices(len(train["labels"]), task.batch_size, steps, seed)):
        if method is not None:
            method.before_step(step, optimizer)
        batch = take(train, idx)
        out = model(**batch)
        loss = out.loss
        if teacher is not None and alpha > 0:
            with torch.no_grad():
                teacher_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
            loss = (1 - alpha) * loss + alpha * sh.distillation_loss(out.logits, teacher_logits, 2.0)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if method is not None:
            method.after_step(step, optimizer)
    return optimizer


@torch.no_grad()
def accuracy(model, split: dict, batch_size: int) -> float:
    model.eval()
    correct = 0
    n = len(split["labels"])
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        batch = take(split, idx)
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train()
    return correct / n


def weight_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices, not biases / norms (the Trainer's rule); excludes SMART mask scores."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.endswith("smart_scores"):
            continue
        (decay if p.ndim >= 2 and "norm" not in name.lower() else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@dataclass(frozen=True)
class PatternSpec:
    """A pruning target: pattern + budget. ``key`` names it in tables ("block4x4@0.75", "nm2:4", "channel@0.5")."""

    pattern: str
    sparsity: float
    n: int = 2
    m: int = 4

    @property
    def key(self) -> str:
        if self.pattern == "nm":
            return f"nm{self.n}:{self.m}"
        return f"{'block4x4' if self.pattern == 'block' else 'channel'}@{self.sparsity:g}"

    def smart_config(self, **overrides) -> sh.SmartConfig:
        if self.pattern == "nm":
            return sh.SmartConfig(pattern="nm", n=self.n, m=self.m, **overrides)
        return sh.SmartConfig(pattern=self.pattern, block_shape=[4, 4], sparsity=self.sparsity, **overrides)


def parse_pattern(key: str) -> PatternSpec:
    """Inverse of ``PatternSpec.key``; raises ValueError naming the accepted forms."""
    try:
        if key.startswith("nm"):
            n, m = key[2:].split(":")
            return PatternSpec("nm", 1 - int(n) / int(m), int(n), int(m))
        kind, sparsity = key.split("@")
        pattern = {"block4x4": "block", "channel": "channel"}[kind]
        return PatternSpec(pattern, float(sparsity))
    except (ValueError, KeyError) as error:
        raise ValueError(f"pattern {key!r}: use block4x4@0.5, channel@0.3 or nm2:4") from error


def targets_of(model, spec: PatternSpec) -> list[tuple[str, object]]:
    """The (name, layout) of every layer SMART targets by default for ``spec`` -- the same set for every method."""
    return [(name, layout) for name, _, layout, _ in sh.find_targets(model, spec.smart_config())]


@torch.no_grad()
def measure_sparsity(model, targets: list[tuple[str, object]], original_numel: dict) -> dict:
    """Sparsity of the final weights of the targeted layers.

    ``sparsity`` = (zero weights + physically removed weights) / original targeted weights. ``structured`` counts only
    weights in all-zero units (blocks / rows) or removed ones; for N:M, ``valid`` means every group of m has at most
    n non-zeros. A method that pruned less, or not in the pattern, shows it here.
    """
    modules = dict(model.named_modules())
    total = zeros = structured = 0
    valid = True
    for name, layout in targets:
        weight = modules[name].weight
        orig = original_numel[name]
        removed = orig - weight.numel()
        total += orig
        zeros += removed + int((weight == 0).sum())
        if removed:  # physically slimmed (Torch-Pruning): the remaining weight is dense, the removed part structured
            structured += removed
            continue
        nonzero = layout.unit_sum(canonical_weight((weight != 0).float(), layout.kind))
        if layout.pattern == "nm":
            valid &= bool((nonzero.sum(-1) <= layout.n).all())
            structured += int((weight == 0).sum())
        else:
            structured += int((nonzero == 0).sum()) * layout.unit_cost
    return {"sparsity": zeros / total, "structured_sparsity": structured / total, "nm_valid": valid}


class WindowMethod:
    """What every method does in the post-dense window: ``prepare`` (returns the optimizer's parameter groups),
    ``before_step`` / ``after_step`` around each optimizer step, ``finish`` (returns the model to evaluate).
    The step hooks do nothing and ``finish`` returns the model unless a method says otherwise."""

    def prepare(self, model, task, ctx):
        raise NotImplementedError

    def before_step(self, step, optimizer):
        pass

    def after_step(self, step, optimizer):
        pass

    def finish(self, model):
        return model


class DenseMethod(WindowMethod):
    """The reference: keep training the dense model for the same window."""

    name = "dense"

    def prepare(self, model, task, ctx):
        return weight_groups(model, task.weight_decay)


class SmartMethod(WindowMethod):
    """SMART through the library's public API: ``prepare_model`` (scores from the dense weights), then the stage
    driver `smart_hf.SmartStages` over the window (soft search with the temperature and budget anneal for ``search``
    steps, hardening with zeroed optimizer moments of pruned weights, fine-tuning with the hard masks re-applied after
    every step); ``squash`` at the end.

    ``frozen=True`` is SMART's own prior (``smart_frozen``): the hard mask of the initial scores, frozen at the start
    of the window and fine-tuned for all of it (no search, so no driver: the pruned weights are re-zeroed after every
    step). SMART must beat it, or the search is dead weight.
    ``mask_only=True`` freezes every weight during the search (only the scores learn, as MaskLLM does) and thaws
    them at hardening."""

    name = "smart"

    def __init__(self, spec: PatternSpec, search_fraction=0.5, score_lr=None, frozen=False, mask_only=False, **config):
        self.spec, self.search_fraction, self.score_lr, self.config = spec, search_fraction, score_lr, config
        self.frozen, self.mask_only = frozen, mask_only
        self.stages = None  # the driver, built at the first step (the optimizer exists from then on)

    def prepare(self, model, task, ctx):
        self.model, self.window = model, task.window
        self.search = 0 if self.frozen else max(1, round(self.search_fraction * task.window))
        calibration = ctx["calibration"] if self.config.get("score_init") in ("activation", "fisher") else None
        sh.prepare_model(model, self.spec.smart_config(**self.config), calibration_data=calibration)
        if self.frozen:
            sh.harden(model)  # before the optimizer exists: nothing to zero
            return weight_groups(model, task.weight_decay)
        self.initial_masks = target_hard_masks(model)  # the prior's mask, to measure how far the search moves it
        groups = weight_groups(model, task.weight_decay)
        if self.mask_only:  # weights frozen while the masks learn (as MaskLLM does); thawed at hardening
            self.weights = [p for group in groups for p in group["params"]]
            for p in self.weights:
                p.requires_grad_(False)
        return groups + sh.score_parameter_groups(model, self.score_lr)  # None: the library's rates per kind

    def before_step(self, step, optimizer):
        if self.frozen:
            return
        if self.stages is None:
            self.stages = sh.SmartStages(self.model, optimizer, total_steps=self.window, search_steps=self.search)
            self.stages.add_listener("hardening", self._record_hardening)
            self.stages.add_listener("hardened", self._thaw_weights)
        self.stages.before_step(step)

    def _record_hardening(self, stages) -> None:
        self.record = {
            "smart_fractionality_at_hardening": sh.get_smart_state(self.model).fractionality(),
            "smart_mask_changed_at_hardening": changed_fraction(self.initial_masks, target_hard_masks(self.model)),
        }

    def _thaw_weights(self, stages) -> None:
        for p in getattr(self, "weights", []):
            p.requires_grad_(True)

    def after_step(self, step, optimizer):
        if self.frozen:
            sh.apply_hard_masks_(self.model)
        else:
            self.stages.after_step(step)

    def finish(self, model):
        if self.stages is not None:
            self.stages.finish()
        return sh.squash(model)


@torch.no_grad()
def target_hard_masks(model) -> list[torch.Tensor]:
    """The hard masks of the current scores at the target budget (what ``harden`` would freeze now), one per layer."""
    state = sh.get_smart_state(model)
    return [mask.clone() for gi in range(len(state.groups)) for mask in state.hard_group_masks(gi)]


def changed_fraction(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Share of mask units whose keep/prune decision differs between two lists of hard masks (same shapes)."""
    changed = sum(int((a != b).sum()) for a, b in zip(before, after, strict=True))
    return changed / sum(a.numel() for a in before)


def run_window(task: Task, dense_state: dict, seed: int, spec: PatternSpec | None, method, distill=0.0) -> dict:
    """One result row: ``method`` from the cached dense weights through the post-dense window, evaluated."""
    torch.manual_seed(seed)
    model = task.build_model(seed)
    model.load_state_dict(dense_state)
    probe = spec or PatternSpec("block", 0.5)
    targets = targets_of(model, probe)
    modules = dict(model.named_modules())
    original = {name: modules[name].weight.numel() for name, _ in targets}
    calibration = [
        take(task.splits["train"], idx)
        for idx in batch_indices(len(task.splits["train"]["labels"]), task.batch_size, 4, seed + 7)
    ]
    ctx = {"targets": targets, "calibration": calibration, "window": task.window}
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if distill > 0 else None
    groups = method.prepare(model, task, ctx)
    train_steps(model, task, seed + 1, task.window, groups, method, teacher, distill)
    model = method.finish(model)
    row = {
        "val_size": len(task.splits["validation"]["labels"]),
        "val_acc": accuracy(model, task.splits["validation"], task.eval_batch),
        "test_acc": accuracy(model, task.splits["test"], task.eval_batch),
    }
    row.update(measure_sparsity(model, targets, original))
    row.update(getattr(method, "record", {}))
    return row
