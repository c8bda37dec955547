"""Tiny datasets in the exact on-disk formats users have (NYUv2 / Cityscapes npy, raw CelebAMask-HQ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lightning_sparse_mtl.data.celeba import ATTR_FILE, mask_path

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


# ---------------------------------------------------------------- fixtures in the on-disk formats
def _invalid_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A shared invalid region (a block + scattered pixels), so label -1, depth 0 and normal 0 coincide."""
    bad = rng.random((h, w)) < 0.1
    bad[: h // 3, : w // 4] = True
    return bad


def make_npy_dataset(
    root: Path, folders: dict[str, str], counts: dict[str, int], h: int, w: int, classes: dict[str, int], seed: int = 0
) -> Path:
    """Write ``root/{train,val}/<folder>/<i>.npy``; ``folders`` maps folder -> kind (image|label|depth|normal)."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for i in range(n):
            bad = _invalid_mask(rng, h, w)
            for folder, kind in folders.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                if kind == "image":
                    arr = rng.random((h, w, 3))
                elif kind == "label":
                    arr = np.where(bad, -1.0, rng.integers(0, classes[folder], (h, w))).astype(np.float64)
                elif kind == "depth":
                    arr = np.where(bad, 0.0, rng.uniform(0.5, 10.0, (h, w)))[..., None].astype(np.float32)
                else:
                    n3 = rng.normal(size=(h, w, 3))
                    arr = np.where(bad[..., None], 0.0, n3 / np.linalg.norm(n3, axis=-1, keepdims=True))
                np.save(root / split / folder / f"{i}.npy", arr.astype(np.float32))
    return root


def make_nyuv2(root: Path, n_train: int = 10, n_val: int = 4, h: int = 36, w: int = 48) -> Path:
    folders = {"image": "image", "label": "label", "depth": "depth", "normal": "normal"}
    return make_npy_dataset(root, folders, {"train": n_train, "val": n_val}, h, w, {"label": 13})


def make_cityscapes(root: Path, n_train: int = 10, n_val: int = 4, h: int = 32, w: int = 64) -> Path:
    folders = {"image": "image", "label_7": "label", "label_19": "label", "depth": "depth"}
    return make_npy_dataset(root, folders, {"train": n_train, "val": n_val}, h, w, {"label_7": 7, "label_19": 19})


def celeba_masks(size: int) -> dict[str, np.ndarray]:
    """Hand-made part masks: hair (top half), skin (centre square, overlaps hair), nose, hat (not mapped)."""
    m = {p: np.zeros((size, size), bool) for p in ("hair", "skin", "nose", "hat")}
    m["hair"][: size // 2] = True
    m["skin"][size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    m["nose"][size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = True
    m["hat"][:2] = True
    return m


def make_celeba(root: Path, n: int = 12, size: int = 32, mask_size: int = 16, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Raw CelebAMask-HQ layout; returns (root, attribute values (n, 40) in {-1, 1})."""
    rng = np.random.default_rng(seed)
    (root / "CelebA-HQ-img").mkdir(parents=True)
    attrs = rng.choice([-1, 1], (n, 40))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "CelebA-HQ-img" / f"{i}.jpg")
        for part, mask in celeba_masks(mask_size).items():
            if part == "nose" and i % 2:
                continue  # a missing part file = part absent
            path = mask_path(root, i, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(mask[..., None] * np.uint8(255), 3, -1)).save(path)  # RGB like the release
    rows = [f"{i}.jpg  " + " ".join(str(v) for v in attrs[i]) for i in range(n)]
    (root / ATTR_FILE).write_text("\n".join([str(n), " ".join(CELEBA_ATTRS), *rows]) + "\n")
    return root, attrs
