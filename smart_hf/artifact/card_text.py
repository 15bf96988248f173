"""The markdown of a pruned artifact's model card (``README.md``): what was pruned and how much, how to load it, how
to get speed from it, its per-layer tables, the command that reproduces it. `smart_hf.artifact.card` wraps it in a
`ModelCard` with its YAML header (base model, `card_tags`).
"""

from __future__ import annotations

import re

from ..constants import REPORT_NAME
from ..slim.describe import removed_units_text, speedup_rows, widths_table

__all__ = ["card_markdown", "card_tags", "natural_key"]


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
    pattern = metadata.get("config", {}).get("pattern")
    return bool(metadata.get("coupled") or metadata.get("slim") or pattern == "coupled")


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


def card_markdown(config, metadata: dict, report: dict, metrics, base_model, command, measured_speedup) -> str:
    """The card's markdown below its YAML header.

    Args:
        config, metadata, report, metrics, measured_speedup: as for `smart_hf.artifact.card.model_card`.
        base_model: the Hub id that was pruned, or ``None`` (no link).
        command: the reproducing command as one string, or ``None`` (the card points at ``smart_config.json``).

    Returns:
        The markdown: intro, metrics, how to load, how to get speed, widths / sparsity tables, how to reproduce.
    """
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
