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

from lightning_sparse_mtl.core.errors import NonFiniteLossError, UserError
from lightning_sparse_mtl.mtl import tasks as tasks_module
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
    val_epochs = [int(r["epoch"]) for r in csv_rows(tmp_path / "resumed") if r.get("val/loss")]
    assert val_epochs == [0, 1, 2]  # metrics.csv after the resume: every epoch once (issue 13)
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


# ------------------------------------------------------------------ finished runs are never touched (issue 13)
def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of every file under ``folder``."""
    import hashlib

    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_checkpoint_of_another_run_cannot_overwrite_a_finished_run(train_cfg) -> None:
    a = train_cfg(*SHORT)  # composing sets the global HydraConfig (the run dir): compose, then train
    train(a)
    b = train_cfg(*SHORT)
    train(b)
    other = Path(a.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt"
    run_b = Path(b.hydra.runtime.output_dir)
    before = snapshot(run_b)
    with pytest.raises(UserError, match="belongs to another run"):
        train(compose_into(run_b, *SHORT, f"ckpt_path={other}"))
    with pytest.raises(UserError, match="already holds a finished run"):
        train(compose_into(run_b, *SHORT))
    assert snapshot(run_b) == before


def compose_into(run_dir: Path, *overrides: str):
    from conftest import compose_train_cfg

    return compose_train_cfg(run_dir, list(overrides))


def test_interrupted_run_dir_is_only_resumed(train_cfg) -> None:
    cfg = train_cfg(*SHORT)
    train(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    (run_dir / "results.json").unlink()  # as if it died before the end
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="holds checkpoints of an interrupted run; resume it with ckpt_path="):
        train(compose_into(run_dir, *SHORT))
    assert snapshot(run_dir) == before


def test_two_trainings_cannot_share_a_run_dir(train_cfg) -> None:
    import fcntl

    cfg = train_cfg(*SHORT)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    fd = os.open(run_dir / ".lsmtl.lock", os.O_CREAT | os.O_RDWR)  # another open file description = another trainer
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(UserError, match="is in use by another training"):
            train(cfg)
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    finally:
        os.close(fd)
    train(cfg)  # free again


def test_resumed_run_metrics_csv_holds_every_epoch_once(train_cfg) -> None:
    cfg = train_cfg(*SHORT, "trainer.max_epochs=2")
    train(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    first = csv_rows(run_dir)
    # resume the same run for 2 more epochs
    train(compose_into(run_dir, *SHORT, "trainer.max_epochs=4", f"ckpt_path={ckpt}"))
    rows = csv_rows(run_dir)
    val = [int(r["epoch"]) for r in rows if r.get("val/loss")]
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert val == [0, 1, 2, 3]  # each epoch's validation exactly once
    assert train_steps == sorted(set(train_steps)) and len(train_steps) == 4 * 2  # 2 batches per epoch, no repeats
    # the first run's epochs 0-1 stay as they were (its test rows, logged at epoch 2, are replaced by the new test)
    kept = [{k: r.get(k, "") for k in rows[0]} for r in first if r["epoch"] and int(r["epoch"]) < 2]
    assert [r for r in rows if r["epoch"] and int(r["epoch"]) < 2] == kept  # earlier rows kept as they were


def test_csv_rows_of_an_interrupted_epoch_are_dropped_on_resume(tmp_path: Path) -> None:
    from lightning_sparse_mtl.runs.csv_log import ResumableCSVLogger

    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    (log_dir / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,1.0,\n0,1,0.9,\n0,1,,0.8\n1,2,0.7,\n"  # epoch 1 died after a step
    )
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.resume = {"epoch": 0, "global_step": 2}
    logger.log_metrics({"train/loss": 0.6, "epoch": 1, "train/new": 1.0}, step=2)
    logger.save()
    lines = (log_dir / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,train/loss,train/new,val/loss"
    assert lines[1:] == ["0,0,1.0,,", "0,1,0.9,,", "0,1,,,0.8", "1,2,0.6,1.0,"]


def test_prune_output_elsewhere_leaves_the_run_untouched_and_figures_do_not_pile_up(train_cfg, tmp_path) -> None:
    from lightning_sparse_mtl.prune import prune_checkpoint

    cfg = train_cfg(*SHORT)
    train(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    for name, w in ckpt["state_dict"].items():  # zero half the input channels of the grouped encoder convs
        if name.startswith("net.encoder.") and w.dim() == 4 and w.shape[1] > 3:
            w[:, : w.shape[1] // 2] = 0
    torch.save(ckpt, ckpt_path)
    before = snapshot(run_dir)
    figures = prune_checkpoint(
        str(ckpt_path),
        str(tmp_path / "elsewhere" / "p.pt"),
        batch_sizes=[1],
        repeats=1,
        export=False,
        min_run_time=0.01,
    )
    assert figures and (tmp_path / "elsewhere" / "p.pt").is_file()
    assert snapshot(run_dir) == before  # source results.json not rewritten, no pruned.pt there
    prune_checkpoint(str(ckpt_path), batch_sizes=[1, 2], repeats=1, export=False, min_run_time=0.01)
    prune_checkpoint(str(ckpt_path), batch_sizes=[1], repeats=1, export=False, min_run_time=0.01)
    results = json.loads((run_dir / "results.json").read_text())
    assert "pruned/latency_b1_ms" in results and "pruned/latency_b2_ms" not in results  # only the latest prune


def test_sigint_names_the_checkpoint_to_resume_from(train_cfg, monkeypatch) -> None:
    from lightning_sparse_mtl.core.errors import Interrupted
    from lightning_sparse_mtl.training.module import SparseMTLModule

    real = SparseMTLModule.training_step

    def ctrl_c(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(SparseMTLModule, "training_step", ctrl_c)
    cfg = train_cfg(*SHORT, "trainer.max_epochs=3")
    run_dir = Path(cfg.hydra.runtime.output_dir)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted, match="interrupted; resume with the same overrides") as err:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    last = (run_dir / "checkpoints" / "last.ckpt").resolve()
    assert f"ckpt_path={last}" in str(err.value) and err.value.exit_code == 130
    assert not (run_dir / "results.json").exists()


def test_nan_task_weight_is_named_not_blamed_on_targets(train_cfg) -> None:
    with pytest.raises(UserError, match="task_weights.depth must be a finite number >= 0, got nan") as err:
        train(train_cfg(*SHORT, "task_weights={depth: nan}"))
    assert "target" not in str(err.value)


@pytest.mark.parametrize(
    "env, secondary",
    [
        ({}, False),
        ({"LOCAL_RANK": "1"}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, False),
        ({"SLURM_PROCID": "3"}, True),
    ],
)
def test_only_rank_zero_claims_the_run_dir(tmp_path, monkeypatch, env, secondary) -> None:
    """Lightning's DDP launcher re-runs train for every rank: only global rank 0 checks and claims the run dir."""
    from lightning_sparse_mtl.runs import run_dir as rd

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert rd.is_secondary_rank() is secondary
    rd.guard_run_dir(tmp_path, None)
    assert rd.holds(tmp_path) is not secondary
    rd.release_run_dir(tmp_path)
