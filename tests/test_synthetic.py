"""Synthetic PSMA PET/CT phantom: determinism, bookkeeping, anatomy, geometry (issue 2)."""

from __future__ import annotations

import json
import math

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.data import synthetic as syn
from sam_l1dfl.io_utils import sha256_file

FILES = (syn.PET_NAME, syn.CT_NAME, syn.SEG_NAME, syn.ORGANS_NAME)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """4 cases: oblique, flipped, lps, lps lesion-free (i % 4 == 3)."""
    out = tmp_path_factory.mktemp("synth_a")
    path = syn.generate_dataset(out, 4, seed=7, n_oblique=2, progress=False)
    return out, json.loads(path.read_text())


@pytest.fixture(scope="module")
def cases():
    """In-memory cases with many lesions, one per direction kind."""
    return [syn.generate_case(200 + i, f"m{i}", direction=d, n_lesions=12)
            for i, d in enumerate(("lps", "flipped", "oblique", "lps"))]


def _strip_time(meta):
    meta = json.loads(json.dumps(meta))
    meta["summary"].pop("seconds")
    return meta


def test_same_seed_identical_files_and_case_independent_of_count(ds, tmp_path):
    out, meta = ds
    syn.generate_dataset(tmp_path / "b", 4, seed=7, n_oblique=2, progress=False)
    meta_b = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert _strip_time(meta) == _strip_time(meta_b)
    for c in meta["cases"]:
        for f in FILES:
            assert sha256_file(out / c["case_id"] / f) == sha256_file(tmp_path / "b" / c["case_id"] / f), f
    # case 2 with --cases 3 is the same case as with --cases 4
    syn.generate_dataset(tmp_path / "c", 3, seed=7, n_oblique=2, progress=False)
    for f in FILES:
        assert sha256_file(out / "synth_002" / f) == sha256_file(tmp_path / "c" / "synth_002" / f)


def test_different_seed_differs(ds):
    a = syn.generate_case(1)
    b = syn.generate_case(2)
    pa, pb = sitk.GetArrayViewFromImage(a.pet), sitk.GetArrayViewFromImage(b.pet)
    assert not np.array_equal(pa, pb)
    assert syn.case_seed(7, 0) != syn.case_seed(8, 0) and syn.case_seed(7, 0) != syn.case_seed(7, 1)


def test_lesion_counts_and_volumes_match_dataset_json(ds):
    out, meta = ds
    assert meta["format"] == syn.FORMAT and meta["generator_version"] == syn.GENERATOR_VERSION
    assert meta["seed"] == 7 and len(meta["cases"]) == 4
    total = 0
    for c in meta["cases"]:
        seg_img = sitk.ReadImage(str(out / c["files"]["seg"]))
        seg = sitk.GetArrayFromImage(seg_img)
        vox_ml = np.prod(seg_img.GetSpacing()) / 1000.0
        assert set(np.unique(seg)) <= {0, 1}
        labels, n = cc3d.connected_components(seg, connectivity=18, return_N=True)
        assert n == c["n_lesions"] == len(c["lesions"])
        counts = sorted(np.bincount(labels.ravel())[1:].tolist())
        assert counts == sorted(les["voxels"] for les in c["lesions"])
        for les in c["lesions"]:
            assert les["volume_ml"] == pytest.approx(les["voxels"] * vox_ml, abs=1e-3)
            d = (6 * les["volume_ml"] * 1000 / math.pi) ** (1 / 3)
            assert les["equivalent_diameter_mm"] == pytest.approx(d, abs=0.01)
            # the centroid index points at that lesion's component
            i, j, k = np.round(les["centroid_index"]).astype(int)
            lo, hi = np.array(les["bbox_index"][0]), np.array(les["bbox_index"][1])
            assert np.all(lo <= [i, j, k]) and np.all([i, j, k] <= hi)
            assert les["location"] in syn.LOCATIONS
        assert c["lesion_volume_ml"] == pytest.approx(sum(les["volume_ml"] for les in c["lesions"]), abs=1e-3)
        total += c["n_lesions"]
    assert meta["summary"]["n_lesions"] == total
    lesion_free = [c for c in meta["cases"] if c["case_id"] == "synth_003"][0]
    assert lesion_free["n_lesions"] == 0 and meta["summary"]["lesion_free_cases"] >= 1


