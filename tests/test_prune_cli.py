"""Physical pruning of real checkpoints: compact model file, speed report, evaluate equivalence, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_sparse_mtl.evaluate import evaluate
from lightning_sparse_mtl.prune import prune_checkpoint
from lightning_sparse_mtl.runs.checkpoints import load_pruned
from lightning_sparse_mtl.sparsity.groups import group_norms

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short dense training run shared by the tests of this file."""
    from conftest import short_dense_run

    return short_dense_run(tmp_path_factory, SHORT)


def sparsify_checkpoint(dense_run: Path, dest: Path, fraction: float = 0.5, seed: int = 0) -> Path:
    """Copy the run and zero ``fraction`` of the input groups of every grouped encoder layer in its checkpoint."""
    shutil.copytree(dense_run, dest)
    ckpt_path = dest / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    g = torch.Generator().manual_seed(seed)
    for name, w in ckpt["state_dict"].items():
        if name.startswith("net.encoder.") and w.dim() == 4 and w.shape[1] > 3:
            drop = torch.randperm(w.shape[1], generator=g)[: int(fraction * w.shape[1])]
            w[:, drop] = 0
    torch.save(ckpt, ckpt_path)
    return ckpt_path


def test_prune_writes_compact_model_and_speed_report(dense_run: Path, tmp_path: Path) -> None:
    ckpt = sparsify_checkpoint(dense_run, tmp_path / "run")
    figures = prune_checkpoint(str(ckpt), repeats=2, batch_sizes=(1, 8), min_run_time=0.02)  # the full path, briefly
    assert figures is not None and figures["pruned/channels_removed"] > 0
    assert figures["pruned/macs"] < figures["dense/macs"] and figures["pruned/params"] < figures["dense/params"]
    assert figures["pruned/macs_ratio"] == pytest.approx(figures["dense/macs"] / figures["pruned/macs"])
    for b in (1, 8):
        assert figures[f"pruned/latency_b{b}_ms"] > 0 and figures[f"dense/latency_b{b}_ms"] > 0
        assert figures[f"pruned/speedup_over_macs_ratio_b{b}"] == pytest.approx(
            figures[f"pruned/speedup_b{b}"] / figures["pruned/macs_ratio"]
        )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["pruned/macs"] == figures["pruned/macs"] and "test/seg/miou" in results
    saved = load_pruned(tmp_path / "run" / "pruned.pt")
    assert saved["report"]["max_abs_diff"] <= 1e-4
    heads = saved["model"].head_output_layers()
    assert [h.out_channels for h in heads] == [11, 1, 3]  # outputs keep their sizes


def test_evaluate_dense_checkpoint_and_pruned_model_agree(dense_run: Path, tmp_path: Path) -> None:
    ckpt = sparsify_checkpoint(dense_run, tmp_path / "run", fraction=0.7, seed=1)
    prune_checkpoint(str(ckpt), repeats=1, batch_sizes=(1,))
    dense = evaluate(str(ckpt), trainer_kwargs={"enable_progress_bar": False})
    pruned = evaluate(str(tmp_path / "run" / "pruned.pt"), trainer_kwargs={"enable_progress_bar": False})
    assert dense.keys() == pruned.keys() and "test/normal/median" in dense
    for key in dense:
        assert pruned[key] == pytest.approx(dense[key], abs=1e-4), key


