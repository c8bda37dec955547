"""Split-level multi-task metrics as torchmetrics ``Metric`` subclasses.

Every state is a sum (confusion matrix, error sums, angle histogram), so results are exact over the
whole split, independent of batch size, and synchronise across DDP ranks by summation.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import Metric

NORMAL_HIST_BINS = 18000  # 0.01 degree bins over [0, 180]


class SegmentationMetrics(Metric):
    """mIoU and pixel accuracy from a confusion matrix accumulated over the split.

    ``update(logits (B,C,H,W), target (B,H,W) long)``; pixels equal to ``ignore_index`` are skipped.
    Classes absent from both prediction and target (union 0) are excluded from the mean IoU.
    """

    full_state_update = False
    higher_is_better = True
    directions: ClassVar[dict[str, bool]] = {"miou": True, "pix_acc": True}
    units: ClassVar[dict[str, str]] = {"miou": "", "pix_acc": ""}

    def __init__(self, num_classes: int, ignore_index: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (B,C,H,W) and target (B,H,W), got {tuple(logits.shape)}, {tuple(target.shape)}"
            )
        pred = logits.argmax(1).flatten()
        tgt = target.flatten().long()
        keep = tgt != self.ignore_index
        idx = tgt[keep] * self.num_classes + pred[keep]
        self.confmat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean() if present.any() else torch.tensor(0.0, dtype=torch.float64)
        pix_acc = tp.sum() / cm.sum().clamp_min(1)
        return {"miou": miou.float(), "pix_acc": pix_acc.float()}


class DepthMetrics(Metric):
    """Mean absolute and relative error over valid pixels (target > 0).

    ``update(pred (B,1,H,W), target (B,1,H,W))``.
    """

    full_state_update = False
    higher_is_better = False
    directions: ClassVar[dict[str, bool]] = {"abs_err": False, "rel_err": False}
    units: ClassVar[dict[str, str]] = {"abs_err": "depth unit", "rel_err": ""}  # NYUv2: m; Cityscapes: disparity

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("abs_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rel_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"depth pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        valid = target > 0
        err = (pred[valid] - target[valid]).abs().double()
        self.abs_sum += err.sum()
        self.rel_sum += (err / target[valid].double()).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {"abs_err": (self.abs_sum / n).float(), "rel_err": (self.rel_sum / n).float()}


class NormalMetrics(Metric):
    """Angular error (degrees) of surface normals over valid pixels (non-zero target).

    ``update(pred (B,3,H,W), target (B,3,H,W))``; predictions are L2-normalised here. ``mean`` and
    the ``within_*`` fractions are exact; ``median`` (the lower middle value, as ``torch.median``) comes
    from a 0.01-degree histogram (linear interpolation inside the bin), which keeps the state a sum.
    """

    full_state_update = False
    higher_is_better = None  # mixed: angles lower, within_* fractions higher (see ``directions``)
    directions: ClassVar[dict[str, bool]] = {
        "mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True,
    }  # fmt: skip
    units: ClassVar[dict[str, str]] = {
        "mean": "°",
        "median": "°",
        "within_11.25": "",
        "within_22.5": "",
        "within_30": "",
    }
    thresholds = (11.25, 22.5, 30.0)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("angle_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("within", torch.zeros(len(self.thresholds), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hist", torch.zeros(NORMAL_HIST_BINS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected normals (B,3,H,W) twice, got {tuple(pred.shape)}, {tuple(target.shape)}")
        valid = target.abs().sum(1) > 0
        p = F.normalize(pred.double(), dim=1).permute(0, 2, 3, 1)[valid]
        t = F.normalize(target.double(), dim=1).permute(0, 2, 3, 1)[valid]
        angle = torch.rad2deg(torch.acos((p * t).sum(-1).clamp(-1.0, 1.0)))
        self.angle_sum += angle.sum()
        self.count += angle.numel()
        self.within += torch.stack([(angle < thr).sum() for thr in self.thresholds])
        bins = (angle / 180.0 * NORMAL_HIST_BINS).long().clamp(0, NORMAL_HIST_BINS - 1)
        self.hist += torch.bincount(bins, minlength=NORMAL_HIST_BINS)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        cdf = self.hist.cumsum(0)
        half = self.count.double() / 2
        b = int(torch.searchsorted(cdf.double(), half).clamp(max=NORMAL_HIST_BINS - 1))
        below = cdf[b - 1].double() if b > 0 else torch.zeros((), dtype=torch.float64)
        frac = (half - below) / self.hist[b].double().clamp_min(1)
        median = (b + frac) * 180.0 / NORMAL_HIST_BINS
        out = {"mean": (self.angle_sum / n).float(), "median": median.float()}
        for thr, cnt in zip(self.thresholds, self.within):
            out[f"within_{thr:g}"] = (cnt.double() / n).float()
        return out


class BinaryAttributeMetrics(Metric):
    """Accuracy and F1 of a binary attribute from logits. ``update(logits (B,1), target (B,1) in {0,1})``."""

    full_state_update = False
    higher_is_better = True
    directions: ClassVar[dict[str, bool]] = {"acc": True, "f1": True}
    units: ClassVar[dict[str, str]] = {"acc": "", "f1": ""}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.reshape(-1) > 0
        tgt = target.reshape(-1) > 0.5
        self.tp += (pred & tgt).sum()
        self.fp += (pred & ~tgt).sum()
        self.fn += (~pred & tgt).sum()
        self.tn += (~pred & ~tgt).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        total = (self.tp + self.fp + self.fn + self.tn).clamp_min(1)
        denom = (2 * self.tp + self.fp + self.fn).double()
        f1 = 2 * self.tp.double() / denom if denom > 0 else torch.zeros((), dtype=torch.float64)
        return {"acc": ((self.tp + self.tn).double() / total).float(), "f1": f1.float()}


METRIC_CLASSES: tuple[type[Metric], ...] = (SegmentationMetrics, DepthMetrics, NormalMetrics, BinaryAttributeMetrics)


def metric_direction(key: str) -> bool | None:
    """Whether higher is better for a results key ``<stage>/<task>/<metric>`` (or a bare metric name), from the
    ``directions`` each metric class declares; ``test/delta_m`` is higher-better; None for anything else."""
    if key.endswith("delta_m"):
        return True
    name = key.rsplit("/", 1)[-1]
    for cls in METRIC_CLASSES:
        if name in cls.directions:
            return cls.directions[name]
    return None


def metric_unit(key: str) -> str | None:
    """The unit of a results key's metric ("°", "depth unit", "" for dimensionless), None if unknown."""
    name = key.rsplit("/", 1)[-1]
    for cls in METRIC_CLASSES:
        if name in cls.units:
            return cls.units[name]
    return None
