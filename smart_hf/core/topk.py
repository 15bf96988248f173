"""The SMART differentiable top-k operator and its hard (binary) limit.

SMART (arXiv 2403.19969) turns separate mask scores ``m`` into a mask with

    f_tau(m)_i = sigmoid(m_i / tau + t(m)),

where the scalar shift ``t`` (one per row) is the unique value with ``sum_i c_i * f_i = k``. With unit costs
``c_i = 1`` this keeps exactly ``k`` units "on" in sum; as ``tau -> 0`` it tends to the hard top-k indicator
whenever the k-th and (k+1)-th scores differ. ``f_tau`` is the entropy-smoothed top-k LP (see docs/method.md), the
LML projection of Amos et al. (2019) applied to ``m / tau``.

Shape convention: ``scores`` is ``(..., N)``; every leading index is an independent row with its own shift and its
own budget (N:M groups are rows of length M). ``cost`` is ``(N,)`` or broadcastable to ``scores``.

Numerics: the shift is solved in float64 by safeguarded Newton inside a bracket that provably contains the root,
and the output is evaluated in float64 before being cast to ``promote(scores.dtype, float32)``. The gradient is the
exact implicit one (not "t detached", which is off by ~1e-2): with ``s_j = f_j (1 - f_j)`` and ``z = m / tau``, the
implicit function theorem gives ``dt/dz_j = -c_j s_j / sum_l c_l s_l``, so the vector-Jacobian product is

    grad_m_j = (s_j u_j - c_j s_j * sum_i s_i u_i / sum_l c_l s_l) / tau      (u = dL/df),

written out in a custom autograd Function (equivalent to the re-parameterisation
``t_rep = t* - sum_j c_j s_j (z_j - stopgrad(z_j)) / sum_j c_j s_j`` but without a float64 autograd graph).

Short rows (N:M groups: 2..64 units, unit costs, one k for every row) take a vectorised path with the same result
and gradient: each row is centred on the midpoint of its k-th and (k+1)-th score (a fractional k: on its ceil(k)-th
score), which keeps the shift O(1) so float32 suffices, then Newton (see the notes above `_ShortRowsTopK`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["hard_topk", "mask_fractionality", "soft_topk", "solve_shift"]

_MAX_ITER = 200
_SHORT_ROW = 64  # rows up to this length get a sorted starting point


def _check_scores(scores, name: str) -> None:
    """Scores must be a floating tensor with at least one dim (the units) and only finite values."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(
            f"{name} needs scores as a torch.Tensor, got {type(scores).__name__}; wrap them with torch.tensor."
        )
    if not torch.is_floating_point(scores):
        raise ValueError(f"{name} needs floating-point scores, got {scores.dtype}; cast them with `.float()`.")
    if scores.dim() == 0 or scores.shape[-1] == 0:
        raise ValueError(
            f"{name} got scores of shape {tuple(scores.shape)}; the last dim holds the units and needs at least "
            "one (reshape a scalar with .reshape(1))."
        )
    if not torch.isfinite(scores).all():
        raise ValueError(
            "mask scores contain NaN or Inf; lower the score learning rate or check the weights they were built from."
        )


def _check_tau(tau) -> None:
    if isinstance(tau, bool) or not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}; use e.g. tau=1.0 early and 1e-4 at the end.")


def _check_inputs(scores: torch.Tensor, tau: float) -> None:
    _check_tau(tau)
    _check_scores(scores, "soft_topk")


