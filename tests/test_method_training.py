"""The method inside real Lightning training: prox once per optimizer step, weighting strategies that learn."""

from __future__ import annotations

import pytest
import torch

from lightning_sparse_mtl.mtl.weighting import DWAWeighting
from lightning_sparse_mtl.sparsity.controller import GroupSparsity
from lightning_sparse_mtl.train import train
from lightning_sparse_mtl.training.module import SparseMTLModule

SHORT = ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "prune.after_train=false"]


def test_prox_runs_once_per_real_optimizer_step_under_accumulation(train_cfg, monkeypatch) -> None:
    calls = []
    real = GroupSparsity.prox_
    monkeypatch.setattr(GroupSparsity, "prox_", lambda self, opt, lam: (calls.append(lam), real(self, opt, lam))[1])
    cfg = train_cfg(*SHORT, "trainer.limit_train_batches=4", "trainer.accumulate_grad_batches=2", "lambda=1e-3")
    train(cfg)
    assert calls == [1e-3, 1e-3]  # 4 micro-batches, 2 optimizer steps


def test_warmup_epochs_keep_the_first_epoch_dense(train_cfg, monkeypatch) -> None:
    calls = []
    real = GroupSparsity.prox_
    monkeypatch.setattr(GroupSparsity, "prox_", lambda self, opt, lam: (calls.append(lam), real(self, opt, lam))[1])
    cfg = train_cfg(*SHORT, "trainer.limit_train_batches=2", "trainer.max_epochs=2", "lambda=1e-3",
                    "sparsity.warmup_epochs=1")  # fmt: skip
    train(cfg)
    assert calls == [1e-3, 1e-3]  # epoch 0 is dense: lambda 0, no prox at all; epoch 1: two steps


def test_uncertainty_weights_are_learned(train_cfg) -> None:
    cfg = train_cfg(*SHORT, "trainer.limit_train_batches=3", "weighting=uncertainty")
    module = SparseMTLModule(cfg)
    before = {t: float(v) for t, v in module.weighting.log_vars.items()}
    assert before == {"seg": 0.0, "depth": 0.0, "normal": 0.0}
    results = train(cfg)
    ckpt = torch.load(results["ckpt_path"], weights_only=False)["state_dict"]
    after = {t: float(ckpt[f"weighting.log_vars.{t}"]) for t in before}
    assert all(after[t] != 0.0 for t in after)  # optimised with the model


def test_dwa_weights_follow_loss_ratios() -> None:
    dwa = DWAWeighting(["a", "b"], temperature=2.0)
    dwa.on_epoch_end({"a": 1.0, "b": 1.0})
    assert dwa.current_weights() == {"a": 1.0, "b": 1.0}  # needs two epochs of history
    dwa.on_epoch_end({"a": 0.5, "b": 1.0})  # a improved, b did not -> b weighs more
    ra, rb = 0.5, 1.0
    ea, eb = torch.exp(torch.tensor(ra / 2)), torch.exp(torch.tensor(rb / 2))
    w = dwa.current_weights()
    assert w["a"] == pytest.approx(float(2 * ea / (ea + eb)))
    assert w["b"] == pytest.approx(float(2 * eb / (ea + eb)))
    total = dwa({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert float(total) == pytest.approx(2 * w["a"] + 3 * w["b"])


def test_epoch_figures_use_a_cached_graph_of_the_live_net_and_stay_exact(train_cfg) -> None:
    import copy

    from lightning_sparse_mtl.sparsity import prune_zero_channels, sparsity_stats
    from lightning_sparse_mtl.training.callbacks import SparsityLogger

    module = SparseMTLModule(train_cfg("lambda=1e-4"))
    net = module.net.train()
    with torch.no_grad():
        for g in module.sparsity.groups[-6:]:
            g.weight[:, : g.num_groups // 2] = 0
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    logger = SparsityLogger(probe_size=32)
    stats = sparsity_stats(module.sparsity.groups)
    first = logger.pruning_figures(net, stats, params_left=True)
    graph = logger._graph
    assert graph is not None and net.training  # traced once, train mode restored
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in buffers.items())  # BN statistics untouched
    probe = copy.deepcopy(net).eval()
    report = prune_zero_channels(probe, torch.rand(1, 3, 32, 32), ignored_layers=probe.head_output_layers())
    assert first["sparsity/removable_channels"] == sum(report.channels_removed.values()) > 0
    assert first["sparsity/encoder_params_left"] == sum(p.numel() for p in probe.encoder.parameters())
    with torch.no_grad():  # more zeros later in training: the cached graph reads the live weights
        g = module.sparsity.groups[-7]
        g.weight[:, : g.num_groups // 2] = 0
    second = logger.pruning_figures(net, sparsity_stats(module.sparsity.groups), params_left=False)
    assert logger._graph is graph and "sparsity/encoder_params_left" not in second
    probe = copy.deepcopy(net).eval()
    report = prune_zero_channels(probe, torch.rand(1, 3, 32, 32), ignored_layers=probe.head_output_layers())
    assert second["sparsity/removable_channels"] == sum(report.channels_removed.values())
