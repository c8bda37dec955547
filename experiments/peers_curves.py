"""Where the arms of the peers study win or lose, epoch by epoch: validation mean Δ vs the dense run of the same seed.

    python experiments/peers_curves.py [--target 0.25] [--seeds 0 1 2]    # -> results/peers/curves.md, curves.png

Per arm and epoch: the mean over seeds of the mean Δ (%) of the nine validation metrics against the λ = 0 run of the
same seed at the same epoch (positive = better than dense at that point of training), from each run's
``csv/metrics.csv``. The Torch-Pruning arms are the dense run until their pruning starts (same seed, same batches),
so their curve is 0 until then; what happens at and after the pruning steps is the measured reason for their end
result. Also per arm: the mean Δ of every validation metric at the last epoch (which task loses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.mtl.delta_m import delta_m  # noqa: E402
from lightning_sparse_mtl.reporting.metric_info import higher_is_better  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
ARMS = {"group_lasso": "grouping/runs/input", "group_lasso_coupled": "grouping/runs/coupled",
        "tp_magnitude": "peers/runs/tp_magnitude", "tp_group_norm": "peers/runs/tp_group_norm"}  # fmt: skip


def _direction(val_key: str) -> bool | None:
    return higher_is_better("test/" + val_key.removeprefix("val/"))


def val_by_epoch(run: Path) -> pd.DataFrame:
    """``epoch`` × ``val/<task>/<metric>`` (the epoch-end validation rows of ``csv/metrics.csv``)."""
    df = pd.read_csv(run / "csv" / "metrics.csv")
    cols = [c for c in df.columns if c.startswith("val/") and c.count("/") == 2 and _direction(c) is not None]
    return df.dropna(subset=cols[:1]).groupby("epoch")[cols].last()


def _as_test(values: pd.Series) -> dict[str, float]:
    """``val/<task>/<metric>`` -> ``test/<task>/<metric>``: the keys :func:`delta_m` reads."""
    return {"test/" + k.removeprefix("val/"): float(v) for k, v in values.items()}


def delta_curve(run: Path, dense: Path) -> pd.Series:
    """Per epoch, mean Δ (%) of ``run``'s validation metrics against ``dense``'s at the same epoch."""
    a, b = val_by_epoch(run), val_by_epoch(dense)
    shared = [c for c in a.columns if c in b.columns]
    directions = {"test/" + c.removeprefix("val/"): bool(_direction(c)) for c in shared}
    epochs = [e for e in a.index if e in b.index]
    return pd.Series({int(e): delta_m(_as_test(a.loc[e, shared]), _as_test(b.loc[e, shared]), directions)
                      for e in epochs})  # fmt: skip


def metric_deltas(run: Path, dense: Path) -> pd.Series:
    """Last epoch: signed relative change (%) of each validation metric against dense (positive = better)."""
    a, b = val_by_epoch(run).iloc[-1], val_by_epoch(dense).iloc[-1]
    return pd.Series({c: (1 if _direction(c) else -1) * (a[c] - b[c]) / abs(b[c]) * 100
                      for c in a.index if c in b.index})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS / "peers"))
    args = parser.parse_args(argv)
    curves, finals = {}, {}
    for arm, stem in ARMS.items():
        pairs = [(RESULTS / f"{stem}_m{args.target:g}_s{s}", RESULTS / f"grouping/runs/dense_s{s}") for s in args.seeds]
        pairs = [(r, d) for r, d in pairs if (r / "results.json").is_file() and (d / "results.json").is_file()]
        if pairs:
            curves[arm] = pd.concat([delta_curve(r, d) for r, d in pairs], axis=1).agg(["mean", "std", "count"], axis=1)
            finals[arm] = pd.concat([metric_deltas(r, d) for r, d in pairs], axis=1).mean(axis=1)
    if not curves:
        raise SystemExit("error: no finished arm with its dense run of the same seed")
    out = Path(args.out)
    epochs = sorted({e for c in curves.values() for e in c.index})
    lines = ["| epoch | " + " | ".join(f"{a} (n)" for a in curves) + " |", "|---|" + "---:|" * len(curves)]
    for e in epochs:
        cells = [f"{c.loc[e, 'mean']:+.2f} ({int(c.loc[e, 'count'])})" if e in c.index else "–"
                 for c in curves.values()]  # fmt: skip
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    final = pd.DataFrame(finals)
    rows = ["| metric | " + " | ".join(final.columns) + " |", "|---|" + "---:|" * len(final.columns)]
    rows += [f"| {k} | " + " | ".join(f"{v:+.2f}" for v in final.loc[k]) + " |" for k in final.index]
    text = (f"# Validation mean Δ vs dense (same seed, same epoch), %, target_macs={args.target:g}\n\n"
            + "\n".join(lines) + "\n\n## Last epoch, per validation metric (Δ %, + = better than dense)\n\n"
            + "\n".join(rows) + "\n")  # fmt: skip
    (out / "curves.md").write_text(text)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for arm, c in curves.items():
        ax.errorbar(c.index, c["mean"], yerr=c["std"].fillna(0), marker="o", ms=3, capsize=2, label=arm)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="epoch", ylabel="validation mean Δ vs dense (%)", title="Peers at equal MACs: where the gap opens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(text)


if __name__ == "__main__":
    main()
