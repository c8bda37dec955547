"""The run's ``train.log`` holds everything the run prints, and known start-up noise is silenced.

Hydra's file handler already writes Python ``logging`` records to ``<run dir>/<job name>.log``; :func:`run_log`
adds what bypasses logging: ``print`` and rich tables (stdout), warnings and ``error: ...`` lines (stderr),
Lightning's own messages (its handler writes to stderr) and the traceback of a crash. Progress-bar redraws
(carriage returns, cursor moves) stay on the terminal only; colour codes are stripped from the file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# Start-up messages that carry no information for a run of this project (matched on the message start).
NOISE = (
    "💡 Tip: For seamless cloud logging",  # Lightning advertising litlogger at every Trainer init
    "The following callbacks returned in `LightningModule.configure_callbacks` will override",  # by design
)
NOISY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)  # lightning's pytree shim on torch >= 2.9
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_REDRAW = re.compile(r"\r|\x1b\[[0-9]*[ABCDKGJ]")


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def quiet_known_noise() -> None:
    """Drop the known start-up noise (idempotent); every other message and warning is kept."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in (*LIGHTNING_LOGGERS, None):  # handler filters also see records propagated from child loggers
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoiseFilter) for f in handler.filters):
                handler.addFilter(_NoiseFilter())


class Tee:
    """A text stream that writes to ``stream`` and (without redraws and colour codes) to ``log``."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        if text and not _REDRAW.search(text):
            self.log.write(_ANSI.sub("", text))
            self.log.flush()
        return n

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


def default_log_path() -> Path:
    """``<hydra run dir>/<job name>.log`` (the file Hydra's own file handler writes), ``./train.log`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
    return Path.cwd() / "train.log"


@contextlib.contextmanager
def run_log(path: str | Path | None = None) -> Iterator[Path]:
    """Inside the block, stdout, stderr and Lightning's messages are also appended to ``path``."""
    quiet_known_noise()
    path = Path(path) if path is not None else default_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(out, log), Tee(err, log)
        redirected = []
        for name in LIGHTNING_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream in (out, err):
                    redirected.append((handler, handler.setStream(sys.stderr)))
        try:
            yield path
        except BaseException as exc:
            if not isinstance(exc, SystemExit | KeyboardInterrupt):
                log.write("".join(traceback.format_exception(exc)))
            elif isinstance(exc, KeyboardInterrupt):
                log.write("interrupted (KeyboardInterrupt)\n")
            raise
        finally:
            for handler, stream in redirected:
                handler.setStream(stream)
            sys.stdout, sys.stderr = out, err
