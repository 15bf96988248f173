"""Property tests (hypothesis): the operator, the unit layouts, the budgets and the config validation hold for random
shapes, patterns, sparsities and (possibly invalid) config values -- not only for the hand-picked cases elsewhere.

Examples per property are kept modest (``max_examples`` 25-40, no deadline) so the file runs in seconds.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

import smart_hf as sh
from smart_hf.config import SmartConfig
from smart_hf.core.budget import global_weight_budget, layer_keep_units, reserved_units

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the operator -------------------------------------------------------------------------------------------------


@FAST
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n=st.integers(2, 60),
    k_frac=st.floats(0.0, 1.0),
    per_row_k=st.booleans(),
    log_tau=st.floats(-6.0, 1.0),
    log_scale=st.sampled_from([-6.0, -2.0, 0.0, 3.0, 6.0]),
    seed=st.integers(0, 2**16),
)
def test_soft_topk_rows_sum_to_k_and_stay_in_unit_interval(lead, n, k_frac, per_row_k, log_tau, log_scale, seed):
    """Any leading shape, one k per row or one for all, tau down to 1e-6, scores scaled 1e-6..1e6."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*lead, n, generator=g) * 10.0**log_scale
    k = torch.rand(tuple(lead), generator=g, dtype=torch.float64) * n if per_row_k else k_frac * n
    f = sh.soft_topk(scores, k, 10.0**log_tau)
    assert f.shape == scores.shape and torch.isfinite(f).all()
    assert ((f >= 0) & (f <= 1)).all()
    target = torch.as_tensor(k, dtype=torch.float64).expand(tuple(lead))
    assert (f.double().sum(-1) - target).abs().max() <= 1e-4
    order = scores.argsort(-1)  # f is non-decreasing along increasing scores
    assert (torch.gather(f, -1, order).diff(dim=-1) >= -1e-6).all()


@FAST
@given(
    n=st.integers(2, 60),
    k_frac=st.floats(0.0, 1.0),
    log_tau=st.floats(-6.0, 1.0),
    max_cost=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_cost_weighted_soft_topk_spends_exactly_the_weight_budget(n, k_frac, log_tau, max_cost, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g)
    cost = torch.randint(1, max_cost + 1, (n,), generator=g).double()
    k = k_frac * float(cost.sum())
    f = sh.soft_topk(scores, k, 10.0**log_tau, cost=cost)
    assert ((f >= 0) & (f <= 1)).all()
    assert abs(float((cost * f.double()).sum()) - k) <= 1e-5 * max(1.0, float(cost.sum()))


@FAST
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 50),
    k_frac=st.floats(0.0, 1.0),
    levels=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_hard_topk_keeps_exactly_k_and_breaks_ties_by_lower_index(rows, n, k_frac, levels, seed):
    """Scores drawn from a few levels so ties across the k-th position are common: the kept set must be exactly
    the first k of the order (score descending, index ascending)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, n), generator=g).float()
    k = round(k_frac * n)
    h = sh.hard_topk(scores, k)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert (h.sum(-1) == k).all()
    for r in range(rows):
        ranked = sorted(range(n), key=lambda i: (-scores[r, i].item(), i))
        assert sorted(h[r].nonzero().flatten().tolist()) == sorted(ranked[:k])


@FAST
@given(n=st.integers(1, 50), k_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_hard_topk_with_costs_is_a_ranked_prefix_within_half_a_unit(n, k_frac, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n,), generator=g).float()
    cost = torch.randint(1, 20, (n,), generator=g).double()
    k = k_frac * float(cost.sum())
    h = sh.hard_topk(scores, k, cost=cost).double()
    ranked = sorted(range(n), key=lambda i: (-scores[i].item(), i))
    kept = [i for i in ranked if h[i] == 1]
    assert kept == ranked[: len(kept)]  # a prefix of the ranking: no unit skipped for a cheaper one
    kept_cost = float((h * cost).sum())
    # stopping rule: the next unit would overshoot k by more than half of itself
    assert kept_cost - k <= 0.5 * float(cost.max())
    if len(kept) < n:
        assert kept_cost + 0.5 * float(cost[ranked[len(kept)]]) >= k


# --- budgets ------------------------------------------------------------------------------------------------------


@FAST
@given(units=st.integers(1, 10_000), sparsity=st.floats(0.0, 0.999), density=st.floats(0.0, 0.999))
def test_budget_helpers_are_exact_integer_counts(units, sparsity, density):
    keep = layer_keep_units(units, sparsity)
    assert isinstance(keep, int) and 1 <= keep <= units
    assert keep == max(1, min(units, round((1 - sparsity) * units)))
    reserved = reserved_units(units, density)
    assert isinstance(reserved, int) and max(1, math.ceil(density * units - 1e-9)) == max(1, min(reserved, units))
    budget = global_weight_budget(units * 16, sparsity)
    assert budget == int(budget) and abs(budget - (1 - sparsity) * units * 16) <= 0.5


@FAST
@given(units=st.integers(-3, 10), sparsity=st.floats(allow_nan=True, allow_infinity=True))
def test_budget_helpers_refuse_what_they_cannot_count(units, sparsity):
    valid = units >= 1 and 0.0 <= sparsity < 1.0
    if valid:
        assert 1 <= layer_keep_units(units, sparsity) <= units
    else:
        with pytest.raises(ValueError, match="sparsity must be in|at least one unit"):
            layer_keep_units(units, sparsity)


# --- hard masks of prepared layers form a valid pattern -------------------------------------------------------------


class _Layers(nn.Module):
    """One layer of each supported kind; dims are drawn by the test as multiples of the unit."""

    def __init__(self, linear, conv, conv1d):
        super().__init__()
        self.lin = nn.Linear(linear[1], linear[0])
        self.conv = nn.Conv2d(conv[1], conv[0], kernel_size=conv[2])
        self.c1d = Conv1D(conv1d[0], conv1d[1])  # nf=out, nx=in: weight stored (in, out)


def _weight_mask(layer) -> torch.Tensor:
    """The hard mask broadcast to the layer's real weight shape."""
    return torch.broadcast_to(layer.smart_layout.expand(layer.smart_mask), layer.weight.shape)


