"""`slim`: physically remove pruned FFN channels, so an output-channel-pruned model is smaller and faster.

A transformer FFN is ``fc2(act(fc1(x)))`` (ViT/DeiT ``mlp.fc1``/``mlp.fc2``; BERT ``intermediate.dense`` /
``output.dense``). Removing channel ``j`` -- row ``j`` of fc1 and column ``j`` of fc2 -- is exact when the row or the
column is all zero, provided fc2's bias absorbs the constant the channel still contributed:
``fc2.bias += fc2.weight[:, j] * act(fc1.bias[j])`` (a channel-pruned fc1 keeps its bias, so the channel outputs the
constant ``act(b_j)``). The slim model's outputs therefore equal the masked model's.

Two modes:

* ``"uniform"`` (default): every FFN keeps the same number of channels (the largest kept count; layers that kept fewer
  keep some pruned channels, which stays exact) and ``config.intermediate_size`` is rewritten, so stock
  ``from_pretrained`` loads the slim model.
* ``"per_layer"``: every FFN keeps exactly its own channels. The sizes are recorded in ``config.smart_hf["slim"]``;
  load with `load_slim` (stock ``from_pretrained`` refuses the shapes).

Only FFN pairs are slimmed. Channel masks on attention projections (q/k/v need head alignment), on fc2 / output
projections (their outputs feed the residual stream) and on heads stay as zeros in place; `slim` returns them under
``"left_masked"``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["find_ffn_pairs", "load_slim", "save_slim_weights", "slim"]

MODES = ("uniform", "per_layer")
_ACT_NAMES = ("activation_fn", "act_fn", "act", "activation", "intermediate_act_fn")


def find_ffn_pairs(model: nn.Module) -> list[dict]:
    """FFN pairs by module structure: ``{"name", "fc1", "fc2", "act"}`` (fc1/fc2 are module names).

    Recognised: a module with ``fc1``/``fc2`` linears and an activation attribute (ViT, DeiT, CLIP, ...), and a module
    with ``intermediate.dense`` (+ ``intermediate_act_fn``) and ``output.dense`` linears (BERT, RoBERTa, ...).
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


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _linear(in_features: int, out_features: int, bias: bool, like: torch.Tensor) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=like.device, dtype=like.dtype)


