"""Encoder factory by name (segmentation-models-pytorch encoders); pretrained weights via models.pretrained."""

from __future__ import annotations

import os

from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from lightning_sparse_mtl.models.pretrained import load_pretrained
from lightning_sparse_mtl.runs.errors import UserError, unknown_name

OUTPUT_STRIDES = (8, 16, 32)


def encoder_names() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return sorted(SMP_ENCODERS)


def build_encoder(name: str, output_stride: int = 32, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build an smp encoder returning a list of feature maps (strides 1, 2, 4, 8, 16, 32 capped at ``output_stride``).

    ``weights``: None (random init), a local weights file or a tag smp/timm know (see models.pretrained).
    """
    if name not in SMP_ENCODERS:
        raise unknown_name("encoder", name, encoder_names())
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"model.output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
    if weights is not None:
        load_pretrained(encoder, name, weights)
    return encoder
