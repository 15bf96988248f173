"""The soft top-k of short rows (N:M groups) for many score tensors at once, cache-blocked, forward and backward.

Every N:M layer holds ``R`` rows of ``m`` scores (``m`` in 2..64, 4 for 2:4) with one budget ``k`` (integer, or
fractional while the budget anneal tightens the pattern from ``m`` to ``n``). Per row the mask is

    f_i = sigmoid((x_i - c) / tau + t),    sum_i f_i = k,

with ``c`` the midpoint of the k-th and (k+1)-th largest score (a fractional k: the ceil(k)-th score), which keeps the
shift ``t`` O(1), so float32 is accurate even at tau = 1e-6 (see `smart_hf.core.topk`).

Why a separate operator: the mask math is memory-bound. Written as whole-tensor ops, a forward is ~10 passes over
weight-sized tensors and a backward ~6, each a fresh allocation (on CPU a fresh 20 MB tensor costs as much in page
faults as the arithmetic). Here every score tensor is cut into chunks of ``_CHUNK`` elements that fit in the
core's cache; all passes over a chunk run while it is cached, into chunk-sized work buffers reused from chunk to
chunk, and the only weight-sized tensors written are the masks (forward) or the score gradients (backward). Several
tensors (all N:M layers of a model) go through one call without being concatenated (small ones share a chunk). On a
GPU the whole input is one chunk. The forward also returns
``sum_i min(f_i, 1 - f_i)`` (the fractionality the temperature schedule reads), computed on the cached chunk.

Shift: Newton on ``h(t) = log S - log(m - S) - log(k / (m - k))``, ``S = sum_i f_i``, which is linear in ``t``
for a row of equal scores and close to linear otherwise (plain Newton on ``S - k`` overshoots where ``S`` is flat);
``h'(t) = S' m / (S (m - S))`` with ``S' = sum_i f_i (1 - f_i)``. Steps are capped at ``_MAX_STEP`` and iterates
kept within ``|t| <= 2 log m + 2 + |t0|`` (the root's range). Each chunk stops as soon as all its rows have
``|S - k| <= 1e-6`` (float32; ``1e-12 m`` in float64); once fewer than a quarter of a chunk's rows are unsettled,
only those are iterated. Rows still unsettled after ``_MAX_ITER`` steps (none in the cases tried) are solved by the
general safeguarded float64 solver, so every row sums to ``k`` within the tolerance whatever the input.

Gradient (implicit function theorem): with ``z_i = x_i / tau``, ``s_i = f_i (1 - f_i)`` and ``g(t, z) = sum_i f_i
- k = 0``, ``dt/dz_j = -s_j / sum_l s_l``, so ``df_i/dx_j = (s_i delta_ij - s_i s_j / sum_l s_l) / tau`` and the
vector-Jacobian product with ``u = dL/df`` is

    dL/dx_j = (s_j u_j - s_j * (sum_i s_i u_i) / (sum_i s_i)) / tau,

computed from the saved mask ``f`` (the forward's sigmoid, not recomputed) in a few passes over each cached chunk.
"""

from __future__ import annotations

import math

import torch

from .topk import _check_scores, _check_tau, _solve_rows

__all__ = ["short_row_topk"]

_CHUNK = 1 << 18  # elements per chunk on CPU (1 MiB in float32): a chunk and its work buffers stay in cache
_MAX_ITER = 8
_MAX_STEP = 4.0


def _planar(x: torch.Tensor) -> torch.Tensor:
    """``x.t()`` ``(m, r)`` contiguous, by a matrix product with the identity (exact; a strided copy is ~10x
    slower on CPU), so that per-row work on rows of 4 runs as contiguous ops on ``r``-long vectors."""
    return torch.mm(torch.eye(x.shape[-1], dtype=x.dtype, device=x.device), x.t())


