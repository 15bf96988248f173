"""Multiply-accumulates (MACs) of the layers `slim` shrinks, from their sizes alone: dense vs slim predictions.

Pure arithmetic (one MAC = one multiply + one add = 2 FLOPs); no model is run. Per transformer layer with ``t``
tokens, hidden size ``h``, ``n`` heads of size ``d`` and FFN width ``f``:

* q/k/v projections ``3 * t * h * (n d)``; output projection ``t * (n d) * h``;
* attention matmuls ``Q K^T`` and ``A V``: ``2 * t^2 * n d``;
* FFN ``fc1`` + ``fc2``: ``2 * t * h * f``.

A convolution with output ``H x W``, ``C_in`` inputs, ``C_out`` outputs, a ``kh x kw`` kernel and ``g`` groups costs
``H W C_out (C_in / g) kh kw``. Biases, norms and activations are not counted (they are O(outputs), not O(weights)).
"""

from __future__ import annotations

__all__ = ["attention_macs", "conv_macs", "linear_macs", "transformer_layer_macs"]


def linear_macs(rows: int, in_features: int, out_features: int) -> int:
    """``rows * in * out``: a Linear applied to ``rows`` vectors (tokens x batch)."""
    return rows * in_features * out_features


def attention_macs(tokens: int, heads: int, head_dim: int, batch: int = 1) -> int:
    """``Q K^T`` plus ``A V`` of self-attention: ``2 * batch * tokens^2 * heads * head_dim``."""
    return 2 * batch * tokens * tokens * heads * head_dim


def transformer_layer_macs(
    tokens: int, hidden: int, heads: int, head_dim: int, intermediate: int, batch: int = 1
) -> dict[str, int]:
    """MACs of one encoder layer by part: ``{"qkv", "attention", "out", "ffn", "total"}`` (see module docstring).
    Dense: the config's sizes; slim: the kept head count and FFN width of that layer."""
    rows, width = batch * tokens, heads * head_dim
    parts = {
        "qkv": 3 * linear_macs(rows, hidden, width),
        "attention": attention_macs(tokens, heads, head_dim, batch),
        "out": linear_macs(rows, width, hidden),
        "ffn": linear_macs(rows, hidden, intermediate) + linear_macs(rows, intermediate, hidden),
    }
    return {**parts, "total": sum(parts.values())}


def conv_macs(
    out_height: int,
    out_width: int,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    groups: int = 1,
    batch: int = 1,
) -> int:
    """``batch * H * W * C_out * (C_in / groups) * kh * kw`` for one Conv2d."""
    if in_channels % groups:
        raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}.")
    kh, kw = kernel_size
    return batch * out_height * out_width * out_channels * (in_channels // groups) * kh * kw
