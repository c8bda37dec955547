"""Run directories: refuse finished/foreign ones before anything is written, and claim them with a lock.

A run directory holds a finished run when it has ``results.json``; it may be written into again only by a resume
of *that* run (``ckpt_path`` inside it). A directory with checkpoints but no results (an interrupted run) may only
be resumed. The claim is an ``fcntl.flock`` on ``<run dir>/.lsmtl.lock`` held for the life of the training: a second
process into the same directory fails at once, and the kernel drops the lock when the holder dies (no stale locks).

:class:`RunGuard` is a Hydra callback: ``on_run_start`` runs before Hydra creates the run directory and writes
``.hydra/`` and the job log, so a refused run (bad config, finished or busy directory) leaves every file untouched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, read_write

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.validate import check_writable_dir

LOCK_NAME = ".lsmtl.lock"
_HELD: dict[Path, int] = {}  # resolved run dir -> open lock fd of this process
_CREATED: dict[Path, list[Path] | None] = {}  # run dir RunGuard saw absent (-> its absent parents) or empty (-> None)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_run_dir(run_dir: str | os.PathLike, ckpt_path: str | os.PathLike | None) -> None:
    """Refuse a finished run dir (unless resumed from its own checkpoint) and an interrupted one (unless resumed)."""
    run_dir = Path(run_dir)
    try:
        is_file = run_dir.exists() and not run_dir.is_dir()
    except OSError as err:  # e.g. a name longer than the filesystem allows
        raise UserError(
            f"run directory {run_dir} cannot be used ({err.strerror}); choose another hydra.run.dir"
        ) from None
    if is_file:
        raise UserError(f"run directory {run_dir} is a file; choose another hydra.run.dir")
    check_writable_dir(run_dir, "run directory")
    own = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "results.json").exists():
        if ckpt_path is None:
            raise UserError(f"{run_dir} already holds a finished run (results.json); choose another hydra.run.dir, "
                            f"or resume it with ckpt_path={own}")  # fmt: skip
        if not _inside(Path(ckpt_path), run_dir):
            raise UserError(f"{run_dir} holds a finished run and ckpt_path={ckpt_path} belongs to another run; "
                            f"a finished run can only be resumed from its own checkpoint ({own}): choose another "
                            "hydra.run.dir")  # fmt: skip
    elif ckpt_path is None and any((run_dir / "checkpoints").glob("*.ckpt")):
        raise UserError(f"{run_dir} holds checkpoints of an interrupted run; resume it with ckpt_path={own}, "
                        "or choose another hydra.run.dir")  # fmt: skip


def claim_run_dir(run_dir: str | os.PathLike) -> Path:
    """Lock ``run_dir`` for this process (idempotent); UserError when another process holds it."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"{run_dir} is in use by another training (pid {holder}); wait for it to end "
                        "or choose another hydra.run.dir") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[run_dir] = fd
    return run_dir


def release_run_dir(run_dir: str | os.PathLike) -> None:
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def discard_if_created(run_dir: str | os.PathLike) -> None:
    """Remove what a run refused before its first step wrote (Hydra's ``.hydra/``, the log, the lock) when its run
    dir was created for it, or was empty, so nothing is left behind. Parents created with it go too if nothing else
    is in them (``os.rmdir``: another run may share them). A run dir that held files before is never touched."""
    path = Path(run_dir).resolve()
    if path not in _CREATED:
        return
    parents = _CREATED.pop(path)
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    for folder in ([path] if parents is not None else []) + (parents or []):
        try:
            folder.rmdir()
        except OSError:
            break


def _fresh(path: Path) -> list[Path] | None | bool:
    """What a run into ``path`` creates: its absent parents (innermost first) when ``path`` is absent; None when it
    is an empty folder (emptied again on a refusal, kept); False when it holds files or cannot be read (never
    touched; check_run_dir says why)."""
    try:
        if path.exists():
            return None if path.is_dir() and not any(path.iterdir()) else False
        parents, parent = [], path.parent
        while not parent.exists() and parent != parent.parent:
            parents.append(parent)
            parent = parent.parent
    except OSError:  # e.g. a name longer than the filesystem allows
        return False
    return parents


def holds(run_dir: str | os.PathLike) -> bool:
    return Path(run_dir).resolve() in _HELD


def is_secondary_rank() -> bool:
    """True in a DDP process other than global rank 0 (Lightning's launcher re-runs the command for each rank;
    torchrun / SLURM set RANK / SLURM_PROCID): rank 0 checks and claims the run dir for all of them."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None:
            return value.strip() not in ("", "0")
    return False


def guard_run_dir(run_dir: str | os.PathLike, ckpt_path: str | None, cfg: Any = None) -> Path:
    """Check, claim, check again (another process may have finished it meanwhile). Secondary DDP ranks skip it.
    With the train ``cfg``, a resume (``ckpt_path``) is checked against its checkpoint before the claim."""
    if is_secondary_rank():
        return Path(run_dir)
    check_run_dir(run_dir, ckpt_path)
    if cfg is not None and ckpt_path:
        from lightning_sparse_mtl.runs.resume import check_resume_config

        check_resume_config(cfg, ckpt_path, bool(OmegaConf.select(cfg, "trust_checkpoint", default=False)), run_dir)
    already = holds(run_dir)
    path = claim_run_dir(run_dir)
    try:
        check_run_dir(run_dir, ckpt_path)
    except UserError:
        if not already:
            release_run_dir(run_dir)
        raise
    return path


def _fail(err: UserError) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class RunGuard(Callback):
    """Hydra callback: validate the config and claim the run dir before Hydra writes anything."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from lightning_sparse_mtl.runs.validate_train import validate_train_config

        try:
            validate_train_config(config)
            raw_dir = OmegaConf.select(config, "hydra.run.dir")
            if raw_dir is None or not str(raw_dir).strip():
                raise UserError(f"hydra.run.dir={raw_dir!r} would write the run into the current directory; give "
                                "a folder, e.g. hydra.run.dir=outputs/my_run")  # fmt: skip
            run_dir = Path(str(raw_dir))  # ${now:} is cached: the dir Hydra uses
            ckpt = OmegaConf.select(config, "ckpt_path")
            fresh = _fresh(Path(os.path.abspath(run_dir)))
            guard_run_dir(run_dir, ckpt, config)
            if fresh is not False:
                _CREATED[run_dir.resolve()] = fresh
            had_config = (run_dir / ".hydra").is_dir()  # the claim writes only the lock file
        except UserError as err:
            _fail(err)
        if ckpt and had_config:  # a resume keeps the run's own .hydra/ (config, overrides) as it was
            from datetime import datetime

            with read_write(config.hydra):
                config.hydra.output_subdir = f".hydra/resumed-{datetime.now():%Y%m%d-%H%M%S-%f}"

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """The config without the swept values (each job checks its own at its start), and a sweep folder that
        already holds finished jobs is refused (their files would be rewritten)."""
        from omegaconf import OmegaConf

        from lightning_sparse_mtl.runs.validate_train import validate_train_config

        try:
            validate_train_config(config)
            sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
            check_writable_dir(sweep, "sweep directory")
            done = sorted(sweep.glob("*/results.json")) if sweep.is_dir() else []
            if done:
                raise UserError(f"{sweep} already holds finished jobs (e.g. {done[0]}); choose another hydra.sweep.dir")
        except UserError as err:
            _fail(err)
