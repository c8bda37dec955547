"""Run the entry points as users do (subprocesses, Hydra multiruns) and check what they leave on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from lightning_sparse_mtl.core.configs import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
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
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_multirun(tmp_path: Path, extra: list[str] | None = None) -> list[str]:
    """Multirun CLI args ``--config-dir <extra> -m experiment=tiny_test`` (further overrides follow): the experiment,
    written to an extra config dir, holds the TINY + SHORT (+ ``extra``) settings, so job dirs are short and the
    configuration is named by the swept keys."""
    conf = tmp_path / "extra_conf"
    (conf / "experiment").mkdir(parents=True, exist_ok=True)
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist([*TINY, *SHORT, *(extra or [])]))
    (conf / "experiment" / "tiny_test.yaml").write_text("# @package _global_\n" + body)
    return ["--config-dir", str(conf), "-m", "experiment=tiny_test"]


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repo root, with tests/ on the path (for ``helpers.*`` callbacks)."""
    paths = [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    """A real PNG (magic, decodable, at least 100 px on its short side)."""
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert min(im.size) >= 100, im.size


def assert_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data[:5] == b"%PDF-" and b"%%EOF" in data[-64:] and len(data) > 1000, path


def job_results(sweep: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))}


def compose_with(*overrides: str) -> DictConfig:
    """The train config with its hydra node, as a launch composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def wandb_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B with its cache/data/config folders inside ``tmp_path`` (nothing written to $HOME)."""
    dirs = {f"WANDB_{k}_DIR": str(tmp_path / f"wandb_{k.lower()}") for k in ("CACHE", "DATA", "CONFIG", "ARTIFACT")}
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **dirs}
