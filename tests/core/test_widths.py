"""`smart_hf.core.widths`: kept counts rounded to width multiples under one cost budget."""

import itertools

import pytest
import torch

from smart_hf.core.topk import hard_topk
from smart_hf.core.widths import allowed_counts, round_widths


def test_allowed_counts_are_multiples_plus_the_full_width():
    assert allowed_counts(20, 8) == [8, 16, 20]
    assert allowed_counts(20, 8, minimum=9) == [16, 20]
    assert allowed_counts(5, 8) == [5]  # narrower than one multiple: only the full width
    assert allowed_counts(4, 1, minimum=2) == [2, 3, 4]
    with pytest.raises(ValueError, match="units >= 1"):
        allowed_counts(0, 8)


def _setup(seed=0, units=(40, 24, 56), costs=(1.0, 3.0, 0.5)):
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randn(u, generator=gen) for u in units]
    flat, cost = torch.cat(scores), torch.cat([torch.full((u,), c) for u, c in zip(units, costs)])
    return scores, flat, cost, list(costs)


def _split(mask, scores):
    return list(torch.split(mask, [s.numel() for s in scores]))


@pytest.mark.parametrize("seed", range(5))
def test_rounded_counts_are_multiples_keep_the_best_units_and_stay_near_the_budget(seed):
    scores, flat, cost, costs = _setup(seed)
    budget = 0.45 * float(cost.sum())
    masks = _split(hard_topk(flat, budget, cost), scores)
    out = round_widths(scores, masks, [8, 8, 8], costs, budget)
    for s, m in zip(scores, out):
        kept = int(m.sum())
        assert kept % 8 == 0 or kept == s.numel()
        if 0 < kept < s.numel():  # the kept units are the layer's best-scored ones
            assert s[m.bool()].min() >= s[~m.bool()].max()
    total = sum(float(m.sum()) * c for m, c in zip(out, costs))
    assert abs(total - budget) <= max(8 * c for c in costs)  # within one chunk of the budget


def test_greedy_total_is_as_close_as_the_best_rounding_on_a_small_case():
    scores, flat, cost, costs = _setup(1, units=(16, 24), costs=(1.0, 1.0))
    budget = 21.0
    masks = _split(hard_topk(flat, budget, cost), scores)
    out = round_widths(scores, masks, [8, 8], costs, budget)
    best = min(abs(a + b - budget) for a, b in itertools.product(allowed_counts(16, 8), allowed_counts(24, 8)))
    assert abs(sum(float(m.sum()) for m in out) - budget) == best


def test_multiple_one_and_minimums():
    scores, flat, cost, costs = _setup(2)
    budget = 0.5 * float(cost.sum())
    masks = _split(hard_topk(flat, budget, cost), scores)
    same = round_widths(scores, masks, [1, 1, 1], costs, budget)
    assert all(torch.equal(a, b) for a, b in zip(same, masks))  # nothing to round: the top-k masks stay
    starved = round_widths(scores, [torch.zeros_like(m) for m in masks], [8, 8, 8], costs, 0.0, [9, 1, 1])
    assert [int(m.sum()) for m in starved] == [16, 8, 8]  # never below the minimum, rounded up to a multiple
    with pytest.raises(ValueError, match="one score tensor"):
        round_widths(scores, masks[:2], [8, 8, 8], costs, budget)
