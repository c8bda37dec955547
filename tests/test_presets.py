"""Launch presets compose: SLURM launcher, λ grid, Optuna, DDP trainer; sweep job dir names stay short."""

from __future__ import annotations

import importlib.util

import pytest
from helpers.runs import SHORT, TINY, check_ok, compose_with, run_module
from hydra.utils import instantiate


def test_slurm_launcher_composes() -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher not installed (pip install -e '.[slurm]')")
    proc = check_ok(run_module("lightning_sparse_mtl.train", "launcher=slurm", "--cfg", "all"))  # job + hydra
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "lambda: 0.0" in proc.stdout
    cfg = compose_with("launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    launcher = instantiate(cfg.hydra.launcher)  # what Hydra builds at launch time (resolved against the job config)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert (launcher.params["tasks_per_node"], launcher.params["gpus_per_node"], launcher.params["nodes"]) == (4, 4, 2)


def test_lambda_grid_and_optuna_presets_compose() -> None:
    cfg = compose_with("hparams_search=lambda_grid")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["lambda"] == "0,1e-5,1e-4,1e-3"
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper not installed (pip install -e '.[optuna]')")
    cfg = compose_with(
        "hparams_search=optuna", "optimized_metric=test/depth/abs_err", "hydra.sweeper.direction=minimize"
    )
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.hydra.sweeper.params["lambda"] == "tag(log, interval(1e-6, 1e-2))"
    assert cfg.optimized_metric == "test/depth/abs_err"


def test_ddp_preset_composes() -> None:
    cfg = compose_with("trainer=ddp", "trainer.accelerator=cpu")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", 2, "cpu")
    assert cfg.trainer.max_epochs == compose_with().trainer.max_epochs  # everything else from trainer/default


def test_default_sweep_subdirs_fit_the_file_name_limit() -> None:
    """Job dirs are ``hydra.sweep.subdir``; with many overrides (the TINY ones) the name must stay < 256 bytes."""
    from omegaconf import open_dict

    cfg = compose_with("lambda=1e-3", *TINY, *SHORT)
    with open_dict(cfg):
        cfg.hydra.job.num = 11
    assert len(str(cfg.hydra.sweep.subdir).encode()) <= 255
