"""Object configs (``_target_`` + arguments) checked against their class's signature before anything is built:
an unknown key is one line naming it and the valid ones, a value of the wrong type one line naming its key
(runs/schema.py), for every object of ``data``, ``callbacks`` and ``logger``."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.validate import locate_class
from lightning_sparse_mtl.runs.schema import KWARGS_GO_TO, check_types, init_chain, object_schema

HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def _keywords(fn: Any) -> tuple[list[str], bool] | None:
    """(named keyword parameters, whether it also takes ``**kwargs``) of ``fn``; None without a signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepted_keywords(target: Any) -> list[str] | None:
    """Keyword arguments ``target`` accepts; None when they are open (``**kwargs`` all the way along
    :func:`~lightning_sparse_mtl.runs.schema.init_chain` to an open callable) or unreadable. A subclass
    ``__init__(*args, **kwargs)`` that passes them on takes its base's; ``object`` takes none."""
    names: list[str] = []
    for init in init_chain(target):
        found = _keywords(init)
        if found is None:
            return None
        names += [n for n in found[0] if n not in names]
        if not found[1]:
            return names
    if not isinstance(target, type):
        return None
    forwards = any(f"{k.__module__}.{k.__qualname__}" in KWARGS_GO_TO for k in target.__mro__)
    return None if forwards else names  # the chain ended at object


def check_keys(key: str, given: Mapping, valid: list[str] | None) -> None:
    extra = sorted(str(k) for k in given if k not in HYDRA_KEYS and (valid is not None and k not in valid))
    if extra:
        raise UserError(f"unknown {key} option {extra[0]!r}; valid: {', '.join(sorted(valid or []))}")


def objects_in(node: Any, where: str) -> Iterator[tuple[str, Mapping]]:
    """``(dotted place, node)`` of every mapping with a ``_target_`` under ``node``."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield where, node
        for k, v in node.items():
            yield from objects_in(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from objects_in(v, f"{where}[{i}]")


def check_object_kwargs(key: str, node: Mapping, skip: tuple[str, ...] = ()) -> None:
    """Every key of the object config ``node`` is an argument of its ``_target_``, with a value of its type
    (``skip``: arguments the code passes, not the config)."""
    target = locate_class(key, node.get("_target_"))
    valid = accepted_keywords(target)
    check_keys(key, node, None if valid is None else [k for k in valid if k not in skip])
    check_types(key, node, object_schema(target))


def check_data_objects(data: Mapping) -> None:
    """The datamodule, the dataset and the transforms take their keys; each split's options are dataset arguments."""
    for where, node in objects_in(data, "data"):
        check_object_kwargs(where, node)
    dataset, splits = data.get("dataset"), data.get("splits")
    if isinstance(dataset, Mapping) and "_target_" in dataset and isinstance(splits, Mapping):
        valid = accepted_keywords(locate_class("data.dataset", dataset["_target_"]))
        valid = None if valid is None else [k for k in valid if k not in ("split", "root")]
        for split, opts in splits.items():
            if isinstance(opts, Mapping):
                check_keys(f"data.splits.{split}", opts, valid)
