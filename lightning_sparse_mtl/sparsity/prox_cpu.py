"""The compiled Adam prox on CPU float32: ``prox_cpu.c`` built once with the system C compiler, called through ctypes.

Why not ``torch.compile`` here: the generated reduction over rows walks each 16-column strip down all O rows,
which on this project's reference machine ran the Halley pass at ~4.6 GB/s against ~20 GB/s for a plain pass
(resnet34's 35 layers: 31 ms vs 14 ms for a sum over the same data); ``prox_cpu.c`` reads rows in memory order.
The library is cached under ``$XDG_CACHE_HOME/lightning_sparse_mtl/kernels`` (one file per source + flags +
compiler), built atomically so parallel jobs can race. Where no compiler works, ``kernels()`` is None and the
prox uses ``torch.compile`` (or eager), with one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("prox_cpu.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")
_LIB: dict[str, ctypes.CDLL | None] = {}
_f, _l, _p, _i = ctypes.c_float, ctypes.c_long, ctypes.c_void_p, ctypes.c_int


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "lightning_sparse_mtl" / "kernels"


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *FLAGS)).encode()).hexdigest()[:16]
    target = cache_dir() / f"prox_cpu_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(out)], check=True, capture_output=True, timeout=120)
            os.replace(out, target)
    lib = ctypes.CDLL(str(target))
    lib.halley_pass.argtypes = [_p, _p, _l, _l, _l, _f, _f, _p, _p, _p, _f, _p, _i]
    lib.halley_pass.restype = _i
    lib.halley_sums.argtypes = [_p, _p, _l, _l, _l, _f, _f, _p, _p, _p, _i]
    lib.halley_sums.restype = _i
    lib.prox_update.argtypes = [_p, _p, _l, _l, _l, _f, _f, _p, _p, _i]
    lib.prox_update.restype = _i
    return lib


def kernels() -> ctypes.CDLL | None:
    """The built library, or None (with one warning) where it cannot be built on this machine."""
    if "lib" not in _LIB:
        try:
            _LIB["lib"] = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            warnings.warn(
                f"the CPU prox kernel could not be built ({err} {detail.decode(errors='replace')[:200]}); "
                "the Adam prox uses torch.compile instead",
                stacklevel=3,
            )
            _LIB["lib"] = None
    return _LIB["lib"]


def usable(z: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether (O, I * K) ``z`` and ``v`` can go to the CPU kernel: float32, CPU, contiguous."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in (z, v))


def halley_pass(
    lib, z, v, k: int, inv_bc2: float, eps: float, tau, r, frozen, rtol: float
) -> tuple[torch.Tensor, bool]:
    """One pass from ``r`` (I,) over ``z``, ``v`` (O, I * K): (r_next (I,), done), as ``prox._pass``."""
    o, i = z.shape[0], z.shape[1] // k
    r = r.contiguous()
    r_next = torch.empty_like(r)
    flags = frozen.to(torch.uint8).contiguous()
    done = lib.halley_pass(
        z.data_ptr(), v.data_ptr(), o, i, k, inv_bc2, eps, tau.data_ptr(), r.data_ptr(), flags.data_ptr(), rtol,
        r_next.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if done < 0:
        raise MemoryError("the CPU prox kernel could not allocate its per-column sums")
    return r_next, bool(done)


def halley_sums(lib, z, v, k: int, inv_bc2: float, eps: float, tau, r) -> torch.Tensor:
    """(4, I) per-group sums (f, F1, F2, ||D z||^2) of one pass from ``r`` (I,) over ``z``, ``v`` (O, I * K), as
    ``prox.halley_sums`` (for groups that span several tensors)."""
    o, i = z.shape[0], z.shape[1] // k
    out = torch.empty(4, i, dtype=torch.float32)
    status = lib.halley_sums(
        z.data_ptr(), v.data_ptr(), o, i, k, inv_bc2, eps, tau.contiguous().data_ptr(), r.contiguous().data_ptr(),
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status < 0:
        raise MemoryError("the CPU prox kernel could not allocate its per-column sums")
    return out


def update_(lib, z, v, k: int, inv_bc2: float, eps: float, tau, r) -> None:
    """x = D z r / (D r + tau) written into ``z`` (O, I * K), as ``prox._update``."""
    o, i = z.shape[0], z.shape[1] // k
    status = lib.prox_update(
        z.data_ptr(), v.data_ptr(), o, i, k, inv_bc2, eps, tau.data_ptr(), r.contiguous().data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if status < 0:
        raise MemoryError("the CPU prox kernel could not allocate its per-column values")
