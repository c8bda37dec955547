"""CelebAMask-HQ from its raw release: 3-class face parsing (background / hair / skin) + binary attributes.

On disk::

    <root>/CelebA-HQ-img/<i>.jpg                                  1024x1024 RGB
    <root>/CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png  512x512 binary part masks
    <root>/CelebAMask-HQ-attribute-anno.txt                       line 1: count, line 2: 40 names,
                                                                  then "<i>.jpg ±1 ... (40 values)"

A missing part file means the part is absent from that image. ``part_classes`` maps class names to
part lists; class ids are 1, 2, ... in config order (0 = background = every unmapped pixel) and later
classes overwrite earlier ones where part masks overlap. The default (also in conf/data/celeba.yaml)::

    hair: [hair]                                            -> 1
    skin: [skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow,  -> 2  (the face: skin and every facial part,
           l_ear, r_ear, mouth, u_lip, l_lip]                      eyeglasses included as they lie on it)

hat, ear_r (earrings), neck, neck_l (necklace) and cloth are background. Attributes: any of the 40
names; -1 -> 0. Splits are carved from the sorted image indices with a seeded permutation: the first
``round(test_fraction * N)`` are test, the next ``round(val_fraction * N)`` val, the rest train.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.data.checks import check_image_headers
from lightning_sparse_mtl.data.nyuv2 import check_split

IMAGE_DIR, MASK_DIR, ATTR_FILE = "CelebA-HQ-img", "CelebAMask-HQ-mask-anno", "CelebAMask-HQ-attribute-anno.txt"
PARTS = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
FACE_PARTS = list(PARTS[:12])  # skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow, l_ear, r_ear, mouth, u_lip, l_lip
DEFAULT_PART_CLASSES: dict[str, list[str]] = {"hair": ["hair"], "skin": FACE_PARTS}
_JPG = re.compile(r"^(\d+)\.jpg$")
Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def mask_path(root: Path, index: int, part: str) -> Path:
    """``<root>/CelebAMask-HQ-mask-anno/<index // 2000>/<index:05d>_<part>.png``."""
    return root / MASK_DIR / str(index // 2000) / f"{index:05d}_{part}.png"


def read_attributes(path: Path) -> tuple[list[str], dict[int, np.ndarray]]:
    """Parse the attribute file -> (40 names, {image index: (40,) float32 in {0, 1}}) with -1 -> 0."""
    try:
        lines = path.read_text().splitlines()
        count, names = int(lines[0].split()[0]), lines[1].split()
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as err:
        raise UserError(f"cannot read {path}: {err}; expected line 1 = count, line 2 = attribute names") from None
    rows: dict[int, np.ndarray] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        match = _JPG.match(fields[0])
        values = fields[1:]
        if not match or len(values) != len(names) or any(v not in ("1", "-1") for v in values):
            raise UserError(f"{path} line {lineno}: expected '<i>.jpg' and {len(names)} values of 1/-1, got {line!r}")
        rows[int(match.group(1))] = (np.array(values, dtype=np.float32) > 0).astype(np.float32)
    if len(rows) != count:
        raise UserError(f"{path}: line 1 says {count} images but {len(rows)} rows follow; fix the count or the rows")
    return names, rows


def compose_seg(masks: Mapping[str, np.ndarray], part_classes: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Part masks {part: (H, W) bool} -> (H, W) int64 class map; class k+1 for the k-th entry of
    ``part_classes``, painted in order (later classes overwrite earlier ones), 0 elsewhere."""
    shape = next(iter(masks.values())).shape if masks else None
    if shape is None:
        raise ValueError("compose_seg needs the shape of at least one mask")
    seg = np.zeros(shape, np.int64)
    for cls, parts in enumerate(part_classes.values(), start=1):
        for part in parts:
            if part in masks:
                seg[masks[part]] = cls
    return seg


def _open_image(path: Path, mode: str, size: tuple[int, int] | None, resample: Image.Resampling) -> np.ndarray:
    """Read an image (converted to ``mode``, resized to ``size`` = (h, w)) or raise UserError naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), resample)
            return np.asarray(img)
    except Exception as err:  # PIL's UnidentifiedImageError, truncated files, decoder errors, ...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read image {path}: {msg}; expected a readable {path.suffix} file") from None