def _rows(scores: torch.Tensor, k, cost) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten to float64 rows: x (R, N), cost (R|1, N), k (R, 1); check 0 <= k <= sum(cost)."""
    n = scores.shape[-1]
    x = scores.detach().to(torch.float64).reshape(-1, n)
    if cost is None:
        c = torch.ones(1, n, dtype=torch.float64, device=x.device)
    else:
        per_unit = torch.as_tensor(cost).dim() <= 1  # one cost per unit, shared by every row: keep a single row
        c = _broadcast(cost, (1, n) if per_unit else tuple(scores.shape), "cost", x.device).reshape(-1, n)
        if not ((c > 0) & torch.isfinite(c)).all():
            raise ValueError("unit costs must be finite and > 0 (a cost is the number of weights a unit holds).")
    kk = _broadcast(k, tuple(scores.shape[:-1]), "k", x.device).reshape(-1, 1)
    total = c.sum(-1, keepdim=True)
    if (~torch.isfinite(kk) | (kk < 0) | (kk > total + 1e-9 * total)).any():  # one host sync, not three
        raise ValueError(
            f"k must lie in [0, sum(cost)] for every row; got k in [{kk.min().item()}, "
            f"{kk.max().item()}] with sum(cost) up to {total.max().item()}; pass e.g. k = round((1 - sparsity) * N)."
        )
    return x, c, kk


def _broadcast(value, shape: tuple, name: str, device) -> torch.Tensor:
    """``value`` as float64 broadcast to ``shape``, or a ValueError that says which shapes are accepted (a scalar,
    a ``(N,)`` vector of costs, or one entry per row)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}; pass e.g. {name}=2.")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64, device=device)
        return torch.broadcast_to(tensor, shape)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"{name} of shape {tuple(torch.as_tensor(value).shape)} does not broadcast to {tuple(shape)}; pass a "
            f"scalar or a tensor broadcastable to the scores' shape ({err})."
        ) from err


