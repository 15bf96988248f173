"""Torch-Pruning as the equal-speed baseline of `benchmarks.coupled_quality`: its dependency-graph pruning of whole
attention heads and FFN neurons (magnitude or Taylor importance), searched to a target predicted time.

The residual stream is protected (output projections, FFN down projections and the classifier are ignored layers),
so Torch-Pruning removes the same kind of units as SMART's ``pattern="coupled"``.
"""

from __future__ import annotations

import copy

from torch import nn

import smart_hf as sh
from benchmarks.quality.core import WindowMethod, weight_groups
from benchmarks.quality.widths import kept_widths

MATCH_TOLERANCE = 0.03  # a baseline within 3% of the SMART model's predicted time is compared at its speed


def model_inputs(batch: dict) -> dict:
    """The model's keyword inputs of a batch (everything but ``labels``)."""
    return {k: v for k, v in batch.items() if k != "labels"}


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


def tp_prune(model: nn.Module, ratio: float, importance, example: dict, head_ratio: float | None = None) -> int:
    """Torch-Pruning's dependency-graph pruning of heads and FFN neurons (see the module docstring).

    Torch-Pruning ranks heads globally; where its threshold takes every head (or neuron) of a layer it skips that
    layer's group, which then keeps *all* its units -- so the pruned model is not monotone in the ratio. The number of
    such skipped groups is returned: a caller keeps the ratios where it is 0.

    Args:
        model: the model, pruned in place.
        ratio: Torch-Pruning's ``pruning_ratio`` (FFN neurons, ranked globally).
        importance: a Torch-Pruning importance.
        example: one batch of model inputs (tracing).
        head_ratio: its ``head_pruning_ratio`` (``None``: ``ratio``).

    Returns:
        The groups Torch-Pruning left unpruned because they would have emptied a layer.
    """
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
        head_pruning_ratio=ratio if head_ratio is None else head_ratio,
    )
    check, skipped = pruner.DG.check_pruning_group, []

    def counted(group) -> bool:  # Torch-Pruning's refusal of a group that would empty a layer
        ok = check(group)
        skipped.extend([] if ok else [group])
        return ok

    pruner.DG.check_pruning_group = counted
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
    return len(skipped)


def bisect(too_slow, low: float, high: float, steps: int) -> float | None:
    """The smallest ``x`` in ``(low, high]`` (to ``(high - low) / 2**steps``) with ``too_slow(x)`` false, for a
    ``too_slow`` that is true below some point and false above it; ``None`` when every point tried is too slow.

    Args:
        too_slow: x -> whether ``x`` is not far enough.
        low: a point known (or taken) to be too slow.
        high: the far end.
        steps: halvings.

    Returns:
        The point found, or ``None``.
    """
    best = None
    for _ in range(steps):
        mid = (low + high) / 2
        if too_slow(mid):
            low = mid
        else:
            high, best = mid, mid
    return best


