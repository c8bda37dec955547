"""A callback the DDP test loads by name (``+callbacks.digest._target_=helpers.ddp.RankDigest``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch

from lightning_sparse_mtl.sparsity.groups import group_norms


class RankDigest(L.Callback):
    """After fit, each rank writes sha256 digests of its zero-group masks and of all its parameters to
    ``digest_rank<r>.json``."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = state_digest({f"{g.name}.weight": g.weight for g in pl_module.sparsity.groups},
                              dict(pl_module.named_parameters()))  # fmt: skip
        out = Path(trainer.default_root_dir) / f"digest_rank{trainer.global_rank}.json"
        out.write_text(json.dumps(digest))


def state_digest(grouped: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict:
    masks = torch.cat([(group_norms(w.detach()) == 0).flatten() for _, w in sorted(grouped.items())])
    h = hashlib.sha256()
    for name, p in sorted(params.items()):
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return {
        "mask": hashlib.sha256(masks.numpy().tobytes()).hexdigest(),
        "params": h.hexdigest(),
        "zero_groups": int(masks.sum()),
        "groups": masks.numel(),
    }
