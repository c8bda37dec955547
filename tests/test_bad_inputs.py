"""Bad inputs of issue 23 (classes 2 and 4): one ``error:`` line, exit 2, nothing written; or the right behaviour."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import SHORT, TINY, run_module
from omegaconf import OmegaConf, open_dict
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.runs.run_dir import RunGuard
from lightning_sparse_mtl.sparsity.controller import GroupSparsity

CLUSTER_VARS = ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "LSB_JOBID", "KUBERNETES_PORT",
                "NODE_RANK", "MASTER_ADDR")  # fmt: skip

REFUSED = [
    (["model.normalize=nope"], "model.normalize must be auto, none, imagenet"),
    (["model.normalize={mean: [a, b, c], std: [1, 1, 1]}"], "model.normalize needs mean"),
    (["model.output_stride=8.0"], "model.output_stride must be one of 8, 16, 32; got 8.0"),
    (["+model.foo=1"], "unknown model option 'foo'"),
    (["+weighting.foo=1"], "unknown weighting option 'foo'; valid: name"),
    (["weighting=dwa", "+weighting.temp=2"], "unknown weighting option 'temp'; valid: name, temperature"),
    (["sparsity.target=0.5", "sparsity.target_lambda_init=abc"], "sparsity.target_lambda_init must be a finite"),
    (["sparsity.target=0.5", "sparsity.max_layer_sparsity=abc"], "sparsity.max_layer_sparsity must be a finite"),
    (["sparsity.target=0.5", "sparsity.target_every=1.5"], "sparsity.target_every must be an integer"),
    (["baselines={test/seg/miou: 0}"], "baseline test/seg/miou is 0"),
    (["trainer.num_nodes=2"], "trainer.num_nodes=2 but no cluster starts the other nodes"),
    (["trainer.precision=bf16-true", "lambda=1e-4"], "trainer.precision=bf16-true with lambda > 0"),
    (["trainer.precision=16-true", "sparsity.target=0.5"], "use trainer.precision=16-mixed"),
    (["data.dataset.cards=[4,2]"], "data.dataset.cards must be [min, max]"),
    (["data.dataset.seed=-1"], "data.dataset.seed must be an integer >= 0"),
    (["data.splits.train=5"], "data.splits.train must map option names to values, got 5"),
]

# The class fix for unknown keys and wrong types: every config group, both kinds, one line before the run dir.
GROUPS = {  # group: (a wrong-typed value, the message naming it)
    "model": ("model.head_channels=abc", "model.head_channels must be an integer"),
    "weighting": ("weighting.name=3", "unknown weighting 3"),
    "sparsity": ("sparsity.warmup_epochs=abc", "sparsity.warmup_epochs must be an integer"),
    "data": ("data.batch_size=abc", "data.batch_size must be an integer"),
    "data.dataset": ("data.dataset.image_size=abc", "data.dataset.image_size must be an integer"),
    "data.splits.train": ("data.splits.train.num_scenes=abc", "data.splits.train.num_scenes must be an integer"),
    "trainer": ("trainer.max_epochs=abc", "trainer.max_epochs must be an integer"),
    "optimizer": ("optimizer.lr=abc", "optimizer.lr must be a finite number"),
    "scheduler": ("scheduler.T_max=abc", "scheduler.T_max must be an integer"),
    "prune": ("prune.round_to=abc", "prune.round_to must be an integer"),
    "callbacks.model_checkpoint": ("callbacks.model_checkpoint._target_=3", "must be a dotted import path"),
    "logger.csv": ("logger.csv._target_=lightning_sparse_mtl.nope.Logger", "cannot be imported"),
}
REFUSED += [([f"+{group}.zzz=1"], "'zzz'") for group in GROUPS] + [([bad], msg) for bad, msg in GROUPS.values()]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_refused_before_the_run_dir_exists(overrides, message, train_cfg, tmp_path, monkeypatch, capsys) -> None:
    """The Hydra callback that runs before Hydra writes anything refuses each in one line; no run dir appears."""
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    cfg = train_cfg(*overrides)
    run_dir = tmp_path / "refused"
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.run.dir = str(run_dir)
    with pytest.raises(SystemExit) as exit_:
        RunGuard().on_run_start(cfg)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not run_dir.exists()


def test_unknown_model_key_from_the_command_line_is_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_module("lightning_sparse_mtl.train", *TINY, f"hydra.run.dir={run_dir}", "+model.foo=1")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "unknown model option 'foo'" in errors[0] and not run_dir.exists()


def test_evaluate_refuses_num_nodes_without_a_cluster(tmp_path: Path, monkeypatch, capsys) -> None:
    from lightning_sparse_mtl import evaluate

    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"never read")
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={ckpt}", "trainer.num_nodes=2"])
    with pytest.raises(SystemExit) as exit_:
        evaluate.main()
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "trainer.num_nodes=2" in errors[0], errors


@pytest.fixture(scope="module")
def dense_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short run of ``sparsity=none lambda=1e-3`` (dense), shared by the tests below."""
    import os

    from conftest import compose_train_cfg

    from lightning_sparse_mtl.train import train

    os.environ.setdefault("LSMTL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    return train(compose_train_cfg(tmp_path_factory.mktemp("dense"), ["sparsity=none", "lambda=1e-3", *SHORT]))


def test_dense_preset_records_lambda_zero(dense_results: dict) -> None:
    """``sparsity=none lambda=1e-3`` trains dense: results.json says lambda 0 (the report calls it dense)."""
    assert dense_results["lambda"] == 0.0 and dense_results["sparsity/group_sparsity"] == 0.0
    run_dir = Path(dense_results["run_dir"])
    assert json.loads((run_dir / "results.json").read_text())["lambda"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.val_check_interval=10"], "trainer.val_check_interval=10 is more than the 4 train batches"),
        (["trainer.limit_test_batches=0.5"], "trainer.limit_test_batches=0.5 of the 1 test batches is 0 batches"),
        (["trainer.limit_val_batches=0.5"], "trainer.limit_val_batches=0.5 of the 1 val batches is 0 batches"),
    ],
)
def test_batch_limits_that_round_to_nothing_are_refused_before_training(overrides, message, train_cfg) -> None:
    from lightning_sparse_mtl.train import train

    cfg = train_cfg(*overrides)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not (Path(cfg.hydra.runtime.output_dir) / "checkpoints").exists()


