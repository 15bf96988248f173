"""Module surgery for `slim`: smaller copies of Linear / Conv2d / BatchNorm2d that keep selected units.

A unit removed from a producer is an output row (Linear ``weight[o, :]``, Conv2d ``weight[o, :, :, :]``, a
BatchNorm2d channel); the matching unit of its consumer is an input column (``weight[:, i]``). Every helper here
builds a *new* module of the same type, dtype and device holding ``weight[out_idx][:, in_idx]`` (and the selected
bias / statistics), so the original can be swapped out with `replace_module`. ``load_slim`` uses the same helpers with
``arange(size)`` indices to get modules of the recorded sizes before loading the weights.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "layout_error_after_removal",
    "replace_module",
    "select_batchnorm",
    "select_conv",
    "select_linear",
]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` of ``model``, in the train/eval mode of the module it replaces (a
    BatchNorm left in train mode would normalise with batch statistics)."""
    parent_name, _, child = name.rpartition(".")
    new.train(model.get_submodule(name).training)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _pick(tensor: torch.Tensor, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> torch.Tensor:
    picked = tensor if out_idx is None else tensor[out_idx.to(tensor.device)]
    return picked if in_idx is None else picked[:, in_idx.to(tensor.device)]


@torch.no_grad()
def select_linear(linear: nn.Linear, out_idx=None, in_idx=None) -> nn.Linear:
    """A Linear holding ``weight[out_idx][:, in_idx]`` and ``bias[out_idx]`` (``None``: keep the whole axis)."""
    weight = _pick(linear.weight, out_idx, in_idx)
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=linear.bias is not None, device=weight.device, dtype=weight.dtype
    )
    new.weight.copy_(weight)
    if linear.bias is not None:
        new.bias.copy_(linear.bias if out_idx is None else linear.bias[out_idx.to(linear.bias.device)])
    return new


@torch.no_grad()
def select_conv(conv: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    """A Conv2d with the same geometry (kernel, stride, padding, dilation) holding ``weight[out_idx][:, in_idx]``.
    Only ``groups == 1`` convs are sliced (a grouped conv ties input channels to output groups)."""
    if conv.groups != 1:
        raise ValueError(f"cannot slice a grouped Conv2d (groups={conv.groups}); only groups=1 convs are slimmed.")
    weight = _pick(conv.weight, out_idx, in_idx)
    new = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.weight.copy_(weight)
    if conv.bias is not None:
        new.bias.copy_(conv.bias if out_idx is None else conv.bias[out_idx.to(conv.bias.device)])
    return new


@torch.no_grad()
def select_batchnorm(norm: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    """A BatchNorm2d over channels ``idx``: affine parameters and running statistics selected, settings kept."""
    kept = len(idx)
    new = nn.BatchNorm2d(
        kept,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
        device=idx.device if norm.running_mean is None else norm.running_mean.device,
    )
    for attr in ("weight", "bias", "running_mean", "running_var"):
        source = getattr(norm, attr, None)
        if source is not None:
            target = getattr(new, attr)
            target.data = source.detach()[idx.to(source.device)].clone()  # keeps the source dtype
    if norm.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new


def layout_error_after_removal(info: dict | None, axis: str, unit: int) -> str | None:
    """Why removing whole runs of ``unit`` rows (``axis="out"``) or input columns (``axis="in"``) would break the
    recorded pruning layout ``info`` (a ``config.smart_hf["layers"]`` entry), or ``None`` when it stays valid.

    A channel layout survives any removal; a ``(r, c)`` block layout needs ``r | unit`` (rows) or ``c | unit``
    (columns) so that no block straddles the cut; an N:M layout groups along the input, so columns need
    ``m | unit``. An unpruned layer (``info is None``) has no layout to keep.
    """
    if info is None or info["pattern"] == "channel":
        return None
    if info["pattern"] == "block":
        size = info["block_shape"][0 if axis == "out" else 1]
        if unit % size:
            return f"its {info['block_shape']} blocks straddle the removed {unit}-wide units"
        return None
    if axis == "in" and unit % info["m"]:
        return f"its {info['n']}:{info['m']} groups straddle the removed {unit}-wide input units"
    return None
