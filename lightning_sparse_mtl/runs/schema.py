"""The types every config group may hold, from what the group configures: one check for every group.

A group's schema is the keyword parameters of the class or function it configures (their annotations, through
the class's bases like :func:`~lightning_sparse_mtl.runs.validate_objects.accepted_keywords`; an unannotated
parameter takes its default's type), so it cannot drift from the code: ``model`` -> ``MultiTaskNet``, ``sparsity``
-> ``GroupSparsity`` (+ the target keys), ``weighting`` -> the chosen weighting class, ``method`` -> the peers'
settings, and every object config (``_target_``: ``trainer``, ``optimizer``, ``scheduler``, ``data`` and its
objects, ``callbacks.*``, ``logger.*``) -> its ``_target_``. :func:`check_types` refuses a value of the wrong type
in one line naming the key, what it must be and an example; ranges and names are checked by each group's own code.
"""

from __future__ import annotations

import collections.abc as cabc
import enum
import inspect
import os
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig

from lightning_sparse_mtl.core.errors import UserError

HYDRA_KEY_TYPES: dict[str, Any] = {"_target_": str, "_partial_": bool, "_recursive_": bool, "_convert_": str,
                                   "_args_": list}  # fmt: skip
_SEQUENCES = (list, tuple, cabc.Sequence, cabc.Iterable, cabc.Collection, cabc.MutableSequence)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)
_PATHS = (os.PathLike, pathlib.Path, pathlib.PurePath)
_NOTHING = inspect.Parameter.empty


# Classes whose ``**kwargs`` go on to another callable than their bases' ``__init__`` (their documented contract):
# their keywords are that callable's too.
KWARGS_GO_TO = {"lightning.pytorch.loggers.wandb.WandbLogger": "wandb.init"}


def init_chain(target: Callable | type) -> list[Callable]:
    """What a config's keywords reach: ``target`` itself, or a class's ``__init__`` and, while it takes ``**kwargs``,
    its bases' (``object`` takes none) or the callable of :data:`KWARGS_GO_TO`. The last may itself be open."""
    if not isinstance(target, type):
        return [target]
    chain: list[Callable] = []
    for k in target.__mro__:
        if k is object:
            break
        if "__init__" in k.__dict__:
            chain.append(k.__dict__["__init__"])
        forwarded = KWARGS_GO_TO.get(f"{k.__module__}.{k.__qualname__}")
        if forwarded:
            from hydra._internal.utils import _locate

            try:
                chain.append(_locate(forwarded))
            except Exception:  # noqa: BLE001 - not installed: its keywords stay open
                chain.append(lambda **kwargs: None)
            break
    return chain


def _annotation(fn: Callable, param: inspect.Parameter, hints: Mapping[str, Any]) -> Any:
    """The parameter's type: resolved annotation, else its default's type, else ``Any``."""
    tp = hints.get(param.name, param.annotation)
    if isinstance(tp, str):  # get_type_hints failed on another parameter (a TYPE_CHECKING-only name)
        try:
            tp = eval(tp, getattr(fn, "__globals__", {}))  # noqa: S307 - the library's own annotation text
        except Exception:  # noqa: BLE001
            return Any
    if tp is _NOTHING:
        return type(param.default) if isinstance(param.default, bool | int | float | str) else Any
    return tp


