"""Per-layer slim models (written by smart_hf): stock transformers classes whose layers get their own widths.

A per-layer slim model keeps a different number of FFN neurons and attention heads in every layer, which a stock
config cannot describe. The classes below are the stock transformers classes, built from the stock config as usual;
then the linear layers listed in ``config.smart_slim_shapes`` (``{module name: [out_features, in_features]}``) are
rebuilt at those sizes and the head counts in ``config.smart_slim_attributes`` (``{module name: {attribute: int}}``)
are set, before the weights are loaded. The forward passes are transformers' own.

The same widths are also written in transformers' per-layer configuration (``config.per_layer_config``) where it
describes them. This file only reads integers from the config: it executes nothing from the checkpoint.
"""

import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

SHAPES_KEY = "smart_slim_shapes"
ATTRIBUTES_KEY = "smart_slim_attributes"
# the head-count attributes transformers' attention modules read in their forward pass
HEAD_ATTRIBUTES = frozenset(
    {"num_heads", "num_attention_heads", "num_key_value_heads", "num_key_value_groups", "all_head_size", "split_size"}
)

# model_type suffix -> (stock config class, suffixes of the stock model classes)
_TEXT_TASKS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
FAMILIES = {
    "bert": ("BertConfig", ("Model", *_TEXT_TASKS, "ForMaskedLM", "ForMultipleChoice", "LMHeadModel", "ForPreTraining")),
    "roberta": ("RobertaConfig", ("Model", *_TEXT_TASKS, "ForMaskedLM", "ForMultipleChoice", "ForCausalLM")),
    "vit": ("ViTConfig", ("Model", "ForImageClassification", "ForMaskedImageModeling")),
    "deit": (
        "DeiTConfig",
        ("Model", "ForImageClassification", "ForImageClassificationWithTeacher", "ForMaskedImageModeling"),
    ),
    "gpt2": ("GPT2Config", ("Model", "LMHeadModel", *_TEXT_TASKS)),
    "llama": ("LlamaConfig", ("Model", "ForCausalLM", *_TEXT_TASKS)),
}
MODEL_TYPE_PREFIX = "smart_slim_"


class SmartSlimConfigMixin:
    """A stock config under its own ``model_type`` (so stock loading asks for ``trust_remote_code``)."""

    def to_dict(self):
        output = super().to_dict()
        output.pop("allow_global_per_layer_attribute_access", None)  # a runtime permission, set by the model class
        return output


def _resolve(model, name):
    """The module ``name`` of a task model, also when a base model (no task head) loads a task checkpoint."""
    prefix = f"{model.base_model_prefix}."
    if name.startswith(prefix) and not hasattr(model, model.base_model_prefix):
        name = name[len(prefix) :]
    return name, model.get_submodule(name)


def _positive_int(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{what} must hold positive integers, got {value!r}")
    return value


def resize_to_recorded_widths(model, config):
    """Rebuild the linear layers of ``config.smart_slim_shapes`` at their recorded sizes and set the head counts of
    ``config.smart_slim_attributes`` (freshly constructed model, weights not loaded yet).

    Args:
        model: the stock model just built from ``config``.
        config: its config.

    Raises:
        ValueError: a recorded name that is not a linear layer, an attribute that is not a head count, or a size
            that is not a positive integer.
    """
    for name, shape in (getattr(config, SHAPES_KEY, None) or {}).items():
        out_features, in_features = (_positive_int(v, SHAPES_KEY) for v in shape)
        name, module = _resolve(model, name)
        has_bias = getattr(module, "bias", None) is not None
        if isinstance(module, Conv1D):
            new = Conv1D(out_features, in_features)
        elif isinstance(module, nn.Linear):
            new = nn.Linear(in_features, out_features, bias=has_bias)
        else:
            raise ValueError(f"config.{SHAPES_KEY} names {name}, which is not a linear layer")
        new.to(device=module.weight.device, dtype=module.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    for name, attributes in (getattr(config, ATTRIBUTES_KEY, None) or {}).items():
        name, module = _resolve(model, name)
        for attribute, value in attributes.items():
            if attribute not in HEAD_ATTRIBUTES or not isinstance(getattr(module, attribute, None), int):
                raise ValueError(f"config.{ATTRIBUTES_KEY}: {name} has no head-count attribute {attribute!r}")
            setattr(module, attribute, _positive_int(value, ATTRIBUTES_KEY))


class SmartSlimModelMixin:
    """Builds the stock model from the global config (the per-layer widths of ``per_layer_config`` are read by
    `resize_to_recorded_widths`, not by the stock constructors), then gives every layer its recorded widths."""

    def __init__(self, config, *args, **kwargs):
        config.allow_global_per_layer_attribute_access = True
        super().__init__(config, *args, **kwargs)
        resize_to_recorded_widths(self, config)


def _config_class(family):
    """``SmartSlim<Family>Config``, made once (transformers checks that a model's ``config_class`` is the config's
    class, so every lookup must return the same object)."""
    config_name = FAMILIES[family][0]
    name = f"SmartSlim{config_name}"
    if name not in globals():
        globals()[name] = type(
            name,
            (SmartSlimConfigMixin, getattr(transformers, config_name)),
            {"model_type": MODEL_TYPE_PREFIX + family, "__module__": __name__},
        )
    return globals()[name]


def __getattr__(name):
    """``SmartSlim<stock class name>`` on first use (so importing this file imports no model family)."""
    for family, (config_name, suffixes) in FAMILIES.items():
        stem = config_name[: -len("Config")]
        if name == f"SmartSlim{config_name}":
            return _config_class(family)
        for suffix in suffixes:
            if name == f"SmartSlim{stem}{suffix}" and hasattr(transformers, stem + suffix):
                globals()[name] = type(
                    name,
                    (SmartSlimModelMixin, getattr(transformers, stem + suffix)),
                    {"config_class": _config_class(family), "__module__": __name__},
                )
                return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
