"""MTLDataModule: one LightningDataModule for every dataset; the dataset class is a Hydra partial."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset, Sampler

SPLITS = ("train", "val", "test")


class EpochShuffleSampler(Sampler[int]):
    """Random order that depends only on (seed, epoch): a resumed run sees the same batches as an uninterrupted one.

    Lightning calls ``set_epoch`` before every training epoch.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class MTLDataModule(L.LightningDataModule):
    """Builds ``dataset(split=<name>, **splits[<name>])`` for train/val/test; batches are dicts of tensors.

    ``num_classes`` and ``attributes`` describe the dataset's label space for the model's tasks.
    ``root`` (the ``data.root`` config key), when not None, is forwarded to ``dataset`` as ``root=``.
    ``seed`` fixes the training order per epoch (see :class:`EpochShuffleSampler`).
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        splits: Mapping[str, Mapping] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_classes: int | None = None,
        attributes: Sequence[str] = (),
        pin_memory: bool = False,
        root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.splits = {s: dict((splits or {}).get(s) or {}) for s in SPLITS}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_classes = num_classes
        self.attributes = list(attributes)
        self.pin_memory = pin_memory
        self.seed = seed
        self.root = root
        self.datasets: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        if split not in self.datasets:
            kwargs = {"root": self.root} if self.root is not None else {}
            self.datasets[split] = self.dataset(split=split, **kwargs, **self.splits[split])
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in needed:
            self.build(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.build(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def input_size_of(cfg: Mapping) -> tuple[int, int]:
    """(H, W) of the model input of a (plain) train config: ``data.input_size`` if set, else the first test image's."""
    size = cfg["data"].get("input_size")
    if size:
        return (int(size[0]), int(size[1]))
    datamodule = instantiate(cfg["data"])
    return tuple(datamodule.build("test")[0]["image"].shape[-2:])  # type: ignore[return-value]
