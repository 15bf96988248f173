"""The model card of a pruned artifact (``README.md``).

`model_card` builds it with huggingface_hub's `ModelCard` / `ModelCardData` from what the artifact records about
itself (``config.smart_hf`` and the sparsity report): base model, tags by pattern, metrics, a per-layer sparsity
table, how to load it with stock transformers, how to get speed from it and, when given, the command that
reproduces it (the markdown: `smart_hf.artifact.card_text`). `save_pruned` writes it; `push_pruned_to_hub` uploads
the folder it is in.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from ..constants import REPORT_NAME
from ..metadata import read as read_metadata
from ..slim.load import load_config
from .card_text import card_markdown, card_tags, natural_key

__all__ = [
    "CARD_NAME",
    "HUB_ID",
    "card_tags",
    "metrics_from_log_history",
    "model_card",
    "natural_key",
    "redact_command",
    "write_folder_card",
    "write_model_card",
]

CARD_NAME = "README.md"
SUMMARY_NAME = "smart_summary.json"  # the run summary `smart-hf train` writes; read for ``measured_speedup``
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def redact_command(argv: list[str]) -> list[str]:
    """``argv`` with the values of ``--*token*`` options replaced by ``***`` (a card must never carry a token)."""
    out, hide_next = [], False
    for arg in map(str, argv):
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg.startswith("--") and "token" in arg.lower():
            key, eq, _ = arg.partition("=")
            out.append(f"{key}=***" if eq else arg)
            hide_next = not eq
        else:
            out.append(arg)
    return out


def _base_model(config) -> str | None:
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if not name or os.path.exists(name) or not HUB_ID.match(name):
        return None
    return name


def metrics_from_log_history(log_history) -> dict:
    """The last logged value of every ``eval_*`` / ``dense_*`` / ``test_*`` metric (runtime counters dropped)."""
    metrics = {}
    for entry in log_history or []:
        for key, value in entry.items():
            if key.startswith(("eval_", "dense_", "test_")) and isinstance(value, (int, float)):
                if not key.endswith(("_runtime", "_per_second", "_steps")):
                    metrics[key] = value
    return metrics


def model_card(
    config,
    metadata: dict,
    report: dict,
    metrics: dict | None = None,
    base_model: str | None = None,
    command: str | list[str] | None = None,
    measured_speedup: dict | None = None,
):
    """A `huggingface_hub.ModelCard` for a pruned artifact.

    Args:
        config: the transformers config of the saved model (for the architecture and the base model).
        metadata: ``config.smart_hf`` (see `smart_hf.lifecycle.pruning_metadata`).
        report: the `sparsity_report` of the saved weights.
        metrics: optional ``{name: value}`` shown in a table.
        base_model: the Hub id of the model that was pruned (default: the config's ``_name_or_path`` when it looks
            like a Hub id).
        command: the command that reproduces the artifact (``smart-hf train`` passes its own, token values
            redacted with `redact_command`); without one the card points at ``smart_config.json``.
        measured_speedup: the measured speed-up of the slim model over the dense one, a dict per engine / batch
            (``smart_summary.json``'s ``measured_speedup``); shown in its own section when given.

    Returns:
        The card (``card.save(path)`` writes it).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base_model = base_model or _base_model(config)
    if isinstance(command, (list, tuple)):
        command = shlex.join(redact_command(list(command)))
    data = ModelCardData(base_model=base_model, library_name="transformers", tags=card_tags(metadata))
    text = card_markdown(config, metadata, report, metrics, base_model, command, measured_speedup)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def write_model_card(output_dir: str | os.PathLike, config, metadata: dict, report: dict, **kwargs) -> str:
    """Write ``README.md`` into ``output_dir``.

    Args:
        output_dir: the artifact folder.
        config, metadata, report: as for `model_card`.
        **kwargs: the other `model_card` arguments; without ``measured_speedup``, the ``measured_speedup`` of
            ``output_dir/smart_summary.json`` (top level or under ``"artifact"``) when that file has one.

    Returns:
        The card's path.
    """
    path = os.path.join(output_dir, CARD_NAME)
    if kwargs.get("measured_speedup") is None:
        kwargs["measured_speedup"] = _summary_speedup(output_dir)
    model_card(config, metadata, report, **kwargs).save(path)
    return path


def write_folder_card(folder: str | os.PathLike, **kwargs) -> str:
    """(Re)write the card of an artifact folder from what the folder records (``config.json``'s ``smart_hf``
    entry, ``smart_sparsity.json`` and, for ``measured_speedup``, ``smart_summary.json``).

    Args:
        folder: the artifact folder.
        **kwargs: `model_card` arguments (``metrics``, ``command``, ``measured_speedup``, ...).

    Returns:
        The card's path.
    """
    config = load_config(folder)  # a per-layer slim artifact has its own model_type
    report = {}
    if os.path.isfile(os.path.join(folder, REPORT_NAME)):
        with open(os.path.join(folder, REPORT_NAME), encoding="utf-8") as fh:
            report = json.load(fh)
    return write_model_card(folder, config, read_metadata(config) or {}, report, **kwargs)


def _summary_speedup(folder: str | os.PathLike) -> dict | None:
    """``measured_speedup`` from the folder's ``smart_summary.json`` (``None`` when absent or unreadable)."""
    path = os.path.join(folder, SUMMARY_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        return None
    found = summary.get("measured_speedup") or (summary.get("artifact") or {}).get("measured_speedup")
    return found if isinstance(found, dict) else None
