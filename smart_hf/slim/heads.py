"""Attention-head slimming: remove heads whose value rows (or output-projection columns) are pruned.

Head ``h`` owns rows ``h*d : (h+1)*d`` of q/k/v (``d`` = head size) and the same columns of the output projection o.
Its contribution to the block's output is ``W_o[:, h] @ (softmax(q_h k_h^T * scale + mask) @ v_h)``.

* Value rows all zero: ``v_h = 1 b_v[h]^T`` for every token, and every softmax row sums to 1 (eval mode has no
  attention dropout; a padding mask only moves weight between keys), so the head outputs ``b_v[h]`` whatever q/k do:
  its contribution is the constant ``W_o[:, h] @ b_v[h]``, folded into ``o.bias``. Exact.
* Output columns all zero: the head contributes nothing. Exact.
* q/k rows pruned but v and o alive: the head still mixes tokens; it is NOT removable and stays masked in place.

"Head-aligned" pruning makes whole heads the units: a ``(d, in_features)`` block on the value projection
(`head_pruning_overrides` builds the `SmartConfig` overrides). Channel pruning that happens to remove all of a head's
value rows is slimmed the same way.

Loading: ViT/DeiT attention reads ``config.head_dim`` when present (transformers >= 5), so ``num_attention_heads``
can be rewritten with ``head_dim`` pinned ("uniform" mode, stock ``from_pretrained``). BERT derives
``attention_head_size = hidden_size / num_attention_heads``: a rewrite would change the head size, so BERT heads are
slimmed only per layer (``load_slim`` rebuilds the projections and sets the head-count attributes).
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ..metadata import set_layer_shape
from .surgery import layout_error_after_removal, replace_module, select_linear

__all__ = ["apply_heads", "find_attention_blocks", "head_pruning_overrides", "plan_heads", "uniform_heads_error"]

_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads")


def _linears(module: nn.Module, names: tuple[str, ...]) -> bool:
    return all(type(getattr(module, n, None)) is nn.Linear for n in names)


def find_attention_blocks(model: nn.Module) -> list[dict]:
    """Self-attention blocks by structure: ``{"attention", "q", "k", "v", "o", "heads", "head_dim"}`` (module
    names; ``attention`` is the module holding the head-count attributes).

    Recognised: ``q_proj/k_proj/v_proj`` + ``o_proj`` (or ``out_proj``) with a ``head_dim`` attribute (ViT, DeiT,
    ...), and ``self.{query,key,value}`` with ``attention_head_size`` + ``output.dense`` (BERT, RoBERTa, ...).
    """
    blocks = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        out = "o_proj" if hasattr(module, "o_proj") else "out_proj"
        if _linears(module, ("q_proj", "k_proj", "v_proj", out)) and isinstance(getattr(module, "head_dim", 0), int):
            qkv = {k: f"{prefix}{k}_proj" for k in "qkv"}
            blocks.append({"attention": name, **qkv, "o": f"{prefix}{out}", "head_dim": module.head_dim})
            continue
        inner, output = getattr(module, "self", None), getattr(module, "output", None)
        if _linears(inner or nn.Module(), ("query", "key", "value")) and _linears(output or nn.Module(), ("dense",)):
            size = getattr(inner, "attention_head_size", None)
            if isinstance(size, int):
                qkv = {"q": f"{prefix}self.query", "k": f"{prefix}self.key", "v": f"{prefix}self.value"}
                blocks.append({"attention": f"{prefix}self", **qkv, "o": f"{prefix}output.dense", "head_dim": size})
    for block in blocks:
        block["heads"] = model.get_submodule(block["v"]).out_features // block["head_dim"]
    return blocks


def head_pruning_overrides(model: nn.Module, sparsity: float | None = None) -> list[dict]:
    """`SmartConfig` overrides that make every value projection's units whole heads: one
    ``{"regex", "pattern": "block", "block_shape": [head_dim, in_features]}`` per distinct shape (plus ``sparsity``
    when given). Use with any top-level pattern, e.g. channel-pruned FFNs and head-pruned attention::

        cfg = SmartConfig(pattern="channel", budget="layer", overrides=head_pruning_overrides(model, 0.5))

    With ``budget="layer"`` every layer loses the same number of heads (what uniform slimming needs).

    Args:
        model: the unprepared model (ViT / DeiT- or BERT-style attention).
        sparsity: the share of heads to remove, or ``None`` to use the top-level ``sparsity``.

    Returns:
        The overrides, one per distinct value-projection shape.

    Raises:
        ValueError: ``model`` has no attention block that head pruning recognises.
    """
    by_shape: dict[tuple[int, int], list[str]] = {}
    for block in find_attention_blocks(model):
        block_shape = (block["head_dim"], model.get_submodule(block["v"]).in_features)
        by_shape.setdefault(block_shape, []).append(re.escape(block["v"]))
    if not by_shape:
        raise ValueError(
            "no attention block found (q_proj/k_proj/v_proj/o_proj with head_dim, or BERT-style self.query/key/"
            "value); head pruning supports ViT/DeiT- and BERT-style attention."
        )
    extra = {} if sparsity is None else {"sparsity": sparsity}
    return [
        {"regex": "|".join(names), "pattern": "block", "block_shape": list(shape), **extra}
        for shape, names in by_shape.items()
    ]


def _dead_heads(weight: torch.Tensor, heads: int, head_dim: int, axis: str) -> torch.Tensor:
    """Heads whose rows (``axis="out"``) or columns (``axis="in"``) of ``weight`` are all zero -> bool (heads,)."""
    if axis == "out":
        return (weight.reshape(heads, head_dim, -1) == 0).all(dim=2).all(dim=1)
    return (weight.reshape(weight.shape[0], heads, head_dim) == 0).all(dim=2).all(dim=0)


def _block_notes(block: dict, layers: dict) -> str | None:
    """Why the heads of this block cannot be sliced without breaking a recorded layout (``None``: they can)."""
    for key, axis in (("q", "out"), ("k", "out"), ("v", "out"), ("o", "in")):
        error = layout_error_after_removal(layers.get(block[key]), axis, block["head_dim"])
        if error:
            return f"{block[key]}: {error}"
    return None


def plan_heads(model: nn.Module, layers: dict) -> tuple[list[dict], dict[str, str]]:
    """Attention blocks with removable heads: ``[{**block, "removable": bool (heads,)}]``, plus
    ``{layer name: reason}`` for attention layers that keep pruned units in place."""
    plans, notes = [], {}
    for block in find_attention_blocks(model):
        if block["v"] not in layers and block["o"] not in layers:
            continue
        heads, head_dim = block["heads"], block["head_dim"]
        v, o = model.get_submodule(block["v"]), model.get_submodule(block["o"])
        none = torch.zeros(heads, dtype=torch.bool)  # an unpruned projection has no dead heads
        dead_v = _dead_heads(v.weight, heads, head_dim, "out").cpu() if block["v"] in layers else none
        dead_o = _dead_heads(o.weight, heads, head_dim, "in").cpu() if block["o"] in layers else none
        if o.bias is None and v.bias is not None:  # no bias to hold the constant W_o[:, h] b_v[h]
            dead_v = dead_v & (v.bias.reshape(heads, head_dim) == 0).all(dim=1).cpu()
        removable = dead_v | dead_o
        error = _block_notes(block, layers) if removable.any() else None
        if error:
            notes[block["v"]] = f"heads not removed: {error}"
            continue
        if removable.any():
            plans.append({**block, "removable": removable})
        for key in ("q", "k", "v"):
            weight = model.get_submodule(block[key]).weight
            rows_left = (weight == 0).all(dim=1).reshape(heads, head_dim)[~removable.to(weight.device)]
            if block[key] in layers and rows_left.any():
                notes[block[key]] = (
                    "attention projection: only whole heads whose value rows are pruned are removable; "
                    f"{int(rows_left.sum())} pruned channel(s) of kept heads stay zero in place"
                )
    return plans, notes


def uniform_heads_error(model: nn.Module, plans: list[dict]) -> str | None:
    """Why a ``num_attention_heads`` rewrite (with ``head_dim`` pinned) cannot describe the slim heads, or ``None``.

    Checked by building one attention module from the rewritten config on the meta device: its value projection must
    have ``heads * head_dim`` outputs (BERT derives the head size from ``hidden_size / heads`` and fails this)."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    blocks = find_attention_blocks(model)
    if not isinstance(heads, int) or any(b["heads"] != heads for b in blocks):
        return "config.num_attention_heads does not describe every attention block"
    if len({b["head_dim"] for b in blocks}) != 1:
        return "the attention blocks have different head sizes"
    block = plans[0]
    probe_config = copy.deepcopy(config)
    probe_config.num_attention_heads, probe_config.head_dim = max(heads - 1, 1), block["head_dim"]
    relative_v = block["v"][len(block["attention"]) + 1 :] if block["attention"] else block["v"]
    try:
        with torch.device("meta"):
            probe = type(model.get_submodule(block["attention"]))(probe_config)
        width = probe.get_submodule(relative_v).out_features
    except Exception as err:  # any failure means the class cannot be rebuilt from a rewritten config
        return f"{type(model.get_submodule(block['attention'])).__name__} cannot be built with fewer heads ({err})"
    if width != probe_config.num_attention_heads * block["head_dim"]:
        return (
            f"{type(model.get_submodule(block['attention'])).__name__} derives its head size from "
            "hidden_size / num_attention_heads, so a head-count rewrite would change the head size"
        )
    return None


