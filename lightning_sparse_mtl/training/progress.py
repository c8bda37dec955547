"""Short metric names in the progress bar, so the bar fits one terminal line."""

from __future__ import annotations

import lightning as L


def short_name(key: str) -> str:
    """``train/loss`` -> ``loss``; ``val/seg/miou`` -> ``seg_miou``; ``val/depth/abs_err`` -> ``dep_abs_err``."""
    parts = key.split("/")
    if parts[0] in ("train", "val", "test") and len(parts) > 1:
        parts = parts[1:]
    if len(parts) > 1:
        parts[0] = parts[0][:3]
    return "_".join(parts)


class ShortMetricNames(L.Callback):
    """Shows the progress-bar metrics under :func:`short_name` with 4 significant digits, without ``v_num``
    (full names and values stay in metrics.csv / W&B).

    A plain callback (not a progress bar), so ``trainer.enable_progress_bar=false`` keeps working; it renames
    what whichever progress bar Lightning uses (rich or tqdm) displays.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is None or getattr(bar, "_lsmtl_short_names", False):
            return
        full = bar.get_metrics

        def get_metrics(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
            metrics = full(trainer, pl_module)
            metrics.pop("v_num", None)
            return {short_name(k): f"{v:.4g}" if isinstance(v, float) else v for k, v in metrics.items()}

        bar.get_metrics = get_metrics
        bar._lsmtl_short_names = True
