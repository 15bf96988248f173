"""`sparsity_report`: what was pruned, per layer and in total, and whether the pattern is valid.

Works on a prepared model (hard masks, or the masks `harden` would pick while still searching) and on a squashed
model (from the layout recorded in ``model.config.smart_hf``; also after `to_sparse_kernels`). Validity means: every
N:M group has at most ``n`` non-zeros (and its mask keeps exactly ``n``), every pruned block/channel is all zero in the
stored weight, every mask is binary. Each row says why it is invalid (``problems``); `smart_hf.invariants` adds the
budget (exact kept counts) on top of this report.
"""

from __future__ import annotations

import torch
from torch import nn

from .constants import STATE_MODULE_NAME
from .core.granularity import UnitLayout, canonical_weight
from .distributed import full_tensor
from .metadata import read as read_metadata
from .state import SmartState

__all__ = ["dense_weight", "format_report", "layer_report", "sparsity_report"]


@torch.no_grad()
def layer_report(name: str, weight: torch.Tensor, layout: UnitLayout, unit_mask: torch.Tensor | None) -> dict:
    """One row of the report for the stored ``weight``. ``unit_mask`` (``score_shape``), if known, is the mask the
    weight must obey: a non-zero weight in a pruned unit makes the row invalid (it is checked, not masked away).

    ``problems`` lists, in words, every way the row breaks the pattern (``valid`` is ``not problems``):
    a mask value other than 0/1; non-zero (or NaN) weights inside pruned units; for N:M, a group of ``m`` with more
    than ``n`` non-zeros in the weight, or a mask group that does not keep exactly ``n``.
    ``units_kept``: block/channel -- kept units of the mask (without a mask: units with any non-zero weight);
    N:M -- non-zero weights. ``unit_cost``: weights per unit (1 for N:M).
    """
    nonzero = layout.unit_sum(canonical_weight(weight != 0, layout.kind).float())  # per unit; N:M: per weight
    zeros = layout.num_weights - int(nonzero.sum())
    problems = [] if unit_mask is None else _mask_problems(nonzero, layout, unit_mask.to(nonzero.device))
    if layout.pattern == "nm":  # rows of `nonzero` are the groups of m
        units_kept = int(nonzero.sum())
        crowded = int((nonzero.sum(-1) > layout.n).sum())
        if crowded:
            problems.append(
                f"{crowded} of {nonzero.shape[0]} groups of {layout.m} hold more than {layout.n} non-zero weights"
            )
    elif unit_mask is not None:
        units_kept = int(unit_mask.sum())
    else:
        units_kept = int((nonzero > 0).sum())
    return {
        "name": name,
        "kind": layout.kind,
        "shape": list(layout.weight_shape),
        "pattern": layout.pattern,
        "block_shape": list(layout.block_shape),
        "n": layout.n,
        "m": layout.m,
        "units": layout.num_units if layout.pattern != "nm" else layout.num_weights,
        "units_kept": units_kept,
        "unit_cost": layout.unit_cost,
        "weights": layout.num_weights,
        "zeros": zeros,
        "sparsity": zeros / layout.num_weights,
        "valid": not problems,
        "problems": problems,
    }


def _mask_problems(nonzero: torch.Tensor, layout: UnitLayout, unit_mask: torch.Tensor) -> list[str]:
    """What is wrong between a unit mask and the per-unit non-zero counts of the weight it should govern."""
    problems = []
    fractional = int(((unit_mask != 0) & (unit_mask != 1)).sum())
    if fractional:
        problems.append(f"mask is not binary: {fractional} units are neither 0 nor 1")
    dirty = int((nonzero[unit_mask == 0] > 0).sum())
    if dirty:
        what = "pruned weights are" if layout.pattern == "nm" else "pruned units hold"
        problems.append(f"{dirty} {what} non-zero (expected exact zeros)")
    if layout.pattern == "nm":
        wrong = int((unit_mask.sum(-1) != layout.n).sum())
        if wrong:
            problems.append(f"{wrong} mask groups do not keep exactly n={layout.n} of m={layout.m}")
    return problems


