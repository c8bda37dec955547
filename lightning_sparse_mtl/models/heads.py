"""Task heads. Each takes the encoder's feature list and returns (B, out_channels, h, w) or (B, out_channels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from torch import nn

from lightning_sparse_mtl.registry import Registry


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


DENSE_HEADS: Registry[type[nn.Module]] = Registry("head")


@DENSE_HEADS.register("conv")
class ConvHead(nn.Module):
    """Light head on the final feature map: conv3x3-BN-ReLU, conv1x1 -> (B, out, H/s, W/s)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.block = conv_bn_relu(in_channels[-1], hidden)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.block(features[-1]))


@DENSE_HEADS.register("aspp")
class ASPPHead(nn.Module):
    """DeepLabV3 head: ASPP on the final feature map, conv3x3-BN-ReLU, conv1x1."""

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, hidden: int = 256, rates: Sequence[int] = (12, 24, 36)
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels[-1], hidden, tuple(rates), separable=False, dropout=0.1)
        self.block = conv_bn_relu(hidden, hidden)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.block(self.aspp(features[-1])))


@DENSE_HEADS.register("skip")
class SkipHead(nn.Module):
    """Two-scale decoder: the final feature, upsampled, concatenated with the stride-4 skip feature."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.deep = conv_bn_relu(in_channels[-1], hidden, 1)
        self.skip = conv_bn_relu(in_channels[2], hidden // 2, 1)
        self.fuse = conv_bn_relu(hidden + hidden // 2, hidden)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skip = self.skip(features[2])
        deep = F.interpolate(self.deep(features[-1]), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(torch.cat([deep, skip], 1)))


class PoolHead(nn.Module):
    """Image-level head for attributes: global average pool of the final feature, linear -> (B, out)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, hidden: int = 0) -> None:
        super().__init__()
        self.out = nn.Linear(in_channels[-1], out_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.out(torch.flatten(F.adaptive_avg_pool2d(features[-1], 1), 1))
