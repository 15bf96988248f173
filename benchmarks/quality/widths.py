"""Widths of coupled units: what a pruned model kept (heads and FFN neurons per coupled owner, as
`smart_hf.latency`'s model names them) and a timing stand-in rebuilt from recorded widths.

Owners are the layers coupled units end in (attention output projection, FFN down projection); a unit is
``width`` input columns of its owner (the head size for heads, 1 for a neuron), so a physically pruned model's kept
units are its owners' input columns over the unit width.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from smart_hf.slim import find_ffn_pairs

# the q / k / v projections of an attention module of the benchmarked families (BERT; ViT / DeiT)
QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def unit_widths(model: nn.Module, latency: dict) -> dict[str, int]:
    """Input columns per unit of every coupled owner of the dense ``model``.

    Args:
        model: the dense model.
        latency: its latency model (``owners``: owner -> block signature; ``blocks``: signature -> ``units``).

    Returns:
        owner -> columns per unit (the head size for heads, 1 for FFN neurons).
    """
    modules = dict(model.named_modules())
    return {o: modules[o].in_features // latency["blocks"][sig]["units"] for o, sig in latency["owners"].items()}


def kept_widths(model: nn.Module, widths: dict[str, int]) -> dict[str, int]:
    """Kept units per owner of a physically pruned model: its owners' input columns over the unit width.

    Args:
        model: the pruned (slimmed) model.
        widths: owner -> columns per unit (`unit_widths` of the dense model).

    Returns:
        owner -> kept units.
    """
    modules = dict(model.named_modules())
    return {o: modules[o].in_features // w for o, w in widths.items()}


def _sliced(layer: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    """The first ``rows`` outputs / ``cols`` inputs of ``layer`` (a timing stand-in: which units is irrelevant)."""
    rows, cols = rows or layer.out_features, cols or layer.in_features
    new = nn.Linear(cols, rows, bias=layer.bias is not None).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:rows, :cols])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[:rows])
    return new


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def rebuild(dense: nn.Module, latency: dict, widths: dict[str, int], kept: dict[str, int]) -> nn.Module:
    """A copy of ``dense`` with ``kept`` units per owner: FFN neurons sliced from the pair's fc1 / fc2
    (`smart_hf.slim.find_ffn_pairs`), heads from the q/k/v projections of the layer's attention (the module with
    them under the owner's layer) and its head-count attributes. The weights are the first units', so the copy is
    for timing only.

    Args:
        dense: the dense model (not changed).
        latency: its latency model (the kind of each owner's block).
        widths: owner -> columns per unit (`unit_widths`).
        kept: owner -> units to keep.

    Returns:
        The smaller copy.
    """
    model = copy.deepcopy(dense)
    producer = {pair["fc2"]: pair["fc1"] for pair in find_ffn_pairs(model)}
    attentions = [name for name, module in model.named_modules() if _qkv(module)]
    for owner, count in kept.items():
        _set(model, owner, _sliced(model.get_submodule(owner), cols=count * widths[owner]))
        if latency["blocks"][latency["owners"][owner]]["kind"] != "heads":
            _set(model, producer[owner], _sliced(model.get_submodule(producer[owner]), rows=count))
            continue
        layer = owner.rsplit(".", 2)[0] + "."  # BERT: ...attention.{self, output.dense}; ViT: ...N.attention.o_proj
        attention = next(name for name in attentions if name.startswith(layer))
        module = model.get_submodule(attention)
        for proj in _qkv(module):
            _set(model, f"{attention}.{proj}", _sliced(getattr(module, proj), rows=count * widths[owner]))
        module.num_attention_heads = count
        if hasattr(module, "all_head_size"):
            module.all_head_size = count * widths[owner]
    return model


def _qkv(module: nn.Module) -> tuple[str, ...]:
    """The names of ``module``'s q/k/v projections (`QKV`), or ``()``."""
    return next((n for n in QKV if all(isinstance(getattr(module, p, None), nn.Linear) for p in n)), ())


def per_layer(latency: dict, kept: dict[str, int]) -> dict:
    """Kept heads and FFN neurons per layer, in the model's layer order.

    Args:
        latency: the latency model (its ``owners`` in layer order).
        kept: owner -> kept units.

    Returns:
        ``{"heads": [per layer], "ffn": [per layer]}``.
    """
    out = {"heads": [], "ffn": []}
    for owner, sig in latency["owners"].items():
        out["heads" if latency["blocks"][sig]["kind"] == "heads" else "ffn"].append(kept[owner])
    return out
