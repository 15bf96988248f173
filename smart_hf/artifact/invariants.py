"""Sparsity invariants: prove that a model (or a saved folder, or a state dict) is as sparse as its SMART config says.

`check_sparsity` re-derives every budget from the `SmartConfig` alone (the same rules as `smart_hf.budget`, not the
prepared model's own budget groups) and compares it with what the masks -- or, for a squashed/saved model, the stored
weights -- actually keep. It passes only if

* the pattern is valid (`smart_hf.report.layer_report`): binary masks; pruned blocks / channels are whole zero blocks /
  rows in the weight; every N:M group has at most ``n`` non-zeros (exactly ``n`` kept units in the mask);
* every layer uses the unit settings the config assigns to it (pattern, block shape, n:m);
* the kept counts are exact:
  - ``budget="layer"``: a layer with ``U`` units keeps ``layer_keep_units(U, s) = max(1, round((1 - s) U))`` units;
  - ``budget="global"`` (one group per target sparsity ``s``): with ``K = round((1 - s) * W)`` weights to keep, the
    cost-weighted top-k keeps a prefix of the ranking whose cost ``K'`` satisfies
    ``K' - c_last / 2 < K <= K' + c_next / 2`` (`hard_topk`). Without the scores we check the bound with the
    largest kept / dropped unit cost; when every unit of the group has the same cost ``c`` this pins the count
    exactly: ``ceil(K / c - 1/2)`` units. Every layer also keeps its ``reserved_units(U, min_layer_density)``;
  - N:M: exactly ``n`` of every ``m`` (the validity check above).

Otherwise it raises a ValueError naming every broken layer / budget group with expected vs found. Stored weights
cannot tell a pruned unit from a kept unit whose weights are all exactly zero: such a unit counts as pruned (and
makes a squashed model fail the exact count) -- in practice that only happens to layers initialised to zero.
A squashed model also fails when a layer holds fewer zeros than ``config.smart_hf`` recorded at export (its zeros
were refilled). For a slimmed model (`smart_hf.slim`) the removed FFN channels count as pruned units of their original
layer, and the totals count removed weights as zeros; this holds for FFN channels, attention heads and conv chains
(`smart_hf.slim.slimmed_widths`). The q/k rows of a removed head may have been kept units: for those layers the
check is that the budget lies between what the slim weight keeps and that plus the removed units.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from torch import nn

from ..config import SmartConfig
from ..constants import REPORT_NAME, STATE_MODULE_NAME
from ..core.budget import global_weight_budget, layer_keep_units, reserved_units
from ..core.granularity import UnitLayout
from ..inject import unit_settings_for
from ..lifecycle import unwrap_model
from ..metadata import read as read_metadata
from ..metadata import slim_summary
from ..report import layer_report, sparsity_report
from ..slim import load_slim, slimmed_widths
from ..state import SmartState
from .coupled_invariants import coupled_budget_problems

__all__ = ["budget_problems", "check_sparsity", "refilled_layers"]

FIX_HINT = (
    "Fix: keep fine-tuning the prepared model (SmartTrainer / SmartCallback re-apply the masks after every step, "
    "or call smart_hf.apply_hard_masks_(model)), and export with smart_hf.save_pruned; a squashed model fine-tuned "
    "with a stock Trainer loses its zeros."
)


def check_sparsity(model_or_state_dict, smart_config_or_metadata=None) -> dict:
    """Verify achieved sparsity == target and a valid pattern; return the report, raise ValueError otherwise.

    Args:
        model_or_state_dict: a prepared model (or its `SmartState`; while still searching, the masks `harden` would
            pick are checked), a squashed / loaded / slimmed / sparse-kernel model (``config.smart_hf`` present), a
            folder written by `save_pruned` (loaded with `smart_hf.load_slim`, so stock and slim artifacts both
            work), or a state dict ``{"<layer>.weight": tensor}`` under the model's own module names.
        smart_config_or_metadata: the target. A `SmartConfig` overrides the config recorded in the model (check a
            model against what you asked for); a ``config.smart_hf`` dict (``{"config", "layers", ...}``) is
            required for a state dict. Default: the config the model carries.

    Returns:
        The `sparsity_report` dict plus ``"budget"`` (one entry per budget group: ``kind``, ``sparsity``,
        ``layers``, ``expected``, ``found``, ``ok``) and ``"verified": True``.

    Raises:
        ValueError: a layer misses its target sparsity or its pattern, a budget group its count, the artifact is
            inconsistent (the message lists every problem and the fix), or the input is not a SMART model, folder
            or state dict with its metadata.
        TypeError: ``smart_config_or_metadata`` is neither a `SmartConfig` nor a ``config.smart_hf`` dict.
    """
    report, config, artifact_errors, model = _report_and_config(model_or_state_dict, smart_config_or_metadata)
    if config.pattern == "coupled":  # units span layers no report row describes: check the sets on the model
        if model is None:
            raise ValueError(
                "a pattern='coupled' artifact is checked on its model or folder, not a state dict; pass the model "
                "(or the folder written by save_pruned)."
            )
        budget, budget_errors = coupled_budget_problems(model, config)
    else:
        budget, budget_errors = budget_problems(report["layers"], config)
    problems = [f"{row['name']}: {p}" for row in report["layers"] for p in row["problems"]]
    problems += budget_errors + artifact_errors
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"sparsity check failed ({report['mode']} model, {len(problems)} problems):\n{lines}\n{FIX_HINT}"
        )
    return {**report, "budget": budget, "verified": True}


def _report_and_config(obj, target) -> tuple[dict, SmartConfig, list[str], nn.Module | None]:
    """(report, target config, problems of the artifact itself) for any input `check_sparsity` accepts."""
    if isinstance(obj, (str, os.PathLike)):
        return _folder_report(obj, target)
    if isinstance(obj, Mapping):
        return _state_dict_report(obj, target)
    if isinstance(obj, nn.Module) and not isinstance(obj, SmartState):
        obj = unwrap_model(obj)  # DDP / accelerate wrappers hold the prepared model under .module
    state = obj if isinstance(obj, SmartState) else getattr(obj, STATE_MODULE_NAME, None)
    if isinstance(state, SmartState):
        return sparsity_report(state), _target_config(target, state.smart_config), [], state
    meta = read_metadata(obj) if hasattr(obj, "config") else None
    if isinstance(obj, nn.Module) and meta:
        report = sparsity_report(obj)
        refilled = refilled_layers(report["layers"], meta)
        if not meta.get("coupled"):  # coupled sets are checked whole on the model, not per layer row
            report = _unslimmed(report, slim_summary(meta))
        return report, _target_config(target, meta["config"]), refilled, obj
    raise ValueError(
        f"check_sparsity needs a prepared or squashed SMART model, a save_pruned folder or a state dict with "
        f"metadata; got {type(obj).__name__} without SMART state or config.smart_hf (was it pruned with smart_hf?)."
    )


def _target_config(target, recorded) -> SmartConfig:
    if isinstance(target, SmartConfig):
        return target
    if isinstance(target, Mapping) and "config" in target:
        return SmartConfig.from_dict(target["config"])
    if target is not None:
        raise TypeError(f"the target must be a SmartConfig or a config.smart_hf dict, got {type(target).__name__}.")
    return recorded if isinstance(recorded, SmartConfig) else SmartConfig.from_dict(recorded)


def _folder_report(path, target) -> tuple[dict, SmartConfig, list[str], nn.Module | None]:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} holds no config.json; pass the folder written by smart_hf.save_pruned.")
    model = load_slim(path)
    if not read_metadata(model):
        raise ValueError(f"{path!r} has no smart_hf entry in config.json: it was not written by smart_hf.save_pruned.")
    report, config, problems, model = _report_and_config(model, target)
    written = os.path.join(path, REPORT_NAME)
    if os.path.isfile(written):  # the report written at save time must describe the weights that were stored
        with open(written, encoding="utf-8") as fh:
            saved_total = json.load(fh)["total"]
        stored_total = sparsity_report(model)["total"]
        if (saved_total["weights"], saved_total["zeros"]) != (stored_total["weights"], stored_total["zeros"]):
            problems.append(
                f"{REPORT_NAME} records {saved_total['zeros']} zeros of {saved_total['weights']} targeted weights, "
                f"the stored weights hold {stored_total['zeros']} of {stored_total['weights']}"
            )
    return report, config, problems, model


def _state_dict_report(state_dict: Mapping, target) -> tuple[dict, SmartConfig, list[str]]:
    meta = getattr(target, "smart_hf", target)  # a PretrainedConfig holding the metadata works too
    if not (isinstance(meta, Mapping) and "layers" in meta and "config" in meta):
        raise ValueError(
            "checking a state dict needs its metadata: pass smart_config_or_metadata=model.config.smart_hf "
            "(or the config.json 'smart_hf' entry of the saved folder)."
        )
    rows = []
    for name, info in meta["layers"].items():
        weight = state_dict.get(f"{name}.weight")
        if weight is None:
            raise ValueError(
                f"the state dict has no {name}.weight; pass the state dict under the model's own module names "
                "(model.state_dict(), not a renamed checkpoint)."
            )
        layout = UnitLayout(
            info["kind"], tuple(info["shape"]), info["pattern"], tuple(info["block_shape"]), info["n"], info["m"]
        )
        rows.append(layer_report(name, weight.detach(), layout, None))
    weights, zeros = sum(r["weights"] for r in rows), sum(r["zeros"] for r in rows)
    report = {
        "mode": "state_dict",
        "layers": rows,
        "valid": all(r["valid"] for r in rows),
        "total": {"weights": weights, "zeros": zeros, "sparsity": zeros / max(weights, 1)},
    }
    refilled = refilled_layers(rows, meta)
    return _unslimmed(report, slim_summary(meta)), _target_config(None, meta["config"]), refilled, None


def refilled_layers(rows: list[dict], meta: Mapping) -> list[str]:
    """Problems for layers holding fewer zero weights than ``config.smart_hf`` recorded when the model was exported
    (``round(recorded_sparsity * weights)``): their zeros were refilled since, e.g. by a stock fine-tune. More zeros
    than recorded is not flagged (a kept weight may become exactly zero). Slimmed layers changed shape on purpose and
    are skipped."""
    slimmed = slimmed_widths(slim_summary(meta) or {})
    problems = []
    for row in rows:
        recorded = meta["layers"].get(row["name"], {}).get("sparsity")
        if recorded is None or row["name"] in slimmed:
            continue
        expected = round(recorded * row["weights"])
        if row["zeros"] < expected:
            problems.append(
                f"{row['name']}: {row['zeros']} zero weights, {expected} when it was exported (config.smart_hf "
                f"records sparsity {recorded:.4f}): the zeros were refilled"
            )
    return problems


def _unslimmed(report: dict, slim_meta: dict | None) -> dict:
    """Rows of a slimmed model (`smart_hf.slim`: FFN channels, attention heads, conv chains) rewritten to the
    geometry before slimming, so the budget is checked against what was pruned: each resized layer gets its
    pre-slim `UnitLayout` (from `slimmed_widths`), removed units count as pruned and removed weights as zeros;
    ``units_kept`` stays what the slim weight keeps."""
    if not slim_meta:
        return report
    widths = slimmed_widths(slim_meta)
    # q/k rows go with their head once its values are pruned, whether or not their own channel was kept
    dependent = {block[key] for block in slim_meta.get("heads", []) for key in ("q", "k")}
    for row in report["layers"]:
        if row["name"] in widths:
            _restore_pre_slim_geometry(row, widths[row["name"]], row["name"] in dependent)
        row["sparsity"] = row["zeros"] / row["weights"]
    weights = sum(r["weights"] for r in report["layers"])
    zeros = sum(r["zeros"] for r in report["layers"])
    report["total"] = {"weights": weights, "zeros": zeros, "sparsity": zeros / max(weights, 1)}
    return report


def _restore_pre_slim_geometry(row: dict, change: dict[str, tuple[int, int]], dependent: bool) -> None:
    """``change``: ``{"out"|"in": (before, after)}`` rows / input columns (Conv1D stores ``(in, out)``). For a
    ``dependent`` layer the removed units may have been kept ones: they are recorded as ``units_unknown``."""
    shape = list(row["shape"])
    out_axis, in_axis = (1, 0) if row["kind"] == "conv1d" else (0, 1)
    for axis, key in ((out_axis, "out"), (in_axis, "in")):
        if key in change:
            shape[axis] = change[key][0]
    before = UnitLayout(row["kind"], tuple(shape), row["pattern"], tuple(row["block_shape"]), row["n"], row["m"])
    row["zeros"] += before.num_weights - row["weights"]
    if dependent and row["pattern"] != "nm":
        row["units_unknown"] = before.num_units - row["units"]
    row["units"] = before.num_weights if row["pattern"] == "nm" else before.num_units
    row["unit_cost"], row["weights"] = before.unit_cost, before.num_weights


def budget_problems(rows: list[dict], config: SmartConfig) -> tuple[list[dict], list[str]]:
    """Compare report rows with the budgets ``config`` implies; returns ``(budget entries, problem strings)``.

    Pure bookkeeping on the rows' ``units``, ``units_kept`` and ``unit_cost`` (see the module docstring for the
    rules). N:M rows are checked by the pattern validity alone and get no budget entry.
    """
    entries, problems, shared = [], [], {}
    for row in rows:
        settings = unit_settings_for(row["name"], config)
        mismatch = _settings_mismatch(row, settings)
        if mismatch:
            problems.append(f"{row['name']}: {mismatch}")
            continue
        guard = reserved_units(row["units"], config.min_layer_density)
        if (
            row["pattern"] != "nm"
            and config.budget == "global"
            and row["units_kept"] + row.get("units_unknown", 0) < guard
        ):
            problems.append(
                f"{row['name']}: keeps {row['units_kept']} units, the min_layer_density guard keeps >= {guard}"
            )
        if row["pattern"] == "nm":
            continue
        if config.budget == "layer":
            expected = layer_keep_units(row["units"], settings.sparsity)
            found, unknown = row["units_kept"], row.get("units_unknown", 0)
            ok = found <= expected <= found + unknown
            entries.append(_entry("layer", settings.sparsity, [row], expected, _found(found, unknown), "units", ok))
        else:
            shared.setdefault(settings.sparsity, []).append(row)
    for sparsity, members in shared.items():
        entries.append(_global_entry(sparsity, members))
    for entry in entries:
        if not entry["ok"]:
            where = (
                entry["layers"][0]
                if len(entry["layers"]) == 1
                else f"global budget over {len(entry['layers'])} layers"
            )
            problems.append(
                f"{where} (sparsity {entry['sparsity']:g}): expected {entry['expected']} kept {entry['unit']}, "
                f"found {entry['found']}"
            )
    return entries, problems


def _settings_mismatch(row: dict, settings) -> str | None:
    """Why a row's unit geometry differs from what the config assigns to its layer, or ``None``."""

    def describe(pattern, block_shape, n, m):
        return {"block": f"block {list(block_shape)}", "channel": "channel", "nm": f"{n}:{m}"}[pattern]

    want = describe(settings.pattern, settings.block_shape, settings.n, settings.m)
    got = describe(row["pattern"], row["block_shape"], row["n"], row["m"])
    return None if want == got else f"pruned as {got}, but the config asks for {want}"


