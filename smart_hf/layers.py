"""Masked layers: `nn.Linear`, `nn.Conv2d` and transformers' `Conv1D` that multiply their weight by a SMART mask.

A targeted module is not wrapped: its class is swapped in place for a subclass (``Linear -> SmartLinear``) that adds
``smart_scores`` (an ``nn.Parameter``, the separate mask scores) and ``smart_mask`` (a buffer, the frozen hard mask).
So ``isinstance(m, nn.Linear)`` stays true, every original state-dict key (``...query.weight``) is unchanged, hooks
and devices are kept, and `squash` only has to bake the mask, drop the ``smart_`` tensors and restore the class.

The mask itself comes from the model's `SmartState` (one top-k may span many layers); the layer only asks for its
slice and broadcasts it over its weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers.pytorch_utils import Conv1D

from .constants import MASK_NAME, SCORES_NAME
from .core.fill import fill_mask, use_bits, zero_with_
from .core.granularity import UnitLayout

__all__ = [
    "SmartConv1D",
    "SmartConv2d",
    "SmartLayerMixin",
    "SmartLinear",
    "attach_smart_layer",
    "detach_smart_layer",
    "is_smart_layer",
    "smart_class_for",
]

# Plain attributes (outside _parameters/_buffers) that prepare_model and the mask code set on a layer.
_SMART_ATTRIBUTES = (
    "smart_layout",
    "smart_base_class",
    "_smart_state",
    "_smart_slot",
    "_smart_pruned_entries",
    "_smart_clean",  # the hard-stage forward's record of clean weights (SmartLayerMixin.smart_weight)
    "_smart_pruned",  # the cached pruned entries, boolean or bit mask (SmartLayerMixin._smart_zero_pruned_)
    "_smart_coupled",  # the owner layer of a coupled set (smart_hf.coupled_owners.CoupledBinding)
)


class SmartLayerMixin:
    """Shared by the masked layer classes. Attributes set by `prepare_model`:

    * ``smart_layout`` (`UnitLayout`): the unit geometry of this layer.
    * ``smart_scores`` (`nn.Parameter`, float32, ``smart_layout.score_shape``): the mask scores.
    * ``smart_mask`` (buffer, same shape): the binary mask once hardened.
    * ``_smart_state``: the model's `SmartState`, stored outside ``_modules`` so it is not a sub-module twice.
    """

    smart_layout: UnitLayout
    smart_base_class: type

    def smart_unit_mask(self) -> torch.Tensor:
        return self._smart_state.unit_mask(self)

    @torch.compiler.disable  # reads the per-step clean-weight flag: compiled, it would guard and recompile
    def smart_weight(self) -> torch.Tensor:
        """The weight the layer computes with: ``weight * expand(mask)`` (plain weight in dense mode).

        Hard stage: when nothing has written to the weight or the mask since `smart_apply_hard_mask_` zeroed the
        pruned weights, ``weight * mask == weight`` exactly, so the weight is used as is and only its gradient is
        masked (`_MaskedGradient`). Otherwise -- an optimizer step, ``load_state_dict`` or a hand edit since the last
        re-masking, e.g. a loop that forgot `apply_hard_masks_` -- the masked product is computed as before.
        """
        unit_mask = self.smart_unit_mask()
        if unit_mask is None:
            return self.weight
        if unit_mask is self.smart_mask and self.__dict__.get("_smart_clean") == self._smart_clean_key():
            return _MaskedGradient.apply(self.weight, self)
        return self.smart_layout.apply(self.weight, unit_mask)

    def _smart_clean_key(self) -> tuple:
        """What changes whenever the weight or the mask may have changed: the in-place version counters and storages
        of both, and the number of optimizer steps taken in this process (a fused optimizer writes without bumping
        the version counter)."""
        weight, mask = self.weight, self.smart_mask
        return (weight.data_ptr(), weight._version, mask.data_ptr(), mask._version, _OPTIMIZER_STEPS[0])

    @torch.no_grad()
    def smart_apply_hard_mask_(self) -> None:
        """Set the pruned weights to exactly zero in place (keeps them zero through fine-tuning, including a NaN or
        Inf that an overflowing optimizer step wrote into one), and remember that they are (see `smart_weight`)."""
        self._smart_zero_pruned_(self.weight)
        binding = self.__dict__.get("_smart_coupled")
        if binding is not None:  # the owner of a coupled set also zeroes its partners (`smart_hf.coupling`)
            binding.zero_partners_(self.smart_mask)
        _count_optimizer_steps()
        self.__dict__["_smart_clean"] = self._smart_clean_key()

    def _smart_zero_pruned_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Fill the pruned entries of the weight-shaped ``tensor`` with 0 in place (a fill, so NaN/Inf go too).
        Blocks use the views of the small unit mask; other patterns a weight-shaped view of the pruned entries kept
        while the mask is unchanged (the N:M mask is as large as the weight: comparing it with 0 every step is a pass
        of its own): on CPU an integer mask for a bitwise AND (`smart_hf.core.fill`), elsewhere a boolean one."""
        layout, mask = self.smart_layout, self.smart_mask
        if layout.pattern == "block" and layout.block_shape != (1, 1):
            return layout.zero_pruned_(tensor, mask)
        key = (mask.data_ptr(), mask._version, tensor.device, tensor.dtype if use_bits(tensor) else None)
        cached = self.__dict__.get("_smart_pruned")
        if cached is None or cached[0] != key:
            cached = (key, fill_mask(layout.expand(mask.to(tensor.device) == 0), tensor))
            self.__dict__["_smart_pruned"] = cached
        return zero_with_(tensor, cached[1])

    def extra_repr(self) -> str:
        layout = self.smart_layout
        detail = {"block": f"block={layout.block_shape}", "channel": "channel", "nm": f"{layout.n}:{layout.m}"}
        return f"{super().extra_repr()}, smart={detail[layout.pattern]}"


