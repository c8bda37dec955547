"""The method's operators on coupled groups (:class:`~lightning_sparse_mtl.sparsity.coupled.CoupledGroup`).

A group is the union of slices of several tensors; the groups of one space do not overlap. Every operator is
the single-tensor one of :mod:`~lightning_sparse_mtl.sparsity.prox` with its per-group reductions added across
the tensors: per piece, per-slice partial sums (plain: ``||.||^2``; Adam metric: the Halley terms f, F1, F2 and
``||D z||^2``) are scattered into the (C,) group sums, one radius per group is solved, and each piece is written
back with its own slices' radius and threshold. Arithmetic in float32 at least, as in ``prox``.

Piece layout: a piece of dim 1 (input slices of W (O, I, ...)) is viewed as (O, I * K) with K columns per
slice; a piece of dim 0 (rows, 1-D parameters) as (1, O * K). Per-slice sums are then ``prox._group_sum``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import lightning_sparse_mtl.sparsity.prox_cpu as prox_cpu
from lightning_sparse_mtl.sparsity.coupled import CoupledGroup, Piece
from lightning_sparse_mtl.sparsity.groups import ConvGroup
from lightning_sparse_mtl.sparsity.prox import (
    _columns,
    _group_sum,
    _rtol,
    _solve,
    channel_norms,
    compute_dtype,
    halley_radius,
)

AdamState = tuple[torch.Tensor, float, float]  # (v like the param, 1 / bias_correction2, eps)


def _view(p: Piece, t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``t`` (shaped like ``p.param``) as (R, L * K) with K columns per slice along ``p.dim``, and K."""
    k = max(p.slice_size // (t.shape[0] if p.dim == 1 else 1), 1)
    return (t.reshape(t.shape[0], -1) if p.dim == 1 else t.reshape(1, -1)), k


def _local(p: Piece, values: torch.Tensor, fill: float) -> torch.Tensor:
    """(C,) per-group values -> (L,) per-slice values of piece ``p`` (``fill`` for slices outside the groups)."""
    if p.full:
        return values
    out = torch.full((p.local_size,), fill, dtype=values.dtype, device=values.device)
    return out.index_copy_(0, p.index, values[p.channel])


def _scatter(p: Piece, local: torch.Tensor, out: torch.Tensor) -> None:
    """Add (L,) per-slice sums of piece ``p`` into the (C,) group sums ``out``."""
    if p.full:
        out.add_(local)
    else:
        out.index_add_(0, p.channel, local[p.index])


def _broadcast(p: Piece, local: torch.Tensor) -> torch.Tensor:
    """(L,) -> a view that broadcasts against ``p.param`` along ``p.dim``."""
    shape = [1] * p.param.dim()
    shape[p.dim] = -1
    return local.view(shape)


def _sum_sq(p: Piece, t: torch.Tensor) -> torch.Tensor:
    flat, k = _view(p, t)
    return _group_sum(flat.to(compute_dtype(flat)).square(), k)


def norms_of(g: ConvGroup | CoupledGroup) -> torch.Tensor:
    """(groups,) Euclidean norms of the groups of a layer (input grouping) or a channel space (coupled)."""
    return coupled_norms(g) if isinstance(g, CoupledGroup) else channel_norms(g.weight)


@torch.no_grad()
def coupled_norms(g: CoupledGroup) -> torch.Tensor:
    """(C,) Euclidean norm of every group (float32 at least)."""
    out = torch.zeros(g.num_groups, dtype=compute_dtype(g.pieces[0].param), device=g.device)
    for p in g.pieces:
        _scatter(p, _sum_sq(p, p.param), out)
    return out.sqrt()


def _scale_(p: Piece, local: torch.Tensor) -> None:
    """``p.param`` times (L,) ``local`` along its dim, computed in float32 at least, rounded once."""
    w = p.param
    if w.dtype == compute_dtype(w):
        w.mul_(_broadcast(p, local.to(w.dtype)))
    else:
        w.copy_(w.to(local.dtype) * _broadcast(p, local))


@torch.no_grad()
def coupled_soft_threshold_(
    g: CoupledGroup, tau: float | torch.Tensor, frozen: torch.Tensor | None = None
) -> torch.Tensor:
    """Group soft-threshold in place: every group's slices times max(0, 1 - tau / ||group||); ``frozen`` (C,)
    groups set to 0. Returns the (C,) group norms after the step."""
    norms = coupled_norms(g)
    scale = torch.clamp(1.0 - tau / norms.clamp_min(torch.finfo(norms.dtype).tiny), min=0.0)
    if frozen is not None:
        scale = scale.masked_fill(frozen, 0.0)
    for p in g.pieces:
        _scale_(p, _local(p, scale, 1.0))
    return norms * scale


class _EagerPiece:
    """One piece's share of the Adam prox in torch ops: D and u = D z as (R, L * K) float32 views."""

    def __init__(self, p: Piece, state: AdamState, tau: torch.Tensor) -> None:
        v, inv_bc2, eps = state
        dt = compute_dtype(p.param)
        z, self.k = _view(p, p.param.to(dt))
        self.p, self.d = p, (_view(p, v.to(dt))[0] * inv_bc2).sqrt_().add_(eps)
        self.u = self.d * z
        self.tau_c = _columns(_local(p, tau, 1.0), self.k)

    def sums(self, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(f, F1, F2, ||u||^2) per slice (L,) from the radii ``r`` (C,)."""
        ia = torch.addcmul(self.tau_c, self.d, _columns(_local(self.p, r, 0.0), self.k)).reciprocal_()
        t2 = (self.u * ia).square_()
        sa = self.d * ia
        t2s = t2 * sa
        f0, f1, f2 = _group_sum(t2, self.k), _group_sum(t2s, self.k), _group_sum(t2s.mul_(sa), self.k)
        return f0, f1, f2, _group_sum(self.u.square(), self.k)

    def update_(self, r: torch.Tensor) -> None:
        p, rc = self.p, _columns(_local(self.p, r, 0.0), self.k)
        tiny = torch.finfo(self.u.dtype).tiny
        x = (self.u * rc).div_(torch.addcmul(self.tau_c, self.d, rc).clamp_min_(tiny))
        x.masked_fill_(x.abs() < tiny, 0.0)  # subnormals flushed, as in prox._update
        if not p.full:  # slices outside the groups keep their value
            inside = _columns(_local(p, torch.ones_like(r), 0.0), self.k).bool()
            x = torch.where(inside, x, _view(p, p.param.to(x.dtype))[0])
        p.param.copy_(x.view_as(p.param))


class _NativePiece:
    """One full, CPU float32 piece through the hand-written kernel of ``prox_cpu`` (rows in memory order)."""

    def __init__(self, lib, p: Piece, state: AdamState, tau: torch.Tensor) -> None:
        v, self.inv_bc2, self.eps = state
        self.lib, self.tau = lib, tau
        self.z, self.k = _view(p, p.param.data)
        self.v = _view(p, v)[0]

    def sums(self, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(prox_cpu.halley_sums(self.lib, self.z, self.v, self.k, self.inv_bc2, self.eps, self.tau, r))

    def update_(self, r: torch.Tensor) -> None:
        prox_cpu.update_(self.lib, self.z, self.v, self.k, self.inv_bc2, self.eps, self.tau, r)


def _worker(p: Piece, state: AdamState, tau: torch.Tensor, lib) -> _EagerPiece | _NativePiece:
    if lib is not None and p.full and p.param.is_contiguous() and prox_cpu.usable(p.param, state[0]):
        return _NativePiece(lib, p, state, tau)
    return _EagerPiece(p, state, tau)


@torch.no_grad()
def coupled_adam_soft_threshold_(
    g: CoupledGroup,
    states: Sequence[AdamState],
    tau: float | torch.Tensor,
    frozen: torch.Tensor | None = None,
    iters: int = 1,
    radius: torch.Tensor | None = None,
    native: bool = False,
) -> torch.Tensor:
    """Adam-weighted group soft-threshold of every group of ``g`` in place (``prox.adam_soft_threshold_`` on
    groups that span several tensors). ``states[j]``: piece j's (v, 1 / bias_correction2, eps). ``tau``: a float
    or (C,); ``radius`` (C,) warm-starts the root search. ``native``: CPU float32 pieces through the kernel of
    ``prox_cpu`` (built once; eager where it cannot be built). Returns the (C,) radii = group norms after the step.
    """
    dt = compute_dtype(g.pieces[0].param)
    scalar = dict(dtype=dt, device=g.device)
    tau_t = torch.as_tensor(tau, **scalar).expand(g.num_groups).contiguous()
    frozen = torch.zeros(g.num_groups, dtype=torch.bool, device=g.device) if frozen is None else frozen
    lib = prox_cpu.kernels() if native and g.device.type == "cpu" else None
    workers = [_worker(p, s, tau_t, lib) for p, s in zip(g.pieces, states)]
    r0 = torch.zeros(g.num_groups, **scalar) if radius is None else radius.to(dt)
    if radius is None and bool((tau_t == 0).any()):  # tau = 0: the root is ||z||, not near 0
        r0 = torch.where(tau_t == 0, coupled_norms(g).to(dt), r0)
    rtol = _rtol(dt)

    def step(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Halley pass over every piece; ||D z||^2 comes with it (groups with ||D z|| <= tau stay 0)."""
        f0, f1, f2, n2 = (torch.zeros(g.num_groups, **scalar) for _ in range(4))
        for p, w in zip(g.pieces, workers):
            for total, part in zip((f0, f1, f2, n2), w.sums(r)):
                _scatter(p, part.to(dt), total)
        alive = (n2 > tau_t.square()) & ~frozen
        r_next = torch.where(alive, halley_radius(r, f0, f1, f2), torch.zeros_like(r))
        done = ((((r_next - r).abs() <= rtol * r_next) & (r_next > 0)) | ~alive).all()
        return r_next, done

    r = _solve(step, r0, iters)
    for w in workers:
        w.update_(r)
    return r


@torch.no_grad()
def coupled_penalty_grad_(
    g: CoupledGroup,
    sparsity_weight: float,
    weight: torch.Tensor,
    norms: torch.Tensor | None = None,
    grad_scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Add ``sparsity_weight * w_c * slice / ||group c||`` to every slice's gradient; returns the (0-dim)
    penalty ``sum_c w_c ||group c||`` (before the factor ``sparsity_weight``)."""
    n = coupled_norms(g) if norms is None else norms
    scale = torch.where(n > 0, sparsity_weight * weight / n.clamp_min(torch.finfo(n.dtype).tiny), 0.0)
    if grad_scale is not None:
        scale = scale * grad_scale
    for p in g.pieces:
        w = p.param
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.addcmul_(w, _broadcast(p, _local(p, scale, 0.0)).to(w.grad.dtype))
    return (weight * n).sum()


def local_indices(g: CoupledGroup, mask: torch.Tensor) -> list[torch.Tensor]:
    """Per piece: the indices along its dim of the slices whose group is set in ``mask`` (C,) bool."""
    return [p.index[mask[p.channel]] for p in g.pieces]


@torch.no_grad()
def coupled_zero_grads_(g: CoupledGroup, indices: Sequence[torch.Tensor]) -> None:
    """Zero the gradient slices ``indices`` (from :func:`local_indices`) of every piece."""
    for p, idx in zip(g.pieces, indices):
        if idx.numel() and p.param.grad is not None:
            p.param.grad.index_fill_(p.dim, idx, 0.0)


@torch.no_grad()
def coupled_zero_state_(g: CoupledGroup, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> None:
    """Zero the slices of groups ``mask`` (C,) in every per-parameter optimizer state tensor."""
    for p, idx in zip(g.pieces, local_indices(g, mask)):
        for value in optimizer.state.get(p.param, {}).values():
            if idx.numel() and torch.is_tensor(value) and value.shape == p.param.shape:
                value.index_fill_(p.dim, idx, 0.0)