def _center(x: torch.Tensor, k: float) -> torch.Tensor:
    """The centre ``c`` per row ``(r,)``: the midpoint of the k-th and (k+1)-th largest scores (integer k), else the
    ceil(k)-th largest. Rows of 4 from the pairs (0, 2), (1, 3) of a sorting network (no sort)."""
    m = x.shape[-1]
    whole = float(k).is_integer()
    j = int(k) if whole else math.floor(k) + 1  # the (upper) rank the centre needs
    if m != 4:
        ranked = torch.sort(x, dim=-1, descending=True).values
        return torch.add(ranked[:, j - 1], ranked[:, j]).mul_(0.5) if whole else ranked[:, j - 1].contiguous()
    p = _planar(x)
    hi0, lo0 = torch.maximum(p[0], p[2]), torch.minimum(p[0], p[2])
    hi1, lo1 = torch.maximum(p[1], p[3]), torch.minimum(p[1], p[3])
    ranked = {1: lambda: torch.maximum(hi0, hi1), 4: lambda: torch.minimum(lo0, lo1)}
    mid_hi, mid_lo = torch.minimum(hi0, hi1), torch.maximum(lo0, lo1)
    ranked[2] = lambda: torch.maximum(mid_hi, mid_lo)
    ranked[3] = lambda: torch.minimum(mid_hi, mid_lo)
    if not whole:
        return ranked[j]()
    if j == 2:  # the middle two are min(hi) and max(lo), in either order
        return mid_hi.add_(mid_lo).mul_(0.5)
    return ranked[j]().add_(ranked[j + 1]()).mul_(0.5)


def _start(k: float) -> float:
    """The starting shift: 0 for an integer k (the row is centred on the k / k+1 boundary), ``logit(frac(k))`` for a
    fractional one (the root once the other units are saturated)."""
    frac = k - math.floor(k)
    return 0.0 if frac == 0 else math.log(frac / (1.0 - frac))


def _newton(d: torch.Tensor, f: torch.Tensor, t: torch.Tensor, k: float, bound: float, iters: int, total):
    """Newton on the rows of the centred ``d`` ``(r, m)``: updates the shifts ``t`` ``(r, 1)`` and the mask ``f``
    (``= sigmoid(d + t)`` on entry and exit, ``total`` its row sums) in place; returns the settled rows (bool)."""
    r, m = d.shape
    ones = torch.ones(m, dtype=d.dtype, device=d.device)
    tol = 1e-12 * m if d.dtype == torch.float64 else 1e-6
    log_target = math.log(k / (m - k))
    for it in range(iters + 1):
        if it:
            total = torch.mv(f, ones)
        ok = (total - k).abs_() <= tol  # NaN is not ok
        unsettled = r - int(ok.sum())
        if unsettled == 0 or it == iters:
            return ok
        if 4 * unsettled <= r:  # iterate the few unsettled rows on their own
            idx = (~ok).nonzero().squeeze(-1)
            t_a, f_a = t[idx], f[idx]
            ok_a = _newton(d[idx], f_a, t_a, k, bound, iters - it, total[idx])
            t[idx], f[idx], ok[idx] = t_a, f_a, ok_a
            return ok
        slope = total - torch.mv(f * f, ones)  # S' = sum f (1 - f)
        rest = m - total
        # h / h' with h = log(S / (m - S)) - log(k / (m - k)), h' = S' m / (S (m - S))
        h = torch.log(total / rest).sub_(log_target)
        step = h.mul_(total).mul_(rest).div_(slope.mul_(m)).nan_to_num_(0.0, 0.0, 0.0).clamp_(-_MAX_STEP, _MAX_STEP)
        t.sub_(step.unsqueeze(-1)).clamp_(-bound, bound)
        torch.add(d, t, out=f).sigmoid_()
    return ok


def _solve_chunk(x: torch.Tensor, f: torch.Tensor, d: torch.Tensor, k: float, tau: float) -> None:
    """Fill ``f`` ``(r, m)`` with the soft top-k of the rows of ``x`` (same shape, the work dtype); ``d`` is a work
    buffer of the same shape."""
    r, m = x.shape
    torch.sub(x, _center(x, k).unsqueeze(-1), out=d).div_(tau)
    if not math.isfinite(float(d.sum())):  # an Inf score would just saturate to 0 or 1
        _check_scores(x, "soft_topk")  # raises for NaN/Inf (a finite sum that overflowed passes)
    start = _start(k)
    if start:
        torch.add(d, start, out=f).sigmoid_()
    else:
        torch.sigmoid(d, out=f)
    total = torch.mv(f, torch.ones(m, dtype=f.dtype, device=f.device))
    t = torch.full((r, 1), start, dtype=x.dtype, device=x.device)
    ok = _newton(d, f, t, k, 2.0 * math.log(m) + 2.0 + abs(start), _MAX_ITER, total)
    if not bool(ok.all()):  # rows Newton did not settle: the general safeguarded solver
        bad = (~ok).nonzero().squeeze(-1)
        ones = torch.ones(1, m, dtype=torch.float64, device=x.device)
        kk = torch.full((bad.numel(), 1), float(k), dtype=torch.float64, device=x.device)
        d_bad = d[bad]
        t_bad = _solve_rows(d_bad.double(), ones, kk, None, x.dtype).to(x.dtype)
        f[bad] = torch.sigmoid(d_bad + t_bad)