def _out_in_kernel(layer, mask: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor viewed as ``(out, in, kernel positions)``."""
    if isinstance(layer, Conv1D):
        return mask.t().unsqueeze(-1)
    return mask.reshape(mask.shape[0], mask.shape[1], -1)


def _check_pattern(layer) -> None:
    layout = layer.smart_layout
    mask = _out_in_kernel(layer, _weight_mask(layer))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    out, inp, s = mask.shape
    if layout.pattern == "nm":  # exactly n kept in every m consecutive inputs, at every output and kernel position
        groups = mask.permute(0, 2, 1).reshape(out, s, inp // layout.m, layout.m).sum(-1)
        assert (groups == layout.n).all()
    elif layout.pattern == "channel":  # whole output rows
        assert (mask == mask[:, :1, :1]).all()
    else:  # whole r x c blocks, spanning the kernel
        r, c = layout.block_shape
        blocks = mask.reshape(out // r, r, inp // c, c, s)
        assert (blocks == blocks[:, :1, :, :1, :1]).all()
    squashed = layout.apply(layer.weight.detach(), layer.smart_mask)
    assert torch.equal(squashed == 0, layer.smart_layout.expand(layer.smart_mask).expand_as(squashed) == 0)


PATTERNS = st.one_of(
    st.tuples(st.just("block"), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4])),
    st.tuples(st.just("channel"), st.just(1), st.just(1)),
    st.tuples(st.just("nm"), st.integers(1, 3), st.just(4)),  # (pattern, n or r, m or c)
)


@FAST
@given(
    unit=PATTERNS,
    mult=st.lists(st.integers(1, 3), min_size=6, max_size=6),
    kernel=st.sampled_from([1, 3]),
    sparsity=st.floats(0.0, 0.95),
    budget=st.sampled_from(["global", "layer"]),
    density=st.sampled_from([0.0, 0.05]),
    seed=st.integers(0, 2**16),
)
def test_hard_masks_form_a_valid_pattern_with_exact_budgets(unit, mult, kernel, sparsity, budget, density, seed):
    pattern, a, b = unit
    r, c = (a, b) if pattern == "block" else (1, 1)
    step_in = 4 if pattern == "nm" else c
    dims = [
        (r * mult[0] * 2, step_in * mult[1]),
        (r * mult[2] * 2, step_in * mult[3]),
        (r * mult[4], step_in * mult[5]),
    ]
    torch.manual_seed(seed)
    model = _Layers(dims[0], (*dims[1], kernel), dims[2])
    kwargs = {"pattern": "nm", "n": a, "m": b} if pattern == "nm" else {"pattern": pattern, "sparsity": sparsity}
    if pattern == "block":
        kwargs["block_shape"] = [r, c]
    config = SmartConfig(budget=budget, min_layer_density=density, score_noise=0.1, score_seed=seed, **kwargs)
    try:
        sh.prepare_model(model, config)
    except ValueError as err:  # only a guard the budget cannot honour may refuse here
        assert "lower min_layer_density or sparsity" in str(err)
        event("guard refused")
        return
    state = sh.get_smart_state(model)
    sh.harden(model)
    for layer in state.layers:
        _check_pattern(layer)
    for group in state.groups:
        masks = [layer.smart_mask.double() for layer in group.layers]
        if group.kind == "nm":
            assert (masks[0].sum(-1) == group.layers[0].smart_layout.n).all()
        elif group.kind == "layer":  # exact integer count per layer
            layout = group.layers[0].smart_layout
            assert masks[0].sum().item() == layer_keep_units(layout.num_units, config.sparsity)
        else:  # one top-k over all layers: the weight budget to within half a unit, every reserved unit kept
            costs = [layer.smart_layout.unit_cost for layer in group.layers]
            kept = sum(float(m.sum()) * cost for m, cost in zip(masks, costs))
            total = sum(layer.smart_layout.num_weights for layer in group.layers)
            assert abs(kept - global_weight_budget(total, config.sparsity)) <= 0.5 * max(costs)
            for m, q in zip(masks, group.reserved):
                assert m.sum() >= q


@FAST
@given(
    unit=PATTERNS,
    sparsity=st.floats(0.0, 0.95),
    budget=st.sampled_from(["global", "layer"]),
    log_tau=st.floats(-6.0, 0.0),
    seed=st.integers(0, 2**16),
)
def test_soft_masks_of_prepared_layers_spend_the_budget_exactly(unit, sparsity, budget, log_tau, seed):
    pattern, a, b = unit
    kwargs = {"pattern": "nm", "n": a, "m": b} if pattern == "nm" else {"pattern": pattern, "sparsity": sparsity}
    if pattern == "block":
        kwargs["block_shape"] = [a, b]
    torch.manual_seed(seed)
    model = _Layers((16, 8), (8, 8, 3), (8, 16))
    try:
        sh.prepare_model(model, SmartConfig(budget=budget, score_noise=0.1, score_seed=seed, **kwargs))
    except ValueError as err:  # one unit per layer is always reserved: a high sparsity of big units cannot fit
        assert "lower min_layer_density or sparsity" in str(err)
        return
    sh.set_temperature(model, 10.0**log_tau)
    state = sh.get_smart_state(model)
    for gi, group in enumerate(state.groups):
        with torch.no_grad():
            masks = [m.double() for m in state.soft_group_masks(gi)]
        assert all(((m >= 0) & (m <= 1)).all() for m in masks)
        if group.kind == "nm":
            assert (masks[0].sum(-1) - group.k).abs().max() <= 1e-4
        elif group.kind == "layer":
            assert abs(float(masks[0].sum()) - group.k) <= 1e-4
        else:
            kept = sum(float(m.sum()) * layer.smart_layout.unit_cost for m, layer in zip(masks, group.layers))
            assert abs(kept - group.k) <= 1e-5 * group.k + 1e-4


# --- random (possibly invalid) config values: a clear ValueError or nothing -----------------------------------------

WILD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 40), st.sampled_from([0, 1, 0.5, 1e-6, -1e-6])
)


def _mostly(valid, wild=WILD_NUMBERS):
    """Three draws in four from the valid range: with a dozen fields, runs that get past SmartConfig stay common."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else wild)


VALID_OVERRIDE = st.fixed_dictionaries(
    {"regex": st.sampled_from([r"lin", r"c1d", r"conv"])},
    optional={"sparsity": st.floats(0.0, 0.9), "pattern": st.sampled_from(["block", "channel"])},
)
WILD_OVERRIDE = st.fixed_dictionaries(
    {"regex": st.sampled_from([r"lin", "[", r".*"])},
    optional={"sparsity": WILD_NUMBERS, "n": st.integers(-1, 5), "pattern": st.sampled_from(["nm", "blk"])},
)
FIELD_VALUES = {
    "pattern": _mostly(st.sampled_from(["block", "channel", "nm"]), st.sampled_from(["row", "", "NM"])),
    "block_shape": _mostly(
        st.lists(st.sampled_from([1, 2, 4]), min_size=2, max_size=2), st.lists(st.integers(-2, 9), max_size=3)
    ),
    "n": _mostly(st.integers(1, 3), st.integers(-2, 9)),
    "m": _mostly(st.just(4), st.integers(-2, 9)),
    "sparsity": _mostly(st.one_of(st.none(), st.floats(0.0, 0.9))),
    "budget": _mostly(st.sampled_from(["global", "layer"]), st.just("local")),
    "min_layer_density": _mostly(st.floats(0.0, 0.2)),
    "score_noise": _mostly(st.floats(0.0, 1.0)),
    "tau_start": _mostly(st.floats(1e-2, 10.0)),
    "tau_end": _mostly(st.floats(1e-6, 1e-2)),
    "dynamic_cut": _mostly(st.floats(0.1, 0.9)),
    "dynamic_window": _mostly(st.integers(1, 50), st.integers(-3, 0)),
    "target_regex": _mostly(st.sampled_from([None, r".*", r"lin|conv"]), st.sampled_from(["([", r".*(", "*", "x"])),
    "overrides": _mostly(
        st.one_of(st.none(), st.lists(VALID_OVERRIDE, max_size=1)), st.lists(WILD_OVERRIDE, max_size=2)
    ),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({}, optional=FIELD_VALUES))
def test_random_config_values_give_a_working_run_or_a_clear_value_error(values):
    """Either SmartConfig accepts the values and prepare/forward/harden work (or prepare refuses with a
    ValueError), or SmartConfig raises a ValueError whose message names an offending field and what to do."""
    try:
        config = SmartConfig(**values)
    except ValueError as err:
        message = str(err)
        named = {name for name in list(values) + ["override", "N:M"] if name in message}
        assert named, f"the message names no field: {message}"
        assert re.search(r"e\.g\.|choose one of|;|swap|allowed", message), f"no fix in: {message}"
        event("SmartConfig refused")
        return
    model = _Layers((16, 8), (8, 8, 1), (8, 16))
    try:
        sh.prepare_model(model, config)
    except ValueError as err:
        assert re.search(r"divid|adjust the targets|lower min_layer_density|disjoint", str(err)), str(err)
        event("prepare_model refused")
        return
    event("prepared and hardened")
    sh.set_temperature(model, config.tau_end)
    state = sh.get_smart_state(model)
    for gi in range(len(state.groups)):
        assert all(torch.isfinite(m).all() for m in state.soft_group_masks(gi))
    sh.harden(model)
    for layer in state.layers:
        _check_pattern(layer)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["sparsity", "n", "m", "tau_start", "score_seed", "block_shape", "target_modules"]),
    value=st.one_of(
        st.text(max_size=4), st.booleans(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)
    ),
)
def test_wrongly_typed_values_raise_a_type_error_naming_the_field(name, value):
    with pytest.raises(TypeError) as info:
        SmartConfig(**{name: value})
    assert name in str(info.value)
