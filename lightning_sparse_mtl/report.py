"""Sweep report: ``python -m lightning_sparse_mtl.report <multirun dir> [--out DIR]`` (logic in reporting.aggregate)."""

from lightning_sparse_mtl.reporting.aggregate import main

if __name__ == "__main__":
    main()
