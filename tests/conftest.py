"""Shared fixtures: compose the real Hydra config with tiny overrides and run the train entry point in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.runs import TINY
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightning_sparse_mtl.core.configs import CONFIG_DIR

__all__ = ["ROOT", "TINY", "compose_train_cfg"]

ROOT = Path(__file__).resolve().parent.parent


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


def short_dense_run(tmp_path_factory: pytest.TempPathFactory, overrides: list[str]) -> Path:
    """One short dense training run in a fresh tmp folder (module-scoped fixtures of several files use it)."""

    from lightning_sparse_mtl.train import train

    os.environ.setdefault("LSMTL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    run_dir = tmp_path_factory.mktemp("dense")
    train(compose_train_cfg(run_dir, overrides))
    return run_dir
