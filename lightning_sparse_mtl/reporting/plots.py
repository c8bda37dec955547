"""Figures of a sweep report, each written as PNG and PDF (matplotlib's object API on the Agg canvas).

Every point is one configuration: the mean over its seeds with std error bars (faint dots = the single runs);
configurations are told apart by colour and marker in a legend (no text labels on the points, so none overlap),
and no line joins configurations (nothing was measured between them). Each ``plot_*`` returns None when it wrote
the figure, else a one-line note saying why it was skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lightning_sparse_mtl.reporting.metric_info import higher_is_better, label

Rows = Sequence[Mapping[str, Any]]
LATENCY_SERIES = (  # (row column, legend label)
    ("dense_latency_b1_ms", "dense, batch 1"),
    ("pruned_latency_b1_ms", "pruned, batch 1"),
    ("dense_latency_b8_ms", "dense, batch 8"),
    ("pruned_latency_b8_ms", "pruned, batch 8"),
)
MARKERS = "osD^vP*Xh<>"
DPI = 150
FORMATS = (".png", ".pdf")


def lambda_label(lam: float) -> str:
    return "0" if lam == 0 else f"{lam:.0e}".replace("e-0", "e-").replace("e+0", "e")


def short_labels(rows: Rows) -> dict[str, str]:
    """``{configuration: legend label}``: the overrides shared by every configuration are dropped."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    kept = {r["config"]: list(r.get("_kept_overrides") or ()) for r in rows}
    common = set.intersection(*(set(v) for v in kept.values())) if kept and all(kept.values()) else set()
    out = {}
    for config in configs:
        parts = [o for o in kept.get(config, []) if o not in common]
        extra = config[config.index(" [") :] if " [" in config else ""
        out[config] = (",".join(parts) + extra).strip() if parts or extra else config
        if not out[config]:
            out[config] = config
    return out


def _style(i: int) -> dict[str, Any]:
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]}


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in FORMATS:
        fig.savefig(path.with_suffix(suffix), dpi=DPI, bbox_inches="tight")


def _stat(summary: pd.DataFrame, config: str, col: str) -> tuple[float, float]:
    rec = summary.loc[summary["config"] == config]
    if rec.empty or f"{col}_mean" not in rec:
        return math.nan, math.nan
    mean = float(rec[f"{col}_mean"].iloc[0])
    std = float(rec[f"{col}_std"].iloc[0]) if f"{col}_std" in rec else math.nan
    return mean, (0.0 if math.isnan(std) else std)


def _legend(fig: Figure, handles: list, labels: list[str]) -> None:
    ncol = 1 if max((len(s) for s in labels), default=0) > 40 else max(1, min(3, len(labels)))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False,
               title="configuration (mean ± std over seeds)", title_fontsize=8)  # fmt: skip


def _errorbar_panel(ax, rows: Rows, summary: pd.DataFrame, x_col: str, y_col: str, fill: Mapping[str, float]):
    """Per configuration: runs as faint dots, mean ± std (x and y) as a marker with error bars."""
    handles, names = [], []
    labels = short_labels(rows)
    for i, config in enumerate(labels):
        style = _style(i)
        runs = [r for r in rows if r["config"] == config]
        xs = [r.get(x_col) if r.get(x_col) is not None else fill.get(config) for r in runs]
        ys = [r.get(y_col) for r in runs]
        pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.3, color=style["color"], linewidths=0)
        mx, sx = _stat(summary, config, x_col)
        if math.isnan(mx) and config in fill:
            mx, sx = fill[config], 0.0
        my, sy = _stat(summary, config, y_col)
        h = ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt=style["marker"], color=style["color"], ms=6, capsize=3,
                        linestyle="none")  # fmt: skip
        handles.append(h)
        names.append(labels[config])
    ax.grid(alpha=0.3)
    return handles, names


