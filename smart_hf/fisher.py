"""Fisher importance of coupled units (``score_init="fisher"``): how much the loss depends on each whole unit.

Every coupled unit (an FFN neuron, an attention head / key-value group, a CNN channel) gets a mask variable ``m_u``
that multiplies the input columns it owns in its owner layer (the layer the unit ends in: attention output
projection, FFN down projection, the consumer conv). Its importance is the empirical Fisher at ``m = 1``

    I_u = sum_i (d loss_i / d m_u)^2

over the calibration examples ``i`` (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").
The per-example gradients come from one backward per batch: the mask gets a batch dimension, shape
``(batch, units)``, all ones, and the loss is the batch's mean loss times its size, so row ``i`` of the mask's
gradient is ``d loss_i / d m``; the model runs in eval mode (no dropout), so the examples do not interact. Unlike
weight magnitudes, ``I_u`` compares across layers: it is the second-order estimate ``I_u / 2`` of the loss increase
when the unit is removed (the gradient term vanishes on average at a trained model), so a global budget can spend a
layer's units where they cost the least loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .scores import all_reduce_each, to_device

__all__ = ["unit_fisher"]


def _column_mask(mask: torch.Tensor, member) -> torch.Tensor:
    """``(batch, units)`` -> ``(batch, chunks * units * width)``: each unit's value on every input column it owns."""
    batch, units = mask.shape
    return mask[:, None, :, None].expand(batch, member.chunks, units, member.width).reshape(batch, -1)


def _masking_hook(holder: list, member, channels_first: bool):
    """A forward pre-hook multiplying the owner's input by ``holder[0]`` (``(batch, units)``) per column: the columns
    are dimension 1 of a conv's input, the last one of a linear layer's."""

    def hook(_module, args):
        x, cols = args[0], _column_mask(holder[0], member).to(args[0].dtype)
        ones = (1,) * (x.dim() - 2)
        shape = (x.shape[0], -1, *ones) if channels_first else (x.shape[0], *ones, -1)
        return (x * cols.reshape(shape), *args[1:])

    return hook


def _summed_loss(model: nn.Module, batch: dict, size: int) -> torch.Tensor:
    """The summed per-example loss of ``batch``: the model's mean loss times the batch size."""
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            "score_init='fisher' needs calibration batches with labels (the model must return a loss); add "
            "'labels' to the batches or use score_init='magnitude'."
        )
    return loss * size


@torch.enable_grad()
def _accumulate(model: nn.Module, batches, max_batches: int, holders: list, fisher: list) -> int:
    """Add ``sum_i (d loss_i / d m)^2`` of up to ``max_batches`` batches into ``fisher``; returns the batches used."""
    device, seen = next(model.parameters()).device, 0
    for batch in batches:
        if seen >= max_batches:
            break
        batch = to_device(batch, device)
        size = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        masks = [torch.ones(size, len(total), device=device, requires_grad=True) for total in fisher]
        for holder, mask in zip(holders, masks):
            holder[0] = mask
        loss = _summed_loss(model, batch, size)
        for total, grad in zip(fisher, torch.autograd.grad(loss, masks, allow_unused=True)):
            if grad is not None:  # a unit the loss does not reach keeps 0
                total += grad.detach().double().square().sum(0).cpu()
        seen += 1
    return seen


def unit_fisher(model: nn.Module, layers: list[nn.Module], batches, max_batches: int) -> list[torch.Tensor]:
    """``I_u = sum_i (d loss_i / d m_u)^2`` of every unit of every coupled owner in ``layers`` (module docstring).

    Args:
        model: the prepared model, in dense mode (its masks do not take part).
        layers: the owner layers, each with its coupled binding (``_smart_coupled``).
        batches: calibration batches (dicts of model inputs with ``labels``).
        max_batches: batches used at most.

    Returns:
        Per layer, ``(units,)`` float32 Fisher importances on the CPU (summed over ranks under torch.distributed).

    Raises:
        ValueError: when a layer is not a coupled owner, the batches carry no labels, or none reached the layers.
    """
    bindings = [layer.__dict__.get("_smart_coupled") for layer in layers]
    if any(b is None for b in bindings):
        raise ValueError("score_init='fisher' scores coupled units only; use pattern='coupled' or another score_init.")
    holders = [[None] for _ in layers]
    handles = [
        layer.register_forward_pre_hook(
            _masking_hook(holder, b.cset.member(b.cset.owner), isinstance(layer, nn.Conv2d))
        )
        for layer, holder, b in zip(layers, holders, bindings)
    ]
    fisher = [torch.zeros(b.cset.units, dtype=torch.float64) for b in bindings]
    was_training = model.training
    model.eval()
    try:
        seen = _accumulate(model, batches, max_batches, holders, fisher)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration_data produced no batches; pass a non-empty iterable of labelled input dicts.")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        fisher = all_reduce_each(fisher)
    return [f.float() for f in fisher]
