"""Files are data, never code (issue 23): crafted pickles and stored configs given to every loader and entry point.

Each payload would create a marker file when unpickled or instantiated; every case asserts the marker is absent.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import SHORT, TINY, run_module

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.safe_load import read_torch_file
from lightning_sparse_mtl.core.stored_config import is_known_target, known_targets
from lightning_sparse_mtl.models.pretrained import read_state_dict
from lightning_sparse_mtl.reporting.channel_usage import kept_channels
from lightning_sparse_mtl.runs.checkpoints import (
    LEGACY_PRUNED_FORMAT,
    check_resume,
    load_any,
    load_module,
    load_pruned,
    save_pruned,
)
from lightning_sparse_mtl.runs.validate_train import validate_train_config


class Payload:
    """Unpickling runs ``exec``: creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def exec_target(marker: Path) -> dict:
    """A config object whose instantiation creates ``marker``."""
    return {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').close()"]}


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short dense training run shared by the tests of this file."""
    from conftest import short_dense_run

    return short_dense_run(tmp_path_factory, SHORT)


@pytest.fixture(scope="module")
def ckpt(dense_run: Path) -> dict:
    return torch.load(dense_run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def pruned_file(dense_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legitimate pruned.pt (the dense net saved in the pruned format: no channel removed)."""
    module = load_module(dense_run / "checkpoints" / "last.ckpt")
    return save_pruned(tmp_path_factory.mktemp("pruned") / "pruned.pt", module.net, module.cfg, {})


def evil_files(folder: Path, ckpt: dict, marker: Path) -> dict[str, Path]:
    """Crafted files: a bare pickle payload, a real checkpoint carrying one, the legacy torch format, a pruned.pt."""
    real = copy.deepcopy(ckpt)
    real["callbacks"]["evil"] = Payload(marker)
    files = {
        "bare.ckpt": {"state_dict": {}, "x": Payload(marker)},
        "real.ckpt": real,
        "pruned.pt": {"format": "lightning_sparse_mtl.pruned/2", "config": Payload(marker), "report": {}},
    }
    for name, obj in files.items():
        torch.save(obj, folder / name)
    torch.save({"x": Payload(marker)}, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return {name: folder / name for name in [*files, "legacy.pt"]}


LOADERS = {
    "load_module": load_module,
    "load_pruned": load_pruned,
    "load_any": load_any,
    "check_resume": "check_resume",
    "kept_channels": lambda p: kept_channels(p, []),
    "read_state_dict": lambda p: read_state_dict(str(p)),
    "read_torch_file": read_torch_file,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_crafted_pickle(loader: str, dense_run: Path, ckpt: dict, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    load = LOADERS[loader]
    if load == "check_resume":
        module = load_module(dense_run / "checkpoints" / "last.ckpt")
        load = lambda p: check_resume(module, p)  # noqa: E731
    for name, path in evil_files(tmp_path, ckpt, marker).items():
        with pytest.raises(UserError) as err:
            load(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, message
        assert "not plain data" in message and "builtins.exec" in message, (name, message)
        assert not marker.exists(), (loader, name)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def test_entry_points_refuse_crafted_pickles(dense_run: Path, ckpt: dict, tmp_path: Path) -> None:
    """Real processes: prune and evaluate (.ckpt and pruned.pt) and a train resume; exit 2, one line, no marker,
    and the refused resume creates no run directory."""
    marker = tmp_path / "MARKER"
    files = evil_files(tmp_path, ckpt, marker)
    cases = [
        ("prune", files["real.ckpt"], []),
        ("evaluate", files["real.ckpt"], []),
        ("evaluate", files["pruned.pt"], []),
        ("train", files["real.ckpt"], [*TINY, *SHORT, f"hydra.run.dir={tmp_path / 'resumed'}"]),
    ]
    for entry, path, extra in cases:
        line = one_error_line(run_module(f"lightning_sparse_mtl.{entry}", f"ckpt_path={path}", *extra))
        assert str(path) in line and "builtins.exec" in line and "trust_checkpoint=true" in line, (entry, line)
        assert not marker.exists(), entry
    assert not (tmp_path / "resumed").exists()


def foreign_pruned(pruned_file: Path, folder: Path, where: str, node: dict) -> Path:
    """A copy of ``pruned_file`` (plain data) whose stored config holds ``node`` at the dotted place ``where``."""
    obj = torch.load(pruned_file, weights_only=True)
    parent = obj["config"]
    *head, last = where.split(".")
    for key in head:
        parent = parent.setdefault(key, {})
    parent[last] = node
    torch.save(obj, folder / "foreign.pt")
    return folder / "foreign.pt"


def test_pruned_file_with_nested_foreign_target_is_refused(pruned_file: Path, tmp_path: Path, monkeypatch, capsys):
    marker = tmp_path / "MARKER"
    path = foreign_pruned(pruned_file, tmp_path, "data.splits.test", {"num_scenes": 8, "x": exec_target(marker)})
    assert torch.load(path, weights_only=True)  # plain data: only the config check stands in the way
    for load in (load_pruned, load_any):
        with pytest.raises(UserError, match=r"data\.splits\.test\.x\._target_ is 'builtins\.exec'"):
            load(path)
    from lightning_sparse_mtl import evaluate

    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={path}"])
    with pytest.raises(SystemExit) as exit_:
        evaluate.main()
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and str(path) in errors[0], errors
    assert not marker.exists()


def test_checkpoint_with_foreign_target_is_refused_by_prune(dense_run: Path, ckpt: dict, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = copy.deepcopy(ckpt)
    bad["hyper_parameters"]["cfg"]["data"]["dataset"] = exec_target(marker)
    torch.save(bad, tmp_path / "last.ckpt")
    from lightning_sparse_mtl.prune import prune_checkpoint

    with pytest.raises(UserError, match=r"data\.dataset\._target_ is 'builtins\.exec'.*trust_checkpoint=true"):
        prune_checkpoint(str(tmp_path / "last.ckpt"))
    assert not marker.exists() and not (tmp_path / "pruned.pt").exists()


def test_trust_checkpoint_loads_legit_but_foreign_content(dense_run: Path, ckpt: dict, tmp_path: Path) -> None:
    """A pickled object outside the allow-list and a third-party optimizer in the stored config: refused by
    default (naming them), loaded with trust_checkpoint=true; evaluate then runs."""
    from lightning_sparse_mtl.evaluate import evaluate

    foreign = copy.deepcopy(ckpt)
    foreign["hyper_parameters"]["args"] = argparse.Namespace(lr=0.1)
    path = tmp_path / "foreign.ckpt"
    torch.save(foreign, path)
    with pytest.raises(UserError, match="argparse.Namespace"):
        load_module(path)
    module = load_module(path, trust=True)
    assert check_resume(module, path, trust=True)["global_step"] == ckpt["global_step"]

    foreign = copy.deepcopy(ckpt)
    foreign["hyper_parameters"]["cfg"]["optimizer"]["_target_"] = "third_party.optim.Lamb"
    torch.save(foreign, path)
    with pytest.raises(UserError, match=r"optimizer\._target_ is 'third_party\.optim\.Lamb'"):
        evaluate(str(path))
    metrics = evaluate(str(path), trainer_kwargs={"enable_progress_bar": False}, trust_checkpoint=True)
    assert "test/seg/miou" in metrics


def test_legacy_whole_module_file_needs_trust(tmp_path: Path) -> None:
    net = torch.nn.Conv2d(3, 4, 1)
    torch.save({"format": LEGACY_PRUNED_FORMAT, "model": net, "config": {}, "report": {}}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="torch.nn.modules.conv.Conv2d.*trust_checkpoint=true"):
        load_pruned(tmp_path / "old.pt")
    assert isinstance(load_pruned(tmp_path / "old.pt", trust=True)["model"], torch.nn.Conv2d)


NESTED = {
    "optimizer": ("optimizer.x", "optimizer takes plain values"),
    "scheduler": ("scheduler.x", "scheduler takes plain values"),
    "callbacks": ("callbacks.model_checkpoint.x", "nested in a callbacks entry"),
    "logger": ("logger.csv.x", "nested in a logger entry"),
}


@pytest.mark.parametrize("group", list(NESTED))
def test_nested_targets_on_the_command_line_are_refused_before_instantiation(group: str, train_cfg, tmp_path):
    from omegaconf import open_dict

    marker = tmp_path / "MARKER"
    where, message = NESTED[group]
    cfg = train_cfg()
    with open_dict(cfg):
        node = cfg
        for key in where.split(".")[:-1]:
            node = node[key]
        node.x = exec_target(marker)
    with pytest.raises(UserError, match=f"{where}._target_=builtins.exec: .*{message}"):
        validate_train_config(cfg)
    assert not marker.exists()


def test_nested_optimizer_target_from_the_cli_writes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker_dir"
    run_dir = tmp_path / "run"
    proc = run_module("lightning_sparse_mtl.train", *TINY, f"hydra.run.dir={run_dir}",
                      f"+optimizer.x={{_target_:os.makedirs,name:'{marker}'}}")  # fmt: skip
    assert "optimizer.x._target_=os.makedirs" in one_error_line(proc)
    assert not marker.exists() and not run_dir.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau", "steps on a monitored metric"),
        ("scheduler._target_=builtins.print", "is not a torch lr scheduler class"),
        ("trust_checkpoint=abc", "trust_checkpoint must be true or false"),
    ],
)
def test_scheduler_class_and_trust_flag_are_checked(override: str, message: str, train_cfg) -> None:
    with pytest.raises(UserError, match=message):
        validate_train_config(train_cfg(override))


def test_known_targets_cover_the_config_tree() -> None:
    targets = known_targets()
    assert "lightning_sparse_mtl.data.datamodule.MTLDataModule" in targets and "torch.optim.AdamW" in targets
    assert is_known_target("torch.optim.SGD") and is_known_target("torch.optim.lr_scheduler.OneCycleLR")
    for bad in ("os.system", "builtins.exec", "torch.load", "torch.optim.lr_scheduler.LambdaLR.__init__", 3, None):
        assert not is_known_target(bad), bad


def test_stored_interpolation_is_refused(pruned_file: Path, tmp_path: Path) -> None:
    """A saved config is resolved, so "${...}" in one (oc.env, oc.decode of an object) was planted."""
    path = foreign_pruned(pruned_file, tmp_path, "data.root", "${oc.decode:'{_target_: builtins.exec}'}")
    with pytest.raises(UserError, match=r"data\.root is the interpolation"):
        load_pruned(path)
    assert load_pruned(path, trust=True)["config"]["data"]["root"].startswith("${oc.decode")


@pytest.mark.parametrize("where", ["optimizer._target_", "optimizer.x", "scheduler._target_"])
def test_module_builds_only_torch_optimizers_from_its_config(where: str, ckpt: dict, tmp_path: Path) -> None:
    """Lightning's load_from_checkpoint skips our loaders; fitting the module it returns must not build a
    stored foreign object either (configure_optimizers checks first)."""
    from lightning_sparse_mtl.training.module import SparseMTLModule

    marker = tmp_path / "MARKER"
    cfg = copy.deepcopy(ckpt["hyper_parameters"]["cfg"])
    group, key = where.split(".")
    cfg[group][key] = "builtins.exec" if key == "_target_" else exec_target(marker)
    with pytest.raises(UserError, match=r"builtins\.exec"):
        SparseMTLModule(cfg).configure_optimizers()
    assert not marker.exists()
