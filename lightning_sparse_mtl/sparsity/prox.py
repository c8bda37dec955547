"""Proximal operators of the group penalty: exact zeros, no tolerance.

Plain:  W[:, c] <- W[:, c] * max(0, 1 - tau / ||W[:, c]||),  tau = lr * lambda * sqrt(p_g).
Adam-weighted (Deleu & Bengio 2021, arXiv 2102.03869): the prox in Adam's metric D = sqrt(v_hat) + eps,
    x = argmin_x 1/2 (x - z)^T D (x - z) + tau ||x||   per group:
    x = 0 if ||D z|| <= tau, else x_i = D_i z_i r / (D_i r + tau) with r = ||x|| the root of
    sum_i (D_i z_i / (D_i r + tau))^2 = 1, found by Newton on q(r) = f(r)^(-1/2) - 1 (exact in one step
    when D is constant over the group), all groups of a layer at once.
"""

from __future__ import annotations

import torch

from lightning_sparse_mtl.sparsity.groups import group_norms


@torch.no_grad()
def soft_threshold_(weight: torch.Tensor, tau: float, frozen: torch.Tensor | None = None) -> torch.Tensor:
    """Group soft-threshold of ``weight`` (O, I, k, k) in place; ``frozen`` (I,) bool groups are set to 0.

    Returns the (I,) group norms after the step.
    """
    norms = group_norms(weight)
    scale = torch.clamp(1.0 - tau / norms.clamp_min(torch.finfo(norms.dtype).tiny), min=0.0)
    if frozen is not None:
        scale = scale.masked_fill(frozen, 0.0)
    weight.mul_(scale.view(1, -1, 1, 1))
    return norms * scale


@torch.no_grad()
def adam_soft_threshold_(
    weight: torch.Tensor,
    d: torch.Tensor,
    tau: float,
    frozen: torch.Tensor | None = None,
    iters: int = 3,
    radius: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adam-weighted group soft-threshold in place. ``weight``, ``d`` (O, I, k, k), ``d`` > 0.

    ``radius`` (I,) warm-starts Newton (e.g. the previous step's result): q is concave and increasing, so
    every Newton iterate after the first lies left of the root and converges monotonically (quadratically);
    groups whose iterate is still <= 0 get extra iterations, so no live group is zeroed by the solver.
    Returns the (I,) group norms after the step (exactly 0 for zeroed groups).
    """
    dims = (0, 2, 3)
    u = d * weight  # D z
    alive = torch.linalg.vector_norm(u, dim=dims) > tau
    if frozen is not None:
        alive &= ~frozen
    r = torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device) if radius is None else radius.clone()
    denom = torch.empty_like(weight)
    for it in range(iters + 8):
        if it >= iters and not bool((alive & (r <= 0)).any()):
            break
        torch.addcmul(torch.full((), tau, dtype=weight.dtype, device=weight.device), d, r.view(1, -1, 1, 1), out=denom)
        ratio = u / denom  # D z / (D r + tau)
        denom.reciprocal_().mul_(d)  # D / (D r + tau)
        ratio.square_()
        f = ratio.sum(dims)
        df = -2.0 * ratio.mul_(denom).sum(dims)  # f'(r)
        q = f.rsqrt() - 1.0
        dq = -0.5 * f.pow(-1.5) * df
        r = torch.where(alive, (r - q / dq).clamp_min(0.0), torch.zeros_like(r))
    # x = D z r / (D r + tau); groups with r = 0 become exact zeros
    torch.addcmul(torch.full((), tau, dtype=weight.dtype, device=weight.device), d, r.view(1, -1, 1, 1), out=denom)
    weight.copy_(u.mul_(r.view(1, -1, 1, 1)).div_(denom))
    return r
