"""Budgets: units kept per layer, reserved units of the global guard, the global weight budget."""

import math

import pytest

from smart_hf.core.budget import global_weight_budget, layer_keep_units, reserved_units


@pytest.mark.parametrize("units", [1, 2, 7, 64, 1000])
def test_layer_keep_units_endpoints_and_rounding(units):
    assert layer_keep_units(units, 0.0) == units
    assert layer_keep_units(units, 0.999999) == 1  # never removes a layer entirely
    for sparsity in [0.1, 0.25, 0.5, 0.75, 0.9]:
        kept = layer_keep_units(units, sparsity)
        assert 1 <= kept <= units
        assert abs(kept - (1 - sparsity) * units) <= 0.5 or kept == 1  # within half a unit of the target


def test_layer_keep_units_is_monotone_in_sparsity():
    kept = [layer_keep_units(100, s / 100) for s in range(100)]
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[0] == 100 and kept[-1] == 1


@pytest.mark.parametrize("units", [1, 3, 10, 250])
def test_reserved_units(units):
    assert reserved_units(units, 0.0) == 1  # always at least one unit
    for density in [0.01, 0.1, 0.3, 0.5, 0.99]:
        r = reserved_units(units, density)
        assert r == min(units, max(1, math.ceil(density * units - 1e-9)))
        assert r >= density * units - 1e-9  # the guard is a floor: never fewer than asked
    assert reserved_units(10, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point: not rounded up to 4


def test_global_weight_budget():
    assert global_weight_budget(1000, 0.0) == 1000.0
    assert global_weight_budget(1000, 0.5) == 500.0
    assert global_weight_budget(1000, 0.9) == 100.0
    assert global_weight_budget(7, 0.5) in (3.0, 4.0)
    assert all(abs(global_weight_budget(n, s) - (1 - s) * n) <= 0.5 for n in [5, 99, 12345] for s in [0.1, 0.33, 0.8])
