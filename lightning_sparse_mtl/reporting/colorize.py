"""Prediction images as pixels: colour maps for inputs, seg labels, depth and normals, panels and grids.

Pure numpy + matplotlib colormaps (no figures, no windows); :mod:`.prediction_figure` draws the annotated figure
and :class:`.media.PredictionImages` logs them during training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps

SEG_ALPHA = 0.55
MIN_TILE = 96  # tiles are upscaled (nearest) to at least this many pixels on their short side
PAD = 2


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """(3,H,W) image -> (H,W,3) float in [0,1] (min-max rescaled when it is not already in [0,1])."""
    rgb = np.asarray(image, dtype=np.float32).transpose(1, 2, 0)
    lo, hi = float(rgb.min()), float(rgb.max())
    if lo < 0 or hi > 1:
        rgb = (rgb - lo) / max(hi - lo, 1e-8)
    return np.clip(rgb, 0.0, 1.0)


def label_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) distinct colours (tab20, cycled); class 0 is drawn like any other class."""
    table = colormaps["tab20"].colors
    return np.array([table[(2 * c) % 20 + (2 * c // 20) % 2] for c in range(num_classes)], dtype=np.float32)


def seg_to_rgb(seg: np.ndarray, num_classes: int, ignore_index: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(H,W) labels -> ((H,W,3) colours, (H,W) bool valid); ignored or out-of-range labels are black/invalid."""
    seg = np.asarray(seg).astype(np.int64)
    valid = (seg != ignore_index) & (seg >= 0) & (seg < num_classes)
    rgb = label_colors(num_classes)[np.where(valid, seg, 0)]
    rgb[~valid] = 0.0
    return rgb, valid


def overlay(
    base: np.ndarray, color: np.ndarray, valid: np.ndarray | None = None, alpha: float = SEG_ALPHA
) -> np.ndarray:
    """Alpha-blend ``color`` over ``base`` (both (H,W,3) in [0,1]) where ``valid``."""
    out = (1 - alpha) * base + alpha * color
    return out if valid is None else np.where(valid[..., None], out, base)


def depth_to_rgb(
    depth: np.ndarray, vmin: float, vmax: float, valid: np.ndarray | None = None, cmap: str = "magma_r"
) -> np.ndarray:
    """(H,W) or (1,H,W) depth -> (H,W,3) colours over [vmin, vmax] (near = bright); invalid pixels are black."""
    d = np.asarray(depth, dtype=np.float32).reshape(np.shape(depth)[-2:])
    t = np.clip((d - vmin) / max(vmax - vmin, 1e-8), 0.0, 1.0)
    rgb = colormaps[cmap](t)[..., :3].astype(np.float32)
    if valid is not None:
        rgb[~valid] = 0.0
    return rgb


def depth_range(target: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Shared colour range: the valid (>0) target values, else the prediction's."""
    t = np.asarray(target, dtype=np.float32)
    ref = t[t > 0] if (t > 0).any() else np.asarray(pred, dtype=np.float32).ravel()
    return float(ref.min()), float(ref.max())


def normals_to_rgb(normals: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(3,H,W) unit normals -> (H,W,3) = (n + 1) / 2; invalid pixels are black."""
    n = np.asarray(normals, dtype=np.float32)
    rgb = np.clip((n.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    if valid is not None:
        rgb[~valid] = 0.0
    return rgb


def sample_panels(
    image: np.ndarray,
    targets: Mapping[str, np.ndarray],
    preds: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    num_classes: Mapping[str, int] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """``[(title, (H,W,3) float)]`` for one sample: the input, then target and prediction of every dense task
    (``kinds[task]`` in seg | depth | normal; attributes and tasks without target are skipped). Seg ``preds``
    are logits (C,H,W) or labels (H,W); depth (1,H,W); normals (3,H,W)."""
    base = image_to_rgb(image)
    panels = [("input", base)]
    for task, kind in kinds.items():
        if task not in targets or task not in preds:
            continue
        tgt, pred = np.asarray(targets[task]), np.asarray(preds[task])
        if kind == "seg":
            classes = (num_classes or {}).get(task) or (pred.shape[0] if pred.ndim == 3 else int(tgt.max()) + 1)
            labels = pred.argmax(0) if pred.ndim == 3 else pred
            panels.append((f"{task} target", overlay(base, *seg_to_rgb(tgt, classes))))
            panels.append((f"{task} pred", overlay(base, *seg_to_rgb(labels, classes))))
        elif kind == "depth":
            vmin, vmax = depth_range(tgt, pred)
            valid = tgt.reshape(tgt.shape[-2:]) > 0
            panels.append((f"{task} target", depth_to_rgb(tgt, vmin, vmax, valid)))
            panels.append((f"{task} pred", depth_to_rgb(pred, vmin, vmax)))
        elif kind == "normal":
            valid = np.abs(tgt).sum(0) > 0
            panels.append((f"{task} target", normals_to_rgb(tgt, valid)))
            panels.append((f"{task} pred", normals_to_rgb(pred)))
    return panels


def upscale(rgb: np.ndarray, min_side: int = MIN_TILE) -> np.ndarray:
    """Nearest-neighbour upscale by the smallest integer factor giving a short side >= ``min_side``."""
    factor = max(1, -(-min_side // min(rgb.shape[:2])))
    return rgb.repeat(factor, 0).repeat(factor, 1) if factor > 1 else rgb


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def render_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = PAD, min_side: int = MIN_TILE) -> np.ndarray:
    """Tile rows of (H,W,3) panels into one (H_total, W_total, 3) uint8 image with white padding."""
    tiles = [[upscale(p, min_side) for p in row] for row in rows]
    th = max(t.shape[0] for row in tiles for t in row)
    tw = max(t.shape[1] for row in tiles for t in row)
    ncols = max(len(row) for row in tiles)
    out = np.ones((len(tiles) * (th + pad) + pad, ncols * (tw + pad) + pad, 3), dtype=np.float32)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = pad + r * (th + pad), pad + c * (tw + pad)
            out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return to_uint8(out)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
