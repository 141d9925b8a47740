"""``sam-l1dfl evaluate`` end to end on the synthetic data set with perturbed references."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.cli import main

syn = pytest.importorskip("sam_l1dfl.data.synthetic")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 synthetic cases (oblique, flipped, lps, lesion-free) and perturbed 'predictions':
    0 dilated by one voxel, 1 largest lesion dropped + a 27-voxel FP blob, 2 eroded,
    3 (negative) the FP blob only."""
    root = tmp_path_factory.mktemp("evalcli")
    gt = root / "gt"
    syn.generate_dataset(gt, 4, seed=5, n_oblique=2, progress=False)
    pred = root / "pred"
    pred.mkdir()
    info = {}
    for i in range(4):
        case = f"synth_{i:03d}"
        seg = sitk.ReadImage(str(gt / case / "SEG.nii.gz"))
        ref = sitk.GetArrayFromImage(seg) > 0
        p = ref.copy()
        blob = np.zeros_like(ref)
        blob[2:5, 2:5, 2:5] = True
        assert not ndimage.binary_dilation(ref, iterations=2)[blob].any()
        if i == 0:
            p = ndimage.binary_dilation(ref)
        elif i == 1:
            lab, n = ndimage.label(ref, structure=ndimage.generate_binary_structure(3, 2))
            big = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            p[lab == big] = False
            p |= blob
            info["dropped_voxels"] = int((lab == big).sum())
        elif i == 2:
            p = ndimage.binary_erosion(ref)
        else:
            p = blob
        out = sitk.GetImageFromArray(p.astype(np.uint8))
        out.CopyInformation(seg)
        sitk.WriteImage(out, str(pred / f"{case}.nii.gz"))
        info[case] = float(np.prod(seg.GetSpacing())) / 1000.0
    return gt, pred, info


def _rows(path):
    with open(path, newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_evaluate_command_on_synthetic(data, tmp_path, capsys):
    gt, pred, info = data
    out = tmp_path / "report"
    rc = main(["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--out", str(out), "--quiet",
               "--n-boot", "200"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "C1: TP" in text and "C3: TP" in text and "report.html" in text
    rows = _rows(out / "metrics.csv")
    r0, r1, r2, r3 = (rows[f"synth_{i:03d}"] for i in range(4))
    assert 0.3 < float(r0["dice"]) < 1 and r0["fn_c1"] == "0" and r0["fp_c1"] == "0"
    # dropped lesion: exactly one FN whose volume is the FNV; the blob is one FP of 27 voxels
    assert r1["fn_c1"] == "1" and r1["fp_c1"] == "1"
    assert float(r1["fnv_ml"]) == pytest.approx(info["dropped_voxels"] * info["synth_001"], rel=1e-6)
    assert float(r1["fpv_ml"]) == pytest.approx(27 * info["synth_001"], rel=1e-6)
    assert float(r2["pred_tmtv_ml"]) < float(r2["ref_tmtv_ml"])
    assert r3["dice"] == "" and r3["ref_lesion_count"] == "0" and r3["fp_c1"] == "1"
    assert float(r3["fpv_ml"]) == pytest.approx(27 * info["synth_003"], rel=1e-6)
    # PET found beside SEG.nii.gz: SUV read-outs and C3
    assert r0["has_pet"] == "true" and float(r0["ref_suv_max"]) > 0 and r0["tp_c3"] != ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["n_negative_cases"] == 1
    assert summary["runs"][0]["quantification"]["tmtv_ml"]["n"] == 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 + 1


def test_evaluate_command_one_line_errors(data, tmp_path, capsys):
    gt, pred, _ = data
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in pred.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    im = sitk.Image(5, 5, 5, sitk.sitkUInt8)
    sitk.WriteImage(im, str(bad / "synth_002.nii.gz"))
    rc = main(["evaluate", "--pred-dir", str(bad), "--gt-dir", str(gt), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"error: {bad / 'synth_002.nii.gz'}: size") and "\n" not in err
    assert not (tmp_path / "o" / "report.html").exists()
    rc = main(["evaluate", "--pred-dir", str(pred), str(pred), "--gt-dir", str(gt), "--out", str(tmp_path / "o")])
    assert rc == 2 and "click counts" in capsys.readouterr().err


# ---------------------------------------------------------------------- issue 13: bad inputs
def _tiny_gt(root, n=2):
    """n cases ``c<i>/SEG.nii.gz`` + ``SUV.nii.gz`` (one 3x3x3 lesion, SUV 9 inside) and exact
    predictions ``pred/c<i>.nii.gz``."""
    seg = np.zeros((10, 12, 14), np.uint8)
    seg[3:6, 4:7, 5:8] = 1
    pet = np.where(seg > 0, 9.0, 1.0).astype(np.float32)
    pet[4, 5, 6] = 10.0
    for i in range(n):
        d = root / "gt" / f"c{i}"
        d.mkdir(parents=True)
        for arr, name in ((seg, "SEG"), (pet, "SUV")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((2.0, 2.0, 3.0))
            sitk.WriteImage(im, str(d / f"{name}.nii.gz"), True)
        (root / "pred").mkdir(exist_ok=True)
        (root / "pred" / f"c{i}.nii.gz").write_bytes((d / "SEG.nii.gz").read_bytes())
    return root / "gt", root / "pred"


def _rewrite(path, fn):
    im = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(im)))
    out.CopyInformation(im)
    sitk.WriteImage(out, str(path), True)


def test_evaluate_refuses_a_nan_in_a_lesion_instead_of_shifting_suvmean(tmp_path, capsys):
    from sam_l1dfl.metrics import evaluate_dataset

    gt, pred = _tiny_gt(tmp_path, 1)
    ok = evaluate_dataset(pred, gt, mips=False, n_resamples=10, progress=False)
    assert ok.cases[0]["ref_suv_mean"] == pytest.approx((26 * 9 + 10) / 27)

    def nan_in_lesion(a):
        a = a.copy()
        a[3, 4, 5] = np.nan
        return a

    _rewrite(gt / "c0" / "SUV.nii.gz", nan_in_lesion)
    rc = main(["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {gt / 'c0' / 'SUV.nii.gz'}: PET contains 1 NaN")
    assert not (tmp_path / "o" / "metrics.csv").exists()


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_evaluate_refuses_negative_mask_values(tmp_path, capsys, which):
    gt, pred = _tiny_gt(tmp_path, 1)
    path = gt / "c0" / "SEG.nii.gz" if which == "gt" else pred / "c0.nii.gz"
    _rewrite(path, lambda a: np.where(a > 0, -1, 0).astype(np.int16))
    rc = main(["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: ") and "negative values" in err


@pytest.mark.parametrize("name", ["SEG.nii.gz", "SUV.nii.gz", "pred"])
def test_evaluate_truncated_file_is_named_and_other_bad_cases_listed(tmp_path, capsys, name):
    gt, pred = _tiny_gt(tmp_path, 3)
    bad = [pred / f"c{i}.nii.gz" if name == "pred" else gt / f"c{i}" / name for i in (0, 2)]
    for p in bad:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    rc = main(["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {bad[0]}: truncated or corrupt (") and "1 more unusable case(s): c2" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