# Optimizer steps taken in this process, counted by a global step post-hook registered on the first re-masking: the
# weights of the hard stage are "clean" (pruned entries exactly zero) only until the next step.
_OPTIMIZER_STEPS = [0]
_STEP_HOOK = []


def _step_taken(*_args, **_kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


def _count_optimizer_steps() -> None:
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_step_taken))


class _MaskedGradient(torch.autograd.Function):
    """Identity in the forward, ``grad * mask`` in the backward: the hard-stage weight when its pruned entries are
    already zero. The gradient equals that of ``weight * mask`` (pruned entries get exactly 0), so gradient clipping
    and the optimizer moments see the same values as with the masked product; the forward skips a weight-sized
    multiply and its saved copy."""

    @staticmethod
    def forward(ctx, weight, layer):
        ctx.layer = layer
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        grad = grad if grad.is_contiguous() else grad.contiguous()  # the weight gradient of a matmul/conv is fresh
        return ctx.layer._smart_zero_pruned_(grad), None


class SmartLinear(SmartLayerMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.smart_weight(), self.bias)


class SmartConv2d(SmartLayerMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.smart_weight(), self.bias)


class SmartConv1D(SmartLayerMixin, Conv1D):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.smart_weight())
        return x.view(size_out)

    def extra_repr(self) -> str:  # Conv1D defines __repr__, not extra_repr
        return f"nf={self.nf}, nx={self.nx}, smart={self.smart_layout.pattern}"

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)


_SMART_CLASSES = {"linear": SmartLinear, "conv2d": SmartConv2d, "conv1d": SmartConv1D}


def smart_class_for(kind: str) -> type:
    return _SMART_CLASSES[kind]


def is_smart_layer(module: nn.Module) -> bool:
    return isinstance(module, SmartLayerMixin)


def attach_smart_layer(module: nn.Module, layout: UnitLayout) -> nn.Module:
    """Turn ``module`` into its SMART class in place: zero ``smart_scores`` (a parameter) and a ones ``smart_mask``
    (a buffer) of ``layout.score_shape`` on the weight's device."""
    base_class = type(module)
    module.__class__ = smart_class_for(layout.kind)
    module.smart_base_class = base_class
    module.smart_layout = layout
    device = module.weight.device
    module.register_parameter(SCORES_NAME, nn.Parameter(torch.zeros(layout.score_shape, device=device)))
    module.register_buffer(MASK_NAME, torch.ones(layout.score_shape, device=device))
    return module


def detach_smart_layer(module: nn.Module) -> nn.Module:
    """Undo `attach_smart_layer` in place: the original class back, every ``smart_`` tensor and attribute gone
    (the weight is left as it is: `squash` bakes the mask into it first)."""
    module._parameters.pop(SCORES_NAME, None)
    module._buffers.pop(MASK_NAME, None)
    module.__class__ = module.smart_base_class
    for attr in _SMART_ATTRIBUTES:
        module.__dict__.pop(attr, None)
    return module