def _fractionality(f: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``sum min(f, 1 - f) = n / 2 - sum |f - 1/2|`` of a chunk, float64 (a 0-dim tensor)."""
    return 0.5 * f.numel() - torch.sub(f, 0.5, out=work).abs_().sum(dtype=torch.float64)


def _plan(rows: list[int], m: int, device) -> list[list[tuple[int, int, int]]]:
    """Chunks of about ``_CHUNK`` elements over the rows of several tensors: each a list of ``(tensor, first row,
    end row)`` pieces (small tensors share a chunk; on a GPU one chunk holds everything)."""
    step = max(1, _CHUNK // m) if device.type == "cpu" else max(1, sum(rows))
    plan, chunk, room = [], [], step
    for i, n in enumerate(rows):
        a = 0
        while a < n:
            b = min(n, a + room)
            chunk.append((i, a, b))
            room -= b - a
            a = b
            if room == 0:
                plan.append(chunk)
                chunk, room = [], step
    return plan + ([chunk] if chunk else [])


class _Chunk:
    """One chunk of a plan: its pieces gathered into (or already) one contiguous ``(r, m)`` tensor."""

    def __init__(self, pieces, buffers: dict, m: int):
        self.pieces, self.m = pieces, m
        self.rows = sum(b - a for _, a, b in pieces)
        self.buffers = buffers

    def buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < self.rows * self.m:
            buf = self.buffers[name] = torch.empty(self.rows * self.m, dtype=like.dtype, device=like.device)
        return buf[: self.rows * self.m].view(self.rows, self.m)

    def gather(self, tensors: list[torch.Tensor], name: str) -> torch.Tensor:
        if len(self.pieces) == 1:
            i, a, b = self.pieces[0]
            return tensors[i][a:b]
        out = self.buffer(name, tensors[0])
        return torch.cat([tensors[i][a:b] for i, a, b in self.pieces], out=out)

    def target(self, tensors: list[torch.Tensor], name: str) -> torch.Tensor:
        """Where to write the chunk's result: the output itself for one piece, else a buffer (`scatter` copies)."""
        if len(self.pieces) == 1:
            i, a, b = self.pieces[0]
            return tensors[i][a:b]
        return self.buffer(name, tensors[0])

    def scatter(self, result: torch.Tensor, tensors: list[torch.Tensor]) -> None:
        if len(self.pieces) == 1:
            return
        parts = torch.split(result, [b - a for _, a, b in self.pieces])
        for (i, a, b), part in zip(self.pieces, parts):
            tensors[i][a:b].copy_(part)


def _forward_all(xs: list[torch.Tensor], k: float, tau: float, frac: torch.Tensor | None) -> list[torch.Tensor]:
    m = xs[0].shape[-1]
    outs = [torch.empty_like(x) for x in xs]
    buffers = {}
    for pieces in _plan([x.shape[0] for x in xs], m, xs[0].device):
        chunk = _Chunk(pieces, buffers, m)
        x = chunk.gather(xs, "x")
        f = chunk.target(outs, "f")
        d = chunk.buffer("d", x)
        _solve_chunk(x, f, d, k, tau)
        if frac is not None:
            frac += _fractionality(f, d)
        chunk.scatter(f, outs)
    return outs


def _backward_all(fs: list[torch.Tensor], us: list[torch.Tensor], tau: float) -> list[torch.Tensor]:
    m = fs[0].shape[-1]
    grads = [torch.empty_like(f) for f in fs]
    ones = torch.ones(m, dtype=fs[0].dtype, device=fs[0].device)
    tiny = torch.finfo(fs[0].dtype).tiny
    buffers = {}
    for pieces in _plan([f.shape[0] for f in fs], m, fs[0].device):
        chunk = _Chunk(pieces, buffers, m)
        f, u = chunk.gather(fs, "f"), chunk.gather(us, "u")
        s = torch.neg(f, out=chunk.buffer("s", f)).add_(1).mul_(f)  # f (1 - f); not f - f * f (cancels near 1)
        su = torch.mul(s, u, out=chunk.buffer("su", f))
        coupling = torch.mv(su, ones).div_(torch.mv(s, ones).clamp_min_(tiny))
        grad = chunk.target(grads, "g")
        torch.addcmul(su, s, coupling.unsqueeze(-1), value=-1, out=grad).div_(tau)
        chunk.scatter(grad, grads)
    return grads


class _FusedShortRows(torch.autograd.Function):
    """``short_row_topk`` as one autograd node over all the score tensors (module docstring)."""

    @staticmethod
    def forward(ctx, k, tau, with_fractionality, *scores):
        m = scores[0].shape[-1]
        work_dtype = torch.float64 if scores[0].dtype == torch.float64 else torch.float32
        out_dtype = torch.promote_types(scores[0].dtype, torch.float32)
        device = scores[0].device
        frac = torch.zeros((), dtype=torch.float64, device=device)
        xs = [s.detach().reshape(-1, m).to(work_dtype).contiguous() for s in scores]
        masks = _forward_all(xs, k, tau, frac if with_fractionality else None)
        ctx.save_for_backward(*masks)
        ctx.tau, ctx.in_dtypes, ctx.shapes = tau, [s.dtype for s in scores], [s.shape for s in scores]
        ctx.mark_non_differentiable(frac)
        return (*[f.to(out_dtype).view(s.shape) for f, s in zip(masks, scores)], frac)

    @staticmethod
    def backward(ctx, *grads):
        masks = ctx.saved_tensors
        us = [
            torch.zeros_like(f) if u is None else u.reshape(f.shape).to(f.dtype).contiguous()
            for f, u in zip(masks, grads[:-1])
        ]
        out = _backward_all(list(masks), us, ctx.tau)
        grads_in = [g.to(dtype).view(shape) for g, dtype, shape in zip(out, ctx.in_dtypes, ctx.shapes)]
        return (None, None, None, *grads_in)


def short_row_topk(
    scores: list[torch.Tensor], k: float, tau: float, with_fractionality: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Soft top-k masks of the rows of several score tensors, one budget and temperature for all.

    ``f = sigmoid(x / tau + t)`` per row of ``m`` scores with ``sum f = k``; differentiable with the exact implicit
    gradient ``dL/dx_j = (s_j u_j - s_j sum_i s_i u_i / sum_i s_i) / tau``, ``s = f (1 - f)``, ``u = dL/df``
    (module docstring). Equal to `smart_hf.core.topk.soft_topk` of each tensor alone, within float rounding.

    Args:
        scores: tensors of shape ``(..., m)``, one ``m`` in 2..64, one floating dtype, one device.
        k: the budget of every row, ``0 < k < m`` (fractional allowed).
        tau: temperature > 0.
        with_fractionality: also compute ``sum min(f, 1 - f)`` over every mask (else the second output is 0).

    Returns:
        ``(masks, fractionality)``: one mask per tensor (its shape, dtype ``promote(dtype, float32)``) and the
        float64 0-dim sum of ``min(f, 1 - f)`` (not differentiable).

    Raises:
        ValueError: for an empty list, mixed row lengths or dtypes, ``m`` outside 2..64, ``k`` outside ``(0, m)``,
            ``tau <= 0`` or non-finite scores.
    """
    _check_tau(tau)
    if not scores:
        raise ValueError("short_row_topk needs at least one score tensor; pass e.g. [layer.smart_scores].")
    for s in scores:
        if not isinstance(s, torch.Tensor) or not torch.is_floating_point(s) or s.dim() == 0:
            _check_scores(s, "short_row_topk")  # raises the matching TypeError / ValueError
    m = scores[0].shape[-1]
    if any(s.shape[-1] != m or s.dtype != scores[0].dtype or s.device != scores[0].device for s in scores):
        raise ValueError("short_row_topk needs one row length, dtype and device for all tensors; group them first.")
    if not 2 <= m <= 64:
        raise ValueError(f"short_row_topk takes rows of 2..64 scores, got {m}; use soft_topk for longer rows.")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (math.isfinite(k) and 0 < k < m):
        raise ValueError(f"short_row_topk needs a number 0 < k < m = {m}, got {k!r}; k = 0 or m needs no solve.")
    *masks, frac = _FusedShortRows.apply(float(k), float(tau), with_fractionality, *scores)
    return masks, frac
