"""What a report needs to know about a metric key: direction, unit, axis label.

Directions and units are the ones each metric class declares (:func:`~.mtl.metrics.metric_direction`,
:func:`~.mtl.metrics.metric_unit`); here "°" reads "degrees", a dimensionless metric
"fraction" ("relative" for rel_err), and "depth unit" the dataset's (:data:`DEPTH_UNITS`, keyed by the dataset
class named in the run's config, overridable with a ``data.depth_unit`` config key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_sparse_mtl.mtl.metrics import metric_direction, metric_unit

DEPTH_UNIT = "depth unit"
FRACTION = "fraction"

# dataset class name -> unit of its depth / disparity maps
DEPTH_UNITS = {
    "DigitScenes": "scene units",  # synthetic z (cards at 3-6.5, background at 10-14); no physical unit
    "NYUv2": "m",
    "Cityscapes": "rescaled disparity",
}
# report columns that are not test metrics: (label, unit, higher is better)
COLUMN_INFO: dict[str, tuple[str, str, bool | None]] = {
    "group_sparsity_%": ("group sparsity", "%", None),
    "weight_sparsity_%": ("weight sparsity", "%", None),
    "params": ("params", "count", False),
    "pruned_params": ("pruned params", "count", False),
    "macs": ("MACs", "count", False),
    "macs_ratio": ("MACs ratio dense / pruned", "×", True),
    "speedup_b1": ("speedup batch 1", "×", True),
    "speedup_b8": ("speedup batch 8", "×", True),
    "dense_latency_b1_ms": ("dense latency b1", "ms", False),
    "pruned_latency_b1_ms": ("pruned latency b1", "ms", False),
    "dense_latency_b8_ms": ("dense latency b8", "ms", False),
    "pruned_latency_b8_ms": ("pruned latency b8", "ms", False),
    "test/delta_m": ("Δm (results.json)", "%", True),
    "delta_m_vs_stl": ("Δm vs single-task baselines", "%", True),
    "delta_m_vs_dense": ("Δm vs dense λ = 0", "%", True),
}


def is_test_metric(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "test"


def higher_is_better(key: str) -> bool | None:
    """Direction of ``test/<task>/<metric>`` or of a known report column; None if unknown."""
    if key in COLUMN_INFO:
        return COLUMN_INFO[key][2]
    return metric_direction(key) if is_test_metric(key) else None


def depth_unit(config: Mapping[str, Any] | None) -> str:
    """The depth unit of the dataset in a run's resolved ``config`` (``data.depth_unit`` wins)."""
    data = (config or {}).get("data") or {}
    if data.get("depth_unit"):
        return str(data["depth_unit"])
    target = str((data.get("dataset") or {}).get("_target_", ""))
    return DEPTH_UNITS.get(target.rsplit(".", 1)[-1], "dataset depth unit")


def unit(key: str, config: Mapping[str, Any] | None = None) -> str:
    """Unit of a metric key or report column ('' when unknown)."""
    if key in COLUMN_INFO:
        return COLUMN_INFO[key][1]
    value = metric_unit(key) if is_test_metric(key) else None
    if value is None:
        return ""
    if value == "°":
        return "degrees"
    if value == DEPTH_UNIT:
        return depth_unit(config)
    return value or ("relative" if key.endswith("/rel_err") else FRACTION)


def label(key: str, config: Mapping[str, Any] | None = None, arrow: bool = True) -> str:
    """Axis label: ``seg/miou (fraction, ↑ better)``; ``normal/mean (degrees, ↓ better)``."""
    name = COLUMN_INFO[key][0] if key in COLUMN_INFO else key.removeprefix("test/")
    hib = higher_is_better(key)
    bits = [u for u in (unit(key, config),) if u and u != "count"]
    if arrow and hib is not None:
        bits.append("↑ better" if hib else "↓ better")
    return f"{name} ({', '.join(bits)})" if bits else name
