"""Sparsity statistics with one definition, used everywhere (exact zeros, no tolerance).

group sparsity % = zero input groups / all input groups of the grouped layers.
weight sparsity % = grouped weights lying in zero groups / all grouped weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_sparse_mtl.sparsity.groups import ConvGroup
from lightning_sparse_mtl.sparsity.prox import channel_norms


@torch.no_grad()
def sparsity_stats(groups: Sequence[ConvGroup]) -> dict:
    """Overall and per-layer statistics: {"group_sparsity", "weight_sparsity", "zero_groups", "total_groups",
    "grouped_params", "layers": {name: {"groups", "zero_groups", "group_sparsity"}}} (within one layer the
    groups have equal size, so a per-layer weight sparsity would always equal its group sparsity)."""
    layers = {}
    zero_total = groups_total = zero_weights = weights_total = 0
    for g in groups:
        zero = int((channel_norms(g.weight) == 0).sum())
        layers[g.name] = {
            "groups": g.num_groups,
            "zero_groups": zero,
            "group_sparsity": 100.0 * zero / g.num_groups,
        }
        zero_total += zero
        groups_total += g.num_groups
        zero_weights += zero * g.group_size
        weights_total += g.weight.numel()
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