@torch.no_grad()
def apply_heads(model: nn.Module, plan: dict, layers: dict, target: int | None) -> dict:
    """Remove the removable heads of one block in place (``target``: keep that many heads, padding with removable
    ones, which stays exact); returns ``{"attention", "q", "k", "v", "o", "head_dim", "before", "after"}``."""
    heads, head_dim = plan["heads"], plan["head_dim"]
    keep = ~plan["removable"]
    if target is not None:
        keep[plan["removable"].nonzero().flatten()[: target - int(keep.sum())]] = True
    if not keep.any():  # the block must keep one head to stay a valid attention module
        keep[0] = True
    rows = torch.arange(heads * head_dim).reshape(heads, head_dim)
    idx, gone = rows[keep].flatten(), rows[~keep].flatten()
    v, o = model.get_submodule(plan["v"]), model.get_submodule(plan["o"])
    new_o = select_linear(o, in_idx=idx)
    if v.bias is not None and o.bias is not None and len(gone):  # dead-o heads add 0: their W_o columns are 0
        constant = o.weight[:, gone.to(o.weight.device)].double() @ v.bias[gone.to(v.bias.device)].double()
        new_o.bias.add_(constant.to(new_o.bias.dtype))
    for key in ("q", "k", "v"):
        new = select_linear(model.get_submodule(plan[key]), out_idx=idx)
        replace_module(model, plan[key], new)
        if plan[key] in layers:
            set_layer_shape(layers, plan[key], new.weight.shape)
    replace_module(model, plan["o"], new_o)
    if plan["o"] in layers:
        set_layer_shape(layers, plan["o"], new_o.weight.shape)
    set_head_count(model.get_submodule(plan["attention"]), int(keep.sum()), head_dim)
    keys = ("attention", "q", "k", "v", "o", "head_dim")
    return {**{k: plan[k] for k in keys}, "before": heads, "after": int(keep.sum())}


def set_head_count(attention: nn.Module, heads: int, head_dim: int) -> None:
    """Update the head-count attributes an attention module reads (``num_attention_heads``/``num_heads``, BERT's
    ``all_head_size``); the head size and the softmax scale stay as they are."""
    for attr in _HEAD_COUNT_ATTRS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, heads)
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = heads * head_dim


def resize_heads_for_load(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the head count of a per-layer slim record (weights are loaded afterwards)."""
    idx = torch.arange(record["after"] * record["head_dim"])
    for key in ("q", "k", "v"):
        replace_module(model, record[key], select_linear(model.get_submodule(record[key]), out_idx=idx))
    replace_module(model, record["o"], select_linear(model.get_submodule(record["o"]), in_idx=idx))
    set_head_count(model.get_submodule(record["attention"]), record["after"], record["head_dim"])
