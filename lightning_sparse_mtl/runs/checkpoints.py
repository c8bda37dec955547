"""Loading what runs save: Lightning checkpoints and compact (pruned) model files, with one-line errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.safe_load import read_torch_file
from lightning_sparse_mtl.core.stored_config import check_stored_config
from lightning_sparse_mtl.deploy.architecture import apply_architecture
from lightning_sparse_mtl.deploy.pruned_file import (  # noqa: F401 - save_pruned: re-exported (moved to deploy)
    LEGACY_PRUNED_FORMAT,
    PRUNED_FORMAT,
    is_pruned_file,
    save_pruned,
)


def _torch_load(path: str | os.PathLike, trust: bool = False) -> Any:
    """A checkpoint read as data (``core.safe_load``); ``trust`` allows a full unpickle."""
    return read_torch_file(_model_file(path), trust=trust)


def _model_file(path: str | os.PathLike) -> Path:
    """``path`` exists and is not a deployment export (those are named, with their loader and what to pass)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    loaders = {".pt2": "torch.export.load(p).module()", ".onnx": "onnxruntime.InferenceSession(p)"}
    if path.suffix in loaders:
        raise UserError(f"{path} is a deployment export (load it with {loaders[path.suffix]}); pass the training "
                        "checkpoint <run>/checkpoints/last.ckpt or the pruned model <run>/pruned.pt")  # fmt: skip
    return path


def load_module(path: str | os.PathLike, trust: bool = False):
    """A SparseMTLModule restored from a Lightning checkpoint of this project (weights, config, sparsity masks).

    The file is read as data and its config may name only known targets, unless ``trust`` (runs code from it)."""
    ckpt = _torch_load(path, trust)
    cfg = ckpt.get("hyper_parameters", {}).get("cfg") if isinstance(ckpt, dict) else None
    if is_pruned_file(ckpt):
        raise UserError(f"{path} is already a pruned model; pass the training checkpoint it came from: "
                        "ckpt_path=<run>/checkpoints/last.ckpt")  # fmt: skip
    if not isinstance(cfg, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a lightning-sparse-mtl training checkpoint (no config inside)")
    check_stored_config(cfg, path, trust)
    module = _module_from_config(cfg, path)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        diff = weights_mismatch(module, ckpt["state_dict"]) or (str(err).strip().splitlines() or ["shapes differ"])[0]
        raise UserError(f"{path} does not match the model its config describes ({diff}): its config was edited or "
                        "belongs to another run; use the file as it was saved") from None  # fmt: skip
    return module.eval()


def weights_mismatch(module: torch.nn.Module, state_dict: dict) -> str | None:
    """``N tensors differ, e.g. <key>: <shape> in the file, <shape> in the model`` (None when they fit)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items() if torch.is_tensor(v)}
    keys = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if not keys:
        return None
    k = keys[0]
    file_shape, model_shape = (str(list(d[k])) if k in d else "absent" for d in (found, expected))
    return f"{len(keys)} tensors differ, e.g. {k}: {file_shape} in the file, {model_shape} in the model"


def _module_from_config(cfg: dict, path: str | os.PathLike):
    """The SparseMTLModule a stored config describes (weights not re-read); a config this package cannot build
    (another project's, a model it does not know) is one line naming the file."""
    from lightning_sparse_mtl.models.pretrained import restoring  # imported once the file is known good: Lightning
    from lightning_sparse_mtl.training.module import SparseMTLModule  # is seconds of start-up

    try:
        with restoring():  # the checkpoint holds the weights: do not re-read model.weights
            return SparseMTLModule(cfg)
    except UserError as err:
        raise UserError(f"{path}: its config does not build: {err}") from None
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: its config does not describe a model of lightning-sparse-mtl "
                        f"({type(err).__name__}: {first})") from None  # fmt: skip


def check_resume(module: torch.nn.Module, path: str | os.PathLike, trust: bool = False) -> dict[str, int]:
    """Fail with one line unless ``path`` is a training checkpoint (read as data unless ``trust``) whose weights
    fit ``module`` exactly; returns its ``{"epoch", "global_step"}``."""
    ckpt = _torch_load(path, trust)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "optimizer_states" not in ckpt:
        raise UserError(
            f"{path} is not a lightning-sparse-mtl training checkpoint; resume needs <run>/checkpoints/last.ckpt"
        )
    diff = weights_mismatch(module, ckpt["state_dict"])
    if diff:
        raise UserError(f"{path} was trained with a different model config ({diff}); resume with the overrides of "
                        "the original run")  # fmt: skip
    return {"epoch": int(ckpt.get("epoch", 0)), "global_step": int(ckpt.get("global_step", 0))}


# Modules moved by the layout refactor: whole-module pruned files (format /1) pickled these paths.
_MOVED = {f"lightning_sparse_mtl.{old}": f"lightning_sparse_mtl.{new}" for old, new in (
    ("tasks", "mtl.tasks"), ("metrics", "mtl.metrics"), ("delta_m", "mtl.delta_m"), ("weighting", "mtl.weighting"),
    ("checkpoints", "runs.checkpoints"), ("errors", "core.errors"), ("provenance", "core.provenance"),
    ("results", "core.results"), ("runs.errors", "core.errors"), ("runs.provenance", "core.provenance"),
    ("runs.results", "core.results"), ("callbacks", "training.callbacks"), ("module", "training.module"),
    ("media", "reporting.media"), ("report_plots", "reporting.plots"), ("wandb_utils", "reporting.wandb_log"),
    ("sparsity.measure", "deploy.measure"),
)}  # fmt: skip


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED.get(module, module), name)