def test_lesions_separate_inside_body_and_outside_organs(cases):
    for c in cases:
        seg = sitk.GetArrayFromImage(c.seg).astype(bool)
        assert seg.any()
        assert c.organ_mask("body")[seg].all()
        organs = sitk.GetArrayViewFromImage(c.organs)
        forbidden = [syn.ORGAN_LABELS[n] for n in ("lung", "bladder", "kidney", "ureter", "liver", "blood")]
        # each lesion one 18-component, and no two lesions touch even diagonally (26-neighbourhood)
        inst = c.instances
        for les in c.lesions:
            m = inst == les["index"]
            if les["location"] == "liver":  # liver metastases lie in the liver, and only there
                assert (organs[m] == syn.ORGAN_LABELS["liver"]).all()
            else:
                assert not np.isin(organs[m], forbidden).any()
            assert cc3d.connected_components(m.astype(np.uint8), connectivity=18, return_N=True)[1] == 1
            ring = ndimage.binary_dilation(m, np.ones((3, 3, 3), bool)) & ~m
            assert not np.any(inst[ring] > 0)


def test_lesion_population(cases):
    les = [x for c in cases for x in c.lesions]
    vols = np.array([x["volume_ml"] for x in les])
    diam = np.array([x["equivalent_diameter_mm"] for x in les])
    assert (vols < 0.5).sum() >= 5 and (vols >= 2.0).sum() >= 3
    assert (diam < 14).sum() > (diam >= 20).sum()  # more small than large
    assert diam.min() >= 3.0 and diam.max() <= 45.0
    # the measured SUVmax follows the target drawn from the published distribution (the target is
    # aimed at through the PSF and the partial volume); next to an organ its spill adds to it
    iso = [x for x in les if x["adjacent_to"] is None and x["voxels"] >= 3]
    ratio = np.array([x["suv_max"] / x["target_suv_max"] for x in iso])
    assert len(iso) >= 8 and 0.8 < np.median(ratio) < 1.25
    locs = {x["location"] for x in les}
    assert {"bone_pelvis", "node_pelvic", "prostate_bed", "liver"} <= locs
    near = {x["adjacent_to"] for x in les}
    assert {"bladder", "liver"} <= near and None in near
    assert all((x["adjacent_to"] is not None) == (x["organ_distance_mm"] is not None and
                                                   x["organ_distance_mm"] <= syn.NEAR_ORGAN_MM) for x in les)
    # low- and high-contrast lesions (SUVmax over the SUV of the tissue the lesion sits in)
    tbr = np.array([x["tbr"] for x in les])
    assert (tbr < 3).sum() >= 2 and (tbr >= 3).sum() >= 10
    assert all(x["tbr"] == pytest.approx(x["suv_max"] / x["host_suv"], rel=1e-2) for x in les)
    # irregular shapes: the fraction of a lesion's voxels inside its equivalent sphere (about
    # the centroid) is ~0.9+ for a voxelised ball, much lower for the irregular lesions
    fractions = []
    for c in cases:
        for x in c.lesions:
            if x["voxels"] < 30:
                continue
            kji = np.argwhere(c.instances == x["index"])[:, ::-1].astype(float)
            pts = np.array([c.pet.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in kji])
            d = np.linalg.norm(pts - pts.mean(0), axis=1)
            fractions.append(float((d <= x["equivalent_diameter_mm"] / 2).mean()))
    assert len(fractions) >= 5 and np.median(fractions) < 0.85 and min(fractions) < 0.7


