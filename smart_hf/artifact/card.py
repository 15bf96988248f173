"""The model card of a pruned artifact (``README.md``).

`model_card` builds it with huggingface_hub's `ModelCard` / `ModelCardData` from what the artifact records about
itself (``config.smart_hf`` and the sparsity report): base model, tags by pattern, metrics, a per-layer sparsity
table, how to load it with stock transformers, how to get speed from it and, when given, the command that
reproduces it. `save_pruned` writes it; `push_pruned_to_hub` uploads the folder it is in.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from ..constants import REPORT_NAME
from ..metadata import read as read_metadata
from ..slim.describe import removed_units_text, speedup_rows, widths_table
from ..slim.load import load_config

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


def card_tags(metadata: dict) -> list[str]:
    """The card's tags: ``pruned``, ``smart-hf``, plus by pattern ``sparse`` with ``2:4``/``n:m-sparse``,
    ``block-sparse`` or ``channel-pruned``; coupled units and slim models (whole units removed, no zeros to exploit)
    get ``structured-pruning`` instead of the sparse tags.

    Args:
        metadata: ``config.smart_hf`` of the artifact.

    Returns:
        The tags, ``pruned`` and ``smart-hf`` first.
    """
    cfg = metadata.get("config", {})
    tags = ["pruned", "smart-hf"]
    if _structured(metadata):
        return tags + ["structured-pruning"]
    patterns = {info.get("pattern") for info in metadata.get("layers", {}).values()} or {cfg.get("pattern")}
    tags.append("sparse")
    if "nm" in patterns:
        n, m = cfg.get("n", 2), cfg.get("m", 4)
        tags += [f"{n}:{m}", "n:m-sparse"]
    if "block" in patterns:
        tags.append("block-sparse")
    if "channel" in patterns:
        tags.append("channel-pruned")
    return tags


def _structured(metadata: dict) -> bool:
    """Coupled units (`smart_hf.coupling`) or a slim model: whole units are (or are to be) removed."""
    return bool(metadata.get("coupled") or metadata.get("slim") or metadata.get("config", {}).get("pattern") == "coupled")


def _base_model(config) -> str | None:
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if not name or os.path.exists(name) or not HUB_ID.match(name):
        return None
    return name


def _pattern_text(metadata: dict) -> str:
    cfg = metadata.get("config", {})
    pattern = cfg.get("pattern")
    if pattern == "nm":
        return f"{cfg.get('n')}:{cfg.get('m')} (N:M along the input dimension)"
    if pattern == "block":
        r, c = cfg.get("block_shape", [1, 1])
        return "unstructured (1x1 blocks)" if (r, c) == (1, 1) else f"{r}x{c} weight blocks"
    if pattern == "channel":
        return "output channels"
    return str(pattern)


def _speed_text(metadata: dict) -> str:
    if metadata.get("slim"):
        return (
            "This model is already physically smaller: the pruned units are gone from the weight shapes, so a plain "
            "forward is the speed-up, on any engine that runs the stock architecture (eager PyTorch, `torch.compile`, "
            "ONNX export). No sparse kernel is involved."
        )
    if _structured(metadata):
        return (
            "The pruned units (FFN neurons, attention heads / GQA groups, conv channels) are stored as zeros. Remove "
            "them to get the speed: `smart_hf.slim(model, mode='per_layer')` (every layer keeps its own widths; "
            "loads with `trust_remote_code=True` or `smart_hf.load_slim`) or `mode='uniform'` (one width per kind, "
            "stock-loadable), or `smart-hf export DIR --to SLIM_DIR --slim --mode per_layer`."
        )
    tags = card_tags(metadata)
    lines = [
        "The weights are stored dense with the pruned ones set to zero, so the file and a plain forward cost what the "
        "dense model costs. To turn the zeros into speed:",
        "",
    ]
    if "channel-pruned" in tags:
        lines.append(
            "* **Output channels**: `smart_hf.slim(model)` physically removes pruned FFN channels, whole attention "
            "heads and ResNet conv-chain channels (smaller and faster everywhere; a uniform slim model still loads "
            "with stock `from_pretrained`), or "
            "`smart-hf export DIR --to SLIM_DIR --slim`."
        )
    if "block-sparse" in tags:
        lines.append(
            "* **Blocks**: `smart_hf.to_sparse_kernels(model, format='bsr')` swaps the pruned linears for BSR "
            "block-sparse ones. On CPU this beats dense only from about 85-90% block sparsity; below that it is "
            "slower."
        )
    if "n:m-sparse" in tags:
        lines.append(
            "* **2:4**: on an NVIDIA GPU (Ampere or newer), `smart_hf.to_sparse_kernels(model.cuda().half(), "
            "format='2:4')` uses PyTorch's semi-structured sparse kernels; there is no CPU 2:4 kernel."
        )
    return "\n".join(lines)


def _layer_table(report: dict, max_rows: int = 300) -> str:
    rows = ["| layer | shape | pattern | units kept | sparsity |", "|---|---|---|---|---|"]
    for row in sorted(report.get("layers", []), key=lambda r: natural_key(r["name"]))[:max_rows]:
        pattern = {"block": "x".join(map(str, row["block_shape"])), "channel": "channel"}.get(
            row["pattern"], f"{row['n']}:{row['m']}"
        )
        shape = "x".join(map(str, row["shape"]))
        rows.append(
            f"| `{row['name']}` | {shape} | {pattern} | {row['units_kept']}/{row['units']} | {row['sparsity']:.4f} |"
        )
    extra = len(report.get("layers", [])) - max_rows
    if extra > 0:
        rows.append(f"| ... {extra} more layers (see `{REPORT_NAME}`) | | | | |")
    total = report.get("total", {})
    if total:
        rows.append(
            f"| **total (targeted weights)** | {total['weights']:,} weights | | "
            f"{total['weights'] - total['zeros']:,} non-zero | {total['sparsity']:.4f} |"
        )
    return "\n".join(rows)


def natural_key(name: str) -> list:
    """Sort key that orders ``layer.2`` before ``layer.10``.

    Args:
        name: a module name.

    Returns:
        The name split into text and integer parts.
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _slim_intro(slim: dict) -> str:
    before, after = slim.get("params_before", 0), slim.get("params_after", 0)
    share = 100 * (before - after) / max(before, 1)
    return (
        f"Pruned units were removed physically ({slim.get('mode')} slimming): {removed_units_text(slim)}; "
        f"{before:,} -> {after:,} parameters ({share:.1f}% fewer than the dense model)."
    )


