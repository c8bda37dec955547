"""One-line refusals of :func:`~lightning_sparse_mtl.sparsity.pruning.prune_zero_channels` (not tracebacks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_sparse_mtl.core.errors import UserError

T = TypeVar("T")


class PruneError(UserError, RuntimeError):
    """``prune_zero_channels`` cannot prune this model exactly (a RuntimeError too, as it always was)."""


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def check_real_values(model: nn.Module, example_inputs: Any) -> None:
    """Refuse a model or input on the meta device: zero channels are found from the weights' values."""
    inputs = (("example input", t) for t in _tensors(example_inputs))
    named = [*model.named_parameters(), *model.named_buffers(), *inputs]
    meta = [name for name, t in named if t.is_meta]
    if meta:
        raise PruneError(
            f"prune_zero_channels needs real values, but {meta[0]!r} is on the meta device (it has no values to find "
            "zero channels in): materialise the model and load its weights first (model.to_empty(device='cpu'); "
            "model.load_state_dict(...)) and pass a real example input"
        )


def run_pruned(forward: Callable[[], T]) -> T:
    """``forward()`` of the pruned model; a forward that fails is one line (the model hard-codes a channel count)."""
    try:
        return forward()
    except (RuntimeError, IndexError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PruneError(
            f"prune_zero_channels: the pruned model no longer runs ({first}): its forward hard-codes a channel count "
            "or position (a view/reshape to a fixed size, an index list); the model is left pruned: prune a copy "
            "and pass the layers before that op as ignored_layers"
        ) from None
