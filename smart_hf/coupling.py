"""Coupled structural units: units that span several layers and come out of the model whole.

A *coupled set* is a producer -> consumer pair whose intermediate units can only be removed together:

* FFN neuron ``i``: row ``i`` of fc1 / up (and gate) with its bias, and column ``i`` of fc2 / down;
* attention head ``h``: the q/k/v rows of the head (+ biases) and the o_proj columns of the head; with grouped-query
  attention a unit is one key/value group with its ``H/G`` query heads (``q``/``o`` width ``(H/G)*d``, ``k``/``v``
  width ``d``); GPT-2's fused ``c_attn`` holds q, k and v as three chunks of ``E`` outputs;
* CNN inner channel ``c``: output channel ``c`` of conv_a, its BatchNorm entries and input channel ``c`` of conv_b
  (ResNet basic and bottleneck blocks).

One learned score per unit lives on the *consumer* (the owner): it is an ordinary SMART layer whose layout is the
``block`` pattern with blocks ``(out_features, width)`` -- one block per unit, all of the unit's input columns.
So every existing piece (soft top-k, budgets, hardening, reports) sees a normal layer. The soft mask gates the
consumer's input columns, which equals gating the unit's activation; the producer rows (and BN entries) are zeroed
in place once the mask is hard (`smart_hf.coupled_owners.CoupledBinding.zero_partners_`, which also holds the
owners' layout and targeting). With the consumer columns zero a pruned unit adds exactly nothing, so removing it
(`smart_hf.slim`) needs no constant folding and is exact, padding included.

Budget cost of a unit (``unit_cost``): the number of weights it removes from all members, which for linear layers
is its multiply-accumulates per token; with ``tokens > 0`` the attention matmuls ``Q K^T`` and ``A V`` of its
query heads are added (``2 * tokens * d`` MACs per token per head). Conv units count weights, not MACs (the
feature-map size is not known from the module).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "CoupledSet",
    "Member",
    "coupled_unit_cost",
    "entries_mask",
    "member_size",
    "find_coupled_sets",
    "is_conv1d",
    "member_indices",
    "no_coupling_message",
]

_ACT_NAMES = ("activation_fn", "act_fn", "act", "activation", "intermediate_act_fn")
_CONV_LAYER_PARTS = {"convolution", "normalization", "activation"}
AXES = ("out", "in", "norm")


@dataclass(frozen=True)
class Member:
    """One module a coupled unit spans. ``axis``: ``"out"`` (rows of a producer: Linear rows, Conv1D columns,
    Conv2d output channels, + bias), ``"in"`` (input columns of the consumer) or ``"norm"`` (BatchNorm entries).
    Along ``axis`` the module has ``chunks * units * width`` entries; unit ``u`` owns entries
    ``c * units * width + u * width + j`` for every chunk ``c`` and ``j < width``."""

    name: str
    axis: str
    width: int
    chunks: int = 1


@dataclass(frozen=True)
class CoupledSet:
    """Units removable as a whole: ``kind`` (``"heads"``, ``"ffn"``, ``"conv"``), ``owner`` (the consumer holding
    the scores), ``members`` (owner included), ``units``; for heads also the module holding the head-count
    attributes (``attention``), ``head_dim`` and the query heads per unit (``heads_per_unit``, 1 without GQA)."""

    kind: str
    owner: str
    members: tuple
    units: int
    attention: str | None = None
    head_dim: int | None = None
    heads_per_unit: int = 1

    def to_dict(self) -> dict:
        return {**asdict(self), "members": [asdict(m) for m in self.members]}

    @classmethod
    def from_dict(cls, payload: dict) -> CoupledSet:
        return cls(**{**payload, "members": tuple(Member(**m) for m in payload["members"])})

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)


def _base(module) -> type:
    """The module's own class, or the one it had before `prepare_model` swapped in its SMART class."""
    return getattr(module, "__dict__", {}).get("smart_base_class", type(module))


