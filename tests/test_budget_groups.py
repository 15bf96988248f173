"""The budget-group solver on plain tensors: no model, only score tensors and layouts."""

from types import SimpleNamespace

import pytest
import torch

from smart_hf.budget_groups import (
    BudgetGroup,
    _hard_global_topk,
    build_groups,
    flatten_scores,
    hard_group_masks,
    reserved_unit_mask,
    soft_global_topk,
    soft_group_masks,
    soft_nm_batch,
    split_flat_mask,
    unit_cost_vector,
)
from smart_hf.core.granularity import UnitLayout
from smart_hf.core.topk import hard_topk, soft_topk


def _layer(out_features, in_features, pattern="block", block_shape=(2, 2), n=2, m=4, seed=0):
    """A stand-in for a prepared layer: a unit layout and a score tensor, nothing else."""
    layout = UnitLayout("linear", (out_features, in_features), pattern, tuple(block_shape), n, m)
    scores = torch.randn(layout.score_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return SimpleNamespace(smart_layout=layout, smart_scores=scores)


def _global_group(sparsity=0.6, min_layer_density=0.1):
    layers = [_layer(8, 8, seed=1), _layer(4, 12, block_shape=(2, 4), seed=2), _layer(6, 4, seed=3)]
    (group,) = build_groups(layers, [sparsity] * 3, "global", min_layer_density)
    return group


@pytest.mark.parametrize("temperature", [1.0, 0.1, 1e-3])
def test_soft_global_masks_spend_the_weight_budget(temperature):
    group = _global_group()
    masks = soft_group_masks(group, temperature, group.k)
    kept = sum(float(m.sum()) * layer.smart_layout.unit_cost for m, layer in zip(masks, group.layers))
    assert kept == pytest.approx(group.k, rel=1e-9)
    assert all(m.shape == layer.smart_layout.score_shape for m, layer in zip(masks, group.layers))
    assert all(((m >= 0) & (m <= 1)).all() for m in masks)
    assert group.shift_warm_start is not None  # the next solve starts from this one's shift


@pytest.mark.parametrize("temperature", [1.0, 1e-2])
def test_soft_layer_and_nm_masks_keep_k_per_group_and_row(temperature):
    layer_group = BudgetGroup("layer", [_layer(8, 8, seed=4)], 5.0)
    (mask,) = soft_group_masks(layer_group, temperature, layer_group.k)
    assert float(mask.sum()) == pytest.approx(5.0, rel=1e-9)
    nm_group = BudgetGroup("nm", [_layer(4, 16, pattern="nm", seed=5)], 2.0)
    (rows,) = soft_group_masks(nm_group, temperature, nm_group.k)
    torch.testing.assert_close(rows.sum(-1), torch.full((rows.shape[0],), 2.0, dtype=rows.dtype))


def test_soft_masks_sum_to_an_annealed_budget_too():
    group = _global_group()
    k = 0.5 * (group.k + group.capacity())  # what the budget anneal asks half way
    masks = soft_group_masks(group, 0.5, k, warm=False)
    kept = sum(float(m.sum()) * layer.smart_layout.unit_cost for m, layer in zip(masks, group.layers))
    assert kept == pytest.approx(k, rel=1e-9)
    assert group.shift_warm_start is None  # a probe without the warm start leaves none behind


def test_hard_global_masks_are_the_zero_temperature_limit_with_reserved_units():
    group = _global_group(sparsity=0.7, min_layer_density=0.25)
    hard = hard_group_masks(group)
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in hard)
    for mask, layer, reserved in zip(hard, group.layers, group.reserved):
        assert int(mask.sum()) >= reserved  # min_layer_density holds in every layer
        best = torch.topk(layer.smart_scores.reshape(-1), reserved).indices
        assert bool(mask.reshape(-1)[best].all())
    kept = sum(float(m.sum()) * layer.smart_layout.unit_cost for m, layer in zip(hard, group.layers))
    assert abs(kept - group.k) <= max(layer.smart_layout.unit_cost for layer in group.layers) / 2
    # at a tiny temperature the soft mask is binary but for the one unit that meets the weight budget exactly
    soft = soft_group_masks(group, 1e-6, group.k, warm=False)
    off = sum(int(((s.detach() - h).abs() > 1e-3).sum()) for h, s in zip(hard, soft))
    assert off <= 1


def test_hard_layer_and_nm_masks_equal_hard_topk_of_the_scores():
    layer = _layer(8, 8, seed=6)
    (mask,) = hard_group_masks(BudgetGroup("layer", [layer], 7.0))
    torch.testing.assert_close(mask, hard_topk(layer.smart_scores.reshape(-1), 7.0).reshape(mask.shape))
    nm = _layer(4, 16, pattern="nm", seed=7)
    (rows,) = hard_group_masks(BudgetGroup("nm", [nm], 2.0))
    torch.testing.assert_close(rows, hard_topk(nm.smart_scores, 2.0))


