"""Per-layer slim models that load anywhere: stock ``AutoModelFor....from_pretrained(folder, trust_remote_code=True)``
on a machine without smart_hf.

`make_portable` runs at the end of ``slim(model, mode="per_layer")``. It compares every linear layer and head-count
attribute of the slim model with the stock model built from its config (on the meta device) and records what
differs in the config (``smart_slim_shapes``, ``smart_slim_attributes``); the widths per layer also go into
transformers' per-layer configuration (``per_layer_config``: ``intermediate_size``, and head counts where the
config pins the head size). The config becomes an instance of the matching ``SmartSlim<Family>Config`` from
``smart_hf/slim/remote/modeling_smart_slim.py`` -- a static file shipped as package data, the same stock classes
under their own ``model_type`` -- with ``auto_map`` entries pointing at it, so ``config.save_pretrained`` copies that
file into the artifact (transformers' own mechanism for custom code) and stock loading without
``trust_remote_code`` refuses with transformers' usual message instead of building the wrong shapes.

Families: BERT, RoBERTa, ViT, DeiT, GPT-2 and Llama-style models (``FAMILIES`` of the modeling file). Others (CNN
chains, Swin, ...) keep loading with `smart_hf.load_slim` only.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import nn
from transformers.models.auto import modeling_auto
from transformers.pytorch_utils import Conv1D

from .remote import modeling_smart_slim

__all__ = ["MODELING_FILE", "SMART_SLIM_PREFIX", "make_portable", "portable_classes", "slim_layer_widths"]

logger = logging.getLogger(__name__)

MODELING_FILE = "modeling_smart_slim.py"
_MODULE = MODELING_FILE[: -len(".py")]
SMART_SLIM_PREFIX = modeling_smart_slim.MODEL_TYPE_PREFIX  # the model_type prefix of the shipped config classes
_READS_HEAD_DIM = frozenset({"vit", "deit"})  # attention that takes its head size from config.head_dim when set
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _stock_class(model: nn.Module) -> type:
    """The transformers class a model is (or was, before this module swapped its config)."""
    return next(c for c in type(model).__mro__ if c.__module__.startswith("transformers."))


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(out_features, in_features)`` of a linear layer (transformers' Conv1D stores its weight ``(in, out)``)."""
    if isinstance(module, Conv1D):
        return int(module.nf), int(module.weight.shape[0])
    if isinstance(module, nn.Linear):
        return int(module.out_features), int(module.in_features)
    return None


def _differences(model: nn.Module, probe: nn.Module) -> tuple[dict, dict, str | None]:
    """``(shapes, attributes, problem)``: the linear shapes and head counts where ``model`` differs from ``probe``
    (the stock model built from the config), or why a stock class resized this way cannot describe it."""
    heads = modeling_smart_slim.HEAD_ATTRIBUTES
    probe_modules = dict(probe.named_modules())
    shapes, attributes = {}, {}
    for name, module in model.named_modules():
        stock = probe_modules.get(name)
        if stock is None:
            return {}, {}, f"{name} is not in the stock model"
        shape = _linear_shape(module)
        if shape is not None and shape != _linear_shape(stock):
            shapes[name] = list(shape)
        elif shape is None:
            for pname, param in module.named_parameters(recurse=False):
                if tuple(param.shape) != tuple(getattr(stock, pname).shape):
                    return {}, {}, f"{name} ({type(module).__name__}) was resized; only linear layers can be"
        changed = {
            a: getattr(module, a)
            for a in sorted(heads)
            if isinstance(getattr(module, a, None), int) and getattr(module, a) != getattr(stock, a, None)
        }
        if changed:
            attributes[name] = changed
    return shapes, attributes, None


def slim_layer_widths(slim_meta: dict) -> dict[int, dict[str, tuple[int, int]]]:
    """The widths every transformer layer kept, from the summary `slim` records in ``config.smart_hf["slim"]``.

    Args:
        slim_meta: the slim summary (``pairs``, ``heads``, ``coupled`` records).

    Returns:
        ``{layer index: {"ffn" | "heads" | "kv_heads": (before, after)}}`` in layer order; the layer index is the
        first ``.N.`` in the module names (``bert.encoder.layer.N``, ``model.layers.N``, ``transformer.h.N``).
        Records outside a numbered layer (conv chains) are not listed.
    """
    widths: dict[int, dict[str, tuple[int, int]]] = {}

    def put(name: str, key: str, before: int, after: int) -> None:
        match = _LAYER_INDEX.search(f".{name}.")
        if match:
            widths.setdefault(int(match.group(1)), {})[key] = (int(before), int(after))

    for pair in slim_meta.get("pairs", []):
        put(pair["fc1"], "ffn", pair["before"], pair["after"])
    for block in slim_meta.get("heads", []):
        put(block["v"], "heads", block["before"], block["after"])
    for record in slim_meta.get("coupled", []):
        cset, after = record["set"], record["after"]
        if cset["kind"] == "ffn":
            put(cset["owner"], "ffn", cset["units"], after)
        elif cset["kind"] == "heads":
            per_unit = cset.get("heads_per_unit", 1)
            put(cset["owner"], "heads", cset["units"] * per_unit, after * per_unit)
            if per_unit > 1:
                put(cset["owner"], "kv_heads", cset["units"], after)
    return dict(sorted(widths.items()))


def _per_layer_overrides(config, widths: dict, with_heads: bool) -> dict[int, dict[str, int]]:
    """``per_layer_config`` entries: the FFN width (``intermediate_size``, GPT-2's ``n_inner``) and, when the
    config pins the head size, the head counts."""
    ffn_key = "n_inner" if hasattr(config, "n_inner") else "intermediate_size"
    overrides: dict[int, dict[str, int]] = {}
    for layer, kept in widths.items():
        entry = {}
        if "ffn" in kept:
            entry[ffn_key] = kept["ffn"][1]
        if with_heads and "heads" in kept:
            entry["num_attention_heads"] = kept["heads"][1]
            if "kv_heads" in kept:
                entry["num_key_value_heads"] = kept["kv_heads"][1]
        if entry:
            overrides[layer] = entry
    return overrides


