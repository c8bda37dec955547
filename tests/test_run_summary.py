"""`make train`: the quickstart preset, the Makefile's train target, and the ten-second summary a run ends with."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.runs import compose_with

from lightning_sparse_mtl.reporting.run_summary import MAX_LINES, summary_lines, summary_text

ROOT = Path(__file__).resolve().parents[1]


def fake_results(run_dir: Path) -> dict:
    """What a quickstart run's results.json holds (the keys the summary reads, values of a real run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx"):
        (run_dir / name).write_text("")
    return {
        "test/depth/abs_err": 1.78,
        "test/depth/rel_err": 0.27,
        "test/normal/mean": 17.9,
        "test/normal/median": 16.2,
        "test/normal/within_11.25": 0.31,
        "test/normal/within_22.5": 0.7,
        "test/seg/miou": 0.612,
        "test/seg/pix_acc": 0.84,
        "sparsity/group_sparsity": 55.5,
        "sparsity": {"group_sparsity": 55.5, "zero_groups": 2131, "total_groups": 3840, "layers": {}},
        "lambda": 0.0,
        "sparsity/final_lambda": 1.3e-06,
        "sparsity/target": {"kind": "macs", "fraction": 0.6, "every": 10, "capped_layers": []},
        "run_dir": str(run_dir),
        "ckpt_path": str(run_dir / "checkpoints" / "last.ckpt"),
        "dense/params": 12_057_345,
        "pruned/params": 3_100_000,
        "dense/macs": 454_899_456,
        "pruned/macs": 181_000_000,
        "pruned/macs_ratio_effective": 1.9,
        "pruned/eager/speedup_b1": 1.61,
        "pruned/eager/speedup_b8": 1.93,
        "pruned/onnxruntime/speedup_b1": 2.2,
        "pruned/onnxruntime/speedup_b8": 2.61,
        "pruned/onnxruntime/speedup_iqr_b8": 0.2,
        "pruned/best_runtime": "onnxruntime",
        "pruned/path": str(run_dir / "pruned.pt"),
    }


def test_summary_says_what_a_person_needs(tmp_path) -> None:
    results = fake_results(tmp_path / "outputs" / "run")
    lines = summary_lines(results, ["experiment=quickstart", "sparsity.target_macs=0.4", "tasks=[seg,depth]"])
    text = "\n".join(lines)
    assert len(lines) <= MAX_LINES
    # accuracy per task, with the direction of each metric
    assert "miou 0.612↑" in text and "abs_err 1.78↓" in text and "mean 17.9°↓" in text
    assert sum(line.lstrip().startswith(("seg", "depth", "normal")) for line in lines) == 3
    # zero groups, the target and the final lambda
    assert "55.5% (2,131 of 3,840)" in text and "target MACs 0.4 of dense" in text and "final λ 1.3e-06" in text
    # params and MACs before -> after
    assert "12.06M → 3.1M (3.89× fewer)" in text
    assert "454.9M → 181M per image (0.40 of dense, 2.51× fewer; 1.90× without padding taps)" in text
    # measured speedup per runtime, the fastest marked
    assert "ONNX Runtime:  batch 1 2.20×  batch 8 2.61×  (fastest pruned model)" in text
    assert "eager PyTorch: batch 1 1.61×  batch 8 1.93×" in text
    # the files written (those on disk) and the next commands
    assert "results.json, pruned.pt, pruned.pt2, pruned.onnx, dense.onnx in" in text
    assert "checkpoints/last.ckpt," not in text  # not on disk in this fake run
    assert f"evaluate ckpt_path={results['pruned/path']}" in text
    assert "prune ckpt_path=" in text and "repeats=10" in text
    # the sweep varies the run's own knob over seeds and keeps its other overrides (shell-quoted)
    assert "train -m experiment=quickstart 'tasks=[seg,depth]' sparsity.target_macs=0.3,0.4,0.6 seed=0,1,2" in text
    assert "report multirun/" in text


def test_summary_paths_are_relative_below_the_working_directory(tmp_path) -> None:
    results = fake_results(tmp_path / "outputs" / "run")
    text = summary_text(results, cwd=tmp_path)
    assert "evaluate ckpt_path=outputs/run/pruned.pt" in text and " in outputs/run/" in text


def test_no_summary_without_pruning(tmp_path) -> None:
    results = fake_results(tmp_path / "run")
    dense = {k: v for k, v in results.items() if not k.startswith(("pruned/", "dense/"))}
    assert summary_lines(dense) == [] and summary_text(dense) == ""


def test_fixed_lambda_run_sweeps_lambda(tmp_path) -> None:
    results = {**fake_results(tmp_path / "run"), "lambda": 2e-5}
    del results["sparsity/target"]
    text = summary_text(results, ["experiment=digits_sparse", "lambda=2e-5"])
    assert "λ 2e-05" in text and "train -m experiment=digits_sparse lambda=1e-5,2e-5,4e-5 seed=0,1,2" in text


def test_the_suggested_sweep_of_a_resumed_run_starts_new_runs(tmp_path) -> None:
    """A resumed run's overrides carry its checkpoint and run dir: the sweep it suggests must not (bug fix)."""
    results = {**fake_results(tmp_path / "run"), "lambda": 2e-5}
    del results["sparsity/target"]
    overrides = ["experiment=digits_sparse", "lambda=2e-5", "hydra.run.dir=/r", "ckpt_path=/r/checkpoints/last.ckpt",
                 "trust_checkpoint=false", "hydra.job.chdir=false"]  # fmt: skip
    text = summary_text(results, overrides)
    assert "train -m experiment=digits_sparse lambda=1e-5,2e-5,4e-5 seed=0,1,2" in text
    assert "/r/" not in text.split("sweep:")[1].splitlines()[0] and "trust_checkpoint" not in text


def test_quickstart_preset_is_the_default_job_with_a_macs_target() -> None:
    default, quick = compose_with(), compose_with("experiment=quickstart")
    assert quick.sparsity.target_macs == 0.4 and quick["lambda"] == 0.0 and quick.sparsity.prox == "adam"
    assert quick.prune.after_train and quick.prune.export
    assert quick.trainer.max_epochs == default.trainer.max_epochs  # the dense baseline has the same length
    assert quick.data == default.data and quick.model == default.model and quick.optimizer == default.optimizer
    dense = compose_with("experiment=quickstart", "sparsity.target_macs=null")  # the documented dense baseline
    assert dense["lambda"] == 0.0 and dense.sparsity.target_macs is None and dense.sparsity.target is None


def make_train(*args: str) -> str:
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return proc.stdout


def test_make_train_runs_the_quickstart_and_args_still_work() -> None:
    assert "-m lightning_sparse_mtl.train experiment=quickstart" in make_train()
    out = make_train("ARGS=sparsity.target_macs=null seed=1")
    assert "experiment=quickstart sparsity.target_macs=null seed=1" in out
    out = make_train("ARGS=experiment=digits_sparse")  # another preset replaces the quickstart
    assert "experiment=digits_sparse" in out and "quickstart" not in out
    assert "experiment=" not in make_train("EXPERIMENT=")  # the plain default config
