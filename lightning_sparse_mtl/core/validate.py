"""The complete train config checked before any work: types, ranges, names and combinations -> one-line UserError.

``validate_train_config(cfg)`` runs in a Hydra callback before Hydra writes anything (single runs) and again at the
start of :func:`train` (every multirun job, in-process calls). It builds nothing expensive: the optimizer and
scheduler are instantiated on a one-element dummy parameter, so a wrong keyword or value fails here, not after
the first epoch. Data files are checked by the datasets themselves (see ``data/checks.py``).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_sparse_mtl.core.errors import UserError

_MISSING = object()
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "16", "bf16",
              "transformer-engine", "transformer-engine-float16")  # fmt: skip
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla")


def plain(value: Any) -> Any:
    """Containers -> plain python (resolved); everything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a dotted key (None-safe, resolved, plain); an unresolvable value is a UserError."""
    try:
        value = (
            OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
            if isinstance(cfg, DictConfig)
            else _dig(cfg, key)
        )
    except Exception as err:  # interpolation to a missing key/env var, ??? value
        raise UserError(f"{key}: {str(err).splitlines()[0]}; set {key}=<value>") from None
    return default if value is _MISSING else plain(value)


def _dig(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(key: str, value: Any, lo: int | None = None, hi: int | None = None, example: Any = None) -> int:
    """``value`` must be an int (not a bool) in [lo, hi]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        bounds = " and ".join(
            b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b
        )
        raise UserError(f"{key} must be an integer{' ' + bounds if bounds else ''}, got {value!r}; "
                        f"e.g. {key}={example if example is not None else lo if lo is not None else 1}")  # fmt: skip
    return value


def check_number(key: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 example: Any = None) -> float:  # fmt: skip
    """``value`` must be a finite real number in [lo, hi] (``(lo, hi]`` with ``lo_open``)."""
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        rng = f" {'>' if lo_open else '>='} {lo:g}" if lo is not None else ""
        rng += f"{' and' if rng else ''} <= {hi:g}" if hi is not None else ""
        raise UserError(f"{key} must be a finite number{rng}, got {value!r}; e.g. {key}={example or 1}")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{key} must be true or false, got {value!r}")
    return value


def check_choice(key: str, value: Any, valid: Sequence[Any]) -> Any:
    if value not in valid or isinstance(value, bool):
        raise UserError(f"{key} must be one of {', '.join(map(str, valid))}; got {value!r}")
    return value


def check_regexes(key: str, value: Any) -> list[str]:
    """A list of valid regular expressions (a single string counts as a one-element list)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise UserError(f"{key} must be a list of regular expressions, got {value!r}; e.g. {key}=['layer4\\..*']")
    for pattern in items:
        try:
            re.compile(pattern)
        except re.error as err:
            raise UserError(
                f"{key}: invalid regular expression {pattern!r} ({err}); escape special characters"
            ) from None
    return items


def normalize_tasks(value: Any) -> list[str]:
    """``tasks`` as a list: ``tasks=seg`` and ``tasks=seg,depth`` (strings) become ``[seg]`` / ``[seg, depth]``."""
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise UserError(f"tasks must be a list of task names, got {value!r}; e.g. tasks=[seg,depth]")
    return value


def check_optional_file(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str | os.PathLike) or not Path(value).expanduser().is_file():
        raise UserError(f"{key}: file not found: {value}; give an existing file or {key}=null")


def check_folder(key: str, value: Any) -> Path:
    """``value`` is the path of an existing folder."""
    if not isinstance(value, str | os.PathLike) or not Path(value).expanduser().is_dir():
        raise UserError(f"{key}={value} is not a folder; give the folder that now holds the dataset")
    return Path(value).expanduser()


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` is (or can be created as) a directory this process may write into; nothing is left behind."""
    path = Path(path).expanduser().absolute()
    probe = path
    try:
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
    except OSError as err:  # a name too long for the filesystem, a path component that is not a folder, ...
        raise UserError(f"{what} {path} cannot be created ({err.strerror}); choose another path") from None
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{what} {path} cannot be created: {probe} is a file; choose another path")
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    long = [part for part in path.relative_to(probe).parts if len(os.fsencode(part)) > name_max]
    if long:
        raise UserError(f"{what} {path} cannot be created: a folder name of {len(os.fsencode(long[0]))} bytes is "
                        f"longer than the filesystem allows ({name_max}); choose a shorter name")  # fmt: skip
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({probe} denies writing); choose a writable path")
    try:  # os.access says yes to root everywhere: create (and at once delete) a real file to be sure
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UserError(f"{what} {path} is not writable ({probe}: {err.strerror}); choose a writable path") from None
    return path


