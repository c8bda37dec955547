"""Only-Train-Once (OTO v3, HESSO): ``method=oto_hesso``, optional extra ``peers`` (``only-train-once==3.0.1``).

The arm runs only if OTO imports and builds its graph with the installed torch; otherwise it is refused in one line
that quotes the exact exception (docs/peers.md records the one measured here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError

OTO_VERSION = "3.0.1"


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0] if text else type(err).__name__


def oto_refusal() -> str | None:
    """None if ``only_train_once`` imports, else the one-line reason (the exact exception) it cannot run."""
    try:
        import only_train_once  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure refuses the arm with its own text
        return _one_line(err)
    return None


def check_oto_available() -> None:
    """Raise the arm's one-line :class:`UserError` when OTO cannot run here."""
    reason = oto_refusal()
    if reason is not None:
        raise UserError(
            f"method=oto_hesso needs only-train-once=={OTO_VERSION} (pip install -e .[peers]), which cannot run with "
            f"torch {torch.__version__}: {reason}"
        )


def build_oto(net: nn.Module, example: torch.Tensor) -> Any:
    """OTO's graph of ``net`` traced on ``example`` (1, 3, H, W); a failure is the arm's one-line refusal."""
    check_oto_available()
    from only_train_once import OTO

    try:
        return OTO(model=net, dummy_input=example)
    except Exception as err:  # noqa: BLE001 - OTO's graph builder fails in many ways; quote it, exactly
        raise UserError(f"method=oto_hesso: only-train-once could not build its graph: {_one_line(err)}") from None
