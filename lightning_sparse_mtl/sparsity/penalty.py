"""The group-lasso penalty  Omega(W) = sum_layers sum_c w_g * ||W[:, c]||_2  (w_g = sqrt(p_g) by default).

Its value and its gradient, for weights of any rank >= 2 (every reduction is over all dims but dim 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_sparse_mtl.sparsity.groups import ConvGroup
from lightning_sparse_mtl.sparsity.prox import channel_norms, group_dims, per_group


def group_penalty(groups: Sequence[ConvGroup], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Differentiable Omega(W) (scalar). One ``vector_norm`` per layer, no loop over channels.

    ``weights`` holds an (I,) group weight per layer (default ``sqrt_p`` for every group).
    """
    terms = []
    for i, g in enumerate(groups):
        norms = torch.linalg.vector_norm(g.weight, dim=group_dims(g.weight))
        terms.append((norms * weights[i]).sum() if weights is not None else g.sqrt_p * norms.sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def add_penalty_grad_(
    groups: Sequence[ConvGroup],
    sparsity_weight: float,
    norms: Sequence[torch.Tensor | None] | None = None,
    weights: Sequence[torch.Tensor] | None = None,
    grad_scale: torch.Tensor | float | None = None,
) -> float:
    """Add ``sparsity_weight * dOmega/dW`` to each ``weight.grad`` in place; return ``sparsity_weight * Omega``.

    Same result as putting the penalty into the loss and back-propagating it, without autograd:
    dOmega/dW[:, c] = w_g * W[:, c] / ||W[:, c]|| (0 for an all-zero group, the minimal subgradient).
    ``norms`` may hold known (I,) group norms per layer (None = compute), saving one pass over the weights.
    ``grad_scale``: the loss scale of still-scaled gradients (a GradScaler handing a fused optimizer its
    scale); the penalty gradient is multiplied by it so that it is exact after the optimizer unscales.
    """
    terms = []
    for i, g in enumerate(groups):
        w = g.weight
        known = norms[i] if norms is not None else None
        n = channel_norms(w) if known is None else known
        wg = weights[i] if weights is not None else torch.full_like(n, g.sqrt_p)
        terms.append((wg * n).sum())
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        scale = torch.where(n > 0, sparsity_weight * wg / n.clamp_min(torch.finfo(n.dtype).tiny), 0.0)
        if grad_scale is not None:
            scale = scale * grad_scale
        w.grad.addcmul_(w, per_group(scale, w).to(w.grad.dtype))
    return sparsity_weight * float(torch.stack(terms).sum()) if terms else 0.0
