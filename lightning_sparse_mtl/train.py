"""Train, test and (when lambda > 0) prune: ``python -m lightning_sparse_mtl.train [overrides]``."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_sparse_mtl.core.configs import plain_config
from lightning_sparse_mtl.core.errors import Interrupted, NonFiniteLossError, UserError, exit_on_user_error
from lightning_sparse_mtl.core.provenance import git_commit, package_versions
from lightning_sparse_mtl.core.results import print_results, write_results
from lightning_sparse_mtl.core.safe_load import allowed_globals
from lightning_sparse_mtl.core.validate import instantiate_checked
from lightning_sparse_mtl.data.checks import check_train_steps
from lightning_sparse_mtl.deploy.compact import prune_and_measure
from lightning_sparse_mtl.mtl.delta_m import delta_m, load_baselines, metric_directions
from lightning_sparse_mtl.peers import peer_settings
from lightning_sparse_mtl.peers.tp import dense_view
from lightning_sparse_mtl.reporting.run_summary import summary_text
from lightning_sparse_mtl.reporting.wandb_log import finish_loggers, log_final_tables, log_run_config
from lightning_sparse_mtl.runs.checkpoints import check_resume
from lightning_sparse_mtl.runs.cli import entry_point
from lightning_sparse_mtl.runs.csv_log import prepare_csv_resume
from lightning_sparse_mtl.runs.logfile import run_log
from lightning_sparse_mtl.runs.run_dir import discard_if_created, guard_run_dir, holds, release_run_dir
from lightning_sparse_mtl.runs.validate_train import validate_train_config
from lightning_sparse_mtl.sparsity.stats import sparsity_stats
from lightning_sparse_mtl.training.checkpoint_io import AtomicCheckpointIO
from lightning_sparse_mtl.training.module import SparseMTLModule


def current_run_dir() -> Path:
    """The Hydra run directory (or the current directory outside Hydra)."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def run_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}  # never a half-written ckpt
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir), **plugins
    )


def checkpoint_to_test(trainer: L.Trainer, which: str) -> str | None:
    """Absolute path of the checkpoint to test (``last`` or ``best``), None if nothing was saved."""
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is None:
        return None
    if which not in ("last", "best"):
        raise UserError(f"test_ckpt must be 'last' or 'best', got {which!r}")
    path = ckpt_cb.last_model_path if which == "last" else ckpt_cb.best_model_path
    return str(Path(path).resolve()) if path else None


def interrupted_message(saved: Path | None) -> str:
    last = saved.resolve() if saved and saved.is_file() else None
    if last is None:
        return "interrupted before the first checkpoint; nothing to resume, start the run again"
    return f"interrupted; resume with the same overrides plus hydra.run.dir={last.parent.parent} ckpt_path={last}"


def fit(
    trainer: L.Trainer, module: SparseMTLModule, datamodule: L.LightningDataModule, ckpt_path: str | None,
    trust: bool = False,
) -> None:  # fmt: skip
    """``trainer.fit``; a NaN/Inf stop names the last good checkpoint. The resume checkpoint is read as data
    (``weights_only=True``) unless ``trust`` (``trust_checkpoint=true``)."""
    cb = trainer.checkpoint_callback
    saved = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}" if cb and cb.dirpath else None
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    except NonFiniteLossError as err:
        last = str(saved.resolve()) if saved and saved.is_file() else None
        raise NonFiniteLossError(f"{err}; last good checkpoint: {last or 'none saved yet'}") from None
    except SystemExit:  # Lightning turns Ctrl-C into a graceful stop + sys.exit(1)
        if not trainer.interrupted:
            raise
    if trainer.interrupted:
        raise Interrupted(interrupted_message(saved))
    if trainer.global_step == 0:
        raise UserError(
            "training took no optimizer step (train batches per epoch: "
            f"{trainer.num_training_batches}); nothing is written: lower data.batch_size or raise "
            "trainer.limit_train_batches / max_epochs"
        )


def collect_results(cfg: DictConfig, module: SparseMTLModule, test_metrics: dict, run_dir: Path, start: float) -> dict:
    """The results.json dict: test metrics (+ delta_m), sparsity, size, provenance, config."""
    metrics = {k: float(v) for k, v in sorted(test_metrics.items()) if k.startswith("test/") and k != "test/loss"}
    if cfg.get("baselines"):
        baselines = load_baselines(OmegaConf.to_container(cfg.baselines))
        metrics["test/delta_m"] = delta_m(metrics, baselines, metric_directions(module.net.tasks.values()))
    stats = sparsity_stats(module.sparsity.groups)
    return {
        **metrics,
        "sparsity/group_sparsity": stats["group_sparsity"],
        "sparsity/weight_sparsity": stats["weight_sparsity"],
        "params": sum(p.numel() for p in module.net.parameters()),
        "wall_time_s": time.perf_counter() - start,
        "lambda": module.sparsity_weight if module.sparsity.active else 0.0,  # sparsity=none: a dense run
        "seed": cfg.seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "run_dir": str(run_dir.resolve()),
        "sparsity": stats,
        "method": module.method,  # method=<arm> (docs/peers.md)
        **({"peer": module.peer_callback.results()} if module.peer is not None else {}),
        **module.target_results(),  # target (issue 15): final lambda, settings, lambda trajectory
        "config": plain_config(cfg),
    }


