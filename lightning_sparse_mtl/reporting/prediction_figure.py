"""One annotated prediction figure per sample (matplotlib object API, Agg canvas, returned as a uint8 image).

Columns: input | for seg: target, prediction (colour overlays) and a legend of the classes shown | for depth:
target, prediction (one shared colour scale with a colour bar in the dataset's unit) and the absolute error map |
for normals: target, prediction (RGB = (n + 1) / 2, with a colour key of a hemisphere) and the angular error
map (degrees). Invalid target pixels are grey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lightning_sparse_mtl.reporting.colorize import (
    depth_range,
    image_to_rgb,
    label_colors,
    normals_to_rgb,
    overlay,
    seg_to_rgb,
)

PANEL_IN = 1.7  # inches per panel
INVALID = (0.6, 0.6, 0.6)
MAX_LEGEND = 12


def hemisphere_key(size: int = 33) -> np.ndarray:
    """(size, size, 3) RGB of the normals of a camera-facing hemisphere (the colour key of the normal maps)."""
    u = np.linspace(-1, 1, size)
    x, y = np.meshgrid(u, u)
    r2 = x**2 + y**2
    n = np.stack([x, y, -np.sqrt(np.clip(1 - r2, 0, 1))])  # facing the camera (-z)
    rgb = normals_to_rgb(n)
    rgb[r2 > 1] = 1.0
    return rgb


def _kinds_order(kinds: Mapping[str, str], targets: Mapping, preds: Mapping) -> list[tuple[str, str]]:
    return [(t, k) for t, k in kinds.items() if t in targets and t in preds and k in ("seg", "depth", "normal")]


def _cmap(name: str):
    """A colour map drawing masked (invalid) pixels grey."""
    return colormaps[name].with_extremes(bad=INVALID)


def _hide(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def prediction_figure(
    image: np.ndarray,
    targets: Mapping[str, np.ndarray],
    preds: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    num_classes: Mapping[str, int] | None = None,
    class_names: Sequence[str] | None = None,
    depth_unit: str = "depth unit",
) -> tuple[np.ndarray, list[str]]:
    """((H, W, 3) uint8 figure, panel titles) for one sample. ``image`` (3,H,W); seg target (H,W) with -1 =
    ignore and prediction logits (C,H,W) or labels (H,W); depth (1,H,W) with 0 = invalid; normals (3,H,W) with
    all-zero = invalid."""
    tasks = _kinds_order(kinds, targets, preds)
    ncols = 1 + sum(3 for _ in tasks)
    fig = Figure(figsize=(PANEL_IN * ncols, PANEL_IN * 1.55), dpi=100, layout="constrained")
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    base = image_to_rgb(image)
    titles = ["input"]
    axes[0].imshow(base)
    col = 1
    for task, kind in tasks:
        tgt, pred = np.asarray(targets[task]), np.asarray(preds[task])
        a_t, a_p, a_x = axes[col : col + 3]
        col += 3
        if kind == "seg":
            classes = (num_classes or {}).get(task) or (pred.shape[0] if pred.ndim == 3 else int(tgt.max()) + 1)
            labels = pred.argmax(0) if pred.ndim == 3 else pred
            a_t.imshow(overlay(base, *seg_to_rgb(tgt, classes)))
            a_p.imshow(overlay(base, *seg_to_rgb(labels, classes)))
            shown = sorted(
                {int(c) for c in np.unique(np.concatenate([tgt.ravel(), labels.ravel()])) if 0 <= c < classes}
            )
            colors = label_colors(classes)
            names = [class_names[c] if class_names and c < len(class_names) else f"class {c}" for c in shown]
            handles = [Patch(color=colors[c], label=n) for c, n in zip(shown[:MAX_LEGEND], names[:MAX_LEGEND])]
            a_x.axis("off")
            a_x.legend(handles=handles, loc="center", fontsize=6, frameon=False, title=f"{task} classes",
                       title_fontsize=7, ncol=2 if len(handles) > 6 else 1)  # fmt: skip
            titles += [f"{task} target", f"{task} pred", f"{task} legend"]
        elif kind == "depth":
            t2, p2 = tgt.reshape(tgt.shape[-2:]), pred.reshape(pred.shape[-2:])
            valid = t2 > 0
            vmin, vmax = depth_range(tgt, pred)
            cmap = _cmap("magma_r")
            a_t.imshow(np.ma.masked_where(~valid, t2), cmap=cmap, vmin=vmin, vmax=vmax)
            im = a_p.imshow(p2, cmap=cmap, vmin=vmin, vmax=vmax)
            fig.colorbar(im, ax=[a_t, a_p], shrink=0.8, label=f"{task} ({depth_unit})", location="bottom")
            err = np.ma.masked_where(~valid, np.abs(p2 - t2))
            im = a_x.imshow(err, cmap=_cmap("inferno"), vmin=0)
            fig.colorbar(im, ax=a_x, shrink=0.8, label=f"|error| ({depth_unit})", location="bottom")
            titles += [f"{task} target", f"{task} pred", f"{task} error"]
        else:
            valid = np.abs(tgt).sum(0) > 0
            a_t.imshow(normals_to_rgb(tgt, valid))
            a_p.imshow(normals_to_rgb(pred))
            key = a_t.inset_axes((0.72, 0.72, 0.28, 0.28))
            key.imshow(hemisphere_key())
            _hide(key)
            t = tgt / np.maximum(np.linalg.norm(tgt, axis=0, keepdims=True), 1e-8)
            p = pred / np.maximum(np.linalg.norm(pred, axis=0, keepdims=True), 1e-8)
            angle = np.degrees(np.arccos(np.clip((t * p).sum(0), -1.0, 1.0)))
            im = a_x.imshow(np.ma.masked_where(~valid, angle), cmap=_cmap("viridis"), vmin=0, vmax=90)
            fig.colorbar(im, ax=a_x, shrink=0.8, label="angular error (degrees)", location="bottom")
            titles += [f"{task} target", f"{task} pred", f"{task} error"]
    for ax, title in zip(axes, titles):
        ax.set_title("" if title.endswith(" legend") else title, fontsize=7)
        _hide(ax)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return rgba[..., :3].copy(), titles
