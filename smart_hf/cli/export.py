"""``smart-hf export``: re-export a pruned artifact, optionally slimmed, keeping what the training run recorded.

Both paths (plain and ``--slim``) share `export_artifact`: the weights are written again with `save_pruned`, and
the source's model-card facts (metrics, base model, the command that reproduces it), its plots and its
``smart_summary.json`` are carried over, so an exported folder tells as much as the one training wrote.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from safetensors import SafetensorError
from transformers import AutoConfig

from ..artifact.atomic import staged_directory
from ..artifact.export import save_pruned
from ..metadata import read as read_metadata
from ..slim import auto_model_class, load_slim
from ..slim import slim as slim_model

__all__ = ["CARRIED_FILES", "card_facts", "export_artifact", "export_main"]

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


# what a training run writes beside the weights and an export keeps: its summary and its plots
CARRIED_FILES = ("smart_summary.json", "smart_layer_sparsity.png", "smart_training.png")


def _number(text: str):
    try:
        return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    except ValueError:
        return text


def card_facts(folder: str) -> dict:
    """What the model card in ``folder`` records about the run that no file of the artifact holds: its metrics, the
    base model and the command that reproduces it (``{}`` without a card).

    Args:
        folder: an artifact written by `save_pruned` (``README.md``, from `smart_hf.artifact.card.model_card`).

    Returns:
        ``{"metrics": {name: value}, "base_model": str | None, "command": str | None}`` (keys present when found).
    """
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    facts = {}
    table = re.search(r"^## Metrics\n\n(.*?)(?:\n\n|\Z)", text, flags=re.M | re.S)
    if table:
        rows = [line.strip("|").split("|") for line in table.group(1).splitlines()[2:]]
        facts["metrics"] = {key.strip(): _number(value.strip()) for key, value in rows if key.strip()}
    command = re.search(r"^## How to reproduce\n\n```bash\n(.*?)\n```", text, flags=re.M | re.S)
    if command:
        facts["command"] = command.group(1)
    base = re.search(r"^base_model:\s*(\S+)\s*$", text.split("\n---", 1)[0], flags=re.M)
    if base:
        facts["base_model"] = base.group(1)
    return facts


def export_artifact(source: str, target: str, slim: bool = False, mode: str = "uniform") -> dict:
    """Load a pruned artifact, optionally slim it, and write it to ``target`` atomically, with its model card (the
    source card's metrics, base model and reproduce command kept), its plots and ``smart_summary.json``.

    Args:
        source: a folder written by ``SmartTrainer.save_model`` / ``smart-hf train``.
        target: the folder to write (replaced as one unit); must differ from ``source``.
        slim: remove the pruned units physically (`smart_hf.slim`).
        mode: the slimming mode, ``"uniform"`` or ``"per_layer"``.

    Returns:
        ``{"target": target, "slim": the slim summary or None}``.

    Raises:
        ValueError: ``source`` is not a pruned artifact, its weights are missing or corrupt, or ``target`` is
            ``source``.
    """
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
    facts = card_facts(source)
    with staged_directory(target, replace=True) as folder:  # the copied files are part of the one swap
        save_pruned(
            model, folder, save_plots=False, metrics=facts.get("metrics", {}), base_model=facts.get("base_model"),
            command=facts.get("command"),
        )  # fmt: skip
        for name in (*_PROCESSOR_FILES, *CARRIED_FILES):
            if os.path.isfile(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(folder, name))
    return {"target": target, "slim": summary}


def export_main(rest: list[str]) -> int:
    """``smart-hf export OUTPUT_DIR --to DIR [--slim [--mode uniform|per_layer]]``.

    Args:
        rest: the arguments after ``export``.

    Returns:
        The exit status: 0, or 2 with an ``error:`` line.
    """
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


