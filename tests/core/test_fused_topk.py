"""The fused short-row soft top-k (`short_row_topk`) against the reference `soft_topk`: masks, budgets, gradients."""

import math

import pytest
import torch

from smart_hf.core import fused_topk
from smart_hf.core.fused_topk import short_row_topk
from smart_hf.core.topk import soft_topk

TAUS = [3.0, 0.3, 0.03, 1e-3, 1e-6]


def _scores(rows: int, m: int, dtype, seed: int = 0) -> torch.Tensor:
    """Random rows with exact ties mixed in: two equal middle scores, a whole row equal, three equal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, m, generator=g, dtype=torch.float64).to(dtype)
    x[: rows // 8, 1] = x[: rows // 8, m // 2]
    x[rows // 8 : rows // 4] = x[rows // 8 : rows // 4, :1]
    x[rows // 4 : rows // 3, : m - 1] = x[rows // 4 : rows // 3, :1]
    return x


def _general(x, k, tau):
    """The reference: the general float64 safeguarded solver (a tensor k is never taken by the short-row path)."""
    return soft_topk(x, torch.tensor(float(k), dtype=torch.float64), tau)


def _budgets(m: int) -> list[float]:
    return [*range(1, m), 0.01, 0.5, m / 2 + 0.2, m - 0.5, m - 1e-3, 1 + 1e-7]


@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("tau", TAUS)
def test_masks_equal_the_reference_and_keep_the_budget(monkeypatch, m, tau):
    """Integer and fractional budgets (the budget anneal's), several tensors of different row counts in one call
    (small ones share a chunk, a large one spans several: chunks of 64 rows here)."""
    monkeypatch.setattr(fused_topk, "_CHUNK", 64 * m)
    for dtype, tol in [(torch.float32, 2e-6), (torch.float64, 1e-10)]:
        xs = [_scores(rows, m, dtype, seed) for seed, rows in enumerate([7, 3 * 64 + 5, 40, 900])]
        for k in _budgets(m):
            masks, _ = short_row_topk(xs, k, tau)
            for x, f in zip(xs, masks):
                agree = tol + 4 * torch.finfo(torch.float64).eps * float(x.abs().max()) / tau
                assert f.dtype == dtype and f.shape == x.shape
                assert (f.double().sum(-1) - k).abs().max() <= tol, (dtype, k)
                assert ((f >= 0) & (f <= 1)).all()
                assert (f - _general(x, k, tau)).abs().max() <= agree, (dtype, k)
                assert (f - soft_topk(x, k, tau)).abs().max() <= agree, (dtype, k)  # the previous short-row path


@pytest.mark.parametrize("k", [1, 2, 3, 0.4, 2.5, 3.9])
def test_gradient_is_exact(k):
    """gradcheck in float64, and the gradient equals the reference's (two tensors, one node)."""
    a, b = _scores(6, 4, torch.float64).requires_grad_(), _scores(5, 4, torch.float64, 1).requires_grad_()
    for tau in [2.0, 0.5, 0.05]:
        assert torch.autograd.gradcheck(lambda x, y, tau=tau: tuple(short_row_topk([x, y], k, tau)[0]), (a, b))
        u, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
        masks, _ = short_row_topk([a, b], k, tau)
        grads = torch.autograd.grad((masks[0] * u).sum() + (masks[1] * v).sum(), (a, b))
        for x, w, grad in zip((a, b), (u, v), grads):
            (reference,) = torch.autograd.grad((_general(x, k, tau) * w).sum(), x)
            torch.testing.assert_close(grad, reference, atol=1e-10, rtol=0)
            assert grad.sum(-1).abs().max() < 1e-10  # the budget is kept to first order


def test_float32_gradient_is_as_close_to_float64_as_the_reference():
    """In float32 both operators round; the fused one is no further from the float64 gradient than the reference
    path was, on rows near saturation (k close to m, where f (1 - f) is smallest)."""
    x = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(2))
    u = torch.randn_like(x)
    for tau, k in [(0.3, 3.999), (0.03, 2), (1.0, 2.001)]:
        x64 = x.double().requires_grad_()
        (exact,) = torch.autograd.grad((_general(x64, k, tau) * u.double()).sum(), x64)
        xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        (reference,) = torch.autograd.grad((soft_topk(xr, k, tau) * u).sum(), xr)
        (fused,) = torch.autograd.grad((short_row_topk([xf], k, tau)[0][0] * u).sum(), xf)
        scale = float(exact.abs().max())
        assert float((fused.double() - exact).abs().max()) <= max(2e-3 * scale, 1.5 * float((reference - exact).abs().max()))