def solve_shift(
    scores: torch.Tensor,
    k,
    tau: float,
    cost: torch.Tensor | None = None,
    shift_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Solve ``sum_i c_i sigmoid(m_i/tau + t) = k`` for ``t`` per row (float64, no gradient).

    Bracket: with ``C = sum c``, ``q = logit(k / C)`` and ``z = m / tau``, ``g(q - max z) <= k <= g(q - min z)``
    because every term is then below (above) ``k / C``. Inside it, Newton steps ``t - g/g'`` with
    ``g' = sum c_i f_i (1 - f_i)`` are taken when they stay in the bracket, bisection otherwise; the bracket
    shrinks every iteration, so the method always converges. Rows with ``k = 0`` or ``k = C`` return ``-inf`` /
    ``+inf``.

    Args:
        scores (`torch.Tensor` of shape `(..., N)`): mask scores, one row per leading index.
        k (`float` or `torch.Tensor`): budget per row, `0 <= k <= sum(cost)`.
        tau (`float`): temperature > 0.
        cost (`torch.Tensor`, *optional*): positive cost per unit, `(N,)` or broadcastable to `scores`.
        shift_init (`torch.Tensor`, *optional*): a starting shift per row (e.g. the previous step's).

    Returns:
        `torch.Tensor`: the float64 shift ``t`` of shape ``scores.shape[:-1]``.

    Raises:
        ValueError: for non-finite or non-floating scores, ``tau <= 0``, negative costs or ``k`` outside
            ``[0, sum(cost)]``.
        TypeError: when ``scores`` is not a tensor.
    """
    _check_inputs(scores, tau)
    x, c, kk = _rows(scores, k, cost)
    t = _solve_rows(x / tau, c, kk, shift_init, _work_dtype(scores))
    return t.reshape(scores.shape[:-1])


def _work_dtype(scores: torch.Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _initial_shift(z: torch.Tensor, c: torch.Tensor, k: torch.Tensor, q: torch.Tensor, total: torch.Tensor):
    """A starting shift: exact for uniform rows; for short rows (N:M groups) the midpoint between the k-th and
    (k+1)-th largest z, which is already the root up to exp(-gap / 2) once tau is small."""
    n = z.shape[-1]
    t = q - (c * z).sum(-1, keepdim=True) / total
    if 2 <= n <= _SHORT_ROW and c.shape[0] == 1 and bool((c == 1).all()):  # a 1-long row has no (k+1)-th
        ranked = torch.sort(z, dim=-1, descending=True).values
        kth = k.round().clamp(1, n - 1).long() - 1
        upper, lower = torch.gather(ranked, -1, kth), torch.gather(ranked, -1, kth + 1)
        t = torch.where((k > 0) & (k < n) & (upper > lower), -0.5 * (upper + lower), t)
    return t


def _solve_rows(z: torch.Tensor, c: torch.Tensor, k: torch.Tensor, shift_init, work_dtype) -> torch.Tensor:
    """Safeguarded Newton for the shift of each row of ``z`` (float64 in, float64 out).

    ``z + t`` is formed in float64 (at tau = 1e-6 both are ~1e6 and cancel) and the sigmoid is evaluated in
    ``work_dtype``: float64 for float64 inputs (so gradcheck sees an exact solve), float32 otherwise (6x faster
    on CPU); the stopping tolerance follows the evaluation precision (float32: ``2e-7 * sqrt(C * max c)``, the
    size of the rounding noise of the sum, so ``sum c f`` is within ~1e-5 of ``k`` for rows of thousands).
    """
    total = c.sum(-1, keepdim=True)
    empty, full = k <= 0, k >= total
    k_in = torch.where(empty | full, 0.5 * total, k)  # solve a harmless problem on degenerate rows
    q = torch.logit(k_in / total)
    lo, hi = q - z.amax(-1, keepdim=True), q - z.amin(-1, keepdim=True)
    t = _initial_shift(z, c, k_in, q, total)
    if shift_init is not None:
        warm = torch.as_tensor(shift_init, dtype=torch.float64, device=z.device).reshape(-1, 1).expand_as(lo)
        t = torch.where(torch.isfinite(warm), warm, t)
    t = torch.minimum(torch.maximum(t, lo), hi)
    if work_dtype == torch.float64:
        tol = 1e-13 * torch.clamp(total, min=1.0)
    else:  # float32 rounding of N terms adds up like a random walk: ~sqrt(N) ulps, not N
        tol = 2e-7 * torch.clamp(total * c.amax(-1, keepdim=True), min=1.0).sqrt()
    eps = 4 * torch.finfo(torch.float64).eps
    # float32 sums move in steps of ~1e-7 * C: once Newton asks for a step below this, the root is found to the
    # precision the evaluation has (without it the solver bisects on rounding noise: ~28 evaluations, not 3)
    min_step = 0.0 if work_dtype == torch.float64 else 1e-6
    unit_cost = c.shape[0] == 1 and bool((c == 1).all())
    g_before = torch.full_like(t, math.inf)
    for _ in range(_MAX_ITER):
        f = torch.sigmoid((z + t).to(work_dtype))
        cf = f if unit_cost else c * f
        g = cf.sum(-1, keepdim=True, dtype=torch.float64) - k_in
        done = (g.abs() <= tol) | (hi - lo <= eps * torch.clamp(t.abs(), min=1.0))
        if bool(done.all()):
            break
        hi = torch.where(g > 0, t, hi)
        lo = torch.where(g < 0, t, lo)
        slope = (cf * (1 - f)).sum(-1, keepdim=True, dtype=torch.float64)
        step = g / slope
        newton = t - step
        inside = torch.isfinite(newton) & (newton > lo) & (newton < hi)
        # Newton only while it makes progress: a row whose |g| did not halve since the last step bisects instead
        # (Newton can bounce between the two flat ends of the sum inside the bracket, shrinking it by ~1e-3 a
        # step: without this, such a row ran out of iterations at a wrong shift)
        ok = inside & (g.abs() <= 0.5 * g_before)
        g_before = g.abs()
        t = torch.where(done, t, torch.where(ok, newton, 0.5 * (lo + hi)))
        if min_step and bool((done | (inside & (step.abs() <= min_step))).all()):
            break
    t = torch.where(empty, torch.full_like(t, -math.inf), t)
    return torch.where(full, torch.full_like(t, math.inf), t)


def soft_topk(
    scores: torch.Tensor,
    k,
    tau: float,
    cost: torch.Tensor | None = None,
    shift_init: torch.Tensor | None = None,
    return_shift: bool = False,
):
    """Differentiable top-k mask ``f_i = sigmoid(m_i/tau + t)`` with ``sum_i cost_i f_i = k`` along the last dim.

    Args:
        scores (`torch.Tensor` of shape `(..., N)`): mask scores; each leading index is a row with its own shift.
        k (`float` or `torch.Tensor`): budget per row (broadcast to `scores.shape[:-1]`), `0 <= k <= sum(cost)`.
        tau (`float`): temperature > 0. Large tau gives `f ~ k/N`; tau -> 0 gives the hard top-k.
        cost (`torch.Tensor`, *optional*): positive cost per unit, `(N,)` or broadcastable to `scores`
            (defaults to 1: plain count budget).
        shift_init (`torch.Tensor`, *optional*): a warm start for the shift (e.g. the previous step's), any value.
        return_shift (`bool`): also return the float64 shift `t` (shape `scores.shape[:-1]`).

    Returns:
        `torch.Tensor` of `scores.shape` in `promote(scores.dtype, float32)`, in `(0, 1)`, with the exact
        implicit gradient; plus `t` when `return_shift`.

    Raises:
        ValueError: for non-finite or non-floating scores, ``tau <= 0``, non-positive costs or ``k`` outside
            ``[0, sum(cost)]``.
        TypeError: when ``scores`` is not a tensor or ``k`` is a string.
    """
    _check_tau(tau)
    if _short_rows_apply(scores, k, cost):  # N:M groups: the vectorised solve below, no float64 copy
        f, t = _ShortRowsTopK.apply(scores, float(k), float(tau), return_shift)
        return (f, t) if return_shift else f
    _check_scores(scores, "soft_topk")
    n = scores.shape[-1]
    x, c, kk = _rows(scores, k, cost)
    work = _work_dtype(scores)
    z = x / tau  # float64, detached: the Function below supplies the gradient
    with torch.no_grad():
        t = _solve_rows(z, c, kk, shift_init, work)
    unit_cost = cost is None
    f = _SoftTopK.apply(scores.reshape(-1, n), z, t, None if unit_cost else c, tau, work)
    f = f.to(torch.promote_types(scores.dtype, torch.float32)).reshape(scores.shape)
    return (f, t.reshape(scores.shape[:-1])) if return_shift else f


class _SoftTopK(torch.autograd.Function):
    """``f = sigmoid(z + t)`` with the exact implicit vector-Jacobian product (module docstring):

        grad_m_j = (s_j u_j - c_j s_j * sum_i s_i u_i / sum_i c_i s_i) / tau,   s = f (1 - f),  u = dL/df.

    Rows with ``k = 0`` / ``k = C`` have ``t = -inf`` / ``+inf``: ``f`` is exactly 0 / 1 and ``s = 0``, so no gradient.
    """

    @staticmethod
    def forward(ctx, scores, z, t, c, tau, work):
        f = torch.sigmoid((z + t).to(work))
        ctx.save_for_backward(f, c)
        ctx.tau, ctx.in_dtype = tau, scores.dtype
        return f

    @staticmethod
    def backward(ctx, grad_f):
        f, c = ctx.saved_tensors
        s = torch.rsub(f, 1).mul_(f)  # f (1 - f)
        su = torch.mul(s, grad_f.to(f.dtype))
        cs = s if c is None else (c * s).to(f.dtype)
        coupling = su.sum(-1, keepdim=True, dtype=torch.float64) / cs.sum(
            -1, keepdim=True, dtype=torch.float64
        ).clamp_min(1e-300)
        grad = torch.addcmul(su, cs, coupling.to(f.dtype), value=-1).div_(ctx.tau)  # (su - cs * coupling) / tau
        return grad.to(ctx.in_dtype), None, None, None, None, None


def hard_topk(scores: torch.Tensor, k, cost: torch.Tensor | None = None) -> torch.Tensor:
    """Binary top-k mask along the last dim: the ``tau -> 0`` limit of :func:`soft_topk`.

    Units are taken in descending score order; ties are broken by the lower index (a stable sort), so the result
    is deterministic and identical on every process that holds the same scores. A unit at sorted position ``p`` is
    kept when ``cost_before_p + cost_p / 2 < k``: with unit costs and integer ``k`` that is exactly the top ``k``;
    with costs the kept cost is within half a unit of ``k``.

    Args:
        scores (`torch.Tensor` of shape `(..., N)`): mask scores, one row per leading index.
        k (`float` or `torch.Tensor`): budget per row, `0 <= k <= sum(cost)`.
        cost (`torch.Tensor`, *optional*): positive cost per unit, `(N,)` or broadcastable to `scores`.

    Returns:
        `torch.Tensor`: a `{0, 1}` tensor of `scores.shape` and `promote(scores.dtype, float32)`.

    Raises:
        ValueError: for non-finite or non-floating scores, non-positive costs or ``k`` outside ``[0, sum(cost)]``.
        TypeError: when ``scores`` is not a tensor.
    """
    _check_scores(scores, "hard_topk")
    n = scores.shape[-1]
    x, c, kk = _rows(scores, k, cost)
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    c_sorted = torch.gather(c.expand_as(x), -1, order)
    before = torch.cumsum(c_sorted, -1) - c_sorted
    keep_sorted = (before + 0.5 * c_sorted < kk).to(torch.float64)
    keep = torch.zeros_like(x).scatter_(-1, order, keep_sorted)
    out_dtype = torch.promote_types(scores.dtype, torch.float32)
    return keep.to(out_dtype).reshape(scores.shape[:-1] + (n,))


def mask_fractionality(mask: torch.Tensor) -> float:
    """Mean of ``min(f, 1 - f)``: 0 for a binary mask, up to 0.5 for a mask stuck at 1/2.

    Args:
        mask (`torch.Tensor`): a soft mask with values in ``[0, 1]``, any shape.

    Returns:
        `float`: the mean fractionality (0.0 for an empty mask).
    """
    if mask.numel() == 0:
        return 0.0
    m = mask.detach().float()
    return float(torch.minimum(m, 1 - m).mean())


# --- short rows (N:M groups): a vectorised solve ---------------------------------------------------------------------
#
# Every N:M layer holds ~10^5-10^6 rows of m = 4 scores with the same integer k. The general solver above pays for
# float64 copies, a per-row sort, a reduction along a 4-long dim (slow on CPU) and one host sync per Newton step,
# ~5 ms per layer. Here, per row:
#   1. centre: c = the midpoint of the k-th and (k+1)-th largest score (for m = 4 from two pairwise comparisons, no
#      sort), d = (x - c) / tau in the scores' precision. Near the threshold x - c is exact (Sterbenz), so d is as
#      accurate as float32 allows, and the root t of sum_i sigmoid(d_i + t) = k is O(1): |t| <= log(m - 1) + tiny for
#      m = 4 (measured; the d's are symmetric around 0 at the k / k+1 boundary). So float32 is enough -- the general
#      solver needs float64 because it works with x / tau + t, both ~1e6 at tau = 1e-6. A fractional k (the budget
#      anneal of N:M: k falls from m to n) centres on the ceil(k)-th score instead and starts at t = logit(frac(k)),
#      the root once the other units are saturated; |t| <= log(m - 1) + |logit(frac(k))| + tiny.
#   2. Newton from t = 0 (or logit(frac(k))): t <- t - (S - k) / S', S = sum f, S' = sum f (1 - f); row sums by a
#      matrix-vector product (a sum along a 4-long last dim is ~5x slower on CPU). From the midpoint it needs <= 3
#      steps for |S - k| <= 1e-6 in float32 (1e-12 in float64) on every case tried, 0-1 once tau is small (the rows
#      are saturated). Steps are capped at _MAX_STEP: from logit(frac(k)) at a large tau (a fractional k just above
#      an integer, with the ceil(k)-th score close to the k-th) S is flat, a full step overshoots to where every
#      unit is on and the next one to the other end; undamped, such rows (up to all of them, late in the anneal)
#      never settled and went to the general solver, 1.4-6x slower per call. Integer-k steps stay below the cap.
#   3. every row is checked; a row that is not within the tolerance (none in the cases tried) goes through the
#      general safeguarded solver, so the result sums to k exactly as before, whatever the input. NaN/Inf scores are
#      caught first by one sum over all scores (an Inf would otherwise just saturate to 0 or 1) and get the usual
#      error.
_SHORT_MAX_ITER = 8
_MAX_STEP = 2.0


def _short_rows_apply(scores, k, cost) -> bool:
    """Whether `soft_topk` takes the short-row path: unit costs, rows of 2..64, one number k with 0 < k < m (a
    fractional k is what the budget anneal asks for while it tightens an N:M pattern)."""
    if cost is not None or not isinstance(scores, torch.Tensor) or not torch.is_floating_point(scores):
        return False
    n = scores.shape[-1] if scores.dim() else 0
    if not 2 <= n <= _SHORT_ROW or scores.numel() == 0 or isinstance(k, bool) or not isinstance(k, (int, float)):
        return False
    return math.isfinite(k) and 0 < k < n


def _pair_network(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows of 4: the winners ``hi`` and losers ``lo`` of the pairs (0, 2), (1, 3), the first comparisons of a
    4-sorting network. The max is max(hi), the min min(lo), the middle two are min(hi) and max(lo); no sort."""
    a, b = x[:, :2], x[:, 2:]
    return torch.maximum(a, b), torch.minimum(a, b)


def _ranked4(hi: torch.Tensor, lo: torch.Tensor, j: int) -> torch.Tensor:
    """The ``j``-th largest (1-based) of rows of 4 from `_pair_network`'s ``hi`` / ``lo``."""
    if j == 1:
        return torch.maximum(hi[:, 0], hi[:, 1])
    if j == 4:
        return torch.minimum(lo[:, 0], lo[:, 1])
    hi_min, lo_max = torch.minimum(hi[:, 0], hi[:, 1]), torch.maximum(lo[:, 0], lo[:, 1])
    return torch.maximum(hi_min, lo_max) if j == 2 else torch.minimum(hi_min, lo_max)


def _kth_largest(x: torch.Tensor, j: int) -> torch.Tensor:
    """The ``j``-th largest entry (1-based) of each row of ``x`` ``(R, m)``; m = 4 by `_pair_network`, else a sort."""
    if x.shape[-1] != 4:
        return torch.sort(x, dim=-1, descending=True).values[:, j - 1]
    return _ranked4(*_pair_network(x), j)


def _kth_midpoint(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(x_(k) + x_(k+1)) / 2`` per row of ``x`` ``(R, m)``, ``x_(j)`` the j-th largest; m = 4 from one pass of
    `_pair_network` (this runs every N:M forward), else a sort."""
    if x.shape[-1] != 4:
        ranked = torch.sort(x, dim=-1, descending=True).values
        return 0.5 * (ranked[:, k - 1] + ranked[:, k])
    hi, lo = _pair_network(x)
    if k == 2:  # the middle two are min(hi) and max(lo) in either order: their sum needs no comparison
        pair = (torch.minimum(hi[:, 0], hi[:, 1]), torch.maximum(lo[:, 0], lo[:, 1]))
    else:
        pair = (_ranked4(hi, lo, k), _ranked4(hi, lo, k + 1))
    return torch.add(*pair).mul_(0.5)


def _short_row_start(x: torch.Tensor, k: float) -> tuple[torch.Tensor, float]:
    """Centre and starting shift of the short-row Newton solve of ``sum_i sigmoid((x_i - centre) / tau + t) = k``.

    Integer ``k``: the midpoint of the k-th and (k+1)-th largest scores, ``t = 0`` (the rows are symmetric around the
    k / k+1 boundary). Fractional ``k`` (budget anneal): the ``ceil(k)``-th largest score, the one unit that is
    partly on once tau is small, and ``t = logit(k - floor(k))`` -- the root when the other units are saturated.
    """
    if float(k).is_integer():
        return _kth_midpoint(x, int(k)), 0.0
    whole = math.floor(k)
    return _kth_largest(x, whole + 1), math.log((k - whole) / (1.0 - (k - whole)))


def _newton_short_rows(
    d: torch.Tensor, k: float, t: torch.Tensor | float = 0.0, iters: int | None = None, bound: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``sum_i sigmoid(d_i + t) = k`` per row of the centred ``d`` ``(R, m)`` by Newton from ``t`` (a number:
    the same start for every row, default 0; or an ``(R, 1)`` tensor), each step capped at ``_MAX_STEP``.

    Returns ``(t (R, 1), f = sigmoid(d + t), ok (R,) bool)``; ``ok`` is False for the rows not within the tolerance
    (``1e-6`` in float32, ``1e-12`` in float64) after ``iters`` steps. Steps are taken on all rows while more than half
    are unsettled, then only on the unsettled ones (gathered; a recursive call): from tau ~ 0.1 down most rows settle
    at the first evaluation. Work buffers are reused: a fresh weight-sized tensor costs page faults on CPU
    comparable to the arithmetic.
    """
    rows, m = d.shape
    iters = _SHORT_MAX_ITER if iters is None else iters  # read at call time (tests set it to 0)
    ones = torch.ones(m, dtype=d.dtype, device=d.device)
    tol = 1e-12 * m if d.dtype == torch.float64 else 1e-6
    # the root is within log(m - 1) + tiny of 0 for an integer k (midpoint centre), within that plus |logit(k -
    # floor(k))| for a fractional one (`_short_row_start`); the clamp keeps every iterate in that range
    if not torch.is_tensor(t):
        bound = 2.0 * math.log(m) + 2.0 + abs(t) if bound is None else bound
        t = torch.full((rows, 1), float(t), dtype=d.dtype, device=d.device)
    elif bound is None:
        bound = 2.0 * math.log(m) + 2.0 + (float(t.abs().max()) if t.numel() else 0.0)
    f = torch.add(d, t).sigmoid_()
    square = None
    for it in range(iters + 1):
        total = torch.mv(f, ones)
        g = total - k
        ok = g.abs() <= tol  # NaN is not ok
        unsettled = rows - int(ok.sum())
        if unsettled == 0 or it == iters:
            break
        if 2 * unsettled <= rows:  # finish the few unsettled rows on their own
            idx = (~ok).nonzero().squeeze(-1)
            t_a, f_a, ok_a = _newton_short_rows(d[idx], k, t[idx], iters - it, bound)
            t[idx], f[idx], ok[idx] = t_a, f_a, ok_a
            break
        square = torch.mul(f, f, out=square)
        slope = total - torch.mv(square, ones)
        # slope 0: a saturated row, nothing to gain; the cap: see the notes above
        step = torch.div(g, slope).nan_to_num_(0.0, 0.0, 0.0).clamp_(-_MAX_STEP, _MAX_STEP)
        t.sub_(step.unsqueeze(-1)).clamp_(-bound, bound)
        torch.add(d, t, out=f).sigmoid_()
    return t, f, ok


class _ShortRowsTopK(torch.autograd.Function):
    """`soft_topk` for rows of 2..64 units with unit costs and one ``k`` (see the notes above); the backward is
    `_SoftTopK`'s exact implicit gradient with the row sums as matrix-vector products. Returns ``(f, t)`` with ``t``
    the float64 shift in ``f = sigmoid(x / tau + t)`` (not differentiable)."""

    @staticmethod
    def forward(ctx, scores, k, tau, need_shift):
        n = scores.shape[-1]
        work = _work_dtype(scores)
        x = scores.detach().reshape(-1, n).to(work)
        if not math.isfinite(float(x.sum())):  # one read-only pass; an Inf score would just saturate to 0 or 1
            _check_scores(scores, "soft_topk")  # raises for NaN/Inf (a finite sum that overflowed passes)
        center, start = _short_row_start(x, k)
        d = torch.sub(x, center.unsqueeze(-1)).div_(tau)
        t, f, ok = _newton_short_rows(d, k, start)
        if not bool(ok.all()):  # a row Newton did not settle: the general solver
            bad = (~ok).nonzero().squeeze(-1)
            ones = torch.ones(1, n, dtype=torch.float64, device=x.device)
            kk = torch.full((bad.numel(), 1), float(k), dtype=torch.float64, device=x.device)
            t_bad = _solve_rows(d[bad].double(), ones, kk, None, work).to(work)
            t[bad] = t_bad
            f[bad] = torch.sigmoid(d[bad] + t_bad)
        # f = sigmoid((x - center) / tau + t) = sigmoid(x / tau + shift); float64 so that x / tau + shift keeps f
        shift = t.reshape(-1).double() - center.double() / tau if need_shift else t.new_empty(0)
        ctx.save_for_backward(f)
        ctx.tau, ctx.in_dtype = tau, scores.dtype
        ctx.mark_non_differentiable(shift)
        out_dtype = torch.promote_types(scores.dtype, torch.float32)
        return f.to(out_dtype).reshape(scores.shape), shift.reshape(scores.shape[:-1]) if need_shift else shift

    @staticmethod
    def backward(ctx, grad_f, _grad_shift):
        (f,) = ctx.saved_tensors
        u = grad_f.reshape(f.shape).to(f.dtype)
        ones = torch.ones(f.shape[-1], dtype=f.dtype, device=f.device)
        s = torch.rsub(f, 1).mul_(f)  # f (1 - f); not f - f * f, which cancels where f is near 1
        su = torch.mul(s, u)
        coupling = torch.mv(su, ones).div_(torch.mv(s, ones).clamp_min_(torch.finfo(f.dtype).tiny))
        # (s u - s * coupling) / tau in two passes over the (R, m) tensors (su is reused, not recomputed)
        grad = torch.addcmul(su, s, coupling.unsqueeze(-1), value=-1).div_(ctx.tau)
        return grad.to(ctx.in_dtype).reshape(grad_f.shape), None, None, None
