"""The digits study: job list, resume (finished jobs skipped), channel-usage overlaps (closed-form Jaccard)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import ROOT, assert_pdf, assert_png
from hydra import compose, initialize_config_dir

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.reporting.channel_usage import jaccard, kept_channels, overlap_table, plot_overlap


def load_study():
    spec = importlib.util.spec_from_file_location("digits_study", ROOT / "experiments" / "digits_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_jobs_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study()
    todo = study.jobs(list(study.TASKS), [0, 1, 2], "1e-05")
    assert len(todo) == 4 * 2 * 3 and len({name for name, _ in todo}) == 24
    assert ("mtl_sparse_s2", ["tasks=[seg,depth,normal]", "lambda=1e-05", "seed=2"]) in todo
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        recipe = compose("train", overrides=["experiment=digits_sparse"])["lambda"]
    # the digits_sparse recipe's λ, doubled for half the steps (the same cumulative shrink lr·λ summed over steps)
    assert float(study.preset_lambda()) == pytest.approx(2 * recipe)
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text("{}")
    calls = []
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("ran a finished job"))
    assert study.run_job(done, ["seed=0"], [], None) is None and not calls
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)

    class Done:
        returncode, stderr = 0, ""

    monkeypatch.setattr(study.subprocess, "run", lambda cmd, **k: calls.append(cmd) or Done())
    assert study.run_job(partial, ["seed=0"], ["x=1"], None) is not None
    assert not partial.exists()  # a killed job's leftovers are cleared before it is rerun
    assert calls[0][-3:] == ["x=1", "seed=0", f"hydra.run.dir={partial}"]


def test_a_finished_job_with_other_overrides_is_an_error_not_reused(tmp_path: Path, monkeypatch) -> None:
    """A run dir finished under other overrides (another coupled budget, a changed queue) is never taken as this
    job's result; the same overrides in another order, or a resume's ckpt_path, are the same job."""
    study = load_study()
    job = tmp_path / "seg_coupled_s0"
    (job / ".hydra").mkdir(parents=True)
    (job / "results.json").write_text("{}")
    (job / ".hydra" / "overrides.yaml").write_text(
        "- experiment=digits_study_48\n- sparsity.target_macs=0.3\n- seed=0\n- ckpt_path=/x/last.ckpt\n"
    )
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: pytest.fail("ran a finished job"))
    assert study.run_job(job, ["seed=0", "sparsity.target_macs=0.3"], [], None, "digits_study_48") is None
    with pytest.raises(RuntimeError, match=r"seg_coupled_s0 finished with other overrides .*target_macs=0.3.*move"):
        study.run_job(job, ["sparsity.target_macs=0.35", "seed=0"], [], None, "digits_study_48")


def test_study_leaves_a_job_locked_by_a_live_training_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from lightning_sparse_mtl.runs.run_dir import LOCK_NAME

    study = load_study()
    running = tmp_path / "running"
    (running / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: pytest.fail("ran a job another process runs"))
    with open(running / LOCK_NAME, "a") as held:  # what RunGuard holds for the life of a training
        fcntl.flock(held, fcntl.LOCK_EX)
        assert study.held_elsewhere(running)
        assert study.run_job(running, ["seed=0"], [], None) is None
        assert (running / "checkpoints").is_dir()  # not cleared
    assert not study.held_elsewhere(running)  # the holder is gone: a killed job, rerun from scratch


def fake_ckpt(path: Path, kept: dict[str, list[int]], channels: int = 4) -> Path:
    state = {}
    for name, keep in kept.items():
        w = torch.zeros(3, channels, 3, 3)
        w[:, keep] = 1.0
        state[f"{name}.weight"] = w
    torch.save({"state_dict": state}, path)
    return path


def test_channel_overlap_closed_form(tmp_path: Path) -> None:
    layers = ["net.encoder.l1", "net.encoder.l2"]
    a = kept_channels(fake_ckpt(tmp_path / "a.ckpt", {"net.encoder.l1": [0, 1], "net.encoder.l2": []}), layers)
    b = kept_channels(fake_ckpt(tmp_path / "b.ckpt", {"net.encoder.l1": [1, 2, 3], "net.encoder.l2": []}), layers)
    c = kept_channels(fake_ckpt(tmp_path / "c.ckpt", {"net.encoder.l1": [0, 1], "net.encoder.l2": [0]}), layers)
    assert a["net.encoder.l1"].tolist() == [True, True, False, False]
    assert jaccard(a["net.encoder.l1"], b["net.encoder.l1"]) == pytest.approx(1 / 4)
    assert math.isnan(jaccard(a["net.encoder.l2"], b["net.encoder.l2"]))  # both pruned the whole layer
    table = overlap_table({"seg": [a, c], "MTL": [b, c]}, [("seg", "MTL")])
    l1 = table[table["layer"] == "net.encoder.l1"].iloc[0]
    assert l1["jaccard_mean"] == pytest.approx((0.25 + 1.0) / 2) and l1["n"] == 2
    assert l1["jaccard_std"] == pytest.approx(np.std([0.25, 1.0], ddof=1))
    assert l1["kept_a"] == pytest.approx(0.5) and l1["kept_b"] == pytest.approx((0.75 + 0.5) / 2)
    l2 = table[table["layer"] == "net.encoder.l2"].iloc[0]
    assert l2["n"] == 1 and l2["jaccard_mean"] == 1.0  # seed 0: both empty (skipped); seed 1: the same channel
    plot_overlap(table, tmp_path / "overlap.png")
    assert_png(tmp_path / "overlap.png")
    assert_pdf(tmp_path / "overlap.pdf")
    json.dumps(table.to_dict("records"))  # plain values


def load_script(name: str):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_48_queue_sets_the_coupled_budget_from_the_input_runs(tmp_path: Path) -> None:
    """Queue, most decisive first: the weighting measurement's seed 0 (the study's weighting = its MTL dense runs),
    the multi-task arms, the single-task dense runs, the rest of the weighting measurement, the single-task sparse
    arms; per task set dense, input (target 0.7), coupled at the mean MACs fraction the input runs reached —
    waiting (None) until all are done."""
    study = load_script("digits_study_48")
    runs = tmp_path / "runs"
    todo = study.jobs(runs, [0, 1, 2], list(study.TASKS), "uncertainty")
    names = [n for n, _ in todo]
    assert len(todo) == len(set(names)) == 9 + 3 * 3 * 3 + 2 * 3  # weighting 9 (3 are MTL dense), then 4 x 3 x 3
    assert names[:3] == ["mtl_uncertainty_dense_s0", "mtl_fixed_dense_s0", "mtl_dwa_dense_s0"]
    assert all(n.startswith("mtl_uncertainty_") for n in names[3:11])  # the multi-task arms next
    assert [n.split("_")[1] for n in names[11:20]] == ["dense"] * 9  # then the single-task Δm references
    assert names[20:24] == ["mtl_fixed_dense_s1", "mtl_dwa_dense_s1", "mtl_fixed_dense_s2", "mtl_dwa_dense_s2"]
    assert names[-1] == "normal_coupled_s2"
    assert "mtl_uncertainty_coupled_s2" in names and "mtl_fixed_input_s0" not in names
    over = dict(todo)
    mtl = ["tasks=[seg,depth,normal]", "weighting=uncertainty"]
    assert over["mtl_uncertainty_dense_s1"] == [*mtl, "lambda=0", "seed=1"]
    assert over["seg_input_s2"] == ["tasks=[seg]", "weighting=fixed", "sparsity.groups=input", "sparsity.target=0.7",
                                    "seed=2"]  # fmt: skip
    assert over["seg_coupled_s0"] is None  # its budget is not known yet
    for seed, fraction in ((0, 0.30), (1, 0.40)):
        job = runs / f"seg_input_s{seed}"
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({"pruned/macs": fraction * 1000, "dense/macs": 1000}))
    assert dict(study.jobs(runs, [0, 1, 2], ["seg"], "uncertainty"))["seg_coupled_s0"] is None  # seed 2 missing
    over = dict(study.jobs(runs, [0, 1], ["seg"], "uncertainty"))
    assert over["seg_coupled_s1"] == ["tasks=[seg]", "weighting=fixed", "sparsity.groups=coupled",
                                      "sparsity.target_macs=0.35", "seed=1"]  # fmt: skip
    assert not any(n.startswith("mtl") for n in over)


def test_study_table_modes_and_welch_lines() -> None:
    import pandas as pd

    table = load_script("study_table")
    assert table.mode_of("tasks=[seg],sparsity.groups=coupled,sparsity.target_macs=0.3", 0.0) == "coupled"
    assert table.mode_of("tasks=[seg],sparsity.groups=input,sparsity.target=0.7", 0.0) == "input"
    assert table.mode_of("tasks=[seg],lambda=4e-05", 4e-5) == "sparse"
    assert table.mode_of("tasks=[seg],lambda=0", 0.0) == "dense"
    assert table.mode_of("tasks=[seg],sparsity.groups=coupled,lambda=0", 0.0) == "dense"  # no target, λ = 0
    assert table.mode_of("method=tp_magnitude,sparsity.target_macs=0.25", 0.0) == "tp_magnitude"
    assert table.mode_of("tasks=[seg],lambda=nan", float("nan")) == "dense"
    base, other = pd.Series([1.0, 1.1, 0.9]), pd.Series([2.0, 2.1, 1.9])
    line = table.welch_row("MTL", "depth abs ↓", "test/depth/abs_err", base, other, ("dense", "input"))
    assert "input vs dense" in line and "-100.00%" in line and "yes, input worse" in line  # lower is better
    assert table.welch_row("MTL", "x", "test/depth/abs_err", base[:1], other, ("a", "b")) == ""  # n < 2: no test


def _gain_rows(stl_normal: bool = True) -> list[dict]:
    """Multi-task seg mIoU 0.5 dense -> 0.55, 0.6 sparse (+10%, +20%); single-task 0.8 -> 0.8, 0.84 (0%, +5%);
    depth (lower is better) 2.0 -> 1.8, 1.9 (+10%, +5%) vs 1.0 dense -> 1.0 sparse; normals: dense 10.0 / 9.0 and
    11.0 / 10.0 (mean 10 / 10: noisy dense means), sparse 10.0 everywhere (0%)."""
    rows = []
    for seed in (0, 1):
        rows += [
            {"task": "MTL", "weighting": "u", "mode": "dense", "seed": seed, "test/seg/miou": 0.5,
             "test/depth/abs_err": 2.0, "test/normal/mean": (9.0, 11.0)[seed]},
            {"task": "MTL", "weighting": "u", "mode": "input", "seed": seed, "test/seg/miou": (0.55, 0.6)[seed],
             "test/depth/abs_err": (1.8, 1.9)[seed], "test/normal/mean": 10.0},
            {"task": "MTL", "weighting": "fixed", "mode": "input", "seed": seed, "test/seg/miou": 0.1},  # other arm
            {"task": "seg", "weighting": "fixed", "mode": "dense", "seed": seed, "test/seg/miou": 0.8},
            {"task": "seg", "weighting": "fixed", "mode": "input", "seed": seed, "test/seg/miou": (0.8, 0.84)[seed]},
            {"task": "depth", "weighting": "fixed", "mode": "dense", "seed": seed, "test/depth/abs_err": 1.0},
            {"task": "depth", "weighting": "fixed", "mode": "input", "seed": seed, "test/depth/abs_err": 1.0},
        ]  # fmt: skip
        if stl_normal:
            rows += [
                {"task": "normal", "weighting": "fixed", "mode": "dense", "seed": seed,
                 "test/normal/mean": (9.0, 11.0)[seed]},
                {"task": "normal", "weighting": "fixed", "mode": "input", "seed": seed, "test/normal/mean": 10.0},
            ]  # fmt: skip
    return rows


def test_sparsity_gain_tests_the_difference_with_every_arms_seed_noise() -> None:
    import pandas as pd
    from scipy import stats

    table = load_script("study_table")
    text = table.sparsity_gain(pd.DataFrame(_gain_rows(stl_normal=False)), "u")
    # seg: gains 15 ± 7.07 vs 2.5 ± 3.54, dense means exact: var/n of the two sparse arms, Welch–Satterthwaite
    var_m, var_s = 50.0 / 2, 12.5 / 2
    dof = (var_m + var_s) ** 2 / (var_m**2 + var_s**2)
    p_seg = 2 * stats.t.sf(12.5 / (var_m + var_s) ** 0.5, dof)
    assert f"| input | seg mIoU ↑ | 2/2, 2/2 | 15.00 ± 7.07 | 2.50 ± 3.54 | +12.50 | {p_seg:.3f} | no |" in text
    assert "| input | depth abs ↓ | 2/2, 2/2 | 7.50 ± 3.54 | 0.00 ± 0.00 | +7.50 |" in text
    assert "normal" not in text and "mean of the three" not in text  # no single-task normal runs: no test, no mean
    full = table.sparsity_gain(pd.DataFrame(_gain_rows()), "u")
    # normals: both gains 0, but the dense means are noisy (±10% per seed): the difference is 0 with p = 1
    assert "| input | normal mean (°) ↓ | 2/2, 2/2 | 0.00 ± 0.00 | 0.00 ± 0.00 | +0.00 | 1.000 | no |" in full
    # mean of the three per seed: multi-task sparse (10+10+0)/3, (20+5+0)/3; dense (0+0+10)/3, (0+0-10)/3
    assert "| input | **mean of the three** | 2/2, 2/2 | 7.50 ± 1.18 | 0.83 ± 1.18 | +6.67 |" in full
    assert table.sparsity_gain(pd.DataFrame(_gain_rows()[:3]), "u") == ""
    with pytest.raises(ValueError, match="several runs per seed"):  # two multi-task arms pooled
        table.sparsity_gain(pd.DataFrame(_gain_rows()).assign(weighting="u"), None)
    diff, p = table.gain_difference_test(
        (pd.Series([1.0, 1.0]), pd.Series([0.0, 0.0])), (pd.Series([0.0, 0.0]), pd.Series([0.0, 0.0]))
    )
    assert diff == 1.0 and p == 0.0  # no noise anywhere: any difference is certain


def test_task_gradient_table_from_metrics_csv(tmp_path: Path) -> None:
    """Per-epoch means of the probe's columns (``_epoch`` preferred to ``_step``) and the loss scales, one row per
    weighting and epoch (first, last), mean ± std over seeds; nothing written without probe columns."""
    tg = load_script("task_gradient_table")
    runs = tmp_path / "runs"
    for seed, cos in ((0, -0.2), (1, 0.0)):
        job = runs / f"mtl_fixed_dense_s{seed}"
        (job / "csv").mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({"config": {"seed": seed, "weighting": {"name": "fixed"}}}))
        lines = [
            "epoch,step,task_grad/a~b/cos_step,task_grad/a~b/cos_epoch,train/a/loss,train/loss",
            f"0,1,{cos - 0.1},,2.0,3.0",
            f"0,2,{cos + 0.1},,4.0,5.0",
            f"0,2,,{cos},,",
            "1,3,0.5,,1.0,1.5",
            "1,3,,0.5,,",
            "2,3,,,,",
        ]  # epoch 2: the test stage's row (no probe values)
        (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    per_epoch = tg.epoch_means(runs / "mtl_fixed_dense_s0" / "csv" / "metrics.csv")
    assert per_epoch.loc[0, "task_grad/a~b/cos"] == pytest.approx(-0.2)  # the _epoch value, not the step mean
    assert per_epoch.loc[0, "train/a/loss"] == pytest.approx(3.0)
    out = tg.write_task_gradient_table(runs, tmp_path / "tg.md")
    text = out.read_text()
    assert "| fixed | 0 | 2 | -0.1 ± 0.14 | 3 ± 0 |" in text and "| fixed | 1 | 2 | 0.5 ± 0 | 1 ± 0 |" in text
    assert "| fixed | 2 |" not in text  # the last epoch with probe values, not the test stage's
    assert (tmp_path / "tg.csv").is_file()
    empty = tmp_path / "none"
    (empty / "mtl_fixed_dense_s0" / "csv").mkdir(parents=True)
    assert tg.write_task_gradient_table(empty, tmp_path / "x.md") is None


def test_why_mtl_32_queue_and_metrics_table(tmp_path: Path) -> None:
    """The 32 px dense multi-task run under each weighting, probed; test metrics mean ± std per weighting beside
    the single-task dense runs."""
    why = load_script("why_mtl_32")
    todo = dict(why.jobs([0, 1]))
    assert list(todo)[:3] == ["mtl_fixed_dense_s0", "mtl_uncertainty_dense_s0", "mtl_dwa_dense_s0"]
    assert len(todo) == 10 and "lambda=0" in todo["mtl_dwa_dense_s1"] and "weighting=dwa" in todo["mtl_dwa_dense_s1"]
    assert "task_weights={seg:4}" in todo["mtl_fixed_seg4_dense_s0"]
    assert "trainer.max_epochs=10" in todo["mtl_fixed_10ep_dense_s1"]
    chosen = [n for n, _ in why.jobs([1, 2], ["mtl_fixed_seg4"])]
    assert chosen == ["mtl_fixed_seg4_dense_s1", "mtl_fixed_seg4_dense_s2"]
    assert any(o.startswith("+callbacks.task_gradients._target_=") for o in todo["mtl_fixed_dense_s0"])
    runs, stl = tmp_path / "runs", tmp_path / "stl"
    for name, miou in (("mtl_fixed_dense_s0", 0.1), ("mtl_fixed_dense_s1", 0.2)):
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps({"test/seg/miou": miou, "test/depth/abs_err": 2.0}))
    (stl / "seg_dense_s0").mkdir(parents=True)
    (stl / "seg_dense_s0" / "results.json").write_text(json.dumps({"test/seg/miou": 0.25}))
    text = why.metrics_table(runs, stl)
    assert "| MTL, fixed | 0.150 ± 0.071 (n = 2) | 2.000 ± 0.000 (n = 2) | – |" in text
    assert "| MTL, dwa | – | – | – |" in text
    assert "| single-task dense (the study's) | 0.250 ± 0.000 (n = 1) | – | – |" in text


def test_grouping_study_queue_names_the_group_weight_and_keeps_the_default_queue() -> None:
    spec = importlib.util.spec_from_file_location("grouping_study", ROOT / "experiments" / "grouping_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    default = study.jobs([0.12, 0.25, 0.08], [0, 1, 2], [0.25, 0.12])
    assert len(default) == 17 and default[0] == (
        "coupled_m0.12_s0",
        ["sparsity.groups=coupled", "sparsity.target_macs=0.12", "seed=0"],
    )
    both = dict(study.jobs([0.12, 0.25, 0.08], [0, 1, 2], [0.25, 0.12], ("sqrt_size", "macs")))
    assert set(dict(default)) < set(both) and len(both) == 17 + 14  # every sparse job once more, dense runs once
    assert both["coupled_macs_m0.25_s1"] == [
        "sparsity.groups=coupled",
        "sparsity.target_macs=0.25",
        "seed=1",
        "sparsity.group_weight=macs",
    ]


def test_grouping_study_queue_names_the_layer_cap_and_the_report_keeps_its_arm(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("grouping_study", ROOT / "experiments" / "grouping_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    capped = dict(study.jobs([0.25], [0, 1], [0.25], ("sqrt_size",), (0.55,)))
    assert capped["coupled_cap0.55_m0.25_s1"] == [
        "sparsity.groups=coupled",
        "sparsity.target_macs=0.25",
        "seed=1",
        "sparsity.max_layer_sparsity=0.55",
    ]
    assert "coupled_m0.25_s1" not in capped and "dense_s1" in capped  # only the capped variant is queued
    runs = tmp_path / "runs"
    metrics = {"test/seg/miou": 0.5, "test/depth/abs_err": 1.0}
    for name, miou in (
        ("dense_s0", 0.5),
        ("dense_s1", 0.5),
        ("coupled_m0.25_s0", 0.55),
        ("coupled_cap0.55_m0.25_s1", 0.45),
    ):
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps({**metrics, "test/seg/miou": miou}))
    text = study.seeds_table(runs, tmp_path, [0.25], [0, 1], ("sqrt_size",), (None, 0.55)).read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "coupled 0.25" in rows and "coupled_cap0.55 0.25" in rows and "input_cap0.55 0.25" not in rows
    assert rows["coupled_cap0.55 0.25"].split(" | ")[1] == "1"  # n = 1: the one capped run, not pooled with s0