def test_evaluate_refuses_a_test_fraction_of_no_batch(dense_results: dict) -> None:
    from lightning_sparse_mtl.evaluate import evaluate

    with pytest.raises(UserError, match="trainer.limit_test_batches=0.5 of the 1 test batches"):
        evaluate(dense_results["ckpt_path"], trainer_kwargs={"limit_test_batches": 0.5})


def test_checkpoint_whose_config_is_not_a_model_of_this_package(dense_results: dict, tmp_path: Path) -> None:
    from lightning_sparse_mtl.prune import prune_checkpoint
    from lightning_sparse_mtl.runs.checkpoints import load_module, save_pruned

    ckpt = torch.load(dense_results["ckpt_path"], weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["model"] = {"encoder": "resnet18", "layers": 12}  # another project's model
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=r"other\.ckpt: its config does not describe a model.*layers"):
        prune_checkpoint(str(tmp_path / "other.ckpt"))
    module = load_module(dense_results["ckpt_path"])
    path = save_pruned(tmp_path / "pruned.pt", module.net, module.cfg, {})
    obj = torch.load(path, weights_only=True)
    del obj["config"]
    torch.save(obj, path)
    from lightning_sparse_mtl.evaluate import evaluate

    with pytest.raises(UserError, match="holds no model config"):
        evaluate(str(path))


@pytest.mark.parametrize("entry", ["prune", "evaluate"])
def test_checkpoint_whose_config_belongs_to_another_model(entry: str, dense_results: dict, tmp_path: Path) -> None:
    """A config of this package that does not fit the weights (edited, or from another run): one line saying which
    tensor differs and how (it was Lightning's multi-line load_state_dict report, cut to its first line)."""
    import importlib

    ckpt = torch.load(dense_results["ckpt_path"], weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["model"]["head_channels"] = 32  # the run's heads have 16
    torch.save(ckpt, tmp_path / "edited.ckpt")
    run = getattr(importlib.import_module(f"lightning_sparse_mtl.{entry}"), f"{entry}_checkpoint" if entry ==
                  "prune" else "evaluate")  # fmt: skip
    with pytest.raises(UserError) as err:
        run(str(tmp_path / "edited.ckpt"))
    assert re.search(r"edited\.ckpt does not match the model its config describes \(\d+ tensors differ, e\.g\. "
                     r"net\.heads\.\w+\.block\.0\.weight: \[16, \d+, 3, 3\] in the file, \[32, \d+, 3, 3\] in the "
                     r"model\): its config was edited", str(err.value)), str(err.value)  # fmt: skip
    assert "\n" not in str(err.value) and sorted(p.name for p in tmp_path.iterdir()) == ["edited.ckpt"]


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))


