"""Structural units: how block, output-channel and N:M masks map onto a layer's weight.

Every supported layer is seen through one *canonical view* of its weight, ``W3`` of shape ``(out, in, s)``:

* ``nn.Linear``: weight ``(out, in)`` -> ``(out, in, 1)``.
* transformers ``Conv1D`` (GPT-2): weight stored ``(in, out)`` -> transposed to ``(out, in, 1)``.
* ``nn.Conv2d``: weight ``(out, in/groups, kh, kw)`` -> ``(out, in/groups, kh*kw)``; ``s`` is the kernel's spatial
  size, so a unit never splits a kernel unless the pattern is N:M.

The three patterns are three ways of cutting ``W3`` into units that share one mask value:

* ``block`` ``(r, c)``: tiles the ``(out, in)`` plane; a unit is ``r`` outputs x ``c`` inputs x the whole kernel,
  cost ``r*c*s`` weights. Unstructured pruning is block ``(1, 1)``. Scores have shape ``(out/r, in/c)``.
* ``channel``: one unit per output channel (row of ``W3``), cost ``in*s``. Scores have shape ``(out,)``.
* ``nm``: keep ``n`` of every ``m`` consecutive weights along the input dimension, separately at every
  ``(output, kernel position)`` -- the layout 2:4 GPU kernels need (for convs: along input channels). Every weight is
  a unit (cost 1); scores have shape ``(out*s*in/m, m)``, one row per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fill import zero_where_

__all__ = ["UnitLayout", "layer_kind", "canonical_weight"]

LAYER_KINDS = ("linear", "conv1d", "conv2d")


def layer_kind(module: torch.nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` (transformers' ``Conv1D``) or ``"conv2d"`` for the exact supported types."""
    if type(module) is torch.nn.Linear:
        return "linear"
    if type(module) is torch.nn.Conv2d:
        return "conv2d"
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return "conv1d"
    return None


