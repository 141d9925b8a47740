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
