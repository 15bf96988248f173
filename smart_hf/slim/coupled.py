"""Slimming of coupled units (``SmartConfig(pattern="coupled")``, `smart_hf.coupling`): every pruned unit leaves
every layer it spans -- producer rows (+ biases), BatchNorm entries and the consumer's input columns.

A unit is pruned when its block of consumer columns is all zero (hardening zeroes the partners too). Its
contribution to the consumer's output is then exactly zero whatever the producers compute, so removing it needs no
constant folding and is exact, zero-padded convolutions included.

Modes (as for `smart_hf.slim`): ``"per_layer"`` keeps every set's own kept count (sizes recorded in
``config.smart_hf["slim"]["coupled"]``, loaded by `load_slim`); ``"uniform"`` keeps one count per kind (``ffn``,
``heads``) -- the largest, padded with pruned units, which stays exact -- and rewrites the config
(``intermediate_size`` / ``n_inner``; ``num_attention_heads``, ``num_key_value_heads`` with ``head_dim`` pinned), so
stock ``from_pretrained`` loads it. A kind the rewritten config cannot describe (checked by building the model from
it on the meta device: BERT and GPT-2 derive the head size from the head count, ResNet has per-stage widths) stays
masked in place and is reported under ``left_masked``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core.granularity import canonical_weight
from ..coupling import CoupledSet, Member, member_indices
from .surgery import replace_module, select_batchnorm, select_conv, select_linear

__all__ = ["coupled_widths", "resize_coupled_for_load", "slim_coupled", "unit_alive"]

_HEAD_ATTRS = ("num_attention_heads", "num_heads")


def unit_alive(owner: nn.Module, cset: CoupledSet) -> torch.Tensor:
    """Bool ``(units,)``: the unit's columns in ``owner`` (the set's consumer) hold a non-zero weight."""
    kind = "conv1d" if isinstance(owner, Conv1D) else "linear" if isinstance(owner, nn.Linear) else "conv2d"
    w3 = canonical_weight(owner.weight.detach(), kind)  # (out, in, s)
    width = cset.member(cset.owner).width
    return (w3.reshape(w3.shape[0], cset.units, width, -1) != 0).any(dim=(0, 2, 3)).cpu()


@torch.no_grad()
def _select(module: nn.Module, member: Member, idx: torch.Tensor) -> nn.Module:
    """A smaller copy of ``module`` keeping entries ``idx`` along ``member.axis``."""
    if isinstance(module, nn.BatchNorm2d):
        return select_batchnorm(module, idx)
    if isinstance(module, Conv1D):  # stored (in, out): "out" selects columns, "in" selects rows
        weight = module.weight[:, idx] if member.axis == "out" else module.weight[idx]
        new = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight)
        new.bias.copy_(module.bias[idx] if member.axis == "out" else module.bias)
        return new
    pick = {"out_idx": idx} if member.axis == "out" else {"in_idx": idx}
    return select_conv(module, **pick) if isinstance(module, nn.Conv2d) else select_linear(module, **pick)


def _set_head_count(model: nn.Module, cset: CoupledSet, kept: int) -> None:
    """The attributes an attention module reads its head count from (the head size stays as it is)."""
    if cset.kind != "heads" or cset.attention is None:
        return
    attention = model.get_submodule(cset.attention)
    heads = kept * cset.heads_per_unit
    for attr, value in (
        *((a, heads) for a in _HEAD_ATTRS),
        ("num_key_value_heads", kept),
        ("all_head_size", heads * cset.head_dim),  # BERT
        ("split_size", kept * cset.head_dim),  # GPT-2's fused c_attn
    ):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, value)


def _apply(model: nn.Module, cset: CoupledSet, keep: torch.Tensor) -> dict:
    """Remove the units ``~keep`` from every member of ``cset`` in place; returns the load record."""
    for member in cset.members:
        idx = member_indices(member, cset.units, keep)
        replace_module(model, member.name, _select(model.get_submodule(member.name), member, idx))
    _set_head_count(model, cset, int(keep.sum()))
    return {"set": cset.to_dict(), "after": int(keep.sum())}


def resize_coupled_for_load(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the sizes of a per-layer coupled record (weights are loaded afterwards)."""
    cset = CoupledSet.from_dict(record["set"])
    _apply(model, cset, torch.arange(cset.units) < record["after"])


