"""results.json: the machine-readable contract of a run (atomic writes, readable summary table)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.core.atomic_io import atomic_write_text


def to_jsonable(value: Any) -> Any:
    """Tensors/numpy scalars -> floats, non-finite floats -> None, containers recursively."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def write_results(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(results), indent=2, sort_keys=False) + "\n")


def read_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def print_results(results: Mapping[str, Any], title: str = "results") -> None:
    """A table of every scalar ``test/...``, ``sparsity/...`` and ``pruned/...`` entry."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key.split("/")[0] in (
            "test", "sparsity", "pruned", "params", "wall_time_s",
        ):  # fmt: skip
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else f"{value:,}")
    Console(width=200).print(table)