@torch.no_grad()
def slim(model: nn.Module, mode: str = "uniform") -> dict:
    """Remove the pruned channels of every FFN in place (a prepared model is squashed first); returns a summary:
    ``{"mode", "pairs": [{"fc1", "fc2", "before", "after"}], "left_masked": [{"name", "reason"}],
    "params_before", "params_after"}``. The summary (without ``left_masked``) is also recorded in
    ``model.config.smart_hf["slim"]``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if hasattr(model, "smart_state"):
        from .lifecycle import squash

        squash(model)
    config = getattr(model, "config", None)
    meta = getattr(config, "smart_hf", None)
    if not meta:
        raise ValueError(
            "slim needs a SMART model: prepared + hardened, or squashed/loaded with config.smart_hf. "
            "Prune with pattern='channel' first."
        )
    if meta.get("slim"):
        raise ValueError("this model is already slim; slim the squashed (unslimmed) model instead.")
    layers = meta["layers"]
    params_before = sum(p.numel() for p in model.parameters())
    plans, left = [], []
    pair_of = {}
    for pair in find_ffn_pairs(model):
        info1, info2 = layers.get(pair["fc1"]), layers.get(pair["fc2"])
        pair_of[pair["fc1"]] = pair_of[pair["fc2"]] = pair
        if info1 is None or info1["pattern"] != "channel":
            continue
        if info2 is not None and info2["pattern"] != "channel":
            left.append({"name": pair["fc1"], "reason": f"its consumer {pair['fc2']} has a {info2['pattern']} mask"})
            continue
        fc1, fc2 = model.get_submodule(pair["fc1"]), model.get_submodule(pair["fc2"])
        if fc2.bias is None and fc1.bias is not None:
            left.append({"name": pair["fc1"], "reason": f"{pair['fc2']} has no bias to absorb the pruned channels"})
            continue
        alive = (fc1.weight != 0).any(dim=1) & (fc2.weight != 0).any(dim=0)
        plans.append({**pair, "alive": alive, "before": fc1.out_features})
    for name, info in layers.items():
        if info["pattern"] != "channel" or any(p["fc1"] == name for p in plans):
            continue
        if any(e["name"] == name for e in left):
            continue
        why = (
            "FFN output projection: its outputs feed the residual stream"
            if name in pair_of
            else "not an FFN input projection (attention projections need head alignment)"
        )
        left.append({"name": name, "reason": why})
    if not plans:
        raise ValueError(
            "nothing to slim: no FFN (fc1/fc2 or intermediate/output) input projection is channel-pruned. Prune "
            "with SmartConfig(pattern='channel') so that the FFN's first linear is targeted."
        )
    if mode == "uniform":
        size = getattr(config, "intermediate_size", None)
        if not isinstance(size, int) or any(p["before"] != size for p in plans):
            raise ValueError(
                "uniform slimming rewrites config.intermediate_size, which this model does not use for every FFN; "
                "use slim(model, mode='per_layer') and smart_hf.load_slim to load."
            )
        target = max(int(p["alive"].sum()) for p in plans)
    records = []
    for plan in plans:
        fc1, fc2 = model.get_submodule(plan["fc1"]), model.get_submodule(plan["fc2"])
        keep = plan["alive"].clone()
        if mode == "uniform":  # pad with pruned channels (kept as they are: still exact)
            extra = target - int(keep.sum())
            keep[(~keep).nonzero().flatten()[:extra]] = True
        if not keep.any():  # a fully pruned FFN still needs one channel to stay a valid Linear
            keep[0] = True
        idx, gone = keep.nonzero().flatten(), (~keep).nonzero().flatten()
        new1 = _linear(fc1.in_features, len(idx), fc1.bias is not None, fc1.weight)
        new2 = _linear(len(idx), fc2.out_features, fc2.bias is not None, fc2.weight)
        new1.weight.copy_(fc1.weight[idx])
        new2.weight.copy_(fc2.weight[:, idx])
        if fc1.bias is not None:
            new1.bias.copy_(fc1.bias[idx])
        if fc2.bias is not None:
            new2.bias.copy_(fc2.bias)
            if fc1.bias is not None and len(gone):
                constant = plan["act"](fc1.bias[gone].float().unsqueeze(0)).squeeze(0)
                new2.bias.add_((fc2.weight[:, gone].float() @ constant).to(new2.bias.dtype))
        _set_module(model, plan["fc1"], new1)
        _set_module(model, plan["fc2"], new2)
        layers[plan["fc1"]]["shape"] = list(new1.weight.shape)
        if plan["fc2"] in layers:
            layers[plan["fc2"]]["shape"] = list(new2.weight.shape)
        records.append({"fc1": plan["fc1"], "fc2": plan["fc2"], "before": plan["before"], "after": len(idx)})
    if mode == "uniform":
        config.intermediate_size = target
    params_after = sum(p.numel() for p in model.parameters())
    summary = {
        "mode": mode,
        "pairs": records,
        "params_before": params_before,
        "params_after": params_after,
        "params_removed": params_before - params_after,
    }
    meta["slim"] = summary
    config.smart_hf = meta
    for entry in left:
        logger.info("smart_hf: slim left %s masked in place (%s)", entry["name"], entry["reason"])
    return {**summary, "left_masked": left}


def save_slim_weights(model: nn.Module, output_dir: str | os.PathLike) -> None:
    """Write a per-layer slim model: ``config.json`` and ``model.safetensors`` under the model's own keys."""
    import safetensors.torch
    from transformers.utils import SAFE_WEIGHTS_NAME

    os.makedirs(output_dir, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach()
        tensors[key] = value.clone().contiguous() if value.data_ptr() in seen else value.contiguous()
        seen.add(value.data_ptr())
    safetensors.torch.save_file(tensors, os.path.join(output_dir, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(output_dir)


def _auto_class(config, auto_class):
    if auto_class is not None:
        return auto_class
    import transformers

    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ValueError("config.json names no known architecture; pass auto_class=AutoModelFor... to load_slim.")
    return cls


def load_slim(path: str | os.PathLike, auto_class=None, **kwargs) -> nn.Module:
    """Load a slim model written by ``save_pruned`` / ``smart-hf export --slim``.

    Uniform slim models (and unslimmed ones) go through stock ``from_pretrained(path, **kwargs)``; per-layer slim
    models are built from the config, their FFNs resized to the recorded sizes, and the weights loaded strictly.
    ``auto_class`` defaults to the class named in ``config.architectures``.
    """
    import safetensors.torch
    from transformers import AutoConfig
    from transformers.utils import SAFE_WEIGHTS_NAME

    config = AutoConfig.from_pretrained(path)
    cls = _auto_class(config, auto_class)
    slim_meta = (getattr(config, "smart_hf", None) or {}).get("slim")
    if not slim_meta or slim_meta.get("mode") != "per_layer":
        return cls.from_pretrained(path, **kwargs)
    model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    for record in slim_meta["pairs"]:
        fc1, fc2 = model.get_submodule(record["fc1"]), model.get_submodule(record["fc2"])
        _set_module(model, record["fc1"], _linear(fc1.in_features, record["after"], fc1.bias is not None, fc1.weight))
        _set_module(model, record["fc2"], _linear(record["after"], fc2.out_features, fc2.bias is not None, fc2.weight))
    state = safetensors.torch.load_file(os.path.join(path, SAFE_WEIGHTS_NAME))
    model.load_state_dict(state, strict=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
