"""The optimizer and lr scheduler a config names: torch classes with plain values, nothing nested; checked before
they are built (on the command line, and for a config Lightning's ``load_from_checkpoint`` reads from a file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.stored_config import check_nested_targets
from lightning_sparse_mtl.core.validate import get, locate_class


def check_optimizer_class(cfg: Any) -> type:
    """The class ``optimizer._target_`` names: a torch optimizer for dense gradients (one-line error otherwise)."""
    node = get(cfg, "optimizer")
    if not isinstance(node, Mapping):
        raise UserError(f"optimizer must be a config with _target_ (e.g. torch.optim.AdamW), got {node!r}")
    cls = locate_class("optimizer", node.get("_target_"))
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"optimizer._target_={node.get('_target_')} is not a torch optimizer class")
    if issubclass(cls, torch.optim.SparseAdam):
        raise UserError("optimizer._target_=torch.optim.SparseAdam needs sparse gradients (nn.Embedding(sparse=True)); "
                        "a conv net's are dense: use torch.optim.AdamW (or Adam)")  # fmt: skip
    return cls


def check_optimizer_objects(cfg: Any) -> None:
    """Before ``optimizer``/``scheduler`` are built from a config (also one read from a checkpoint by Lightning's
    ``load_from_checkpoint``): a torch optimizer and lr scheduler class, nothing nested."""
    check_nested_targets(cfg)
    check_optimizer_class(cfg)
    sched = get(cfg, "scheduler")
    if isinstance(sched, Mapping) and sched:
        check_scheduler_class(locate_class("scheduler", sched.get("_target_")), sched.get("_target_"))


def check_scheduler_class(cls: Any, target: str) -> None:
    """A torch lr scheduler that steps by epoch or step (ReduceLROnPlateau needs a monitored metric: not wired)."""
    lrs = torch.optim.lr_scheduler
    if isinstance(cls, type) and issubclass(cls, lrs.ReduceLROnPlateau):
        raise UserError(f"scheduler._target_={target} steps on a monitored metric, which training does not pass it; "
                        "use one that follows epochs or steps (e.g. CosineAnnealingLR) or scheduler=null")  # fmt: skip
    if not (isinstance(cls, type) and issubclass(cls, lrs.LRScheduler)):
        raise UserError(f"scheduler._target_={target} is not a torch lr scheduler class "
                        "(e.g. torch.optim.lr_scheduler.CosineAnnealingLR)")  # fmt: skip
