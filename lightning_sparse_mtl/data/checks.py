"""Every file of every split checked before training (one-line UserError naming the file).

* npy datasets (NYUv2, Cityscapes): each ``<i>.npy`` of every folder is opened with ``np.load(mmap_mode="r")``
  (header: shape, dtype; a corrupt/truncated file fails here), shapes must match the image's H x W and every image
  of a split must have the same size; then the values are scanned (memory-mapped, one file at a time): images
  finite and in [0, 1], class ids whole numbers in ``-1..num_classes-1``, depth/disparity finite and >= 0, normals
  finite and at most unit length, no empty (0 x 0) array; each index spelled once (``01.npy`` is refused).
* image datasets (CelebAMask-HQ): every ``.jpg`` and mask ``.png`` header is read with PIL (format, size);
  images of one split must share a size unless ``image_size`` resizes them. Pixels are decoded as loaded (a
  file that fails to decode gives the one-line error naming it).
* every dataset: the train split must give at least one batch (``drop_last``), and labels must fit the model's
  ``data.num_classes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_sparse_mtl.core.errors import UserError

EXPECTED = {
    "image": ("(H, W, 3) RGB in [0, 1]", lambda s: len(s) == 3 and s[-1] == 3),
    "seg": ("(H, W) class ids, -1 = ignore", lambda s: len(s) == 2 or (len(s) == 3 and s[-1] == 1)),
    "depth": ("(H, W, 1) or (H, W), 0 = invalid", lambda s: len(s) == 2 or (len(s) == 3 and s[-1] == 1)),
    "disparity": ("(H, W, 1) or (H, W), 0 = invalid", lambda s: len(s) == 2 or (len(s) == 3 and s[-1] == 1)),
    "normal": ("(H, W, 3) unit normals, all-zero = invalid", lambda s: len(s) == 3 and s[-1] == 3),
}


def open_npy(path: Path) -> np.ndarray:
    """Memory-mapped array (only the header is read now) or a one-line UserError naming the file."""
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise ValueError("not a .npy file (no NUMPY header)")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # bad magic, truncated, pickled object, unreadable
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read {path}: {msg}; expected a numpy .npy array (re-export the file)") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{path} is not a single numpy array; expected one .npy array per file")
    return arr


def check_npy_sample(folders: Mapping[str, Path], index: int, num_classes: int | None) -> tuple[int, int]:
    """Header, shape and value checks of one sample's files; returns the image (H, W)."""
    hw = None
    for key, folder in folders.items():
        path = folder / f"{index}.npy"
        arr = open_npy(path)
        text, ok = EXPECTED[key]
        if not ok(arr.shape):
            raise UserError(f"{path} has shape {tuple(arr.shape)} dtype {arr.dtype}; expected {text}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise UserError(f"{path} has dtype {arr.dtype}; expected a float or integer array")
        if hw is None:
            hw = tuple(arr.shape[:2])
        elif tuple(arr.shape[:2]) != hw:
            raise UserError(f"{path} is {tuple(arr.shape[:2])} pixels; expected {hw} like its image")
        check_values(key, np.asarray(arr), path, num_classes)
    return hw


def check_values(key: str, arr: np.ndarray, path: Path, num_classes: int | None) -> None:
    if arr.ndim >= 2 and 0 in arr.shape[:2]:
        raise UserError(f"{path} is empty ({arr.shape[0]}x{arr.shape[1]} pixels); re-export the file")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UserError(f"{path} contains NaN/Inf; mark invalid pixels with 0 (depth, normals) or -1 (labels)")
    if key == "seg" and arr.size:
        if np.issubdtype(arr.dtype, np.floating) and not (arr == np.round(arr)).all():
            bad = float(arr[arr != np.round(arr)].flat[0])
            raise UserError(f"{path} has class id {bad:g}; expected whole numbers (0..num_classes-1, -1 = ignore)")
        if float(arr.min()) < -1:
            raise UserError(f"{path} has class id {float(arr.min()):g}; ignored pixels are -1 exactly, classes >= 0")
    if key in ("depth", "disparity") and arr.size and float(arr.min()) < 0:
        raise UserError(f"{path} has {key} {float(arr.min()):g} < 0; expected values >= 0 (0 = invalid pixel)")
    if key == "normal" and arr.size:
        longest = float(np.sqrt((np.asarray(arr, dtype=np.float64) ** 2).sum(-1)).max())
        if longest > 1.1:
            raise UserError(f"{path} has a normal of length {longest:.3g}; expected unit vectors (all-zero = invalid)")
    if key == "image" and arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise UserError(f"{path} has values in [{lo:g}, {hi:g}]; expected RGB floats in [0, 1] (divide by 255)")
    if key == "seg" and arr.size and num_classes is not None:
        top = float(arr.max())
        if top > num_classes - 1 + 1e-6:
            raise UserError(f"{path} has class id {top:g}; expected 0..{num_classes - 1} or -1 = ignore "
                            f"(data.num_classes={num_classes})")  # fmt: skip


def check_npy_split(folders: Mapping[str, Path], indices: Iterable[int], num_classes: int | None) -> None:
    """Every sample of a split: :func:`check_npy_sample`, and one image size for the whole split."""
    first: tuple[int, tuple[int, int]] | None = None
    for index in indices:
        hw = check_npy_sample(folders, index, num_classes)
        if first is None:
            first = (index, hw)
        elif hw != first[1]:
            path = folders["image"] / f"{index}.npy"
            raise UserError(f"{path} is {hw} pixels but {first[0]}.npy is {first[1]}: every image of a split must "
                            "have one size (resize the files)")  # fmt: skip


def check_image_headers(paths: Iterable[Path], same_size: bool) -> None:
    """PIL header of every file (format and size); with ``same_size`` all must share one size."""
    from PIL import Image

    first: tuple[Path, tuple[int, int]] | None = None
    for path in paths:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"cannot read image {path}: {msg}; expected a readable {path.suffix} file") from None
        if min(size) <= 0:
            raise UserError(f"image {path} is empty ({size[0]}x{size[1]})")
        if same_size:
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise UserError(f"{path} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}: "
                                "images of a split must share a size (set data.dataset.image_size)")  # fmt: skip


