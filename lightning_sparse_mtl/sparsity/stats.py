"""Sparsity statistics with one definition, used everywhere (exact zeros, no tolerance).

group sparsity % = zero groups / all groups of *this* grouping: input groups of the grouped layers
(``groups=input``, one entry per layer) or channels of the grouped channel spaces (``groups=coupled``, one entry
per space, named after its root layer; a zero coupled group is a removed channel).
weight sparsity % = grouped weights lying in zero groups / all grouped weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_sparse_mtl.sparsity.coupled import CoupledGroup
from lightning_sparse_mtl.sparsity.coupled_prox import norms_of
from lightning_sparse_mtl.sparsity.groups import ConvGroup


@torch.no_grad()
def sparsity_stats(groups: Sequence[ConvGroup | CoupledGroup]) -> dict:
    """Overall and per-layer statistics: {"group_sparsity", "weight_sparsity", "zero_groups", "total_groups",
    "grouped_params", "layers": {name: {"groups", "zero_groups", "group_sparsity"}}} (a layer for input groups,
    a channel space for coupled ones)."""
    layers = {}
    zero_total = groups_total = zero_weights = weights_total = 0
    for g in groups:
        is_zero = (norms_of(g) == 0).cpu()
        zero = int(is_zero.sum())
        layers[g.name] = {
            "groups": g.num_groups,
            "zero_groups": zero,
            "group_sparsity": 100.0 * zero / g.num_groups,
        }
        zero_total += zero
        groups_total += g.num_groups
        zero_weights += int(g.sizes()[is_zero].sum())
        weights_total += g.numel
    return {
        "group_sparsity": 100.0 * zero_total / max(groups_total, 1),
        "weight_sparsity": 100.0 * zero_weights / max(weights_total, 1),
        "zero_groups": zero_total,
        "total_groups": groups_total,
        "grouped_params": weights_total,
        "layers": layers,
    }


def flat_metrics(stats: dict, prefix: str = "sparsity") -> dict[str, float]:
    """Flatten :func:`sparsity_stats` into logger keys ``sparsity/<stat>`` and ``sparsity/layer/<name>/<stat>``."""
    out = {f"{prefix}/{k}": float(v) for k, v in stats.items() if not isinstance(v, dict)}
    for name, layer in stats.get("layers", {}).items():
        out[f"{prefix}/layer/{name}/group_sparsity"] = float(layer["group_sparsity"])
    return out
