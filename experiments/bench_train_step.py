"""Training throughput: Lightning module vs a bare PyTorch loop (same model, data, optimizer), side by side.

    python experiments/bench_train_step.py [--steps 30] [--warmup 5] [--rounds 2] [overrides ...]

Overrides are Hydra overrides of the train config (default: the default job's model and data shape).
Prints seconds per step for both and the throughput ratio lightning/bare (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.training.module import SparseMTLModule


class FixedBatches(Dataset):
    """``n`` random samples shaped like the config's data (image, seg, depth, normal)."""

    def __init__(self, n: int, size: tuple[int, int], num_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        h, w = size
        self.image = torch.rand(n, 3, h, w, generator=g)
        self.seg = torch.randint(0, num_classes, (n, h, w), generator=g)
        self.depth = torch.rand(n, 1, h, w, generator=g) + 0.5
        self.normal = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "seg": self.seg[i], "depth": self.depth[i], "normal": self.normal[i]}


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_seconds(cfg, loader: DataLoader, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    module = SparseMTLModule(cfg)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        max_steps=steps + warmup, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return (timer.end - timer.start) / steps


def bare_seconds(cfg, loader: DataLoader, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    module = SparseMTLModule(cfg)  # same net, losses and optimizer config; no Trainer
    net, optimizer = module.net.train(), module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    start, it = 0.0, iter(loader)
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        batch = next(it)
        out = net(batch["image"])
        loss = module.weighting({t: module.net.tasks[t].loss(out[t], batch[t]) for t in module.task_names})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["scheduler=null", *args.overrides])
    size = cfg.data.dataset.get("image_size", 48)
    data = FixedBatches((args.steps + args.warmup) * cfg.data.batch_size, (size, size), cfg.data.num_classes)
    loader = DataLoader(data, batch_size=cfg.data.batch_size, shuffle=False, drop_last=True)
    runs: dict[str, list[float]] = {"lightning": [], "bare": []}
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits both
        runs["bare"].append(bare_seconds(cfg, loader, args.steps, args.warmup))
        runs["lightning"].append(lightning_seconds(cfg, loader, args.steps, args.warmup))
    bare, light = statistics.median(runs["bare"]), statistics.median(runs["lightning"])
    table = Table(title=f"train step, {cfg.model.encoder} OS{cfg.model.output_stride}, batch {cfg.data.batch_size}, "
                        f"{size}px, {args.threads} threads")  # fmt: skip
    table.add_column("loop")
    table.add_column("s/step (median of rounds)", justify="right")
    table.add_column("all rounds", justify="right")
    for name, vals in runs.items():
        table.add_row(name, f"{statistics.median(vals):.4f}", ", ".join(f"{v:.4f}" for v in vals))
    Console(width=200).print(table)
    print(f"throughput ratio lightning/bare = {bare / light:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