def _entry(kind: str, sparsity: float, rows: list[dict], expected, found, unit: str, ok: bool) -> dict:
    return {"kind": kind, "sparsity": sparsity, "layers": [r["name"] for r in rows], "expected": expected,
            "found": found, "unit": unit, "ok": ok}  # fmt: skip


def _global_entry(sparsity: float, rows: list[dict]) -> dict:
    """One global group: ``K = round((1 - s) W)`` weights; see the module docstring for the bound on what is kept."""
    budget = global_weight_budget(sum(r["weights"] for r in rows), sparsity)
    costs = {r["unit_cost"] for r in rows}
    if len(costs) == 1:  # one unit size: the half-unit rule pins an exact count
        cost = costs.pop()
        total_units = sum(r["units"] for r in rows)
        expected = min(total_units, max(0, math.ceil(budget / cost - 0.5)))
        found, unknown = sum(r["units_kept"] for r in rows), sum(r.get("units_unknown", 0) for r in rows)
        ok = found <= expected <= found + unknown
        return _entry("global", sparsity, rows, expected, _found(found, unknown), f"units of {cost} weights", ok)
    kept = sum(r["units_kept"] * r["unit_cost"] for r in rows)
    unknown = sum(r.get("units_unknown", 0) * r["unit_cost"] for r in rows)
    last = max((r["unit_cost"] for r in rows if r["units_kept"] > 0), default=0)
    nxt = max((r["unit_cost"] for r in rows if r["units_kept"] < r["units"]), default=0)
    ok = (kept == 0 or kept - last / 2 < budget) and (nxt == 0 or budget <= kept + unknown + nxt / 2)
    expected = f"{budget:.0f} (within half a unit: {budget - nxt / 2:g} <= kept < {budget + last / 2:g})"
    return _entry("global", sparsity, rows, expected, _found(kept, unknown), "weights", ok)


def _found(kept: int, unknown: int) -> int | str:
    """What a budget entry found: a count, or a range when slimming removed units of unknown status."""
    return kept if not unknown else f"{kept} to {kept + unknown} (slimming removed {unknown} of unknown status)"
