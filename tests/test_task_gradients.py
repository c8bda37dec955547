"""Per-task gradient statistics (training/task_gradients.py): closed forms, no side effects, a real run's log."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from helpers.runs import SHORT

from lightning_sparse_mtl.runs.validate_train import validate_train_config
from lightning_sparse_mtl.train import train
from lightning_sparse_mtl.training.task_gradients import TaskGradientProbe, task_gradient_stats

PROBE = [
    "+callbacks.task_gradients._target_=lightning_sparse_mtl.training.task_gradients.TaskGradientProbe",
    "+callbacks.task_gradients.every_n_steps=1",
]


def linear_losses(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """loss_a = w.u, loss_b = w.v: d loss_a / dw = u, d loss_b / dw = v (split over two params: w[:2], w[2:])."""
    return {"a": w @ u, "b": w @ v}


def test_linear_model_closed_form() -> None:
    u, v = torch.tensor([1.0, 2.0, 0.0, 2.0]), torch.tensor([3.0, 0.0, 4.0, 0.0])
    w = torch.randn(4, requires_grad=True)
    stats = task_gradient_stats(linear_losses(u, v, w), [w])
    assert stats["a/norm"] == pytest.approx(3.0) and stats["b/norm"] == pytest.approx(5.0)
    assert stats["a~b/cos"] == pytest.approx(float(u @ v) / 15.0)  # 3 / 15
    assert stats["norm_ratio"] == pytest.approx(5.0 / 3.0) and stats["conflict_fraction"] == 0.0
    assert set(stats) == {"a/norm", "b/norm", "a~b/cos", "conflict_fraction", "norm_ratio"}

    weighted = task_gradient_stats(linear_losses(u, v, w), [w], {"a": 10.0, "b": 0.5})  # norms scale, cos does not
    assert weighted["a/norm"] == pytest.approx(30.0) and weighted["b/norm"] == pytest.approx(2.5)
    assert weighted["a~b/cos"] == pytest.approx(stats["a~b/cos"])
    assert weighted["norm_ratio"] == pytest.approx(12.0)


def test_params_split_and_unused_params_count_as_zeros() -> None:
    u, v = torch.tensor([1.0, 2.0, 0.0, 2.0]), torch.tensor([3.0, 0.0, 4.0, 0.0])
    w1, w2 = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    unused, frozen = torch.randn(5, requires_grad=True), torch.randn(3)
    losses = {"b": w1 @ v[:2] + w2 @ v[2:], "a": w1 @ u[:2] + w2 @ u[2:]}  # order of the mapping does not matter
    stats = task_gradient_stats(losses, [unused, w1, frozen, w2])
    assert stats["a/norm"] == pytest.approx(3.0) and stats["b/norm"] == pytest.approx(5.0)
    assert stats["a~b/cos"] == pytest.approx(0.2) and "b~a/cos" not in stats


def test_conflict_fraction_counts_opposite_pairs() -> None:
    w = torch.randn(3, requires_grad=True)
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    losses = {"x": w @ e0, "y": -2.0 * (w @ e0), "z": w @ e1}  # x~y opposite, x~z and y~z orthogonal
    stats = task_gradient_stats(losses, [w])
    assert stats["x~y/cos"] == pytest.approx(-1.0)
    assert stats["x~z/cos"] == pytest.approx(0.0) and stats["y~z/cos"] == pytest.approx(0.0)
    assert stats["conflict_fraction"] == pytest.approx(1 / 3) and stats["norm_ratio"] == pytest.approx(2.0)
    zero = task_gradient_stats({"x": w @ e0, "y": 0.0 * w.sum()}, [w])  # a zero gradient: cos 0, ratio inf
    assert zero["x~y/cos"] == 0.0 and zero["y/norm"] == 0.0 and math.isinf(zero["norm_ratio"])


def test_grads_of_params_are_left_alone() -> None:
    net = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    losses = {"p": net(x)[:, 0].pow(2).mean(), "q": net(x)[:, 1].abs().mean()}
    task_gradient_stats(losses, list(net.parameters()))
    assert all(p.grad is None for p in net.parameters())
    net.weight.grad = torch.ones_like(net.weight)
    task_gradient_stats({"p": net(x).sum(), "q": net(x).mean()}, list(net.parameters()))
    assert torch.equal(net.weight.grad, torch.ones_like(net.weight)) and net.bias.grad is None


def test_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        TaskGradientProbe(every_n_steps=0)


def test_probe_override_passes_config_validation(train_cfg) -> None:
    cfg = train_cfg(*PROBE)
    validate_train_config(cfg)
    assert cfg.callbacks.task_gradients.every_n_steps == 1


def test_measure_restores_buffers_rng_and_grads(train_cfg) -> None:
    """The extra train-mode forward of the real net: BatchNorm statistics, RNG and .grad come out as they went in."""
    from lightning_sparse_mtl.training.module import SparseMTLModule

    module = SparseMTLModule(train_cfg()).train()
    batch = {
        "image": torch.rand(4, 3, 32, 32),
        "seg": torch.randint(0, 11, (4, 32, 32)),
        "depth": torch.rand(4, 1, 32, 32) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(4, 3, 32, 32), dim=1),
    }
    module.net.encoder.conv1.weight.grad = torch.full_like(module.net.encoder.conv1.weight, 7.0)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    stats = TaskGradientProbe.measure(module, batch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert torch.equal(module.net.encoder.conv1.weight.grad, torch.full_like(module.net.encoder.conv1.weight, 7.0))
    assert sum(p.grad is not None for p in module.parameters()) == 1
    assert all(stats[f"{t}/norm"] > 0 for t in ("seg", "depth", "normal")) and 1 <= stats["norm_ratio"] < math.inf
    module(batch["image"])  # the check has teeth: a plain train-mode forward does move the running statistics
    assert not all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def _test_metrics(results: dict) -> dict[str, float]:
    return {k: v for k, v in results.items() if k.startswith("test/")}


def test_probe_logs_and_leaves_training_unchanged(train_cfg) -> None:
    """Two optimizer steps, probed at both: task_grad/... in metrics.csv, the test metrics identical to a plain run
    (the extra train-mode forward would move BatchNorm statistics if they were not restored)."""
    plain = train(train_cfg(*SHORT))
    cfg = train_cfg(*SHORT, *PROBE)
    probed = train(cfg)
    assert _test_metrics(probed) and _test_metrics(probed) == _test_metrics(plain)
    with (Path(cfg.hydra.runtime.output_dir) / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r.get("task_grad/seg/norm_step")]
    assert len(step_rows) == 2  # global steps 1 and 2
    for key in ("seg/norm", "depth/norm", "normal/norm", "depth~normal/cos", "conflict_fraction", "norm_ratio"):
        assert any(r.get(f"task_grad/{key}_epoch") for r in rows), key
        values = [float(r[f"task_grad/{key}_step"]) for r in step_rows]
        assert all(math.isfinite(x) for x in values), (key, values)
    cos = [float(r["task_grad/depth~seg/cos_step"]) for r in step_rows]
    assert all(-1.0 <= c <= 1.0 for c in cos) and all(float(r["task_grad/seg/norm_step"]) > 0 for r in step_rows)
