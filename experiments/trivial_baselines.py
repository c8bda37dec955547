"""Test metrics of trivial predictors on a dataset config (default: the embedded digits scenes).

    python experiments/trivial_baselines.py [overrides ...]

seg: every pixel background (class 0); depth: the mean valid training depth; normal: facing the camera (0, 0, -1).
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.core.results import print_results
from lightning_sparse_mtl.mtl.metrics import DepthMetrics, NormalMetrics, SegmentationMetrics


def trivial_metrics(datamodule, num_classes: int) -> dict[str, float]:
    train = DataLoader(datamodule.build("train"), batch_size=256)
    total, count = 0.0, 0
    for batch in train:
        valid = batch["depth"] > 0
        total, count = total + float(batch["depth"][valid].sum()), count + int(valid.sum())
    mean_depth = total / max(count, 1)
    seg, depth, normal = SegmentationMetrics(num_classes), DepthMetrics(), NormalMetrics()
    for batch in DataLoader(datamodule.build("test"), batch_size=256):
        b, _, h, w = batch["image"].shape
        background = torch.zeros(b, num_classes, h, w)
        background[:, 0] = 1
        seg.update(background, batch["seg"])
        depth.update(torch.full_like(batch["depth"], mean_depth), batch["depth"])
        facing = torch.zeros(b, 3, h, w)
        facing[:, 2] = -1
        normal.update(facing, batch["normal"])
    out = {}
    for task, metric in (("seg", seg), ("depth", depth), ("normal", normal)):
        out.update({f"test/{task}/{k}": float(v) for k, v in metric.compute().items()})
    return out


def main() -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=sys.argv[1:])
    print_results(trivial_metrics(instantiate(cfg.data), cfg.data.num_classes), title="trivial predictors")


if __name__ == "__main__":
    main()