def _lin(module) -> bool:
    return _base(module) is nn.Linear


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is (or was, before `prepare_model` swapped its class) transformers' ``Conv1D``.

    Args:
        module: any module.

    Returns:
        True for a ``Conv1D``, whose weight is stored ``(in, out)``.
    """
    return _base(module).__name__ == "Conv1D" and _base(module).__module__.startswith("transformers")


def member_size(module: nn.Module, axis: str) -> int:
    """Entries of ``module`` along ``axis`` (see `Member`)."""
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    weight = module.weight
    if is_conv1d(module):  # stored (in, out)
        return weight.shape[1] if axis == "out" else weight.shape[0]
    return weight.shape[0] if axis == "out" else weight.shape[1]


def _qkvo_heads(model, name, module) -> CoupledSet | None:
    """``q_proj/k_proj/v_proj`` + ``o_proj``/``out_proj`` with a ``head_dim`` attribute (ViT, DeiT, Llama, ...)."""
    out = "o_proj" if hasattr(module, "o_proj") else "out_proj"
    parts = [getattr(module, p, None) for p in ("q_proj", "k_proj", "v_proj", out)]
    d = getattr(module, "head_dim", None)
    if not (all(_lin(p) for p in parts) and isinstance(d, int) and d > 0):
        return None
    q, k, v, o = parts
    heads, groups = q.out_features // d, k.out_features // d
    if q.out_features % d or k.out_features % d or v.out_features != k.out_features or heads % max(groups, 1):
        return None
    rep, prefix = heads // groups, f"{name}." if name else ""
    members = (
        Member(f"{prefix}q_proj", "out", rep * d),
        Member(f"{prefix}k_proj", "out", d),
        Member(f"{prefix}v_proj", "out", d),
        Member(f"{prefix}{out}", "in", rep * d),
    )
    return CoupledSet("heads", f"{prefix}{out}", members, groups, name, d, rep)


def _bert_heads(model, name, module) -> CoupledSet | None:
    """``self.query/key/value`` + ``output.dense`` with ``attention_head_size`` (BERT, RoBERTa, ...)."""
    inner, output = getattr(module, "self", None), getattr(module, "output", None)
    parts = [getattr(inner, p, None) for p in ("query", "key", "value")] + [getattr(output, "dense", None)]
    d = getattr(inner, "attention_head_size", None)
    if not (all(_lin(p) for p in parts) and isinstance(d, int) and d > 0) or parts[0].out_features % d:
        return None
    prefix = f"{name}." if name else ""
    members = tuple(Member(f"{prefix}self.{p}", "out", d) for p in ("query", "key", "value"))
    members += (Member(f"{prefix}output.dense", "in", d),)
    return CoupledSet("heads", f"{prefix}output.dense", members, parts[0].out_features // d, f"{prefix}self", d)


def _gpt2_heads(model, name, module) -> CoupledSet | None:
    """GPT-2: fused ``c_attn`` (q, k, v as three chunks) + ``c_proj`` (transformers ``Conv1D``)."""
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    d, split = getattr(module, "head_dim", None), getattr(module, "split_size", None)
    if not (is_conv1d(c_attn) and is_conv1d(c_proj) and isinstance(d, int) and isinstance(split, int)):
        return None
    if hasattr(module, "q_attn") or member_size(c_attn, "out") != 3 * split or split % d:
        return None  # cross-attention splits q from k/v: not one fused unit
    prefix = f"{name}." if name else ""
    members = (Member(f"{prefix}c_attn", "out", d, chunks=3), Member(f"{prefix}c_proj", "in", d))
    return CoupledSet("heads", f"{prefix}c_proj", members, split // d, name, d)


def _ffn(model, name, module) -> CoupledSet | None:
    """fc1/fc2 (+ activation), intermediate.dense/output.dense, gate/up/down (Llama), c_fc/c_proj (GPT-2)."""
    prefix = f"{name}." if name else ""
    act = any(callable(getattr(module, a, None)) for a in _ACT_NAMES)
    candidates = [
        (("fc1",), "fc2", _lin, act),
        (
            ("intermediate.dense",),
            "output.dense",
            _lin,
            callable(getattr(getattr(module, "intermediate", None), "intermediate_act_fn", None)),
        ),
        (("gate_proj", "up_proj"), "down_proj", _lin, True),
        (("c_fc",), "c_proj", is_conv1d, True),
    ]
    for producers, consumer, is_kind, ok in candidates:
        try:
            mods = [module.get_submodule(p) for p in producers] + [module.get_submodule(consumer)]
        except AttributeError:
            continue
        if not ok or not all(is_kind(m) for m in mods):
            continue
        width = member_size(mods[-1], "in")
        if any(member_size(m, "out") != width for m in mods[:-1]):
            continue
        members = tuple(Member(f"{prefix}{p}", "out", 1) for p in producers) + (
            Member(f"{prefix}{consumer}", "in", 1),
        )
        return CoupledSet("ffn", f"{prefix}{consumer}", members, width)
    return None


def _is_conv_layer(module: nn.Module) -> bool:
    children = dict(module.named_children())
    return (
        set(children) <= _CONV_LAYER_PARTS
        and _base(children.get("convolution")) is nn.Conv2d
        and type(children.get("normalization")) is nn.BatchNorm2d
        and children["convolution"].groups == 1
        and children["normalization"].track_running_stats
    )


def _conv_chains(model, name, module) -> list[CoupledSet]:
    """Consecutive conv -> BN -> act layers of one ``nn.Sequential`` (transformers' ResNet blocks)."""
    if not isinstance(module, nn.Sequential):
        return []
    sets, children = [], list(module.named_children())
    for (name_a, a), (name_b, b) in zip(children, children[1:]):
        if not (_is_conv_layer(a) and _is_conv_layer(b)):
            continue
        pa, pb = f"{name}.{name_a}" if name else name_a, f"{name}.{name_b}" if name else name_b
        members = (
            Member(f"{pa}.convolution", "out", 1),
            Member(f"{pa}.normalization", "norm", 1),
            Member(f"{pb}.convolution", "in", 1),
        )
        sets.append(CoupledSet("conv", f"{pb}.convolution", members, a.convolution.out_channels))
    return sets


def find_coupled_sets(model: nn.Module) -> list[CoupledSet]:
    """Every coupled set of ``model`` by module structure, in module order (see the module docstring).

    Args:
        model: any module (prepared or not).

    Returns:
        The sets whose owner is unique and whose member sizes agree.
    """
    sets = []
    for name, module in model.named_modules():
        found = (
            _qkvo_heads(model, name, module) or _bert_heads(model, name, module) or _gpt2_heads(model, name, module)
        )
        found = found or _ffn(model, name, module)
        sets.extend([found] if found else _conv_chains(model, name, module))
    owners = [s.owner for s in sets]
    return [s for s in sets if owners.count(s.owner) == 1 and _sizes_agree(model, s)]


def _sizes_agree(model: nn.Module, cset: CoupledSet) -> bool:
    return all(
        member_size(model.get_submodule(m.name), m.axis) == m.chunks * cset.units * m.width for m in cset.members
    )


def no_coupling_message(model: nn.Module) -> str:
    return (
        f"pattern='coupled' found no coupled units in {type(model).__name__}: smart_hf recognises FFNs "
        "(fc1/fc2, intermediate.dense/output.dense, gate/up/down_proj, GPT-2 c_fc/c_proj), attention "
        "(q/k/v_proj + o_proj with head_dim, BERT self.query/key/value + output.dense, GPT-2 c_attn/c_proj) and "
        "ResNet conv -> BatchNorm -> conv chains. Use pattern='channel' (per-layer output channels) or 'block' "
        "for this model, or exclude_modules that hide the structure."
    )


def coupled_unit_cost(model: nn.Module, cset: CoupledSet, tokens: int = 0) -> int:
    """Weights one unit removes over all members (Linear/Conv1D: its MACs per token), plus ``2 * tokens * d`` per
    query head with ``tokens > 0`` (the ``Q K^T`` and ``A V`` MACs per token). BatchNorm entries are not counted.

    Args:
        model: the model holding the set.
        cset: the coupled set.
        tokens: sequence length whose attention matmuls a head adds (0: weights only).

    Returns:
        The cost of one unit (an int). A speed target replaces it by measured time (`smart_hf.latency`).
    """
    cost = 0
    for member in cset.members:
        module = model.get_submodule(member.name)
        if isinstance(module, nn.BatchNorm2d):
            continue
        per_entry = module.weight.numel() // member_size(module, member.axis)
        cost += per_entry * member.width * member.chunks
    if cset.kind == "heads" and tokens > 0:
        cost += 2 * tokens * cset.head_dim * cset.heads_per_unit
    return int(cost)


def member_indices(member: Member, units: int, keep: torch.Tensor) -> torch.Tensor:
    """Indices along ``member.axis`` of the kept units (``keep``: bool ``(units,)``), in order."""
    grid = torch.arange(member.chunks * units * member.width).reshape(member.chunks, units, member.width)
    return grid[:, keep.cpu()].reshape(-1)


def entries_mask(member: Member, unit_mask: torch.Tensor) -> torch.Tensor:
    """``(chunks * units * width,)`` mask along ``member.axis`` from a unit mask ``(units,)``."""
    flat = unit_mask.reshape(1, -1, 1)
    return flat.expand(member.chunks, -1, member.width).reshape(-1)
