"""Unit layouts: how block / channel / N:M units map onto Linear, Conv1D and Conv2d weights."""

import itertools

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from smart_hf.core.granularity import UnitLayout, canonical_weight, layer_kind

# (kind, weight shape, pattern, block_shape, n, m)
CASES = [
    ("linear", (12, 8), "block", (4, 2), 2, 4),
    ("linear", (12, 8), "block", (1, 1), 2, 4),
    ("linear", (12, 8), "channel", (1, 1), 2, 4),
    ("linear", (12, 8), "nm", (1, 1), 2, 4),
    ("linear", (6, 16), "nm", (1, 1), 1, 8),
    ("conv1d", (8, 12), "block", (4, 2), 2, 4),
    ("conv1d", (8, 12), "channel", (1, 1), 2, 4),
    ("conv1d", (8, 12), "nm", (1, 1), 2, 4),
    ("conv2d", (6, 8, 3, 3), "block", (2, 4), 2, 4),
    ("conv2d", (6, 8, 3, 3), "channel", (1, 1), 2, 4),
    ("conv2d", (6, 8, 3, 3), "nm", (1, 1), 2, 4),
    ("conv2d", (6, 8, 1, 1), "block", (3, 2), 2, 4),
    ("conv2d", (6, 8, 1, 1), "nm", (1, 1), 1, 2),
]


def _layout(case) -> UnitLayout:
    kind, shape, pattern, block, n, m = case
    return UnitLayout(kind, shape, pattern, block, n, m)


def _canonical_index(kind, shape, idx):
    """(out, in, spatial) coordinates of weight element ``idx`` (reference, by hand)."""
    if kind == "linear":
        return idx[0], idx[1], 0
    if kind == "conv1d":  # stored (in, out)
        return idx[1], idx[0], 0
    return idx[0], idx[1], idx[2] * shape[3] + idx[3]


