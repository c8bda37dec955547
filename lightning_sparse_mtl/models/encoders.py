"""Encoder factory by name: every segmentation-models-pytorch encoder, including ``tu-<timm model>``; no network.

``tu-<name>`` builds any model in ``timm.list_models()`` that timm can run as a feature extractor
(``features_only``) through smp's ``TimmUniversalEncoder``. ``output_stride`` 8/16 dilates the last
stages (timm ``output_stride``); models that cannot dilate or extract features give a one-line error.
"""

from __future__ import annotations

import difflib
import os

import timm
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.models.pretrained import load_pretrained

OUTPUT_STRIDES = (8, 16, 32)
TIMM_PREFIX = "tu-"


def encoder_names() -> list[str]:
    """smp's named encoders accepted by :func:`build_encoder` (plus any ``tu-<timm name>``)."""
    return sorted(SMP_ENCODERS)


def check_encoder_name(name: object) -> str:
    """``name`` if :func:`build_encoder` knows it, else a one-line :class:`UserError` naming the valid choices."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX) :]
        if timm.is_model(model):
            return name
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
        raise UserError(f"unknown encoder {name!r}: {model!r} is not in timm.list_models(){hint}")
    if not isinstance(name, str) or name not in SMP_ENCODERS:
        close = difflib.get_close_matches(str(name), encoder_names(), n=3, cutoff=0.6)
        hint = f"close: {', '.join(close)}; " if close else ""
        raise UserError(f"unknown encoder {name!r}; valid: an smp encoder ({hint}all {len(SMP_ENCODERS)}: "
                        "models.encoders.encoder_names()) or tu-<any timm.list_models() name>")  # fmt: skip
    return name


def build_encoder(name: str, output_stride: int = 32, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build an smp encoder returning a list of feature maps (strides 1, 2, 4, 8, 16, 32 capped at ``output_stride``).

    ``weights``: None (random init), a local weights file or a tag smp/timm know (see models.pretrained).
    """
    check_encoder_name(name)
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"model.output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    try:
        encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
    except (ValueError, TypeError, RuntimeError, AssertionError, NotImplementedError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"encoder {name!r} cannot be built at model.output_stride={output_stride}: {msg}") from err
    if weights is not None:
        load_pretrained(encoder, name, weights)
    return encoder