def check_train_steps(datamodule: Any, trainer_cfg: Mapping, tasks: Iterable[str] = ("seg",)) -> None:
    """The train split gives at least one optimizer step; val/test are not empty; labels fit num_classes."""
    train = datamodule.build("train")
    n, bs = len(train), datamodule.batch_size
    if n // bs == 0:
        raise UserError(f"data.batch_size={bs} is larger than the train split ({n} samples; the last partial batch "
                        f"is dropped), so training would take no step: use data.batch_size<={max(n, 1)}")  # fmt: skip
    limit = trainer_cfg.get("limit_train_batches")
    if isinstance(limit, float) and int(n // bs * limit) == 0:
        raise UserError(f"trainer.limit_train_batches={limit} of {n // bs} batches is 0 batches; raise it")
    steps = n // bs if limit is None else int(n // bs * limit) if isinstance(limit, float) else min(limit, n // bs)
    vci = trainer_cfg.get("val_check_interval")
    if isinstance(vci, int) and vci > steps and trainer_cfg.get("check_val_every_n_epoch", 1) is not None:
        raise UserError(f"trainer.val_check_interval={vci} is more than the {steps} train batches of an epoch; "
                        f"give <= {steps}, a fraction (e.g. 0.5), or trainer.check_val_every_n_epoch=null")  # fmt: skip
    for split in ("val", "test"):
        if len(datamodule.build(split)) == 0:
            raise UserError(f"the {split} split is empty; its metrics would be undefined (check the data splits)")
    check_eval_batches(datamodule, trainer_cfg)
    if "seg" in tasks:
        check_label_range(datamodule)


def check_eval_batches(datamodule: Any, trainer_cfg: Mapping, splits: Iterable[str] = ("val", "test")) -> None:
    """A fraction ``trainer.limit_{val,test}_batches`` of the split's batches is at least one batch."""
    for split in splits:
        limit = trainer_cfg.get(f"limit_{split}_batches")
        if not isinstance(limit, float) or limit == 0:
            continue
        batches = math.ceil(len(datamodule.build(split)) / datamodule.eval_batch_size)
        if int(batches * limit) == 0:
            raise UserError(f"trainer.limit_{split}_batches={limit} of the {batches} {split} batches is 0 batches; "
                            f"raise it (e.g. trainer.limit_{split}_batches=1)")  # fmt: skip


def check_label_range(datamodule: Any) -> None:
    """Class ids the datasets produce fit the model's ``data.num_classes``."""
    want = datamodule.num_classes
    if want is None:
        return
    for split in ("train", "val", "test"):
        ds = datamodule.build(split)
        top = getattr(ds, "num_classes", None)  # the dataset's label space (npy datasets, CelebA)
        top = top - 1 if isinstance(top, int) else None
        if top is None and hasattr(ds, "tensors") and "seg" in ds.tensors:  # in-memory datasets (digits)
            top = int(ds.tensors["seg"].max()) if ds.tensors["seg"].numel() else None
        if top is not None and top >= want:
            raise UserError(f"the {split} split has class ids up to {top} but data.num_classes={want}; "
                            f"set data.num_classes={top + 1}")  # fmt: skip