def _unit_of(layout: UnitLayout, o, i, s):
    """The score index of the unit holding canonical element (o, i, s) (reference, by hand)."""
    if layout.pattern == "block":
        r, c = layout.block_shape
        return (o // r, i // c)
    if layout.pattern == "channel":
        return (o,)
    groups_per_row = layout.in_features // layout.m
    return ((o * layout.spatial + s) * groups_per_row + i // layout.m, i % layout.m)


@pytest.mark.parametrize("case", CASES)
def test_shapes_and_costs(case):
    layout = _layout(case)
    kind, shape = case[0], case[1]
    assert layout.divisibility_error() is None
    assert layout.num_units == torch.Size(layout.score_shape).numel()
    assert layout.num_units * layout.unit_cost == layout.num_weights == torch.Size(shape).numel()
    expected_units = {
        "block": (layout.out_features // layout.block_shape[0], layout.in_features // layout.block_shape[1]),
        "channel": (layout.out_features,),
        "nm": (layout.num_weights // layout.m, layout.m),
    }[layout.pattern]
    assert layout.score_shape == expected_units
    assert canonical_weight(torch.zeros(shape), kind).shape == (
        layout.out_features,
        layout.in_features,
        layout.spatial,
    )


@pytest.mark.parametrize("case", CASES)
def test_expand_matches_explicit_unit_assignment(case):
    layout = _layout(case)
    kind, shape = case[0], case[1]
    unit_mask = torch.rand(layout.score_shape)
    expanded = layout.expand(unit_mask)
    assert torch.broadcast_shapes(expanded.shape, shape) == shape
    full = torch.broadcast_to(expanded, shape)
    for idx in itertools.product(*map(range, shape)):
        o, i, s = _canonical_index(kind, shape, idx)
        assert full[idx] == unit_mask[_unit_of(layout, o, i, s)], (idx, case)


@pytest.mark.parametrize("case", CASES)
def test_unit_sum_matches_loops(case):
    layout = _layout(case)
    kind, shape = case[0], case[1]
    weight = torch.randn(shape, dtype=torch.float64)
    ref = torch.zeros(layout.score_shape, dtype=torch.float64)
    for idx in itertools.product(*map(range, shape)):
        ref[_unit_of(layout, *_canonical_index(kind, shape, idx))] += weight[idx]
    torch.testing.assert_close(layout.unit_sum(canonical_weight(weight, kind)), ref)


@pytest.mark.parametrize("case", [c for c in CASES if c[2] == "nm"])
def test_nm_groups_run_along_the_input_dimension(case):
    """Keeping n per group of m leaves exactly n non-zeros in every m consecutive inputs (for convs: input
    channels at one kernel position) of every output."""
    layout = _layout(case)
    kind, shape, _, _, n, m = case
    scores = torch.randn(layout.score_shape)
    keep = torch.zeros_like(scores).scatter_(-1, scores.topk(n, dim=-1).indices, 1.0)
    masked = torch.broadcast_to(layout.expand(keep), shape)
    if kind == "linear":
        groups = masked.reshape(shape[0], shape[1] // m, m)
    elif kind == "conv1d":  # (in, out): inputs are rows
        groups = masked.t().reshape(shape[1], shape[0] // m, m)
    else:  # (out, in, kh, kw): move the kernel position before the input channels
        groups = masked.permute(0, 2, 3, 1).reshape(-1, shape[1] // m, m)
    assert (groups.sum(-1) == n).all()


def test_conv1d_orientation_agrees_with_linear():
    """A Linear(in=8, out=12) and a Conv1D(nf=12, nx=8) holding the transposed weight describe the same units."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 12)
    conv1d = Conv1D(12, 8)
    with torch.no_grad():
        conv1d.weight.copy_(linear.weight.t())
        conv1d.bias.copy_(linear.bias)
    x = torch.randn(3, 8)
    torch.testing.assert_close(conv1d(x), linear(x))
    for pattern, block in [("block", (4, 2)), ("channel", (1, 1)), ("nm", (1, 1))]:
        lin = UnitLayout(layer_kind(linear), tuple(linear.weight.shape), pattern, block)
        c1d = UnitLayout(layer_kind(conv1d), tuple(conv1d.weight.shape), pattern, block)
        assert lin.score_shape == c1d.score_shape
        assert (lin.out_features, lin.in_features) == (c1d.out_features, c1d.in_features) == (12, 8)
        unit_mask = (torch.rand(lin.score_shape) > 0.5).float()
        torch.testing.assert_close(c1d.expand(unit_mask), lin.expand(unit_mask).t())
        torch.testing.assert_close(
            lin.unit_sum(canonical_weight(linear.weight, "linear")),
            c1d.unit_sum(canonical_weight(conv1d.weight, "conv1d")),
        )
        # the masked layers compute the same function
        masked_lin = torch.nn.functional.linear(x, linear.weight * lin.expand(unit_mask), linear.bias)
        masked_c1d = torch.addmm(conv1d.bias, x, conv1d.weight * c1d.expand(unit_mask))
        torch.testing.assert_close(masked_c1d, masked_lin)


def test_layer_kind():
    assert layer_kind(torch.nn.Linear(2, 2)) == "linear"
    assert layer_kind(torch.nn.Conv2d(2, 2, 3)) == "conv2d"
    assert layer_kind(Conv1D(2, 2)) == "conv1d"
    assert layer_kind(torch.nn.Conv1d(2, 2, 3)) is None
    assert layer_kind(torch.nn.Embedding(4, 2)) is None

    class MyLinear(torch.nn.Linear):  # subclasses may change forward: not assumed to be a plain Linear
        pass

    assert layer_kind(MyLinear(2, 2)) is None
    with pytest.raises(ValueError):
        canonical_weight(torch.zeros(2, 2), "embedding")


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        (UnitLayout("linear", (12, 10), "block", (4, 4)), "block_shape=(4, 4)"),
        (UnitLayout("linear", (10, 12), "block", (4, 4)), "out=10"),
        (UnitLayout("conv1d", (10, 12), "nm", n=2, m=4), "input dimension 10"),
        (UnitLayout("conv2d", (8, 6, 3, 3), "nm", n=2, m=4), "input dimension 6"),
        (UnitLayout("linear", (8, 6), "nm", n=1, m=4), "m=4"),
    ],
)
def test_divisibility_error(layout, fragment):
    assert fragment in layout.divisibility_error()


def test_channel_and_divisible_layouts_have_no_error():
    assert UnitLayout("linear", (7, 5), "channel").divisibility_error() is None
    assert UnitLayout("conv2d", (8, 12, 3, 3), "nm", n=2, m=4).divisibility_error() is None


@pytest.mark.parametrize("kind,shape", [("linear", (8, 12)), ("conv1d", (12, 8)), ("conv2d", (8, 12, 3, 3))])
@pytest.mark.parametrize(
    "pattern,block", [("block", (2, 4)), ("block", (4, 2)), ("block", (1, 1)), ("channel", (1, 1)), ("nm", (1, 1))]
)
def test_apply_equals_weight_times_expanded_mask(kind, shape, pattern, block):
    layout = UnitLayout(kind, shape, pattern, block, 2, 4)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    unit_mask = torch.rand(layout.score_shape, dtype=torch.float64, requires_grad=True)
    fused = layout.apply(weight, unit_mask)
    reference = weight * layout.expand(unit_mask)
    assert fused.shape == weight.shape and torch.allclose(fused, reference)
    grads = torch.autograd.grad(fused.sum(), (weight, unit_mask))
    ref_grads = torch.autograd.grad(reference.sum(), (weight, unit_mask))
    assert all(torch.allclose(a, b) for a, b in zip(grads, ref_grads))
