"""Exact zeroing of pruned entries by a bitwise AND: equal to masked_fill_, NaN and Inf included, every float width."""

import pytest
import torch

from smart_hf.core.fill import INT_OF_WIDTH, fill_mask, keep_bits, use_bits, zero_by_bits_, zero_where_, zero_with_


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_bitwise_zeroing_equals_masked_fill_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g).to(dtype)
    x[0, 0], x[1, 1], x[2, 2], x[3, 3] = float("nan"), float("inf"), -float("inf"), -0.0
    pruned = torch.rand(6, 8, generator=g) > 0.5
    pruned[0, 0] = pruned[1, 1] = True  # non-finite values in pruned entries become +0.0
    pruned[2, 2] = False  # and a kept one stays as it is
    expected = x.clone().masked_fill_(pruned, 0)
    keep = keep_bits(pruned, dtype)
    assert keep.dtype == INT_OF_WIDTH[x.element_size()]
    got = zero_by_bits_(x, keep)
    assert got is x
    assert torch.equal(got.view(keep.dtype), expected.view(keep.dtype))  # bit for bit (+0.0, NaN payloads)


def test_bitwise_zeroing_broadcasts_like_the_boolean_mask():
    x = torch.randn(4, 2, 3, 5)
    pruned = torch.tensor([True, False, True, False]).reshape(4, 1, 1, 1)  # per output row (channels, blocks)
    expected = x.clone().masked_fill_(pruned, 0)
    assert torch.equal(zero_by_bits_(x, keep_bits(pruned, x.dtype)), expected)


def test_bits_are_used_for_cpu_floats_of_two_to_eight_bytes_only():
    assert use_bits(torch.zeros(2)) and use_bits(torch.zeros(2, dtype=torch.bfloat16))
    assert not use_bits(torch.zeros(2, dtype=torch.int32))
    if hasattr(torch, "float8_e4m3fn"):
        assert not use_bits(torch.zeros(2, dtype=torch.float8_e4m3fn))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_zero_where_equals_masked_fill_for_every_dtype(dtype):
    """Floats of 2-8 bytes take the bitwise AND on CPU, anything else masked_fill_: the same result."""
    x = (torch.randn(5, 7) * 10).to(dtype)
    pruned = torch.rand(5, 1) > 0.5  # a broadcast row mask, as coupled partners use
    expected = x.clone().masked_fill_(pruned, 0)
    assert torch.equal(zero_where_(x, pruned), expected)


def test_a_kept_fill_mask_zeroes_like_masked_fill():
    """`fill_mask` once, `zero_with_` every step (the hard stage's cached path): the same as masked_fill_."""
    x = torch.randn(6, 8)
    pruned = torch.rand(6, 8) > 0.5
    mask = fill_mask(pruned, x)
    assert mask.dtype == torch.int32  # a CPU float32 tensor: the bit mask
    expected = x.clone().masked_fill_(pruned, 0)
    assert torch.equal(zero_with_(x, mask), expected)
    assert fill_mask(pruned, torch.zeros(2, dtype=torch.int64)) is pruned  # no bit mask for integers: masked_fill_