class _legacy_pickle:  # a pickle "module" for torch.load(pickle_module=...)
    Unpickler = _LegacyUnpickler
    load = pickle.load
    __name__ = "pickle"


def _read(path: str | os.PathLike, trust: bool = False) -> Any:
    """A torch file read as data; with ``trust`` an old whole-module file (format /1) is unpickled in full,
    classes moved by the layout refactor remapped."""
    return read_torch_file(_model_file(path), trust=trust, pickle_module=_legacy_pickle)


def _pruned_from(obj: dict, path: str | os.PathLike, trust: bool = False) -> dict:
    check_stored_config(obj.get("config"), path, trust)
    if obj.get("format") == LEGACY_PRUNED_FORMAT:
        return {"model": obj["model"].eval(), "config": obj["config"], "report": obj["report"]}
    from lightning_sparse_mtl.models.build import build_net  # once the file is known good: smp/timm are seconds

    cfg = obj.get("config")
    if not isinstance(cfg, dict):
        raise UserError(f"{path} holds no model config (found {type(cfg).__name__}); re-run prune on its checkpoint")
    try:
        net = apply_architecture(build_net(cfg), obj["architecture"], obj["state_dict"])
    except UserError as err:
        raise UserError(f"{path}: its config does not build: {err}") from None
    except (ValueError, RuntimeError, TypeError, KeyError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} does not fit the model its config describes: {first}") from None
    return {"model": net.eval(), "config": cfg, "report": obj.get("report") or {}}


def load_pruned(path: str | os.PathLike, trust: bool = False) -> dict:
    """``{"model": nn.Module (eval), "config": dict, "report": dict}`` from :func:`save_pruned` (or, with ``trust``,
    an old /1 file). Read as data; its config may name only known targets unless ``trust`` (runs code from it)."""
    obj = _read(path, trust)
    if not is_pruned_file(obj):
        raise UserError(f"{path} is not a pruned model file of lightning-sparse-mtl (run the prune command first)")
    return _pruned_from(obj, path, trust)


def load_any(path: str | os.PathLike, trust: bool = False):
    """A SparseMTLModule from a training checkpoint or a pruned model file (its net is then the compact one);
    ``trust`` as in :func:`load_module`."""
    obj = _read(path, trust)
    if is_pruned_file(obj):
        pruned = _pruned_from(obj, path, trust)
        module = _module_from_config(pruned["config"], path)
        module.net = pruned["model"]
        return module.eval()
    return load_module(path, trust)
