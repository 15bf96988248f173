"""Exact zeroing of pruned entries in place, fast on CPU.

Pruned weights (and their gradients) are set to exactly ``+0.0`` every step of the hard stage. A multiply by a 0/1
mask is not exact (``NaN * 0`` and ``Inf * 0`` are NaN, so a non-finite value an overflowing step left in a pruned
entry would survive), so the fill was ``masked_fill_`` with a boolean mask -- which on CPU runs a branchy kernel:
0.2-1.3 ms for a 192 x 768 weight with a random (N:M) mask on the shared 2-core VM, 15-20x the time of a vectorised
pass. Here the float's bits are ANDed with an integer mask of the same width,

    bits(w) & keep,   keep = -1 (all bits set) where kept, 0 where pruned,

which is exactly ``masked_fill_(pruned, 0)``: kept entries keep every bit, pruned ones become ``+0.0`` whatever they
held. The integer mask broadcasts like the boolean one. On CUDA both are bandwidth-bound and a weight-sized boolean
mask takes a quarter of an int32 one, so `use_bits` keeps ``masked_fill_`` there.
"""

from __future__ import annotations

import torch

__all__ = ["INT_OF_WIDTH", "fill_mask", "keep_bits", "use_bits", "zero_by_bits_", "zero_with_", "zero_where_"]

# The integer dtype of each float width the bit mask exists for (1-byte floats: none, they use masked_fill_)
INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def use_bits(tensor: torch.Tensor) -> bool:
    """Whether pruned entries of ``tensor`` are zeroed by `zero_by_bits_` (CPU floats of 2, 4 or 8 bytes) rather
    than ``masked_fill_``.

    Args:
        tensor: the tensor to be zeroed.

    Returns:
        True on CPU for float16/bfloat16/float32/float64.
    """
    return tensor.device.type == "cpu" and tensor.is_floating_point() and tensor.element_size() in INT_OF_WIDTH


def keep_bits(pruned: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The integer mask of `zero_by_bits_`: ``0`` where ``pruned``, ``-1`` (all bits) elsewhere.

    Args:
        pruned: boolean, any shape that broadcasts to the tensors it will zero.
        dtype: the float dtype of those tensors (its width picks the integer dtype).

    Returns:
        An integer tensor of ``pruned``'s shape, contiguous.
    """
    int_dtype = INT_OF_WIDTH[torch.empty((), dtype=dtype).element_size()]
    return (~pruned).to(int_dtype).neg_().contiguous()  # True -> 1 -> -1 (all bits set)


def zero_by_bits_(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``tensor.masked_fill_(keep == 0, 0)`` as a bitwise AND, in place (module docstring); returns ``tensor``.

    Args:
        tensor: a float tensor of 2, 4 or 8 bytes per element.
        keep: `keep_bits` of the pruned entries, broadcastable to ``tensor``, of the integer dtype of its width.

    Returns:
        ``tensor``, its pruned entries ``+0.0``.
    """
    tensor.view(keep.dtype).bitwise_and_(keep)
    return tensor


def fill_mask(pruned: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask `zero_with_` zeroes tensors like ``like`` with: `keep_bits` where `use_bits`, else ``pruned``
    itself (built once, it can be kept while the pruned entries do not change).

    Args:
        pruned: boolean, broadcastable to ``like``.
        like: a tensor of the device and dtype to be zeroed.

    Returns:
        An integer keep mask or the boolean ``pruned``.
    """
    return keep_bits(pruned, like.dtype) if use_bits(like) else pruned


def zero_with_(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the pruned entries of ``tensor`` in place with a `fill_mask`: a bitwise AND for an integer mask,
    ``masked_fill_`` for a boolean one; returns ``tensor``.

    Args:
        tensor: the tensor to zero.
        mask: `fill_mask` of its pruned entries.

    Returns:
        ``tensor``.
    """
    return tensor.masked_fill_(mask, 0) if mask.dtype == torch.bool else zero_by_bits_(tensor, mask)


def zero_where_(tensor: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``tensor.masked_fill_(pruned, 0)``: a bitwise AND on CPU (`use_bits`), else ``masked_fill_``; in place.

    Args:
        tensor: the tensor to zero.
        pruned: boolean, broadcastable to ``tensor``.

    Returns:
        ``tensor``.
    """
    return zero_with_(tensor, fill_mask(pruned, tensor))
