"""Physically prune a trained checkpoint and measure it: ``python -m lightning_sparse_mtl.prune ckpt_path=<ckpt>``.

Writes, next to the checkpoint's run: ``pruned.pt`` (state dict + architecture; ``runs.checkpoints.load_pruned``
rebuilds it, ``torch.load(path, weights_only=True)`` reads it), ``pruned.pt2`` (``torch.export.load``) and, with
the ``[deploy]`` extra, ``pruned.onnx`` / ``dense.onnx``, each verified; and a speed report (params, exact MACs,
dense vs pruned latency per runtime and batch, median and IQR, per-layer profile) merged into the run's
``results.json`` under ``pruned/...``, ``dense/...`` and ``speed/...``. All of them are published as one set at
the end (``deploy.publish``): a prune that fails, is interrupted or killed leaves the files of an earlier prune.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lightning_sparse_mtl.core.errors import Interrupted, exit_on_user_error
from lightning_sparse_mtl.core.results import print_results
from lightning_sparse_mtl.core.validate import check_bool, check_prune_options, check_writable_file, require_ckpt_path
from lightning_sparse_mtl.runs.cli import entry_point  # not core.configs: that imports Lightning
from lightning_sparse_mtl.runs.data_paths import measured_input_size, point_data_at


def prune_checkpoint(
    ckpt_path: str, output: str | None = None, data_root: str | None = None, *, trust_checkpoint: bool = False, **kwargs
) -> dict | None:
    """Load a training checkpoint, prune and measure it; with the default output, merge the figures into its
    run's results.json (replacing the figures of an earlier prune). ``output=<elsewhere>`` leaves the run untouched.
    The checkpoint is read as data unless ``trust_checkpoint`` (runs code from the file)."""
    ckpt = Path(ckpt_path).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = check_writable_file(output, "output") if output else run_dir / "pruned.pt"
    if not output:
        check_writable_file(out, "output (default: the run directory)")
    from lightning_sparse_mtl.runs.checkpoints import load_module

    module = load_module(ckpt_path, trust_checkpoint)  # checks the file before it imports Lightning and the model code
    from lightning_sparse_mtl.deploy.compact import prune_and_measure  # Torch-Pruning, timm: seconds of imports

    point_data_at(module.cfg, data_root)  # kept in pruned.pt's config, so evaluate finds the data too
    measured_input_size(module.cfg, "prune")  # the data is there (one test image gives the input size)
    results = run_dir / "results.json"
    in_run = results.is_file() and out.parent.resolve() == run_dir.resolve()
    figures = prune_and_measure(module, out, results=results if in_run else None, **kwargs)
    if figures:
        print_results(figures, title=f"pruned model: {figures['pruned/path']}")
    return figures


@entry_point("prune")
def main(cfg: DictConfig) -> None:
    def run() -> None:
        check_prune_options(cfg)  # every option before the checkpoint is read
        trust = check_bool("trust_checkpoint", cfg.get("trust_checkpoint", False))
        prune_checkpoint(
            require_ckpt_path(cfg, "prune"), cfg.get("output"), cfg.get("data_root"), trust_checkpoint=trust,
            batch_sizes=list(cfg.batch_sizes), repeats=cfg.repeats, threads=cfg.threads, round_to=cfg.round_to,
            fold_bn=cfg.fold_bn, channels_last=cfg.channels_last, export=cfg.export, min_run_time=cfg.min_run_time,
        )  # fmt: skip

    def interruptible() -> None:
        try:
            run()
        except KeyboardInterrupt:  # Ctrl-C: one line (exit 130), not a traceback
            raise Interrupted("prune interrupted: pruned.pt, its exports and the figures in results.json are still "
                              "one prune's (the earlier one's unless this one had published); run it again"
                              ) from None  # fmt: skip

    exit_on_user_error(interruptible)


if __name__ == "__main__":
    main()
