"""A callback the W&B tests load by name (``+callbacks.probe._target_=helpers.wandb_probe.SummaryProbe``): at the
end of fit it reads the live run through wandb's public ``Run`` API (config, summary, name, group) and writes it
to ``<run dir>/wandb_probe.json`` — offline runs have no summary file, and the ``.wandb`` log is private."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def plain(value):
    """Summary sub-dicts (``{"max": ...}``) and config values as JSON-able Python objects."""
    if hasattr(value, "keys"):
        return {k: plain(value[k]) for k in value.keys()}
    return value


class SummaryProbe(L.Callback):
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                info = {"name": run.name, "group": run.group, "job_type": run.job_type,
                        "config": plain(dict(run.config)),
                        "summary": {k: plain(run.summary[k]) for k in run.summary.keys()}}  # fmt: skip
                (Path(trainer.default_root_dir) / "wandb_probe.json").write_text(json.dumps(info, default=str))
