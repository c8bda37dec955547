"""The sweep report: one row per job, one summary row per configuration (every override but seed), Δm, figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from helpers.fake_runs import fake_results, write_job
from helpers.runs import PNG_MAGIC, assert_pdf, assert_png, check_ok, job_results, run_module, tiny_multirun

from lightning_sparse_mtl.reporting import aggregate as report
from lightning_sparse_mtl.reporting.metric_info import higher_is_better, label, unit
from lightning_sparse_mtl.reporting.plots import pareto_front
from lightning_sparse_mtl.reporting.summary import ci_halfwidth, load_stl_baselines

FIGURES = ("tradeoff", "pareto", "layer_sparsity", "latency")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- end to end: Hydra multirun -> report


def test_lambda_by_seed_multirun_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """2 λ × 2 seeds: report.csv keeps 4 jobs, summary.csv has 2 configurations with n = 2 and std / CI columns
    equal to the statistics of the two jobs; figures as PNG and PDF; a crashed job is listed, not dropped."""
    sweep = tmp_path / "sweep"
    args = [*tiny_multirun(tmp_path), "lambda=0,1e-3", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    check_ok(run_module("lightning_sparse_mtl.train", *args))
    jobs = job_results(sweep)
    assert len(jobs) == 4 and sorted((r["lambda"], r["seed"]) for r in jobs.values()) == [
        (0.0, 0), (0.0, 1), (1e-3, 0), (1e-3, 1)]  # fmt: skip
    for job_dir, res in jobs.items():
        assert Path(res["run_dir"]) == job_dir.resolve() and res["config"]["lambda"] == res["lambda"]

    proc = check_ok(run_module("lightning_sparse_mtl.report", str(sweep)))
    assert "4 finished run(s), 0 failed, 2 configuration(s)" in proc.stdout
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 4 and [float(r["lambda"]) for r in rows] == [0, 0, 1e-3, 1e-3]
    assert {r["config"] for r in rows} == {"experiment=tiny_test,lambda=0", "experiment=tiny_test,lambda=0.001"}
    summary = {r["config"]: r for r in read_csv(sweep / "summary.csv")}
    assert len(summary) == 2
    for config, rec in summary.items():
        assert rec["n"] == "2" and rec["seeds"] == "0 1"
        lam = {"experiment=tiny_test,lambda=0": 0.0, "experiment=tiny_test,lambda=0.001": 1e-3}[config]
        runs = [r for r in jobs.values() if r["lambda"] == lam]
        assert len(runs) == 2
        values = [r["test/seg/miou"] for r in runs]
        mean, std = sum(values) / 2, abs(values[0] - values[1]) / math.sqrt(2)
        assert float(rec["test/seg/miou_mean"]) == pytest.approx(mean)
        assert float(rec["test/seg/miou_std"]) == pytest.approx(std, abs=1e-12)
        half = 12.706204736174698 * std / math.sqrt(2)  # t_{0.975, 1}
        assert float(rec["test/seg/miou_ci95_low"]) == pytest.approx(mean - half, abs=1e-9)
        for col in ("test/depth/abs_err", "test/normal/mean", "group_sparsity_%", "params"):
            assert f"{col}_std" in rec and f"{col}_ci95_high" in rec
    dense = summary["experiment=tiny_test,lambda=0"]
    assert float(dense["delta_m_vs_dense_mean"]) == pytest.approx(0.0, abs=1e-9)  # its own reference
    md = (sweep / "summary.md").read_text()
    assert "| `lambda=0.001` | 2 |" in md and "95 % confidence interval" in md  # short names in the tables
    assert "left out of the names below): `experiment=tiny_test`" in md
    assert "normal/mean (degrees" in md and "depth/abs_err (scene units" in md
    for name in ("tradeoff", "layer_sparsity"):
        assert_png(sweep / f"{name}.png")
        assert_pdf(sweep / f"{name}.pdf")
    pruned = any("pruned/macs_ratio" in r for r in jobs.values())  # 2 steps at λ = 1e-3 may zero no channel
    assert (sweep / "pareto.pdf").is_file() if pruned else "`pareto.png` skipped" in md

    crashed = sweep / "9"  # Hydra leaves .hydra/ and its log, no results.json
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "train.log").write_text("[INFO] start\n[ERROR] RuntimeError: out of memory\n")
    out = tmp_path / "report"
    report.main([str(sweep), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert "4 finished run(s), 1 failed" in stdout and "FAILED 9" in stdout
    failed_section = (out / "report.md").read_text().split("## Failed runs", 1)[1]
    assert "out of memory" in failed_section
    assert len(read_csv(out / "report.csv")) == 4


def test_two_presets_at_one_lambda_are_two_rows(tmp_path: Path) -> None:
    """``sparsity=prox,adam_prox`` at one λ: two configurations, never one averaged row."""
    sweep = tmp_path / "sweep"
    args = [*tiny_multirun(tmp_path), "sparsity=prox,adam_prox", "lambda=1e-3", f"hydra.sweep.dir={sweep}"]
    check_ok(run_module("lightning_sparse_mtl.train", *args))
    out = report.write_report(sweep)
    assert len(out["rows"]) == 2 and len(out["summary"]) == 2
    configs = sorted(out["summary"]["config"])
    assert [c.split(",")[1] for c in configs] == ["sparsity=adam_prox", "sparsity=prox"], configs
    assert list(out["summary"]["n"]) == [1, 1]
    table = [ln for ln in (sweep / "summary.md").read_text().splitlines() if ln.startswith("| `")]
    assert len(table) == 2 * 2  # two rows in the mean ± std table, two in the interval table


# ---------------------------------------------------------------- configurations (hand-written job dirs)


def test_jobs_differing_in_non_swept_keys_are_kept_apart(tmp_path: Path) -> None:
    """Same overrides, different resolved configs (two multiruns with an edited experiment in one folder)."""
    for i, (seed, head) in enumerate([(0, 16), (1, 16), (0, 32)]):
        res = fake_results(0.0, seed, 0.5 + i / 10, 0.0, config={"model": {"head_channels": head}},
                           run_dir=str(tmp_path / f"{i}"))  # fmt: skip
        res["config"]["logger"] = {"save_dir": str((tmp_path / f"{i}").resolve())}  # a per-job path: ignored
        write_job(tmp_path, str(i), res, overrides=["lambda=0", f"seed={seed}"])
    out = report.write_report(tmp_path)
    summary = out["summary"].set_index("config")
    assert dict(summary["n"]) == {"lambda=0 [model.head_channels=16]": 2, "lambda=0 [model.head_channels=32]": 1}
    assert out["notes"] == {c: ["model.head_channels"] for c in summary.index}
    assert "differs in `model.head_channels`" in (tmp_path / "summary.md").read_text()


def test_runs_without_overrides_use_the_resolved_config(tmp_path: Path) -> None:
    for i, (lam, seed) in enumerate([(0.0, 0), (0.0, 1), (1e-3, 0), (1e-3, 1)]):
        write_job(tmp_path, f"run{i}", fake_results(lam, seed, 0.5 + lam * 100 + seed / 100, 0.0))
    (tmp_path / "run0" / ".hydra").rmdir()  # a plain folder holding results.json is a job too
    out = report.write_report(tmp_path)
    assert dict(out["summary"].set_index("config")["n"]) == {"lambda=0": 2, "lambda=0.001": 2}


def test_delta_m_against_dense_and_stl_baselines(tmp_path: Path) -> None:
    """Closed forms: Δm vs the same configuration at λ = 0 (mean over its seeds) and vs STL baselines given as a
    folder (its dense single-task runs averaged over seeds; sparse and multi-task runs there ignored)."""
    sweep, stl = tmp_path / "sweep", tmp_path / "stl"
    for name, lam, seed, miou in [("0", 0.0, 0, 0.50), ("1", 0.0, 1, 0.70), ("2", 1e-3, 0, 0.66)]:
        write_job(sweep, name, fake_results(lam, seed, miou, 0.0), overrides=[f"lambda={lam:g}", f"seed={seed}"])
    stl_runs = [("seg0", ["seg"], 0.0, {"test/seg/miou": 0.5}), ("seg1", ["seg"], 0.0, {"test/seg/miou": 0.7}),
                ("depth0", ["depth"], 0.0, {"test/depth/abs_err": 0.4}),
                ("sparse", ["seg"], 1e-3, {"test/seg/miou": 0.1}),
                ("mtl", ["seg", "depth"], 0.0, {"test/seg/miou": 0.1, "test/depth/abs_err": 9.0})]  # fmt: skip
    for name, tasks, lam, metrics in stl_runs:
        write_job(stl, name, {**metrics, "lambda": lam, "config": {"tasks": tasks, "lambda": lam}})
    out = report.write_report(sweep, baselines=[stl])
    row = next(r for r in out["rows"] if r["lambda"] == 1e-3)
    # vs dense: seg 0.66 vs 0.60 (+10 %), depth 0.34 vs 0.40 (lower is better: +15 %)
    assert row["delta_m_vs_dense"] == pytest.approx((10.0 + 15.0) / 2)
    # vs STL: seg 0.66 vs 0.60, depth 0.34 vs 0.40 -> the same numbers from other runs
    assert row["delta_m_vs_stl"] == pytest.approx(12.5)
    md = (sweep / "summary.md").read_text()
    assert "seg/miou = 0.6" in md and "depth/abs_err = 0.4" in md
    with pytest.raises(SystemExit) as exc:
        report.main([str(sweep), "--baselines", str(tmp_path / "missing")])
    assert exc.value.code == 2


def test_target_and_peer_arms_at_lambda_zero_are_not_dense_references(tmp_path: Path) -> None:
    """A ``sparsity.target`` run (λ start 0) and a ``method=tp_*`` run both report ``lambda: 0``: they were taken
    as dense references (their own Δ vs dense 0, the dense mean polluted, STL baselines from sparse runs). Now
    their counterpart is the λ = 0 run of the same setting, and folders of baselines skip them."""
    sweep = tmp_path / "sweep"
    target = {"sparsity": {"target": 0.7, "groups": "input"}}
    peer = {"method": {"name": "tp_magnitude"}, "sparsity": {"target_macs": 0.25}}
    jobs = [("dense0", 0, 0.50, {}, ["lambda=0"]), ("dense1", 1, 0.70, {}, ["lambda=0"]),
            ("input0", 0, 0.66, target, ["sparsity.groups=input", "sparsity.target=0.7"]),
            ("tp0", 0, 0.54, peer, ["method=tp_magnitude", "sparsity.target_macs=0.25"])]  # fmt: skip
    for name, seed, miou, config, overrides in jobs:
        write_job(sweep, name, fake_results(0.0, seed, miou, 0.0, config), overrides=[*overrides, f"seed={seed}"])
    rows = {r["job"]: r for r in report.write_report(sweep)["rows"]}
    assert rows["dense0"]["_dense"] and not rows["input0"]["_dense"] and not rows["tp0"]["_dense"]
    # vs the dense mean (seg 0.60, depth 0.40): input +10 % / +15 %, tp -10 % / -15 %
    assert rows["input0"]["delta_m_vs_dense"] == pytest.approx(12.5)
    assert rows["tp0"]["delta_m_vs_dense"] == pytest.approx(-12.5)
    assert rows["dense0"]["delta_m_vs_dense"] == pytest.approx((-100 / 6 - 25) / 2)  # vs the mean 0.60 / 0.40
    stl = tmp_path / "stl"  # a folder of baselines: the sparse single-task run at λ = 0 is not one
    write_job(stl, "seg_dense", {"test/seg/miou": 0.5, "lambda": 0, "config": {"tasks": ["seg"], "lambda": 0}})
    write_job(stl, "seg_input", {"test/seg/miou": 0.9, "lambda": 0, "config": {"tasks": ["seg"], **target}})
    assert load_stl_baselines([stl]) == {"test/seg/miou": 0.5}


def test_ci_halfwidth_closed_form() -> None:
    # samples 1, 2, 3: std 1, t_{0.975, 2} = 4.302652729696
    assert ci_halfwidth(1.0, 3) == pytest.approx(4.302652729696 / math.sqrt(3))
    assert math.isnan(ci_halfwidth(1.0, 1))


def test_pareto_front_and_metric_info() -> None:
    assert pareto_front([(1, 0), (2, 1), (3, 0.5), (1.5, 0.9), (0.5, 2)]) == [1, 2, 4]
    nyu = {"data": {"dataset": {"_target_": "lightning_sparse_mtl.data.nyuv2.NYUv2"}}}
    assert unit("test/depth/abs_err", nyu) == "m" and unit("test/normal/mean") == "degrees"
    assert label("test/normal/within_11.25") == "normal/within_11.25 (fraction, ↑ better)"
    assert higher_is_better("test/depth/rel_err") is False and higher_is_better("test/Smiling/f1") is True


# ---------------------------------------------------------------- per-job report (kept as it was)


def test_report_collects_sorts_and_lists_failures(tmp_path: Path) -> None:
    latency = {"dense/latency_b1_ms": 4.0, "pruned/latency_b1_ms": 2.0, "pruned/macs": 5e6, "dense/macs": 1e7,
               "pruned/macs_ratio": 2.0, "pruned/speedup_b1": 2.0}  # fmt: skip
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
    names = {p.name for p in out["files"]}
    assert {"report.csv", "report.md", "summary.csv", "summary.md"} <= names
    for name in FIGURES:
        assert {f"{name}.png", f"{name}.pdf"} <= names
        assert_png(tmp_path / "out" / f"{name}.png")
        assert_pdf(tmp_path / "out" / f"{name}.pdf")
    assert "3_lambda=1e-2" in (tmp_path / "out" / "report.md").read_text().split("## Failed runs")[1]


def test_report_skips_latency_plot_without_measurements(tmp_path: Path) -> None:
    write_job(tmp_path, "0_lambda=0", fake_results(0.0, 0, 0.7, 0.0))
    (tmp_path / "latency.png").write_bytes(PNG_MAGIC)  # stale plot from an earlier report
    (tmp_path / "latency.pdf").write_bytes(b"%PDF-")
    out = report.write_report(tmp_path)
    assert "latency.png" in out["skipped"] and not (tmp_path / "latency.png").exists()
    assert not (tmp_path / "latency.pdf").exists()
    assert "`latency.png` skipped" in (tmp_path / "report.md").read_text()
    assert_png(tmp_path / "tradeoff.png")


def test_report_single_run_dir_and_missing_keys(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "results.json").write_text(json.dumps({"test/seg/miou": 0.4, "config": {"lambda": 0.01, "seed": 3}}))
    rows, failed = report.collect(tmp_path)
    assert not failed and rows[0]["job"] == "." and (rows[0]["lambda"], rows[0]["seed"]) == (0.01, 3)
    assert rows[0]["group_sparsity_%"] is None
    out = report.write_report(tmp_path)
    assert "layer_sparsity.png" in out["skipped"] and list(out["summary"]["n"]) == [1]


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_report_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    target = tmp_path / "nope" if kind == "missing" else tmp_path
    with pytest.raises(SystemExit) as exc:
        report.main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_sweep_without_a_dense_job_plots_raw_metrics(tmp_path: Path) -> None:
    """No λ=0 job and no baselines: the Pareto panels plot each metric (depth included) instead of Δm. The
    loop over configurations used to overwrite the run config the depth axis label reads (a traceback)."""
    for i, lam in enumerate([1e-3, 3e-3]):
        write_job(tmp_path, f"{i}", fake_results(lam, 0, 0.5 - lam, 50.0, **{"pruned/macs_ratio": 2.0 + i}),
                  overrides=[f"lambda={lam}"])  # fmt: skip
    out = report.write_report(tmp_path)
    assert "pareto.png" not in out["skipped"] and len(out["summary"]) == 2
    assert_png(tmp_path / "pareto.png")
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.csv").is_file()


def test_report_out_that_cannot_be_written_is_one_line_error(tmp_path: Path, capsys, monkeypatch) -> None:
    write_job(tmp_path, "0", fake_results(0.0, 0, 0.7, 0.0), overrides=["lambda=0"])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path), "--out", str(blocker)])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
    # a folder the process may not write in (os.access says yes to root: a real file is created to be sure)
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: --out") and "Permission denied" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.md").exists()


def test_zero_in_the_dense_reference_leaves_that_metric_out_of_delta_m(tmp_path: Path, capsys) -> None:
    """The sweep's own λ=0 job is the Δm reference; a metric of 0 there (a weak early model) used to stop the
    whole report with "give a non-zero value", which the user cannot act on."""
    dense = fake_results(0.0, 0, 0.5, 0.0)
    dense["test/depth/abs_err"] = 0.0
    write_job(tmp_path, "0", dense, overrides=["lambda=0"])
    write_job(tmp_path, "1", fake_results(1e-3, 0, 0.4, 50.0), overrides=["lambda=0.001"])
    out = report.write_report(tmp_path)
    rows = {r["lambda"]: r for r in out["rows"]}
    assert rows[1e-3]["delta_m_vs_dense"] == pytest.approx((0.4 - 0.5) / 0.5 * 100)  # seg miou alone
    assert "leaves out test/depth/abs_err" in capsys.readouterr().out


def test_is_dense_run_edge_cases() -> None:
    """λ from the results else the config; a bool or missing λ, a peer method (string or mapping), a target, or the
    controller's results key is not dense; malformed config sections do not crash the report."""
    from lightning_sparse_mtl.reporting.configurations import is_dense_run

    assert is_dense_run({"lambda": 0}) and is_dense_run({"lambda": None, "config": {"lambda": 0.0}})
    assert not is_dense_run({"lambda": False}) and not is_dense_run({}) and not is_dense_run({"lambda": 1e-4})
    assert not is_dense_run({"lambda": 0, "config": {"method": "tp_magnitude"}})
    assert not is_dense_run({"lambda": 0, "config": {"method": {"name": "tp_group_norm"}}})
    assert is_dense_run({"lambda": 0, "config": {"method": {"name": "group_lasso_coupled"}}})
    assert not is_dense_run({"lambda": 0, "config": {"sparsity": {"target_macs": 0.3}}})
    assert not is_dense_run({"lambda": 0, "sparsity/target": {"target": 0.7}})
    assert is_dense_run({"lambda": 0, "config": "not a mapping"}) and is_dense_run(
        {"lambda": 0, "config": {"sparsity": 1}}
    )
