"""The classical SUV-threshold baselines: whole-scan ones on hand-made volumes (issue 15, item 9), the
click-grown 41 %-SUVmax segmenter on hand-made and synthetic cases and through ``sam-l1dfl infer`` (issue 14)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.baselines import (CLICK_CONNECTIVITY, METHODS, ThresholdSegmenter, body_mask, climb, grow_from_clicks,
                                 threshold_segment)
from sam_l1dfl.cli import main
from sam_l1dfl.data.geometry import CropGeometry, Grid
from sam_l1dfl.data.synthetic import ORGAN_LABELS, generate_case, write_case
from sam_l1dfl.errors import InputError
from sam_l1dfl.prompts import generate_prompts
from sam_l1dfl.prompts.generate import PromptConfig
from sam_l1dfl.prompts.io import save_prompts
from sam_l1dfl.prompts.types import (NEGATIVE, POSITIVE, CasePrompts, ImageRef, LesionPrompts, PointPrompt,
                                     box_from_index_bounds)

SHAPE = (8, 20, 20)  # (z, y, x)


def phantom():
    """A body (CT 0 HU) with a hollow lung (CT -800 HU) in air (-1000 HU); PET 1 SUV in the body, an
    air hot spot outside it (SUV 20), a lesion of SUV 5 with a 12 SUV core and a faint one of SUV 3.5."""
    ct = np.full(SHAPE, -1000.0)
    ct[:, 2:18, 2:18] = 0.0
    ct[:, 6:10, 6:10] = -800.0  # lung: inside the body, below -500 HU
    pet = np.zeros(SHAPE, np.float32)
    pet[:, 2:18, 2:18] = 1.0
    pet[3:6, 12:16, 12:16] = 5.0  # lesion: 3 x 4 x 4 = 48 voxels
    pet[4, 13, 13] = 12.0  # its peak
    pet[2:4, 3:5, 3:5] = 3.5  # faint lesion: 8 voxels
    pet[0, 0, 0] = 20.0  # outside the body (air): never segmented
    return pet, ct


def test_body_mask_largest_component_holes_filled():
    pet, ct = phantom()
    ct[0, 0, 0:2] = 50.0  # a small island outside the body: not the largest component
    b = body_mask(pet, ct)
    assert b.dtype == bool and b.sum() == 8 * 16 * 16  # the lung is filled, the island dropped
    assert not b[0, 0, 0] and b[4, 7, 7]
    # without CT: PET > 0.1 SUV
    assert body_mask(pet).sum() == 8 * 16 * 16


def test_threshold_methods_by_hand():
    pet, ct = phantom()
    s4 = threshold_segment(pet, ct, "suv4")
    assert s4.dtype == np.uint8 and s4.sum() == 48 and s4[0, 0, 0] == 0
    s3 = threshold_segment(pet, ct, "suv3")
    assert s3.sum() == 48 + 8  # the faint lesion too
    # 41 % of each hot region's SUVmax: the lesion region's max is 12 -> threshold 4.92: its 48 voxels;
    # the faint region's max 3.5 -> 1.435: all its 8 voxels
    s41 = threshold_segment(pet, ct, "suv41")
    assert s41.sum() == 56
    pet2 = pet.copy()
    pet2[4, 13, 13] = 20.0  # now 0.41 x 20 = 8.2 > 5: only the peak is left of that region
    s41b = threshold_segment(pet2, ct, "suv41")
    assert s41b.sum() == 1 + 8 and s41b[4, 13, 13] == 1
    # a given body mask is used as is
    assert threshold_segment(pet, body=np.ones(SHAPE, bool), method="suv4")[0, 0, 0] == 1
    assert set(METHODS) == {"suv4", "suv3", "suv41"}
    with pytest.raises(ValueError, match="unknown threshold method"):
        threshold_segment(pet, ct, "otsu")


# ------------------------------------------------------------------------------ click-grown 41 % SUVmax
def hot_phantom():
    """(z, y, x) SUV 1 background; lesion A: a 5³ block of SUV 6 with a 10 SUV peak at (10, 10, 10)
    and a 3 SUV rim voxel; a 26- but not 18-neighbour of the block at 8 SUV; a 'bladder' of SUV 30
    behind a 1 SUV valley (x 18) and a hot organ of SUV 20 touching the block at z 13."""
    pet = np.ones((24, 24, 30), np.float32)
    pet[8:13, 8:13, 8:13] = 6.0
    pet[10, 10, 10] = 10.0
    pet[10, 10, 13] = 3.0  # rim: below 41 % of 10, but its climb leads to the peak
    pet[13, 13, 13] = 8.0  # touches the block only at a corner (26-connected)
    pet[5:15, 5:15, 19:27] = 30.0  # bladder, separated by x = 13..18 at SUV 1
    return pet


def test_climb_and_grow_by_hand():
    pet = hot_phantom()
    assert climb(pet, (9, 9, 9)) == (10, 10, 10)
    assert climb(pet, (10, 10, 13)) == (10, 10, 10)  # a rim click climbs to the lesion's peak
    r = grow_from_clicks(pet, [(9, 11, 8)])
    assert r.suv_max == 10.0 and r.peak == (10, 10, 10)
    assert r.mask.sum() == 125 and not r.mask[13, 13, 13]  # 18-connectivity: the corner voxel stays out
    assert CLICK_CONNECTIVITY == 18
    assert grow_from_clicks(pet, [(9, 11, 8)], connectivity=26).mask[13, 13, 13]
    assert not r.mask[..., 19:].any()  # the bladder behind a valley: neither climbed to nor grown into
    rim = grow_from_clicks(pet, [(10, 10, 13)])
    assert rim.suv_max == 10.0 and rim.mask.sum() == 125 and not rim.mask[10, 10, 13]
    # a hot organ touching the lesion: the region grows into it (the classical leak, documented) ...
    leak = pet.copy()
    leak[13:20, 8:13, 8:13] = 20.0
    lk = grow_from_clicks(leak, [(9, 9, 9)])
    assert lk.suv_max == 10.0 and lk.mask[15, 10, 10] and lk.mask.sum() == 125 + 7 * 25 + 1  # + the 8 SUV corner
    # ... and without a peak of its own the climb goes up into the organ, which sets SUVmax
    leak[10, 10, 10] = 6.0
    lk = grow_from_clicks(leak, [(9, 9, 9)])
    assert lk.suv_max == 20.0 and lk.mask[15, 10, 10] and not lk.mask[9, 9, 9]
    # no click: SUVmax over the allowed voxels (a box VOI); nothing allowed: empty
    voi = np.zeros(pet.shape, bool)
    voi[6:15, 6:15, 6:15] = True
    v = grow_from_clicks(pet, np.zeros((0, 3)), voi)
    assert v.suv_max == 10.0 and v.mask.sum() == 125
    e = grow_from_clicks(pet, [(9, 9, 9)], np.zeros(pet.shape, bool))
    assert not e.mask.any() and e.peak is None
    # background click (SUV 0 everywhere): no mask rather than the whole crop
    assert not grow_from_clicks(np.zeros((4, 4, 4), np.float32), [(1, 1, 1)]).mask.any()


def _image(arr, spacing=(2.5, 2.5, 2.5)):
    g = Grid(tuple(reversed(arr.shape)), spacing, (-10.0, 20.0, -700.0))
    return g.image_from_array(arr), g


def _prompts(image, grid, zyx_pos, zyx_neg=(), box=None):
    """One lesion prompt: positive/negative points at (z, y, x) voxels, a box over index bounds."""
    ref = ImageRef.from_image(image)

    def point(zyx, label):
        ijk = np.array(zyx[::-1], float)
        return PointPrompt(tuple(grid.index_to_world(ijk)), tuple(ijk), label)

    pts = [point(p, POSITIVE) for p in zyx_pos] + [point(p, NEGATIVE) for p in zyx_neg]
    boxes = [] if box is None else [box_from_index_bounds(ref, *box)]
    return CasePrompts("hand", ref, [LesionPrompts(1, pts, boxes)])


def _crop_of(lesion: dict, seg: ThresholdSegmenter) -> CropGeometry:
    return seg.preprocess.geometry_at(lesion["window_center_lps"])


def test_segmenter_crop_box_and_negatives_on_the_pet_grid():
    """A hot slab larger than the crop: the mask is exactly the PET voxels whose centres lie in the
    8³ crop at 1.5 mm (±6 mm) around the click: 5 per axis at 2.5 mm spacing (centres at 0, ±2.5,
    ±5 mm; none on the crop's faces); a box and a negative point cut it further."""
    arr = np.ones((20, 20, 20), np.float32)
    arr[2:18, 2:18, 2:18] = 10.0
    pet, grid = _image(arr)
    seg = ThresholdSegmenter(crop_size=8, spacing=1.5)
    res = seg.segment(pet, prompts=_prompts(pet, grid, [(10, 10, 10)]))
    m = sitk.GetArrayFromImage(res.mask)
    assert m.sum() == 125 and m[8:13, 8:13, 8:13].all()
    assert res.mask.GetSize() == pet.GetSize() and res.mask.GetOrigin() == pet.GetOrigin()
    crop = _crop_of(res.lesions[0], seg)
    zyx = np.argwhere(m)
    assert crop.contains_index(crop.world_to_index(grid.index_to_world(zyx[:, ::-1].astype(float)))).all()
    d = res.lesions[0]
    assert d["suv_max"] == 10.0 and d["threshold_suv"] == pytest.approx(4.1) and d["voxels"] == 125
    assert res.report.method == "threshold" and "threshold" in res.report.summary()
    # a box (index bounds i 9.5..11.5, j 8.5..12.5, k 7.5..12.5) bounds the region: 2 x 4 x 5 voxels
    res = seg.segment(pet, prompts=_prompts(pet, grid, [(10, 10, 10)], box=((9.5, 8.5, 7.5), (11.5, 12.5, 12.5))))
    m = sitk.GetArrayFromImage(res.mask)
    assert m.sum() == 2 * 4 * 5 and m[8:13, 9:13, 10:12].all()
    # a negative point 2 voxels from the click excludes the voxels nearer to it (x >= 12 of the 8..12)
    res = seg.segment(pet, prompts=_prompts(pet, grid, [(10, 10, 10)], zyx_neg=[(10, 10, 12)]))
    m = sitk.GetArrayFromImage(res.mask)
    assert m.sum() == 125 - 25 and not m[:, :, 12:].any() and m[10, 10, 11]
    # a big crop: the whole slab
    whole = ThresholdSegmenter().segment(pet, prompts=_prompts(pet, grid, [(10, 10, 10)]))
    assert sitk.GetArrayFromImage(whole.mask).sum() == 16 ** 3
    # what the baseline cannot do is refused in one line
    for kw in ({"clicks": 1}, {"probabilities": True}):
        with pytest.raises(InputError):
            seg.segment(pet, prompts=_prompts(pet, grid, [(10, 10, 10)]), **kw)
    with pytest.raises(InputError, match="PET only"):
        seg.segment(pet, pet, prompts=_prompts(pet, grid, [(10, 10, 10)]))


def _lesion_of_prompt(case, lp):
    g = Grid.from_image(case.pet)
    w = np.array([p.world for p in lp.points if p.positive])
    return int(case.instances[tuple(np.rint(g.world_to_index(w[0])).astype(int)[::-1])])


QUIET = [ORGAN_LABELS[k] for k in ("soft_tissue", "fat", "bone_spine", "bone_pelvis", "bone_other", "blood", "lung")]


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_isolated_synthetic_lesions_match_the_reference():
    """Lesions >= 9 mm (wider than the 5-7 mm PSF FWHM) with only background-uptake tissue (SUV <= 1.5,
    below 41 % of any SUVmax >= 3.7) within 2 voxels: the 41 % isocontour of a blurred lesion lies within
    about a voxel of its edge, so Dice > 0.8 (phantom 2.0, heterogeneous uptake: measured 0.84-0.97 on these
    3 lesions; small lesions grow by partial volume, lesions near organs leak: not part of this test)."""
    found = []
    for seed in (1, 19, 22):
        case = generate_case(seed, n_lesions=6)
        org = sitk.GetArrayFromImage(case.organs)
        prompts = generate_prompts(case.seg, case.pet)
        lab = sitk.GetArrayFromImage(ThresholdSegmenter().segment(case.pet, prompts=prompts).labels)
        for lp in prompts.lesions:
            k = _lesion_of_prompt(case, lp)
            g = case.instances == k
            ring = ndimage.binary_dilation(g, np.ones((5, 5, 5), bool)) & ~g
            if case.lesions[k - 1]["equivalent_diameter_mm"] >= 9 and np.isin(org[ring], QUIET).all() \
                    and not (case.instances[ring] > 0).any():
                found.append(_dice(lab == lp.lesion_id, g))
    assert len(found) >= 3
    assert min(found) > 0.8


def test_bladder_touching_lesions_leak_without_a_box_and_a_box_bounds_them():
    """The classical method is not tuned: a lesion touching the bladder climbs into it (no valley), and
    its mask is mostly bladder.  Measured on seeds 1-24 (45 bladder-adjacent lesions, one centre click):
    half the masks are > 50 % bladder, mean lesion Dice 0.14; with a tight box the mean bladder fraction
    falls to 0.23 and the Dice rises to 0.67.  Here seeds 1-4: at least one point-only mask is > 50 %
    bladder, and with boxes every mask stays in its box and the bladder fraction drops."""
    bladder = ORGAN_LABELS["bladder"]
    frac = {False: [], True: []}
    for seed in (2, 6, 8, 9, 10):  # phantom 2.0 seeds with lesions of >= 10 voxels against the bladder
        case = generate_case(seed, n_lesions=6)
        bl = sitk.GetArrayFromImage(case.organs) == bladder
        g = Grid.from_image(case.pet)
        for box in (False, True):
            prompts = generate_prompts(case.seg, case.pet, PromptConfig(boxes=box))
            lab = sitk.GetArrayFromImage(ThresholdSegmenter().segment(case.pet, prompts=prompts).labels)
            for lp in prompts.lesions:
                if case.lesions[_lesion_of_prompt(case, lp) - 1]["adjacent_to"] != "bladder":
                    continue
                m = lab == lp.lesion_id
                frac[box].append((m & bl).sum() / max(m.sum(), 1))
                if box:
                    lo, hi = (np.asarray(v) for v in (lp.boxes[0].index_min, lp.boxes[0].index_max))
                    ijk = np.argwhere(m)[:, ::-1]
                    assert np.all((ijk >= lo) & (ijk <= hi)), g
    assert len(frac[False]) >= 4
    assert max(frac[False]) > 0.5
    assert np.mean(frac[True]) < np.mean(frac[False])


def test_cli_threshold_method_writes_what_evaluate_reads(tmp_path, capsys):
    data = tmp_path / "data"
    for seed in (19, 22):
        c = generate_case(seed, case_id=f"case_{seed}", n_lesions=3)
        write_case(c, data, organs=False)
    out = tmp_path / "pred"
    assert main(["infer", "--method", "threshold", "--data", str(data), "--prompts-from-mask",
                 "--out-dir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "threshold" and summary["checkpoint"] is None and summary["failed"] == []
    rec = json.loads((out / "case_19.json").read_text())
    assert rec["method"] == "threshold" and rec["report"]["method"] == "threshold"
    assert all(d["suv_max"] > 0 for d in rec["lesions"])
    # a prompt folder, and one case from files: the same mask
    pdir = tmp_path / "prompts"
    case = data / "case_19"
    pet = sitk.ReadImage(str(case / "SUV.nii.gz"))
    save_prompts(generate_prompts(sitk.ReadImage(str(case / "SEG.nii.gz")), pet, image_path=case / "SUV.nii.gz"),
                 pdir / "case_19.json")
    assert main(["infer", "--method", "threshold", "--data", str(data), "--prompts-dir", str(pdir),
                 "--out-dir", str(tmp_path / "pred2"), "--no-progress"]) == 0
    one = tmp_path / "one" / "p.nii.gz"
    assert main(["infer", "--method", "threshold", "--pet", str(case / "SUV.nii.gz"),
                 "--prompts", str(pdir / "case_19.json"), "--out", str(one)]) == 0
    assert "threshold baseline" in capsys.readouterr().out
    ref_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_19.nii.gz")))
    for p in (tmp_path / "pred2" / "case_19.nii.gz", one):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(p))), ref_mask)
    assert json.loads((tmp_path / "one" / "p.json").read_text())["method"] == "threshold"
    assert (tmp_path / "one" / "p_lesions.nii.gz").is_file()
    # evaluate reads the folder
    rep = tmp_path / "report"
    assert main(["evaluate", "--pred-dir", str(out), "--gt-dir", str(data), "--out", str(rep), "--quiet",
                 "--n-boot", "20"]) == 0
    with open(rep / "metrics.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"case_19", "case_22"}
    for cid, r in rows.items():  # evaluate scored the masks the command wrote
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}.nii.gz"))) > 0
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(data / cid / "SEG.nii.gz"))) > 0
        assert float(r["dice"]) == pytest.approx(_dice(pred, ref), abs=1e-3)
    capsys.readouterr()
    # one-line refusals
    assert main(["infer", "--method", "threshold", "--checkpoint", str(case), "--pet", str(case / "SUV.nii.gz"),
                 "--prompts-from-mask", str(case / "SEG.nii.gz"), "--out", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--checkpoint" in err and "\n" not in err
    assert main(["infer", "--pet", str(case / "SUV.nii.gz"), "--prompts-from-mask", str(case / "SEG.nii.gz"),
                 "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "--checkpoint is required with --method sam" in capsys.readouterr().err