class CelebAMaskHQ(Dataset):
    """Items: ``{"image": (3,S,S) float32 in [0,1], "seg": (S,S) int64 in 0..len(part_classes),
    "<Attribute>": (1,) float32 in {0,1} for each of ``attributes``}`` (S = ``image_size``), then ``transform``.

    ``tasks`` (optional) drops the seg map when "seg" is not among them (attribute-only runs skip the masks).
    """

    def __init__(
        self,
        split: str,
        root: str | os.PathLike | None = None,
        image_size: int | None = 256,
        attributes: Sequence[str] = ("Male", "Smiling"),
        part_classes: Mapping[str, Sequence[str]] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        transform: Transform | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        check_split(split)
        hint = f"set data.root=<dir> to the folder holding {IMAGE_DIR}/, {MASK_DIR}/ and {ATTR_FILE}"
        if root is None or str(root) == "":
            raise UserError(f"CelebAMask-HQ: data.root is not set; {hint}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"CelebAMask-HQ root not found: {self.root}; {hint}")
        self.image_size, self.transform = image_size, transform
        self.with_seg = tasks is None or "seg" in tasks
        self.part_classes = {str(k): [str(p) for p in v] for k, v in (part_classes or DEFAULT_PART_CLASSES).items()}
        bad = sorted({p for parts in self.part_classes.values() for p in parts} - set(PARTS))
        if bad:
            where, valid = "data.dataset.part_classes", ", ".join(PARTS)
            raise UserError(f"unknown CelebAMask-HQ part(s) {', '.join(bad)} in {where}; valid: {valid}")
        self.parts = [p for parts in self.part_classes.values() for p in parts]
        image_dir = self.root / IMAGE_DIR
        for folder in (image_dir, self.root / MASK_DIR) if self.with_seg else (image_dir,):
            if not folder.is_dir():
                raise UserError(f"CelebAMask-HQ folder not found: {folder}; {hint}")
        on_disk = sorted(int(m.group(1)) for f in os.listdir(image_dir) if (m := _JPG.match(f)))
        if not on_disk:
            raise UserError(f"no <i>.jpg images in {image_dir}; {hint}")
        self.attributes = [str(a) for a in attributes]
        self.attr_values: dict[int, np.ndarray] = {}
        if self.attributes:
            names, rows = read_attributes(self.root / ATTR_FILE)
            unknown = [a for a in self.attributes if a not in names]
            if unknown:
                raise UserError(f"unknown CelebA attribute(s) {', '.join(unknown)}; valid: {', '.join(names)}")
            if sorted(rows) != on_disk:
                missing = sorted(set(rows) ^ set(on_disk))[0]
                raise UserError(
                    f"mismatched counts: {image_dir} has {len(on_disk)} images, {self.root / ATTR_FILE} lists "
                    f"{len(rows)} (first mismatch: {missing}.jpg); every image needs one attribute row"
                )
            cols = [names.index(a) for a in self.attributes]
            self.attr_values = {i: v[cols] for i, v in rows.items()}
        self.indices = [on_disk[j] for j in self.carve(len(on_disk), split, val_fraction, test_fraction, seed)]
        # every file's header (data/checks.py); one sample decoded now, the others as they are loaded
        check_image_headers((image_dir / f"{i}.jpg" for i in self.indices), same_size=image_size is None)
        if self.with_seg:
            masks = (mask_path(self.root, i, p) for i in self.indices for p in dict.fromkeys(self.parts))
            check_image_headers((m for m in masks if m.is_file()), same_size=False)
        self.num_classes = 1 + len(self.part_classes)
        if self.indices:
            self._load(self.indices[0])

    @staticmethod
    def carve(n: int, split: str, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
        """Sorted positions of ``split`` in ``range(n)``: a seeded permutation cut into test | val | train."""
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise UserError(f"need 0 <= val_fraction, test_fraction and a sum < 1, got {val_fraction}, {test_fraction}")
        n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
        perm = np.random.default_rng(seed).permutation(n)
        cuts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
        return np.sort(cuts[split])

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        size = None if self.image_size is None else (int(self.image_size), int(self.image_size))
        image = _open_image(self.root / IMAGE_DIR / f"{index}.jpg", "RGB", size, Image.Resampling.BILINEAR)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)}
        if self.with_seg:
            size = image.shape[:2]
            masks = {}
            for part in dict.fromkeys(self.parts):
                path = mask_path(self.root, index, part)
                if path.is_file():
                    masks[part] = _open_image(path, "L", size, Image.Resampling.NEAREST) > 127
            masks.setdefault("", np.zeros(image.shape[:2], bool))  # gives the shape when no part is present
            sample["seg"] = torch.from_numpy(compose_seg(masks, self.part_classes))
        for name, value in zip(self.attributes, self.attr_values.get(index, ())):
            sample[name] = torch.tensor([value], dtype=torch.float32)
        return sample

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self._load(self.indices[i])
        return self.transform(sample) if self.transform is not None else sample
