"""Joint geometric augmentation for sample dicts (image and every dense label move together).

Samples are dicts of tensors: ``image`` (3,H,W) float in [0,1], ``seg`` (H,W) int64 (-1 = ignore),
``depth`` / ``disparity`` (1,H,W) float (0 = invalid), ``normal`` (3,H,W) float (all-zero = invalid);
any other key (e.g. a binary attribute (1,)) is image-level and passes through untouched.

Resampling: bilinear for the image, nearest for every label (seg, depth, disparity, normal), so a
label is never averaged across invalid pixels or classes. Padding (when a crop is larger than the
image) uses image 0, seg -1, depth/disparity 0, normal 0, i.e. padded pixels are ignored by losses
and metrics.

Geometry (the mtan / LibMTL convention): a crop or flip keeps metric depth unchanged. Scale
augmentation by a factor ``s`` magnifies the scene like moving the camera closer, so depth is divided
by ``s`` and disparity (proportional to 1/depth) is multiplied by ``s``; normals are left unchanged.
A horizontal flip mirrors every dense map and negates the normal's x component (camera x points right).
:func:`resize` (fixed-size eval resizing) changes resolution only and leaves depth values unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

Sample = dict[str, torch.Tensor]

# key -> (fill value for padding, resampling mode)
DENSE_KEYS: dict[str, tuple[float, str]] = {
    "image": (0.0, "bilinear"),
    "seg": (-1, "nearest-exact"),
    "depth": (0.0, "nearest-exact"),
    "disparity": (0.0, "nearest-exact"),
    "normal": (0.0, "nearest-exact"),
}


def _size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``None`` | int | (h, w) -> (h, w) of positive ints."""
    if value is None:
        return None
    h, w = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {value}")
    return h, w


def spatial_size(sample: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(H, W) of the sample's dense maps (taken from ``image``, else the first dense key)."""
    for key in DENSE_KEYS:
        if key in sample:
            return tuple(sample[key].shape[-2:])  # type: ignore[return-value]
    raise ValueError(f"sample has no dense key ({', '.join(DENSE_KEYS)}): {sorted(sample)}")


def _resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (C,H,W) or (H,W) ``x`` to ``size``; dtype preserved (labels go through float and back)."""
    two_d = x.dim() == 2
    y = x[None, None] if two_d else x[None]
    if mode == "bilinear":
        shrink = size[0] < y.shape[-2] or size[1] < y.shape[-1]
        y = F.interpolate(y.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    else:
        y = F.interpolate(y.float(), size=size, mode=mode)
    y = y[0, 0] if two_d else y[0]
    return y.round().to(x.dtype) if not x.is_floating_point() else y.to(x.dtype)


def resize(sample: Mapping[str, torch.Tensor], size: int | Sequence[int]) -> Sample:
    """Resize every dense map to ``size`` (h, w); label values unchanged (depth too: this is not a zoom)."""
    hw = _size(size)
    out = dict(sample)
    if hw == spatial_size(sample):
        return out
    for key, (_, mode) in DENSE_KEYS.items():
        if key in out:
            out[key] = _resample(out[key], hw, mode)
    if "image" in out:
        out["image"] = out["image"].clamp(0.0, 1.0)
    return out


def scale(sample: Mapping[str, torch.Tensor], factor: float) -> Sample:
    """Zoom by ``factor`` (output (round(H*f), round(W*f))); depth / factor, disparity * factor."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    h, w = spatial_size(sample)
    out = resize(sample, (max(1, round(h * factor)), max(1, round(w * factor))))
    if "depth" in out:
        out["depth"] = out["depth"] / factor  # 0 (invalid) stays 0
    if "disparity" in out:
        out["disparity"] = out["disparity"] * factor
    return out


def pad_to(sample: Mapping[str, torch.Tensor], size: int | Sequence[int]) -> Sample:
    """Pad bottom/right up to at least ``size`` with the invalid value of each key (image 0, seg -1, ...)."""
    ph, pw = _size(size)
    h, w = spatial_size(sample)
    dh, dw = max(0, ph - h), max(0, pw - w)
    out = dict(sample)
    if dh == 0 and dw == 0:
        return out
    for key, (fill, _) in DENSE_KEYS.items():
        if key in out:
            out[key] = F.pad(out[key], (0, dw, 0, dh), value=fill)
    return out


def crop(sample: Mapping[str, torch.Tensor], top: int, left: int, size: int | Sequence[int]) -> Sample:
    """Crop every dense map to rows [top, top+h), columns [left, left+w)."""
    h, w = _size(size)
    out = dict(sample)
    for key in DENSE_KEYS:
        if key in out:
            out[key] = out[key][..., top : top + h, left : left + w]
    return out


def random_crop(
    sample: Mapping[str, torch.Tensor], size: int | Sequence[int], generator: torch.Generator | None = None
) -> Sample:
    """Pad (with invalid values) if needed, then crop ``size`` (h, w) at a uniformly random offset."""
    ch, cw = _size(size)
    padded = pad_to(sample, (ch, cw))
    h, w = spatial_size(padded)
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return crop(padded, top, left, (ch, cw))


def hflip(sample: Mapping[str, torch.Tensor]) -> Sample:
    """Mirror every dense map left-right; the normal's x component is negated (zero normals stay zero)."""
    out = dict(sample)
    for key in DENSE_KEYS:
        if key in out:
            out[key] = out[key].flip(-1)
    if "normal" in out:
        out["normal"] = out["normal"] * torch.tensor([-1.0, 1.0, 1.0], dtype=out["normal"].dtype)[:, None, None]
    return out


class JointTransform:
    """``resize`` (fixed size, eval) -> random ``scale`` in [lo, hi] -> random crop ``crop_size`` -> random ``hflip``.

    Every step is optional: ``JointTransform()`` is the identity. Randomness comes from torch's global RNG
    (seeded by Lightning's ``seed_everything`` and per worker), or from ``generator`` when given.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = None,
        scale: Sequence[float] = (1.0, 1.0),
        hflip: bool = False,
        resize: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        lo, hi = (float(scale), float(scale)) if isinstance(scale, int | float) else (float(scale[0]), float(scale[1]))
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        self.crop_size = _size(crop_size)
        self.scale = (lo, hi)
        self.hflip = bool(hflip)
        self.resize = _size(resize)
        self.generator = generator

    def __call__(self, sample: Mapping[str, torch.Tensor]) -> Sample:
        out = dict(sample)
        if self.resize is not None:
            out = resize(out, self.resize)
        lo, hi = self.scale
        if (lo, hi) != (1.0, 1.0):
            factor = lo + (hi - lo) * float(torch.rand((), generator=self.generator))
            out = scale(out, factor)
        if self.crop_size is not None:
            out = random_crop(out, self.crop_size, self.generator)
        if self.hflip and float(torch.rand((), generator=self.generator)) < 0.5:
            out = hflip(out)
        return out

    def __repr__(self) -> str:
        return (
            f"JointTransform(crop_size={self.crop_size}, scale={self.scale}, hflip={self.hflip}, resize={self.resize})"
        )