def test_two_group_sparsity_on_one_optimizer_is_refused() -> None:
    net = small_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    first = GroupSparsity.from_module(net, 1e-3).attach(opt)
    second = GroupSparsity.from_module(net, 1e-3)
    with pytest.raises(UserError, match="already has a GroupSparsity attached"):
        second.attach(opt)
    first.attach(opt)  # re-attaching the same one replaces its own hooks
    first.detach()
    second.attach(opt)  # once the first is detached, another may attach
    assert second.attached and not first.attached


HYDRA_ERRORS = [
    ("train", "trainer.foo=1", "Could not override 'trainer.foo'"),
    ("train", "model=nope", "Could not find 'model/nope' Available options in 'model': resnet18"),
    ("train", "tasks=[ség]", "LexerNoViableAltException"),
    ("train", "callbacks=null", "Config group override must be a string or a list"),
    ("evaluate", "trainer.foo=1", "Key 'foo' not in 'TrainerConf'"),
]


@pytest.mark.slow  # one real process per case (~7 s each): in `make test-slow`, which CI runs too
@pytest.mark.parametrize(("entry", "override", "message"), HYDRA_ERRORS)
def test_config_that_does_not_compose_is_one_line(entry: str, override: str, message: str, tmp_path: Path) -> None:
    """Hydra's composition and override-parsing errors end in the same one-line handler (exit 2, no traceback)."""
    run_dir = tmp_path / "run"
    proc = run_module(f"lightning_sparse_mtl.{entry}", override, f"hydra.run.dir={run_dir}", "ckpt_path=/nonexistent")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr and not run_dir.exists()


@pytest.mark.parametrize("override", ["tasks=[ség]", "tasks=[seg"])
def test_an_override_that_does_not_parse_says_how_to_write_it(override: str, tmp_path: Path, monkeypatch, capsys):
    """A unicode task name unquoted (or a list not closed): Hydra's lexer error, one line, and how to write it."""
    from lightning_sparse_mtl import train as train_mod

    monkeypatch.setattr(sys, "argv", ["train", override, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        train_mod.main()
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "the override does not parse" in errors[0], errors
    assert "tasks=['ség']" in errors[0] and not (tmp_path / "run").exists()


def test_a_crash_inside_the_task_keeps_its_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    from lightning_sparse_mtl import train as train_mod

    def crash(cfg):
        raise RuntimeError("a bug, not a bad input")

    monkeypatch.setattr(train_mod, "train", crash)
    monkeypatch.setattr(sys, "argv", ["train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        train_mod.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "RuntimeError: a bug, not a bad input" in err and "Traceback" in err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lambda=1e-2", "trainer.max_epochs=2"], "different training config (lambda=0.001 there, 0.01 here)"),
        (["optimizer.lr=0.1", "trainer.max_epochs=2"], "different training config (optimizer.lr=0.002 there"),
        (["model.head=aspp", "trainer.max_epochs=2"], "different model config (model.head='conv' there"),
        ([], "already trained 1 epochs (trainer.max_epochs=1): nothing to train"),
    ],
)
def test_resume_that_would_lie_is_refused_before_anything_is_written(overrides, message, dense_results) -> None:
    """A finished run resumed with another lambda, lr or model, or with no epoch left, is refused; its files stay."""
    from conftest import compose_train_cfg

    from lightning_sparse_mtl.train import train

    run_dir = Path(dense_results["run_dir"])
    before = snapshot(run_dir)
    lam = [] if any(o.startswith("lambda=") for o in overrides) else ["lambda=1e-3"]  # else the original's
    ckpt = f"ckpt_path={dense_results['ckpt_path']}"
    cfg = compose_train_cfg(run_dir, ["sparsity=none", *lam, *SHORT, *overrides, ckpt])
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg)
    assert snapshot(run_dir) == before


