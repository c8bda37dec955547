"""Reliability: NaN stops, reproducibility, provenance, no overwrite, resume after SIGKILL, bad checkpoints."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from lightning_sparse_mtl.mtl import tasks as tasks_module
from lightning_sparse_mtl.runs.errors import NonFiniteLossError, UserError
from lightning_sparse_mtl.sparsity import controller
from lightning_sparse_mtl.train import train

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def test_nan_loss_stops_with_step_term_and_last_good_checkpoint(train_cfg, monkeypatch) -> None:
    calls = {"n": 0}
    real = tasks_module.depth_loss

    def flaky(pred, target):
        calls["n"] += 1
        return real(pred, target) * (float("nan") if calls["n"] > 2 else 1.0)

    monkeypatch.setattr(tasks_module, "depth_loss", flaky)
    cfg = train_cfg(*SHORT, "trainer.max_epochs=2")
    with pytest.raises(NonFiniteLossError, match=r"non-finite depth loss at step 2 \(epoch 1") as err:
        train(cfg)
    last = Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint: {last.resolve()}" in str(err.value)
    assert torch.load(last, weights_only=False)["epoch"] == 0  # the epoch before the NaN, intact
    assert not (Path(cfg.hydra.runtime.output_dir) / "results.json").exists()


def test_nan_penalty_stops(train_cfg, monkeypatch) -> None:
    monkeypatch.setattr(controller, "add_penalty_grad_", lambda *args, **kwargs: float("inf"))
    with pytest.raises(NonFiniteLossError, match="non-finite sparsity penalty at step 0"):
        train(train_cfg(*SHORT, "lambda=1e-3", "sparsity.penalty_grad=true"))


def test_same_seed_same_results_and_provenance(train_cfg) -> None:
    a = train(train_cfg(*SHORT, "sparsity=prox", "lambda=3"))
    b = train(train_cfg(*SHORT, "sparsity=prox", "lambda=3"))
    metrics = [k for k in a if k.startswith(("test/", "sparsity/"))]
    assert metrics and all(a[k] == b[k] for k in metrics)
    assert a["sparsity"]["layers"] == b["sparsity"]["layers"]
    assert a["seed"] == 0
    assert a["versions"]["torch"] == importlib.metadata.version("torch") and a["versions"]["lightning"]
    assert a["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", a["git_commit"])


def test_rerun_into_a_finished_run_dir_is_refused(train_cfg) -> None:
    cfg = train_cfg(*SHORT)
    train(cfg)
    with pytest.raises(UserError, match="already holds a finished run"):
        train(cfg)


def test_resume_with_checkpoint_of_another_model_is_refused(train_cfg) -> None:
    cfg = train_cfg(*SHORT)
    train(cfg)
    ckpt = Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="different model config"):
        train(train_cfg(*SHORT, "model.head_channels=8", f"ckpt_path={ckpt}"))


def run_train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [*TINY, "trainer.limit_train_batches=4", "trainer.max_epochs=3", "sparsity=prox", "lambda=3",
            "prune.after_train=false", f"hydra.run.dir={run_dir}", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "lightning_sparse_mtl.train", *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=run_dir.parent)  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight = run_train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run_train(tmp_path / "resumed", "+callbacks.killer._target_=killer.KillAtStep", "+callbacks.killer.step=6")
    assert killed.returncode == -signal.SIGKILL  # died in epoch 1, after its epoch-0 checkpoint
    ckpt = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    resumed = run_train(tmp_path / "resumed", f"ckpt_path={ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert 0 < a["sparsity/group_sparsity"] < 100
    assert a["sparsity"]["layers"] == b["sparsity"]["layers"]  # same zero pattern counts per layer
    for key in (k for k in a if k.startswith("test/")):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key  # float32 summation order only
    sa = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sb = torch.load(ckpt, weights_only=False)["state_dict"]
    for name in (n for n in sa if n.startswith("sparsity.frozen_")):
        assert torch.equal(sa[name], sb[name]), name
