"""The owner layers of coupled sets while a model is prepared (``SmartConfig(pattern="coupled")``): which sets are
targeted, the owner's layout (one block per unit), and the `CoupledBinding` that ties an owner to its partner layers.

The sets themselves, their unit costs and their index helpers are `smart_hf.coupling`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.fill import zero_where_
from .core.granularity import UnitLayout, layer_kind
from .coupling import (
    CoupledSet,
    coupled_unit_cost,
    entries_mask,
    find_coupled_sets,
    is_conv1d,
    no_coupling_message,
)

__all__ = [
    "CoupledBinding",
    "bind_owners",
    "coupled_records",
    "coupled_targets",
    "owner_layout",
    "refuse_per_head_tables",
]


class CoupledBinding:
    """What an owner layer knows about its set while prepared: the set, its budget cost per unit and the partner
    modules (held directly: deepcopy/pickle of the model keep them identical to the model's own).

    Args:
        cset: the coupled set.
        unit_cost: the budget cost of one unit: MACs (kept an int) or, with a speed target, nanoseconds (a float).
        partners: the set's member modules other than the owner, in ``cset.members`` order.
    """

    def __init__(self, cset: CoupledSet, unit_cost: float, partners: list[nn.Module]):
        # MACs (an int) for a sparsity budget; measured seconds (a float) for a speed target (`smart_hf.latency`)
        self.cset, self.partners = cset, partners
        self.unit_cost = int(unit_cost) if float(unit_cost).is_integer() else float(unit_cost)

    @torch.no_grad()
    def zero_partners_(self, unit_mask: torch.Tensor) -> None:
        """Zero every producer row (+ bias) and BatchNorm entry (weight and bias) of the pruned units, in place."""
        members = [m for m in self.cset.members if m.name != self.cset.owner]
        pruned = unit_mask.reshape(-1) == 0
        for member, module in zip(members, self.partners):
            rows = entries_mask(member, pruned)
            for tensor in (module.weight, getattr(module, "bias", None)):
                if tensor is None:
                    continue
                rows_d = rows.to(tensor.device)
                if is_conv1d(module) and tensor.dim() == 2:
                    zero_where_(tensor, rows_d.reshape(1, -1))
                else:
                    zero_where_(tensor, rows_d.reshape(-1, *[1] * (tensor.dim() - 1)))

    def partner_square_sums(self) -> torch.Tensor:
        """Per unit, the sum of squared partner weights (for magnitude scores over the whole unit); float32."""
        total = torch.zeros(self.cset.units)
        members = [m for m in self.cset.members if m.name != self.cset.owner]
        for member, module in zip(members, self.partners):
            if isinstance(module, nn.BatchNorm2d):
                continue
            w = module.weight.detach().float()
            w = w.t() if is_conv1d(module) else w.reshape(w.shape[0], -1)  # (out entries, rest)
            per_entry = w.square().sum(1).cpu().reshape(member.chunks, self.cset.units, member.width)
            total += per_entry.sum(dim=(0, 2))
        return total


def owner_layout(module: nn.Module, cset: CoupledSet) -> UnitLayout:
    """The owner's SMART layout: ``block`` units of ``(out_features, width)`` -- one block per coupled unit."""
    kind = layer_kind(module)
    if kind is None:
        raise ValueError(f"{cset.owner} ({type(module).__name__}) cannot hold coupled scores.")
    layout = UnitLayout(kind, tuple(module.weight.shape), "block", (0, 0))
    return UnitLayout(kind, layout.weight_shape, "block", (layout.out_features, cset.member(cset.owner).width))


def coupled_targets(model: nn.Module, selected) -> list[tuple[str, nn.Module, UnitLayout]]:
    """``(owner name, owner module, owner layout)`` of every coupled set whose weight layers all pass
    ``selected(name, module)`` (the usual targeting rules).

    Args:
        model: the model to prepare.
        selected: ``selected(name, module) -> bool``, the targeting rules.

    Returns:
        One triple per chosen set, in module order.

    Raises:
        ValueError: naming the fix, when the model has no coupled set, the targets leave none, or a chosen head
            set has per-head parameters slim cannot cut (`refuse_per_head_tables`).
    """
    sets = find_coupled_sets(model)
    if not sets:
        raise ValueError(no_coupling_message(model))
    chosen = []
    for cset in sets:
        weighted = [m for m in cset.members if m.axis != "norm"]
        if all(selected(m.name, model.get_submodule(m.name)) for m in weighted):
            owner = model.get_submodule(cset.owner)
            chosen.append((cset.owner, owner, owner_layout(owner, cset)))
    refuse_per_head_tables(model, [s for s in sets if s.owner in {c[0] for c in chosen}])
    if not chosen:
        raise ValueError(
            f"pattern='coupled' found {len(sets)} coupled sets but target_modules / target_regex / exclude_modules "
            "leave none with every layer selected; loosen the targets (every layer of a set must be selected)."
        )
    return chosen


def bind_owners(model: nn.Module, names: list[str], layers: list[nn.Module], tokens: int) -> None:
    """Attach a `CoupledBinding` to each prepared owner layer (``names[i]`` is ``layers[i]``'s module name)."""
    by_owner = {s.owner: s for s in find_coupled_sets(model)}
    for name, layer in zip(names, layers):
        cset = by_owner[name]
        partners = [model.get_submodule(m.name) for m in cset.members if m.name != cset.owner]
        object.__setattr__(
            layer, "_smart_coupled", CoupledBinding(cset, coupled_unit_cost(model, cset, tokens), partners)
        )


def coupled_records(layers: list[nn.Module]) -> list[dict]:
    """``config.smart_hf["coupled"]``: ``{"set": CoupledSet.to_dict(), "unit_cost"}`` per prepared owner layer."""
    out = []
    for layer in layers:
        binding = layer.__dict__.get("_smart_coupled")
        if binding is not None:
            out.append({"set": binding.cset.to_dict(), "unit_cost": binding.unit_cost})
    return out


def refuse_per_head_tables(model: nn.Module, chosen_sets: list[CoupledSet]) -> None:
    """Refuse head sets whose attention module holds per-head parameters that are not members of the set (Swin's
    ``relative_position_bias_table`` has one column per head): removing a head would leave its table column in
    place and the slim forward would fail to broadcast.

    Args:
        model: the model being prepared.
        chosen_sets: the coupled sets selected for pruning.

    Raises:
        ValueError: naming the parameter and the fix (prune FFNs only, or another pattern).
    """
    for cset in chosen_sets:
        if cset.kind != "heads" or cset.attention is None:
            continue
        attention = model.get_submodule(cset.attention)
        members = {id(p) for m in cset.members for p in model.get_submodule(m.name).parameters()}
        extra = [n for n, p in attention.named_parameters() if id(p) not in members]
        if extra:
            parts, common = cset.owner.split("."), cset.attention.split(".")
            shared = next((i for i, (a, b) in enumerate(zip(parts, common)) if a != b), len(common))
            suffix = ".".join(parts[max(shared - 1, 0) :])  # e.g. "attention.o_proj": this set's owner in every block
            raise ValueError(
                f"pattern='coupled' cannot remove attention heads of {type(model).__name__}: {cset.attention} "
                f"holds per-head parameters besides q/k/v/o ({', '.join(extra[:3])}) that slim would leave at the "
                f"full head count. Prune only its FFN neurons with exclude_modules=[{suffix!r}], or use "
                "pattern='channel' / 'block'."
            )
