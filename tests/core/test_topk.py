"""The differentiable top-k operator f_tau(m)_i = sigmoid(m_i / tau + t), sum_i c_i f_i = k (docs/method.md §1-2)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smart_hf.core import topk
from smart_hf.core.topk import hard_topk, mask_fractionality, soft_topk, solve_shift

TAUS = [10.0, 1.0, 0.1, 1e-2, 1e-4, 1e-6]
SHAPES = [(7,), (64,), (1000,), (3, 50), (2, 5, 16), (4096,), (300, 4)]


def _gapped_scores(n: int, gap: float = 0.1, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Distinct scores, any two at least ``gap`` apart (so the top-k is unambiguous)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n, generator=g).to(dtype) * gap) + gap * 0.3 * torch.rand(n, generator=g, dtype=dtype)


# --- the budget ---


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", TAUS)
def test_row_sums_equal_k_float32(shape, tau):
    n = shape[-1]
    scores = torch.randn(shape)
    for k in {1, n // 3, n // 2, n - 1}:
        f = soft_topk(scores, k, tau)
        assert f.dtype == torch.float32 and f.shape == scores.shape
        assert torch.isfinite(f).all()
        assert ((f >= 0) & (f <= 1)).all()
        err = (f.double().sum(-1) - k).abs().max().item()
        assert err < 1e-4, (shape, tau, k, err)


def test_rows_have_independent_budgets():
    scores = torch.randn(6, 10)
    k = torch.tensor([0.0, 1.0, 2.5, 5.0, 9.0, 10.0])
    f = soft_topk(scores, k, 0.3)
    torch.testing.assert_close(f.double().sum(-1), k.double(), atol=1e-5, rtol=0)
    shift = solve_shift(scores, k, 0.3)
    assert shift.shape == (6,)
    assert shift[0] == -math.inf and shift[-1] == math.inf


@pytest.mark.parametrize("tau", [1.0, 1e-2, 1e-5])
def test_cost_weighted_budget_is_exact(tau):
    scores = torch.randn(500, dtype=torch.float64)
    cost = torch.randint(1, 65, (500,)).double()
    k = 0.37 * float(cost.sum())
    f = soft_topk(scores, k, tau, cost=cost)
    assert abs(float((cost * f).sum()) - k) < 1e-6 * k
    # same in float32 (the global-budget path), relative to the budget
    f32 = soft_topk(scores.float(), k, tau, cost=cost.float())
    assert abs(float((cost * f32.double()).sum()) - k) < 1e-6 * k


def test_uniform_scores_give_k_over_n_at_every_tau():
    for tau in TAUS:
        f = soft_topk(torch.full((3, 20), 0.7), 5, tau)
        torch.testing.assert_close(f, torch.full_like(f, 0.25), atol=1e-6, rtol=0)
        assert abs(mask_fractionality(f) - 0.25) < 1e-6


def test_order_preserving_and_shift_invariant():
    x = torch.randn(40, dtype=torch.float64)
    f = soft_topk(x, 9, 0.2)
    order = torch.argsort(x)
    assert (f[order].diff() > 0).all()
    torch.testing.assert_close(soft_topk(x + 123.0, 9, 0.2), f, atol=1e-12, rtol=0)


# --- the hard limit ---


def test_tends_to_hard_topk_as_tau_goes_to_zero():
    x = _gapped_scores(200, gap=0.1)
    hard = hard_topk(x, 37)
    gaps = [(soft_topk(x, 37, tau) - hard).abs().max().item() for tau in [1.0, 0.1, 0.02, 1e-2, 1e-3, 1e-6]]
    assert all(a >= b for a, b in zip(gaps, gaps[1:])), gaps  # monotone
    assert gaps[0] > 0.1  # genuinely soft at tau = 1
    assert gaps[-2] < 1e-12 and gaps[-1] == 0.0  # the gap is 0.1: exp(-0.05 / tau) -> 0


def test_hard_topk_exactly_k_and_ties_lower_index_wins():
    x = torch.tensor([0.5, 2.0, 2.0, 2.0, -1.0, 2.0])
    h = hard_topk(x, 2)
    assert h.tolist() == [0, 1, 1, 0, 0, 0]
    assert hard_topk(torch.zeros(6), 3).tolist() == [1, 1, 1, 0, 0, 0]
    # deterministic across calls and identical row by row
    rows = x.repeat(5, 1)
    assert (hard_topk(rows, 3) == hard_topk(x, 3)).all()
    assert all((hard_topk(x, 3) == h3).all() for h3 in [hard_topk(x.clone(), 3) for _ in range(5)])


def test_hard_topk_with_costs_within_half_a_unit():
    x = torch.randn(300)
    cost = torch.randint(1, 50, (300,)).float()
    for frac in [0.1, 0.5, 0.9]:
        k = frac * float(cost.sum())
        h = hard_topk(x, k, cost)
        assert set(h.unique().tolist()) <= {0.0, 1.0}
        assert abs(float((h * cost).sum()) - k) <= cost.max() / 2
        # a prefix of the ranking: every kept score beats every dropped one
        assert x[h.bool()].min() >= x[~h.bool()].max()


def test_k_zero_and_k_n_rows():
    x = torch.randn(2, 8, requires_grad=True)
    f = soft_topk(x, torch.tensor([0.0, 8.0]), 0.5)
    assert f[0].eq(0).all() and f[1].eq(1).all()
    f.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.eq(0).all()
    assert hard_topk(x.detach(), torch.tensor([0.0, 8.0])).tolist() == [[0.0] * 8, [1.0] * 8]


# --- dtypes and extreme scales ---


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dtypes(dtype):
    x = torch.randn(4, 64).to(dtype).requires_grad_()
    for tau in [1.0, 1e-3, 1e-6]:
        f = soft_topk(x, 16, tau)
        assert f.dtype == torch.promote_types(dtype, torch.float32)
        assert torch.isfinite(f).all()
        assert (f.double().sum(-1) - 16).abs().max() < 1e-4
        f.square().sum().backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
        x.grad = None
    assert hard_topk(x.detach(), 16).dtype == torch.promote_types(dtype, torch.float32)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e3, 1e6])
@pytest.mark.parametrize("tau", TAUS)
def test_no_nan_or_inf_at_any_scale(scale, tau):
    x = (torch.randn(3, 128) * scale).requires_grad_()
    f = soft_topk(x, 20, tau)
    assert torch.isfinite(f).all()
    assert (f.double().sum(-1) - 20).abs().max() < 1e-4
    (f * torch.randn_like(f)).sum().backward()
    assert torch.isfinite(x.grad).all()


# --- the exact gradient ---


def test_gradcheck_unit_cost():
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    for tau in [2.0, 0.5, 0.1]:
        assert torch.autograd.gradcheck(lambda s, tau=tau: soft_topk(s, 4, tau), (x,))


def test_gradcheck_with_costs_and_fractional_k():
    x = torch.randn(15, dtype=torch.float64, requires_grad=True)
    cost = torch.rand(15, dtype=torch.float64) * 3 + 0.5
    k = 0.4 * float(cost.sum())
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, k, 0.3, cost=cost), (x,))
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 3.7, 0.6), (x,))


def test_gradcheck_batched_nm_rows():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 2, 0.7), (x,))
    x8 = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, torch.tensor([1.0, 2.0, 6.5]), 0.5), (x8,))


def _finite_difference_grad(fn, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[i] = eps
        grad.view(-1)[i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    return grad


def test_implicit_gradient_matches_finite_differences_and_naive_one_does_not():
    torch.manual_seed(1)
    n, k, tau = 50, 10, 0.3
    x = torch.randn(n, dtype=torch.float64)
    g = torch.randn(n, dtype=torch.float64)

    def loss(s):
        return (g * soft_topk(s, k, tau)).sum()

    x_ours = x.clone().requires_grad_()
    loss(x_ours).backward()
    fd = _finite_difference_grad(lambda s: loss(s).item(), x)

    # naive: backprop through the sigmoid with the shift t treated as a constant
    t = solve_shift(x, k, tau)
    x_naive = x.clone().requires_grad_()
    (g * torch.sigmoid(x_naive / tau + t)).sum().backward()

    ours_err = (x_ours.grad - fd).abs().max().item()
    naive_err = (x_naive.grad - fd).abs().max().item()
    assert ours_err < 1e-7, ours_err
    assert naive_err > 1e-3, naive_err
    # and the exact Jacobian keeps the budget: 1^T J = 0
    x_sum = x.clone().requires_grad_()
    soft_topk(x_sum, k, tau).sum().backward()
    assert x_sum.grad.abs().max() < 1e-10


def test_warm_start_does_not_change_the_answer():
    x = torch.randn(4, 100, dtype=torch.float64)
    f, t = soft_topk(x, 17, 0.05, return_shift=True)
    for init in [t, t + 50.0, torch.full_like(t, -1e9), torch.full_like(t, math.nan)]:
        torch.testing.assert_close(soft_topk(x, 17, 0.05, shift_init=init), f, atol=1e-10, rtol=0)


# --- invalid input ---


@pytest.mark.parametrize(
    ("scores", "k", "tau", "kwargs"),
    [
        (torch.randn(5), 2, 0.0, {}),
        (torch.randn(5), 2, -1.0, {}),
        (torch.randn(5), 2, math.nan, {}),
        (torch.randn(5), 2, math.inf, {}),
        (torch.tensor([0.0, math.nan, 1.0]), 1, 1.0, {}),
        (torch.tensor([0.0, math.inf, 1.0]), 1, 1.0, {}),
        (torch.randn(5), -1, 1.0, {}),
        (torch.randn(5), 6, 1.0, {}),
        (torch.randn(2, 5), torch.tensor([1.0, 5.5]), 1.0, {}),
        (torch.arange(5), 2, 1.0, {}),
        (torch.randn(3, 0), 0, 1.0, {}),
        (torch.randn(5), 2, 1.0, {"cost": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])}),
    ],
)
def test_invalid_inputs_raise_value_error(scores, k, tau, kwargs):
    with pytest.raises(ValueError):
        soft_topk(scores, k, tau, **kwargs)


def test_hard_topk_invalid_inputs():
    with pytest.raises(ValueError, match="NaN"):
        hard_topk(torch.tensor([1.0, math.nan]), 1)
    with pytest.raises(ValueError):
        hard_topk(torch.randn(4), 5)
    with pytest.raises(ValueError):
        hard_topk(torch.arange(4), 1)


# --- properties ---


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 80),
    k_frac=st.floats(0.0, 1.0),
    log_tau=st.floats(-6.0, 1.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_property_soft_topk(rows, n, k_frac, log_tau, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g) * scale
    k = k_frac * n
    f = soft_topk(x, k, 10.0**log_tau)
    assert torch.isfinite(f).all()
    assert ((f >= 0) & (f <= 1)).all()
    assert (f.double().sum(-1) - k).abs().max() < 1e-4


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 80),
    k_frac=st.floats(0.0, 1.0),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_hard_topk(rows, n, k_frac, ties, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g)
    if ties:
        x = x.round()
    k = round(k_frac * n)
    h = hard_topk(x, k)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert (h.sum(-1) == k).all()
    for r in range(rows):  # kept scores are >= dropped ones
        kept, dropped = x[r][h[r].bool()], x[r][~h[r].bool()]
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()


# --- the short-row path (N:M groups: rows of 2..64, unit costs, one k; fractional during the budget anneal) ---


def _nm_scores(rows: int, m: int, scale: float, dtype, seed: int = 0) -> torch.Tensor:
    """Random rows with exact ties mixed in: two equal middle scores, a whole row equal, three equal."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, m, generator=g, dtype=torch.float64) * scale).to(dtype)
    x[: rows // 8, 1] = x[: rows // 8, 2]
    x[rows // 8 : rows // 4] = x[rows // 8 : rows // 4, :1]
    x[rows // 4 : rows // 3, :3] = x[rows // 4 : rows // 3, :1]
    return x


def _general(x, k, tau):
    """The general solver (a tensor k is never taken by the short-row path)."""
    return soft_topk(x, torch.tensor(float(k), dtype=torch.float64), tau)


@pytest.mark.parametrize("m", [4, 8])
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_short_rows_equal_the_general_solver_and_keep_k(m, tau, scale):
    for dtype, tol in [(torch.float32, 2e-6), (torch.float64, 1e-10)]:
        x = _nm_scores(600, m, scale, dtype)
        # the general solver forms x / tau + t in float64: its own rounding is ~eps * |x| / tau in the exponent
        agree = tol + 4 * torch.finfo(torch.float64).eps * float(x.abs().max()) / tau
        for k in range(1, m):
            f = soft_topk(x, k, tau)
            assert f.dtype == dtype and f.shape == x.shape
            assert (f.double().sum(-1) - k).abs().max() <= tol, (dtype, k)
            assert (f - _general(x, k, tau)).abs().max() <= agree, (dtype, k)


@pytest.mark.parametrize("m", [4, 8])
@pytest.mark.parametrize("tau", TAUS)
def test_short_rows_fractional_k_equal_the_general_solver(m, tau):
    """The budget anneal asks N:M rows for a fractional k (m -> n): the short-row path takes it (centred on the
    ceil(k)-th score) and agrees with the general solver, keeping the budget, for k near 0, near m and near an
    integer too."""
    for dtype, tol in [(torch.float32, 2e-6), (torch.float64, 1e-10)]:
        x = _nm_scores(600, m, 1.0, dtype, seed=3)
        agree = tol + 4 * torch.finfo(torch.float64).eps * float(x.abs().max()) / tau
        for k in [0.01, 0.5, 1.5, 2 + 1e-7, 2.7, m - 0.5, m - 1e-3]:
            assert topk._short_rows_apply(x, k, None)
            f = soft_topk(x, k, tau)
            assert f.dtype == dtype and f.shape == x.shape
            assert (f.double().sum(-1) - k).abs().max() <= tol, (dtype, k)
            assert (f - _general(x, k, tau)).abs().max() <= agree, (dtype, k)


def test_short_rows_path_refuses_what_it_cannot_solve():
    x = torch.randn(8, 4)
    for k in [0, 4, 0.0, 4.0, math.nan, math.inf, True, torch.tensor(2.0)]:
        assert not topk._short_rows_apply(x, k, None), k
    assert not topk._short_rows_apply(x, 2, torch.ones(4))  # costs: the general solver


def test_short_rows_shift_reproduces_the_mask():
    x = _nm_scores(300, 4, 1.0, torch.float64)
    for tau in [2.0, 0.1, 1e-3]:
        f, t = soft_topk(x, 2, tau, return_shift=True)
        assert t.shape == (300,) and t.dtype == torch.float64
        torch.testing.assert_close(torch.sigmoid(x / tau + t.unsqueeze(-1)), f, atol=1e-9, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 0.4, 2.5, 3.9])  # fractional: the budget anneal's k
def test_short_rows_gradient_is_exact(k):
    x = _nm_scores(6, 4, 1.0, torch.float64).requires_grad_()
    for tau in [2.0, 0.5, 0.05]:
        assert torch.autograd.gradcheck(lambda s, tau=tau: soft_topk(s, k, tau), (x,))
        u = torch.randn(6, 4, dtype=torch.float64)
        (grad_fast,) = torch.autograd.grad((soft_topk(x, k, tau) * u).sum(), x)
        (grad_general,) = torch.autograd.grad((_general(x, k, tau) * u).sum(), x)
        torch.testing.assert_close(grad_fast, grad_general, atol=1e-10, rtol=0)
        assert grad_fast.sum(-1).abs().max() < 1e-10  # the budget is kept to first order


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_short_rows_half_precision_scores(dtype):
    x = _nm_scores(200, 4, 1.0, torch.float32).to(dtype).requires_grad_()
    f = soft_topk(x, 2, 0.1)
    assert f.dtype == torch.float32 and (f.double().sum(-1) - 2).abs().max() < 2e-6
    (f * torch.randn_like(f)).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_short_rows_unsettled_rows_take_the_general_solver(monkeypatch):
    """With no Newton steps allowed, every row that is not settled at t = 0 goes through the safeguarded solver:
    the answer is the same; NaN scores still raise the usual error."""
    x = _nm_scores(400, 4, 1.0, torch.float32)
    expected = soft_topk(x, 2, 0.3)
    monkeypatch.setattr(topk, "_SHORT_MAX_ITER", 0)
    f = soft_topk(x, 2, 0.3)
    assert (f.double().sum(-1) - 2).abs().max() <= 2e-6
    torch.testing.assert_close(f, expected, atol=2e-6, rtol=0)
    x[7, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        soft_topk(x, 2, 0.3)


@pytest.mark.parametrize("tau", [3.0, 1.0, 0.3, 0.03])
def test_short_rows_settle_on_the_budget_anneal_without_the_general_solver(monkeypatch, tau):
    """Late in the budget anneal k is just above an integer (2.001 for 2:4); from its start on the ceil(k)-th
    score an undamped Newton step overshoots on the flat part of the sum of sigmoids and the rows never settled
    (all of them at tau = 1), each call then paying for the general float64 solver. Capped steps settle them."""
    x = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0))
    ks = [3.999, 3.5, 3.01, 2.5, 2.05, 2.01, 2.001, 1.001]
    expected = {k: _general(x, k, tau) for k in ks}
    fallback_rows = []
    general = topk._solve_rows
    monkeypatch.setattr(topk, "_solve_rows", lambda z, *a: fallback_rows.append(z.shape[0]) or general(z, *a))
    for k in ks:
        f = soft_topk(x, k, tau)
        assert (f.double().sum(-1) - k).abs().max() <= 2e-6, k
        assert (f - expected[k]).abs().max() <= 2e-6, k
    assert fallback_rows == []


def test_general_solver_bisects_when_newton_bounces():
    """From the midpoint start, Newton on this row (k = 2.2) bounced between the two flat ends of the sum inside
    the bracket, shrinking it by ~1e-3 a step; the solver stopped after its iteration cap at a shift keeping 2.001,
    not 2.2. A Newton step that does not halve |g| is now replaced by a bisection."""
    x = torch.tensor([[-0.5577890315133712, 0.45294368535647955, 0.2097905947025676, 1.0843657774427549]])
    for dtype in [torch.float32, torch.float64]:
        f = soft_topk(x.to(dtype), torch.tensor(2.2, dtype=torch.float64), 0.03)
        assert abs(float(f.double().sum()) - 2.2) <= 2e-6
        torch.testing.assert_close(f.double(), soft_topk(x.double(), 2.2, 0.03), atol=2e-6, rtol=0)
