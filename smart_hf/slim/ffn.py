"""FFN slimming: remove pruned intermediate channels of ``fc2(act(fc1(x)))``.

A transformer FFN is ``fc2(act(fc1(x)))`` (ViT/DeiT ``mlp.fc1``/``mlp.fc2``; BERT ``intermediate.dense`` /
``output.dense``). Removing channel ``j`` -- row ``j`` of fc1 and column ``j`` of fc2 -- is exact when the row or the
column is all zero, provided fc2's bias absorbs the constant the channel still contributed:
``fc2.bias += fc2.weight[:, j] * act(fc1.bias[j])`` (a channel-pruned fc1 keeps its bias, so the channel outputs the
constant ``act(b_j)``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..metadata import set_layer_shape
from .surgery import replace_module, select_linear

__all__ = ["apply_ffn", "find_ffn_pairs", "plan_ffn", "resize_ffn_for_load"]

_ACT_NAMES = ("activation_fn", "act_fn", "act", "activation", "intermediate_act_fn")
RESIDUAL_REASON = "FFN output projection: its outputs feed the residual stream"


def find_ffn_pairs(model: nn.Module) -> list[dict]:
    """FFN pairs by module structure: ``{"name", "fc1", "fc2", "act"}`` (fc1/fc2 are module names).

    Recognised: a module with ``fc1``/``fc2`` linears and an activation attribute (ViT, DeiT, CLIP, ...), and a module
    with ``intermediate.dense`` (+ ``intermediate_act_fn``) and ``output.dense`` linears (BERT, RoBERTa, ...).

    Args:
        model: any model; its modules are inspected, not changed.

    Returns:
        One dict per FFN found, in module order (empty when none is recognised).
    """
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        act = next((getattr(module, a) for a in _ACT_NAMES if callable(getattr(module, a, None))), None)
        if type(fc1) is nn.Linear and type(fc2) is nn.Linear and act is not None:
            if fc1.out_features == fc2.in_features:
                pairs.append({"name": name, "fc1": f"{prefix}fc1", "fc2": f"{prefix}fc2", "act": act})
            continue
        inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
        dense1, dense2 = getattr(inter, "dense", None), getattr(out, "dense", None)
        act = getattr(inter, "intermediate_act_fn", None)
        if type(dense1) is nn.Linear and type(dense2) is nn.Linear and callable(act):
            if dense1.out_features == dense2.in_features:
                pairs.append(
                    {"name": name, "fc1": f"{prefix}intermediate.dense", "fc2": f"{prefix}output.dense", "act": act}
                )
    return pairs


def plan_ffn(model: nn.Module, layers: dict) -> tuple[list[dict], dict[str, str]]:
    """FFNs whose fc1 is channel-pruned: ``[{**pair, "alive": bool (intermediate,), "before"}]``, plus
    ``{layer name: reason}`` for the FFN layers whose pruned channels stay in place."""
    plans, notes = [], {}
    for pair in find_ffn_pairs(model):
        info1, info2 = layers.get(pair["fc1"]), layers.get(pair["fc2"])
        notes[pair["fc2"]] = RESIDUAL_REASON
        if info1 is None or info1["pattern"] != "channel":
            continue
        if info2 is not None and info2["pattern"] != "channel":
            notes[pair["fc1"]] = f"its consumer {pair['fc2']} has a {info2['pattern']} mask"
            continue
        fc1, fc2 = model.get_submodule(pair["fc1"]), model.get_submodule(pair["fc2"])
        if fc2.bias is None and fc1.bias is not None:
            notes[pair["fc1"]] = f"{pair['fc2']} has no bias to absorb the pruned channels"
            continue
        alive = (fc1.weight != 0).any(dim=1) & (fc2.weight != 0).any(dim=0)
        plans.append({**pair, "alive": alive, "before": fc1.out_features})
    return plans, notes


def uniform_ffn_size(plans: list[dict], config) -> int:
    """The one intermediate size every FFN keeps in uniform mode (the largest kept count); raises when
    ``config.intermediate_size`` does not describe every FFN (a rewrite could not reproduce the shapes)."""
    size = getattr(config, "intermediate_size", None)
    if not isinstance(size, int) or any(p["before"] != size for p in plans):
        raise ValueError(
            "uniform slimming rewrites config.intermediate_size, which this model does not use for every FFN; "
            "use slim(model, mode='per_layer') and smart_hf.load_slim to load."
        )
    return max(int(p["alive"].sum()) for p in plans)


@torch.no_grad()
def apply_ffn(model: nn.Module, plan: dict, layers: dict, target: int | None) -> dict:
    """Remove the dead channels of one FFN in place (``target``: pad with dead channels up to that many kept,
    which stays exact); returns the record ``{"fc1", "fc2", "before", "after"}``."""
    fc1, fc2 = model.get_submodule(plan["fc1"]), model.get_submodule(plan["fc2"])
    keep = plan["alive"].clone()
    if target is not None:  # pad with pruned channels (kept as they are: still exact)
        extra = target - int(keep.sum())
        keep[(~keep).nonzero().flatten()[:extra]] = True
    if not keep.any():  # a fully pruned FFN still needs one channel to stay a valid Linear
        keep[0] = True
    idx, gone = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    new1, new2 = select_linear(fc1, out_idx=idx), select_linear(fc2, in_idx=idx)
    if fc2.bias is not None and fc1.bias is not None and len(gone):
        constant = plan["act"](fc1.bias[gone].float().unsqueeze(0)).squeeze(0)
        new2.bias.add_((fc2.weight[:, gone].float() @ constant).to(new2.bias.dtype))
    replace_module(model, plan["fc1"], new1)
    replace_module(model, plan["fc2"], new2)
    set_layer_shape(layers, plan["fc1"], new1.weight.shape)
    if plan["fc2"] in layers:
        set_layer_shape(layers, plan["fc2"], new2.weight.shape)
    return {"fc1": plan["fc1"], "fc2": plan["fc2"], "before": plan["before"], "after": len(idx)}


def resize_ffn_for_load(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the FFN sizes of a per-layer slim record (weights are loaded afterwards)."""
    keep = torch.arange(record["after"])
    fc1, fc2 = model.get_submodule(record["fc1"]), model.get_submodule(record["fc2"])
    replace_module(model, record["fc1"], select_linear(fc1, out_idx=keep))
    replace_module(model, record["fc2"], select_linear(fc2, in_idx=keep))
