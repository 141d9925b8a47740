"""The on-disk crop cache: compressed losslessly, old uncompressed entries still read, never unpickled."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from _data_helpers import make_image, write
from sam_l1dfl.data.dataset import LesionCropDataset
from sam_l1dfl.data.preprocess import IntensityConfig

CFG = IntensityConfig(crop_size=24)


@pytest.fixture()
def records(tmp_path):
    shape = (16, 20, 24)
    rng = np.random.default_rng(3)
    pet = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[6:10, 8:12, 8:13] = 1
    lab[2:4, 15:17, 18:21] = 1
    pet[lab > 0] += 8.0
    d = tmp_path / "case1"
    d.mkdir()
    write(make_image(pet, (3.0, 3.0, 4.0), (40.0, 30.0, -20.0)), d / "SUV.nii.gz")
    write(make_image(lab, (3.0, 3.0, 4.0), (40.0, 30.0, -20.0)), d / "SEG.nii.gz")
    return [dict(case_id="case1", pet=d / "SUV.nii.gz", label=d / "SEG.nii.gz")]


def _items(ds):
    return [ds[i] for i in range(len(ds))]


def _same(a, b):
    return all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
               and torch.equal(x["label_all"], y["label_all"]) for x, y in zip(a, b))


def test_entries_are_deflated_and_exact(records, tmp_path):
    cached = LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False)
    cached.precompute()
    files = sorted((tmp_path / "cache").rglob("crop-*.npz"))
    assert len(files) == len(cached) == 2
    for f in files:
        with zipfile.ZipFile(f) as z:
            infos = {i.filename: i for i in z.infolist()}
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos.values())
        # the masks shrink to almost nothing; the float32 crop is kept bit for bit
        assert infos["target.npy"].compress_size < infos["target.npy"].file_size / 20
        assert f.stat().st_size < 0.8 * sum(i.file_size for i in infos.values())
    again = LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False)
    fresh = LesionCropDataset(records, CFG, cache_dir=None, progress=False)
    assert _same(_items(again), _items(fresh)) and again.stats["crops_built"] == 0


def test_uncompressed_entries_of_earlier_versions_are_still_read(records, tmp_path):
    LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False).precompute()
    for f in (tmp_path / "cache").rglob("crop-*.npz"):
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(f, **arrays)  # what the cache wrote before
    old = LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False)
    fresh = LesionCropDataset(records, CFG, cache_dir=None, progress=False)
    assert _same(_items(old), _items(fresh)) and old.stats["crops_built"] == 0


def test_a_pickle_in_the_cache_is_never_loaded(records, tmp_path):
    LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False).precompute()
    f = sorted((tmp_path / "cache").rglob("crop-*.npz"))[0]
    np.savez(f, raw=np.array([{"x": 1}], dtype=object), target=np.zeros(1), all=np.zeros(1), bbox=np.zeros(1))
    ds = LesionCropDataset(records, CFG, cache_dir=tmp_path / "cache", progress=False)
    fresh = LesionCropDataset(records, CFG, cache_dir=None, progress=False)
    assert _same(_items(ds), _items(fresh)) and ds.stats["crops_built"] == 1  # rebuilt, not unpickled