def test_a_run_stopped_after_its_last_step_is_finished_by_resuming_it_in_place(dense_results, tmp_path) -> None:
    """All epochs trained but no results.json (killed during test, prune or export): resuming in its own dir, as the
    interrupted message says, takes no step, tests and writes results.json; the checkpoints stay byte for byte."""
    import shutil

    from conftest import compose_train_cfg

    from lightning_sparse_mtl.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(Path(dense_results["run_dir"]), run_dir)
    (run_dir / "results.json").unlink()
    ckpt = next(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("epoch"))
    before = snapshot(run_dir / "checkpoints")
    results = train(compose_train_cfg(run_dir, ["sparsity=none", "lambda=1e-3", *SHORT, f"ckpt_path={ckpt}"]))
    assert json.loads((run_dir / "results.json").read_text())["test/seg/miou"] == results["test/seg/miou"]
    assert results["test/seg/miou"] == pytest.approx(dense_results["test/seg/miou"], abs=1e-6)  # the same weights
    assert snapshot(run_dir / "checkpoints") == before


@pytest.mark.slow  # two real training processes (~26 s): in `make test-slow`, which CI runs too
def test_cli_resume_keeps_the_runs_own_hydra_config(tmp_path: Path) -> None:
    """A resume (refused late or done) writes its config beside, never over, the run's .hydra/ files."""
    run_dir = tmp_path / "run"
    args = [*TINY, *SHORT, f"hydra.run.dir={run_dir}"]
    assert run_module("lightning_sparse_mtl.train", *args).returncode == 0
    original = (run_dir / ".hydra" / "overrides.yaml").read_text()
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    late = run_module("lightning_sparse_mtl.train", *args, "trainer.max_epochs=2", "data.eval_batch_size=64",
                      "trainer.limit_test_batches=0.5", ckpt)  # fmt: skip  # refused after .hydra/ is written
    assert late.returncode == 2 and "limit_test_batches=0.5" in late.stderr, late.stderr[-2000:]
    done = run_module("lightning_sparse_mtl.train", *args, "trainer.max_epochs=2", ckpt)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == original
    resumed = sorted((run_dir / ".hydra").glob("resumed-*/overrides.yaml"))
    assert len(resumed) == 2 and "trainer.max_epochs=2" in resumed[-1].read_text()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch000.ckpt", "epoch001.ckpt", "last.ckpt"] or names == ["epoch001.ckpt", "last.ckpt"], names


def test_empty_run_dir_is_refused(train_cfg, tmp_path: Path, monkeypatch, capsys) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = train_cfg()
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.run.dir = ""
    with pytest.raises(SystemExit) as exit_:
        RunGuard().on_run_start(cfg)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "hydra.run.dir=''" in errors[0], errors
    assert list(cwd.iterdir()) == []


def test_checkpoints_are_never_half_written(train_cfg, tmp_path: Path) -> None:
    from lightning_sparse_mtl.train import build_trainer
    from lightning_sparse_mtl.training.checkpoint_io import AtomicCheckpointIO

    assert isinstance(build_trainer(train_cfg(), tmp_path).strategy.checkpoint_io, AtomicCheckpointIO)
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "epoch000.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - the write fails part-way (an object torch.save cannot pickle)
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10**6)}, "bad": lambda: None}, path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["epoch000.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


@pytest.mark.parametrize("tail", ["x" * 300, f"{'y' * 300}/sub"])
def test_over_long_run_dir_name_is_one_line(tail: str, train_cfg, tmp_path: Path, capsys) -> None:
    cfg = train_cfg()
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.run.dir = str(tmp_path / tail)
    with pytest.raises(SystemExit) as exit_:
        RunGuard().on_run_start(cfg)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "choose another" in errors[0], errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.head=aspp", "data.batch_size=1"], "needs >= 2 images per batch"),
        (["optimizer._target_=torch.optim.SparseAdam", "~optimizer.weight_decay"], "SparseAdam needs sparse gradients"),
    ],
)
def test_inputs_that_fail_at_the_first_step_are_refused_now(overrides, message, train_cfg) -> None:
    from lightning_sparse_mtl.runs.validate_train import validate_train_config

    with pytest.raises(UserError, match=message):
        validate_train_config(train_cfg(*overrides))


