"""Hydra entry points whose composition errors are one line too: an override that does not parse, an unknown
config group option, a key outside the schema give ``error: …`` and exit status 2, like every refused input.

Only errors raised before the task function starts are rewritten; a crash inside it keeps Hydra's traceback
(``HYDRA_FULL_ERROR=1`` shows the full stack of either).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import hydra
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from lightning_sparse_mtl.core.config_dir import CONFIG_DIR

_STATE = {"task_started": False}
_PARSE_HINT = ("; the override does not parse: write key=value, a list as [a,b], and quote a value with spaces "
               "or non-ASCII letters, e.g. tasks=['ség'] or key='a value'")  # fmt: skip
_NOISE = re.compile(r"^\s*(\^+|full_key:|object_type=|reference_type=|See https://hydra\.cc|Set the environment)")


def one_line(err: BaseException) -> str:
    """The message of ``err`` and of its cause, on one line (Hydra's pointers and OmegaConf's key dumps dropped)."""
    parts: list[str] = []
    for e in (err, err.__cause__):
        if e is None:
            continue
        text = str(e).split("Config search path:")[0]  # Hydra's list of search paths: not the user's mistake
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _NOISE.match(ln)]
        text = " ".join(lines)
        if text and text not in parts:
            parts.append(text)
    return "; ".join(parts) or type(err).__name__


@contextlib.contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """While Hydra composes the config, its errors (and OmegaConf's) exit with one ``error:`` line, status 2."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:  # before the task runs: the config does not compose (Hydra, OmegaConf)
                if _STATE["task_started"] or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                kind = "" if isinstance(err, HydraException | OmegaConfBaseException) else f"{type(err).__name__}: "
                hint = _PARSE_HINT if isinstance(err, OverrideParseException) else ""
                print(f"error: {kind}{one_line(err)}{hint}", file=sys.stderr, flush=True)
                sys.exit(2)

        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def entry_point(config_name: str) -> Callable[[Callable[..., Any]], Callable[[], Any]]:
    """``hydra.main`` over ``conf/<config_name>.yaml`` with one-line composition errors (see module doc)."""

    def decorate(fn: Callable[..., Any]) -> Callable[[], Any]:
        @functools.wraps(fn)  # Hydra unwraps __wrapped__: the job is still named after fn's module
        def task(cfg: Any) -> Any:
            _STATE["task_started"] = True
            return fn(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)

        @functools.wraps(fn)
        def main() -> Any:
            _STATE["task_started"] = False
            with one_line_hydra_errors():
                return hydra_main()

        return main

    return decorate
