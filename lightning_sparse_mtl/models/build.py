"""The network a train config describes: one builder for training, checkpoint loading, pruning and the checks."""

from __future__ import annotations

from collections.abc import Mapping

from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks


def build_net(cfg: Mapping) -> MultiTaskNet:
    """The MultiTaskNet described by a (plain) train config."""
    data = cfg["data"]
    tasks = build_tasks(cfg["tasks"], data.get("num_classes"), data.get("attributes") or ())
    return MultiTaskNet(tasks, **cfg["model"])
