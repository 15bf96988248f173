"""One coupled block rebuilt at a kept width, for timing: what a slim model runs in place of the dense block.

A coupled set (`smart_hf.coupling.CoupledSet`) is rebuilt from fresh modules of its members' classes and
hyper-parameters with ``w`` units kept: producers with ``chunks * w * width`` outputs, the consumer with
``w * width`` inputs, BatchNorm with ``w`` entries, plus what runs between them -- the activation of an FFN
(``act(gate) * up`` for gated FFNs), the attention matmuls of heads (``scaled_dot_product_attention`` over
``w * heads_per_unit`` query heads and ``w`` key/value heads), BatchNorm + ReLU of a conv chain. The input has the
shape the dense model fed the block's first producer (captured by a forward pre-hook). Weights are random: only the
time matters.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..coupling import CoupledSet, member_size

__all__ = ["block_signature", "capture_input_shapes", "rebuild_block"]


def capture_input_shapes(model: nn.Module, sets: list[CoupledSet], forward) -> dict[str, tuple]:
    """The input shape of every set's first producer in one call of ``forward()`` (which runs ``model``).

    Args:
        model: the model.
        sets: its coupled sets.
        forward: a callable running one forward of ``model``.

    Returns:
        ``{owner: input shape}``.
    """
    shapes, handles = {}, []
    for cset in sets:
        first = cset.members[0].name

        def hook(_module, args, _owner=cset.owner):
            if args and torch.is_tensor(args[0]):
                shapes.setdefault(_owner, tuple(args[0].shape))

        handles.append(model.get_submodule(first).register_forward_pre_hook(hook))
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def block_signature(model: nn.Module, cset: CoupledSet, shape: tuple) -> str:
    """A key equal for sets that time alike: kind, member classes and sizes, head geometry and input shape.

    Args:
        model: the model holding the set.
        cset: the set.
        shape: the input shape of its first producer.

    Returns:
        A string key.
    """
    parts = [cset.kind, str(cset.units), str(cset.head_dim), str(cset.heads_per_unit), str(tuple(shape))]
    for m in cset.members:
        module = model.get_submodule(m.name)
        weight = getattr(module, "weight", None)
        dims = tuple(weight.shape) if weight is not None else (member_size(module, m.axis),)
        parts.append(f"{type(module).__name__}{dims}{m.axis}{m.width}x{m.chunks}")
    return "|".join(parts)


def _resized(module: nn.Module, axis: str, entries: int) -> nn.Module:
    """A fresh copy of ``module`` with ``entries`` outputs (``"out"``), inputs (``"in"``) or features (norm)."""
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(entries, eps=module.eps).to(module.weight.device, module.weight.dtype).eval()
    new = copy.copy(module)  # shallow: the hyper-parameters (kernel, stride, padding, ...) are kept
    new._parameters = dict(module._parameters)
    weight = module.weight
    if type(module).__name__ == "Conv1D":  # stored (in, out)
        shape = (weight.shape[0], entries) if axis == "out" else (entries, weight.shape[1])
        new.nf = shape[1]
    elif axis == "out":
        shape = (entries,) + tuple(weight.shape[1:])
    else:
        shape = (weight.shape[0], entries) + tuple(weight.shape[2:])
    new.weight = nn.Parameter(torch.randn(shape, device=weight.device, dtype=weight.dtype) * 0.02, False)
    bias = getattr(module, "bias", None)
    if bias is not None and axis == "out":
        new.bias = nn.Parameter(torch.zeros(entries, device=bias.device, dtype=bias.dtype), False)
    for attr, value in (("out_features", shape[0]), ("in_features", shape[-1])):
        if hasattr(new, attr) and isinstance(module, nn.Linear):
            setattr(new, attr, value)
    if isinstance(module, nn.Conv2d):
        new.out_channels, new.in_channels = shape[0], shape[1]
    return new


def rebuild_block(model: nn.Module, cset: CoupledSet, shape: tuple, kept: int):
    """A callable running ``cset``'s block with ``kept`` units on a random input of ``shape``.

    Args:
        model: the model holding the set.
        cset: the set.
        shape: the input shape of its first producer (`capture_input_shapes`).
        kept: the units to keep (1..units).

    Returns:
        A function without arguments that runs the block once.
    """
    producers = [m for m in cset.members if m.axis == "out"]
    consumer = cset.member(cset.owner)
    first = model.get_submodule(producers[0].name)
    device, dtype = first.weight.device, first.weight.dtype
    x = torch.randn(shape, device=device, dtype=dtype)
    prods = [_resized(model.get_submodule(m.name), "out", m.chunks * kept * m.width) for m in producers]
    cons = _resized(model.get_submodule(consumer.name), "in", kept * consumer.width)
    if cset.kind == "conv":
        norm = _resized(model.get_submodule(cset.members[1].name), "norm", kept)
        return lambda: cons(F.relu(norm(prods[0](x))))
    if cset.kind == "ffn":
        if len(prods) == 2:  # gate / up
            return lambda: cons(F.silu(prods[0](x)) * prods[1](x))
        return lambda: cons(F.gelu(prods[0](x)))
    return _attention_block(cset, prods, cons, x, kept)


def _attention_block(cset: CoupledSet, prods: list, cons: nn.Module, x: torch.Tensor, kept: int):
    """q/k/v projections (three modules, or one fused with three chunks), SDPA over the kept heads, output."""
    d, rep = cset.head_dim, cset.heads_per_unit
    lead = x.shape[:-1]
    batch, tokens = (lead[0], lead[1]) if len(lead) == 2 else (1, lead[0] if lead else 1)

    def heads(t: torch.Tensor, count: int) -> torch.Tensor:
        return t.reshape(batch, tokens, count, d).transpose(1, 2)

    def run():
        if len(prods) == 1:  # GPT-2's fused c_attn
            q, k, v = prods[0](x).split(kept * d, dim=-1)
        else:
            q, k, v = (p(x) for p in prods)
        q, k, v = heads(q, kept * rep), heads(k, kept), heads(v, kept)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return cons(out.transpose(1, 2).reshape(batch, tokens, kept * rep * d))

    return run
