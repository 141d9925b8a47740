"""Data-set evaluation and its outputs: file matching, grid checks, CSV/JSON/HTML (issue 7)."""

from __future__ import annotations

import base64
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl.errors import InputError
from sam_l1dfl.metrics import evaluate_dataset

SHAPE = (12, 14, 16)  # (z, y, x)
SPACING = (2.0, 2.0, 2.5)  # (x, y, z) mm -> 10 mm^3 = 0.01 mL per voxel


def _img(arr, dtype=np.uint8, spacing=SPACING, direction=None):
    im = sitk.GetImageFromArray(np.asarray(arr, dtype=dtype))
    im.SetSpacing(spacing)
    im.SetOrigin((-10.0, 5.0, 3.0))
    if direction is not None:
        im.SetDirection(direction)
    return im


def _write(im, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(im, str(path))


@pytest.fixture
def ds(tmp_path):
    """Three cases in the autoPET layout with SUV, flat predictions.

    a: lesion 2x2x2 found exactly + FP voxel; b: lesion missed (empty prediction);
    n: negative case (empty reference) with a 2-voxel FP.  Case a is flipped (direction).
    """
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    flip = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    ra = np.zeros(SHAPE)
    ra[2:4, 3:5, 4:6] = 1
    pa = ra.copy()
    pa[9, 10, 12] = 1
    rb = np.zeros(SHAPE)
    rb[5:8, 5:8, 5:8] = 1
    rn = np.zeros(SHAPE)
    pn = np.zeros(SHAPE)
    pn[1, 1, 1:3] = 1
    for case, r, p, d in (("a", ra, pa, flip), ("b", rb, np.zeros(SHAPE), None), ("n", rn, pn, None)):
        pet = 1.0 + r * 4.0
        _write(_img(r, direction=d), gt / case / "SEG.nii.gz")
        _write(_img(pet, np.float32, direction=d), gt / case / "SUV.nii.gz")
        _write(_img(p, direction=d), pred / f"{case}.nii.gz")
    return gt, pred


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_by_hand(ds, tmp_path):
    gt, pred = ds
    out = tmp_path / "report"
    res = evaluate_dataset(pred, gt, out_dir=out, n_resamples=200, progress=False)
    rows = {r["case"]: r for r in _csv(out / "metrics.csv")}
    assert set(rows) == {"a", "b", "n"}
    assert float(rows["a"]["dice"]) == pytest.approx(16 / 17)
    assert float(rows["a"]["fpv_ml"]) == pytest.approx(0.01)
    assert float(rows["b"]["dice"]) == 0 and float(rows["b"]["fnv_ml"]) == pytest.approx(0.27)
    assert rows["n"]["dice"] == "" and float(rows["n"]["fpv_ml"]) == pytest.approx(0.02)
    assert (rows["a"]["tp_c3"], rows["a"]["fp_c3"], rows["b"]["fn_c3"]) == ("1", "1", "1")
    assert rows["a"]["has_pet"] == "true" and float(rows["a"]["ref_suv_max"]) == 5.0
    assert rows["a"]["spacing_mm"] == "2x2x2.5" and float(rows["a"]["voxel_ml"]) == pytest.approx(0.01)
    lesions = _csv(out / "lesions.csv")
    assert sorted((l["case"], l["kind"]) for l in lesions) == [
        ("a", "pred"), ("a", "pred"), ("a", "ref"), ("b", "ref"), ("n", "pred")]
    fp_a = [l for l in lesions if l["case"] == "a" and l["kind"] == "pred" and l["fp_c1"] == "true"]
    assert len(fp_a) == 1
    # world position of the FP voxel, index (x=12, y=10, z=9) in the flipped image
    assert (float(fp_a[0]["x_mm"]), float(fp_a[0]["y_mm"]), float(fp_a[0]["z_mm"])) == pytest.approx(
        (-10.0 - 12 * 2.0, 5.0 - 10 * 2.0, 3.0 + 9 * 2.5))

    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    run = summary["runs"][0]
    assert run["n_cases"] == 3 and run["n_negative_cases"] == 1
    assert run["dice"]["n"] == 2 and run["dice"]["mean"] == pytest.approx((16 / 17 + 0) / 2)
    c1 = run["detection"]["c1"]
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 2, 1)
    assert c1["precision"]["value"] == pytest.approx(1 / 3) and c1["recall"]["value"] == pytest.approx(0.5)
    assert c1["f1"]["value"] == pytest.approx(2 / 5)
    assert "c3" in run["detection"] and run["strata"]["<1.5 mL"]["n_lesions"] == 2
    assert run["quantification"]["lesion_count"]["n"] == 3
    assert summary["definitions"]["dice"].startswith("Foreground Dice")
    assert res.summary["runs"][0]["detection"]["c1"]["tp"] == 1

    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    imgs = html.count("data:image/png;base64,")
    assert imgs == 3 + 1  # three cases with MIPs + the Dice/volume scatter; no click curve
    assert "Click-number curve" not in html
    assert "empty reference" in html  # the NaN Dice is explained
    b64 = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_click_runs_give_curve(ds, tmp_path):
    gt, pred = ds
    # clicks_1: the predictions above; clicks_3: perfect predictions
    root = tmp_path / "clickruns"
    (root / "clicks_1").mkdir(parents=True)
    (root / "clicks_3").mkdir()
    for case in ("a", "b", "n"):
        (root / "clicks_1" / f"{case}.nii.gz").write_bytes((pred / f"{case}.nii.gz").read_bytes())
        (root / "clicks_3" / f"{case}.nii.gz").write_bytes((gt / case / "SEG.nii.gz").read_bytes())
    out = tmp_path / "r"
    res = evaluate_dataset(root, gt, out_dir=out, n_resamples=100, progress=False, max_mip_cases=1)
    assert [r["clicks"] for r in res.summary["runs"]] == [1, 3]
    assert res.summary["runs"][1]["dice"]["mean"] == pytest.approx(1.0)
    assert res.summary["runs"][1]["detection"]["c1"]["fp"] == 0
    rows = _csv(out / "metrics.csv")
    assert sorted((r["clicks"], r["case"]) for r in rows) == [(c, k) for c in ("1", "3") for k in "abn"]
    html = (out / "report.html").read_text()
    assert "Click-number curve" in html and "2 more case(s) not drawn" in html
    assert html.count("data:image/png;base64,") == 1 + 1 + 1  # one case, scatter, click curve
    # the same with explicit folders and click counts
    res2 = evaluate_dataset([root / "clicks_1", root / "clicks_3"], gt, clicks=[1, 3], mips=False,
                            n_resamples=100, progress=False)
    assert res2.summary["runs"][0]["dice"] == res.summary["runs"][0]["dice"]


