"""NYUv2 in the mtan / LibMTL preprocessed npy layout, and the machinery shared with Cityscapes.

On disk (288x384 for NYUv2)::

    <root>/{train,val}/image/<i>.npy    (H, W, 3) float RGB in [0, 1]
    <root>/{train,val}/label/<i>.npy    (H, W) float class ids 0..12, -1 = ignore
    <root>/{train,val}/depth/<i>.npy    (H, W, 1) or (H, W) float metres, 0 = invalid
    <root>/{train,val}/normal/<i>.npy   (H, W, 3) float unit vectors, all-zero = invalid

Splits: the official ``val`` folder is the official *test* split (654 images), so ``split="test"`` reads
it; ``"train"`` and ``"val"`` are carved deterministically (``seed``) from the official ``train`` folder
(795 images), ``val`` taking ``round(val_fraction * N)`` of them. The two are disjoint and together cover
the folder. Layout problems and bad files (every file is checked, see ``data/checks.py``) raise
:class:`UserError` in ``__init__`` (before training starts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.data.checks import check_npy_split

SPLITS = ("train", "val", "test")
NYU_NUM_CLASSES = 13
_NPY = re.compile(r"^(\d+)\.npy$")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def carve_indices(n: int, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted positions (into ``range(n)``) of ``split`` ("train" or "val"): a seeded permutation's first
    ``round(val_fraction * n)`` entries are val, the rest train (at least one each when n >= 2 and 0 < f)."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_val] if split == "val" else perm[n_val:])


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` with any failure turned into a one-line UserError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # corrupt header, truncated data, pickled object, unreadable file, ...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read {path}: {msg}; expected a numpy .npy array (re-export the file)") from None


def _expect(arr: np.ndarray, path: Path, ok: bool, expected: str) -> None:
    if not ok:
        raise UserError(f"{path} has shape {tuple(arr.shape)} dtype {arr.dtype}; expected {expected}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{path} has dtype {arr.dtype}; expected a float or integer array")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UserError(f"{path} contains NaN/Inf; mark invalid pixels with 0 (depth, normals) or -1 (labels)")


def to_image(arr: np.ndarray, path: Path) -> torch.Tensor:
    """(H, W, 3) RGB in [0, 1] -> (3, H, W) float32."""
    _expect(arr, path, arr.ndim == 3 and arr.shape[-1] == 3, "(H, W, 3) RGB in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def to_seg(arr: np.ndarray, path: Path) -> torch.Tensor:
    """(H, W) class ids as float or int, negative = ignore -> (H, W) int64 with -1 = ignore."""
    _expect(arr, path, arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1), "(H, W) class ids, -1 = ignore")
    seg = np.rint(arr.reshape(arr.shape[:2])).astype(np.int64)
    seg[seg < 0] = -1
    return torch.from_numpy(seg)


def to_scalar_map(arr: np.ndarray, path: Path) -> torch.Tensor:
    """(H, W, 1) or (H, W) depth/disparity, 0 = invalid -> (1, H, W) float32."""
    _expect(arr, path, arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1), "(H, W, 1) or (H, W), 0 = invalid")
    out = arr.reshape(1, *arr.shape[:2]).astype(np.float32)
    return torch.from_numpy(out)


def to_normal(arr: np.ndarray, path: Path) -> torch.Tensor:
    """(H, W, 3) unit normals, all-zero = invalid -> (3, H, W) float32."""
    _expect(arr, path, arr.ndim == 3 and arr.shape[-1] == 3, "(H, W, 3) unit normals, all-zero = invalid")
    out = arr.transpose(2, 0, 1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out))


CONVERTERS: dict[str, Callable[[np.ndarray, Path], torch.Tensor]] = {
    "image": to_image,
    "seg": to_seg,
    "depth": to_scalar_map,
    "disparity": to_scalar_map,
    "normal": to_normal,
}


def list_indices(folder: Path) -> list[int]:
    """Sorted integer stems of the ``<i>.npy`` files in ``folder``; ``01.npy`` (a second spelling of an index,
    which would be skipped or read twice) is refused."""
    indices = []
    for name in os.listdir(folder):
        if m := _NPY.match(name):
            if name != f"{int(m.group(1))}.npy":
                raise UserError(f"{Path(folder) / name}: name it {int(m.group(1))}.npy (files are <i>.npy, i without "
                                "leading zeros, one file per index)")  # fmt: skip
            indices.append(int(m.group(1)))
    return sorted(indices)


class NpyMultiTaskDataset(Dataset):
    """Shared loader for mtan-style layouts ``<root>/{train,val}/<folder>/<i>.npy``.

    ``folders`` maps sample keys (image, seg, depth, disparity, normal) to folder names. Items are
    ``{"image": (3,H,W) float32 in [0,1], "seg": (H,W) int64 (-1 ignore), "depth"|"disparity": (1,H,W)
    float32 (0 invalid), "normal": (3,H,W) float32 (zero invalid)}``, then ``transform(sample)``.
    """

    name = "dataset"
    layout = "{train,val}/<folder>/<i>.npy"
    num_classes: int | None = None

    def __init__(
        self,
        split: str,
        root: str | os.PathLike | None,
        folders: Mapping[str, str],
        val_fraction: float = 0.1,
        seed: int = 0,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        check_split(split)
        hint = "set data.root=<dir> to the folder holding train/ and val/"
        if root is None or str(root) == "":
            raise UserError(f"{self.name}: data.root is not set; {hint} ({self.layout})")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"{self.name} root not found: {self.root}; {hint} ({self.layout})")
        self.split, self.folders, self.transform = split, dict(folders), transform
        self.split_dir = self.root / ("val" if split == "test" else "train")
        files: dict[str, list[int]] = {}
        for key, folder in self.folders.items():
            path = self.split_dir / folder
            if not path.is_dir():
                raise UserError(f"{self.name} folder not found: {path}; expected {self.layout} under {self.root}")
            files[key] = list_indices(path)
        self.indices = self._check_counts(files)
        if split != "test":
            self.indices = [self.indices[i] for i in carve_indices(len(self.indices), split, val_fraction, seed)]
        # every file of the split: header, shape, dtype, size, values (data/checks.py)
        check_npy_split({k: self.split_dir / f for k, f in self.folders.items()}, self.indices, self.num_classes)

    def _check_counts(self, files: Mapping[str, list[int]]) -> list[int]:
        ref_key = next(iter(self.folders))
        ref = files[ref_key]
        if not ref:
            raise UserError(f"{self.name}: no <i>.npy files in {self.split_dir / self.folders[ref_key]}")
        for key, idx in files.items():
            a, b = self.split_dir / self.folders[ref_key], self.split_dir / self.folders[key]
            if len(idx) != len(ref):
                raise UserError(
                    f"{self.name}: mismatched file counts: {a} has {len(ref)} .npy files, {b} has {len(idx)}; "
                    f"every {self.folders[ref_key]}/<i>.npy needs a matching {self.folders[key]}/<i>.npy"
                )
            if idx != ref:
                name = f"{sorted(set(ref) - set(idx))[0]}.npy"
                raise UserError(f"{self.name}: {b / name} is missing (its image {a / name} exists)")
        return ref

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        sample = {}
        for key, folder in self.folders.items():
            path = self.split_dir / folder / f"{index}.npy"
            sample[key] = CONVERTERS[key](load_npy(path), path)
        hw = sample["image"].shape[-2:]
        for key, value in sample.items():
            if value.shape[-2:] != hw:
                path = self.split_dir / self.folders[key] / f"{index}.npy"
                raise UserError(f"{path} is {tuple(value.shape[-2:])} pixels; expected {tuple(hw)} like its image")
        return sample

    def _check_sample(self, index: int) -> None:
        """Load one sample: shapes and dtypes (by the converters), image range, class ids."""
        sample = self._load(index)
        path = self.split_dir / self.folders["image"] / f"{index}.npy"
        lo, hi = float(sample["image"].min()), float(sample["image"].max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise UserError(f"{path} has values in [{lo:g}, {hi:g}]; expected RGB floats in [0, 1] (divide by 255)")
        if "seg" in sample and self.num_classes is not None and int(sample["seg"].max()) >= self.num_classes:
            path = self.split_dir / self.folders["seg"] / f"{index}.npy"
            raise UserError(
                f"{path} has class id {int(sample['seg'].max())}; expected 0..{self.num_classes - 1} or -1 = ignore"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self._load(self.indices[i])
        return self.transform(sample) if self.transform is not None else sample


class NYUv2(NpyMultiTaskDataset):
    """NYUv2 (mtan preprocessed): 13-class seg, depth (metres), surface normals. See the module docstring."""

    name = "NYUv2"
    layout = "{train,val}/{image,label,depth,normal}/<i>.npy (mtan preprocessed NYUv2)"
    num_classes = NYU_NUM_CLASSES
    TASK_FOLDERS = {"seg": "label", "depth": "depth", "normal": "normal"}

    def __init__(
        self,
        split: str,
        root: str | os.PathLike | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        tasks: Sequence[str] = ("seg", "depth", "normal"),
    ) -> None:
        unknown = sorted(set(tasks) - set(self.TASK_FOLDERS))
        if unknown:
            raise UserError(f"NYUv2 has no task {', '.join(unknown)}; valid: {', '.join(self.TASK_FOLDERS)}")
        folders = {"image": "image", **{t: self.TASK_FOLDERS[t] for t in self.TASK_FOLDERS if t in tasks}}
        super().__init__(split, root, folders, val_fraction, seed, transform)
