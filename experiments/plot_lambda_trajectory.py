"""Plot the lambda trajectory and the measured fraction of target runs (``sparsity.target`` / ``target_macs``).

    python experiments/plot_lambda_trajectory.py OUT.png RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...]

Reads ``lambda_trajectory`` ([optimizer step, lambda for the next step, measured fraction]) and
``sparsity/target`` from each run's results.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out, runs = Path(argv[0]), argv[1:]
    fig, (ax_lam, ax_frac) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for spec in runs:
        path, _, label = spec.partition("=")
        results = json.loads((Path(path) / "results.json").read_text())
        steps, lams, measured = zip(*results["lambda_trajectory"])
        target = results["sparsity/target"]
        label = label or f"{target['kind']} target {target['fraction']:g}"
        (line,) = ax_lam.plot(steps, lams, label=label)
        ax_frac.plot(steps, measured, color=line.get_color(), label=label)
        ax_frac.axhline(target["fraction"], color=line.get_color(), linestyle=":", linewidth=1)
    ax_lam.set_yscale("log")
    ax_lam.set_ylabel("λ (next step)")
    ax_lam.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax_frac.set_ylabel("measured fraction\n(zero groups / MACs removed)")
    ax_frac.set_xlabel("optimizer step")
    ax_frac.set_ylim(0, 1)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