def _rewrite(config, kind: str, count: int, sets: list[CoupledSet]):
    """A copy of ``config`` describing ``count`` units per set of ``kind``."""
    config = copy.deepcopy(config)
    if kind == "ffn":
        for attr in ("intermediate_size", "n_inner"):
            if hasattr(config, attr):
                setattr(config, attr, count)
    else:
        config.num_attention_heads = count * sets[0].heads_per_unit
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = count
        config.head_dim = sets[0].head_dim
    return config


def _expressible(model: nn.Module, config, sets: list[CoupledSet], count: int) -> bool:
    """Whether ``type(model)`` built from ``config`` (on the meta device) has every member of ``sets`` at the size
    that keeping ``count`` units gives."""
    try:
        with torch.device("meta"):
            probe = type(model)._from_config(config)
    except Exception:  # any failure: this config cannot be rebuilt with the rewritten sizes
        return False
    for cset in sets:
        for member in cset.members:
            want = _select(
                model.get_submodule(member.name),
                member,
                member_indices(member, cset.units, torch.arange(cset.units) < count),
            )
            try:
                got = probe.get_submodule(member.name)
            except AttributeError:
                return False
            if tuple(got.weight.shape) != tuple(want.weight.shape):
                return False
    return True


def _uniform_counts(model, sets, alive) -> tuple[dict, dict]:
    """``({kind: count}, {kind: rewritten config})`` for the kinds a config rewrite can describe."""
    counts, configs = {}, {}
    for kind in ("ffn", "heads"):
        members = [i for i, s in enumerate(sets) if s.kind == kind]
        if not members or len({sets[i].units for i in members}) != 1:
            continue
        count = max(max(int(alive[i].sum()) for i in members), 1)
        config = _rewrite(model.config, kind, count, [sets[i] for i in members])
        if _expressible(model, config, [sets[i] for i in members], count):
            counts[kind], configs[kind] = count, config
    return counts, configs


def slim_coupled(model: nn.Module, records: list[dict], mode: str) -> tuple[list[dict], list[dict], dict]:
    """Remove the pruned coupled units in place; returns ``(load records, left_masked, config changes)``."""
    sets = [CoupledSet.from_dict(r["set"]) for r in records]
    alive = [unit_alive(model.get_submodule(s.owner), s) for s in sets]
    counts, configs, left = {}, {}, []
    if mode == "uniform":
        counts, configs = _uniform_counts(model, sets, alive)
        if not counts:
            raise ValueError(
                "uniform slimming rewrites config sizes, which cannot describe any of these coupled units; use "
                "slim(model, mode='per_layer') and load with smart_hf.load_slim."
            )
    done = []
    for cset, keep in zip(sets, alive):
        keep = keep.clone()
        if mode == "uniform":
            if cset.kind not in counts:
                if not keep.all():
                    left.append(
                        {
                            "name": cset.owner,
                            "reason": f"uniform slimming cannot rewrite the {cset.kind} "
                            "sizes into this config; use mode='per_layer'",
                        }
                    )
                continue
            keep[(~keep).nonzero().flatten()[: counts[cset.kind] - int(keep.sum())]] = True
        if not keep.any():  # a set must keep one unit to stay a valid module
            keep[0] = True
        done.append(_apply(model, cset, keep))
    changes = {}
    for config in configs.values():
        for attr in ("intermediate_size", "n_inner", "num_attention_heads", "num_key_value_heads", "head_dim"):
            if hasattr(config, attr) and getattr(config, attr) != getattr(model.config, attr, None):
                changes[attr] = getattr(config, attr)
    for attr, value in changes.items():
        setattr(model.config, attr, value)
    return done, left, changes


def coupled_widths(records: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{member name: {"out"|"in": (before, after)}}`` entries along each resized weight axis (BatchNorm skipped)."""
    widths: dict[str, dict[str, tuple[int, int]]] = {}
    for record in records:
        cset = CoupledSet.from_dict(record["set"])
        for m in cset.members:
            if m.axis != "norm":
                size = m.chunks * m.width
                widths.setdefault(m.name, {})[m.axis] = (size * cset.units, size * record["after"])
    return widths
