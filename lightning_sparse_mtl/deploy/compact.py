"""The compact model: prune a trained net (a copy), put it in inference form, export, verify, measure, save.

Files written next to ``output`` (default ``<run>/pruned.pt``): ``pruned.pt`` (state dict + architecture),
``pruned.pt2`` (torch.export), and with the ``[deploy]`` extra ``pruned.onnx`` and ``dense.onnx``; published as one
set with the run's ``results.json`` (:mod:`~lightning_sparse_mtl.deploy.publish`: a kill leaves the earlier set). Every
model derived from the trained net (pruned, rounded, BN-folded, exported) is checked against the zero-masked
dense net on random input (max abs diff <= 1e-4).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.results import read_results, write_results
from lightning_sparse_mtl.data.datamodule import input_size_of
from lightning_sparse_mtl.deploy import export as ex
from lightning_sparse_mtl.deploy.inference import compare, inference_form
from lightning_sparse_mtl.deploy.measure import count_macs, count_params
from lightning_sparse_mtl.deploy.profile import print_profile, profile_report
from lightning_sparse_mtl.deploy.pruned_file import save_pruned
from lightning_sparse_mtl.deploy.publish import staging
from lightning_sparse_mtl.deploy.speed import eager_runner, onnx_runner, speed_table
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels

ATOL = 1e-4


def prune_copy(dense: torch.nn.Module, size: tuple[int, int], round_to: int = 1):
    """(pruned copy of ``dense``, PruneReport); ``round_to`` keeps multiples of N channels (still exact)."""
    pruned = copy.deepcopy(dense).eval()
    report = prune_zero_channels(pruned, torch.rand(2, 3, *size), pruned.head_output_layers(), ATOL, round_to)
    return pruned, report


def export_paths(output: Path) -> dict[str, Path]:
    """Where a prune to ``output`` (``<dir>/pruned.pt``) puts its exports: ``{figure key: path}``."""
    return {"pruned/pt2_path": output.with_suffix(".pt2"), "pruned/onnx_path": output.with_suffix(".onnx"),
            "dense/onnx_path": output.parent / "dense.onnx"}  # fmt: skip


def other_size(size: Sequence[int]) -> tuple[int, int]:
    """A second image size to verify dynamic-size exports at: 32 px more each way (a multiple of every stride)."""
    return (int(size[0]) + 32, int(size[1]) + 32)


def _exports(dense_inf, pruned_inf, dense, output: Path, size, tasks: Sequence[str]) -> dict[str, str | float]:
    """Verified exports with a dynamic batch and image size (checked at ``size`` and :func:`other_size`); a model
    whose exports cannot take another size (shape-dependent code) gets fixed-size exports and a warning."""
    try:
        return {**_write_exports(dense_inf, pruned_inf, dense, output, size, tasks, True), "pruned/dynamic_size": 1}
    except ex.ExportError as err:
        warnings.warn(f"exports with a dynamic image size failed ({err}); writing fixed-size exports", stacklevel=2)
    try:
        return {**_write_exports(dense_inf, pruned_inf, dense, output, size, tasks, False), "pruned/dynamic_size": 0}
    except ex.ExportError as err:
        raise UserError(str(err)) from None


def _write_exports(dense_inf, pruned_inf, dense, output: Path, size, tasks: Sequence[str], dynamic: bool) -> dict:
    inputs = [torch.rand(2, 3, *size), torch.rand(3, 3, *size)] + ([torch.rand(1, 3, *other_size(size))] * dynamic)
    paths = export_paths(output)
    out: dict[str, str | float] = {}
    out["pruned/pt2_max_abs_diff"] = ex.export_pt2(pruned_inf, paths["pruned/pt2_path"], inputs, dense, ATOL, dynamic)
    out["pruned/pt2_path"] = str(paths["pruned/pt2_path"])
    if ex.onnx_available():
        for k, model in (("pruned", pruned_inf), ("dense", dense_inf)):
            path = paths[f"{k}/onnx_path"]
            out[f"{k}/onnx_max_abs_diff"] = ex.export_onnx(model, path, inputs, tasks, dense, ATOL, dynamic)
            out[f"{k}/onnx_path"] = str(path)
    else:
        print("ONNX export skipped: install the [deploy] extra (onnx, onnxruntime) for pruned.onnx / dense.onnx")
    return out


def _runners(dense_inf, pruned_inf, files: dict, threads: int) -> dict:
    runners = {"eager": {"dense": eager_runner(dense_inf), "pruned": eager_runner(pruned_inf)}}
    if "pruned/onnx_path" in files:
        runners["onnxruntime"] = {
            k: onnx_runner(ex.onnx_session(files[f"{k}/onnx_path"], threads)) for k in ("dense", "pruned")
        }
    if torch.cuda.is_available():
        gpu = {k: copy.deepcopy(m).cuda() for k, m in (("dense", dense_inf), ("pruned", pruned_inf))}
        runners["cuda_eager"] = {k: eager_runner(m, "cuda") for k, m in gpu.items()}
        runners["cuda_compile"] = {k: eager_runner(torch.compile(m), "cuda") for k, m in gpu.items()}
    return runners


def prune_and_measure(
    module, output: Path, batch_sizes: Sequence[int] = (1, 8, 32), repeats: int = 5, threads: int = 2,
    round_to: int = 1, fold_bn: bool = True, channels_last: bool = True, export: bool = True,
    min_run_time: float = 0.2, profile: bool = True, results: Path | None = None,
) -> dict | None:  # fmt: skip
    """Prune ``module.net`` (a copy), verify, export, time dense vs pruned, save; return the figures.

    ``repeats``: interleaved timing rounds per (runtime, batch). Returns None (and writes nothing) when no
    channel is removable. The MACs ratio is always the exact pruning's (``round_to`` does not change it).
    ``results``: a results.json beside ``output`` whose figures of an earlier prune are replaced by these,
    published with the files (all of them or none: a prune that fails or is killed leaves the earlier set).
    """
    final = export_paths(output)
    if len({output, *final.values()}) < 4:
        names = ", ".join(p.name for p in final.values())
        raise UserError(f"output={output} would write two of its files ({names}) to one path: name it like pruned.pt")
    dense = module.net.eval()
    size = input_size_of(module.cfg)
    exact, report = prune_copy(dense, size)
    removed = sum(report.channels_removed.values())
    if removed == 0:
        print("nothing to prune: no channel has all-zero weights in every layer that reads it (train with lambda > 0)")
        return None
    pruned = prune_copy(dense, size, round_to)[0] if round_to > 1 else exact
    one = torch.rand(1, 3, *size)
    figures: dict = {
        "dense/params": count_params(dense), "pruned/params": count_params(exact),
        "dense/macs": count_macs(dense, one), "pruned/macs": count_macs(exact, one),
        "pruned/channels_removed": removed, "pruned/max_abs_diff": report.max_abs_diff, "pruned/round_to": round_to,
    }  # fmt: skip
    figures["pruned/macs_ratio"] = figures["dense/macs"] / max(figures["pruned/macs"], 1)
    figures["dense/macs_effective"] = count_macs(dense, one, count_padding=False)
    figures["pruned/macs_effective"] = count_macs(exact, one, count_padding=False)
    figures["pruned/macs_ratio_effective"] = figures["dense/macs_effective"] / max(figures["pruned/macs_effective"], 1)
    if round_to > 1:
        figures["pruned/macs_rounded"] = count_macs(pruned, one)
        figures["pruned/params_rounded"] = count_params(pruned)
        back = (figures["pruned/macs_rounded"] - figures["pruned/macs"]) / max(
            figures["dense/macs"] - figures["pruned/macs"], 1
        )
        if back > 0.5:
            print(f"warning: round_to={round_to} gives back {back:.0%} of the MACs pruning removed (layers narrower "
                  "than it keep all their channels); the speedup is still divided by the exact MACs ratio: use a "
                  "smaller round_to (8 measured fastest, docs/deployment.md)")  # fmt: skip
    example = torch.rand(2, 3, *size)
    dense_inf = inference_form(dense, example, fold_bn, channels_last, ATOL)[0]
    pruned_inf = inference_form(pruned, example, fold_bn, channels_last, ATOL)[0]
    diff = figures["pruned/inference_form_max_abs_diff"] = compare(dense, pruned_inf, example)
    if not diff <= ATOL:
        raise UserError(f"the inference form of the pruned model differs from the dense model by {diff:.3g}")
    figures.update({"speed/fold_bn": fold_bn, "speed/channels_last": channels_last})
    # every file is written to a staging folder beside the output and the set is moved into place at the end:
    # a prune that fails, is interrupted or killed leaves the files of an earlier prune as they were
    with staging(output.parent) as stage:
        files = _exports(dense_inf, pruned_inf, dense, stage.path(output), size, list(dense.tasks)) if export else {}
        figures.update(files)
        speed, records = speed_table(_runners(dense_inf, pruned_inf, files, threads), size, batch_sizes, threads,
                                     figures["pruned/macs_ratio"], repeats, min_run_time,
                                     figures["pruned/macs_ratio_effective"])  # fmt: skip
        figures.update(speed)
        figures.update(headline(speed, records, batch_sizes))
        figures["speed/records"] = records
        devices = ",".join(sorted({r["device"] for r in records}))
        figures.update({"speed/threads": threads, "speed/input_size": list(size), "speed/device": devices})
        staged = {k: files[k] for k in final if k in files}
        figures.update({k: str(final[k]) for k in staged})
        prune_report = {**report.to_dict(), **{k: v for k, v in figures.items() if k != "speed/records"}}
        if profile:
            onnx_paths = (
                {k: staged[f"{k}/onnx_path"] for k in ("dense", "pruned")} if staged.get("pruned/onnx_path") else None
            )
            profiles = profile_report(dense_inf, pruned_inf, size, threads, onnx_paths)
            prune_report["profile"], prune_report["profiles"] = profiles["eager"], profiles
            print_profile(profiles)
        save_pruned(stage.path(output), pruned, module.cfg, prune_report)
        figures["pruned/path"] = str(output.resolve())
        if results is not None:
            kept = {k: v for k, v in read_results(results).items() if not k.startswith(("pruned/", "dense/", "speed/"))}
            write_results(stage.path(results), {**kept, **figures})
        stage.commit(
            {output: True, **{path: k in staged for k, path in final.items()}, **({results: True} if results else {})}
        )
    print_speed(records, figures["pruned/macs_ratio"], figures["pruned/macs_ratio_effective"])
    return figures


def headline(speed: dict, records: list[dict], batch_sizes: Sequence[int]) -> dict:
    """Legacy eager keys (``{dense,pruned}/latency_b{B}_ms``, ``pruned/speedup_b{B}``, ...) and the headline:
    speedup / exact MACs ratio in the runtime whose pruned model is fastest at batch 8 (or the largest batch)."""
    out = {}
    for b in batch_sizes:
        for k in ("dense", "pruned"):
            out[f"{k}/latency_b{b}_ms"] = speed[f"{k}/eager/latency_b{b}_ms"]
        out[f"pruned/speedup_b{b}"] = speed[f"pruned/eager/speedup_b{b}"]
        out[f"pruned/speedup_over_macs_ratio_b{b}"] = speed[f"pruned/eager/speedup_over_macs_ratio_b{b}"]
    b = 8 if 8 in batch_sizes else max(batch_sizes)
    best = min((r for r in records if r["batch"] == b), key=lambda r: r["pruned_ms"])
    out.update({"pruned/best_runtime": best["runtime"], "pruned/best_runtime_batch": b,
                "pruned/best_runtime_speedup": best["speedup"],
                "pruned/best_runtime_speedup_iqr": best.get("speedup_iqr", 0.0),
                "pruned/best_runtime_speedup_over_macs_ratio": best["speedup_over_macs_ratio"]})  # fmt: skip
    if "speedup_over_effective_macs_ratio" in best:
        out["pruned/best_runtime_speedup_over_effective_macs_ratio"] = best["speedup_over_effective_macs_ratio"]
    return out


def print_speed(records: list[dict], macs_ratio: float, effective_ratio: float | None = None) -> None:
    eff = f", effective {effective_ratio:.2f} (padding taps left out)" if effective_ratio else ""
    table = Table(title=f"dense vs pruned (exact MACs ratio {macs_ratio:.2f}{eff}; median of interleaved blocks, IQR;"
                  " speedup: median over rounds of dense / pruned timed back to back)")  # fmt: skip
    cols = ["runtime", "batch", "dense ms (IQR)", "pruned ms (IQR)", "speedup (IQR)", "speedup / MACs ratio"]
    for col in cols + (["speedup / effective"] if effective_ratio else []):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in records:
        extra = [f"{r['speedup_over_effective_macs_ratio']:.2f}"] if effective_ratio else []
        table.add_row(r["runtime"], str(r["batch"]), f"{r['dense_ms']:.2f} ({r['dense_iqr_ms']:.2f})",
                      f"{r['pruned_ms']:.2f} ({r['pruned_iqr_ms']:.2f})",
                      f"{r['speedup']:.2f} ({r.get('speedup_iqr', 0.0):.2f})",
                      f"{r['speedup_over_macs_ratio']:.2f}", *extra)  # fmt: skip
    Console(width=200).print(table)
