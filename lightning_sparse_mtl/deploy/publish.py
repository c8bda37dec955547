"""A prune's outputs published as one set: written into a staging folder beside them, moved into place at the end.

``pruned.pt``, ``pruned.pt2``, ``pruned.onnx``, ``dense.onnx`` and the run's ``results.json`` are all written into
``<folder>/.prune-staging-<pid>-<random>/``. Once every file there is complete, the folder's manifest
(``publish.json``: output name -> staged file, or null to remove an output of an earlier prune that this one did not
write) is written atomically: that is the commit point. Then the files are moved into place (``os.replace``, same
filesystem) and the staging folder removed.

A prune killed (SIGKILL, power loss) or interrupted (Ctrl-C) before its commit point leaves the earlier outputs byte
for byte; the next prune into the same folder removes the dead staging folder. One killed while moving its files
(a window of a few renames) left a manifest: the next prune finishes those moves first (:func:`recover`), so the
folder never keeps a mix of two prunes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from lightning_sparse_mtl.core.atomic_io import atomic_write_text

STAGING_PREFIX = ".prune-staging-"
MANIFEST = "publish.json"


class Staging:
    """A staging folder in ``folder`` (the outputs' folder); :meth:`path` gives where to write an output."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.dir = Path(tempfile.mkdtemp(dir=folder, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        self.committed = False

    def path(self, final: Path) -> Path:
        """The staged file for the output ``final`` (which must lie in this folder)."""
        if final.resolve().parent != self.folder.resolve():
            raise ValueError(f"{final} is not in {self.folder}: outputs published together share one folder")
        return self.dir / final.name

    def commit(self, finals: Mapping[Path, bool]) -> None:
        """Publish: each output in ``finals`` is replaced by its staged file (True) or removed (False)."""
        names = {}
        for final, written in finals.items():
            staged = self.path(final)
            if written:
                if not staged.is_file():
                    raise FileNotFoundError(f"{final.name} was not staged")
                _fsync(staged)
            names[final.name] = staged.name if written else None
        atomic_write_text(self.dir / MANIFEST, json.dumps(names, indent=1) + "\n")  # the commit point
        self.committed = True
        _apply(self.dir, announce=True)

    def close(self) -> None:
        """After a failure: a committed folder is finished (its moves are the new set), any other one removed."""
        if not self.dir.exists():
            return
        if (self.dir / MANIFEST).is_file():
            _apply(self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def staging(folder: Path) -> Iterator[Staging]:
    """A :class:`Staging` in ``folder`` (dead prunes' staging folders there recovered first); closed on exit."""
    recover(folder)
    stage = Staging(folder)
    try:
        yield stage
    finally:
        stage.close()


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _apply(stage: Path, announce: bool = False) -> None:
    """Carry out a committed staging folder's moves (idempotent: a move already done is skipped), then remove it."""
    manifest = json.loads((stage / MANIFEST).read_text())
    for name, staged in manifest.items():
        final = stage.parent / name
        if staged is None:
            if final.is_file():
                final.unlink()
                if announce:
                    print(f"removed {final}: an output of an earlier prune that this one did not write")
        elif (stage / staged).is_file():
            os.replace(stage / staged, final)
    shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(folder: Path) -> None:
    """Finish the moves of a prune killed while publishing (manifest written); remove the staging folders of prunes
    killed before that. Staging folders of a prune still running (another live process) are left alone."""
    if not folder.is_dir():
        return
    for stage in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        pid = stage.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not stage.is_dir() or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if (stage / MANIFEST).is_file():
            _apply(stage)
            print(f"finished publishing the outputs of a prune killed while moving them into place ({stage.name})")
        else:
            shutil.rmtree(stage, ignore_errors=True)