def _slim_load(slim: dict, cls: str) -> str | None:
    """The loading snippet of a per-layer slim artifact (``None``: the stock snippet applies)."""
    if slim.get("mode") != "per_layer":
        return None
    if slim.get("loading") == "trust_remote_code":
        auto = "AutoModel" if cls.endswith("Model") and "For" not in cls else _auto_name(cls)
        return (
            "Every layer keeps its own widths, which the stock config cannot describe: the folder ships "
            "`modeling_smart_slim.py` (the stock classes, each layer resized to the widths in `config.json`), so "
            "stock transformers loads it with `trust_remote_code=True` (no smart_hf needed):\n\n"
            f'```python\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained("REPO_OR_DIR", '
            'trust_remote_code=True)\n```\n\nWith smart_hf installed, `smart_hf.load_slim("REPO_OR_DIR")` loads it '
            "with smart_hf's own copy of that file."
        )
    return (
        "Every layer keeps its own widths, which the stock config cannot describe; load with smart_hf:\n\n"
        '```python\nimport smart_hf\n\nmodel = smart_hf.load_slim("REPO_OR_DIR")   # per-layer sizes\n```'
    )


def _auto_name(cls: str) -> str:
    """``AutoModelFor<Task>`` for a transformers class name (``BertForSequenceClassification`` ->
    ``AutoModelForSequenceClassification``; GPT-2's ``LMHeadModel`` -> ``AutoModelForCausalLM``)."""
    if cls.endswith("LMHeadModel"):
        return "AutoModelForCausalLM"
    _, sep, task = cls.partition("For")
    return f"AutoModelFor{task}" if sep else "AutoModel"


