"""The ``smart-hf`` command line.

* ``smart-hf train --config RECIPE [--key value ...]``: a SMART run from a recipe (a YAML file, or the name of a
  shipped one, e.g. ``deit_digits_block``; see `smart_hf.cli.arguments`).
* ``smart-hf export OUTPUT_DIR --to DIR [--slim [--mode uniform|per_layer]]``: re-export a pruned artifact (model card,
  plots and summary kept), optionally slimmed (`smart_hf.slim`: pruned FFN channels, attention heads, conv-chain
  channels removed).
* ``smart-hf push DIR --repo-id ID [--private]``: upload an exported folder with its model card (token: ``HF_TOKEN``
  or ``huggingface-cli login``).

A user's mistake ends in one ``error: ...`` line naming the fix and exit status 2 (`smart_hf.cli.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..artifact.hub import push_pruned_to_hub
from .arguments import DataArguments, ModelArguments, make_parser, parse_recipe
from .errors import check_optional_packages, import_error_message, no_partial_output
from .export import export_artifact, export_main
from .help import train_help
from .train import run_training

logger = logging.getLogger(__name__)

__all__ = ["DataArguments", "ModelArguments", "export_artifact", "main", "make_parser", "parse_recipe"]

USAGE = """usage: smart-hf train --config RECIPE [--key value ...]   (RECIPE: a YAML file or a shipped recipe's name)
       smart-hf export OUTPUT_DIR --to DIR [--slim [--mode uniform|per_layer]]
       smart-hf push DIR --repo-id ID [--private] [--commit-message MSG]
       smart-hf COMMAND --help"""


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


def _split_config(rest: list[str]) -> tuple[str | None, list[str]]:
    """``(recipe, the other arguments)``; ``--config=NAME`` works too."""
    for i, arg in enumerate(rest):
        if arg == "--config":
            if i + 1 == len(rest):
                raise ValueError("--config needs a recipe: a YAML file or a shipped recipe's name.")
            return rest[i + 1], rest[:i] + rest[i + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], rest[:i] + rest[i + 1 :]
    return None, rest


def _train_main(rest: list[str]) -> int:
    if "--help-all" in rest:
        print(train_help(full=True))
        return 0
    if "-h" in rest or "--help" in rest:
        print(train_help())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        recipe, rest = _split_config(rest)
        command = ["smart-hf", "train", *(["--config", recipe] if recipe else []), *rest]  # for the model card
        model_args, data_args, smart_config, training_args = parse_recipe(recipe, rest)
        # without matplotlib: warned once here, and the save at the end skips the plots instead of warning again
        training_args.save_plots = check_optional_packages(
            data_args.dataset, model_args.model_name_or_path, training_args.save_plots
        )
        with no_partial_output(training_args.output_dir if training_args.should_save else None):
            run_training(model_args, data_args, smart_config, training_args, command=command)
    except (ValueError, TypeError, OSError, ImportError) as err:
        # A user's error (bad data, a layer the unit does not divide, a missing model or package): the message names
        # the fix, a traceback would bury it. The traceback stays available at DEBUG level.
        logger.debug("smart-hf train failed", exc_info=True)
        message = import_error_message(err) if isinstance(err, ImportError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``smart-hf`` entry point.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 after an ``error:`` line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "export":
        return export_main(rest)
    if command == "push":
        return _push_main(rest)
    if command != "train":
        print(f"error: unknown command {command!r}; available: train, export, push.", file=sys.stderr)
        return 2
    return _train_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