def _apply_per_layer_config(config, overrides: dict) -> None:
    """Write ``per_layer_config`` (transformers' per-layer configuration, where the installed version has it); an
    override set the config class rejects (e.g. a head count its validation refuses) drops the head counts."""
    if not overrides or not hasattr(type(config), "per_layer_config"):
        return
    config.allow_global_per_layer_attribute_access = True  # the stock constructors read the global widths
    for candidate in (overrides, {k: {a: v for a, v in e.items() if "heads" not in a} for k, e in overrides.items()}):
        candidate = {k: e for k, e in candidate.items() if e}
        try:
            trial = copy.deepcopy(config)
            trial.per_layer_config = candidate
            type(config).from_dict(trial.to_dict())
        except (ValueError, TypeError) as err:
            logger.info("smart_hf: per_layer_config not written with %s (%s)", sorted(candidate), err)
            continue
        config.per_layer_config = candidate
        return


def portable_classes(config, architecture: str | None = None) -> tuple[type, dict[str, str]] | None:
    """The shipped config class and the ``auto_map`` of a stock config, or ``None`` for a family the modeling file
    does not cover.

    Args:
        config: the transformers config of the slim model (``model_type`` and ``architectures`` are read).
        architecture: the model's class name (default: ``config.architectures``).

    Returns:
        ``(config class, {"AutoConfig" | "AutoModel" | "AutoModelFor...": "modeling_smart_slim.<class>"})``.
    """
    family = config.model_type.removeprefix(modeling_smart_slim.MODEL_TYPE_PREFIX)
    if family not in modeling_smart_slim.FAMILIES:
        return None
    config_class = getattr(modeling_smart_slim, f"SmartSlim{modeling_smart_slim.FAMILIES[family][0]}")
    auto_map = {"AutoConfig": f"{_MODULE}.{config_class.__name__}"}
    stem = modeling_smart_slim.FAMILIES[family][0][: -len("Config")]
    archs = [architecture] if architecture else list(getattr(config, "architectures", None) or [])
    for arch in [f"{stem}Model", *archs]:
        arch = arch.removeprefix("SmartSlim")
        if not hasattr(modeling_smart_slim, f"SmartSlim{arch}"):
            continue
        mapped = [
            name
            for name in dir(modeling_auto)
            if name.startswith("AutoModel")
            and getattr(getattr(getattr(modeling_auto, name), "_model_mapping", None), "_model_mapping", {}).get(family)
            == arch
        ]
        by_suffix = f"AutoModel{arch.removeprefix(stem)}"  # DeiT maps the teacher variant; its own class by name
        if not mapped and arch != f"{stem}Model" and hasattr(modeling_auto, by_suffix):
            mapped = [by_suffix]
        auto_map.update({name: f"{_MODULE}.SmartSlim{arch}" for name in mapped})
    return config_class, auto_map


@torch.no_grad()
def make_portable(model: nn.Module, slim_meta: dict) -> str | None:
    """Make a per-layer slim ``model``'s config describe its widths and point at the shipped modeling file (see the
    module docstring); ``None`` when done, else why the model keeps loading with `smart_hf.load_slim` only.

    Args:
        model: a model that `slim` just resized per layer (its config is edited in place).
        slim_meta: the slim summary recorded in ``config.smart_hf["slim"]``.

    Returns:
        ``None``, or the reason the artifact stays loadable with `smart_hf.load_slim` only.
    """
    config = getattr(model, "config", None)
    classes = portable_classes(config, type(model).__name__) if config is not None else None
    if classes is None or not hasattr(modeling_smart_slim, "SmartSlim" + type(model).__name__.removeprefix("SmartSlim")):
        return f"{type(model).__name__} is not a family the shipped modeling file covers"
    with torch.device("meta"):
        probe = _stock_class(model)._from_config(copy.deepcopy(config))
    shapes, attributes, problem = _differences(model, probe)
    if problem:
        return problem
    config_class, auto_map = classes
    config.__class__ = config_class  # the same stock config under its own model_type; no attribute changes
    config_class.register_for_auto_class()  # config.save_pretrained copies the modeling file (transformers' hook)
    setattr(config, modeling_smart_slim.SHAPES_KEY, shapes)
    setattr(config, modeling_smart_slim.ATTRIBUTES_KEY, attributes)
    config.auto_map = auto_map
    overrides = _per_layer_overrides(config, slim_layer_widths(slim_meta), _pin_head_dim(config, slim_meta))
    _apply_per_layer_config(config, overrides)
    return None


def _pin_head_dim(config, slim_meta: dict) -> bool:
    """Whether ``config.head_dim`` states the head size of every slimmed attention block, so that a per-layer head
    count describes the layer. ViT and DeiT read ``config.head_dim`` when present: it is pinned to the size they
    derive. BERT, RoBERTa and GPT-2 derive the size from ``hidden_size / heads`` whatever the config says."""
    sizes = {r["head_dim"] for r in slim_meta.get("heads", [])}
    sizes |= {r["set"]["head_dim"] for r in slim_meta.get("coupled", []) if r["set"].get("head_dim")}
    if len(sizes) != 1:
        return False
    family = config.model_type.removeprefix(SMART_SLIM_PREFIX)
    if family in _READS_HEAD_DIM and getattr(config, "head_dim", None) is None:
        config.head_dim = next(iter(sizes))
    return getattr(config, "head_dim", None) == next(iter(sizes))