def test_flatten_and_split_round_trip():
    shapes = [(3, 4), (5,), (2, 2, 2)]
    scores = [torch.randn(shape) for shape in shapes]
    flat = flatten_scores(scores, torch.device("cpu"))
    assert flat.shape == (12 + 5 + 8,)
    back = split_flat_mask(flat, shapes, [torch.device("cpu")] * 3)
    assert all(torch.equal(a, b) for a, b in zip(scores, back))


def test_global_group_split_matches_its_layers():
    group = _global_group()
    scores = [layer.smart_scores for layer in group.layers]
    flat = flatten_scores(scores, torch.device("cpu"))
    costs = unit_cost_vector([layer.smart_layout.unit_cost for layer in group.layers], group.unit_counts(), "cpu")
    pieces = split_flat_mask(costs, [s.shape for s in scores], ["cpu"] * len(scores))
    for piece, layer in zip(pieces, group.layers):
        assert bool((piece == layer.smart_layout.unit_cost).all())
    assert float(costs.sum()) == group.capacity()
    reserved = reserved_unit_mask(scores, group.reserved, "cpu")
    per_layer = split_flat_mask(reserved, [s.shape for s in scores], ["cpu"] * len(scores))
    assert [int(r.sum()) for r in per_layer] == group.reserved
    assert flat.shape == reserved.shape == costs.shape


def test_flatten_refuses_non_finite_scores():
    with pytest.raises(ValueError, match="NaN or Inf"):
        flatten_scores([torch.tensor([0.0, float("nan")])], "cpu")


def test_soft_global_topk_with_every_unit_reserved_keeps_everything():
    flat = torch.randn(4)
    mask, shift = soft_global_topk(flat, torch.ones(4), torch.ones(4, dtype=torch.bool), 4.0, 0.1)
    assert torch.equal(mask, torch.ones(4)) and float(shift) == float("inf")


def test_a_budget_of_the_whole_capacity_in_float64_is_spendable_with_float32_measured_costs():
    # measured unit costs (nanoseconds, not whole numbers) stored in float32: their float64 capacity may exceed the
    # float32 sum the solver checks against; the start of the budget anneal asks for exactly that capacity
    gen = torch.Generator().manual_seed(0)
    cost = (torch.rand(1536, generator=gen, dtype=torch.float64) * 700 + 0.123456).to(torch.float32)
    reserved = torch.zeros(1536, dtype=torch.bool)
    reserved[:3] = True
    capacity = float(cost.double().sum()) + 1e-7 * float(cost.double().sum())
    flat = torch.randn(1536, generator=gen)
    mask, _ = soft_global_topk(flat, cost, reserved, capacity, 0.5)
    assert torch.allclose(mask, torch.ones_like(mask), atol=1e-4)
    assert torch.equal(_hard_global_topk(flat, cost, reserved, capacity), torch.ones(1536))


def test_nm_batch_equals_the_per_group_solve():
    scores = [_layer(rows, 16, pattern="nm", seed=seed).smart_scores for rows, seed in [(4, 8), (8, 9), (2, 10)]]
    for k in [2.0, 2.7, 4.0]:  # 2.7: the budget anneal's fractional k; 4 = m: its start, every unit on
        pieces, frac = soft_nm_batch(scores, k, 0.05, with_fractionality=True)
        assert [p.shape for p in pieces] == [s.shape for s in scores]
        for piece, s in zip(pieces, scores):
            torch.testing.assert_close(piece, soft_topk(s, k, 0.05), atol=1e-10, rtol=0)
        expected = sum(torch.minimum(p, 1 - p).sum() for p in pieces)
        torch.testing.assert_close(frac, expected.double(), atol=1e-9, rtol=0)
    assert soft_nm_batch(scores, 2.0, 0.05)[1] is None


def test_build_groups_sorts_layers_by_how_their_budget_is_shared():
    dense = [_layer(8, 8, seed=11), _layer(8, 8, seed=12), _layer(8, 8, seed=13)]
    nm = _layer(4, 16, pattern="nm", seed=14)
    groups = build_groups(dense + [nm], [0.5, 0.5, 0.75, 0.5], "global", 0.0)
    assert [(g.kind, len(g.layers)) for g in groups] == [("nm", 1), ("global", 2), ("global", 1)]
    per_layer = build_groups(dense, [0.5] * 3, "layer", 0.0)
    assert [(g.kind, g.k) for g in per_layer] == [("layer", 8.0)] * 3
    with pytest.raises(ValueError, match="min_layer_density"):
        build_groups(dense, [0.9] * 3, "global", 0.5)

