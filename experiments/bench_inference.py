"""Dense vs physically pruned inference, side by side: exact MACs ratio, speedup and their quotient per runtime.

    python experiments/bench_inference.py [--ckpt <run>/checkpoints/last.ckpt] [--models resnet18:8 ...]
        [--fractions 0.5 0.7] [--size 64 128] [--threads 2] [--rounds 5] [--min-run-time 0.2] [--out bench.json]

Rows: 3-task models (seg 11, depth, normal; conv heads) with a fraction of every grouped encoder layer's input
groups set to exact zero at random, and with ``--ckpt`` the real sparsity of a training run (its own model and
input size). With ``--ckpt`` it also compares inference forms of that model (BN folded or not, channels_last,
``round_to`` 8/16) so the export default is chosen by measurement. Every cell times dense and pruned in one
process, interleaved (torch.utils.benchmark, median and IQR); runtimes: eager PyTorch and ONNX Runtime (CPU).
The MACs ratio is always the exact pruning's, counted by convention (every kernel tap, padding included) and
effective (taps on zero padding left out: what direct-convolution runtimes compute). Goal: speedup >= 0.85 x
MACs ratio at batch 8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lightning_sparse_mtl.deploy import export as ex
from lightning_sparse_mtl.deploy.compact import input_size_of, prune_copy
from lightning_sparse_mtl.deploy.inference import inference_form
from lightning_sparse_mtl.deploy.measure import count_macs
from lightning_sparse_mtl.deploy.speed import eager_runner, onnx_runner, speed_table
from lightning_sparse_mtl.models.net import MultiTaskNet
from lightning_sparse_mtl.mtl.tasks import build_tasks
from lightning_sparse_mtl.sparsity.groups import find_conv_groups

MODELS = ["resnet18:8", "resnet34:8", "resnet50:8", "mobilenet_v2:8"]
FORMS = {  # name -> (fold_bn, channels_last, round_to)
    "unfolded": (False, False, 1), "folded": (True, False, 1), "folded+channels_last": (True, True, 1),
    "folded+round8": (True, False, 8), "folded+round16": (True, False, 16),
    "folded+round8+channels_last": (True, True, 8),
}  # fmt: skip


@torch.no_grad()
def zero_random_groups(net: torch.nn.Module, fraction: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for group in find_conv_groups(net.encoder):
        group.weight[:, torch.randperm(group.num_groups, generator=g)[: int(fraction * group.num_groups)]] = 0


def measure(label: str, dense: torch.nn.Module, size: tuple[int, int], args, form: str = "folded") -> list[dict]:
    """One row per (runtime, batch): dense vs pruned in inference form ``form``."""
    fold_bn, channels_last, round_to = FORMS[form]
    dense = dense.eval()
    exact, _ = prune_copy(dense, size)
    pruned = prune_copy(dense, size, round_to)[0] if round_to > 1 else exact
    one = torch.rand(1, 3, *size)
    macs_ratio = count_macs(dense, one) / count_macs(exact, one)
    effective = count_macs(dense, one, count_padding=False) / count_macs(exact, one, count_padding=False)
    example = torch.rand(2, 3, *size)
    d_inf = inference_form(dense, example, fold_bn, channels_last)[0]
    p_inf = inference_form(pruned, example, fold_bn, channels_last)[0]
    runners = {"eager": {"dense": eager_runner(d_inf), "pruned": eager_runner(p_inf)}}
    with tempfile.TemporaryDirectory() as tmp:
        if "onnxruntime" in args.runtimes and ex.onnx_available():
            inputs = [example, torch.rand(3, 3, *size)]
            sessions = {}
            for k, m in (("dense", d_inf), ("pruned", p_inf)):
                ex.export_onnx(m, Path(tmp) / f"{k}.onnx", inputs, list(dense.tasks), reference=dense)
                sessions[k] = onnx_runner(ex.onnx_session(Path(tmp) / f"{k}.onnx", args.threads))
            runners["onnxruntime"] = sessions
        runners = {k: v for k, v in runners.items() if k in args.runtimes}
        _, records = speed_table(runners, size, args.batch_sizes, args.threads, macs_ratio, args.rounds,
                                 args.min_run_time, effective)  # fmt: skip
    for r in records:
        r.update({"model": label, "form": form, "macs_ratio": macs_ratio, "macs_ratio_effective": effective})
        print(f"{label:32s} {form:22s} {r['runtime']:12s} b{r['batch']:<3d} dense {r['dense_ms']:8.2f} ms "
              f"pruned {r['pruned_ms']:8.2f} ms  speedup {r['speedup']:.2f}  /MACs {r['speedup_over_macs_ratio']:.2f}"
              f"  /effective {r['speedup_over_effective_macs_ratio']:.2f}", flush=True)  # fmt: skip
    return records


def markdown(records: list[dict]) -> str:
    lines = ["| model / sparsity | form | runtime | batch | MACs ratio (effective) | dense ms (IQR) | "
             "pruned ms (IQR) | speedup | ÷ MACs ratio | ÷ effective |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in records:
        lines.append(f"| {r['model']} | {r['form']} | {r['runtime']} | {r['batch']} | {r['macs_ratio']:.2f} "
                     f"({r['macs_ratio_effective']:.2f}) | {r['dense_ms']:.2f} ({r['dense_iqr_ms']:.2f}) | "
                     f"{r['pruned_ms']:.2f} ({r['pruned_iqr_ms']:.2f}) | {r['speedup']:.2f} | "
                     f"{r['speedup_over_macs_ratio']:.2f} | "
                     f"{r['speedup_over_effective_macs_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--runtimes", nargs="*", default=["eager", "onnxruntime"])
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.5, 0.7])
    parser.add_argument("--models", nargs="*", default=MODELS, help="encoder:output_stride")
    parser.add_argument("--ckpt", default=None, help="a training checkpoint whose real sparsity is measured too")
    parser.add_argument("--forms", nargs="*", default=list(FORMS), help="inference forms compared on --ckpt")
    parser.add_argument(
        "--random-form",
        default="folded+round8",
        choices=list(FORMS),
        help="inference form of the random-sparsity rows (default: the export default)",
    )
    parser.add_argument("--out", default=None, help="write all records as JSON here")
    args = parser.parse_args()
    records: list[dict] = []
    if args.ckpt:
        from lightning_sparse_mtl.runs.checkpoints import load_module
        from lightning_sparse_mtl.sparsity.stats import sparsity_stats

        module = load_module(args.ckpt)
        pct = sparsity_stats(module.sparsity.groups)["group_sparsity"]
        label = f"{module.cfg['model']['encoder']} OS{module.cfg['model']['output_stride']} / {pct:.0f}% trained"
        for form in args.forms:
            records += measure(label, module.net, input_size_of(module.cfg), args, form)
    tasks = build_tasks(["seg", "depth", "normal"], num_classes=11)
    for spec in args.models:
        encoder, os_ = spec.split(":")
        for fraction in args.fractions:
            torch.manual_seed(0)
            net = MultiTaskNet(tasks, encoder=encoder, output_stride=int(os_), head="conv")
            zero_random_groups(net, fraction)
            try:
                records += measure(
                    f"{encoder} OS{os_} / {fraction:.0%} random", net, tuple(args.size), args, args.random_form
                )
            except (RuntimeError, ex.ExportError) as err:  # e.g. a backbone the pruner cannot handle yet
                print(f"{encoder} OS{os_}: skipped ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
    print(markdown(records))
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
