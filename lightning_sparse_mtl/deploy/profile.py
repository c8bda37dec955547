"""Where the time goes: per-unit milliseconds (stem, every residual block, every head, "other") with each unit's
MACs (counted and effective), for eager PyTorch (forward hooks) and ONNX Runtime (its own node profiler).

"other" is what runs outside the units: upsampling of the head outputs, output activations, layout reorders.
The report is stored in the prune report: ``load_pruned(p)["report"]["profiles"][runtime]`` (``["profile"]``: eager).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_sparse_mtl.deploy.measure import macs_by_module


def profile_units(model: nn.Module) -> dict[str, list[str]]:
    """``{unit: [module paths]}``: ``encoder.stem`` (the encoder's children before its first stage: conv, BN,
    activation, pooling, reported as one unit since runtimes fuse them), every block of every stage
    (``encoder.layer1.0``, ...), later encoder children, and each head (``heads.<task>``). Paths are relative to
    the model (inside a ``ChannelsLast`` wrapper: to the wrapped model)."""
    units: dict[str, list[str]] = {}
    root = getattr(model, "model", model)  # ChannelsLast wrapper
    encoder = getattr(root, "encoder", None)
    if encoder is not None:
        stages_seen = False
        for name, child in encoder.named_children():
            if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 0:
                stages_seen = True
                units.update({f"encoder.{name}.{n}": [f"encoder.{name}.{n}"] for n, _ in child.named_children()})
            elif stages_seen:
                units[f"encoder.{name}"] = [f"encoder.{name}"]
            else:
                units.setdefault("encoder.stem", []).append(f"encoder.{name}")
    for name in getattr(root, "heads", {}):
        units[f"heads.{name}"] = [f"heads.{name}"]
    return units


def _with_other(ms: dict[str, float]) -> dict[str, float]:
    ms["other"] = max(ms["total"] - sum(v for k, v in ms.items() if k not in ("total", "other")), 0.0)
    return ms


@torch.inference_mode()
def layer_profile(model: nn.Module, x: torch.Tensor, threads: int, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds per unit of :func:`profile_units` on input ``x`` (B, 3, H, W), plus ``total`` and
    ``other`` (what runs outside the units: upsampling, output activations); forward hooks time each unit."""
    units = profile_units(model)
    spent: dict[str, list[float]] = {n: [] for n in [*units, "total"]}
    start: dict[str, float] = {}
    current: dict[str, float] = {}
    hooks = []

    def begin(name: str) -> Callable:
        return lambda m, a: start.__setitem__(name, time.perf_counter())

    def end(name: str) -> Callable:
        return lambda m, a, o: current.__setitem__(name, current.get(name, 0.0) + time.perf_counter() - start[name])

    root = getattr(model, "model", model)
    for name, paths in units.items():
        for path in paths:  # a unit's modules run one after the other: their times add up
            m = root.get_submodule(path)
            hooks += [m.register_forward_pre_hook(begin(name)), m.register_forward_hook(end(name))]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model(x)  # warm-up
        for _ in range(repeats):
            current.clear()
            t0 = time.perf_counter()
            model(x)
            spent["total"].append(time.perf_counter() - t0)
            for name in units:
                spent[name].append(current.get(name, 0.0))
    finally:
        torch.set_num_threads(old)
        for h in hooks:
            h.remove()
    return _with_other({name: 1e3 * statistics.median(v) for name, v in spent.items()})


def onnx_scope(node_name: str) -> str:
    """The dotted module path of an exported ONNX node: ``/encoder/layer4/layer4.1/relu/Relu_output_0_nchwc``
    -> ``encoder.layer4.1.relu`` (``""`` for nodes outside every module: resize, output activations)."""
    path = ""
    for part in node_name.split("/")[1:-1]:
        last = path.rpartition(".")[2]
        path = path[: len(path) - len(last)] + part if last and part.startswith(last + ".") else f"{path}.{part}"
    return path.strip(".")


def unit_aliases(model: nn.Module) -> dict[str, list[str]]:
    """``{unit: [dotted paths]}``: how the modules of each unit of :func:`profile_units` can appear in ONNX scopes
    (as named, and without containers that are never called, such as ``ModuleDict``: ``heads.seg`` -> ``seg``)."""
    root = getattr(model, "model", model)

    def called(path: str) -> str:
        parts = path.split(".")
        mods = [root.get_submodule(".".join(parts[: i + 1])) for i in range(len(parts))]
        return ".".join(p for p, m in zip(parts, mods) if not isinstance(m, nn.ModuleDict))

    return {u: list(dict.fromkeys([*paths, *map(called, paths)])) for u, paths in profile_units(model).items()}


def unit_of(scope: str, aliases: Mapping[str, list[str]]) -> str:
    """The unit whose (longest) alias is a dotted sub-path of ``scope``, else ``"other"``."""
    best, length = "other", 0
    for unit, names in aliases.items():
        for a in names:
            if f".{a}." in f".{scope}." and len(a) > length:
                best, length = unit, len(a)
    return best