def prune_options(prune_cfg) -> dict:
    """Keyword arguments of ``prune_and_measure`` from the ``prune:`` block of the train config."""
    keys = ("batch_sizes", "threads", "round_to", "fold_bn", "channels_last", "export", "min_run_time")
    opts = {k: prune_cfg[k] for k in keys if prune_cfg.get(k) is not None}
    if "batch_sizes" in opts:
        opts["batch_sizes"] = list(opts["batch_sizes"])
    return {**opts, "repeats": prune_cfg.get("latency_repeats", 5)}


def train(cfg: DictConfig) -> dict:
    """Fit, test, prune (lambda > 0), write ``results.json`` in the run directory; returns the results dict."""
    tasks = validate_train_config(cfg)  # the whole config, before anything is built or written
    sparsity = OmegaConf.to_container(cfg.sparsity, resolve=True) if cfg.get("sparsity") else {}
    peer_settings(cfg.get("method"), sparsity, float(cfg["lambda"]))  # method=<arm>: checked (oto_hesso refused) here
    with open_dict(cfg):
        cfg.tasks = tasks  # tasks=seg -> [seg]
    run_dir = current_run_dir()
    claimed_here = not holds(run_dir)
    guard_run_dir(run_dir, cfg.get("ckpt_path"), cfg)
    try:
        return _train(cfg, run_dir)
    finally:
        if claimed_here:
            release_run_dir(run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()
    trust = bool(cfg.get("trust_checkpoint", False))
    try:  # refused here (the data, its batch counts, the resume file): no run dir is left behind if made for this run
        module = SparseMTLModule(cfg)  # validates tasks, encoder, heads, sparsity before any data work
        datamodule = instantiate_checked("data", cfg.data)
        for stage in ("fit", "test"):  # build and validate every split (every file) before any training starts
            datamodule.setup(stage)
        check_train_steps(datamodule, cfg.trainer, cfg.tasks)
        resume = check_resume(module, cfg.ckpt_path, trust) if cfg.get("ckpt_path") else None
    except UserError:
        discard_if_created(run_dir)
        raise
    trainer = build_trainer(cfg, run_dir)
    prepare_csv_resume(trainer, resume)
    log_run_config(trainer, plain_config(cfg))
    failed = True
    try:
        fit(trainer, module, datamodule, cfg.get("ckpt_path"), trust)
        ckpt_path = checkpoint_to_test(trainer, cfg.get("test_ckpt", "last"))
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
        results = {**collect_results(cfg, module, test_metrics, run_dir, start), "ckpt_path": ckpt_path}
        if trainer.is_global_zero and (module.sparsity.active or module.peer is not None) and cfg.prune.after_train:
            measured = module if module.peer is None else dense_view(module)  # a peer's pruned net, dense form
            figures = prune_and_measure(measured, run_dir / "pruned.pt", **prune_options(cfg.prune))
            results.update(figures or {"pruned/channels_removed": 0})
        if trainer.is_global_zero:
            write_results(run_dir / "results.json", results)
            print_results(results, title=f"results ({run_dir})")
            log_final_tables(trainer, results)
            summary = summary_text(results, run_overrides())  # a run that pruned: the ten-second summary
            if summary:
                print(summary, flush=True)
        failed = False
    finally:
        finish_loggers(trainer, failed=failed)  # one W&B run per job
    return results


def sweep_value(results: dict, key: str | None) -> float | None:
    """The metric handed back to a Hydra sweeper (``optimized_metric``)."""
    if not key:
        return None
    if key not in results:
        valid = ", ".join(k for k in results if k.startswith("test/"))
        raise UserError(f"optimized_metric {key!r} is not in the results; valid: {valid}")
    return results[key]


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    with run_log():  # everything printed also goes to <run dir>/train.log
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # let Hydra record a failed job and run the others
            return sweep_value(train(cfg), cfg.get("optimized_metric"))
        return exit_on_user_error(lambda: sweep_value(train(cfg), cfg.get("optimized_metric")))


if __name__ == "__main__":
    main()
