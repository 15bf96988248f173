"""The one owner of what a pruned model records about itself: ``config.smart_hf`` and the sparsity-report schema.

A squashed (or exported, slimmed, reloaded) model no longer has a `SmartState`; everything that must still know
how it was pruned -- `sparsity_report`, `check_sparsity`, `slim`, `load_slim`, `to_sparse_kernels`, the model card
-- reads ``config.smart_hf`` through the accessors here, and only `squash` and `slim` write it (through `build`,
`write`, `with_slim` and `set_layer_shape`). The shapes are spelled out as `TypedDict`s so a reader sees the schema
in one place. It is plain JSON inside ``config.json``, so stock ``from_pretrained`` carries it along untouched.
"""

from __future__ import annotations

import copy
from typing import Any, TypedDict

from ._version import __version__

METADATA_KEY = "smart_hf"  # the attribute of a transformers config (and key of config.json) holding it
LAYER_KEYS = ("kind", "shape", "pattern", "block_shape", "n", "m", "sparsity")

__all__ = [
    "LayerEntry",
    "PruningMetadata",
    "ReportRow",
    "SparsityReport",
    "build",
    "read",
    "require",
    "set_layer_shape",
    "slim_summary",
    "with_slim",
    "write",
]


class LayerEntry(TypedDict):
    """How one targeted layer was pruned: enough to rebuild its `UnitLayout` without the SMART state."""

    kind: str  # "linear" | "conv2d" | "conv1d"
    shape: list[int]  # the weight's shape (after slimming: the slimmed shape)
    pattern: str  # "block" | "channel" | "nm"
    block_shape: list[int]
    n: int
    m: int
    sparsity: float


class ReportRow(TypedDict, total=False):
    """One row of `sparsity_report` (``smart_hf.report.layer_report``)."""

    name: str
    kind: str
    shape: list[int]
    pattern: str
    block_shape: list[int]
    n: int
    m: int
    weights: int
    zeros: int
    sparsity: float
    valid: bool
    problems: list[str]


class SparsityReport(TypedDict):
    """`sparsity_report`'s result and the content of ``smart_sparsity.json``."""

    mode: str  # "dense" | "soft" | "hard" | "squashed"
    layers: list[ReportRow]
    valid: bool
    total: dict[str, float]  # weights, zeros, sparsity


class PruningMetadata(TypedDict, total=False):
    """``config.smart_hf``. ``slim`` appears once `slim` removed structure (its summary, see `smart_hf.slim`)."""

    smart_hf_version: str
    config: dict[str, Any]  # SmartConfig.to_dict()
    sparsity: float
    layers: dict[str, LayerEntry]
    slim: dict[str, Any]
    coupled: list[dict[str, Any]]  # pattern="coupled": {"set": CoupledSet.to_dict(), "unit_cost"} per owner
    speed_target: dict[str, Any]  # target_speedup: the solved time budget (``sparsity`` over measured unit costs)


def build(smart_config: dict[str, Any], report: SparsityReport) -> PruningMetadata:
    """The metadata of a model pruned with ``smart_config`` whose (hardened) report is ``report``."""
    return {
        "smart_hf_version": __version__,
        "config": smart_config,
        "sparsity": report["total"]["sparsity"],
        "layers": {row["name"]: {k: row[k] for k in LAYER_KEYS} for row in report["layers"]},
    }


def _config_of(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def read(model_or_config) -> PruningMetadata | None:
    """``config.smart_hf`` of a model or config, or ``None`` when it is not a squashed SMART model."""
    return getattr(_config_of(model_or_config), METADATA_KEY, None) or None


def require(model_or_config, action: str) -> PruningMetadata:
    """`read`, raising a ValueError that names the fix when the model carries no SMART metadata."""
    meta = read(model_or_config)
    if not meta:
        raise ValueError(
            f"{action} needs a SMART model: prepared + hardened, or squashed/exported by smart_hf (its config has "
            f"no {METADATA_KEY} entry); prune it with smart_hf.prepare_model + training, then smart_hf.squash or "
            "save_pruned."
        )
    return meta


def write(model_or_config, meta: PruningMetadata | None) -> None:
    """Set ``config.smart_hf`` (``None`` removes it, so a plain config is not left with a null entry)."""
    config = _config_of(model_or_config)
    if meta is None:
        if hasattr(config, METADATA_KEY):
            delattr(config, METADATA_KEY)
    else:
        setattr(config, METADATA_KEY, meta)


def slim_summary(meta: PruningMetadata | None) -> dict[str, Any] | None:
    """What `slim` recorded (``None`` for a model that was not slimmed)."""
    return (meta or {}).get("slim") or None


def with_slim(meta: PruningMetadata, summary: dict[str, Any]) -> PruningMetadata:
    """A copy of ``meta`` that records ``summary`` as the slimming that was applied."""
    out = copy.deepcopy(meta)
    out["slim"] = summary
    return out


def set_layer_shape(layers: dict[str, LayerEntry], name: str, shape) -> None:
    """Record in ``layers`` (the ``"layers"`` of a private copy of the metadata, see `with_slim`) that slimming
    changed layer ``name``'s weight to ``shape``: its unit layout follows the new shape."""
    layers[name]["shape"] = list(shape)
