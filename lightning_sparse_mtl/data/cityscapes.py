"""Cityscapes in the mtan preprocessed npy layout (128x256).

On disk::

    <root>/{train,val}/image/<i>.npy      (128, 256, 3) float RGB in [0, 1]
    <root>/{train,val}/label_7/<i>.npy    (128, 256) float class ids 0..6, -1 = ignore
    <root>/{train,val}/label_19/<i>.npy   (128, 256) float class ids 0..18, -1 = ignore
    <root>/{train,val}/depth/<i>.npy      (128, 256, 1) or (128, 256) rescaled disparity, 0 = invalid

The "depth" files hold (rescaled) *disparity*, so the sample key is ``disparity``. Splits as for NYUv2:
``test`` is the official ``val`` folder (500 images); ``train``/``val`` are carved deterministically from
the official ``train`` folder (2975 images) by ``val_fraction`` and ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.data.nyuv2 import NpyMultiTaskDataset

LABEL_FOLDERS = {7: "label_7", 19: "label_19"}


class Cityscapes(NpyMultiTaskDataset):
    """Cityscapes (mtan): seg with 7 or 19 classes (``num_classes``) and disparity.

    Items: ``{"image": (3,128,256) float32, "seg": (128,256) int64 (-1 ignore), "disparity": (1,128,256)
    float32 (0 invalid)}`` (only the keys in ``tasks``), then ``transform(sample)``.
    """

    name = "Cityscapes"
    layout = "{train,val}/{image,label_7,label_19,depth}/<i>.npy (mtan preprocessed Cityscapes)"
    TASKS = ("seg", "disparity")

    def __init__(
        self,
        split: str,
        root: str | os.PathLike | None = None,
        num_classes: int = 7,
        val_fraction: float = 0.1,
        seed: int = 0,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        tasks: Sequence[str] = TASKS,
    ) -> None:
        if num_classes not in LABEL_FOLDERS:
            raise UserError(f"Cityscapes num_classes must be 7 or 19 (label_7/ or label_19/), got {num_classes}")
        unknown = sorted(set(tasks) - set(self.TASKS))
        if unknown:
            raise UserError(f"Cityscapes has no task {', '.join(unknown)}; valid: {', '.join(self.TASKS)}")
        self.num_classes = num_classes
        folders = {"image": "image"}
        if "seg" in tasks:
            folders["seg"] = LABEL_FOLDERS[num_classes]
        if "disparity" in tasks:
            folders["disparity"] = "depth"
        super().__init__(split, root, folders, val_fraction, seed, transform)
