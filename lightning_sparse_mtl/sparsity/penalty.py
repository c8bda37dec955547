"""The group-lasso penalty  Omega(W) = sum_layers sum_c sqrt(p_g) * ||W[:, c]||_2, its value and gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_sparse_mtl.sparsity.groups import ConvGroup, group_norms


def group_penalty(groups: Sequence[ConvGroup]) -> torch.Tensor:
    """Differentiable Omega(W) (scalar). One ``vector_norm`` per layer, no loop over channels."""
    terms = [g.sqrt_p * group_norms(g.weight).sum() for g in groups]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def add_penalty_grad_(
    groups: Sequence[ConvGroup], sparsity_weight: float, norms: Sequence[torch.Tensor | None] | None = None
) -> float:
    """Add ``sparsity_weight * dOmega/dW`` to each ``weight.grad`` in place; return ``sparsity_weight * Omega``.

    Same result as putting the penalty into the loss and back-propagating it, without autograd:
    dOmega/dW[:, c] = sqrt(p_g) * W[:, c] / ||W[:, c]|| (0 for an all-zero group, the minimal subgradient).
    ``norms`` may hold known (I,) group norms per layer (None = compute), saving one pass over the weights.
    """
    terms = []
    for g, known in zip(groups, norms or [None] * len(groups)):
        w = g.weight
        n = group_norms(w) if known is None else known
        terms.append(g.sqrt_p * n.sum())
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        scale = torch.where(n > 0, sparsity_weight * g.sqrt_p / n, torch.zeros_like(n))
        w.grad.addcmul_(w, scale.view(1, -1, 1, 1))
    return sparsity_weight * float(torch.stack(terms).sum()) if terms else 0.0