class TorchPruningCoupled(WindowMethod):
    """One-shot Torch-Pruning at the start of the window to the target predicted time; fine-tune.

    The search, on copies: (1) the largest head ratio at which Torch-Pruning empties no layer (`tp_prune`); (2) the
    smallest ratio whose model (heads at that ratio, capped by (1)) is at or below the target time; (3) with those
    heads, the smallest neuron ratio still at or below it; where a whole head still overshoots the target by more
    than `MATCH_TOLERANCE`, one head fewer and more neurons, while that reaches it. Ratios where Torch-Pruning skips
    a layer count as too far. Nothing reaching the target: the fastest model found, recorded ``reached: false``.
    """

    MAX_RATIO = 0.99  # of the neurons; Torch-Pruning skips a layer it would empty (counted as too far)

    def __init__(self, importance: str, latency: dict, widths: dict[str, int], target_seconds: float):
        self.importance, self.name = importance, f"tp_{importance}"
        self.latency, self.widths, self.target = latency, widths, target_seconds

    def _importance(self):
        import torch_pruning as tp

        if self.importance == "taylor":
            return tp.importance.GroupTaylorImportance()
        return tp.importance.GroupMagnitudeImportance(p=2)

    def _predicted(self, model) -> float:
        return sh.latency.predicted_seconds(self.latency, kept_widths(model, self.widths))

    def _trial(self, model, ratio: float, head_ratio: float, example: dict) -> tuple[float, int]:
        """Predicted seconds and skipped groups of a pruned copy of ``model``."""
        trial = copy.deepcopy(model)
        for source, target in zip(model.parameters(), trial.parameters()):  # deepcopy drops .grad
            target.grad = None if source.grad is None else source.grad.clone()
        skipped = tp_prune(trial, ratio, self._importance(), example, head_ratio)
        return self._predicted(trial), skipped

    def search(self, model, example: dict) -> tuple[float, float]:
        """``(ratio, head_ratio)`` for the target time (class docstring).

        Args:
            model: the model to prune (not changed; Taylor reads its gradients).
            example: one batch of model inputs.

        Returns:
            Torch-Pruning's neuron and head ratios.
        """
        top = self.MAX_RATIO
        # a tiny neuron ratio: Torch-Pruning prunes heads only where it prunes some channels
        first_skip = bisect(lambda h: self._trial(model, 0.01, h, example)[1] == 0, 0.0, top, 8)
        cap = top if first_skip is None else max(0.0, first_skip - top / 2**8)

        def too_slow(ratio, head_ratio=None):  # a ratio where Torch-Pruning skips a layer counts as too far
            head_ratio = min(ratio, cap) if head_ratio is None else head_ratio
            seconds, skipped = self._trial(model, ratio, head_ratio, example)
            return skipped == 0 and seconds > self.target

        ratio = bisect(too_slow, 0.0, top, 10)
        if ratio is None or self._trial(model, ratio, min(ratio, cap), example)[1]:  # out of reach: the fastest
            first_skip = bisect(lambda r: self._trial(model, r, min(r, cap), example)[1] == 0, 0.0, top, 10)
            ratio = top if first_skip is None else max(0.0, first_skip - top / 2**10)
        heads = min(ratio, cap)

        def fit(head_ratio, far):  # the smallest neuron ratio at or below the target with these heads, or None
            found = bisect(lambda r: too_slow(r, head_ratio), 0.0, far, 10)
            return None if found is None or self._trial(model, found, head_ratio, example)[1] else found

        fine = fit(heads, ratio)
        ratio = ratio if fine is None else fine
        if self._trial(model, ratio, heads, example)[0] < self.target * (1 - MATCH_TOLERANCE):
            # a whole head overshoots the target: one head fewer removed (Torch-Pruning's head ratio of that count,
            # ``removed = total - int(total * (1 - h))``), more neurons, while that still reaches it
            total = sum(layers[0].out_features // size for layers, size in attention_projections(model))
            for removed in range(total - int(total * (1 - heads)) - 1, -1, -1):
                head_ratio = max(0.0, (removed - 0.5) / total)
                found = fit(head_ratio, top)
                if found is None:
                    break
                ratio, heads = found, head_ratio
                if self._trial(model, ratio, heads, example)[0] >= self.target * (1 - MATCH_TOLERANCE):
                    break
        return ratio, heads

    def prepare(self, model, task, ctx):
        example = {k: v[:1] for k, v in model_inputs(ctx["calibration"][0]).items()}  # one row, as the target
        if self.importance == "taylor":  # Taylor importance reads the accumulated weight gradients
            model.zero_grad()
            for batch in ctx["calibration"]:
                model(**batch).loss.backward()
        ratio, heads = self.search(model, example)
        skipped = tp_prune(model, ratio, self._importance(), example, heads)
        model.zero_grad(set_to_none=True)
        self.record = {"tp_ratio": ratio, "tp_head_ratio": heads, "tp_skipped_groups": skipped}
        return weight_groups(model, task.weight_decay)
