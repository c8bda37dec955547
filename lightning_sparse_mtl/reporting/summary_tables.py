"""``summary.csv`` / ``summary.md``: one row per configuration, mean ± std over seeds and the 95 % interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from lightning_sparse_mtl.mtl.delta_m import is_metric_key
from lightning_sparse_mtl.reporting.metric_info import label

# shown in summary.md (when present), after the test metrics; every column is in summary.csv
MD_EXTRA = ("delta_m_vs_stl", "delta_m_vs_dense", "test/delta_m", "group_sparsity_%", "macs_ratio", "speedup_b1",
            "speedup_b8", "pruned_params", "pruned_latency_b1_ms", "dense_latency_b1_ms")  # fmt: skip


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    if abs(value) < 1e-9:
        return "0"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.{digits}g}"


def _cell(rec: Mapping[str, Any], col: str) -> str:
    mean, std = rec.get(f"{col}_mean"), rec.get(f"{col}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return _num(mean) if std is None or math.isnan(std) else f"{_num(mean)} ± {_num(std, 2)}"


def _interval(rec: Mapping[str, Any], col: str) -> str:
    lo, hi = rec.get(f"{col}_ci95_low"), rec.get(f"{col}_ci95_high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "–"
    return f"[{_num(lo)}, {_num(hi)}]"


def _table(records: list[dict], columns: list[str], cell, config: Mapping | None, names: Mapping) -> list[str]:
    header = ["configuration", "n", *(label(c, config, arrow=False) for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rec in records:
        name = names.get(rec["config"], rec["config"])
        lines.append("| " + " | ".join([f"`{name}`", str(rec["n"]), *(cell(rec, c) for c in columns)]) + " |")
    return lines


def summary_markdown(
    root: str,
    summary: pd.DataFrame,
    notes: Mapping[str, Sequence[str]],
    baselines: Mapping[str, float] | None,
    plots: Mapping[str, str | None],
    failed: int,
    config: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
    common: Sequence[str] = (),
) -> str:
    """The whole ``summary.md`` (``config``: a run's resolved config, for the dataset's units; ``names``: short
    configuration names without the ``common`` overrides every configuration shares)."""
    names = names or {}
    records = summary.to_dict("records")
    present = {c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")}
    columns = sorted(c for c in present if is_metric_key(c)) + [c for c in MD_EXTRA if c in present]
    parts = [f"# Summary over seeds: `{root}`", "",
             f"{len(records)} configuration(s) from {int(summary['n'].sum()) if records else 0} finished run(s); "
             f"{failed} failed run(s) (see report.md). A configuration is every override of a job except `seed`.",
             ""]  # fmt: skip
    if common:
        parts += ["Overrides shared by every configuration (left out of the names below): "
                  + ", ".join(f"`{o}`" for o in common), ""]  # fmt: skip
    parts += ["## Mean ± std over seeds", ""]
    parts += _table(records, columns, _cell, config, names)
    parts += ["", "std: sample standard deviation (ddof = 1) over seeds; '–' when n = 1.", "",
              "## 95 % confidence interval of the mean (t-distribution, n − 1 degrees of freedom)", ""]  # fmt: skip
    parts += _table(records, columns, _interval, config, names)
    parts += ["", "## Δm", ""]
    parts.append("Δm = mean over metrics of ±(M − M_ref) / M_ref · 100 %, positive = better than the reference. ")
    if baselines:
        refs = ", ".join(f"{k.removeprefix('test/')} = {_num(v)}" for k, v in baselines.items())
        parts.append(f"`delta_m_vs_stl`: against the single-task baselines {refs} (mean over their seeds).")
    parts.append("`delta_m_vs_dense`: against the same configuration at λ = 0 (dense; mean over its seeds), "
                 "where the sweep has one.")  # fmt: skip
    parts += ["", "## Configurations kept apart on keys that were not swept", ""]
    parts += [f"- `{c}`: differs in {', '.join(f'`{k}`' for k in keys)}" for c, keys in notes.items()] or ["None."]
    if plots:
        parts += ["", "## Figures (PNG; PDF next to each)", ""]
        for name, note in plots.items():
            parts += [f"![{name}]({name})" if note is None else f"- `{name}` skipped: {note}", ""]
    return "\n".join(parts) + "\n"
