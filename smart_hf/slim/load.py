"""`load_slim`: the loader of any pruned artifact, slim or not; `load_config`: its config.

Uniform slim models (and unslimmed ones) load with stock ``from_pretrained``. A per-layer slim model that ships
``modeling_smart_slim.py`` (`smart_hf.slim.portable`) is loaded with smart_hf's own copy of that file. Older per-layer
artifacts (and families the file does not cover, e.g. ResNet conv chains) are built from the config, resized to the
sizes `slim` recorded in ``config.smart_hf["slim"]``, and the weights are loaded strictly.
"""

from __future__ import annotations

import os
import re

import safetensors.torch
import transformers
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.utils import SAFE_WEIGHTS_NAME

from ..metadata import read as read_metadata
from ..metadata import slim_summary
from .cnn import resize_chain_for_load
from .coupled import resize_coupled_for_load
from .ffn import resize_ffn_for_load
from .heads import resize_heads_for_load
from .portable import SMART_SLIM_PREFIX, portable_classes
from .remote import modeling_smart_slim

__all__ = ["auto_model_class", "load_config", "load_slim"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "name" or "org/name": left to from_pretrained


def auto_model_class(config, auto_class=None):
    """``auto_class`` if given, else the transformers class named in ``config.architectures``.

    Args:
        config: a transformers config.
        auto_class: an explicit class (returned as is).

    Returns:
        The model class.

    Raises:
        ValueError: the config names no architecture transformers has.
    """
    if auto_class is not None:
        return auto_class
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ValueError("config.json names no known architecture; pass auto_class=AutoModelFor... to load_slim.")
    return cls


def load_config(path: str | os.PathLike):
    """The config of any pruned artifact: ``AutoConfig.from_pretrained``, or for a per-layer slim artifact that ships
    ``modeling_smart_slim.py`` the matching config class from smart_hf's own copy of that file (no shipped code runs).

    Args:
        path: the artifact folder (or a Hub id).

    Returns:
        The transformers config.

    Raises:
        ValueError: a ``smart_slim_*`` model type this smart_hf does not know.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(path)
    model_type = str(config_dict.get("model_type", ""))
    if not model_type.startswith(SMART_SLIM_PREFIX):
        return AutoConfig.from_pretrained(path)
    family = model_type.removeprefix(SMART_SLIM_PREFIX)
    if family not in modeling_smart_slim.FAMILIES:
        raise ValueError(f"{path}: model_type {model_type} is not a family this smart_hf knows; upgrade smart_hf.")
    return getattr(modeling_smart_slim, f"SmartSlim{modeling_smart_slim.FAMILIES[family][0]}").from_pretrained(path)


def load_slim(path: str | os.PathLike, auto_class=None, **kwargs) -> nn.Module:
    """Load a slim model written by ``save_pruned`` / ``smart-hf export --slim``.

    Uniform slim models (and unslimmed ones) go through stock ``from_pretrained(path, **kwargs)``; per-layer slim
    models that ship ``modeling_smart_slim.py`` through smart_hf's own copy of its classes (nothing from the folder
    runs); other per-layer slim models are built from the config, their FFNs, attention heads and conv chains resized
    to the recorded sizes (``config.smart_hf["slim"]``), and the weights loaded strictly.

    Args:
        path: the folder written by ``save_pruned`` (or a Hub id).
        auto_class: the ``AutoModelFor...`` (or model) class to load; default: ``config.architectures``.
        **kwargs: passed to ``from_pretrained``.

    Returns:
        The model, in eval mode for per-layer slim models.

    Raises:
        ValueError: ``path`` is neither a folder nor a Hub id, the weights are missing or corrupt, or the config
            names no known architecture.
    """
    if not os.path.isdir(path) and not _HUB_ID.fullmatch(str(path)):
        raise ValueError(f"{path} is not a folder; pass the directory written by save_pruned / smart-hf export.")
    try:
        return _load_slim(path, auto_class, **kwargs)
    except (OSError, SafetensorError) as err:
        raise ValueError(
            f"could not load the model in {path} ({err}); the weight file is missing or corrupt: re-export it "
            "with save_pruned / smart-hf export."
        ) from err


def _load_slim(path, auto_class, **kwargs) -> nn.Module:
    config_dict, _ = PretrainedConfig.get_config_dict(path)
    if str(config_dict.get("model_type", "")).startswith(SMART_SLIM_PREFIX):
        return _load_portable(path, auto_class, **kwargs)
    config = AutoConfig.from_pretrained(path)
    cls = auto_model_class(config, auto_class)
    slim_meta = slim_summary(read_metadata(config))
    if not slim_meta or slim_meta.get("mode") != "per_layer":
        return cls.from_pretrained(path, **kwargs)
    model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    for record in slim_meta["pairs"]:
        resize_ffn_for_load(model, record)
    for record in slim_meta.get("heads", []):
        resize_heads_for_load(model, record)
    for record in slim_meta.get("convs", []):
        resize_chain_for_load(model, record)
    for record in slim_meta.get("coupled", []):
        resize_coupled_for_load(model, record)
    state = safetensors.torch.load_file(os.path.join(path, SAFE_WEIGHTS_NAME))
    model.load_state_dict(state, strict=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _load_portable(path, auto_class, **kwargs) -> nn.Module:
    """A per-layer slim artifact that ships ``modeling_smart_slim.py``: loaded with smart_hf's own copy of that file
    (nothing from the artifact runs), the class picked by ``auto_class`` or ``config.architectures``."""
    config = load_config(path)
    _, auto_map = portable_classes(config)
    if auto_class is not None:
        target = auto_map.get(auto_class.__name__, f".SmartSlim{auto_class.__name__}")
    else:
        archs = getattr(config, "architectures", None) or ["?"]
        target = f".SmartSlim{archs[0].removeprefix('SmartSlim')}"
    cls = getattr(modeling_smart_slim, target.rpartition(".")[2], None)
    if cls is None:
        raise ValueError(f"{path}: no slim class for {target.rpartition('.')[2]}; pass auto_class=AutoModelFor...")
    return cls.from_pretrained(path, config=config, **kwargs).eval()
