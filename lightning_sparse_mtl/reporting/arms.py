"""Arms side by side (methods at one budget, several seeds each): the peers table and its Pareto figure.

An *arm* is a list of finished runs (``results.json`` dicts, one per seed) of one method. Every run is compared
with the **mean over seeds of the dense runs** (λ = 0, equal length): ``mean Δ`` is
:func:`~lightning_sparse_mtl.mtl.delta_m.delta_m` over the test metrics both have (positive = better than dense).
Welch's t-test (unequal variances) compares each arm's per-seed mean Δ with the best arm of the other family
(this project's arms against the best peer, each peer against this project's best arm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lightning_sparse_mtl.mtl.delta_m import delta_m, is_metric_key
from lightning_sparse_mtl.reporting.metric_info import higher_is_better

OURS = ("group_lasso", "group_lasso_coupled")
RUNTIME = "onnxruntime"
Run = Mapping[str, Any]


def dense_mean(dense: Sequence[Run]) -> dict[str, float]:
    """``{test metric: mean over the dense runs}`` (metrics present in every dense run)."""
    keys = set.intersection(*(set(k for k in r if is_metric_key(k)) for r in dense)) if dense else set()
    return {k: float(np.mean([r[k] for r in dense])) for k in sorted(keys)}


def run_delta(run: Run, reference: Mapping[str, float]) -> float:
    """Mean Δ (%) of one run against the dense reference, over their shared test metrics (positive = better)."""
    directions = {k: bool(d) for k in run if is_metric_key(k) and (d := higher_is_better(k)) is not None}
    return delta_m(run, reference, directions)


def run_values(run: Run, reference: Mapping[str, float]) -> dict[str, float]:
    """The table's per-run numbers: MACs fraction, params, ONNX Runtime latency / speedup (b1, b8), Δ, metrics."""
    macs, dense_macs = run.get("pruned/macs"), run.get("dense/macs")
    out = {
        "macs_fraction": macs / dense_macs if macs and dense_macs else 1.0,
        "params": float(run.get("pruned/params") or run.get("params") or math.nan),
        "mean_delta_%": run_delta(run, reference),
    }
    for b in (1, 8):
        out[f"latency_b{b}_ms"] = float(run.get(f"pruned/{RUNTIME}/latency_b{b}_ms", math.nan))
        out[f"dense_latency_b{b}_ms"] = float(run.get(f"dense/{RUNTIME}/latency_b{b}_ms", math.nan))
        out[f"speedup_b{b}"] = float(run.get(f"pruned/{RUNTIME}/speedup_b{b}", 1.0 if macs is None else math.nan))
    out.update({k: float(v) for k, v in run.items() if is_metric_key(k) and k in reference})
    return out


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of ``mean(a) == mean(b)``; NaN with fewer than 2 samples on a side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def arm_table(arms: Mapping[str, Sequence[Run]], dense: Sequence[Run]) -> pd.DataFrame:
    """One row per arm (``dense`` first): ``n``, ``<value>_mean`` / ``<value>_std`` of :func:`run_values`, and
    ``p_vs_other_family`` (Welch, per-seed mean Δ against the other family's best arm)."""
    reference = dense_mean(dense)
    per_arm = {"dense": [run_values(r, reference) for r in dense]}
    per_arm.update({name: [run_values(r, reference) for r in runs] for name, runs in arms.items() if runs})
    pooled = {b: [v[f"dense_latency_b{b}_ms"] for vs in per_arm.values() for v in vs] for b in (1, 8)}
    for v in per_arm["dense"]:  # a λ = 0 run prunes nothing: its latency is the dense one every run measured
        for b in (1, 8):
            v[f"latency_b{b}_ms"] = float(np.nanmean(pooled[b])) if not all(map(math.isnan, pooled[b])) else math.nan
    deltas = {name: [v["mean_delta_%"] for v in values] for name, values in per_arm.items()}
    best = {}
    for family in (True, False):
        names = [n for n in deltas if n != "dense" and (n in OURS) == family]
        best[family] = max(names, key=lambda n: np.mean(deltas[n]), default=None)
    rows = []
    for name, values in per_arm.items():
        frame = pd.DataFrame(values)
        row: dict[str, Any] = {"arm": name, "n": len(values)}
        for col in frame.columns:
            row[f"{col}_mean"] = float(frame[col].mean())
            row[f"{col}_std"] = float(frame[col].std(ddof=1)) if len(frame) > 1 else math.nan
        other = best[name not in OURS] if name != "dense" else None
        row["p_vs_other_family"] = welch_p(deltas[name], deltas[other]) if other else math.nan
        row["other_family_best"] = other or ""
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(row: Mapping[str, Any], col: str, digits: int = 3) -> str:
    mean, std = row.get(f"{col}_mean", math.nan), row.get(f"{col}_std", math.nan)
    if mean is None or not math.isfinite(mean):
        return "—"
    mean = 0.0 if abs(mean) < 1e-9 else mean  # the dense row's mean Δ is 0 up to rounding (no "-7.8e-16")
    std = 0.0 if math.isfinite(std) and std < 1e-9 * max(1.0, abs(mean)) else std  # repeated values: no "1.1e-15"
    return f"{mean:.{digits}g}" if not math.isfinite(std) else f"{mean:.{digits}g} ± {std:.2g}"


def arm_markdown(table: pd.DataFrame) -> str:
    """The table as markdown: budget, cost, speed, mean Δ with its Welch p, then every test metric."""
    metrics = sorted(c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and is_metric_key(c[:-5]))
    head = ["arm", "n", "MACs fraction", "params (M)", "ORT b1 ms", "ORT b8 ms", "speedup b1", "speedup b8",
            "mean Δ vs dense (%)", "Welch p (vs)", *metrics]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.to_dict("records"):
        p = row["p_vs_other_family"]
        p_cell = f"{p:.3f} ({row['other_family_best']})" if isinstance(p, float) and math.isfinite(p) else "—"
        params = {"params_mean": row["params_mean"] / 1e6, "params_std": row["params_std"] / 1e6}
        cells = [row["arm"], str(row["n"]), _pm(row, "macs_fraction"), _pm(params, "params"),
                 _pm(row, "latency_b1_ms"), _pm(row, "latency_b8_ms"), _pm(row, "speedup_b1"), _pm(row, "speedup_b8"),
                 _pm(row, "mean_delta_%"), p_cell, *(_pm(row, m, 4) for m in metrics)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_arms(table: pd.DataFrame, path: str | Path, batch: int = 8) -> Path:
    """Pareto figure: mean Δ vs dense (%) against ONNX Runtime latency at ``batch`` (ms), one marker per arm with
    std error bars on both axes; the dense arm at the dense latency every run measured beside its pruned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, row in enumerate(table.to_dict("records")):
        x, xerr = row[f"latency_b{batch}_ms_mean"], row[f"latency_b{batch}_ms_std"]
        y, yerr = row["mean_delta_%_mean"], row["mean_delta_%_std"]
        ax.errorbar(x, y, xerr=None if math.isnan(xerr) else xerr, yerr=None if math.isnan(yerr) else yerr,
                    fmt="os^Dvp"[i % 6], capsize=3, label=f"{row['arm']} (n={row['n']})")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"ONNX Runtime latency, batch {batch} (ms)")
    ax.set_ylabel("mean Δ vs dense (%), higher is better")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
