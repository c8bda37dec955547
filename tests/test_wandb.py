"""W&B offline: one run per job, config once, λ exact, best validation values in the summary, tables, artifacts.

Runs are read through wandb's public ``Run`` API while they are live (tests/helpers/wandb_probe.py), and the
plain files W&B writes (media images, table JSON) — never its private ``.wandb`` log format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.runs import check_ok, job_results, run_module, tiny_multirun, wandb_env
from lightning.pytorch.loggers import CSVLogger

from lightning_sparse_mtl.reporting import wandb_log


def val_history(metrics_csv: Path) -> dict[str, list[float]]:
    """Every ``val/...`` value the CSVLogger wrote (an independent record of the same metrics)."""
    out: dict[str, list[float]] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key.startswith("val/") and value:
                    out.setdefault(key, []).append(float(value))
    return out


@pytest.mark.slow  # a 2-job multirun in a subprocess (~30 s); the helpers are tested in-process below
def test_wandb_offline_one_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*tiny_multirun(tmp_path, ["trainer.max_epochs=2"]), "lambda=0,1e-5", "logger=csv_wandb",
            "callbacks=with_images", "+callbacks.probe._target_=helpers.wandb_probe.SummaryProbe",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    check_ok(run_module("lightning_sparse_mtl.train", *args, env=wandb_env(tmp_path)))
    jobs = job_results(sweep)
    assert len(jobs) == 2
    names = set()
    for job_dir, res in jobs.items():
        offline = sorted((job_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, offline  # one W&B run per job, inside the job's run dir
        info = json.loads((job_dir / "wandb_probe.json").read_text())
        names.add(info["name"])
        assert info["group"] == f"{sweep.parent.name}/sweep" and info["job_type"] == "train"  # not an abs path
        typed = {0.0: "0", 1e-5: "1e-05"}[res["lambda"]]  # as Hydra records the swept value
        assert info["name"] == f"{job_dir.name}_experiment=tiny_test,lambda={typed}"
        config = info["config"]
        assert "cfg" not in config  # the module's hparams are the config itself, logged once
        assert config["lambda"] == res["lambda"] and config["trainer"]["max_epochs"] == 2
        assert str(config["lambda"]) in ("0", "0.0", "1e-05")  # exact, as given
        summary, history = info["summary"], val_history(job_dir / "csv" / "metrics.csv")
        assert len(history["val/seg/miou"]) == 2  # two validation epochs
        assert summary["val/seg/miou"]["max"] == pytest.approx(max(history["val/seg/miou"]))
        assert summary["val/depth/abs_err"]["min"] == pytest.approx(min(history["val/depth/abs_err"]))
        assert summary["val/normal/within_11.25"]["max"] == pytest.approx(max(history["val/normal/within_11.25"]))
        assert summary["sparsity/lambda"] == res["lambda"]  # exact, not a float32 artefact
        run_dir = offline[0]
        assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
        tables = list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
        assert {t.name.split("_")[0] for t in tables} >= {"results", "layer"}
        assert not (job_dir / "predictions").exists()  # images went to W&B, not to PNG files
    assert len(names) == 2


def test_wandb_helpers_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    logger = wandb_log.HydraWandbLogger(save_dir=str(tmp_path), project="p", mode="offline", group="g", name="n",
                                        log_model=True)  # fmt: skip
    trainer = L.Trainer(logger=[CSVLogger(tmp_path), logger], enable_checkpointing=False, enable_progress_bar=False)
    config = {"lambda": 1e-3, "trainer": {"max_epochs": 2}, "tasks": ["seg", "normal"], "data": {"num_classes": 11}}
    wandb_log.log_run_config(trainer, config)
    logger.log_hyperparams({"cfg": config})  # what Lightning does with the module's hparams
    for step, (miou, err) in enumerate([(0.2, 20.0), (0.5, 15.0), (0.4, 17.0)]):
        as_f32 = {"val/seg/miou": float(torch.tensor(miou)), "val/normal/mean": float(torch.tensor(err)),
                  "val/normal/within_11.25": miou, "sparsity/lambda": float(torch.tensor(1e-3))}  # fmt: skip
        logger.log_metrics(as_f32, step=step)
    run = logger.experiment
    assert "cfg" not in dict(run.config) and run.config["lambda"] == 1e-3
    assert run.summary["val/seg/miou"]["max"] == 0.5 and run.summary["val/normal/mean"]["min"] == 15.0
    assert run.summary["val/normal/within_11.25"]["max"] == 0.5  # a "." in the key
    assert run.summary["sparsity/lambda"] == 1e-3  # float32(1e-3) is 0.0010000000474974513

    compact = tmp_path / "pruned.pt"
    torch.save({"w": torch.zeros(2)}, compact)
    results = {
        "test/seg/miou": 0.5, "lambda": 1e-3, "params": 100, "pruned/params": 60, "dense/macs": 10.0,
        "pruned/macs": 5.0, "pruned/path": str(compact), "run_dir": "r",
        "sparsity": {"layers": {"l1": {"groups": 4, "zero_groups": 1, "group_sparsity": 25.0,
                                       "weight_sparsity": 25.0}}},
    }  # fmt: skip
    assert wandb_log.pruning_rows(results) == [["params", 100, 60, 0.6], ["MACs", 10.0, 5.0, 0.5]]
    assert ["test/seg/miou", 0.5] in wandb_log.results_rows(results)
    assert all(k != "pruned/path" for k, _ in wandb_log.results_rows(results))
    (artifact,) = wandb_log.log_final_tables(trainer, results)
    assert artifact.type == "model" and set(artifact.manifest.entries) == {"pruned.pt"}
    assert artifact.metadata["pruned/params"] == 60
    assert run.summary["test/seg/miou"] == 0.5
    wandb_log.finish_loggers(trainer)
    wandb_log.finish_loggers(trainer)  # idempotent
    csv_only = L.Trainer(logger=CSVLogger(tmp_path), enable_checkpointing=False)
    wandb_log.finish_loggers(csv_only)  # no-op without W&B
    assert wandb_log.log_final_tables(csv_only, results) == []
    wandb_log.finish_loggers(None)


def test_readable_group_names() -> None:
    assert wandb_log.readable_dir("/work/x/multirun/2026-12-01/21-00-00", "/work/x") == "multirun/2026-12-01/21-00-00"
    assert wandb_log.readable_dir("/elsewhere/studies/digits", "/work/x") == "studies/digits"
    assert wandb_log.shortest_float(float(torch.tensor(1e-5))) == 1e-5 and wandb_log.shortest_float(0.1) == 0.1
    overrides = ["experiment=x", "lambda=1e-3", "logger=csv_wandb", "+callbacks.p._target_=a.B", "seed=1"]
    assert wandb_log.run_name_overrides(overrides) == "experiment=x,lambda=1e-3,seed=1"
