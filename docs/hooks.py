"""MkDocs hook: serve the measured figures from ``experiments/results/`` as ``figures/...`` (one copy in the repo).

A page links ``figures/<path under experiments/results>``; the file is taken from ``experiments/results/<path>``
at build time, so the site shows the figures the results pages describe without a second copy in ``docs/``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
FIGURES = (
    "targets/lambda_trajectory.png",
    "digits_sweep/tradeoff.png",
    "digits_study/pareto.png",
    "peers/pareto.png",
    "peers/curves.png",
    "grouping/even_width.png",
)


def on_files(files, config):
    for rel in FIGURES:
        files.append(File.generated(config, f"figures/{rel}", abs_src_path=str(RESULTS / rel)))
    return files
