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
layer, and the totals count removed weights as zeros.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from torch import nn

from .budget import global_weight_budget, layer_keep_units, reserved_units
from .config import SmartConfig
from .constants import REPORT_NAME
from .granularity import UnitLayout
from .inject import _settings_for
from .lifecycle import unwrap_model
from .masking import SmartState
from .report import layer_report, sparsity_report

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

    Returns the `sparsity_report` dict plus ``"budget"`` (one entry per budget group: ``kind``, ``sparsity``,
    ``layers``, ``expected``, ``found``, ``ok``) and ``"verified": True``.
    """
    report, config, artifact_errors = _report_and_config(model_or_state_dict, smart_config_or_metadata)
    budget, budget_errors = budget_problems(report["layers"], config)
    problems = [f"{row['name']}: {p}" for row in report["layers"] for p in row["problems"]]
    problems += budget_errors + artifact_errors
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"sparsity check failed ({report['mode']} model, {len(problems)} problems):\n{lines}\n{FIX_HINT}"
        )
    return {**report, "budget": budget, "verified": True}


def _report_and_config(obj, target) -> tuple[dict, SmartConfig, list[str]]:
    """(report, target config, problems of the artifact itself) for any input `check_sparsity` accepts."""
    if isinstance(obj, (str, os.PathLike)):
        return _folder_report(obj, target)
    if isinstance(obj, Mapping):
        return _state_dict_report(obj, target)
    if isinstance(obj, nn.Module) and not isinstance(obj, SmartState):
        obj = unwrap_model(obj)  # DDP / accelerate wrappers hold the prepared model under .module
    state = obj if isinstance(obj, SmartState) else getattr(obj, "smart_state", None)
    if isinstance(state, SmartState):
        return sparsity_report(state), _target_config(target, state.smart_config), []
    meta = getattr(getattr(obj, "config", None), "smart_hf", None)
    if isinstance(obj, nn.Module) and meta:
        report = sparsity_report(obj)
        refilled = refilled_layers(report["layers"], meta)
        return _unslimmed(report, meta.get("slim")), _target_config(target, meta["config"]), refilled
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


def _folder_report(path, target) -> tuple[dict, SmartConfig, list[str]]:
    from .slimming import load_slim

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} holds no config.json; pass the folder written by smart_hf.save_pruned.")
    model = load_slim(path)
    if not getattr(model.config, "smart_hf", None):
        raise ValueError(f"{path!r} has no smart_hf entry in config.json: it was not written by smart_hf.save_pruned.")
    report, config, problems = _report_and_config(model, target)
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
    return report, config, problems


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
    return _unslimmed(report, meta.get("slim")), _target_config(None, meta["config"]), refilled


def refilled_layers(rows: list[dict], meta: Mapping) -> list[str]:
    """Problems for layers holding fewer zero weights than ``config.smart_hf`` recorded when the model was exported
    (``round(recorded_sparsity * weights)``): their zeros were refilled since, e.g. by a stock fine-tune. More zeros
    than recorded is not flagged (a kept weight may become exactly zero). Slimmed FFN layers changed shape on purpose
    and are skipped."""
    slimmed = {pair[key] for pair in (meta.get("slim") or {}).get("pairs", []) for key in ("fc1", "fc2")}
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
    """Count the channels `slim` removed as pruned units of their original layers (fc1 rows, fc2 input width), so the
    budget is checked against the pre-slim geometry: ``units += before - after`` for fc1, ``unit_cost = before``
    (times the kernel size, 1 for linears) for fc2."""
    if not slim_meta:
        return report
    rows = {row["name"]: row for row in report["layers"]}
    for pair in slim_meta["pairs"]:
        removed = pair["before"] - pair["after"]
        fc1, fc2 = rows.get(pair["fc1"]), rows.get(pair["fc2"])
        if fc1 is not None and fc1["pattern"] == "channel":
            fc1["units"] += removed
            fc1["zeros"] += removed * fc1["unit_cost"]
            fc1["weights"] = fc1["units"] * fc1["unit_cost"]
        if fc2 is not None and fc2["pattern"] == "channel":
            fc2["unit_cost"] = fc2["unit_cost"] // pair["after"] * pair["before"]
            fc2["zeros"] += fc2["units"] * removed * (fc2["unit_cost"] // pair["before"])
            fc2["weights"] = fc2["units"] * fc2["unit_cost"]
    for row in report["layers"]:
        row["sparsity"] = row["zeros"] / row["weights"]
    weights = sum(r["weights"] for r in report["layers"])
    zeros = sum(r["zeros"] for r in report["layers"])
    report["total"] = {"weights": weights, "zeros": zeros, "sparsity": zeros / max(weights, 1)}
    return report


def budget_problems(rows: list[dict], config: SmartConfig) -> tuple[list[dict], list[str]]:
    """Compare report rows with the budgets ``config`` implies; returns ``(budget entries, problem strings)``.

    Pure bookkeeping on the rows' ``units``, ``units_kept`` and ``unit_cost`` (see the module docstring for the
    rules). N:M rows are checked by the pattern validity alone and get no budget entry.
    """
    entries, problems, shared = [], [], {}
    for row in rows:
        settings = _settings_for(row["name"], config)
        mismatch = _settings_mismatch(row, settings)
        if mismatch:
            problems.append(f"{row['name']}: {mismatch}")
            continue
        guard = reserved_units(row["units"], config.min_layer_density)
        if row["pattern"] != "nm" and config.budget == "global" and row["units_kept"] < guard:
            problems.append(
                f"{row['name']}: keeps {row['units_kept']} units, the min_layer_density guard keeps >= {guard}"
            )
        if row["pattern"] == "nm":
            continue
        if config.budget == "layer":
            expected = layer_keep_units(row["units"], settings.sparsity)
            found = row["units_kept"]
            entries.append(_entry("layer", settings.sparsity, [row], expected, found, "units", expected == found))
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
        found = sum(r["units_kept"] for r in rows)
        return _entry("global", sparsity, rows, expected, found, f"units of {cost} weights", expected == found)
    kept = sum(r["units_kept"] * r["unit_cost"] for r in rows)
    last = max((r["unit_cost"] for r in rows if r["units_kept"] > 0), default=0)
    nxt = max((r["unit_cost"] for r in rows if r["units_kept"] < r["units"]), default=0)
    ok = (kept == 0 or kept - last / 2 < budget) and (nxt == 0 or budget <= kept + nxt / 2)
    expected = f"{budget:.0f} (within half a unit: {budget - nxt / 2:g} <= kept < {budget + last / 2:g})"
    return _entry("global", sparsity, rows, expected, kept, "weights", ok)