def onnx_layer_profile(
    model: nn.Module, onnx_path: str | os.PathLike, x: torch.Tensor, threads: int, repeats: int = 20
) -> dict[str, float]:
    """Median milliseconds per unit of ``model`` (the module exported to ``onnx_path``) in ONNX Runtime,
    from its node profiler (``SessionOptions.enable_profiling``), plus ``total`` (sum over nodes) and ``other``."""
    import onnxruntime as ort

    units = profile_units(model)
    aliases = unit_aliases(model)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}
        session.run(None, feed)  # warm-up (profiled too: runs are told apart below)
        for _ in range(repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs: list[dict[str, float]] = []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs.append({})
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and runs:
            unit = unit_of(onnx_scope(e["name"][: -len("_kernel_time")]), aliases)
            runs[-1][unit] = runs[-1].get(unit, 0.0) + e["dur"] / 1e3
    runs = [r for r in runs[1:] if r] or runs  # drop the warm-up run
    ms = {u: statistics.median(r.get(u, 0.0) for r in runs) for u in [*units, "other"]}
    ms["total"] = statistics.median(sum(r.values()) for r in runs)
    return _with_other(ms)


def profile_report(
    dense: nn.Module, pruned: nn.Module, size: tuple[int, int], threads: int,
    onnx_paths: Mapping[str, str] | None = None, batch: int = 8,
) -> dict[str, dict]:  # fmt: skip
    """``{runtime: {batch, threads, dense_total_ms, pruned_total_ms, units: {unit: figures}}}`` for eager PyTorch
    and (with ``onnx_paths = {"dense": ..., "pruned": ...}``) ONNX Runtime. Unit figures: ``dense_ms``,
    ``pruned_ms``, ``pruned_share``, and per image ``{dense,pruned}_macs`` / ``..._macs_effective``."""
    x = torch.rand(batch, 3, *size)
    one = torch.rand(1, 3, *size)
    members = profile_units(pruned)
    macs = {}
    for k, m in (("dense", dense), ("pruned", pruned)):
        for pad in (True, False):
            per = macs_by_module(getattr(m, "model", m), one, pad)
            macs[k, pad] = {u: sum(per.get(path, 0) for path in paths) for u, paths in members.items()}
    timings = {"eager": (layer_profile(dense, x, threads), layer_profile(pruned, x, threads))}
    if onnx_paths:
        timings["onnxruntime"] = tuple(onnx_layer_profile(m, onnx_paths[k], x, threads)
                                       for k, m in (("dense", dense), ("pruned", pruned)))  # fmt: skip
    out = {}
    for runtime, (d, p) in timings.items():
        total = p["total"] or 1.0
        units = {}
        for n in p:
            if n == "total":
                continue
            units[n] = {"dense_ms": d.get(n, 0.0), "pruned_ms": p[n], "pruned_share": p[n] / total}
            for k in ("dense", "pruned"):
                units[n][f"{k}_macs"] = macs[k, True].get(n, 0)
                units[n][f"{k}_macs_effective"] = macs[k, False].get(n, 0)
        out[runtime] = {"runtime": runtime, "batch": batch, "threads": threads, "dense_total_ms": d["total"],
                        "pruned_total_ms": p["total"], "units": units, **ceiling(units, d["total"])}  # fmt: skip
    return out


def ceiling(units: Mapping[str, Mapping[str, float]], dense_total_ms: float) -> dict[str, float]:
    """What pruning left alone bounds the speedup: ``unpruned_ms`` = pruned-model time of the units whose MACs
    pruning did not change (and "other"); ``speedup_ceiling`` = dense total / that, the speedup if every pruned
    unit took no time at all."""
    fixed = sum(u["pruned_ms"] for u in units.values() if u["pruned_macs"] == u["dense_macs"])
    return {"unpruned_ms": fixed, "speedup_ceiling": dense_total_ms / fixed if fixed else float("inf")}


def print_profile(profile: Mapping[str, dict]) -> None:
    """One table per runtime: unit, dense / pruned ms, pruned share, MACs (counted and effective) per image."""
    for runtime, prof in profile.items():
        table = Table(title=f"where the pruned model spends its time ({runtime}, batch {prof['batch']}; MACs per "
                      "image, counted / effective = padding taps left out)")  # fmt: skip
        for col in ("unit", "dense ms", "pruned ms", "pruned share", "dense MACs", "pruned MACs"):
            table.add_column(col, justify="left" if col == "unit" else "right")
        for name, u in prof["units"].items():
            table.add_row(name, f"{u['dense_ms']:.2f}", f"{u['pruned_ms']:.2f}", f"{u['pruned_share']:.1%}",
                          f"{u['dense_macs'] / 1e6:.1f}M / {u['dense_macs_effective'] / 1e6:.1f}M",
                          f"{u['pruned_macs'] / 1e6:.1f}M / {u['pruned_macs_effective'] / 1e6:.1f}M")  # fmt: skip
        Console(width=200).print(table)
        print(f"{runtime}: units pruning left unchanged (and other) take {prof['unpruned_ms']:.2f} of "
              f"{prof['pruned_total_ms']:.2f} ms: speedup ceiling {prof['speedup_ceiling']:.2f} if the pruned units "
              "took no time")  # fmt: skip