def plot_tradeoff(rows: Rows, summary: pd.DataFrame, path: Path, metrics: Sequence[str], config: Mapping) -> str | None:
    """One panel per test metric: metric against group sparsity (%)."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    if not metrics:
        return "no run has a test metric"
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles, names = [], []
    for ax, metric in zip(axes, metrics):
        panel = _errorbar_panel(ax, rows, summary, "group_sparsity_%", metric, {})
        handles, names = panel if panel[0] else (handles, names)
        ax.set_xlabel("group sparsity (%)")
        ax.set_ylabel(label(metric, config), fontsize=8)
        xs = [r["group_sparsity_%"] for r in rows if r.get("group_sparsity_%") is not None]
        ax.set_xlim(-3, min(103, max(10.0, 1.1 * max(xs, default=0) + 3)))  # a % axis, 0 always shown
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if not handles:
        return "no run has both group sparsity and a test metric"
    _legend(fig, handles, names)
    fig.suptitle("test metrics vs group sparsity of the shared encoder", fontsize=11)
    _save(fig, path)
    return None


def _dense_fill(rows: Rows, column: str) -> dict[str, float]:
    """Dense (λ = 0) configurations have no pruned model: their MACs ratio and speedup are 1 by definition."""
    return {r["config"]: 1.0 for r in rows if r.get("_dense") and r.get(column) is None}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are to be maximised."""
    front = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def plot_pareto(rows: Rows, summary: pd.DataFrame, path: Path, ys: Sequence[str], config: Mapping) -> str | None:
    """Rows of panels (Δm, or each metric when there is no Δm) against MACs ratio and measured speedup (batch 1);
    Pareto-optimal configurations (higher y and higher x) are ringed in black."""
    xs = [c for c in ("macs_ratio", "speedup_b1") if any(r.get(c) is not None for r in rows)]
    if not xs:
        return "no run was pruned and measured (pruned/macs_ratio, pruned/speedup_b1)"
    ys = [y for y in ys if any(r.get(y) is not None for r in rows)]
    if not ys:
        return "no metric to plot"
    fig = Figure(figsize=(4.2 * len(xs), 3.2 * len(ys) + 0.6), layout="constrained")
    axes = fig.subplots(len(ys), len(xs), squeeze=False)
    handles, names = [], []
    labels = short_labels(rows)
    for r_i, y in enumerate(ys):
        sign = -1.0 if higher_is_better(y) is False else 1.0
        for c_i, x in enumerate(xs):
            ax = axes[r_i][c_i]
            fill = _dense_fill(rows, x)
            panel = _errorbar_panel(ax, rows, summary, x, y, fill)
            handles, names = panel if panel[0] else (handles, names)
            pts = []
            for name in labels:  # not `config`: that is the run config the axis labels below need
                mx = _stat(summary, name, x)[0]
                mx = fill.get(name, math.nan) if math.isnan(mx) else mx
                pts.append((mx, sign * _stat(summary, name, y)[0]))
            front = pareto_front(pts)
            if front:
                ax.scatter([pts[i][0] for i in front], [sign * pts[i][1] for i in front], s=160, facecolors="none",
                           edgecolors="black", linewidths=1.2, zorder=5)  # fmt: skip
            ax.axvline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_xlabel("MACs ratio dense / pruned (×)" if x == "macs_ratio" else "measured speedup, batch 1 (×)")
            ax.set_ylabel(label(y, config), fontsize=8)
    if not handles:
        return "no configuration has both a cost figure and the metric"
    _legend(fig, handles, names)
    fig.suptitle("accuracy / cost trade-off (black ring: Pareto-optimal; dense = 1×)", fontsize=11)
    _save(fig, path)
    return None


def plot_layer_sparsity(rows: Rows, path: Path) -> str | None:
    """Heatmap layers × configurations of per-layer group sparsity (%), mean over seeds."""
    layers: list[str] = []
    for row in rows:
        layers += [name for name in row.get("_layers") or {} if name not in layers]
    labels = {c: s for c, s in short_labels(rows).items() if any(r["config"] == c and r.get("_layers") for r in rows)}
    if not layers or not labels:
        return "no run has per-layer sparsity (results.json sparsity.layers)"
    mat = np.full((len(layers), len(labels)), np.nan)
    for j, config in enumerate(labels):
        runs = [r["_layers"] for r in rows if r["config"] == config and r.get("_layers")]
        for i, name in enumerate(layers):
            vals = [v for run in runs if (v := run.get(name)) is not None]
            mat[i, j] = np.mean(vals) if vals else np.nan
    short = [name.removeprefix("net.").removeprefix("encoder.") for name in layers]
    width = max(len(s) for s in labels.values())
    fig = Figure(figsize=(2.8 + 0.7 * len(labels), 1.6 + 0.22 * len(layers) + 0.06 * width), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(labels)), list(labels.values()), fontsize=7, rotation=35, ha="right")
    ax.set_yticks(range(len(layers)), short, fontsize=7)
    if len(labels) <= 12:
        for i in range(len(layers)):
            for j in range(len(labels)):
                if not math.isnan(mat[i, j]):
                    color = "white" if mat[i, j] < 60 else "black"
                    ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, label="zero input channels (% of the layer's groups)")
    ax.set_title("per-layer group sparsity (mean over seeds)", fontsize=10)
    _save(fig, path)
    return None