def canonical_weight(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """View ``weight`` as ``(out, in, s)`` (see module docstring); a view, no copy, except Conv1D's transpose."""
    if kind == "linear":
        return weight.unsqueeze(-1)
    if kind == "conv1d":
        return weight.t().unsqueeze(-1)
    if kind == "conv2d":
        return weight.reshape(weight.shape[0], weight.shape[1], -1)
    raise ValueError(f"unknown layer kind {kind!r}; expected one of {LAYER_KINDS}")


@dataclass(frozen=True)
class UnitLayout:
    """How one layer's weight is cut into units for one pattern. Pure geometry: no tensors are held."""

    kind: str
    weight_shape: tuple[int, ...]
    pattern: str
    block_shape: tuple[int, int] = (1, 1)
    n: int = 2
    m: int = 4

    @property
    def out_features(self) -> int:
        return self.weight_shape[1] if self.kind == "conv1d" else self.weight_shape[0]

    @property
    def in_features(self) -> int:
        return self.weight_shape[0] if self.kind == "conv1d" else self.weight_shape[1]

    @property
    def spatial(self) -> int:
        return self.weight_shape[2] * self.weight_shape[3] if self.kind == "conv2d" else 1

    @property
    def num_weights(self) -> int:
        return self.out_features * self.in_features * self.spatial

    def divisibility_error(self) -> str | None:
        """Why this pattern cannot tile this weight, or ``None`` when it can."""
        out, inp = self.out_features, self.in_features
        if self.pattern == "block":
            r, c = self.block_shape
            if out % r or inp % c:
                return f"weight plane (out={out}, in={inp}) is not divisible by block_shape={self.block_shape}"
        elif self.pattern == "nm" and inp % self.m:
            return f"input dimension {inp} is not divisible by m={self.m}"
        return None

    @property
    def score_shape(self) -> tuple[int, ...]:
        if self.pattern == "block":
            r, c = self.block_shape
            return (self.out_features // r, self.in_features // c)
        if self.pattern == "channel":
            return (self.out_features,)
        return (self.out_features * self.spatial * self.in_features // self.m, self.m)

    @property
    def num_units(self) -> int:
        return int(torch.Size(self.score_shape).numel())

    @property
    def unit_cost(self) -> int:
        """Weights per unit (every unit of a layout has the same size)."""
        if self.pattern == "block":
            return self.block_shape[0] * self.block_shape[1] * self.spatial
        if self.pattern == "channel":
            return self.in_features * self.spatial
        return 1

    def unit_sum(self, values3: torch.Tensor) -> torch.Tensor:
        """Sum a canonical ``(out, in, s)`` tensor over each unit -> ``score_shape``."""
        out, inp, s = values3.shape
        if self.pattern == "block":
            r, c = self.block_shape
            return values3.reshape(out // r, r, inp // c, c, s).sum(dim=(1, 3, 4))
        if self.pattern == "channel":
            return values3.sum(dim=(1, 2))
        return values3.permute(0, 2, 1).reshape(self.score_shape)  # (out, s, in) -> groups of m along in

    def expand(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """Unit mask (``score_shape``) -> a mask broadcastable to the layer's real weight."""
        mask3 = self._expand_canonical(unit_mask)
        if self.kind == "linear":
            return mask3[..., 0]
        if self.kind == "conv1d":
            return mask3[..., 0].t()
        if mask3.shape[-1] == 1:
            return mask3.unsqueeze(-1)  # (o, i, 1, 1): broadcasts over the kernel
        return mask3.reshape(self.weight_shape)

    def apply(self, weight: torch.Tensor, unit_mask: torch.Tensor) -> torch.Tensor:
        """``weight * expand(unit_mask)`` without materialising the weight-sized mask where a broadcast view does it:
        a block weight is viewed as ``(out/r, r, in/c, c*s)`` and multiplied by the ``(out/r, 1, in/c, 1)`` unit mask,
        which is one pass over the weight in the forward and one reduction for the mask gradient in the backward."""
        unit_mask = unit_mask.to(weight.dtype)
        if self.pattern != "block" or self.block_shape == (1, 1):
            return weight * self.expand(unit_mask)
        r, c = self.block_shape
        rows, cols = self.out_features // r, self.in_features // c
        if self.kind == "conv1d":  # stored (in, out): blocks are (c, r) tiles of the transposed plane
            view = weight.reshape(cols, c, rows, r) * unit_mask.t().reshape(cols, 1, rows, 1)
        else:  # linear (out, in) or conv2d (out, in, kh, kw): the kernel rides along with the input columns
            view = weight.reshape(rows, r, cols, c * self.spatial) * unit_mask.reshape(rows, 1, cols, 1)
        return view.view(weight.shape)

    def zero_pruned_(self, weight: torch.Tensor, unit_mask: torch.Tensor) -> torch.Tensor:
        """Set the weights of pruned units (``unit_mask == 0``) to exactly 0, in place; returns ``weight``.

        A fill, not a multiply: ``NaN * 0`` and ``Inf * 0`` are NaN, so a non-finite value that an overflowing step
        left in a pruned weight would survive ``weight * mask``. Blocks use the broadcast views of `apply` (no
        weight-sized mask); the other patterns broadcast `expand` of the mask. On CPU the fill is a bitwise AND
        (`smart_hf.core.fill`: ``masked_fill_`` is 15-20x slower there), elsewhere ``masked_fill_``.
        """
        pruned = unit_mask.to(weight.device) == 0
        if self.pattern == "block" and self.block_shape != (1, 1) and weight.is_contiguous():
            r, c = self.block_shape
            rows, cols = self.out_features // r, self.in_features // c
            if self.kind == "conv1d":  # stored (in, out): blocks are (c, r) tiles of the transposed plane
                view, pruned = weight.view(cols, c, rows, r), pruned.t().reshape(cols, 1, rows, 1)
            else:
                view, pruned = weight.view(rows, r, cols, c * self.spatial), pruned.reshape(rows, 1, cols, 1)
            zero_where_(view, pruned)
            return weight
        return zero_where_(weight, self.expand(pruned))

    def _expand_canonical(self, unit_mask: torch.Tensor) -> torch.Tensor:
        if self.pattern == "block":
            r, c = self.block_shape
            plane = unit_mask.repeat_interleave(r, 0) if r > 1 else unit_mask
            plane = plane.repeat_interleave(c, 1) if c > 1 else plane
            return plane.unsqueeze(-1)  # (out, in, 1)
        if self.pattern == "channel":
            return unit_mask.reshape(-1, 1, 1)  # (out, 1, 1)
        out, s = self.out_features, self.spatial
        return unit_mask.reshape(out, s, self.in_features).permute(0, 2, 1)  # (out, in, s)