@pytest.mark.slow  # a second interpreter (~30 s); in-process reloads are tested above
def test_pruned_model_reloads_in_a_fresh_process(dense_run: Path, tmp_path: Path) -> None:
    ckpt = sparsify_checkpoint(dense_run, tmp_path / "run")
    prune_checkpoint(str(ckpt), repeats=1, batch_sizes=(1,))
    x = torch.rand(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected = load_pruned(tmp_path / "run" / "pruned.pt")["model"].eval()(x)
    code = (
        "import torch, sys; p, x, o = sys.argv[1:]; "
        "from lightning_sparse_mtl.runs.checkpoints import load_pruned; "
        "assert torch.load(p, weights_only=True)['format']; "
        "net = load_pruned(p)['model']; "
        "torch.save({k: v for k, v in net(torch.load(x)).items()}, o)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "run" / "pruned.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=120)  # fmt: skip
    got = torch.load(tmp_path / "out.pt")
    for task, value in expected.items():
        assert torch.allclose(got[task], value, atol=1e-6), task


def test_pruning_a_dense_checkpoint_is_a_clear_no_op(dense_run: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(dense_run, tmp_path / "run")
    assert prune_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt")) is None
    assert "nothing to prune" in capsys.readouterr().out
    assert not (tmp_path / "run" / "pruned.pt").exists()


def test_all_zero_layer_inputs_still_prune_exactly(dense_run: Path, tmp_path: Path) -> None:
    ckpt = sparsify_checkpoint(dense_run, tmp_path / "run", fraction=1.0)  # every grouped input is zero
    figures = prune_checkpoint(str(ckpt), repeats=1, batch_sizes=(1,))
    assert figures is not None and figures["pruned/max_abs_diff"] <= 1e-4


BAD_CHECKPOINTS = [
    (lambda d: d / "missing.ckpt", "checkpoint not found"),
    (lambda d: (torch.save({"weights": torch.zeros(2)}, d / "foreign.ckpt"), d / "foreign.ckpt")[1],
     "is not a lightning-sparse-mtl training checkpoint"),
    (lambda d: ((d / "junk.ckpt").write_bytes(b"not a checkpoint"), d / "junk.ckpt")[1], "cannot read"),
]  # fmt: skip


def test_bad_checkpoint_is_one_line_error_from_the_command_line(tmp_path: Path) -> None:
    """A real process per entry point (exit status, stderr, no traceback); the other kinds in-process below.
    The error comes before the heavy imports (Lightning, Torch-Pruning: seconds of start-up)."""
    make, message = BAD_CHECKPOINTS[1]
    path = make(tmp_path)
    for entry in ("prune", "evaluate"):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"lightning_sparse_mtl.{entry}",
                               f"ckpt_path={path}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-1500:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr
        imported = {ln.rpartition("|")[2].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        heavy = {"torch_pruning", "timm"} | ({"lightning"} if entry == "prune" else set())  # evaluate: Trainer schema
        assert "torch" in imported and not imported & heavy, (entry, imported & heavy)


@pytest.mark.parametrize(("make", "message"), BAD_CHECKPOINTS)
@pytest.mark.parametrize("entry", ["prune", "evaluate"])
def test_bad_checkpoint_is_one_line_error(entry: str, make, message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    import importlib

    path = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [entry, f"ckpt_path={path}"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"lightning_sparse_mtl.{entry}").main()
    assert exit_.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([path.name] if path.exists() else [])  # nothing written


def test_zero_groups_in_checkpoint_are_exact(dense_run: Path, tmp_path: Path) -> None:
    ckpt = sparsify_checkpoint(dense_run, tmp_path / "run")
    from lightning_sparse_mtl.runs.checkpoints import load_module

    module = load_module(ckpt)
    zero = sum(int((group_norms(g.weight) == 0).sum()) for g in module.sparsity.groups)
    total = sum(g.num_groups for g in module.sparsity.groups)
    assert zero == sum(int(0.5 * g.num_groups) for g in module.sparsity.groups) and 0 < zero < total


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("batch_sizes=[]", "batch_sizes must be a non-empty list"),
        ("batch_sizes=[0]", "batch_sizes[] must be an integer >= 1"),
        ("threads=0", "threads must be an integer >= 1"),
        ("repeats=0", "repeats must be an integer >= 1"),
        ("round_to=abc", "round_to must be an integer >= 1, got 'abc'"),
        ("round_to=-4", "round_to must be an integer >= 1"),
        ("min_run_time=-1", "min_run_time must be a finite number > 0"),
        ("fold_bn=maybe", "fold_bn must be true or false, got 'maybe'"),
    ],
)
def test_bad_prune_option_is_one_line_error_before_any_work(
    option: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Each option of the prune command is checked before the checkpoint is read; nothing is written (in-process;
    the first case also as a real process: exit status, stderr, no traceback)."""
    import importlib

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not read: the options are checked first")
    if option == "batch_sizes=[]":
        proc = subprocess.run([sys.executable, "-m", "lightning_sparse_mtl.prune", f"ckpt_path={ckpt}", option],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        err = proc.stderr
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["prune", f"ckpt_path={ckpt}", option])
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module("lightning_sparse_mtl.prune").main()
        assert exit_.value.code == 2
        err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err[-800:]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.ckpt", "run"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["batch_size=-3"], "batch_size must be an integer >= 1"),
        (["batch_size=0"], "batch_size must be an integer >= 1"),  # was ignored (eval batch size 100)
        (["trainer.limit_test_batches=0"], "trainer.limit_test_batches=0 runs no test batch"),
        (["trainer.accelerator=gpu"], "no CUDA GPU is visible"),
        (["data_root=/no/such/folder"], "data_root=/no/such/folder is not a folder"),
    ],
)
def test_bad_evaluate_option_is_one_line_error(
    options: list[str], message: str, dense_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import importlib

    if "accelerator=gpu" in options[0] and torch.cuda.is_available():
        pytest.skip("a GPU is visible: accelerator=gpu is valid here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={dense_run / 'checkpoints' / 'last.ckpt'}", *options])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module("lightning_sparse_mtl.evaluate").main()
    assert exit_.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert list(tmp_path.iterdir()) == []


def test_data_root_for_a_built_in_dataset_is_one_line_error(dense_run: Path, tmp_path: Path) -> None:
    """The digits dataset reads no folder: data_root is refused by name (it used to be a TypeError traceback)."""
    from lightning_sparse_mtl.core.errors import UserError

    with pytest.raises(UserError, match=r"dataset \(DigitScenes\) reads no data folder .* drop data_root"):
        evaluate(str(dense_run / "checkpoints" / "last.ckpt"), data_root=str(tmp_path))
    with pytest.raises(UserError, match="reads no data folder"):
        prune_checkpoint(str(dense_run / "checkpoints" / "last.ckpt"), str(tmp_path / "p.pt"), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_wrong_kind_of_model_file_is_named(tmp_path: Path) -> None:
    """A pruned model given to prune, an export given to evaluate: the message says what the file is."""
    from lightning_sparse_mtl.core.errors import UserError
    from lightning_sparse_mtl.runs.checkpoints import PRUNED_FORMAT

    pruned = tmp_path / "pruned.pt"
    torch.save({"format": PRUNED_FORMAT, "config": {}, "state_dict": {}}, pruned)
    with pytest.raises(UserError, match="is already a pruned model; pass the training checkpoint"):
        prune_checkpoint(str(pruned), str(tmp_path / "out.pt"))
    for suffix, loader in ((".onnx", "onnxruntime.InferenceSession"), (".pt2", "torch.export.load")):
        export = tmp_path / f"pruned{suffix}"
        export.write_bytes(b"\x08\x07")
        with pytest.raises(UserError, match=f"is a deployment export \\(load it with {loader}"):
            evaluate(str(export))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.onnx", "pruned.pt", "pruned.pt2"]


OUTPUTS = ("pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx", "results.json")


@pytest.fixture(scope="module")
def pruned_run(dense_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse run pruned once with every export: the earlier outputs a killed prune must leave alone."""
    run = tmp_path_factory.mktemp("pruned") / "run"
    prune_checkpoint(str(sparsify_checkpoint(dense_run, run)), repeats=1, batch_sizes=(1,), min_run_time=0.01)
    return run


# The prune under test, held at its commit point: every output staged, none published. The signal then arrives at
# a known moment (a poll for the first staged file raced the prune's own commit on a loaded host: the signal came
# after the commit and the new set was, correctly, published).
HELD_PRUNE = """
import os, runpy, signal, time
from pathlib import Path
from lightning_sparse_mtl.deploy import publish

signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises, however pytest was started

def held(self, finals):
    flag = Path(os.environ["HELD_AT_COMMIT"])
    flag.with_suffix(".tmp").write_text(",".join(sorted(p.name for p in self.dir.iterdir())))
    os.replace(flag.with_suffix(".tmp"), flag)  # the test never reads a half-written flag
    time.sleep(600)

publish.Staging.commit = held
runpy.run_module("lightning_sparse_mtl.prune", run_name="__main__", alter_sys=True)
"""


def changed_outputs(run: Path, before: dict[str, bytes]) -> list[str]:
    """The outputs whose bytes differ from ``before`` (names only: a diff of megabytes is no failure message)."""
    return [n for n in OUTPUTS if not (run / n).is_file() or (run / n).read_bytes() != before[n]]


@pytest.mark.slow  # a real prune process (~1 min on 2 busy cores)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_prune_stopped_before_commit_keeps_earlier_outputs(sig: int, pruned_run: Path, tmp_path: Path) -> None:
    """A prune stopped (SIGKILL, Ctrl-C) with every output staged but not yet published leaves the earlier prune's
    five outputs byte for byte; Ctrl-C is one line (exit 130); a killed prune's staging folder goes at the next
    prune. (The signal arrives in Python code; a Ctrl-C inside a C call surfaces when the call returns, before the
    commit point, which is Python too.)"""
    from lightning_sparse_mtl.deploy.publish import STAGING_PREFIX, recover

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    before = {n: (run / n).read_bytes() for n in OUTPUTS}
    flag, err_path = tmp_path / "held", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "HELD_AT_COMMIT": str(flag)}  # fmt: skip
    args = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "batch_sizes=[1,8]", "repeats=3", "threads=1"]
    with err_path.open("w") as err_file:  # a file, not a pipe: the child never blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-c", HELD_PRUNE, *args], env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=err_file)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not flag.is_file():
            assert proc.poll() is None, err_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "the prune did not reach its commit point in 300 s"
            time.sleep(0.05)
        assert set(flag.read_text().split(",")) == set(OUTPUTS)  # all five staged when the signal comes
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    err = err_path.read_text()
    assert changed_outputs(run, before) == []
    if sig == signal.SIGINT:
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 130 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
        assert errors[0].startswith("error: prune interrupted:") and not list(run.glob(f"{STAGING_PREFIX}*"))
    else:
        assert proc.returncode == -signal.SIGKILL and len(list(run.glob(f"{STAGING_PREFIX}*"))) == 1
        recover(run)  # what the next prune into this folder does first
        assert not list(run.glob(f"{STAGING_PREFIX}*")) and changed_outputs(run, before) == []
