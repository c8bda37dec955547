"""Sweeps at scale: λ multirun + report, W&B offline runs (one per job), prediction images, SLURM/Optuna presets,
and 2-process DDP on CPU (gloo) against a single process."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger

from lightning_sparse_mtl.reporting import aggregate as report
from lightning_sparse_mtl.reporting import wandb_log as wandb_utils
from lightning_sparse_mtl.reporting.media import (
    PredictionImages,
    depth_to_rgb,
    normals_to_rgb,
    render_grid,
    sample_panels,
    seg_to_rgb,
)
from lightning_sparse_mtl.runs.configs import CONFIG_DIR
from lightning_sparse_mtl.sparsity.groups import group_norms
from lightning_sparse_mtl.training.module import SparseMTLModule

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny() -> list[str]:
    from conftest import TINY  # tests/ is on sys.path under pytest; not when a subprocess imports this module

    return list(TINY)


def tiny_multirun(tmp_path: Path) -> list[str]:
    """Multirun CLI args ``--config-dir <extra> -m experiment=tiny_test`` (further overrides follow): the experiment,
    written to an extra config dir, holds the TINY + SHORT settings, so job dirs are short and named by the swept
    keys (``<num>_experiment=tiny_test,lambda=0``)."""
    from omegaconf import OmegaConf

    conf = tmp_path / "extra_conf"
    (conf / "experiment").mkdir(parents=True, exist_ok=True)
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist([*tiny(), *SHORT]))
    (conf / "experiment" / "tiny_test.yaml").write_text("# @package _global_\n" + body)
    return ["--config-dir", str(conf), "-m", "experiment=tiny_test"]


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repo root; fails the test with the output tail on a non-zero exit."""
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]  # tests/: for test_sweeps.RankDigest
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert min(im.size) >= 100, im.size


def job_results(sweep: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))}


# ---------------------------------------------------------------- multirun + report (end to end)


