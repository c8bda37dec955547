"""A CSVLogger that a resumed run appends to: ``csv/metrics.csv`` ends up holding every epoch exactly once.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts. :class:`ResumableCSVLogger` instead keeps
the rows logged up to the checkpoint the run resumes from (rows of the interrupted, unfinished epoch are dropped:
they are logged again) and appends the new ones, widening the header when new columns appear.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lightning_sparse_mtl.core.atomic_io import atomic_write_text


def _keep(row: dict[str, str], epoch: int, global_step: int) -> bool:
    """Rows of epochs up to the checkpoint's; rows without an epoch (lr monitor) before its step."""
    if row.get("epoch") not in (None, ""):
        return float(row["epoch"]) <= epoch
    return row.get("step") not in (None, "") and float(row["step"]) < global_step


class _ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume: dict[str, int] | None) -> None:
        self._resume = resume
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._resume is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a fresh run: Lightning's behaviour
            return
        with open(self.metrics_file_path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if _keep(r, self._resume["epoch"], self._resume["global_step"])]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, buffer.getvalue())
        self.metrics_keys = sorted(header)
        if header != self.metrics_keys:  # Lightning writes sorted columns; keep the file consistent with that
            self._rewrite_with_new_header(self.metrics_keys)


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that keeps the rows before the resumed checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume: dict[str, int] | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir, resume=self.resume)
        return self._experiment


def prepare_csv_resume(trainer: Any, resume: dict[str, int] | None) -> None:
    """Tell the run's CSV loggers which checkpoint (epoch, global_step) the run resumes from."""
    for logger in trainer.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.resume = resume
