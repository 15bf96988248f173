"""The baseline pruners of the quality benchmark, each a small method object with the protocol of
``quality_core.run_window``: ``prepare(model, task, ctx) -> param groups``, ``before_step(step, optimizer)``,
``after_step(step, optimizer)``, ``finish(model) -> model``; ``record`` holds what a method wants in its result row.

Masks live in unit space (``UnitLayout.score_shape``: 4x4 blocks, output rows, or single weights in N:M groups of
``m`` consecutive inputs) and are enforced by multiplying the weight after every optimizer step, so a pruned weight
never comes back during fine-tuning (WeightNormSparsifier uses its own parametrization; Torch-Pruning removes the
channels physically).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from smart_hf.core.granularity import canonical_weight

from .core import PatternSpec, WindowMethod, weight_groups


def unit_scores(weight: torch.Tensor, layout, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-weight importance (default ``|W|``) of every unit -> ``layout.score_shape``."""
    values = weight.abs() if importance is None else importance
    return layout.unit_sum(canonical_weight(values.detach().float(), layout.kind)) / layout.unit_cost


def keep_nm(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the ``n`` best of every group of m (rows of the ``(groups, m)`` score tensor)."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(1, scores.topk(n, dim=1).indices, True)


def keep_layer(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep ``round((1 - sparsity) * U)`` best units of one layer."""
    flat = scores.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(round((1 - sparsity) * flat.numel())).indices] = True
    return keep.view_as(scores)


def keep_global(scores: list[torch.Tensor], layouts: list, sparsity: float) -> list[torch.Tensor]:
    """One ranking over all layers, cost-weighted: units in descending score are kept while
    ``cost_before + cost / 2 < (1 - sparsity) * total weights`` (SMART's hardening rule, so budgets match)."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    cost = torch.cat([torch.full((s.numel(),), float(lay.unit_cost)) for s, lay in zip(scores, layouts)])
    budget = (1 - sparsity) * float(cost.sum())
    order = torch.argsort(flat, descending=True, stable=True)
    cum = torch.cumsum(cost[order], 0)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[cum - cost[order] / 2 < budget]] = True
    return [piece.view_as(s) for piece, s in zip(torch.split(keep, [s.numel() for s in scores]), scores)]


def select(scores: list[torch.Tensor], layouts: list, spec: PatternSpec, sparsity: float, scope: str) -> list:
    """Unit keep-masks for ``spec``'s pattern at ``sparsity`` (N:M: keep ``round(m * (1 - sparsity))`` per group)."""
    if spec.pattern == "nm":
        n_keep = max(spec.n, round(spec.m * (1 - sparsity)))
        return [keep_nm(s, n_keep) for s in scores]
    if scope == "layer":
        return [keep_layer(s, sparsity) for s in scores]
    return keep_global(scores, layouts, sparsity)


class MaskedMethod(WindowMethod):
    """Base of the mask-multiplying baselines: ``self.masks`` (unit space) is enforced after every step."""

    name = "masked"
    scope = "global"

    def __init__(self, spec: PatternSpec):
        self.spec, self.masks, self.record = spec, None, {}

    def prepare(self, model, task, ctx):
        modules = dict(model.named_modules())
        self.layers = [(modules[name], layout) for name, layout in ctx["targets"]]
        self.window = task.window
        self.setup(model, ctx)
        return weight_groups(model, task.weight_decay)

    def setup(self, model, ctx):
        raise NotImplementedError

    def magnitude_masks(self, sparsity: float, importances=None) -> list[torch.Tensor]:
        importances = importances or [None] * len(self.layers)
        scores = [unit_scores(mod.weight, lay, imp) for (mod, lay), imp in zip(self.layers, importances)]
        return select(scores, [lay for _, lay in self.layers], self.spec, sparsity, self.scope)

    @torch.no_grad()
    def enforce(self):
        for (module, layout), mask in zip(self.layers, self.masks):
            module.weight.copy_(layout.apply(module.weight, mask))

    def after_step(self, step, optimizer):
        self.enforce()

    def finish(self, model):
        self.enforce()
        return model


class OneShotMagnitude(MaskedMethod):
    """Global magnitude (mean |W| per unit, one cost-weighted ranking over all layers; N:M: per group) at the
    start of the window, then fine-tune the whole window with the mask fixed."""

    name = "magnitude"

    def setup(self, model, ctx):
        self.masks = self.magnitude_masks(self.spec.sparsity)
        self.enforce()


class Wanda(MaskedMethod):
    """Wanda (Sun et al. 2023): importance ``|W_ij| * ||X_j||_2`` with input norms from calibration batches of the
    dense model, compared within each output row's groups (N:M: per group of m); one shot, then fine-tune."""

    name = "wanda"

    def setup(self, model, ctx):
        norms = input_norms(model, [m for m, _ in self.layers], ctx["calibration"])
        importances = [m.weight.abs() * norm.unsqueeze(0) for (m, _), norm in zip(self.layers, norms)]
        self.masks = self.magnitude_masks(self.spec.sparsity, importances)
        self.enforce()


@torch.no_grad()
def input_norms(model, modules: list[nn.Module], batches: list[dict]) -> list[torch.Tensor]:
    """``||X_j||_2`` per input feature of every module over all tokens of ``batches`` (forward pre-hooks)."""
    sums = [None] * len(modules)

    def hook_for(i):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq = (x * x).sum(0)
            sums[i] = sq if sums[i] is None else sums[i] + sq

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        model.eval()
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
        model.train()
    return [s.sqrt() for s in sums]


def cubic_sparsity(step: int, prune_steps: int, final: float) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f * (1 - (1 - t / T)^3)`` for t <= T, then ``s_f``."""
    t = min(step, prune_steps) / prune_steps
    return final * (1 - (1 - t) ** 3)


class GradualMagnitude(MaskedMethod):
    """Gradual magnitude pruning: prune to the cubic schedule every ``every`` steps over the first
    ``prune_fraction`` of the window (the SMART search length), then fine-tune with the final mask."""

    name = "gmp"

    def __init__(self, spec, prune_fraction=0.5, every=5):
        super().__init__(spec)
        self.prune_fraction, self.every = prune_fraction, every

    def setup(self, model, ctx):
        self.prune_steps = max(1, round(self.prune_fraction * self.window))
        self.masks = [torch.ones(lay.score_shape, dtype=torch.bool) for _, lay in self.layers]

    def before_step(self, step, optimizer):
        if step <= self.prune_steps and (step % self.every == 0 or step == self.prune_steps):
            # pruned weights are zero, so magnitude keeps them pruned: the masks only grow sparser
            self.masks = self.magnitude_masks(cubic_sparsity(step, self.prune_steps, self.spec.sparsity))
            self.enforce()


class MovementMask(nn.Module):
    """Parametrization ``W -> W * M`` with learned unit scores ``S``; ``M`` = hard top-k of ``S`` at the current keep
    fraction, gradient passed straight through to ``S`` (Sanh et al. 2020): ``dL/dS = dL/dM``; no temperature."""

    def __init__(self, layout, spec: PatternSpec):
        super().__init__()
        self.layout, self.spec, self.sparsity, self.frozen = layout, spec, 0.0, None
        self.scores = nn.Parameter(torch.zeros(layout.score_shape))

    def hard(self) -> torch.Tensor:
        return select([self.scores.detach()], [self.layout], self.spec, self.sparsity, "layer")[0].float()

    def forward(self, weight):
        if self.frozen is not None:
            return self.layout.apply(weight, self.frozen)
        mask = self.hard() + self.scores - self.scores.detach()  # value: the hard mask; gradient: identity
        return self.layout.apply(weight, mask)


class Movement(WindowMethod):
    """Movement pruning: scores start at 0 (so they learn the movement ``-W * dL/dW``), per-layer top-k at the
    cubic sparsity schedule over the search part of the window, then the mask is frozen for the fine-tune."""

    name = "movement"

    def __init__(self, spec, prune_fraction=0.5, score_lr=0.05):
        self.spec, self.prune_fraction, self.score_lr, self.record = spec, prune_fraction, score_lr, {}

    def prepare(self, model, task, ctx):
        modules = dict(model.named_modules())
        self.modules = [modules[name] for name, _ in ctx["targets"]]
        self.masks = [MovementMask(layout, self.spec) for _, layout in ctx["targets"]]
        for module, mask in zip(self.modules, self.masks):
            parametrize.register_parametrization(module, "weight", mask)
        self.prune_steps = max(1, round(self.prune_fraction * task.window))
        scores = [m.scores for m in self.masks]
        groups = weight_groups(model, task.weight_decay)
        groups = [{**g, "params": [p for p in g["params"] if all(p is not s for s in scores)]} for g in groups]
        return groups + [{"params": scores, "lr": self.score_lr, "weight_decay": 0.0}]

    def before_step(self, step, optimizer):
        sparsity = cubic_sparsity(step, self.prune_steps, self.spec.sparsity)
        for mask in self.masks:
            mask.sparsity = sparsity
            if step >= self.prune_steps and mask.frozen is None:
                mask.frozen = mask.hard()
                mask.scores.requires_grad_(False)

    def finish(self, model):
        for module in self.modules:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return model


class WeightNormSparsifierMethod(WindowMethod):
    """``torch.ao.pruning.WeightNormSparsifier``, per layer: 4x4 blocks (``zeros_per_block=16``) at the target
    sparsity, or N:M as ``sparse_block_shape=(1, m)`` with ``m - n`` zeros per block; one ``step()`` at the start
    (the sparsifier's parametrization keeps the mask fixed while fine-tuning), ``squash_mask()`` at the end."""

    name = "wns"

    def __init__(self, spec: PatternSpec):
        if spec.pattern == "channel":
            raise ValueError("WeightNormSparsifier is run for block and N:M patterns only")
        self.spec, self.record = spec, {}

    def prepare(self, model, task, ctx):
        from torch.ao.pruning import WeightNormSparsifier

        if self.spec.pattern == "nm":
            kw = dict(
                sparsity_level=1.0, sparse_block_shape=(1, self.spec.m), zeros_per_block=self.spec.m - self.spec.n
            )
        else:
            kw = dict(sparsity_level=self.spec.sparsity, sparse_block_shape=(4, 4), zeros_per_block=16)
        self.sparsifier = WeightNormSparsifier(**kw)
        self.sparsifier.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name, _ in ctx["targets"]])
        self.sparsifier.step()
        return weight_groups(model, task.weight_decay)

    def finish(self, model):
        self.sparsifier.squash_mask()
        return model


class TorchPruningFFN(WindowMethod):
    """Torch-Pruning (``torch_pruning``) on the FFN intermediate channels only: for every block, the dependency graph
    groups fc1's output rows with fc2's input columns; ``GroupMagnitudeImportance`` (L2 over the group) ranks them and
    the lowest are removed physically. Channels per block are chosen so the removed weights equal
    ``sparsity`` x that block's targeted weights (the same parameter budget as the masked methods)."""

    name = "torch_pruning"

    def __init__(self, spec: PatternSpec):
        if spec.pattern != "channel":
            raise ValueError("Torch-Pruning is run for the channel pattern only")
        self.spec, self.record = spec, {}

    def prepare(self, model, task, ctx):
        import torch_pruning as tp

        pairs = ffn_pairs(model, [name for name, _ in ctx["targets"]])
        example = {k: v for k, v in ctx["calibration"][0].items() if k != "labels"}
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        removed = {}
        for prefix, fc1, fc2, block_weights in pairs:
            per_channel = fc1.in_features + fc2.out_features
            count = round(self.spec.sparsity * block_weights / per_channel)
            if count >= fc1.out_features:
                raise ValueError(f"{prefix}: sparsity {self.spec.sparsity} needs {count} FFN channels, has fewer")
            group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, list(range(fc1.out_features)))
            scores = importance(group)
            idxs = torch.argsort(scores)[:count].tolist()
            graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs).prune()
            removed[prefix] = count
        self.record = {"tp_removed_ffn_channels": removed, "tp_ffn_sizes": [p[1].out_features for p in pairs]}
        return weight_groups(model, task.weight_decay)


