"""Per task kind: head size, output activation, loss, metrics and metric directions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lightning_sparse_mtl.mtl.metrics import BinaryAttributeMetrics, DepthMetrics, NormalMetrics, SegmentationMetrics
from lightning_sparse_mtl.runs.errors import UserError, unknown_name

IGNORE_INDEX = -1


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over pixels; ``logits`` (B,C,H,W), ``target`` (B,H,W) long with -1 = ignore."""
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over valid pixels (target > 0); ``pred``, ``target`` (B,1,H,W)."""
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return (pred[valid] - target[valid]).abs().mean()


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine over valid pixels (non-zero target); ``pred`` unit normals (B,3,H,W)."""
    valid = target.abs().sum(1) > 0
    if not valid.any():
        return pred.sum() * 0.0
    cos = (pred * target).sum(1)
    return (1.0 - cos[valid]).mean()


def attr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits; ``logits``, ``target`` (B,1) with target in {0,1}."""
    return F.binary_cross_entropy_with_logits(logits, target.float())


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def unit_normal(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along channels: (B,3,H,W) -> unit vectors."""
    return F.normalize(x, dim=1)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the model and the module need to know about one task."""

    name: str
    kind: str  # "seg" | "depth" | "normal" | "attr"
    out_channels: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    activation: Callable[[torch.Tensor], torch.Tensor]
    make_metric: Callable[[], Metric]
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        """True for per-pixel tasks (decoded by a dense head), False for image-level attributes."""
        return self.kind != "attr"


DENSE_KINDS = {"seg": "seg", "depth": "depth", "disparity": "depth", "normal": "normal"}


def build_task(name: str, num_classes: int | None = None, attributes: Sequence[str] = ()) -> TaskSpec:
    """Resolve a task name: seg, depth, disparity, normal, or one of the dataset's binary ``attributes``."""
    kind = DENSE_KINDS.get(name, "attr" if name in attributes else None)
    if kind is None:
        raise unknown_name("task", name, [*DENSE_KINDS, *attributes])
    if kind == "seg":
        if not num_classes or num_classes < 2:
            raise UserError(f"task 'seg' needs data.num_classes >= 2, got {num_classes}")
        return TaskSpec(
            name, kind, num_classes, seg_loss, identity,
            partial(SegmentationMetrics, num_classes, IGNORE_INDEX),
            {"miou": True, "pix_acc": True},
        )  # fmt: skip
    if kind == "depth":
        return TaskSpec(name, kind, 1, depth_loss, identity, DepthMetrics, {"abs_err": False, "rel_err": False})
    if kind == "normal":
        directions = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}
        return TaskSpec(name, kind, 3, normal_loss, unit_normal, NormalMetrics, directions)
    return TaskSpec(name, "attr", 1, attr_loss, identity, BinaryAttributeMetrics, {"acc": True, "f1": True})


def build_tasks(names: Sequence[str], num_classes: int | None = None, attributes: Sequence[str] = ()) -> list[TaskSpec]:
    """Build and validate the task list (non-empty, no duplicates)."""
    names = list(names)
    if not names:
        raise UserError("tasks is empty; give at least one, e.g. tasks=[seg]")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"tasks has duplicates: {', '.join(dupes)}; list each task once")
    return [build_task(n, num_classes, attributes) for n in names]
