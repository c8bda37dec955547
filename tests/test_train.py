"""The spine end to end: config composition, a short real training run, results.json, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.train import train
from lightning_sparse_mtl.training.module import SparseMTLModule

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "lambda=1e-4"])
    assert cfg["lambda"] == pytest.approx(1e-4)
    assert cfg.tasks and cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.data._target_.endswith("MTLDataModule")


def test_default_config_composes_with_lambda_override() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["lambda=3e-4", "trainer.max_epochs=1", "trainer.limit_train_batches=5"])
    assert cfg["lambda"] == pytest.approx(3e-4)
    assert list(cfg.tasks) == ["seg", "depth", "normal"]
    assert cfg.trainer.limit_train_batches == 5


def test_short_training_run_writes_results(train_cfg) -> None:
    cfg = train_cfg(*SHORT)
    results = train(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    on_disk = json.loads((run_dir / "results.json").read_text())
    for key in ("test/seg/miou", "test/seg/pix_acc", "test/depth/abs_err", "test/depth/rel_err", "test/normal/mean",
                "test/normal/median", "test/normal/within_11.25", "test/normal/within_22.5", "test/normal/within_30",
                "params", "wall_time_s", "ckpt_path", "config", "sparsity/group_sparsity"):  # fmt: skip
        assert key in on_disk, key
    assert on_disk["test/seg/miou"] == pytest.approx(results["test/seg/miou"])
    assert Path(on_disk["ckpt_path"]).is_absolute() and Path(on_disk["ckpt_path"]).is_file()
    assert on_disk["config"]["lambda"] == 0.0
    assert 0 <= on_disk["test/normal/within_30"] <= 1
    assert on_disk["params"] == sum(p.numel() for p in SparseMTLModule(cfg).net.parameters())
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_encoder_runs_once_per_forward(train_cfg) -> None:
    module = SparseMTLModule(train_cfg())
    calls = []
    module.net.encoder.register_forward_hook(lambda *a: calls.append(1))
    out = module(torch.rand(2, 3, 32, 32))
    assert len(calls) == 1
    assert out["seg"].shape == (2, 11, 32, 32) and out["depth"].shape == (2, 1, 32, 32)
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def final_weights(cfg) -> dict[str, torch.Tensor]:
    train(cfg)
    ckpt = torch.load(Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def test_lambda_zero_is_bit_identical_to_dense(train_cfg) -> None:
    dense = final_weights(train_cfg(*SHORT, "sparsity=none"))
    zero = final_weights(train_cfg(*SHORT, "sparsity=adam_prox", "lambda=0"))
    assert dense.keys() == zero.keys()
    for k in dense:
        assert torch.equal(dense[k], zero[k]), k


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_sparse_mtl.train", *args, f"hydra.run.dir={cwd}/run"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lambda=abc", "lambda must be a number"),
        ("lambda=-1e-4", "lambda must be"),
        ("tasks=[seg,colour]", "unknown task 'colour'; valid: depth, disparity, normal, seg"),
        ("tasks=[seg,seg]", "tasks has duplicates: seg"),
        ("model.encoder=resnet9000", "unknown encoder 'resnet9000'; valid: "),
        ("model.head=mlp", "unknown head 'mlp'; valid: aspp, conv, skip"),
    ],
)
def test_bad_input_is_one_line_error(override: str, message: str, tmp_path: Path) -> None:
    proc = run_cli(override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra writes .hydra/ and the log (RunGuard)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(CONFIG_DIR) / "sparsity").glob("*.yaml")))
def test_every_sparsity_preset_builds_a_module(preset: str, train_cfg) -> None:
    module = SparseMTLModule(train_cfg(f"sparsity={preset}", "lambda=1e-4"))
    expected = {"none": "none", "prox": "plain", "adam_prox": "adam", "paper": "adam"}[preset]
    assert module.sparsity.prox == expected
    assert (
        len(module.sparsity.groups) == 19
    )  # resnet18 has 20 convs (incl. 3 downsample); the 7x7 image conv is not grouped
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert optimizer.param_groups[0]["lr"] == (1e-4 if preset == "paper" else 2e-3)
