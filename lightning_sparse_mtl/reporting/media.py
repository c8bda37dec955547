"""Prediction images: input, seg overlays, depth and normals (target vs prediction) every N validation epochs.

Pixels come from :mod:`.colorize` (pure numpy + matplotlib colormaps). :class:`PredictionImages` logs one
grid per sample to W&B (``log_image``) when a WandbLogger is attached, else writes
``<run dir>/predictions/epoch{NNN}.png`` (samples stacked vertically).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_sparse_mtl.core.configs import plain_config
from lightning_sparse_mtl.reporting.colorize import (  # noqa: F401 - the pixel helpers, re-exported (moved)
    MIN_TILE,
    PAD,
    SEG_ALPHA,
    depth_range,
    depth_to_rgb,
    image_to_rgb,
    label_colors,
    normals_to_rgb,
    overlay,
    render_grid,
    sample_panels,
    save_png,
    seg_to_rgb,
    to_uint8,
    upscale,
)
from lightning_sparse_mtl.reporting.metric_info import depth_unit
from lightning_sparse_mtl.reporting.prediction_figure import prediction_figure


def _numpy(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in batch.items() if isinstance(v, torch.Tensor)}


class PredictionImages(L.Callback):
    """Every ``every_n_epochs`` validation epochs, render the first ``num_images`` samples of the first val batch:
    input | seg target/pred (colour overlay) + class legend (``class_names``, else "class k") | depth target/pred
    with a colour bar in the dataset's unit + |error| map | normals target/pred (RGB, hemisphere key) + angular
    error map.

    Logged as ``key`` to every WandbLogger (one image per sample); without one, saved to
    ``<dirpath or trainer.default_root_dir/predictions>/epoch{NNN}.png``. Runs on global rank 0 only.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 4,
        key: str = "val/predictions",
        dirpath: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.key = key
        self.dirpath = dirpath
        self.class_names = list(class_names) if class_names else None
        self._batch: dict[str, torch.Tensor] | None = None
        self.last_path: Path | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero and self._due(trainer):
            self._batch = {
                k: v[: self.num_images].detach().cpu().clone() for k, v in batch.items() if isinstance(v, torch.Tensor)
            }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if batch is None or "image" not in batch:
            return
        with torch.no_grad():
            preds = _numpy(pl_module(batch["image"].to(pl_module.device)))
        grids, titles = self.render(pl_module, _numpy(batch), preds, self.class_names)
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            caption = " | ".join(titles)
            for logger in wandb:
                logger.log_image(self.key, images=grids, caption=[caption] * len(grids), step=trainer.global_step)
            return
        root = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "predictions"
        self.last_path = save_png(np.concatenate(grids, axis=0), root / f"epoch{trainer.current_epoch:03d}.png")

    @staticmethod
    def render(
        pl_module: L.LightningModule,
        batch: Mapping[str, np.ndarray],
        preds: Mapping[str, np.ndarray],
        class_names: Sequence[str] | None = None,
    ) -> tuple[list[np.ndarray], list[str]]:
        """One annotated uint8 figure per sample (:func:`~.prediction_figure.prediction_figure`) and the
        panel titles."""
        specs = pl_module.net.tasks
        kinds = {t: s.kind for t, s in specs.items()}
        classes = {t: s.out_channels for t, s in specs.items() if s.kind == "seg"}
        grids, titles = [], []
        for i in range(len(batch["image"])):
            grid, titles = prediction_figure(
                batch["image"][i],
                {t: batch[t][i] for t in kinds if t in batch},
                {t: preds[t][i] for t in kinds if t in preds},
                kinds,
                classes,
                class_names,
                _depth_unit(pl_module),
            )
            grids.append(grid)
        return grids, titles


def _depth_unit(pl_module: L.LightningModule) -> str:
    cfg = getattr(pl_module, "hparams", {}).get("cfg")
    return depth_unit(plain_config(cfg, ("data",))) if cfg is not None else "depth unit"
