"""A Fisher-based post-training mask search (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for
Transformers") as a baseline of the equal-speed benchmark (`benchmarks.coupled_quality`).

* Mask variables: one per attention head and per FFN neuron, applied by a forward pre-hook on the layer the unit
  ends in (the coupled owner: attention output projection, FFN down projection) that multiplies its input columns
  per unit (a head covers ``head_dim`` columns, a neuron one).
* Importance: the empirical Fisher of each mask variable, ``I_u = sum_i (d loss_i / d m_u)^2`` over calibration
  examples ``i``, at ``m = 1``. The per-example gradients come from one backward: the mask gets a batch dimension
  (``(batch, units)``, all ones) and the loss is the *sum* of per-example losses, so row ``i`` of the mask's
  gradient is ``d loss_i / d m`` (the examples do not interact in eval mode).
* Mask search (their Algorithm 1, with a latency model instead of their lookup table): for every number ``n`` of
  kept heads, keep the ``n`` heads of highest Fisher, fill the time left with the neurons of highest Fisher (the
  time of a unit is its block's marginal seconds ``b_s`` in `smart_hf.latency`'s model), and keep the split with
  the highest total kept Fisher. Every owner keeps at least one unit (an empty attention / FFN block is not built);
  FFN widths are not rounded to a multiple (the paper does not; SMART rounds to 8 on CPU), so equal predicted time
  can still differ in measured time, which the benchmark reports per row.
* Their mask rearrangement and least-squares mask tuning are replaced by the shared fine-tune window every method of
  the benchmark gets: the pruned units stay masked (hooks) through all of it.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.quality.core import WindowMethod, weight_groups
from smart_hf.latency import block_seconds, block_seconds_for


def unit_width(module: nn.Linear, units: int) -> int:
    """Input columns per unit of an owner layer (``head_dim`` for heads, 1 for neurons)."""
    if module.in_features % units:
        raise ValueError(f"{module.in_features} input columns do not split into {units} units")
    return module.in_features // units


def attach_masks(model: nn.Module, owners: dict[str, int]) -> dict[str, list]:
    """Forward pre-hooks multiplying each owner's input by a per-unit mask.

    Args:
        model: the model.
        owners: owner module name -> its number of units.

    Returns:
        ``{owner: [mask holder, hook handle]}``; the holder is a one-element list whose item is the mask, shaped
        ``(units,)`` or ``(batch, units)`` (per-example), set by the caller.
    """
    modules = dict(model.named_modules())
    out = {}
    for name, units in owners.items():
        module = modules[name]
        width = unit_width(module, units)
        holder = [torch.ones(units)]

        def hook(mod, args, holder=holder, width=width):
            x, mask = args[0], holder[0]
            cols = mask.repeat_interleave(width, dim=-1).to(x.dtype)
            if cols.ndim == 2:  # per-example: (batch, columns) -> broadcast over the token axes
                cols = cols.reshape(cols.shape[0], *([1] * (x.ndim - 2)), cols.shape[1])
            return (x * cols, *args[1:])

        out[name] = [holder, module.register_forward_pre_hook(hook)]
    return out


def fisher_importance(model: nn.Module, owners: dict[str, int], batches: list[dict]) -> dict[str, torch.Tensor]:
    """Empirical Fisher ``I_u = sum_i (d loss_i / d m_u)^2`` of every unit's mask variable (module docstring).

    Args:
        model: a classification model whose forward takes ``labels``-free inputs and returns ``logits``.
        owners: owner module name -> its number of units.
        batches: calibration batches (model inputs + ``labels``).

    Returns:
        owner -> ``(units,)`` Fisher importance.
    """
    hooks = attach_masks(model, owners)
    fisher = {name: torch.zeros(units) for name, units in owners.items()}
    training = model.training
    model.eval()
    try:
        for batch in batches:
            labels = batch["labels"]
            masks = {n: torch.ones(len(labels), u, requires_grad=True) for n, u in owners.items()}
            for name, (holder, _) in hooks.items():
                holder[0] = masks[name]
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, [masks[n] for n in owners])
            for name, grad in zip(owners, grads):
                fisher[name] += grad.pow(2).sum(0)
    finally:
        for _, handle in hooks.values():
            handle.remove()
        model.train(training)
    return fisher


def mask_search(heads: dict, neurons: dict, budget: float, minimum: int = 1) -> dict[str, torch.Tensor]:
    """Kwon et al.'s Algorithm 1: the kept heads / neurons of highest total Fisher within a time budget.

    For each count ``n`` of kept heads (beyond each owner's ``minimum``): the ``n`` best heads, then neurons in
    order of Fisher while their time fits the rest of the budget; the split with the highest kept Fisher wins.
    With one cost per kind this is the exact optimum of ``max sum I`` s.t. ``sum cost <= budget``.

    Args:
        heads: head owner -> ``(fisher (units,), seconds per unit)``.
        neurons: FFN owner -> ``(fisher (units,), seconds per unit)``.
        budget: seconds the kept units may take (their variable time, ``sum_s b_s w_s``).
        minimum: units every owner keeps whatever their Fisher.

    Returns:
        owner -> boolean keep mask ``(units,)``.

    Raises:
        ValueError: when the owners' minimums alone exceed the budget.
    """
    keep = {o: torch.zeros(len(f), dtype=torch.bool) for o, (f, _) in {**heads, **neurons}.items()}
    spent = 0.0
    for owner, (fisher, cost) in {**heads, **neurons}.items():  # the forced minimum: each owner's best units
        keep[owner][fisher.topk(min(minimum, len(fisher))).indices] = True
        spent += cost * int(keep[owner].sum())
    if spent > budget * (1 + 1e-9):
        raise ValueError(f"the budget {budget:.3g}s is below the {spent:.3g}s of one unit per owner")

    def ranked(group):  # (fisher, cost, owner, index) of the units not forced in, best first
        items = [(float(f[i]), c, o, i) for o, (f, c) in group.items() for i in range(len(f)) if not keep[o][i]]
        return sorted(items, key=lambda t: -t[0])

    head_list, neuron_list = ranked(heads), ranked(neurons)
    best = (-1.0, 0, [])
    head_time, head_fisher = 0.0, 0.0
    for n in range(len(head_list) + 1):
        if n:
            head_time += head_list[n - 1][1]
            head_fisher += head_list[n - 1][0]
        if spent + head_time > budget * (1 + 1e-9):
            break
        left, total, chosen = budget - spent - head_time, head_fisher, []
        for item in neuron_list:
            if item[1] <= left * (1 + 1e-9):
                left -= item[1]
                total += item[0]
                chosen.append(item)
        if total > best[0]:
            best = (total, n, chosen)
    for _, _, owner, i in head_list[: best[1]] + best[2]:
        keep[owner][i] = True
    return keep


class FisherMaskMethod(WindowMethod):
    """The Kwon et al. baseline in the benchmark's window: Fisher on calibration data, mask search to the time
    budget, then the shared fine-tune with the pruned units masked (module docstring).

    Args:
        latency: the latency model (`smart_hf.latency.measure_for_prepare`) of the coupled owners.
        target_seconds: the predicted forward time to reach (`smart_hf.latency.predicted_seconds`).
        calibration: batches for the Fisher.
    """

    name = "kwon_fisher"

    def __init__(self, latency: dict, target_seconds: float, calibration: list[dict]):
        self.latency, self.target, self.calibration = latency, target_seconds, calibration

    def prepare(self, model, task, ctx):
        blocks = {o: self.latency["blocks"][sig] for o, sig in self.latency["owners"].items()}
        owners = {o: b["units"] for o, b in blocks.items()}
        fisher = fisher_importance(model, owners, self.calibration)
        unpruned = block_seconds(self.latency, {o: 0 for o in owners})  # the blocks' intercepts
        heads = {o: (fisher[o], b["b"]) for o, b in blocks.items() if b["kind"] == "heads"}
        neurons = {o: (fisher[o], b["b"]) for o, b in blocks.items() if b["kind"] != "heads"}
        self.keep = mask_search(heads, neurons, block_seconds_for(self.latency, self.target) - unpruned)
        self.hooks = attach_masks(model, owners)
        for name, (holder, _) in self.hooks.items():
            holder[0] = self.keep[name].float()
        self.record = {"kept": {o: int(k.sum()) for o, k in self.keep.items()}}
        return weight_groups(model, task.weight_decay)

    def finish(self, model):
        return model  # the hooks stay: evaluation sees the masked model
