"""MultiTaskNet: one shared encoder, run once per forward, and one head per task."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_sparse_mtl.models.encoders import build_encoder
from lightning_sparse_mtl.models.heads import DENSE_HEADS, PoolHead
from lightning_sparse_mtl.models.pretrained import input_stats
from lightning_sparse_mtl.mtl.tasks import TaskSpec


class MultiTaskNet(nn.Module):
    """``forward(image (B,3,H,W)) -> {task: prediction}``; dense outputs are upsampled to (H, W).

    Dense predictions are (B, C_task, H, W) after the task's activation (unit normals for ``normal``);
    attribute predictions are logits (B, 1). Images are in [0, 1]; with ``normalize`` (see
    ``models.pretrained.input_stats``; the configs use ``auto``: on with pretrained weights) they are normalised
    inside the model by the buffers ``input_mean``/``input_std`` (1, 3, 1, 1). The class default (no
    normalisation) keeps checkpoints written before the option existed loadable. ``head_output_layers()``
    names the layers that produce model outputs (never pruned).
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: str = "resnet18",
        output_stride: int = 32,
        head: str = "conv",
        head_channels: int = 64,
        head_overrides: Mapping[str, str] | None = None,
        weights: str | os.PathLike | None = None,
        normalize: str | Mapping | None = None,
    ) -> None:
        super().__init__()
        self.tasks = {t.name: t for t in tasks}
        self.encoder = build_encoder(encoder, output_stride, weights)
        stats = input_stats(encoder, weights, normalize)
        if stats is not None:  # buffers, so checkpoints and exported models carry the normalisation
            self.register_buffer("input_mean", torch.tensor(stats[0]).view(1, 3, 1, 1))
            self.register_buffer("input_std", torch.tensor(stats[1]).view(1, 3, 1, 1))
        channels = self.encoder.out_channels
        overrides = dict(head_overrides or {})
        heads = {}
        for task in tasks:
            if not task.dense:
                heads[task.name] = PoolHead(channels, task.out_channels)
                continue
            name = overrides.get(task.name, head)
            heads[task.name] = DENSE_HEADS.get(name)(channels, task.out_channels, hidden=head_channels)
        self.heads = nn.ModuleDict(heads)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(self.normalize_input(image))
        size = image.shape[-2:]
        out = {}
        for name, head in self.heads.items():
            y = head(features)
            if y.dim() == 4:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out[name] = self.tasks[name].activation(y)
        return out

    def normalize_input(self, image: torch.Tensor) -> torch.Tensor:
        """``(image - mean) / std`` with the pretrained encoder's statistics; identity without normalisation."""
        if hasattr(self, "input_mean"):
            return (image - self.input_mean) / self.input_std
        return image

    def head_output_layers(self) -> list[nn.Module]:
        """The final layer of every head (their out-channels are the model's outputs)."""
        return [head.out for head in self.heads.values()]