def test_without_pet_no_c3(ds, tmp_path):
    gt, pred = ds
    flat = tmp_path / "flatgt"
    flat.mkdir()
    for case in ("a", "b", "n"):
        (flat / f"{case}.nii.gz").write_bytes((gt / case / "SEG.nii.gz").read_bytes())
    res = evaluate_dataset(pred, flat, mips=False, n_resamples=50, progress=False)
    assert set(res.summary["runs"][0]["detection"]) == {"c1", "c2"}
    assert res.cases[0]["tp_c3"] is None and math.isnan(res.cases[0]["ref_suv_max"])
    # --pet-dir supplies it again
    res = evaluate_dataset(pred, flat, pet_dir=gt, mips=False, n_resamples=50, progress=False)
    assert "c3" in res.summary["runs"][0]["detection"]


def test_grid_mismatch_names_the_file(ds):
    gt, pred = ds
    bad = _img(np.zeros(SHAPE), spacing=(2.0, 2.0, 3.0))
    _write(bad, pred / "b.nii.gz")
    with pytest.raises(InputError) as e:
        evaluate_dataset(pred, gt, mips=False, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(pred / "b.nii.gz") in msg and "spacing" in msg and "resample" in msg


def test_missing_prediction_and_unmatched(ds):
    gt, pred = ds
    (pred / "b.nii.gz").unlink()
    (pred / "zz.nii.gz").write_bytes((pred / "a.nii.gz").read_bytes())
    with pytest.raises(InputError, match=r"b\.nii\.gz: no prediction for reference case 'b'"):
        evaluate_dataset(pred, gt, mips=False, progress=False)
    res = evaluate_dataset(pred, gt, mips=False, progress=False, missing_as_empty=True, n_resamples=50)
    b = [r for r in res.cases if r["case"] == "b"][0]
    assert b["dice"] == 0 and b["fnv_ml"] == pytest.approx(0.27) and b["pred_file"] == ""
    assert res.summary["inputs"]["unmatched_predictions"] == [str(pred / "zz.nii.gz")]


def test_probability_map_and_empty_gt_rejected(ds, tmp_path):
    gt, pred = ds
    _write(_img(np.full(SHAPE, 0.3), np.float32), pred / "b.nii.gz")
    with pytest.raises(InputError, match="probability map"):
        evaluate_dataset(pred, gt, mips=False, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no reference masks"):
        evaluate_dataset(pred, tmp_path / "empty", progress=False)