def check_writable_file(path: Any, key: str) -> Path:
    """``path`` can be written as a file: its folder is writable and it is not a directory."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise UserError(f"{key} must be a file path, got {path!r}")
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise UserError(f"{key}={path} is a directory; give a file path, e.g. {key}={p / 'out.json'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{key}={path} exists and is not writable; choose another path")
    check_writable_dir(p.parent, f"folder of {key}")
    return p


def check_prune_options(opts: Mapping[str, Any], prefix: str = "", repeats_key: str = "repeats") -> None:
    """The speed-report and export options of ``prune`` (``prefix=""``) and of train's ``prune:`` block
    (``prefix="prune."``, ``repeats_key="latency_repeats"``); keys that are absent keep their defaults."""
    if opts.get("batch_sizes") is not None:
        sizes = plain(opts["batch_sizes"])
        if not isinstance(sizes, list) or not sizes:
            raise UserError(f"{prefix}batch_sizes must be a non-empty list of batch sizes, got {sizes!r}; "
                            f"e.g. {prefix}batch_sizes=[1,8,32]")  # fmt: skip
        for b in sizes:
            check_int(f"{prefix}batch_sizes[]", b, 1, example="[1,8,32]")
    ints = {repeats_key: 5, "threads": 2, "round_to": 8}
    for key, example in ints.items():
        if opts.get(key) is not None:
            check_int(prefix + key, opts[key], 1, example=example)
    for key in ("fold_bn", "channels_last", "export", "after_train"):
        if opts.get(key) is not None:
            check_bool(prefix + key, opts[key])
    if opts.get("min_run_time") is not None:
        check_number(prefix + "min_run_time", opts["min_run_time"], 0, lo_open=True, example=0.2)


def require_ckpt_path(cfg: Any, command: str) -> str:
    """``ckpt_path`` of prune/evaluate: set, a string, an existing file."""
    value = get(cfg, "ckpt_path") if not OmegaConf.is_missing(cfg, "ckpt_path") else None
    if value in (None, ""):
        raise UserError(f"{command} needs a checkpoint: python -m lightning_sparse_mtl.{command} "
                        "ckpt_path=<run dir>/checkpoints/last.ckpt")  # fmt: skip
    if not isinstance(value, str):
        raise UserError(f"ckpt_path must be a file path, got {value!r}")
    if not Path(value).expanduser().is_file():
        raise UserError(f"checkpoint not found: {value}; pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    return value


def locate_class(key: str, target: Any) -> Any:
    """The object a ``_target_`` names (one-line error when it cannot be imported)."""
    from hydra._internal.utils import _locate

    if not isinstance(target, str) or not target:
        raise UserError(f"{key}._target_ must be a dotted import path, got {target!r}")
    try:
        return _locate(target)
    except Exception:
        raise UserError(
            f"{key}._target_={target} cannot be imported; check the spelling (e.g. torch.optim.AdamW)"
        ) from None


def instantiate_checked(key: str, node: Mapping, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` with any failure as one line naming ``key``."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        msg = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise UserError(f"{key} is invalid: {msg}") from None


def unknown_keys(key: str, given: Mapping, valid: Sequence[str]) -> None:
    extra = sorted(k for k in given if k not in valid and k != "_target_")
    if extra:
        raise UserError(f"unknown {key} option {extra[0]!r}; valid: {', '.join(sorted(valid))}")


def trainer_arg_names() -> list[str]:
    import lightning as L

    return [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]


def check_results_shape(results: Any) -> str | None:
    """Why a parsed results.json cannot be reported (wrong types), or None when it can."""
    if not isinstance(results, Mapping):
        return f"not a JSON object (a {type(results).__name__})"
    for key in ("config", "sparsity"):
        if results.get(key) is not None and not isinstance(results[key], Mapping):
            return f"{key!r} is a {type(results[key]).__name__}, expected an object"
    layers = (results.get("sparsity") or {}).get("layers")
    if layers is not None and not (
        isinstance(layers, Mapping) and all(isinstance(v, Mapping) for v in layers.values())
    ):
        return "'sparsity.layers' must map layer names to objects"
    return None


def dummy_optimizer() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    params = [torch.nn.Parameter(torch.zeros(1))]
    return params, torch.optim.SGD(params, lr=0.1)
