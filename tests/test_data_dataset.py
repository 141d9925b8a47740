"""Lesion-crop dataset: one crop per lesion (tiny ones too), edge lesions, jitter, clusters, cache."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import sam_l1dfl.data.dataset as ds_mod
from _data_helpers import FLIPPED_XY, make_image, write
from sam_l1dfl.data.dataset import LesionCropDataset
from sam_l1dfl.data.geometry import CropGeometry, image_index_to_world
from sam_l1dfl.data.preprocess import IntensityConfig

CFG = IntensityConfig(crop_size=24)


@pytest.fixture()
def case_dir(tmp_path):
    """One PET/CT/label case (flipped header, anisotropic) with a big, a 2-voxel and an edge lesion."""
    shape = (16, 20, 24)  # (z, y, x)
    rng = np.random.default_rng(1)
    pet = rng.uniform(0.2, 1.5, size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[6:10, 8:12, 8:13] = 1  # big
    lab[4, 15, 18:20] = 1  # 2 voxels
    lab[0:2, 0:2, 0:2] = 1  # corner of the volume
    pet[lab > 0] += 8.0
    sp, org = (3.0, 3.0, 4.0), (40.0, 30.0, -20.0)
    d = tmp_path / "case1"
    d.mkdir()
    write(make_image(pet, sp, org, FLIPPED_XY), d / "SUV.nii.gz")
    write(make_image(np.full(shape, 30, np.int16), sp, org, FLIPPED_XY), d / "CTres.nii.gz")
    write(make_image(lab, sp, org, FLIPPED_XY), d / "SEG.nii.gz")
    return d, lab


def _records(d):
    return [dict(case_id="case1", pet=d / "SUV.nii.gz", ct=d / "CTres.nii.gz", label=d / "SEG.nii.gz")]


def test_one_crop_per_lesion_including_tiny_and_edge(case_dir, tmp_path):
    d, lab = case_dir
    ds = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds) == 3
    sizes = {}
    label_img = sitk.ReadImage(str(d / "SEG.nii.gz"))
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 24, 24, 24) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, 24, 24, 24) and item["label"].dtype == torch.uint8
        assert item["case_id"] == "case1"
        geom = CropGeometry.from_arrays(item["crop_origin_lps"], item["crop_spacing"], item["crop_size"])
        assert item["label"].sum() > 0
        # the crop holds its whole lesion: every lesion voxel centre maps inside the crop
        from sam_l1dfl.data.lesions import label_components

        comps, _ = label_components(lab)
        lid = int(item["lesion_id"])
        w = image_index_to_world(label_img, np.argwhere(comps == lid)[:, ::-1].astype(float))
        assert geom.contains_index(geom.world_to_index(w)).all()
        # the centroid in crop indices lands on the lesion
        c = np.rint(item["centroid_index"]).astype(int)
        assert np.linalg.norm(item["centroid_index"] - geom.world_to_index(w.mean(0))) < 1.5
        sizes[lid] = int((comps == lid).sum())
        # PET is z-scored over voxels > 0: those have mean ~0, padding stays the lowest value
        img = item["image"][0]
        assert img.max() > 2.0  # the hot lesion
        assert c.min() >= 0
    assert sorted(sizes.values()) == [2, 8, 80]


def test_cache_second_run_does_not_resample(case_dir, tmp_path, monkeypatch):
    d, _ = case_dir
    first = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", progress=False)
    first.precompute()
    assert first.stats["crops_built"] == 3 and first.stats["cases_loaded"] == 1
    items = [first[i] for i in range(len(first))]

    def boom(*a, **k):
        raise AssertionError("resampled although cached")

    monkeypatch.setattr(ds_mod, "resample_to_crop", boom)
    monkeypatch.setattr(ds_mod, "raw_crop", boom)
    second = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", progress=False)
    assert second.stats["index_from_cache"] == 1
    for i, it in enumerate(items):
        again = second[i]
        assert torch.equal(again["image"], it["image"]) and torch.equal(again["label"], it["label"])
    assert second.stats["crops_built"] == 0 and second.stats["cases_loaded"] == 0
    # another preprocessing config is another cache entry
    monkeypatch.undo()
    other = LesionCropDataset(_records(d), IntensityConfig(crop_size=24, pet_suv_clip=5.0),
                              cache_dir=tmp_path / "cache", progress=False)
    other[0]
    assert other.stats["crops_built"] == 1


def test_cache_invalidated_by_file_content(case_dir, tmp_path):
    d, lab = case_dir
    LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", progress=False).precompute()
    img = sitk.ReadImage(str(d / "SUV.nii.gz"))
    write(img * 2.0, d / "SUV.nii.gz")
    ds = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", progress=False)
    ds[0]
    assert ds.stats["index_from_cache"] == 0 and ds.stats["crops_built"] == 1


def test_jitter_shifts_but_keeps_lesion(case_dir, tmp_path):
    d, _ = case_dir
    ds = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", train=True, jitter_mm=6.0,
                           progress=False)
    assert ds.margin == 4
    big = [s.lesion_id for s in ds.specs].index("3")  # ids in raster order: corner 1, tiny 2, big 3
    torch.manual_seed(0)
    origins = set()
    for _ in range(8):
        it = ds[big]
        assert it["label"].sum() == ds[big]["label"].sum() > 0  # never cut
        origins.add(tuple(np.round(it["crop_origin_lps"], 3)))
    assert len(origins) > 1
    assert ds.stats["crops_built"] == 1  # all jitters cut from one cached crop
    ev = LesionCropDataset(_records(d), CFG, cache_dir=tmp_path / "cache", train=False, jitter_mm=6.0, progress=False)
    a, b = ev[big], ev[big]
    assert np.array_equal(a["crop_origin_lps"], b["crop_origin_lps"])


def test_pet_ct_two_channels_and_clusters(case_dir, tmp_path):
    d, _ = case_dir
    cfg = IntensityConfig(crop_size=32, input_mode="pet+ct")
    # centroids: big-tiny ~34 mm apart, corner ~48 mm from the big one
    ds = LesionCropDataset(_records(d), cfg, cluster_mm=40.0, progress=False)
    assert [s.lesion_id for s in ds.specs] == ["1", "2+3"]
    it = ds[1]
    assert it["image"].shape == (2, 32, 32, 32)
    assert torch.isfinite(it["image"]).all()
    assert int(it["label"].sum()) >= 82  # both lesions are the target
    assert torch.all(it["image"][1] == 0)  # CT constant (30 HU) inside the image: z-score gives 0
    ct = ds[0]["image"][1]  # the corner crop is padded with -1024 HU
    assert abs(float(ct.mean())) < 1e-4 and abs(float(ct.std()) - 1) < 1e-3  # clamped, z-scored CT
    assert len(torch.unique(ct)) >= 2  # body and clamped padding
    assert len(LesionCropDataset(_records(d), cfg, cluster_mm=10.0, progress=False)) == 3


def test_case_without_label_is_refused(case_dir):
    d, _ = case_dir
    from sam_l1dfl.errors import InputError

    with pytest.raises(InputError, match="no label"):
        LesionCropDataset([dict(case_id="x", pet=d / "SUV.nii.gz")], CFG, progress=False)
