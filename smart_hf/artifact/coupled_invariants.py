"""`check_sparsity` for ``pattern="coupled"`` (`smart_hf.coupling`): budgets over whole coupled units.

The SMART layers of a coupled model are only the owners (consumers); a unit also spans producer rows and BatchNorm
entries that no report row describes. So the check works on the coupled sets recorded in ``config.smart_hf
["coupled"]`` (or held by a prepared model's owner layers) and the model itself:

* sizes: every member has ``chunks * units * width`` entries along its axis, ``units`` being the set's count after
  `slim` (``config.smart_hf["slim"]["coupled"]``) or before it;
* whole units: a pruned unit (consumer columns all zero, or mask 0) has all-zero producer rows, biases and
  BatchNorm weight/bias (checked once the mask is hard); units `slim` removed count as pruned;
* budget, with ``U_i`` units of cost ``c_i`` per set: ``budget="layer"`` -- every set keeps
  ``layer_keep_units(U_i, s)`` units; ``budget="global"`` -- ``K = round((1 - s) * sum U_i c_i)`` and the kept
  cost ``K'`` satisfies ``K' - c_last / 2 < K <= K' + c_next / 2`` (`hard_topk`, with the largest kept / dropped
  cost), and every set keeps its ``reserved_units(U_i, min_layer_density)``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import SmartConfig
from ..core.budget import global_weight_budget, layer_keep_units, reserved_units
from ..coupled_owners import coupled_records
from ..coupling import CoupledSet, entries_mask, member_size
from ..latency import resolved_width_multiple
from ..metadata import read as read_metadata
from ..metadata import slim_summary
from ..slim.coupled import unit_alive
from ..state import SmartState

__all__ = ["coupled_budget_problems"]


def _sources(obj) -> tuple[list[dict], dict[str, int], dict[str, torch.Tensor], bool, object, dict | None]:
    """(records, {owner: units after slim}, {owner: unit mask of a prepared model}, partners must be zero,
    name -> module, the solved speed-target budget or None) for a prepared model / its `SmartState`, or a squashed /
    slimmed model."""
    state = obj if isinstance(obj, SmartState) else getattr(obj, "smart_state", None)
    if isinstance(state, SmartState):
        masks, modules = {}, {}
        for group_index, group in enumerate(state.groups):
            for layer, mask in zip(group.layers, state.hard_group_masks(group_index)):
                binding = layer.__dict__.get("_smart_coupled")
                if binding is None:
                    continue
                cset = binding.cset
                masks[cset.owner], modules[cset.owner] = mask.reshape(-1).cpu() != 0, layer
                partners = [m.name for m in cset.members if m.name != cset.owner]
                modules.update(zip(partners, binding.partners))
        speed = getattr(state, "speed_target", None)
        return coupled_records(state.layers), {}, masks, state.mode_name == "hard", modules.__getitem__, speed
    meta = read_metadata(obj) or {}
    slimmed = {r["set"]["owner"]: r["after"] for r in (slim_summary(meta) or {}).get("coupled", [])}
    return meta.get("coupled") or [], slimmed, {}, True, obj.get_submodule, meta.get("speed_target")


def _set_problems(module_of, cset: CoupledSet, alive: torch.Tensor | None) -> list[str]:
    """Size problems of every member; with ``alive`` also the non-zero entries of pruned units in the partners."""
    problems = []
    for member in cset.members:
        size = member_size(module_of(member.name), member.axis)
        if size != member.chunks * cset.units * member.width:
            problems.append(
                f"{member.name}: {size} entries along {member.axis!r}, the {cset.units} units of {cset.owner} "
                f"need {member.chunks * cset.units * member.width}"
            )
    if problems or alive is None:
        return problems
    for member in cset.members:
        if member.name == cset.owner:
            continue
        module, rows = module_of(member.name), entries_mask(member, ~alive)
        for tensor in (module.weight, getattr(module, "bias", None)):
            if tensor is None:
                continue
            view = tensor.detach().t() if member.axis == "out" and type(module).__name__ == "Conv1D" else tensor
            dirty = int((view.reshape(view.shape[0], -1)[rows.to(view.device)] != 0).any(dim=-1).sum())
            if dirty:
                problems.append(
                    f"{member.name}: {dirty} entries of pruned units of {cset.owner} are non-zero "
                    "(a coupled unit must be zero in every layer it spans)"
                )
                break
    return problems


def coupled_budget_problems(model_or_state, config: SmartConfig) -> tuple[list[dict], list[str]]:
    """``(budget entries, problems)`` of a coupled model or `SmartState` (see the module docstring)."""
    records, slimmed, masks, check_partners, module_of, speed = _sources(model_or_state)
    if not records:
        return [], [
            "config asks for pattern='coupled' but the model records no coupled sets (config.smart_hf"
            "['coupled']); it was not pruned with pattern='coupled'"
        ]
    rows, problems = [], []
    for record in records:
        full = CoupledSet.from_dict(record["set"])
        current = dataclasses.replace(full, units=slimmed.get(full.owner, full.units))
        size_problems = _set_problems(module_of, current, None)
        if size_problems:
            problems += size_problems
            continue
        alive = masks.get(full.owner)
        alive = unit_alive(module_of(full.owner), current) if alive is None else alive
        problems += _set_problems(module_of, current, alive) if check_partners else []
        rows.append({"name": full.owner, "units": full.units, "kept": int(alive.sum()), "cost": record["unit_cost"]})
    if config.sparsity is None and not speed:
        return [], problems + [
            "config asks for target_speedup but the model records no solved time budget (config.smart_hf"
            "['speed_target']); it was not pruned by this smart_hf version's speed target"
        ]
    return _budget(rows, config, problems, speed)


def _budget(rows: list[dict], config: SmartConfig, problems: list[str], speed: dict | None = None):
    # a speed target is a global budget over measured unit times: the equivalent sparsity it was solved to
    s = config.sparsity if config.sparsity is not None else speed["sparsity"]
    entries = []
    if config.budget == "layer":
        for row in rows:
            expected = layer_keep_units(row["units"], s)
            entries.append(
                {
                    "kind": "layer",
                    "sparsity": s,
                    "layers": [row["name"]],
                    "expected": expected,
                    "found": row["kept"],
                    "unit": "coupled units",
                    "ok": row["kept"] == expected,
                }
            )
    else:
        total = sum(r["units"] * r["cost"] for r in rows)
        budget, kept = global_weight_budget(total, s), sum(r["kept"] * r["cost"] for r in rows)
        # width rounding moves a layer's kept count by whole multiples: one chunk of the costliest unit either way
        chunk = resolved_width_multiple(config, "cpu") if speed is None else int(speed["width_multiple"])
        last = max((r["cost"] for r in rows if r["kept"] > 0), default=0) * chunk
        nxt = max((r["cost"] for r in rows if r["kept"] < r["units"]), default=0) * chunk
        if chunk == 1:
            ok = (kept == 0 or kept - last / 2 < budget) and (nxt == 0 or budget <= kept + nxt / 2)
            within = f"half a unit: {budget - nxt / 2:g} <= kept < {budget + last / 2:g}"
        else:
            ok = abs(kept - budget) <= max(last, nxt)
            within = f"one {chunk}-unit chunk: |kept - budget| <= {max(last, nxt):g}"
        entries.append(
            {
                "kind": "global",
                "sparsity": s,
                "layers": [r["name"] for r in rows],
                "expected": f"{budget:.0f} (within {within})",
                "found": kept,
                "unit": "coupled cost",
                "ok": ok,
                "removed_fraction": 1 - kept / max(total, 1),
            }
        )
        for row in rows:
            guard = reserved_units(row["units"], config.min_layer_density)
            if row["kept"] < guard:
                problems.append(
                    f"{row['name']}: keeps {row['kept']} coupled units, the min_layer_density guard keeps >= {guard}"
                )
    for entry in entries:
        if not entry["ok"]:
            problems.append(
                f"{entry['layers'][0] if len(entry['layers']) == 1 else 'global coupled budget'} "
                f"(sparsity {entry['sparsity']:g}): expected {entry['expected']} kept {entry['unit']}, "
                f"found {entry['found']}"
            )
    return entries, problems
