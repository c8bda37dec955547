"""Which encoder channels each task keeps: per-layer Jaccard overlap of the kept input channels between runs.

A channel of a grouped conv is *kept* when its group ``W[:, c]`` is non-zero (:func:`group_norms` > 0) in the
run's checkpoint. For two runs A, B and one layer, J = |kept_A ∩ kept_B| / |kept_A ∪ kept_B| (1 = the same
channels; NaN when both pruned the whole layer). Comparing sparse single-task runs with each other and with the
sparse multi-task run shows whether tasks share the encoder or split it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lightning_sparse_mtl.core.safe_load import read_torch_file
from lightning_sparse_mtl.sparsity.groups import group_norms

Masks = dict[str, np.ndarray]  # layer name -> (I,) bool kept input channels


def kept_channels(ckpt_path: str | Path, layers: Sequence[str]) -> Masks:
    """``{layer: (I,) bool}`` kept input channels of the grouped ``layers`` (names as in results.json's
    ``sparsity.layers``, e.g. ``net.encoder.layer1.0.conv1``) in a Lightning checkpoint."""
    state = read_torch_file(ckpt_path)  # data only (weights_only=True): a shared checkpoint cannot run code
    state = state.get("state_dict", state)
    return {name: (group_norms(state[f"{name}.weight"].float()) > 0).numpy() for name in layers}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else math.nan


def overlap_table(runs: Mapping[str, Sequence[Masks]], pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Long table ``pair, layer, jaccard_mean, jaccard_std, n, kept_a, kept_b`` over seeds.

    ``runs``: ``{run label (e.g. "seg", "MTL"): [masks of seed 0, seed 1, ...]}``; the i-th masks of two labels
    are compared (same seed). ``pairs`` default: every pair of labels. kept_a/b: mean fraction of kept channels."""
    pairs = list(pairs or combinations(list(runs), 2))
    records = []
    for a, b in pairs:
        seeds = list(zip(runs[a], runs[b]))
        for layer in runs[a][0] if runs[a] else []:
            values = [jaccard(ma[layer], mb[layer]) for ma, mb in seeds]
            finite = [v for v in values if not math.isnan(v)]
            records.append({
                "pair": f"{a} vs {b}", "layer": layer, "n": len(finite),
                "jaccard_mean": float(np.mean(finite)) if finite else math.nan,
                "jaccard_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
                "kept_a": float(np.mean([ma[layer].mean() for ma, _ in seeds])),
                "kept_b": float(np.mean([mb[layer].mean() for _, mb in seeds])),
            })  # fmt: skip
    return pd.DataFrame(records)


def overlap_markdown(table: pd.DataFrame) -> str:
    """Layers × pairs, ``mean ± std`` Jaccard (n seeds)."""
    pairs = list(dict.fromkeys(table["pair"]))
    layers = list(dict.fromkeys(table["layer"]))
    lines = ["| layer | " + " | ".join(pairs) + " |", "|" + "---|" * (len(pairs) + 1)]
    for layer in layers:
        cells = []
        for pair in pairs:
            rec = table[(table["pair"] == pair) & (table["layer"] == layer)].iloc[0]
            mean, std = rec["jaccard_mean"], rec["jaccard_std"]
            cells.append("–" if math.isnan(mean) else f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}"))
        lines.append(f"| {layer.removeprefix('net.encoder.')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_overlap(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Heatmap layers × pairs of the mean Jaccard overlap, written as PNG and PDF."""
    pairs = list(dict.fromkeys(table["pair"]))
    layers = list(dict.fromkeys(table["layer"]))
    mat = table.pivot(index="layer", columns="pair", values="jaccard_mean").loc[layers, pairs].to_numpy(float)
    fig = Figure(figsize=(2.6 + 0.9 * len(pairs), 1.8 + 0.22 * len(layers)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(pairs)), pairs, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [name.removeprefix("net.encoder.") for name in layers], fontsize=7)
    for i in range(len(layers)):
        for j in range(len(pairs)):
            if not math.isnan(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if mat[i, j] < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, label="Jaccard overlap of kept channels (1 = same channels)")
    ax.set_title(title or "kept encoder channels: overlap between tasks (mean over seeds)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(path.with_suffix(suffix), dpi=150, bbox_inches="tight")
