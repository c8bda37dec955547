"""MTLDataModule: one LightningDataModule for every dataset; the dataset class is a Hydra partial."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")


class MTLDataModule(L.LightningDataModule):
    """Builds ``dataset(split=<name>, **splits[<name>])`` for train/val/test; batches are dicts of tensors.

    ``num_classes`` and ``attributes`` describe the dataset's label space for the model's tasks.
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
        self.datasets: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self.dataset(split=split, **self.splits[split])
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in needed:
            self.build(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.build(split),
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
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
