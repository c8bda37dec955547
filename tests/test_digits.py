"""Tests for the embedded `digits` dataset (real MNIST digits on tilted cards, ray-cast)."""

import numpy as np
import pytest
import torch

from lightning_sparse_mtl.data import digits as D

SIZE = 32


@pytest.fixture(scope="module")
def source():
    return D.load_source_digits()


@pytest.fixture(scope="module")
def scenes(source):
    dig, lab = source
    return D.render_scenes(dig, lab, 24, SIZE, cards=(2, 4), seed=7)


def _pool(lab, n=300):
    return np.random.default_rng(0).choice(len(lab), n, replace=False)


def test_source_digits(source):
    dig, lab = source
    assert dig.shape == (5000, 28, 28) and dig.dtype == np.uint8 and dig.max() == 255
    assert lab.dtype == np.int64 and np.array_equal(np.bincount(lab), [500] * 10)


def test_render_deterministic_and_seeded(source):
    dig, lab = source
    idx = _pool(lab)
    a = D.render_scenes(dig[idx], lab[idx], 6, SIZE, seed=3)
    b = D.render_scenes(dig[idx], lab[idx], 6, SIZE, seed=3)
    c = D.render_scenes(dig[idx], lab[idx], 6, SIZE, seed=4)
    assert set(a) == {"image", "seg", "depth", "normal", "digit_ids"}
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes()
    assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["depth"], c["depth"])
    assert a["digit_ids"].shape == (6, 4) and a["digit_ids"].max() < len(idx)
    assert np.all(((a["digit_ids"] >= 0).sum(1) >= 2) & ((a["digit_ids"] >= 0).sum(1) <= 4))


def test_cache_written_once_then_loaded(tmp_path, monkeypatch):
    first = D.load_digit_scenes("val", tmp_path, 8, SIZE, seed=1)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and "val" in files[0].name
    assert files[0] == D.cache_path("val", tmp_path, 8, SIZE, (2, 4), 1)
    assert D.cache_path("val", tmp_path, 8, SIZE, (2, 4), 2) != files[0]
    assert D.cache_path("val", tmp_path, 8, SIZE, (2, 3), 1) != files[0]

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: rendered again")

    monkeypatch.setattr(D, "_render_compact", boom)
    second = D.load_digit_scenes("val", tmp_path, 8, SIZE, seed=1)
    for key in first:
        assert first[key].dtype == second[key].dtype and np.array_equal(first[key], second[key])
    with pytest.raises(AssertionError, match="cache miss"):
        D.load_digit_scenes("val", tmp_path, 9, SIZE, seed=1)
    assert len(list(tmp_path.iterdir())) == 1  # no temp file left behind


def test_digit_split_indices(source):
    _, lab = source
    sp = D.digit_split_indices(lab, seed=0)
    assert set(sp) == {"train", "val", "test"}
    allidx = np.concatenate(list(sp.values()))
    assert len(allidx) == 5000 and len(np.unique(allidx)) == 5000  # disjoint and covering
    for name, per_class in (("train", 350), ("val", 50), ("test", 100)):
        assert np.array_equal(np.bincount(lab[sp[name]], minlength=10), [per_class] * 10)
    again, other = D.digit_split_indices(lab, seed=0), D.digit_split_indices(lab, seed=1)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    assert not np.array_equal(sp["test"], other["test"])
    with pytest.raises(ValueError):
        D.digit_split_indices(lab, fractions=(0.5, 0.5, 0.5))


