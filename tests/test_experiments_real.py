"""The real-dataset experiments end to end on tiny fixtures: fast_dev_run writes results.json; CLI data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.datasets import make_celeba, make_cityscapes, make_nyuv2
from hydra.utils import instantiate

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = [
    "model=resnet18",
    "model.head=conv",
    "model.head_channels=8",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.fast_dev_run=true",
    "trainer.enable_progress_bar=false",
    "prune.latency_repeats=2",
]
SEG = ("miou", "pix_acc")
DEPTH = ("abs_err", "rel_err")
NORMAL = ("mean", "median", "within_11.25", "within_22.5", "within_30")
ATTR = ("acc", "f1")
CROP = "data.splits.train.transform.crop_size"
SMALL_FACES = ["data.dataset.image_size=32"]  # the train crop follows image_size
CASES = {  # experiment: (fixture writer, overrides, expected {task: metrics})
    "nyuv2": (make_nyuv2, [f"{CROP}=[32,40]"], {"seg": SEG, "depth": DEPTH, "normal": NORMAL}),
    "cityscapes": (make_cityscapes, [f"{CROP}=[32,64]"], {"seg": SEG, "disparity": DEPTH}),
    "celeba": (make_celeba, SMALL_FACES, {"seg": SEG, "Male": ATTR, "Smiling": ATTR}),
}


@pytest.mark.parametrize("experiment", sorted(CASES))
def test_experiment_fast_dev_run_writes_results(train_cfg, tmp_path: Path, experiment: str) -> None:
    make, overrides, expected = CASES[experiment]
    make(tmp_path / "data")
    cfg = train_cfg(f"experiment={experiment}", f"data.root={tmp_path / 'data'}", *TINY_MODEL, *overrides, tiny=False)
    assert cfg.optimizer.lr == pytest.approx(1e-4) and cfg["lambda"] == pytest.approx(1e-5)
    assert list(cfg.tasks) == list(expected)
    results = train(cfg)
    on_disk = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    for task, metrics in expected.items():
        for metric in metrics:
            key = f"test/{task}/{metric}"
            assert key in on_disk and on_disk[key] == pytest.approx(results[key]), key
    assert 0 <= on_disk["test/seg/miou"] <= 1 and on_disk["config"]["data"]["root"] == str(tmp_path / "data")


@pytest.mark.parametrize("key", ["data.root", "data.dataset.root"])
def test_root_from_either_key(train_cfg, tmp_path: Path, key: str) -> None:
    root = make_cityscapes(tmp_path / "data", n_train=4, n_val=2)
    dm = instantiate(train_cfg("experiment=cityscapes", f"{key}={root}", tiny=False).data)
    assert len(dm.build("test")) == 2 and dm.build("train").root == root
    with pytest.raises(UserError, match="data.root is not set"):
        instantiate(train_cfg("experiment=cityscapes", tiny=False).data).build("train")


def test_missing_data_root_is_a_one_line_cli_error(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_sparse_mtl.train",
            "experiment=nyuv2",
            f"data.root={missing}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.enable_progress_bar=false",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "data.root=" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
