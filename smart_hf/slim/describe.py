"""What `slim` removed, in words and tables: unit counts per kind, widths per layer (natural layer order) and the
measured speed-up when a benchmark recorded one. Used by the model card and the command line's summary line."""

from __future__ import annotations

from .portable import slim_layer_widths

__all__ = ["removed_units", "removed_units_text", "slim_summary_line", "speedup_rows", "widths_table"]

_KINDS = (("ffn", "FFN neurons"), ("heads", "attention heads"), ("kv_heads", "key/value heads"), ("conv", "conv channels"))


def removed_units(slim_meta: dict) -> dict[str, tuple[int, int]]:
    """Units before and after slimming, summed per kind over every resized layer.

    Args:
        slim_meta: the slim summary (``slim(...)``'s return value or ``config.smart_hf["slim"]``).

    Returns:
        ``{"ffn" | "heads" | "kv_heads" | "conv": (before, after)}`` for the kinds present; FFN channel pairs and
        coupled FFN sets count as ``ffn``, head blocks and coupled head sets as ``heads`` (``kv_heads`` for GQA
        groups), conv chains and coupled conv sets as ``conv``.
    """
    totals: dict[str, list[int]] = {}

    def add(kind: str, before: int, after: int) -> None:
        entry = totals.setdefault(kind, [0, 0])
        entry[0] += int(before)
        entry[1] += int(after)

    for kept in slim_layer_widths(slim_meta).values():
        for kind, (before, after) in kept.items():
            add(kind, before, after)
    for chain in slim_meta.get("convs", []):
        add("conv", chain["before"], chain["after"])
    for record in slim_meta.get("coupled", []):
        if record["set"]["kind"] == "conv":
            add("conv", record["set"]["units"], record["after"])
    return {kind: tuple(totals[kind]) for kind, _ in _KINDS if kind in totals}


def removed_units_text(slim_meta: dict) -> str:
    """The units removed per kind in words, e.g. ``"96 of 256 FFN neurons, 2 of 8 attention heads"``.

    Args:
        slim_meta: the slim summary.

    Returns:
        The text (``"no units"`` when nothing was counted).
    """
    labels = dict(_KINDS)
    parts = [f"{before - after:,} of {before:,} {labels[k]}" for k, (before, after) in removed_units(slim_meta).items()]
    return ", ".join(parts) or "no units"


def slim_summary_line(summary: dict) -> str:
    """One line: the units removed per kind, the parameters before and after and what stayed masked.

    Args:
        summary: ``slim(...)``'s return value (``left_masked`` optional).

    Returns:
        e.g. ``"slimmed (per_layer): removed 96 of 256 FFN neurons, 2 of 8 attention heads; 52,803 -> 40,211
        parameters (-23.8%); left masked in place: 0 layer(s)"``.
    """
    before, after = summary["params_before"], summary["params_after"]
    share = 100 * (before - after) / max(before, 1)
    line = (
        f"slimmed ({summary['mode']}): removed {removed_units_text(summary)}; {before:,} -> {after:,} parameters "
        f"(-{share:.1f}%)"
    )
    if "left_masked" in summary:
        line += f"; left masked in place: {len(summary['left_masked'])} layer(s)"
    return line


def widths_table(slim_meta: dict) -> str:
    """A markdown table of the widths every layer kept (``kept/before`` per kind), layers in numeric order.

    Args:
        slim_meta: the slim summary.

    Returns:
        The table, or ``""`` when no numbered layer was resized.
    """
    widths = slim_layer_widths(slim_meta)
    kinds = [k for k, _ in _KINDS if any(k in kept for kept in widths.values())]
    if not kinds:
        return ""
    labels = dict(_KINDS)
    rows = ["| layer | " + " | ".join(labels[k] for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for layer, kept in widths.items():
        cells = [f"{kept[k][1]}/{kept[k][0]}" if k in kept else "-" for k in kinds]
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def speedup_rows(measured: dict | None) -> list[tuple[str, str]]:
    """``(setting, speed-up)`` rows of a ``measured_speedup`` entry (a dict per engine / batch, nested or flat).

    Args:
        measured: e.g. ``{"eager": {"batch 8": 1.8, "batch 32": 1.9}, "onnxruntime": {...}}``; ``None`` for none.

    Returns:
        The leaves with their keys joined by ``", "``, values formatted as ``"1.90x"`` when numeric.
    """
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}, {key}" if prefix else str(key), inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((prefix, f"{value:.2f}x"))
        else:
            rows.append((prefix, str(value)))

    walk("", measured or {})
    return rows
