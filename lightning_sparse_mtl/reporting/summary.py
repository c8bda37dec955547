"""Per-configuration statistics over seeds (pandas) and Δm computed in the report.

For every numeric report column: ``<col>_mean``, ``<col>_std`` (sample std, ddof = 1; empty for n = 1) and the
95 % confidence interval of the mean from the t-distribution, ``<col>_ci95_low`` / ``<col>_ci95_high``
(mean ± t_{0.975, n-1} · std / √n).

Δm (:func:`lightning_sparse_mtl.mtl.delta_m.delta_m`, positive = better) is added per job as
``delta_m_vs_stl`` against single-task baselines (``--baselines``: results.json files, or folders whose dense
single-task runs are averaged over seeds) and as ``delta_m_vs_dense`` against the mean over seeds of the same
configuration at λ = 0 (when the sweep has it; a target or peer arm's counterpart is the λ = 0 run of the same
setting: :func:`~lightning_sparse_mtl.reporting.configurations.is_dense_run`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.mtl.delta_m import delta_m, is_metric_key
from lightning_sparse_mtl.reporting.configurations import is_dense_run
from lightning_sparse_mtl.reporting.metric_info import higher_is_better

CI_LEVEL = 0.95


def ci_halfwidth(std: float, n: int, level: float = CI_LEVEL) -> float:
    """Half-width of the t confidence interval of a mean of ``n`` samples with sample std ``std``."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if is_metric_key(k) and isinstance(v, int | float) and math.isfinite(v)}


def _directions(keys: Sequence[str]) -> dict[str, bool]:
    return {k: d for k in keys if (d := higher_is_better(k)) is not None}


def _results_files(path: Path) -> list[tuple[Path, dict]]:
    files = [path] if path.is_file() else sorted(path.rglob("results.json"))
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read baseline {f}: {err}; expected a results.json") from None
        if isinstance(data, Mapping):
            out.append((f, dict(data)))
    return out


def load_stl_baselines(paths: Sequence[str | os.PathLike]) -> dict[str, float]:
    """``{"test/<task>/<metric>": mean over the baseline runs}``. A file is used as given; a folder contributes
    its dense single-task runs (:func:`is_dense_run`, ``config.tasks`` of length 1). UserError when a path is
    missing or nothing usable is found."""
    values: dict[str, list[float]] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"baseline path not found: {path}; give STL results.json files or their folder")
        for _, res in _results_files(path):
            tasks = (res.get("config") or {}).get("tasks") or []
            if path.is_dir() and (not is_dense_run(res) or len(tasks) != 1):
                continue
            for key, value in _metrics(res).items():
                values.setdefault(key, []).append(value)
    if not values:
        raise UserError(f"no dense single-task test metrics found in {', '.join(map(str, paths))}")
    return {k: float(np.mean(v)) for k, v in sorted(values.items())}


def add_delta_m(rows: list[dict[str, Any]], baselines: Mapping[str, float] | None) -> list[str]:
    """Add ``delta_m_vs_stl`` (when ``baselines``) and ``delta_m_vs_dense`` to each row (None when not defined);
    returns the Δm columns that got at least one value."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        if row.get("_dense") and row.get("_signature") is not None:
            ref = groups.setdefault(row["_signature"], {})
            for key, value in _metrics(row).items():
                ref.setdefault(key, []).append(value)
    dense_refs = {sig: {k: float(np.mean(v)) for k, v in ref.items()} for sig, ref in groups.items()}
    added = set()
    zero = sorted({k for ref in dense_refs.values() for k, v in ref.items() if v == 0})
    if zero:  # the sweep's own λ=0 runs are the reference: a 0 there (an early, weak model) cannot be divided by
        print(f"Δm vs dense leaves out {', '.join(zero)}: the λ=0 runs' value is 0 (Δm divides by the baseline)")
    for row in rows:
        metrics = _metrics(row)
        dense_ref = dense_refs.get(row.get("_signature"))
        refs = {"delta_m_vs_dense": {k: v for k, v in dense_ref.items() if v != 0} if dense_ref else None}
        if baselines:
            refs["delta_m_vs_stl"] = dict(baselines)
        for column, ref in refs.items():
            row[column] = None
            shared = [k for k in metrics if k in (ref or {})]
            directions = _directions(shared)
            if ref and directions:
                row[column] = delta_m({k: metrics[k] for k in directions}, ref, directions)
                added.add(column)
    return [c for c in ("delta_m_vs_stl", "delta_m_vs_dense") if c in added]


def summarise(rows: Sequence[Mapping[str, Any]], value_columns: Sequence[str]) -> pd.DataFrame:
    """One row per configuration (in order of first appearance): ``config``, ``n``, ``seeds``, then for every
    column in ``value_columns`` with a value: ``_mean``, ``_std``, ``_ci95_low``, ``_ci95_high``."""
    frame = pd.DataFrame([{"config": r["config"], "seed": r.get("seed"), **{c: r.get(c) for c in value_columns}}
                          for r in rows])  # fmt: skip
    out = []
    for config, group in frame.groupby("config", sort=False):
        seeds = sorted(int(s) for s in group["seed"].dropna())
        rec: dict[str, Any] = {"config": config, "n": len(group), "seeds": " ".join(map(str, seeds))}
        for col in value_columns:
            vals = pd.to_numeric(group[col], errors="coerce").dropna()
            if vals.empty:
                continue
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            half = ci_halfwidth(std, len(vals))
            rec.update({f"{col}_mean": mean, f"{col}_std": std, f"{col}_ci95_low": mean - half,
                        f"{col}_ci95_high": mean + half})  # fmt: skip
            if len(vals) != len(group):
                rec[f"{col}_n"] = len(vals)
        out.append(rec)
    return pd.DataFrame(out)
