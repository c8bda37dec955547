"""PNG plots of a sweep report (matplotlib's object API on the Agg canvas: no pyplot state, no windows).

Each ``plot_*`` takes report rows (:func:`lightning_sparse_mtl.report.collect`) and a path, and returns None when
the plot was written or a one-line note saying why it was skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lightning_sparse_mtl.mtl.metrics import metric_direction as higher_is_better

Rows = Sequence[Mapping[str, Any]]
LATENCY_SERIES = (  # (row column, legend label)
    ("dense_latency_b1_ms", "dense b1"),
    ("pruned_latency_b1_ms", "pruned b1"),
    ("dense_latency_b8_ms", "dense b8"),
    ("pruned_latency_b8_ms", "pruned b8"),
)
DPI = 110


def lambda_label(lam: float) -> str:
    return "0" if lam == 0 else f"{lam:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def by_lambda(rows: Rows, column: str) -> dict[float, float]:
    """``{λ: mean of column over the runs (seeds) with that λ}`` (NaN when no run has the value)."""
    groups: dict[float, list[Any]] = {}
    for row in rows:
        if row.get("lambda") is not None:
            groups.setdefault(float(row["lambda"]), []).append(row.get(column))
    return {lam: _mean(vals) for lam, vals in sorted(groups.items())}


def _save(fig: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def plot_tradeoff(rows: Rows, path: str | Path, metrics: Sequence[str]) -> str | None:
    """One panel per metric: metric vs group sparsity (%); dots = runs, line = per-λ means (labelled with λ)."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    if not metrics:
        return "no run has a test metric"
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    xs_by_lam = by_lambda(rows, "group_sparsity_%")
    for ax, metric in zip(axes, metrics):
        pts = [(r.get("group_sparsity_%"), r.get(metric)) for r in rows]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.5, color="tab:blue")
        ys_by_lam = by_lambda(rows, metric)
        line = [(xs_by_lam[lam], ys_by_lam[lam], lam) for lam in ys_by_lam if not math.isnan(ys_by_lam[lam])]
        line = [p for p in line if not math.isnan(p[0])]
        if line:
            ax.plot([p[0] for p in line], [p[1] for p in line], "-o", color="tab:orange", ms=4)
            for x, y, lam in line:
                ax.annotate(f"λ={lambda_label(lam)}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        hib = higher_is_better(metric)
        arrow = "" if hib is None else (" (↑ better)" if hib else " (↓ better)")
        ax.set_title(metric.removeprefix("test/") + arrow, fontsize=10)
        ax.set_xlabel("group sparsity (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle("accuracy / sparsity trade-off")
    _save(fig, path)
    return None


def layer_matrix(rows: Rows) -> tuple[list[str], list[float], np.ndarray]:
    """(layers in network order, sorted λs, (layers × λs) mean per-layer group sparsity, NaN where unknown)."""
    layers: list[str] = []
    for row in rows:
        layers += [name for name in row.get("_layers") or {} if name not in layers]
    lambdas = sorted({float(r["lambda"]) for r in rows if r.get("lambda") is not None and r.get("_layers")})
    mat = np.full((len(layers), len(lambdas)), np.nan)
    for j, lam in enumerate(lambdas):
        runs = [r["_layers"] for r in rows if r.get("lambda") is not None and float(r["lambda"]) == lam]
        for i, name in enumerate(layers):
            mat[i, j] = _mean([run.get(name) for run in runs if run])
    return layers, lambdas, mat


def plot_layer_sparsity(rows: Rows, path: str | Path) -> str | None:
    """Heatmap layers × λ of per-layer group sparsity (%)."""
    layers, lambdas, mat = layer_matrix(rows)
    if not layers or not lambdas:
        return "no run has per-layer sparsity (results.json sparsity.layers)"
    short = [name.removeprefix("net.").removeprefix("encoder.") for name in layers]
    fig = Figure(figsize=(2.5 + 0.9 * len(lambdas), 1.5 + 0.24 * len(layers)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(lambdas)), [lambda_label(lam) for lam in lambdas], fontsize=8)
    ax.set_yticks(range(len(layers)), short, fontsize=7)
    ax.set_xlabel("λ")
    if len(lambdas) <= 12:
        for i in range(len(layers)):
            for j in range(len(lambdas)):
                if not math.isnan(mat[i, j]):
                    color = "white" if mat[i, j] < 60 else "black"
                    ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, label="group sparsity (%)")
    ax.set_title("per-layer group sparsity", fontsize=10)
    _save(fig, path)
    return None


def plot_latency(rows: Rows, path: str | Path) -> str | None:
    """Grouped bars per λ: dense vs pruned latency (ms) at batch 1 and 8 (means over seeds)."""
    series = [(col, label, by_lambda(rows, col)) for col, label in LATENCY_SERIES]
    series = [s for s in series if any(not math.isnan(v) for v in s[2].values())]
    if not series:
        return "no run has latency measurements (only pruned runs, λ > 0, are timed)"
    lambdas = sorted({lam for _, _, vals in series for lam, v in vals.items() if not math.isnan(v)})
    width = 0.8 / len(series)
    fig = Figure(figsize=(2.5 + 1.1 * len(lambdas), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(lambdas))
    for k, (_, label, vals) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [vals.get(lam, math.nan) for lam in lambdas], width,
               label=label)  # fmt: skip
    ax.set_xticks(x, [lambda_label(lam) for lam in lambdas])
    ax.set_xlabel("λ")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("dense vs pruned latency", fontsize=10)
    _save(fig, path)
    return None


def make_plots(rows: Rows, out: str | Path, metrics: Sequence[str]) -> dict[str, str | None]:
    """Write the three plots into ``out``; ``{file name: None if written else why it was skipped}``. A skipped
    plot's file left over from an earlier report is removed (it would describe other runs)."""
    out = Path(out)
    notes = {
        "tradeoff.png": plot_tradeoff(rows, out / "tradeoff.png", metrics),
        "layer_sparsity.png": plot_layer_sparsity(rows, out / "layer_sparsity.png"),
        "latency.png": plot_latency(rows, out / "latency.png"),
    }
    for name, note in notes.items():
        if note is not None:
            (out / name).unlink(missing_ok=True)
    return notes
