"""Checkpoints written atomically: a temp file beside the target, fsync, ``os.replace``.

Lightning's own writer stages the file in the system temp folder and moves it: across filesystems that move is a
copy, so a SIGKILL or power loss mid-copy left a half-written ``epoch000.ckpt``. With this plugin a checkpoint
file is either the old one or the complete new one.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_sparse_mtl.core.atomic_io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose ``save_checkpoint`` never leaves a partial file (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return None