def sparsity_report(model: nn.Module | SmartState) -> dict:
    """Per-layer and total sparsity of a prepared or squashed model, with a validity check.

    Returns ``{"mode", "layers": [row, ...], "total": {"weights", "zeros", "sparsity"}, "valid"}``; in ``"soft"``
    mode (still searching) the rows describe the masks `harden` would choose now. Under FSDP2 the sharded weights
    are all-gathered, so every rank must call it (as `SmartCallback` does, on every rank).

    Args:
        model: a prepared model, its `SmartState`, or a squashed SMART model (with ``config.smart_hf``).

    Returns:
        The report described above.

    Raises:
        ValueError: the model is neither prepared nor a squashed SMART model.
    """
    if isinstance(model, SmartState):
        state = model
    else:
        state = getattr(model, STATE_MODULE_NAME, None)
    if isinstance(state, SmartState):
        rows, mode = _prepared_rows(state), state.mode_name
    else:
        meta = read_metadata(model) if hasattr(model, "config") else None
        if not meta:
            raise ValueError("model is neither prepared for SMART nor a squashed SMART model (no config.smart_hf).")
        rows, mode = _squashed_rows(model, meta), "squashed"
    weights = sum(r["weights"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    return {
        "mode": mode,
        "layers": rows,
        "valid": all(r["valid"] for r in rows),
        "total": {"weights": weights, "zeros": zeros, "sparsity": zeros / max(weights, 1)},
    }


def _prepared_rows(state: SmartState) -> list[dict]:
    names = dict(zip(map(id, state.layers), state.targeted_module_names))
    rows = []
    for group_index, group in enumerate(state.groups):
        for layer, mask in zip(group.layers, state.hard_group_masks(group_index)):
            weight = full_tensor(layer.weight.detach())  # FSDP2 shard -> whole weight (a collective)
            if not state.is_hard:  # still searching: describe the weights `harden` would leave
                weight = layer.smart_layout.apply(weight, mask.to(weight.device))
            rows.append(layer_report(names[id(layer)], weight, layer.smart_layout, mask))
    order = {name: i for i, name in enumerate(state.targeted_module_names)}
    return sorted(rows, key=lambda r: order[r["name"]])


def _squashed_rows(model: nn.Module, meta: dict) -> list[dict]:
    modules = dict(model.named_modules())
    rows = []
    for name, info in meta["layers"].items():
        if name not in modules:
            raise ValueError(
                f"config.smart_hf names layer {name!r}, which this model does not have; was the model "
                "slimmed or renamed? Re-export it with smart_hf."
            )
        layout = UnitLayout(
            info["kind"], tuple(info["shape"]), info["pattern"], tuple(info["block_shape"]), info["n"], info["m"]
        )
        rows.append(layer_report(name, dense_weight(modules[name]), layout, None))
    return rows


def dense_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as a strided tensor: `to_sparse_kernels` stores BSR / semi-structured 2:4 weights, whose
    zeros the report must still count."""
    weight = module.weight.detach()
    if weight.layout != torch.strided or type(weight).__name__.startswith("SparseSemiStructured"):
        weight = weight.to_dense()
    return weight


def format_report(report: dict, max_rows: int = 200) -> str:
    """A plain-text table of a `sparsity_report`.

    Args:
        report: a `sparsity_report` result.
        max_rows: most layer rows shown (the rest are counted in one line).

    Returns:
        The table, one line per layer and a total line.
    """
    lines = [f"{'layer':<56} {'pattern':<10} {'units kept':>16} {'sparsity':>9} {'valid':>6}"]
    for row in report["layers"][:max_rows]:
        pattern = {
            "block": "x".join(map(str, row["block_shape"])),
            "channel": "channel",
            "nm": f"{row['n']}:{row['m']}",
        }[row["pattern"]]
        kept = f"{row['units_kept']}/{row['units']}"
        lines.append(
            f"{row['name'][-56:]:<56} {pattern:<10} {kept:>16} {row['sparsity']:>9.4f} {str(row['valid']):>6}"
        )
    if len(report["layers"]) > max_rows:
        lines.append(f"... {len(report['layers']) - max_rows} more layers")
    total = report["total"]
    lines.append(
        f"{'total (' + report['mode'] + ')':<56} {'':<10} {total['weights'] - total['zeros']:>16} "
        f"{total['sparsity']:>9.4f} {str(report['valid']):>6}"
    )
    return "\n".join(lines)
