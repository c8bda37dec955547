"""A prune's outputs are published as one set (deploy/publish.py): all of them or none, even across a kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_sparse_mtl.deploy.publish import MANIFEST, STAGING_PREFIX, Staging, recover, staging

NAMES = ("pruned.pt", "pruned.pt2", "pruned.onnx", "dense.onnx", "results.json")


def earlier_outputs(folder: Path) -> dict[str, bytes]:
    for name in NAMES:
        (folder / name).write_bytes(f"earlier {name}".encode())
    return {name: (folder / name).read_bytes() for name in NAMES}


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def stage_of(folder: Path, pid: int, committed: bool, written: tuple[str, ...]) -> Path:
    """A staging folder as a process ``pid`` left it: its files written, with or without its manifest."""
    stage = folder / f"{STAGING_PREFIX}{pid}-abc"
    stage.mkdir()
    for name in written:
        (stage / name).write_bytes(f"new {name}".encode())
    if committed:
        (stage / MANIFEST).write_text(json.dumps({n: (n if n in written else None) for n in NAMES}))
    return stage


def test_a_failure_before_the_commit_leaves_the_earlier_set(tmp_path: Path) -> None:
    before = earlier_outputs(tmp_path)
    with pytest.raises(KeyboardInterrupt), staging(tmp_path) as stage:
        for name in NAMES:
            stage.path(tmp_path / name).write_bytes(b"new, half written")
        raise KeyboardInterrupt  # Ctrl-C after every file was written, before the commit
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging folder left either


def test_commit_replaces_the_set_and_removes_outputs_it_did_not_write(tmp_path: Path) -> None:
    earlier_outputs(tmp_path)
    with staging(tmp_path) as stage:
        for name in ("pruned.pt", "results.json"):
            stage.path(tmp_path / name).write_bytes(b"new")
        stage.commit({tmp_path / n: n in ("pruned.pt", "results.json") for n in NAMES})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"pruned.pt": b"new", "results.json": b"new"}


def test_commit_refuses_a_missing_file_and_an_output_elsewhere(tmp_path: Path) -> None:
    before = earlier_outputs(tmp_path)
    with pytest.raises(FileNotFoundError, match="pruned.pt was not staged"), staging(tmp_path) as stage:
        stage.commit({tmp_path / "pruned.pt": True})
    with pytest.raises(ValueError, match="share one folder"), staging(tmp_path) as stage:
        stage.path(tmp_path / "sub" / "pruned.pt")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_recover_finishes_a_prune_killed_while_moving_its_files(tmp_path: Path) -> None:
    earlier_outputs(tmp_path)
    pid = dead_pid()
    stage = stage_of(tmp_path, pid, committed=True, written=("pruned.pt", "pruned.pt2", "results.json"))
    (stage / "pruned.pt").replace(tmp_path / "pruned.pt")  # killed after its first move
    recover(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert files == {n: f"new {n}".encode() for n in ("pruned.pt", "pruned.pt2", "results.json")}


def test_recover_removes_uncommitted_staging_and_leaves_a_live_prune_alone(tmp_path: Path) -> None:
    before = earlier_outputs(tmp_path)
    stage_of(tmp_path, dead_pid(), committed=False, written=NAMES)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            running = stage_of(tmp_path, live.pid, committed=True, written=NAMES)
            recover(tmp_path)
            assert running.is_dir() and all((tmp_path / n).read_bytes() == before[n] for n in NAMES)
        finally:
            live.kill()
    recover(tmp_path)  # its process is gone now: a committed set is published
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {n: f"new {n}".encode() for n in NAMES}


def test_staging_folder_is_beside_the_outputs(tmp_path: Path) -> None:
    stage = Staging(tmp_path / "out")
    assert stage.dir.parent == tmp_path / "out" and stage.dir.name.startswith(STAGING_PREFIX)
    stage.close()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name", ["dense.pt", "pruned.onnx", "model.pt2"])
def test_output_whose_files_would_collide_is_refused_before_any_work(name: str, tmp_path: Path) -> None:
    from lightning_sparse_mtl.core.errors import UserError
    from lightning_sparse_mtl.deploy.compact import prune_and_measure

    with pytest.raises(UserError, match=f"output={tmp_path / name} would write two of its files"):
        prune_and_measure(None, tmp_path / name)  # refused before the module is read
    assert list(tmp_path.iterdir()) == []