def ffn_pairs(model, target_names: list[str]) -> list[tuple[str, nn.Module, nn.Module, int]]:
    """``(block prefix, fc1, fc2, targeted weights of the block)`` for every transformer block (ViT ``mlp.fc1/fc2``,
    BERT ``intermediate.dense`` / ``output.dense``)."""
    modules = dict(model.named_modules())
    pairs = []
    for name in target_names:
        for up, down in (("mlp.fc1", "mlp.fc2"), ("intermediate.dense", "output.dense")):
            if name.endswith(up):
                prefix = name[: -len(up)]
                block = sum(modules[t].weight.numel() for t in target_names if t.startswith(prefix))
                pairs.append((prefix, modules[name], modules[prefix + down], block))
    if not pairs:
        raise ValueError("no FFN (fc1, fc2) pairs among the targets; Torch-Pruning here needs ViT or BERT blocks")
    return pairs


BASELINES = {
    "magnitude": OneShotMagnitude,
    "gmp": GradualMagnitude,
    "wns": WeightNormSparsifierMethod,
    "torch_pruning": TorchPruningFFN,
    "wanda": Wanda,
    "movement": Movement,
}


def applicable(method: str, spec: PatternSpec) -> bool:
    """Which baseline runs on which pattern (the benchmark's matrix): WNS block + N:M, TP channels, Wanda N:M."""
    if method == "wns":
        return spec.pattern in ("block", "nm")
    if method == "torch_pruning":
        return spec.pattern == "channel"
    if method == "wanda":
        return spec.pattern == "nm"
    return True
