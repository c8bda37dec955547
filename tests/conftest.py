"""Shared fixtures: compose the real Hydra config with tiny overrides and run the train entry point in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightning_sparse_mtl.runs.configs import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent

# Small but real: 32 px scenes, few batches, resnet18 at output stride 8.
TINY = [
    "data.dataset.image_size=32",
    "data.splits.train.num_scenes=64",
    "data.splits.val.num_scenes=32",
    "data.splits.test.num_scenes=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "model.head_channels=16",
    "prune.latency_repeats=2",
    "prune.min_run_time=0.01",
    "prune.batch_sizes=[1,8]",
    "prune.export=false",  # exports are covered once in test_deploy.py / test_prune_cli.py
]


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Share one dataset cache per session; two torch threads (the CI machine has 2 cores)."""
    cache = os.environ.get("LSMTL_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("LSMTL_CACHE_DIR", cache)
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    torch.set_num_threads(2)


def compose_train_cfg(run_dir: Path, overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
    """The train config as Hydra composes it for a run in ``run_dir`` (HydraConfig is set, so ${hydra:...} works)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*(TINY if tiny else []), *(overrides or [])], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path):
    """Factory: ``train_cfg(*overrides)`` -> composed config whose run dir is a fresh tmp folder."""
    counter = iter(range(1000))

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        return compose_train_cfg(run_dir, list(overrides), tiny)

    return make