def hints_of(target: Callable | type, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{keyword: (type, default)}`` of everything ``target``'s keywords reach (:func:`init_chain`)."""
    out: dict[str, tuple[Any, Any]] = {}
    for fn in init_chain(target):
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return out
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - resolved one by one in _annotation
            hints = {}
        for name, p in params.items():
            if name in out or name in skip or name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[name] = (_annotation(fn, p, hints), p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return out


def matches(value: Any, tp: Any) -> bool:
    """Whether a config value (plain Python: None, bool, int, float, str, list, dict) can be a ``tp``."""
    if tp is Any or tp is object or isinstance(tp, typing.TypeVar | str | typing.ForwardRef):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    base = origin or tp
    if base in _SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if base in _MAPPINGS:
        return isinstance(value, Mapping) and (len(args) < 2 or all(matches(v, args[1]) for v in value.values()))
    if isinstance(base, type) and issubclass(base, _PATHS):
        return isinstance(value, str)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return isinstance(value, str | int) and not isinstance(value, bool)
    if isinstance(base, type) and issubclass(base, bool | int | float | str):
        return matches(value, next(t for t in (bool, int, float, str) if issubclass(base, t)))
    if base is cabc.Callable:
        return isinstance(value, Mapping) or isinstance(value, str)
    return isinstance(value, Mapping) and "_target_" in value  # any other class: an object config


def describe(tp: Any) -> str:
    """``tp`` in words, as the error says it (``an integer or null``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        parts = list(dict.fromkeys(describe(a) for a in args if a is not type(None)))
        plain = [p for p in parts if not p.endswith("config (with _target_)")]
        return " or ".join((plain or parts) + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    base = origin or tp
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null"}  # fmt: skip
    if base in words:
        return words[base]
    if base in _SEQUENCES:
        return f"a list of {len(args)}" if base is tuple and args and args[-1] is not Ellipsis else "a list"
    if base in _MAPPINGS:
        return "a mapping"
    if isinstance(base, type) and issubclass(base, _PATHS):
        return "a path"
    name = getattr(base, "__name__", str(base))
    return f"a {name} config (with _target_)"


def _value(node: Mapping, key: Any) -> tuple[bool, Any]:
    """(known, plain value) of ``node[key]``; an interpolation is not known yet (``${hydra:...}`` resolves later)."""
    if isinstance(node, DictConfig):
        child = node._get_node(key)
        if child is None or child._is_interpolation() or child._is_missing():
            return False, None
        from lightning_sparse_mtl.core.validate import plain

        return True, plain(node[key])
    return True, node[key]


def check_types(where: str, node: Any, schema: Mapping[str, tuple[Any, Any]]) -> None:
    """Every key of ``node`` that ``schema`` knows holds a value of its type; one line naming the first that
    does not (keys outside the schema: each group's own unknown-key check)."""
    if not isinstance(node, Mapping):
        return
    for key in list(node.keys()):
        if key not in schema:
            continue
        known, value = _value(node, key)
        tp, default = schema[key]
        bad = _mismatch(f"{where}.{key}", value, tp) if known else None
        if bad:
            example = _example(bad[0], default) if bad[0] == f"{where}.{key}" else ""
            raise UserError(f"{bad[0]} must be {describe(bad[2])}, got {bad[1]!r}{example}")


def _mismatch(path: str, value: Any, tp: Any) -> tuple[str, Any, Any] | None:
    """None when ``value`` is a ``tp``; else (dotted path, value, type) of the innermost wrong item (a mapping's
    value or a list's element the type describes) so the error names it, not the whole container."""
    if matches(value, tp):
        return None
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    for member in typing.get_args(tp) if union else (tp,):
        base, args = typing.get_origin(member) or member, typing.get_args(member)
        inner = None
        if base in _MAPPINGS and isinstance(value, Mapping) and len(args) == 2:
            inner = next(
                (_mismatch(f"{path}.{k}", v, args[1]) for k, v in value.items() if not matches(v, args[1])), None
            )
        elif base in _SEQUENCES and isinstance(value, list | tuple) and len(args) == 1:
            inner = next(
                (_mismatch(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value) if not matches(v, args[0])), None
            )
        if inner:
            return inner
    return path, value, tp


def _example(key: str, default: Any) -> str:
    """``; e.g. key=<default>`` when the default is a plain value (a bool as Hydra writes it)."""
    if isinstance(default, enum.Enum) or not isinstance(default, bool | int | float | str) or default == "":
        return ""
    return f"; e.g. {key}={str(default).lower() if isinstance(default, bool) else default}"


def object_schema(target: Any) -> dict[str, tuple[Any, Any]]:
    """The schema of an object config: its ``_target_``'s keywords and Hydra's own keys."""
    hydra_keys = {k: (t, _NOTHING) for k, t in HYDRA_KEY_TYPES.items()}
    return {**hydra_keys, **(hints_of(target) if callable(target) else {})}