def test_lambda_multirun_then_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    args = [*tiny_multirun(tmp_path), "lambda=0,1e-3", f"hydra.sweep.dir={sweep}"]
    check_ok(run_module("lightning_sparse_mtl.train", *args))
    jobs = job_results(sweep)
    assert len(jobs) == 2 and len(set(jobs)) == 2
    assert sorted(r["lambda"] for r in jobs.values()) == [0.0, 1e-3]
    for job_dir, res in jobs.items():
        assert job_dir.parent == sweep and (job_dir / ".hydra").is_dir()
        assert Path(res["run_dir"]) == job_dir.resolve()
        assert res["config"]["lambda"] == res["lambda"]
        assert Path(res["ckpt_path"]).is_relative_to(job_dir.resolve())

    proc = check_ok(run_module("lightning_sparse_mtl.report", str(sweep)))
    assert "2 finished run(s), 0 failed" in proc.stdout
    with open(sweep / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert [float(r["lambda"]) for r in rows] == [0.0, 1e-3]
    for row, res in zip(rows, sorted(jobs.values(), key=lambda r: r["lambda"])):
        assert float(row["test/seg/miou"]) == pytest.approx(res["test/seg/miou"])
        assert float(row["group_sparsity_%"]) == pytest.approx(res["sparsity/group_sparsity"])
        assert int(row["params"]) == res["params"]
    md = (sweep / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + 2 and table[1].startswith("| 0 |") and table[2].startswith("| 0.001 |")
    assert "seg/miou" in table[0] and "## Failed runs" in md
    assert_png(sweep / "tradeoff.png")
    assert_png(sweep / "layer_sparsity.png")
    has_latency = any("dense/latency_b1_ms" in r for r in jobs.values())
    if has_latency:
        assert_png(sweep / "latency.png")
    else:
        assert not (sweep / "latency.png").exists() and "`latency.png` skipped" in md

    # a crashed job (Hydra leaves .hydra/ and its log, no results.json) is reported, not dropped
    crashed = sweep / "2_lambda=1e-2"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "train.log").write_text("[INFO] start\n[ERROR] RuntimeError: out of memory\n")
    out = tmp_path / "report"
    report.main([str(sweep), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert "2 finished run(s), 1 failed" in stdout and "FAILED 2_lambda=1e-2" in stdout
    md = (out / "report.md").read_text()
    failed_section = md.split("## Failed runs", 1)[1]
    assert "2_lambda=1e-2" in failed_section and "out of memory" in failed_section
    with open(out / "report.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_default_sweep_subdirs_fit_the_file_name_limit() -> None:
    """Job dirs are ``hydra.sweep.subdir``; with many overrides (the TINY ones) the name must stay < 256 bytes."""
    from omegaconf import open_dict

    cfg = compose_with("lambda=1e-3", *tiny(), *SHORT)
    with open_dict(cfg):
        cfg.hydra.job.num = 11
    assert len(str(cfg.hydra.sweep.subdir).encode()) <= 255


# ---------------------------------------------------------------- report (pure functions, fast)


def fake_results(lam: float, seed: int, miou: float, gs: float, **extra) -> dict:
    return {
        "test/seg/miou": miou,
        "test/depth/abs_err": 1.0 - miou,
        "sparsity/group_sparsity": gs,
        "sparsity/weight_sparsity": gs,
        "params": 1000,
        "lambda": lam,
        "seed": seed,
        "sparsity": {"group_sparsity": gs, "layers": {"a": {"group_sparsity": gs}, "b": {"group_sparsity": gs / 2}}},
        "config": {"lambda": lam, "seed": seed},
        **extra,
    }


def write_job(root: Path, name: str, results: dict | str | None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    if results is not None:
        (job / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return job


def test_report_collects_sorts_and_lists_failures(tmp_path: Path) -> None:
    latency = {"dense/latency_b1_ms": 4.0, "pruned/latency_b1_ms": 2.0, "pruned/macs": 5e6, "dense/macs": 1e7}
    write_job(tmp_path, "0_lambda=1e-3,seed=1", fake_results(1e-3, 1, 0.5, 40.0, **latency))
    write_job(tmp_path, "1_lambda=0,seed=0", fake_results(0.0, 0, 0.7, 0.0, **{"test/delta_m": 1.5}))
    write_job(tmp_path, "2_lambda=1e-3,seed=0", fake_results(1e-3, 0, 0.6, 30.0))
    write_job(tmp_path, "3_lambda=1e-2", None)
    write_job(tmp_path, "4_lambda=1e-1", "{not json")
    (tmp_path / "5_lambda=1/wandb/.hydra").mkdir(parents=True)  # inside a skipped folder: not a job
    rows, failed = report.collect(tmp_path)
    assert [(r["lambda"], r["seed"]) for r in rows] == [(0.0, 0), (1e-3, 0), (1e-3, 1)]
    assert {f.job for f in failed} == {"3_lambda=1e-2", "4_lambda=1e-1"}
    assert "unreadable" in next(f.reason for f in failed if f.job == "4_lambda=1e-1")
    assert rows[2]["macs"] == 5e6 and rows[2]["dense_latency_b1_ms"] == 4.0 and rows[0]["macs"] is None
    assert report.metric_columns(rows) == ["test/depth/abs_err", "test/seg/miou", "test/delta_m"]
    table = report.markdown_table(rows)
    assert len(table.splitlines()) == 2 + 3 and "Δm" in table

    out = report.write_report(tmp_path, tmp_path / "out")
    assert {p.name for p in out["files"]} == {"report.csv", "report.md", "tradeoff.png", "layer_sparsity.png",
                                             "latency.png"}  # fmt: skip
    for name in ("tradeoff.png", "layer_sparsity.png", "latency.png"):
        assert_png(tmp_path / "out" / name)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "3_lambda=1e-2" in md.split("## Failed runs")[1]


def test_report_skips_latency_plot_without_measurements(tmp_path: Path) -> None:
    write_job(tmp_path, "0_lambda=0", fake_results(0.0, 0, 0.7, 0.0))
    (tmp_path / "latency.png").write_bytes(PNG_MAGIC)  # stale plot from an earlier report
    out = report.write_report(tmp_path)
    assert "latency.png" in out["skipped"] and not (tmp_path / "latency.png").exists()
    assert "`latency.png` skipped" in (tmp_path / "report.md").read_text()
    assert_png(tmp_path / "tradeoff.png")


def test_report_single_run_dir_and_missing_keys(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "results.json").write_text(json.dumps({"test/seg/miou": 0.4, "config": {"lambda": 0.01, "seed": 3}}))
    rows, failed = report.collect(tmp_path)
    assert not failed and rows[0]["job"] == "." and (rows[0]["lambda"], rows[0]["seed"]) == (0.01, 3)
    assert rows[0]["group_sparsity_%"] is None
    out = report.write_report(tmp_path)
    assert "layer_sparsity.png" in out["skipped"]


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_report_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    target = tmp_path / "nope" if kind == "missing" else tmp_path
    with pytest.raises(SystemExit) as exc:
        report.main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


# ---------------------------------------------------------------- prediction images


def test_render_functions() -> None:
    seg = np.array([[0, 1], [-1, 2]])
    rgb, valid = seg_to_rgb(seg, 3)
    assert rgb.shape == (2, 2, 3) and not valid[1, 0] and (rgb[1, 0] == 0).all()
    assert not np.allclose(rgb[0, 0], rgb[0, 1])
    n = np.zeros((3, 2, 2), np.float32)
    n[2] = -1.0
    assert np.allclose(normals_to_rgb(n)[..., 2], 0.0) and np.allclose(normals_to_rgb(n)[..., 0], 0.5)
    d = depth_to_rgb(np.array([[1.0, 5.0]]), 1.0, 5.0, valid=np.array([[True, False]]))
    assert d.shape == (1, 2, 3) and (d[0, 1] == 0).all() and d[0, 0].sum() > 0
    grid = render_grid([[np.zeros((8, 8, 3)), np.ones((8, 8, 3))]], pad=2, min_side=32)
    assert grid.dtype == np.uint8 and grid.shape == (32 + 4, 2 * 32 + 6, 3)


def test_prediction_images_panels_and_png_fallback(train_cfg, tmp_path: Path) -> None:
    module = SparseMTLModule(train_cfg()).eval()
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(3, 3, 16, 16, generator=g),
        "seg": torch.randint(-1, 11, (3, 16, 16), generator=g),
        "depth": torch.rand(3, 1, 16, 16, generator=g) + 1,
        "normal": torch.nn.functional.normalize(torch.randn(3, 3, 16, 16, generator=g), dim=1),
    }
    panels = sample_panels(
        batch["image"][0].numpy(), {k: v[0].numpy() for k, v in batch.items()},
        {k: v[0].detach().numpy() for k, v in module(batch["image"]).items()},
        {"seg": "seg", "depth": "depth", "normal": "normal"}, {"seg": 11},
    )  # fmt: skip
    assert [t for t, _ in panels] == ["input", "seg target", "seg pred", "depth target", "depth pred",
                                     "normal target", "normal pred"]  # fmt: skip
    cb = PredictionImages(every_n_epochs=2, num_images=2)
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), current_epoch=0, global_step=4, sanity_checking=False,
        is_global_zero=True,
    )  # fmt: skip
    cb.on_validation_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    assert not (tmp_path / "predictions").exists()  # epoch 1 of every 2: not due
    trainer.current_epoch = 1
    cb.on_validation_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    path = tmp_path / "predictions" / "epoch001.png"
    assert_png(path)
    from PIL import Image

    with Image.open(path) as im:  # 2 samples stacked, 7 square panels side by side
        assert 3.2 < im.size[0] / im.size[1] < 3.8


# ---------------------------------------------------------------- W&B


def wandb_records(path: Path) -> list:
    """Records of an offline ``run-*.wandb`` file (LevelDB-log framing: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def wandb_summary(run_dir: Path, wait_s: float = 0.0) -> dict:
    """What an offline W&B run recorded: run metadata, config keys/values, history keys, exit code. ``wait_s``:
    how long to wait for the exit record (wandb-core writes the file asynchronously after ``finish``)."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not any(r.HasField("exit") for r in wandb_records(wandb_file)):
        time.sleep(0.2)
    info = {"config": {}, "history_keys": set(), "exit_code": None}
    for rec in wandb_records(wandb_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(group=rec.run.run_group, name=rec.run.display_name, job_type=rec.run.job_type)
        elif kind == "config":
            info["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update if i.key})
        elif kind == "history":
            info["history_keys"] |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "exit":
            info["exit_code"] = rec.exit.exit_code
    return info


def wandb_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B with its cache/data/config folders inside ``tmp_path`` (nothing written to $HOME)."""
    return {"WANDB_MODE": "offline", **{f"WANDB_{k}_DIR": str(tmp_path / f"wandb_{k.lower()}") for k in
                                        ("CACHE", "DATA", "CONFIG", "ARTIFACT")}}  # fmt: skip


def test_wandb_offline_one_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*tiny_multirun(tmp_path), "lambda=0,1e-3", "logger=csv_wandb", "callbacks=with_images"]
    check_ok(run_module("lightning_sparse_mtl.train", *args, f"hydra.sweep.dir={sweep}", env=wandb_env(tmp_path)))
    jobs = job_results(sweep)
    assert len(jobs) == 2
    runs = {}
    for job_dir, res in jobs.items():
        offline = sorted((job_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, offline  # one W&B run per job, inside the job's run dir
        runs[job_dir] = (offline[0], wandb_summary(offline[0]), res)
    assert len({r[0].name for r in runs.values()}) == 2
    for job_dir, (run_dir, info, res) in runs.items():
        assert info["group"] == str(sweep) and info["job_type"] == "train"
        assert info["name"].startswith(("0_", "1_")) and f"lambda={res['config']['lambda']:g}" in info["name"]
        assert info["exit_code"] == 0  # closed by finish_loggers at the end of its job
        assert info["config"]["lambda"] == res["lambda"]  # full resolved config (log_run_config)
        assert info["config"]["trainer"]["max_epochs"] == 1 and info["config"]["cfg"]["lambda"] == res["lambda"]
        assert any(k.startswith("sparsity/layer/") and k.endswith("/group_sparsity") for k in info["history_keys"])
        assert any(k.startswith("val/predictions") for k in info["history_keys"])
        assert any(k.startswith("final/results") for k in info["history_keys"])  # log_final_tables
        assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
        tables = list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
        assert {t.name.split("_")[0] for t in tables} >= {"results", "layer"}
        assert not (job_dir / "predictions").exists()  # images went to W&B, not to PNG files


def test_wandb_helpers_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    logger = wandb_utils.HydraWandbLogger(save_dir=str(tmp_path), project="p", mode="offline", group="g", name="n")
    trainer = L.Trainer(logger=[CSVLogger(tmp_path), logger], enable_checkpointing=False, enable_progress_bar=False)
    wandb_utils.log_run_config(trainer, {"lambda": 1e-3, "trainer": {"max_epochs": 2}})
    results = {
        "test/seg/miou": 0.5, "lambda": 1e-3, "params": 100, "pruned/params": 60, "dense/macs": 10.0,
        "pruned/macs": 5.0, "pruned/path": "x.pt", "run_dir": "r",
        "sparsity": {"layers": {"l1": {"groups": 4, "zero_groups": 1, "group_sparsity": 25.0,
                                       "weight_sparsity": 25.0}}},
    }  # fmt: skip
    assert wandb_utils.pruning_rows(results) == [["params", 100, 60, 0.6], ["MACs", 10.0, 5.0, 0.5]]
    assert ["test/seg/miou", 0.5] in wandb_utils.results_rows(results)
    assert all(k != "pruned/path" for k, _ in wandb_utils.results_rows(results))
    wandb_utils.log_final_tables(trainer, results)
    run_dir = Path(logger.experiment.dir).parent
    wandb_utils.finish_loggers(trainer)
    info = wandb_summary(run_dir, wait_s=30)
    assert info["exit_code"] == 0 and (info["group"], info["name"]) == ("g", "n")
    assert info["config"]["lambda"] == 1e-3 and info["config"]["trainer"] == {"max_epochs": 2}
    assert {"final/results", "final/layer_sparsity", "final/pruning"} <= {k.rsplit("/", 1)[0]
                                                                          for k in info["history_keys"]}  # fmt: skip
    wandb_utils.finish_loggers(trainer)  # idempotent
    csv_only = L.Trainer(logger=CSVLogger(tmp_path), enable_checkpointing=False)
    wandb_utils.finish_loggers(csv_only)  # no-op without W&B
    wandb_utils.log_final_tables(csv_only, results)
    wandb_utils.finish_loggers(None)


# ---------------------------------------------------------------- presets: SLURM, Optuna, λ grid, DDP


def compose_with(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


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


class RankDigest(L.Callback):
    """(Used by the DDP test through ``+callbacks.digest._target_=test_sweeps.RankDigest``.) After fit, each
    rank writes sha256 digests of its zero-group masks and of all its parameters to ``digest_rank<r>.json``."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = state_digest({f"{g.name}.weight": g.weight for g in pl_module.sparsity.groups},
                              dict(pl_module.named_parameters()))  # fmt: skip
        out = Path(trainer.default_root_dir) / f"digest_rank{trainer.global_rank}.json"
        out.write_text(json.dumps(digest))


def state_digest(grouped: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict:
    masks = torch.cat([(group_norms(w.detach()) == 0).flatten() for _, w in sorted(grouped.items())])
    h = hashlib.sha256()
    for name, p in sorted(params.items()):
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return {
        "mask": hashlib.sha256(masks.numpy().tobytes()).hexdigest(),
        "params": h.hexdigest(),
        "zero_groups": int(masks.sum()),
        "groups": masks.numel(),
    }


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    """2-process DDP on CPU (gloo): train with a strong λ, then
    (1) every rank ends with bit-identical parameters, hence the same zero pattern: DDP all-reduces (averages)
        the gradients before ``optimizer.step``, so each rank applies the same update, and the prox (a step
        post-hook of the optimizer) is a deterministic function of identical weights and optimizer state;
    (2) the checkpoint (written by rank 0) has that pattern;
    (3) the DDP test metrics in results.json (sum-based states, reduced across the 2 ranks, each holding half of
        the 32 test scenes) equal a single-process evaluation of the same checkpoint on the same data."""
    from lightning_sparse_mtl.evaluate import evaluate

    run_dir = tmp_path / "ddp"
    # λ=8 with the plain prox zeroes the inputs of the layer3/4 conv1s in 2 steps (a pattern to compare) and leaves
    # layer1/2 dense. conv2s are not grouped: a whole zeroed conv2 makes the pruning probe build a 0-channel conv1.
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "sparsity=prox", "lambda=8",
            "sparsity.exclude=[conv2]", "+callbacks.digest._target_=test_sweeps.RankDigest", *tiny(), *SHORT,
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    check_ok(run_module("lightning_sparse_mtl.train", *args, env={"OMP_NUM_THREADS": "1"}, timeout=300))
    rank0, rank1 = (json.loads((run_dir / f"digest_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert 0 < rank0["zero_groups"] < rank0["groups"], rank0  # a non-trivial pattern

    res = json.loads((run_dir / "results.json").read_text())
    ckpt = torch.load(res["ckpt_path"], map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    module = SparseMTLModule(ckpt["hyper_parameters"]["cfg"])
    grouped = {f"{g.name}.weight": state[f"{g.name}.weight"] for g in module.sparsity.groups}
    params = {n: state[n] for n, _ in module.named_parameters()}
    assert state_digest(grouped, params) == rank0
    assert res["sparsity/group_sparsity"] == pytest.approx(100 * rank0["zero_groups"] / rank0["groups"])
    assert any(k.startswith("pruned/") for k in res)  # rank 0 ran the pruning step after the DDP test

    kwargs = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    single = evaluate(res["ckpt_path"], trainer_kwargs=kwargs)
    ddp = {k: v for k, v in res.items() if k.startswith("test/") and k.count("/") == 2}
    assert ddp.keys() == single.keys() and len(ddp) >= 9
    for key, value in ddp.items():
        assert single[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