def latency_context(rows: Rows) -> str:
    """Hardware, threads and input size of the latency measurements, from results.json / the config."""
    res = next((r.get("_results") or {} for r in rows if r.get("pruned_latency_b1_ms") is not None), {})
    cfg = next((r.get("_config") or {} for r in rows if r.get("pruned_latency_b1_ms") is not None), {})
    bits = []
    hardware = next((str(v) for k, v in res.items() if any(t in k for t in ("cpu", "hardware", "device_name"))
                     and isinstance(v, str)), None)  # fmt: skip
    threads = next((v for k, v in res.items() if "threads" in k and isinstance(v, int | float)), None)
    bits.append(f"CPU: {hardware}" if hardware else "hardware: not recorded in results.json")
    bits.append(f"{int(threads)} threads" if threads else "threads: not recorded")
    size = ((cfg.get("data") or {}).get("dataset") or {}).get("image_size")
    bits.append(f"input 3×{size}×{size}" if size else "input size: see config")
    return ", ".join(bits)


def plot_latency(rows: Rows, summary: pd.DataFrame, path: Path) -> str | None:
    """Grouped bars per configuration: dense vs pruned forward latency (ms), mean ± std over seeds."""
    series = [(col, name) for col, name in LATENCY_SERIES if any(r.get(col) is not None for r in rows)]
    if not series:
        return "no run has latency measurements (only pruned runs, λ > 0, are timed)"
    labels = {c: s for c, s in short_labels(rows).items()
              if any(r["config"] == c and r.get(series[0][0]) is not None for r in rows)}  # fmt: skip
    width = 0.8 / len(series)
    fig = Figure(figsize=(3.0 + 1.0 * len(labels), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(labels))
    for k, (col, name) in enumerate(series):
        stats = [_stat(summary, c, col) for c in labels]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [s[0] for s in stats], width, yerr=[s[1] for s in stats],
               capsize=2, label=name, color=f"C{k}")  # fmt: skip
    ax.set_xticks(x, list(labels.values()), fontsize=7, rotation=30 if len(labels) > 2 else 0, ha="right")
    ax.set_ylabel("forward latency (ms, median of repeats)")
    fig.legend(fontsize=7, loc="outside right upper", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"dense vs pruned latency, mean ± std over seeds\n{latency_context(rows)}", fontsize=8)
    _save(fig, path)
    return None


def make_plots(
    rows: Rows, summary: pd.DataFrame, out: str | Path, metrics: Sequence[str], deltas: Sequence[str] = ()
) -> dict[str, str | None]:
    """Write the figures into ``out`` (``<name>.png`` + ``<name>.pdf``); ``{png name: None if written else why
    it was skipped}``. A skipped figure's files left over from an earlier report are removed."""
    out = Path(out)
    config = next((r.get("_config") for r in rows if r.get("_config")), {}) or {}
    delta = [d for d in (*deltas, "test/delta_m") if any(r.get(d) is not None for r in rows)][:1]
    notes = {
        "tradeoff.png": plot_tradeoff(rows, summary, out / "tradeoff.png", metrics, config),
        "pareto.png": plot_pareto(rows, summary, out / "pareto.png", delta or list(metrics), config),
        "layer_sparsity.png": plot_layer_sparsity(rows, out / "layer_sparsity.png"),
        "latency.png": plot_latency(rows, summary, out / "latency.png"),
    }
    for name, note in notes.items():
        if note is not None:
            for suffix in FORMATS:
                (out / name).with_suffix(suffix).unlink(missing_ok=True)
    return notes
