"""Job dirs with hand-written results.json / overrides.yaml, to test the report without training."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DIGITS = "lightning_sparse_mtl.data.digits.DigitScenes"


def fake_results(lam: float, seed: int, miou: float, gs: float, config: dict | None = None, **extra) -> dict:
    """A results.json dict with two metrics, sparsity (overall and two layers) and a resolved config."""
    cfg = {"lambda": lam, "seed": seed, "data": {"seed": seed, "dataset": {"_target_": DIGITS, "image_size": 32}}}
    return {
        "test/seg/miou": miou,
        "test/depth/abs_err": 1.0 - miou,
        "sparsity/group_sparsity": gs,
        "sparsity/weight_sparsity": gs,
        "params": 1000,
        "lambda": lam,
        "seed": seed,
        "sparsity": {"group_sparsity": gs, "layers": {"a": {"group_sparsity": gs}, "b": {"group_sparsity": gs / 2}}},
        "config": {**cfg, **(config or {})},
        **extra,
    }


def write_job(root: Path, name: str, results: dict | str | None, overrides: list[str] | None = None) -> Path:
    """``root/name`` with ``.hydra/`` (and ``overrides.yaml`` when given) and ``results.json`` (when given)."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if results is not None:
        (job / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return job
