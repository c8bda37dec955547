"""Files are data, never code: every torch file a user hands us is read with ``torch.load(weights_only=True)``.

Only plain data loads (tensors, numbers, strings, containers) plus the few harmless classes Lightning may store
(:data:`ALLOWED_GLOBALS`). A file that pickles anything else is refused in one line naming the object, unless the
caller passes ``trust=True`` (``trust_checkpoint=true`` on the command line), which runs a full unpickle: code
from the file. What a config read from a file may name is checked in :mod:`core.stored_config`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import torch

from lightning_sparse_mtl.core.errors import UserError

TRUST_HINT = "pass trust_checkpoint=true only if you trust where the file came from (that runs code from the file)"
# Harmless classes (unpickling one builds the object and runs nothing else) that a Lightning checkpoint may hold:
# pathlib paths (callback state). Lightning stores hyper-parameters as a plain dict.
ALLOWED_GLOBALS: tuple[Any, ...] = (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath)
_UNREADABLE = (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, KeyError)


class UnsafeFileError(UserError):
    """A file that is not plain data: loading it would run code from it."""


def allowed_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` may build beyond plain data (for ``torch.serialization.safe_globals``)."""
    return list(ALLOWED_GLOBALS)


def _allowed_names() -> set[str]:
    return {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}


def offending_object(err: BaseException, path: str | os.PathLike) -> str | None:
    """The global a refused pickle names (``posix.system``), from a scan of the file or torch's message; None when
    the pickle failed for another reason (junk, a raw non-torch pickle)."""
    try:
        unsafe = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in _allowed_names()]
    except Exception:  # noqa: BLE001 - not a zip checkpoint: torch's message names it
        unsafe = []
    found = unsafe or re.findall(r"GLOBAL ([\w.]+)", str(err))
    if not found:
        return None
    return found[0] if "." in found[0] else f"builtins.{found[0]}"  # torch's message drops "builtins."


def _cannot_read(path: Path, err: BaseException) -> UserError:
    return UserError(f"cannot read {path} as a torch file ({type(err).__name__}); is it truncated or foreign?")


def read_torch_file(
    path: str | os.PathLike, *, trust: bool = False, pickle_module: Any = None, hint: str = TRUST_HINT
) -> Any:
    """``torch.load`` of a user-supplied file as data; with ``trust`` a full unpickle (``pickle_module`` then
    remaps classes). Any failure is one :class:`UserError` line naming the file (a refused pickle ends in ``hint``)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            culprit = offending_object(err, path)
            if culprit is None:  # not a file torch.save wrote (junk, a raw pickle): never unpickled in full
                raise _cannot_read(path, err) from None
            raise UnsafeFileError(f"{path} is not plain data: it pickles {culprit}; {hint}") from None
    except (*_UNREADABLE, AttributeError, TypeError) as err:
        raise _cannot_read(path, err) from None
    kwargs = {"pickle_module": pickle_module} if pickle_module is not None else {}
    try:  # trusted by the user: a full unpickle
        return torch.load(path, map_location="cpu", weights_only=False, **kwargs)
    except (pickle.UnpicklingError, *_UNREADABLE) as err:
        raise _cannot_read(path, err) from None
    except (ImportError, AttributeError) as err:
        raise UserError(
            f"{path} pickles classes that no longer exist ({err}); re-run prune on its checkpoint"
        ) from None


def check_is_data(path: str | os.PathLike, *, trust: bool = False, hint: str = TRUST_HINT) -> None:
    """A quick look before a run starts (no tensor is read): a zip torch file (what ``torch.save`` and Lightning
    write) names no global beyond :data:`ALLOWED_GLOBALS`. Other files are left to the real load
    (:func:`read_torch_file`), which checks everything again."""
    path = Path(path)
    if trust or not zipfile.is_zipfile(path):
        return
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (*_UNREADABLE, pickle.UnpicklingError) as err:
        raise _cannot_read(path, err) from None
    refused = [name for name in unsafe if name not in _allowed_names()]
    if refused:
        raise UnsafeFileError(f"{path} is not plain data: it pickles {refused[0]}; {hint}")
