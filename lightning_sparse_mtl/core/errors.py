"""User-facing errors: one line, non-zero exit, no traceback wall."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input (config, data, checkpoint) that the message explains how to fix."""


class NonFiniteLossError(UserError):
    """A loss term or the penalty became NaN/Inf during training."""


class Interrupted(UserError):
    """Training was stopped by the user (Ctrl-C / SIGINT); the message names the checkpoint to resume from."""

    exit_code = 130


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> UserError:
    """Error for an unknown name, listing the valid ones."""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


def user_message(err: UserError) -> str:
    """The message of ``err``; raised in a DataLoader worker, torch wraps it in the worker's traceback: its
    last line (``…UserError: <message>``) is the message."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def exit_on_user_error(fn: Callable[[], T]) -> T:
    """Run ``fn``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit status 2 (130: interrupted)."""
    try:
        return fn()
    except UserError as err:
        print(f"error: {user_message(err)}", file=sys.stderr, flush=True)
        sys.exit(getattr(err, "exit_code", 2))
