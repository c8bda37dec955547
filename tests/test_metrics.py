"""Metrics against hand-computed values on small tensors, including ignore/invalid pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_sparse_mtl.mtl.metrics import (
    BinaryAttributeMetrics,
    DepthMetrics,
    NormalMetrics,
    SegmentationMetrics,
    metric_direction,
    metric_unit,
)


def one_hot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,H,W) class ids -> (B,C,H,W) logits whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def test_segmentation_hand_computed() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, -1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    m = SegmentationMetrics(num_classes=4, ignore_index=-1)
    m.update(one_hot_logits(pred, 4), target)
    out = m.compute()
    # valid pixels: 6; correct: 0,1,1,2 -> 4. IoU0 = 1/(2+1+... ) : tp0=1, pred0 valid=2, tgt0=2 -> 1/3
    # class1: tp=2, pred1=3, tgt1=2 -> 2/3 ; class2: tp=1, pred2=1, tgt2=2 -> 1/2 ; class 3 absent -> excluded
    assert out["pix_acc"].item() == pytest.approx(4 / 6)
    assert out["miou"].item() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_segmentation_accumulates_sums_not_batch_means() -> None:
    torch.manual_seed(0)
    target = torch.randint(-1, 5, (6, 8, 8))
    logits = torch.randn(6, 5, 8, 8)
    whole = SegmentationMetrics(5)
    whole.update(logits, target)
    parts = SegmentationMetrics(5)
    for i in (slice(0, 1), slice(1, 6)):
        parts.update(logits[i], target[i])
    for k, v in whole.compute().items():
        assert parts.compute()[k].item() == pytest.approx(v.item())


def test_segmentation_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected logits"):
        SegmentationMetrics(3).update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))


def test_depth_hand_computed_with_invalid_pixels() -> None:
    pred = torch.tensor([1.0, 2.0, 5.0, 7.0]).view(1, 1, 2, 2)
    target = torch.tensor([2.0, 2.0, 4.0, 0.0]).view(1, 1, 2, 2)  # last pixel invalid
    m = DepthMetrics()
    m.update(pred, target)
    out = m.compute()
    assert out["abs_err"].item() == pytest.approx((1 + 0 + 1) / 3)
    assert out["rel_err"].item() == pytest.approx((0.5 + 0 + 0.25) / 3)


def test_normal_hand_computed() -> None:
    # targets: +z everywhere but one invalid pixel; predictions at 0, 10, 20, 45 degrees (unnormalised scale too)
    angles = [0.0, 10.0, 20.0, 45.0]
    pred = torch.stack([torch.tensor([math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))]) for a in angles])
    pred = pred * torch.tensor([[1.0], [2.0], [0.5], [3.0]])
    pred = torch.cat([pred, torch.tensor([[1.0, 0.0, 0.0]])]).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    m = NormalMetrics()
    m.update(pred, target)
    out = m.compute()
    assert out["mean"].item() == pytest.approx(sum(angles) / 4, abs=1e-4)
    assert out["median"].item() == pytest.approx(10.0, abs=0.02)  # lower middle, as torch.median (0.01 deg bins)
    assert out["within_11.25"].item() == pytest.approx(0.5)
    assert out["within_22.5"].item() == pytest.approx(0.75)
    assert out["within_30"].item() == pytest.approx(0.75)


def test_normal_median_odd_count_is_middle_value() -> None:
    angles = torch.tensor([5.0, 33.0, 90.0])
    pred = torch.stack([torch.sin(torch.deg2rad(angles)), torch.zeros(3), torch.cos(torch.deg2rad(angles))]).view(
        1, 3, 1, 3
    )
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    m = NormalMetrics()
    m.update(pred, target)
    assert m.compute()["median"].item() == pytest.approx(33.0, abs=0.01)


def test_binary_attribute_hand_computed() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [1.0]])
    target = torch.tensor([[1], [1], [0], [0], [1]])
    m = BinaryAttributeMetrics()
    m.update(logits, target)
    out = m.compute()  # tp=2 fp=1 fn=1 tn=1
    assert out["acc"].item() == pytest.approx(3 / 5)
    assert out["f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


@pytest.mark.parametrize(
    "metric, update",
    [
        (SegmentationMetrics(3), (torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))),
        (DepthMetrics(), (torch.rand(2, 1, 4, 4) + 0.1, torch.rand(2, 1, 4, 4) + 0.1)),
        (NormalMetrics(), (F.normalize(torch.randn(2, 3, 4, 4), dim=1), F.normalize(torch.randn(2, 3, 4, 4), dim=1))),
        (BinaryAttributeMetrics(), (torch.randn(4, 1), torch.randint(0, 2, (4, 1)).float())),
    ],
)
def test_every_computed_key_declares_direction_and_unit(metric, update) -> None:
    metric.update(*update)
    keys = set(metric.compute())
    assert keys == set(type(metric).directions) == set(type(metric).units)


def test_metric_direction_lookup_by_results_key() -> None:
    assert metric_direction("test/normal/within_11.25") is True  # was wrongly "lower is better" via the class flag
    assert metric_direction("test/normal/mean") is False
    assert metric_direction("val/seg/miou") is True
    assert metric_direction("test/depth/abs_err") is False
    assert metric_direction("test/Male/f1") is True
    assert metric_direction("test/delta_m") is True
    assert metric_direction("params") is None
    assert metric_unit("test/normal/median") == "°"


def test_unit_normal_matches_f_normalize_in_value_and_gradient() -> None:
    from lightning_sparse_mtl.mtl.tasks import unit_normal

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    x[0, :, 0, 0] = 0  # a zero vector: F.normalize gives 0 with a finite gradient; so must we
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn_like(x)
    (unit_normal(a) * w).sum().backward()
    (F.normalize(b, dim=1) * w).sum().backward()
    assert torch.allclose(unit_normal(x), F.normalize(x, dim=1), atol=1e-12)
    assert torch.isfinite(a.grad).all() and torch.allclose(a.grad, b.grad, atol=1e-9)
    assert unit_normal(x.to(torch.bfloat16)).dtype == torch.bfloat16