def test_lesion_sizes_and_suvmax_follow_the_published_distributions():
    """The drawn sizes and SUVmax reproduce the published figures they are calibrated to
    (docs/phantom.md): per-site median and IQR of SUVmax, the nodes' mean volume of 0.5 mL."""
    rng = np.random.default_rng(0)
    suv = {"liver": 5.0}
    draws = {loc: [syn._lesion_size_and_suvmax(loc, rng, suv) for _ in range(4000)]
             for loc in ("bone_pelvis", "node_pelvic", "prostate_bed", "liver")}
    for loc, site in (("node_pelvic", "node"), ("prostate_bed", "prostate_bed")):
        med, q1, q3, lo, hi = syn.SUVMAX_BY_SITE[site]
        t = np.array([d[1] for d in draws[loc]])
        assert np.median(t) == pytest.approx(med, rel=0.06)
        assert np.percentile(t, 25) == pytest.approx(q1, rel=0.08) and np.percentile(t, 75) == pytest.approx(q3, rel=0.08)
        assert t.min() >= lo and t.max() <= hi
    bone = np.array([d[1] for d in draws["bone_pelvis"]])
    low = (bone <= syn.PSMA_LOW_SUVMAX[1]).mean()
    assert low == pytest.approx(syn.PSMA_LOW_FRACTION, abs=0.03)  # PSMA-low bone lesions
    liver = np.array([d[1] for d in draws["liver"]])
    assert liver.min() >= 1.2 * suv["liver"] and 9.5 < liver.mean() < 12.0
    node_ml = np.array([math.pi / 6 * d[0] ** 3 / 1000 for d in draws["node_pelvic"]])
    assert 0.4 < node_ml.mean() < 0.7  # published mean 0.5 mL (range 0.2-2.3)


# measured medians over the eroded organ, after blur and noise (generator 2.0: organ levels drawn
# around the published SUVmax, divided by the organ's max/mean ratio; docs/phantom.md)
SUV_RANGES = {"liver": (1.9, 6.0), "spleen": (3, 11), "kidney": (14, 100), "parotid": (9, 35), "bladder": (9, 62),
              "bowel": (2, 18), "soft_tissue": (0.5, 1.5), "blood": (0.5, 1.6), "lung": (0.0, 0.6)}
HU_RANGES = {"background": (-1010, -990), "lung": (-900, -700), "fat": (-150, -50), "soft_tissue": (30, 60),
             "liver": (30, 70), "spleen": (30, 60), "kidney": (20, 60), "bone": (250, 1200)}


def test_suv_and_hu_ranges_per_organ(cases):
    for c in cases[:3]:
        pet = sitk.GetArrayViewFromImage(c.pet)
        ct = sitk.GetArrayViewFromImage(c.ct)
        assert pet.dtype == np.float32 and ct.dtype == np.int16 and pet.min() >= 0
        for name, (lo, hi) in SUV_RANGES.items():
            m = ndimage.binary_erosion(c.organ_mask(name)) & (c.instances == 0)
            assert m.sum() > 5, name
            med = float(np.median(pet[m]))
            assert lo <= med <= hi, (c.case_id, name, med)
        for name, (lo, hi) in HU_RANGES.items():
            m = ndimage.binary_erosion(c.organ_mask(name)) & (c.instances == 0)
            med = float(np.median(ct[m]))
            assert lo <= med <= hi, (c.case_id, name, med)
        bone = c.organ_mask("bone")
        assert 900 <= ct[bone].max() <= 1300
        # assigned (pre-blur) values respect the table
        s = c.info["organ_suv"]
        for name, (mean, sd) in syn.ORGAN_SUVMAX.items():
            assert (mean - 1.5 * sd) / syn._MAX_OVER_MEAN[name] - 1e-3 <= s[name] <= (mean + 1.5 * sd) / syn._MAX_OVER_MEAN[name] + 1e-3
        assert 10 <= s["bladder"] <= 60
        assert 4.0 <= c.info["psf_fwhm_mm"] <= 7.0
        # noise grows with activity: liver noisier than muscle
        liv = ndimage.binary_erosion(c.organ_mask("liver"), iterations=2)
        muscle = ndimage.binary_erosion(c.organ_mask("soft_tissue"), iterations=2) & (c.instances == 0)
        hp = pet - ndimage.uniform_filter(pet, 3)  # the noise, not the organ edges (robust spread)

        def spread(m):
            return 1.4826 * float(np.median(np.abs(hp[m] - np.median(hp[m]))))
        assert spread(liv) > 1.5 * spread(muscle)