def test_splits_share_no_digits(tmp_path, source):
    _, lab = source
    pools = D.digit_split_indices(lab, seed=0)
    data = {s: D.load_digit_scenes(s, tmp_path, 30, 24, seed=0) for s in ("train", "val", "test")}
    used = {s: set(d["digit_ids"][d["digit_ids"] >= 0].tolist()) for s, d in data.items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    for s, d in data.items():
        assert used[s] <= set(pools[s].tolist())
        # every visible card class is the class of one of the scene's digits
        for seg, ids in zip(d["seg"], d["digit_ids"]):
            assert set(np.unique(seg[seg > 0]).tolist()) <= set((1 + lab[ids[ids >= 0]]).tolist())
    assert not np.array_equal(data["val"]["image"], data["test"]["image"][:30])


def test_label_sanity(scenes):
    img, seg, depth, normal = scenes["image"], scenes["seg"], scenes["depth"], scenes["normal"]
    n = len(img)
    assert img.shape == (n, 3, SIZE, SIZE) and img.dtype == np.uint8
    assert seg.shape == (n, SIZE, SIZE) and seg.dtype == np.int64
    assert depth.shape == (n, 1, SIZE, SIZE) and depth.dtype == np.float32
    assert normal.shape == (n, 3, SIZE, SIZE) and normal.dtype == np.float32
    assert seg.min() >= 0 and seg.max() <= D.NUM_CLASSES - 1
    per_img = (seg > 0).reshape(n, -1).mean(1)
    assert np.all(per_img > 0) and np.all(per_img < 1)  # cards and background in every image
    assert 0.25 < per_img.mean() < 0.75  # cards cover roughly half of the image
    assert np.all(np.isfinite(depth)) and depth.min() > 0
    assert np.abs(np.linalg.norm(normal, axis=1) - 1).max() < 1e-5
    assert normal[:, 2].max() < 0  # facing a camera that looks along +z
    rays = D.ray_directions(SIZE).T.reshape(3, SIZE, SIZE)
    assert (normal * rays).sum(1).max() < 0  # n . ray < 0 at every pixel
    # cards are nearer than the background
    assert all(depth[i, 0][seg[i] > 0].max() < depth[i, 0][seg[i] == 0].max() for i in range(n))


def test_geometry_planarity(scenes):
    """Back-projected points of each visible plane satisfy n . P = const: depth and normal agree."""
    rays = D.ray_directions(SIZE)  # (H*W, 3), unit z
    f, cx, cy = D.intrinsics(SIZE)
    assert np.allclose(rays[SIZE + 2], [(2 - cx) / f, (1 - cy) / f, 1.0])  # pixel (v=1, u=2)
    for depth, normal, seg, img in zip(scenes["depth"], scenes["normal"], scenes["seg"], scenes["image"]):
        pts = depth.reshape(-1, 1).astype(np.float64) * rays
        nrm = normal.reshape(3, -1).T.astype(np.float64)
        planes, which = np.unique(nrm, axis=0, return_inverse=True)
        assert 2 <= len(planes) <= 5  # background + up to 4 cards
        for p in range(len(planes)):
            m = which.ravel() == p
            offs = (nrm[m] * pts[m]).sum(1)
            assert np.ptp(offs) < 1e-4 * np.abs(offs).mean() and offs.max() < 0
            assert len(np.unique(seg.ravel()[m])) == 1  # a whole plane carries one class
            lum = img.reshape(3, -1)[:, m].mean(0)
            if seg.ravel()[m][0] > 0 and m.sum() >= 60:  # a well-visible card shows dark ink on light paper
                assert lum.min() < 0.6 * lum.max()


def test_dataset_items(tmp_path):
    ds = D.DigitScenes("test", tmp_path, 5, SIZE, cards=(2, 3), seed=2)
    assert len(ds) == 5
    item = ds[4]
    assert set(item) == {"image", "seg", "depth", "normal"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["seg"].shape == (SIZE, SIZE) and item["seg"].dtype == torch.int64
    assert item["depth"].shape == (1, SIZE, SIZE) and item["depth"].dtype == torch.float32
    assert item["normal"].shape == (3, SIZE, SIZE) and item["normal"].dtype == torch.float32
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("bad", ["training", "", "TEST"])
def test_unknown_split(tmp_path, bad):
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        D.load_digit_scenes(bad, tmp_path, 4, SIZE)
    with pytest.raises(ValueError, match="valid splits"):
        D.DigitScenes(bad, tmp_path, 4, SIZE)
