"""Deployment files, each verified after writing or not written at all.

- ``pruned.pt2``: ``torch.export`` program with a dynamic batch and (``dynamic_size``) a dynamic image height
  and width; ``torch.export.load(p).module()(x)`` returns ``{task: (B, C, H, W)}`` and needs only torch.
- ``*.onnx`` (extra ``[deploy]``: onnx + onnxruntime): input ``image`` (B, 3, H, W), one output per task
  (named after it), dynamic batch (and H, W); run with ``onnxruntime.InferenceSession(p).run(None, {"image": x})``.

Every file is written to a temp name in its folder, loaded back, run on every given input (two batch sizes,
and a second image size for a dynamic-size export) and compared with a reference model (max abs diff <=
``atol``); only then is it moved into place. A failed check raises ``ExportError`` and leaves no file.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_sparse_mtl.sparsity.pruning import _flatten, max_abs_diff


class ExportError(RuntimeError):
    """An export could not be written or did not reproduce the reference model."""


def onnx_available() -> bool:
    """True when the ``[deploy]`` extra (onnx, onnxruntime) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@torch.no_grad()
def _reference(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    return [[t.detach().clone() for t in _flatten(model.eval()(x))] for x in inputs]


def _verified_write(
    path: Path, write: Callable[[str], None], run: Callable[[str, torch.Tensor], list[torch.Tensor]],
    reference: nn.Module, inputs: Sequence[torch.Tensor], atol: float,
) -> float:  # fmt: skip
    """Write to a temp file, check ``run(tmp, x)`` against ``reference(x)`` for every x, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        expected = _reference(reference, inputs)
        write(tmp)
        diff = max(max_abs_diff(run(tmp, x), e) for x, e in zip(inputs, expected))
        if not diff <= atol:
            raise ExportError(f"{path.name}: exported model differs from the PyTorch model (max abs diff {diff:.3g})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return diff
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure is reported in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"{path.name}: export failed ({type(err).__name__}: {first[:300]})") from err
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_pt2(
    model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor], reference: nn.Module | None = None,
    atol: float = 1e-4, dynamic_size: bool = False,
) -> float:  # fmt: skip
    """``torch.export`` ``model`` (eval) with a dynamic batch to ``path``; returns the verified max abs diff.

    ``inputs``: two or more (B, 3, H, W) tensors of different batch sizes (and, with ``dynamic_size``, image
    sizes); the first is the trace example. ``reference`` (default ``model``): what the loaded program must
    reproduce. ``dynamic_size``: height and width are dynamic too (``Dim.AUTO``: what the model allows).
    """
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO} if dynamic_size else {0: batch}

    def write(tmp: str) -> None:
        with torch.no_grad():
            program = torch.export.export(model, (inputs[0],), dynamic_shapes=(dims,))
        torch.export.save(program, tmp)

    def run(tmp: str, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return _flatten(torch.export.load(tmp).module()(x))

    return _verified_write(Path(path), write, run, reference or model, inputs, atol)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor], output_names: Sequence[str],
    reference: nn.Module | None = None, atol: float = 1e-4, dynamic_size: bool = False,
) -> float:  # fmt: skip
    """ONNX export (opset 17, dynamic batch; ``dynamic_size``: dynamic H, W too) of ``model`` to ``path``, verified
    in ONNX Runtime on every input; returns the diff."""
    if not onnx_available():
        raise ExportError("ONNX export needs the [deploy] extra: pip install 'lightning-sparse-mtl[deploy]'")
    model = model.eval()
    names = list(output_names)

    def write(tmp: str) -> None:
        axes = {n: {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"} for n in ["image", *names]}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            torch.onnx.export(model, (inputs[0],), tmp, input_names=["image"], output_names=names,
                              dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip

    def run(tmp: str, x: torch.Tensor) -> list[torch.Tensor]:
        session = onnx_session(tmp, threads=None)
        return [torch.from_numpy(np.asarray(a)) for a in session.run(names, {"image": x.numpy()})]

    return _verified_write(Path(path), write, run, reference or model, inputs, atol)


def onnx_session(path: str | os.PathLike, threads: int | None = 2):
    """An ONNX Runtime CPU session (all graph optimisations, ``threads`` intra-op threads, 1 inter-op)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