def test_fractionality_is_the_sum_of_min_f_one_minus_f():
    xs = [_scores(100, 4, torch.float32, seed) for seed in range(3)]
    for k in [2, 2.7]:
        masks, frac = short_row_topk(xs, k, 0.2, with_fractionality=True)
        expected = sum(torch.minimum(f, 1 - f).double().sum() for f in masks)
        assert frac.dtype == torch.float64 and not frac.requires_grad
        torch.testing.assert_close(frac, expected, atol=1e-4, rtol=0)
    assert float(short_row_topk(xs, 2, 0.2)[1]) == 0.0


def test_unsettled_rows_take_the_general_solver(monkeypatch):
    """With no Newton step allowed, every row not settled at the start goes through the safeguarded solver: the
    same answer."""
    x = _scores(400, 4, torch.float32)
    for k in [2, 2.7]:
        expected = _general(x, k, 0.3)
        monkeypatch.setattr(fused_topk, "_MAX_ITER", 0)
        (f,), _ = short_row_topk([x], k, 0.3)
        monkeypatch.undo()
        assert (f.double().sum(-1) - k).abs().max() <= 2e-6
        torch.testing.assert_close(f, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("tau", [3.0, 1.0, 0.3, 0.03])
def test_budget_anneal_settles_without_the_general_solver(monkeypatch, tau):
    """Late in the budget anneal k is just above an integer (2.001 for 2:4): Newton settles every row itself."""
    x = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0))
    general = fused_topk._solve_rows
    fallback_rows = []
    monkeypatch.setattr(fused_topk, "_solve_rows", lambda z, *a: fallback_rows.append(z.shape[0]) or general(z, *a))
    for k in [3.999, 3.5, 3.01, 2.5, 2.05, 2.01, 2.001, 1.001, 2]:
        (f,), _ = short_row_topk([x], k, tau)
        assert (f.double().sum(-1) - k).abs().max() <= 2e-6, k
        assert (f - _general(x, k, tau)).abs().max() <= 2e-6, k
    assert fallback_rows == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_scores(dtype):
    x = _scores(200, 4, torch.float32).to(dtype).requires_grad_()
    (f,), _ = short_row_topk([x], 2, 0.1)
    assert f.dtype == torch.float32 and (f.double().sum(-1) - 2).abs().max() < 2e-6
    (f * torch.randn_like(f)).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_a_mask_without_a_gradient_gets_none_and_the_others_theirs():
    a, b = _scores(8, 4, torch.float64).requires_grad_(), _scores(8, 4, torch.float64, 1).requires_grad_()
    masks, _ = short_row_topk([a, b], 2, 0.5)
    (masks[1] * torch.arange(32.0, dtype=torch.float64).reshape(8, 4)).sum().backward()
    assert a.grad is None or a.grad.abs().max() == 0
    assert b.grad is not None and b.grad.abs().max() > 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise(bad):
    x = _scores(64, 4, torch.float32)
    x[9, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        short_row_topk([x], 2, 0.3)


@pytest.mark.parametrize(
    "scores, k, tau, phrase",
    [
        ([], 2, 0.1, "at least one"),
        ([torch.zeros(4, 4), torch.zeros(4, 8)], 2, 0.1, "one row length"),
        ([torch.zeros(4, 80)], 2, 0.1, "2..64"),
        ([torch.zeros(4, 4)], 4, 0.1, "0 < k < m"),
        ([torch.zeros(4, 4)], 0, 0.1, "0 < k < m"),
        ([torch.zeros(4, 4)], 2, 0.0, "tau"),
        ([torch.zeros(4, 4, dtype=torch.long)], 2, 0.1, "floating-point"),
    ],
)
def test_bad_input_is_refused_with_the_fix(scores, k, tau, phrase):
    with pytest.raises((ValueError, TypeError), match=phrase):
        short_row_topk(scores, k, tau)
