"""Which jobs of a sweep are the same configuration (seeds of one setting) and which are not.

A configuration is every override of the job except ``seed`` (``<job>/.hydra/overrides.yaml``); jobs with the
same overrides whose resolved configs (``results.json["config"]``) still differ — in keys that were not swept,
e.g. two multiruns with an edited experiment file written into one folder — are kept apart too, and the keys
that differ are reported. A job without ``overrides.yaml`` is identified by its resolved config alone.
Keys that differ between seeds of one setting by construction (``seed``, keys following it such as
``data.seed``, and paths inside the job's own run dir) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

SEED = "seed"
LAMBDA = "lambda"
IGNORED_KEYS = {"ckpt_path", "optimized_metric"}  # where to resume / what a sweeper optimises: not the setting
# overrides that make a run sparse besides lambda: left out of a configuration's signature, so that a target or
# peer arm finds the λ = 0 run of the same setting as its dense counterpart
SPARSIFYING_KEYS = {LAMBDA, "sparsity.target", "sparsity.target_macs", "sparsity.groups", "method"}
DENSE_METHODS = ("group_lasso", "group_lasso_coupled")  # at λ = 0 and without a target these train dense


def is_dense_run(results: Mapping[str, Any]) -> bool:
    """True for a dense reference run: λ = 0 *and* nothing else sparsifies it. A ``sparsity.target`` /
    ``target_macs`` run adapts λ from a start value that may be 0, and a peer arm (``method=tp_*``) prunes to
    ``target_macs`` with λ = 0: neither is dense, though both report ``lambda: 0``. λ is read from the results,
    else from their config (as the report's ``lambda`` column); a missing or non-numeric λ is not dense."""

    def mapping(value: Any) -> Mapping[str, Any]:
        return value if isinstance(value, Mapping) else {}

    config = mapping(results.get("config"))
    lam = results.get("lambda")
    if lam is None:
        lam = config.get("lambda")
    sparsity, method = mapping(config.get("sparsity")), config.get("method")
    name = mapping(method).get("name") if isinstance(method, Mapping) else method
    name = name or results.get("method") or DENSE_METHODS[0]
    return (
        isinstance(lam, int | float)
        and not isinstance(lam, bool)
        and lam == 0
        and all(sparsity.get(k) is None for k in ("target", "target_macs"))
        and "sparsity/target" not in results
        and name in DENSE_METHODS
    )


def read_overrides(job_dir: Path) -> list[str] | None:
    """The job's command-line overrides (``.hydra/overrides.yaml``), None when the file is missing/unreadable."""
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in data] if isinstance(data, list) else None


def override_key(override: str) -> str:
    """``+model.x=1`` -> ``model.x``; ``~a.b`` -> ``a.b``; ``data@x=y`` -> ``data@x``."""
    return override.split("=", 1)[0].lstrip("+~")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}``; lists are kept as values (JSON-encoded for hashing)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value
    return out


def setting(config: Mapping[str, Any], run_dirs: Sequence[str]) -> dict[str, Any]:
    """The flattened config minus ``seed``, resume/sweeper keys and paths inside the job's own run dir (keys that
    follow the seed, like ``data.seed``, are dropped by :func:`assign_configurations`, which sees all jobs)."""
    out = {}
    for key, value in flatten(config or {}).items():
        if key in IGNORED_KEYS or key == SEED:
            continue
        if isinstance(value, str) and any(d and d in value for d in run_dirs):
            continue
        out[key] = value
    return out


def _sparsifying(key: str) -> bool:
    """λ, a target and the keys that only tune it (``sparsity.target_*``), the grouping, the method."""
    return key in SPARSIFYING_KEYS or key.startswith(("method.", "sparsity.target"))


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def assign_configurations(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Set ``row["config"]`` (a readable label) and ``row["_signature"]`` (the configuration without λ, targets,
    grouping and method: to find its dense counterpart) for every row. Rows need ``_overrides`` (list or None),
    ``_setting`` (see :func:`setting`). Returns ``{label: [keys not swept that set this configuration apart]}`` for the
    configurations split on non-swept keys."""
    notes: dict[str, list[str]] = {}
    by_overrides: dict[tuple, list[dict]] = {}
    keys = {k for r in rows for k in r["_setting"]}
    followers = {k for k in keys if all(r["_setting"].get(k, object()) == r.get(SEED) for r in rows)}
    for row in rows:  # keys that equal the job's seed in every job (data.seed = ${seed}) follow the seed
        row["_setting"] = {k: v for k, v in row["_setting"].items() if k not in followers}
    for row in rows:
        overrides = row.get("_overrides")
        if overrides is None:
            continue
        kept = tuple(o for o in overrides if override_key(o) != SEED and not override_key(o).startswith("hydra."))
        row["_kept_overrides"] = kept
        by_overrides.setdefault(kept, []).append(row)
    for kept, group in by_overrides.items():
        base = ",".join(kept) or "(defaults)"
        swept = {override_key(o) for o in kept}
        differing = sorted(
            k for k in {k for r in group for k in r["_setting"]}
            if k not in swept and len({json.dumps(r["_setting"].get(k), default=str) for r in group}) > 1
        )  # fmt: skip
        for row in group:
            extra = [f"{k}={_fmt(row['_setting'].get(k))}" for k in differing]
            row["config"] = base + (f" [{', '.join(extra)}]" if extra else "")
            no_lambda = tuple(o for o in kept if not _sparsifying(override_key(o)))
            row["_signature"] = ("overrides", no_lambda, tuple(extra))
            if extra:
                notes[row["config"]] = differing
    plain = [r for r in rows if r.get("_overrides") is None]
    if plain:
        varying = sorted(
            k for k in {k for r in plain for k in r["_setting"]}
            if len({json.dumps(r["_setting"].get(k), default=str) for r in plain}) > 1
        )  # fmt: skip
        for row in plain:
            parts = [f"{k}={_fmt(row['_setting'].get(k))}" for k in varying]
            row["config"] = ",".join(parts) or "(defaults)"
            rest = tuple(p for k, p in zip(varying, parts) if not _sparsifying(k))
            row["_signature"] = ("config", rest)
    return notes