def test_anatomy_is_where_expected_in_world_space(cases):
    """Same patient-space layout whatever the direction cosines (orientation handling)."""
    for c in cases[:3]:
        lab = sitk.GetArrayViewFromImage(c.organs)

        def centre(name):
            kji = np.argwhere(lab == syn.ORGAN_LABELS[name]).mean(0)
            return np.array(c.organs.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist()))

        liver, spleen, bladder, parotid, lung = (centre(n) for n in ("liver", "spleen", "bladder", "parotid", "lung"))
        kidney = centre("kidney")
        assert liver[0] < -10 < 10 < spleen[0]  # LPS: liver on the patient's right (-x), spleen left
        assert parotid[2] > lung[2] > liver[2] > kidney[2] > bladder[2]  # head up
        assert kidney[1] > bladder[1] + 10  # kidneys posterior to the bladder
    # the three kinds differ in direction only
    d = [np.array(c.pet.GetDirection()).reshape(3, 3) for c in cases[:3]]
    assert np.allclose(d[0], np.eye(3)) and np.allclose(d[1], np.diag([-1, -1, 1]))
    assert not np.allclose(np.abs(d[2]), np.eye(3), atol=0.05) and np.allclose(d[2] @ d[2].T, np.eye(3), atol=1e-9)


def test_geometry_round_trips_through_files(ds):
    out, meta = ds
    kinds = [c["direction_kind"] for c in meta["cases"]]
    assert kinds == ["oblique", "flipped", "lps", "lps"]
    for c in meta["cases"]:
        g = c["geometry"]
        imgs = [sitk.ReadImage(str(out / c["case_id"] / f)) for f in FILES]
        types = [im.GetPixelID() for im in imgs]
        assert types == [sitk.sitkFloat32, sitk.sitkInt16, sitk.sitkUInt8, sitk.sitkUInt8]
        for im in imgs:
            assert list(im.GetSize()) == g["size"] == [100, 100, 130]
            np.testing.assert_allclose(im.GetSpacing(), g["spacing"], atol=1e-5)
            np.testing.assert_allclose(im.GetSpacing(), syn.DEFAULT_SPACING, atol=1e-5)
            np.testing.assert_allclose(im.GetOrigin(), g["origin"], atol=1e-3)
            np.testing.assert_allclose(im.GetDirection(), g["direction"], atol=1e-5)
        assert np.linalg.norm(g["origin"]) > 100  # scanner-like, non-zero origin
        # world centroid in dataset.json agrees with the file's geometry
        for les in c["lesions"]:
            p = imgs[2].TransformContinuousIndexToPhysicalPoint(les["centroid_index"])
            np.testing.assert_allclose(p, les["centroid_lps"], atol=0.05)


def test_cli_synth(tmp_path, capsys):
    from sam_l1dfl.cli import main

    assert main(["synth", "--out", str(tmp_path / "d"), "--cases", "1", "--seed", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "synth_000" in out and "lesions" in out
    assert (tmp_path / "d" / "synth_000" / syn.SEG_NAME).is_file()
    assert main(["synth", "--out", str(tmp_path / "e"), "--cases", "0"]) == 2
    assert main(["synth", "--out", str(tmp_path / "e"), "--cases", "1", "--oblique", "2"]) == 2
    (tmp_path / "f").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "f"), "--cases", "1"]) == 2
    assert "error: " in capsys.readouterr().err


def test_generate_case_rejects_bad_arguments():
    with pytest.raises(ValueError):
        syn.generate_case(0, direction="ras")
    with pytest.raises(ValueError):
        syn.generate_case(0, n_lesions=13)
    assert syn.generate_case(0, n_lesions=0).lesions == []


@pytest.mark.slow
def test_full_size_grid():
    c = syn.generate_case(11, full_size=True, n_lesions=3)
    assert c.pet.GetSize() == syn.FULL_SIZE
    assert c.info["seconds"] < 15
    assert c.organ_mask("liver").sum() > 8 * 1000  # adult liver, >1.5 L at 4.07x4.07x3 mm
