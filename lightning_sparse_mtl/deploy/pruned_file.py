"""The compact model's file (``pruned.pt``): plain data that survives refactors of this package.

Written here (by :func:`deploy.compact.prune_and_measure`); read back by ``runs.checkpoints.load_pruned``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from lightning_sparse_mtl.core.atomic_io import atomic_write_bytes
from lightning_sparse_mtl.core.results import to_jsonable
from lightning_sparse_mtl.deploy.architecture import architecture_of

PRUNED_FORMAT = "lightning_sparse_mtl.pruned/2"
LEGACY_PRUNED_FORMAT = "lightning_sparse_mtl.pruned/1"  # whole pickled module (before the state-dict format)


def is_pruned_file(obj: Any) -> bool:
    """Whether ``obj`` (a loaded torch file) is a pruned model file of either format."""
    return isinstance(obj, dict) and obj.get("format") in (PRUNED_FORMAT, LEGACY_PRUNED_FORMAT)


def save_pruned(path: str | os.PathLike, net: torch.nn.Module, cfg: dict, report: dict) -> Path:
    """Save the compact model atomically as plain data (loads with ``torch.load(path, weights_only=True)``).

    ``{"format", "config", "architecture" (layer sizes, see deploy.architecture), "state_dict", "report"}``:
    no pickled classes, so the file survives refactors of this package; ``runs.checkpoints.load_pruned`` rebuilds
    the net.
    """
    buffer = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    obj = {"format": PRUNED_FORMAT, "config": cfg, "architecture": architecture_of(net), "state_dict": state,
           "report": to_jsonable(report)}  # fmt: skip
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
