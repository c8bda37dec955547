"""Real-dataset loaders on tiny generated fixtures in the exact on-disk formats, and the joint transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import CELEBA_ATTRS, celeba_masks, make_celeba, make_cityscapes, make_nyuv2
from PIL import Image

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.data.celeba import ATTR_FILE, CelebAMaskHQ, compose_seg
from lightning_sparse_mtl.data.cityscapes import Cityscapes
from lightning_sparse_mtl.data.nyuv2 import NYUv2, carve_indices
from lightning_sparse_mtl.data.transforms import JointTransform, hflip, random_crop, resize, scale


def make_sample(h: int = 6, w: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0)
    normal[:, 0, 0] = 0
    seg = torch.randint(0, 5, (h, w), generator=g)
    seg[1, 2] = -1
    depth = torch.rand(1, h, w, generator=g) + 1
    depth[0, 0, 1] = 0
    return {"image": torch.rand(3, h, w, generator=g), "seg": seg, "depth": depth, "disparity": 1 / depth.clamp_min(1),
            "normal": normal, "Male": torch.tensor([1.0])}  # fmt: skip


def invalid_masks(s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    out = [s["seg"] == -1]
    out += [s[k][0] == 0 for k in ("depth", "disparity") if k in s]
    return out + ([s["normal"].abs().sum(0) == 0] if "normal" in s else [])


# ---------------------------------------------------------------- transforms
def test_hflip_matches_hand_flipped_arrays() -> None:
    s = make_sample()
    f = hflip(s)
    for key in ("image", "seg", "depth", "disparity"):
        assert torch.equal(f[key], torch.from_numpy(s[key].numpy()[..., ::-1].copy())), key
    hand = s["normal"].numpy()[..., ::-1].copy()
    hand[0] *= -1
    assert torch.equal(f["normal"], torch.from_numpy(hand))
    assert torch.equal(f["normal"][:, 0, -1], torch.zeros(3)) and torch.equal(f["Male"], s["Male"])
    assert torch.equal(hflip(f)["normal"], s["normal"])


def test_scale_divides_depth_multiplies_disparity_and_keeps_invalid() -> None:
    s = make_sample()
    z = scale(s, 2.0)
    assert z["image"].shape == (3, 12, 16) and z["seg"].shape == (12, 16) and z["seg"].dtype == torch.int64
    assert torch.allclose(z["depth"], torch.repeat_interleave(torch.repeat_interleave(s["depth"], 2, 1), 2, 2) / 2)
    assert torch.allclose(z["disparity"][0, ::2, ::2], s["disparity"][0] * 2)
    assert torch.equal(z["seg"][::2, ::2], s["seg"]) and torch.equal(z["normal"][:, ::2, ::2], s["normal"])
    for a, b in zip(invalid_masks(z), invalid_masks(s)):
        assert torch.equal(a[::2, ::2], b) and a.sum() == 4 * b.sum()
    shrunk = scale(s, 0.5)
    labels = set(s["seg"].flatten().tolist())
    assert shrunk["image"].shape == (3, 3, 4) and set(shrunk["seg"].flatten().tolist()) <= labels


def test_random_crop_pads_with_invalid_values() -> None:
    s = make_sample(4, 4)
    c = random_crop(s, (10, 12), generator=torch.Generator().manual_seed(0))
    assert c["image"].shape == (3, 10, 12) and c["seg"].shape == (10, 12)
    assert torch.equal(c["image"][:, :4, :4], s["image"]) and c["image"][:, 4:].abs().sum() == 0
    assert (c["seg"][4:] == -1).all() and (c["depth"][:, :, 4:] == 0).all() and (c["normal"][:, 4:] == 0).all()
    inner = random_crop(s, 2, generator=torch.Generator().manual_seed(1))
    assert inner["normal"].shape == (3, 2, 2) and inner["Male"].item() == 1.0


def test_joint_transform_seeded_and_masks_consistent() -> None:
    s = make_sample(16, 20)
    t = JointTransform(crop_size=(12, 14), scale=(0.7, 1.6), hflip=True)
    torch.manual_seed(3)
    a = t(s)
    torch.manual_seed(3)
    b = t(s)
    assert all(torch.equal(a[k], b[k]) for k in s)
    for seed in range(8):
        torch.manual_seed(seed)
        out = t(s)
        assert out["image"].shape == (3, 12, 14) and 0 <= out["image"].min() and out["image"].max() <= 1
        valid_n = out["normal"].abs().sum(0) > 0
        assert torch.allclose(out["normal"].norm(dim=0)[valid_n], torch.ones(int(valid_n.sum())), atol=1e-5)
        assert set(out["seg"].unique().tolist()) <= set(s["seg"].unique().tolist()) | {-1}
    assert all(torch.equal(JointTransform()(s)[k], s[k]) for k in s)
    r = resize(s, (8, 10))
    assert r["seg"].shape == (8, 10) and r["image"].shape == (3, 8, 10)
    assert set(r["depth"].flatten().tolist()) <= set(s["depth"].flatten().tolist())  # depth values unchanged


# ---------------------------------------------------------------- NYUv2
def test_nyuv2_samples_splits_and_masks(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path)
    train, val, test = (NYUv2(s, root, val_fraction=0.2) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 2, 4)
    assert not set(train.indices) & set(val.indices) and sorted(train.indices + val.indices) == list(range(10))
    assert NYUv2("val", root, val_fraction=0.2).indices == val.indices
    assert NYUv2("val", root, val_fraction=0.2, seed=1).indices != val.indices
    s = test[1]
    assert set(s) == {"image", "seg", "depth", "normal"}
    assert s["image"].shape == (3, 36, 48) and s["image"].dtype == torch.float32 and 0 <= s["image"].min() <= 1
    assert s["seg"].shape == (36, 48) and s["seg"].dtype == torch.int64 and s["seg"].min() == -1 and s["seg"].max() < 13
    assert s["depth"].shape == (1, 36, 48) and s["depth"].dtype == torch.float32 and (s["depth"] >= 0).all()
    valid = s["normal"].abs().sum(0) > 0
    assert torch.allclose(s["normal"].norm(dim=0)[valid], torch.ones(int(valid.sum())), atol=1e-5)
    masks = invalid_masks(s)
    assert masks[0].any() and all(torch.equal(m, masks[0]) for m in masks)
    raw = np.load(root / "val" / "label" / "1.npy")
    assert torch.equal(s["seg"], torch.from_numpy(raw.astype(np.int64)))
    aug = NYUv2("train", root, transform=JointTransform((24, 40), (0.8, 1.5), hflip=True))
    for i in range(len(aug)):
        out = aug[i]
        assert out["image"].shape == (3, 24, 40) and out["normal"].shape == (3, 24, 40)
        m = invalid_masks(out)
        assert all(torch.equal(x, m[0]) for x in m)  # -1 labels, 0 depth and zero normals stay aligned
    flipped = NYUv2("test", root, transform=hflip)[1]  # against the on-disk arrays, flipped by hand
    hand_normal = np.load(root / "val" / "normal" / "1.npy")[:, ::-1].transpose(2, 0, 1) * [[[-1.0]], [[1.0]], [[1.0]]]
    assert np.allclose(flipped["normal"].numpy(), hand_normal)
    assert np.array_equal(flipped["seg"].numpy(), raw[:, ::-1].astype(np.int64))
    assert np.array_equal(flipped["depth"][0].numpy(), np.load(root / "val" / "depth" / "1.npy")[:, ::-1, 0])
    assert np.array_equal(
        flipped["image"].numpy(), np.load(root / "val" / "image" / "1.npy")[:, ::-1].transpose(2, 0, 1)
    )
    seg_only = NYUv2("test", root, tasks=["seg"])
    assert set(seg_only[0]) == {"image", "seg"}


def test_nyuv2_accepts_hw_depth(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path, n_train=2, n_val=1)
    np.save(root / "val" / "depth" / "0.npy", np.ones((36, 48), np.float32))
    assert NYUv2("test", root)[0]["depth"].shape == (1, 36, 48)


def test_carve_indices_deterministic_and_disjoint() -> None:
    tr, va = carve_indices(795, "train", 0.1, 0), carve_indices(795, "val", 0.1, 0)
    assert len(va) == 80 and len(tr) == 715 and not set(tr) & set(va)
    assert np.array_equal(va, carve_indices(795, "val", 0.1, 0))
    assert not np.array_equal(va, carve_indices(795, "val", 0.1, 1))


# ---------------------------------------------------------------- Cityscapes
def test_cityscapes_disparity_and_label_sets(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path)
    c7, c19 = Cityscapes("test", root, num_classes=7), Cityscapes("test", root, num_classes=19)
    s = c7[0]
    assert set(s) == {"image", "seg", "disparity"} and s["disparity"].shape == (1, 32, 64)
    assert s["seg"].dtype == torch.int64 and s["seg"].max() < 7 and c19[0]["seg"].max() >= 7
    assert torch.equal(s["seg"] == -1, s["disparity"][0] == 0)
    tr, va = Cityscapes("train", root), Cityscapes("val", root)
    assert len(tr) + len(va) == 10 and not set(tr.indices) & set(va.indices)
    with pytest.raises(UserError, match="7 or 19"):
        Cityscapes("train", root, num_classes=5)


# ---------------------------------------------------------------- CelebAMask-HQ
def test_compose_seg_later_classes_overwrite() -> None:
    m = celeba_masks(8)
    seg = compose_seg(m, {"hair": ["hair"], "skin": ["skin", "nose"]})
    expect = np.zeros((8, 8), np.int64)
    expect[:4] = 1
    expect[2:6, 2:6] = 2
    assert np.array_equal(seg, expect)  # hat (unmapped) is background; skin overwrites hair
    assert compose_seg(m, {"skin": ["skin"], "hair": ["hair"]})[2, 2] == 2  # ids and paint order follow config


def test_celeba_samples_mapping_attributes_and_splits(tmp_path: Path) -> None:
    root, attrs = make_celeba(tmp_path)
    names = ["Male", "Smiling", "Young"]
    ds = {s: CelebAMaskHQ(s, root, image_size=16, attributes=names) for s in ("train", "val", "test")}
    assert sorted(i for d in ds.values() for i in d.indices) == list(range(12))
    assert len(ds["test"]) == len(ds["val"]) == 1
    again = CelebAMaskHQ("val", root, image_size=16)
    assert again.indices == ds["val"].indices
    train = ds["train"]
    s = train[0]
    i = train.indices[0]
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32 and 0 <= s["image"].min() <= 1
    expect = compose_seg(celeba_masks(16), {"hair": ["hair"], "skin": ["skin", "nose"]})
    assert s["seg"].dtype == torch.int64 and np.array_equal(s["seg"].numpy(), expect)
    for name in names:
        want = float(attrs[i, CELEBA_ATTRS.index(name)] > 0)
        assert s[name].shape == (1,) and s[name].dtype == torch.float32 and s[name].item() == want
    assert {train[k]["Male"].item() for k in range(len(train))} <= {0.0, 1.0}
    no_seg = CelebAMaskHQ("train", root, image_size=16, tasks=["Male"])
    assert "seg" not in no_seg[0]
    with pytest.raises(UserError, match="unknown CelebA attribute.*Smile.*Wearing_Hat"):
        CelebAMaskHQ("train", root, attributes=["Smile"])
    with pytest.raises(UserError, match="unknown CelebAMask-HQ part"):
        CelebAMaskHQ("train", root, part_classes={"hair": ["hairs"]})


# ---------------------------------------------------------------- bad data -> one-line UserError naming the file
@pytest.mark.parametrize(
    "case, expect",
    [
        ("no_root", "root not found: .*nowhere.*data.root="),
        ("root_none", "data.root is not set"),
        ("no_split", "folder not found: .*val/image"),
        ("count", "mismatched file counts: .*train/image has 10 .*train/label has 9"),
        ("shape", "val/image/0.npy has shape \\(3, 36, 48\\).*expected \\(H, W, 3\\)"),
        ("corrupt", "cannot read .*val/depth/0.npy"),
        ("range", "val/image/0.npy has values in .*divide by 255"),
        ("classes", "val/label/0.npy has class id 13"),
        ("size", "val/normal/0.npy is \\(36, 40\\) pixels"),
        ("nan", "val/depth/0.npy contains NaN/Inf; mark invalid pixels with 0"),
    ],
)
def test_nyuv2_bad_data(tmp_path: Path, case: str, expect: str) -> None:
    root = make_nyuv2(tmp_path / "nyu")
    split = "train" if case == "count" else "test"
    if case == "no_root":
        root = tmp_path / "nowhere"
    elif case == "root_none":
        root = None
    elif case == "no_split":
        for f in (root / "val" / "image").iterdir():
            f.unlink()
        (root / "val" / "image").rmdir()
    elif case == "count":
        (root / "train" / "label" / "3.npy").unlink()
    elif case == "shape":
        np.save(root / "val" / "image" / "0.npy", np.random.rand(3, 36, 48).astype(np.float32))
    elif case == "corrupt":
        (root / "val" / "depth" / "0.npy").write_bytes(b"\x93NUMPY garbage")
    elif case == "range":
        np.save(root / "val" / "image" / "0.npy", np.full((36, 48, 3), 200.0, np.float32))
    elif case == "classes":
        np.save(root / "val" / "label" / "0.npy", np.full((36, 48), 13.0, np.float32))
    elif case == "size":
        np.save(root / "val" / "normal" / "0.npy", np.zeros((36, 40, 3), np.float32))
    elif case == "nan":
        depth = np.ones((36, 48, 1), np.float32)
        depth[3, 4] = np.nan
        np.save(root / "val" / "depth" / "0.npy", depth)
    with pytest.raises(UserError, match=expect) as err:
        NYUv2(split, root)
    assert "\n" not in str(err.value)


def test_corrupt_file_in_getitem_names_the_file(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path)
    (root / "val" / "normal" / "2.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(UserError, match="cannot read .*val/normal/2.npy: not a .npy file"):
        NYUv2("test", root)  # every file is checked up front, not only sample 0
    cs = make_cityscapes(tmp_path / "cs")
    (cs / "train" / "depth" / "4.npy").unlink()
    with pytest.raises(UserError, match="mismatched file counts: .*train/depth has 9"):
        Cityscapes("train", cs)


@pytest.mark.parametrize("case", ["no_root", "no_images", "no_masks", "attr_missing", "attr_rows", "corrupt"])
def test_celeba_bad_data(tmp_path: Path, case: str) -> None:
    root, _ = make_celeba(tmp_path / "celeba")
    expect = {
        "no_root": "root not found: .*missing",
        "no_images": "folder not found: .*CelebA-HQ-img",
        "no_masks": "folder not found: .*CelebAMask-HQ-mask-anno",
        "attr_missing": f"cannot read .*{ATTR_FILE}",
        "attr_rows": "mismatched counts: .*CelebA-HQ-img has 13 images",
        "corrupt": "cannot read image .*CelebA-HQ-img/{}.jpg",
    }[case]
    if case == "no_root":
        root = tmp_path / "missing"
    elif case == "no_images":
        (root / "CelebA-HQ-img").rename(root / "imgs")
    elif case == "no_masks":
        (root / "CelebAMask-HQ-mask-anno").rename(root / "masks")
    elif case == "attr_missing":
        (root / ATTR_FILE).unlink()
    elif case == "attr_rows":
        Image.new("RGB", (32, 32)).save(root / "CelebA-HQ-img" / "12.jpg")
    elif case == "corrupt":
        first = sorted(CelebAMaskHQ.carve(12, "train", 0.1, 0.1, 0))[0]
        (root / "CelebA-HQ-img" / f"{first}.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
        expect = expect.format(first)
    with pytest.raises(UserError, match=expect) as err:
        CelebAMaskHQ("train", root, image_size=16)
    assert "\n" not in str(err.value)
