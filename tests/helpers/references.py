"""Independent reference solutions the tests compare the package against."""

from __future__ import annotations

import torch


def reference_adam_prox(z: torch.Tensor, d: torch.Tensor, tau: float) -> torch.Tensor:
    """Independent float64 solution, one group: argmin_x 1/2 (x-z)^T D (x-z) + tau ||x||, by bisection on r."""
    z, d = z.double().flatten(), d.double().flatten()
    if torch.linalg.vector_norm(d * z) <= tau:
        return torch.zeros_like(z)
    lo, hi = 0.0, float(torch.linalg.vector_norm(z))
    for _ in range(200):
        r = (lo + hi) / 2
        lo, hi = (r, hi) if float(((d * z) / (d * r + tau)).square().sum()) > 1 else (lo, r)
    return d * z * r / (d * r + tau)