# ------------------------------------------------------------------ class 3: bad data is refused, naming the file
def _dup(root: Path) -> None:
    (root / "val/image/01.npy").write_bytes((root / "val/image/1.npy").read_bytes())


BAD_DATA = {
    "01.npy beside 1.npy": (_dup, "val/image/01.npy: name it 1.npy"),
    "class id 2.5": (lambda r: np.save(r / "val/label/5.npy", np.full((36, 48), 2.5, np.float32)), "class id 2.5"),
    "class id -3": (lambda r: np.save(r / "val/label/2.npy", np.full((36, 48), -3.0, np.float32)), "class id -3"),
    "negative depth": (
        lambda r: np.save(r / "val/depth/3.npy", np.full((36, 48, 1), -2.0, np.float32)),
        "val/depth/3.npy has depth -2 < 0",
    ),
    "normals of length 5": (
        lambda r: np.save(r / "val/normal/1.npy", np.full((36, 48, 3), 5 / np.sqrt(3), np.float32)),
        "val/normal/1.npy has a normal of length 5",
    ),
    "0x0 image": (lambda r: np.save(r / "val/image/4.npy", np.zeros((0, 0, 3), np.float32)), "is empty (0x0"),
}


@pytest.mark.parametrize("defect", list(BAD_DATA))
def test_bad_data_is_refused(defect: str, tmp_path: Path) -> None:
    from helpers.datasets import make_nyuv2

    from lightning_sparse_mtl.data.nyuv2 import NYUv2

    root = make_nyuv2(tmp_path / "nyu", n_train=4, n_val=6)
    NYUv2("test", root)  # intact: fine
    corrupt, message = BAD_DATA[defect]
    corrupt(root)
    with pytest.raises(UserError, match=re.escape(message)):
        NYUv2("test", root)


def test_ctrl_c_during_prune_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from lightning_sparse_mtl import prune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(prune, "prune_checkpoint", interrupted)
    monkeypatch.setattr(sys, "argv", ["prune", f"ckpt_path={ckpt}"])
    with pytest.raises(SystemExit) as exit_:
        prune.main()
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 130 and len(errors) == 1 and "prune interrupted" in errors[0], err
    assert "Traceback" not in err


class _BadFile(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        raise UserError(f"cannot read image val/{i}.jpg: truncated; expected a readable .jpg file")


def test_bad_file_found_in_a_dataloader_worker_is_one_line(capsys) -> None:
    """num_workers > 0: torch wraps the worker's UserError in its traceback; the handler prints the message."""
    from lightning_sparse_mtl.core.errors import exit_on_user_error

    with pytest.raises(SystemExit) as exit_:
        exit_on_user_error(lambda: list(torch.utils.data.DataLoader(_BadFile(), num_workers=1)))
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err == "error: cannot read image val/0.jpg: truncated; expected a readable .jpg file\n"


@pytest.mark.parametrize("before", ["absent", "empty", "holds a file"])
def test_a_run_refused_after_its_run_dir_was_claimed_leaves_nothing(before: str, tmp_path: Path) -> None:
    """Refusals that need the data (batch counts, bad files) come after Hydra made the run dir and wrote .hydra/,
    the log and the lock: the run dir goes again when it was made for this run (with the parents made with it) and
    is emptied again when it was empty; a folder that held files is left as it is (Hydra's files included)."""
    from conftest import compose_train_cfg

    from lightning_sparse_mtl.train import train

    parent = tmp_path / "outputs" / "day"
    run_dir = parent / "run"
    if before != "absent":
        run_dir.mkdir(parents=True)
    if before == "holds a file":
        (run_dir / "notes.txt").write_text("mine")
    cfg = compose_train_cfg(run_dir, ["trainer.val_check_interval=10"])
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.run.dir = str(run_dir)
    RunGuard().on_run_start(cfg)  # checks the config, claims (makes) the run dir
    (run_dir / ".hydra").mkdir()  # what Hydra writes next
    (run_dir / "train.log").write_text("log")
    with pytest.raises(UserError, match="trainer.val_check_interval=10 is more than the 4 train batches"):
        train(cfg)
    if before == "absent":
        assert not (tmp_path / "outputs").exists()
    elif before == "empty":
        assert list(run_dir.iterdir()) == []
    else:
        assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "train.log").exists()
