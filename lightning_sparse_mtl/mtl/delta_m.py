"""Δm: relative multi-task performance against single-task baselines (Maninis et al. 2019; LibMTL).

    Δm = 1/K · Σ_i (-1)^{l_i} · (M_mtl,i - M_stl,i) / M_stl,i · 100 %

over the K metrics present in both the multi-task results and the baselines, with l_i = 1 when lower
is better for metric i (errors, angles) and 0 when higher is better (mIoU, accuracy). Sign: **positive
Δm = the multi-task model is better** than the single-task baselines on average; negative = worse.
Metric keys are ``test/<task>/<metric>`` as in ``results.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.mtl.tasks import TaskSpec


def is_metric_key(key: str) -> bool:
    """True for ``test/<task>/<metric>`` keys (not ``test/loss`` or ``test/delta_m``)."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "test" and all(parts)


def _number(value: Any) -> float | None:
    """A finite float, or None for None / NaN / non-numbers (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_directions(task_specs: Iterable[TaskSpec]) -> dict[str, bool]:
    """``{"test/<task>/<metric>": higher_is_better}`` from each task's :attr:`TaskSpec.higher_is_better`."""
    return {f"test/{t.name}/{m}": bool(hib) for t in task_specs for m, hib in t.higher_is_better.items()}


def delta_m(mtl: Mapping[str, Any], stl: Mapping[str, Any], higher_is_better: Mapping[str, bool]) -> float:
    """Δm in percent (positive = MTL better) over the ``test/<task>/<metric>`` keys present in both ``mtl``
    and ``stl`` with a finite value; baseline metrics missing from ``mtl`` and vice versa are skipped.

    Raises UserError when no metric overlaps, a shared metric has no direction, or a baseline is 0.
    """
    terms = []
    for key, value in mtl.items():
        m, b = _number(value), _number(stl.get(key))
        if not is_metric_key(key) or m is None or b is None:
            continue
        if key not in higher_is_better:
            raise UserError(f"no direction (higher/lower is better) known for metric {key}")
        if b == 0:
            raise UserError(f"baseline {key} is 0; Δm divides by the baseline, give a non-zero value")
        sign = 1.0 if higher_is_better[key] else -1.0
        terms.append(sign * (m - b) / abs(b) * 100.0)
    if not terms:
        have = ", ".join(sorted(k for k in stl if is_metric_key(k))) or "none"
        raise UserError(f"Δm: no test/<task>/<metric> key shared by the results and the baselines (baselines: {have})")
    return sum(terms) / len(terms)


def _read_results(path: str | os.PathLike) -> dict[str, float]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"baseline results file not found: {path}; give the results.json of a single-task run")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read baseline {path}: {err}; expected a results.json") from None
    if not isinstance(data, Mapping):
        raise UserError(f"baseline {path} is not a JSON object; expected a results.json")
    return {k: v for k, v in data.items() if is_metric_key(k) and _number(v) is not None}


def load_baselines(spec: Mapping[str, Any] | Sequence[str | os.PathLike] | str | os.PathLike | None) -> dict:
    """Single-task baselines as ``{"test/<task>/<metric>": value}``.

    ``spec`` is either a mapping of metric values (given in config), or one path / a list of paths to
    single-task runs' ``results.json`` files whose ``test/<task>/<metric>`` entries are merged (the same
    metric in two files is an error). A missing or unreadable file raises UserError.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out = {}
        for key, value in spec.items():
            number = _number(value)
            if number is None:
                raise UserError(f"baseline {key} must be a number, got {value!r}")
            out[str(key)] = number
        return out
    paths = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    merged: dict[str, float] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for key, value in _read_results(path).items():
            if key in merged and merged[key] != value:
                raise UserError(f"baseline {key} appears in both {origin[key]} and {path}; give each metric once")
            merged[key], origin[key] = float(value), str(path)
    return merged
