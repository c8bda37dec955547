"""Encoder factory by name (segmentation-models-pytorch encoders), no network access."""

from __future__ import annotations

import os

import torch
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from lightning_sparse_mtl.runs.errors import UserError, unknown_name

OUTPUT_STRIDES = (8, 16, 32)


def encoder_names() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return sorted(SMP_ENCODERS)


def build_encoder(name: str, output_stride: int = 32, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build an smp encoder returning a list of feature maps (strides 1, 2, 4, 8, 16, 32 capped at ``output_stride``).

    ``weights`` is None (random init) or a local state-dict file; nothing is downloaded.
    """
    if name not in SMP_ENCODERS:
        raise unknown_name("encoder", name, encoder_names())
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"model.output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise UserError(f"encoder weights file not found: {path}; give a local state-dict file or weights=null")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if len(missing) == len(encoder.state_dict()):
            raise UserError(f"encoder weights {path} match none of {name}'s parameters")
    return encoder
