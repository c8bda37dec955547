"""Prediction images: colour maps, panels, the PNG fallback of the PredictionImages callback."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from helpers.runs import assert_png

from lightning_sparse_mtl.reporting.media import (
    PredictionImages,
    depth_to_rgb,
    normals_to_rgb,
    render_grid,
    sample_panels,
    seg_to_rgb,
)
from lightning_sparse_mtl.training.module import SparseMTLModule


def test_render_functions() -> None:
    seg = np.array([[0, 1], [-1, 2]])
    rgb, valid = seg_to_rgb(seg, 3)
    assert rgb.shape == (2, 2, 3) and not valid[1, 0] and (rgb[1, 0] == 0).all()
    assert not np.allclose(rgb[0, 0], rgb[0, 1])
    n = np.zeros((3, 2, 2), np.float32)
    n[2] = -1.0
    assert np.allclose(normals_to_rgb(n)[..., 2], 0.0) and np.allclose(normals_to_rgb(n)[..., 0], 0.5)
    d = depth_to_rgb(np.array([[1.0, 5.0]]), 1.0, 5.0, valid=np.array([[True, False]]))
    assert d.shape == (1, 2, 3) and (d[0, 1] == 0).all() and d[0, 0].sum() > 0
    grid = render_grid([[np.zeros((8, 8, 3)), np.ones((8, 8, 3))]], pad=2, min_side=32)
    assert grid.dtype == np.uint8 and grid.shape == (32 + 4, 2 * 32 + 6, 3)


def test_prediction_images_panels_and_png_fallback(train_cfg, tmp_path: Path) -> None:
    module = SparseMTLModule(train_cfg()).eval()
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(3, 3, 16, 16, generator=g),
        "seg": torch.randint(-1, 11, (3, 16, 16), generator=g),
        "depth": torch.rand(3, 1, 16, 16, generator=g) + 1,
        "normal": torch.nn.functional.normalize(torch.randn(3, 3, 16, 16, generator=g), dim=1),
    }
    panels = sample_panels(
        batch["image"][0].numpy(), {k: v[0].numpy() for k, v in batch.items()},
        {k: v[0].detach().numpy() for k, v in module(batch["image"]).items()},
        {"seg": "seg", "depth": "depth", "normal": "normal"}, {"seg": 11},
    )  # fmt: skip
    assert [t for t, _ in panels] == ["input", "seg target", "seg pred", "depth target", "depth pred",
                                     "normal target", "normal pred"]  # fmt: skip
    cb = PredictionImages(every_n_epochs=2, num_images=2)
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), current_epoch=0, global_step=4, sanity_checking=False,
        is_global_zero=True,
    )  # fmt: skip
    cb.on_validation_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    assert not (tmp_path / "predictions").exists()  # epoch 1 of every 2: not due
    trainer.current_epoch = 1
    cb.on_validation_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    path = tmp_path / "predictions" / "epoch001.png"
    assert_png(path)
    from PIL import Image

    preds = {k: v.detach().numpy() for k, v in module(batch["image"]).items()}
    grids, titles = cb.render(module, {k: v.numpy() for k, v in batch.items()}, preds, ["bg", *"0123456789"])
    assert titles == ["input", "seg target", "seg pred", "seg legend", "depth target", "depth pred", "depth error",
                      "normal target", "normal pred", "normal error"]  # fmt: skip
    with Image.open(path) as im:  # 2 samples stacked, each one figure row of 10 panels
        assert im.size == (grids[0].shape[1], 2 * grids[0].shape[0])


def test_prediction_figure_error_maps_and_legend() -> None:
    """A perfect prediction has a uniformly zero error map; a wrong one does not; every class shown is named."""
    from lightning_sparse_mtl.reporting.prediction_figure import hemisphere_key, prediction_figure

    g = np.random.default_rng(0)
    depth = g.uniform(1, 5, (1, 16, 16)).astype(np.float32)
    normal = np.zeros((3, 16, 16), np.float32)
    normal[2] = -1
    seg = g.integers(0, 3, (16, 16))
    kinds = {"seg": "seg", "depth": "depth", "normal": "normal"}
    targets = {"seg": seg, "depth": depth, "normal": normal}
    img, titles = prediction_figure(g.random((3, 16, 16)), targets, targets, kinds, {"seg": 3}, ["a", "b", "c"], "m")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[1] > 4 * img.shape[0]
    assert len(titles) == 10
    key = hemisphere_key(9)
    assert np.allclose(key[4, 4], [0.5, 0.5, 0.0])  # the centre faces the camera: n = (0, 0, -1)
    wrong = {"seg": (seg + 1) % 3, "depth": depth + 1, "normal": -normal}
    img2, _ = prediction_figure(g.random((3, 16, 16)), targets, wrong, kinds, {"seg": 3}, None, "m")
    assert img2.shape == img.shape and not np.array_equal(img, img2)