def _widths_section(slim: dict | None) -> str | None:
    table = widths_table(slim) if slim else ""
    if not table:
        return None
    return f"## Widths per layer\n\nUnits kept / units before slimming, per layer.\n\n{table}\n"


def _sparsity_section(report: dict, slim: dict | None) -> list[str]:
    """The per-layer sparsity table; for a slim model only when zeros are left in place (its widths table says what
    was removed)."""
    if not slim:
        return ["## Per-layer sparsity", "", _layer_table(report), ""]
    if not report.get("total", {}).get("zeros"):
        return []
    return ["## Pruned weights left in place as zeros", "", _layer_table(report), ""]


def _speedup_section(measured: dict | None) -> str | None:
    rows = speedup_rows(measured)
    if not rows:
        return None
    lines = ["| engine, setting | speed-up over dense |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "## Measured speed-up\n\n" + "\n".join(lines) + "\n"


def _metrics_table(metrics: dict | None) -> str:
    if not metrics:
        return ""
    lines = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {text} |")
    return "## Metrics\n\n" + "\n".join(lines) + "\n\n"


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
    text = _card_text(config, metadata, report, metrics, base_model, command, measured_speedup)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _intro_and_load(config, metadata: dict, report: dict, base_model: str | None) -> tuple[str, str]:
    """The card's opening paragraph (what was pruned, how, how much) and its loading snippet."""
    archs = list(getattr(config, "architectures", None) or [])
    cls = archs[0] if archs else "AutoModel"
    slim = metadata.get("slim")
    total = report.get("total", {})
    intro = (
        f"This model was pruned with [smart_hf](https://arxiv.org/abs/2403.19969) (SMART: learned masks through a "
        f"differentiable top-k){f' from [{base_model}](https://huggingface.co/{base_model})' if base_model else ''}. "
        f"Pattern: **{_pattern_text(metadata)}** (smart_hf {metadata.get('smart_hf_version', '?')})."
    )
    load = f'```python\nfrom transformers import {cls}\n\nmodel = {cls}.from_pretrained("REPO_OR_DIR")\n```'
    if slim:
        intro += " " + _slim_intro(slim)
        load = _slim_load(slim, cls) or load
    else:
        intro += f" {100 * total.get('sparsity', 0.0):.2f}% of the targeted weights are zero."
    return intro, load


def _card_text(config, metadata, report, metrics, base_model, command, measured_speedup) -> str:
    """The card's markdown below its YAML header (the arguments as for `model_card`, ``command`` already a string)."""
    slim = metadata.get("slim")
    intro, load = _intro_and_load(config, metadata, report, base_model)
    body = [
        "# Pruned model (smart_hf)",
        "",
        intro,
        "",
        _metrics_table(metrics).rstrip(),
        "",
        "## How to load",
        "",
        None if slim and slim.get("mode") == "per_layer" else "Stock transformers, no smart_hf needed:",
        "",
        load,
        "",
        "`smart_config.json` holds the SMART configuration and `smart_sparsity.json` the full sparsity report; "
        "`smart_hf.sparsity_report(model)` re-checks the pattern on the loaded weights.",
        "",
        "## How to get speed from it",
        "",
        _speed_text(metadata),
        "",
        _speedup_section(measured_speedup),
        _widths_section(slim),
        *_sparsity_section(report, slim),
        "## How to reproduce",
        "",
        (
            f"```bash\n{command}\n```"
            if command
            else "The SMART configuration is in `smart_config.json`; train with `smart-hf train` and that "
            "configuration."
        ),
        "",
    ]
    text = "\n".join(line for line in body if line is not None)
    return re.sub(r"\n{3,}", "\n\n", text)


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
