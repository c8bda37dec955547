"""Channel groups of the shared encoder: one group per *input* channel ``W[:, c]`` of each 4-D conv weight."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConvGroup:
    """The input-channel groups of one conv layer: ``weight`` (O, I, k, k) holds I groups of size p_g = O*k*k."""

    name: str
    weight: nn.Parameter

    @property
    def num_groups(self) -> int:
        return self.weight.shape[1]

    @property
    def group_size(self) -> int:
        o, _, kh, kw = self.weight.shape
        return o * kh * kw

    @property
    def sqrt_p(self) -> float:
        return math.sqrt(self.group_size)


def group_norms(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (O, I, k, k) -> (I,) Euclidean norm of every input-channel slice ``W[:, c]``."""
    return torch.linalg.vector_norm(weight, dim=(0, 2, 3))


def find_conv_groups(
    module: nn.Module, exclude_image_conv: bool = True, exclude: Sequence[str] = (), prefix: str = ""
) -> list[ConvGroup]:
    """All plain (``groups=1``) Conv2d layers of ``module`` as channel groups.

    ``exclude_image_conv`` drops convs reading the 3 image channels; ``exclude`` holds regexes matched
    (``re.search``) against the layer name. Grouped/depthwise convs are skipped: their input slices are
    not whole input channels.
    """
    patterns = [re.compile(p) for p in exclude]
    groups = []
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
            continue
        if exclude_image_conv and layer.in_channels == 3:
            continue
        full = f"{prefix}{name}"
        if any(p.search(full) for p in patterns):
            continue
        groups.append(ConvGroup(full, layer.weight))
    return groups
