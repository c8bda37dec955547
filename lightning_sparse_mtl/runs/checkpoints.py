"""Loading what runs save: Lightning checkpoints and compact (pruned) model files, with one-line errors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lightning_sparse_mtl.runs.atomic_io import atomic_write_bytes
from lightning_sparse_mtl.runs.errors import UserError

PRUNED_FORMAT = "lightning_sparse_mtl.pruned/1"


def _torch_load(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, AttributeError) as err:
        raise UserError(
            f"cannot read {path} as a torch file ({type(err).__name__}); is it truncated or foreign?"
        ) from None


def is_pruned_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT


def load_module(path: str | os.PathLike):
    """A SparseMTLModule restored from a Lightning checkpoint of this project (weights, config, sparsity masks)."""
    from lightning_sparse_mtl.models.pretrained import restoring
    from lightning_sparse_mtl.training.module import SparseMTLModule

    ckpt = _torch_load(path)
    cfg = ckpt.get("hyper_parameters", {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a lightning-sparse-mtl training checkpoint (no config inside)")
    with restoring():  # the checkpoint holds the weights: do not re-read model.weights
        module = SparseMTLModule(cfg)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "shape mismatch"
        raise UserError(f"{path} does not match the model its config describes: {first}") from None
    return module.eval()


def check_resume(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Fail with one line unless ``path`` is a training checkpoint whose weights fit ``module`` exactly."""
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "optimizer_states" not in ckpt:
        raise UserError(
            f"{path} is not a lightning-sparse-mtl training checkpoint; resume needs <run>/checkpoints/last.ckpt"
        )
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if torch.is_tensor(v)}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise UserError(
            f"{path} was trained with a different model config ({len(diff)} tensors differ, e.g. {diff[0][0]}); "
            "resume with the overrides of the original run"
        )


def save_pruned(path: str | os.PathLike, net: torch.nn.Module, cfg: dict, report: dict) -> Path:
    """Save the compact model (whole-module pickle) with its config and prune report, atomically."""
    buffer = io.BytesIO()
    torch.save({"format": PRUNED_FORMAT, "model": net, "config": cfg, "report": report}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_pruned(path: str | os.PathLike) -> dict:
    """``{"model": nn.Module, "config": dict, "report": dict}`` from :func:`save_pruned`."""
    obj = _torch_load(path)
    if not is_pruned_file(obj):
        raise UserError(f"{path} is not a pruned model file of lightning-sparse-mtl (run the prune command first)")
    return obj


def load_any(path: str | os.PathLike):
    """A SparseMTLModule from a training checkpoint or a pruned model file (its net is then the compact one)."""
    from lightning_sparse_mtl.models.pretrained import restoring
    from lightning_sparse_mtl.training.module import SparseMTLModule

    obj = _torch_load(path)
    if is_pruned_file(obj):
        with restoring():
            module = SparseMTLModule(obj["config"])
        module.net = obj["model"]
        return module.eval()
    return load_module(path)
