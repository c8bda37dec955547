"""Test-split metrics of a training checkpoint or of a pruned model file.

    python -m lightning_sparse_mtl.evaluate ckpt_path=<run>/checkpoints/last.ckpt
    python -m lightning_sparse_mtl.evaluate ckpt_path=<run>/pruned.pt

Both run the same Lightning test loop and metrics, so a dense checkpoint and its pruned model agree (within 1e-4).
"""

from __future__ import annotations

import json

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lightning_sparse_mtl.core.configs  # noqa: F401 - stores the Trainer schema evaluate.yaml builds on
from lightning_sparse_mtl.core.errors import UserError, exit_on_user_error
from lightning_sparse_mtl.core.results import print_results, to_jsonable, write_results
from lightning_sparse_mtl.core.validate import (
    check_bool,
    check_folder,
    check_int,
    check_writable_file,
    require_ckpt_path,
)
from lightning_sparse_mtl.runs.cli import entry_point
from lightning_sparse_mtl.runs.data_paths import point_data_at
from lightning_sparse_mtl.runs.logfile import quiet_known_noise
from lightning_sparse_mtl.runs.validate_train import check_num_nodes, check_trainer


def evaluate(
    ckpt_path: str, data_root: str | None = None, batch_size: int | None = None, trainer_kwargs: dict | None = None,
    *, trust_checkpoint: bool = False,
) -> dict[str, float]:  # fmt: skip
    """``{"test/<task>/<metric>": value}`` for the model in ``ckpt_path`` on its config's test split (the file is
    read as data and its config may name only known targets, unless ``trust_checkpoint``: runs code from it)."""
    import lightning as L  # here, not at the top: a bad path or checkpoint fails before seconds of imports

    from lightning_sparse_mtl.data.checks import check_eval_batches
    from lightning_sparse_mtl.runs.checkpoints import load_any

    module = load_any(ckpt_path, trust_checkpoint)
    point_data_at(module.cfg, data_root)
    data_cfg = dict(module.cfg["data"])
    if batch_size is not None:
        data_cfg["eval_batch_size"] = batch_size
    datamodule = instantiate(data_cfg)
    kwargs = {"enable_model_summary": False, **(trainer_kwargs or {}), "logger": False, "enable_checkpointing": False}
    check_eval_batches(datamodule, kwargs, ("test",))  # a fraction of the test batches that rounds to none
    trainer = L.Trainer(**kwargs)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    if not results:
        raise UserError("the test loop returned no metrics (no test batch ran); check trainer.limit_test_batches")
    metrics = results[0]
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test/") and k != "test/loss"}


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    quiet_known_noise()

    def run() -> None:
        ckpt_path = require_ckpt_path(cfg, "evaluate")
        trust = check_bool("trust_checkpoint", cfg.get("trust_checkpoint", False))
        if cfg.get("output"):
            check_writable_file(cfg.output, "output")  # before the test loop, not after
        trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "_target_"}
        check_trainer(trainer)
        check_num_nodes(trainer.get("num_nodes", 1))  # no cluster: the test loop would wait forever
        if cfg.get("batch_size") is not None:
            check_int("batch_size", cfg.batch_size, 1, example=32)
        if cfg.get("data_root") is not None:
            check_folder("data_root", cfg.data_root)
        metrics = evaluate(ckpt_path, cfg.get("data_root"), cfg.get("batch_size"), trainer, trust_checkpoint=trust)
        print_results(metrics, title=f"test metrics of {cfg.ckpt_path}")
        if cfg.get("output"):
            write_results(cfg.output, metrics)
        print(json.dumps(to_jsonable(metrics)))

    exit_on_user_error(run)


if __name__ == "__main__":
    main()
