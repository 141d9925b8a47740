"""Reading, case loading (CT onto PET, label grid check), bad inputs, discovery and `sam-l1dfl data`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from _data_helpers import make_image, write
from sam_l1dfl.cli import main
from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.data.io import load_case, read_image, read_mask
from sam_l1dfl.errors import InputError


def _pet(shape=(6, 7, 8), spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0)):
    a = np.random.default_rng(0).uniform(0.5, 5, size=shape).astype(np.float32)
    return make_image(a, spacing, origin)


def _case_files(folder, pet=None, label=None, ct=None, names=("SUV", "CTres", "SEG")):
    folder.mkdir(parents=True, exist_ok=True)
    pet = pet or _pet()
    write(pet, folder / f"{names[0]}.nii.gz")
    ct = ct or make_image(np.full(sitk.GetArrayViewFromImage(pet).shape, 40, np.int16), pet.GetSpacing(), pet.GetOrigin())
    write(ct, folder / f"{names[1]}.nii.gz")
    if label is None:
        a = np.zeros(sitk.GetArrayViewFromImage(pet).shape, np.uint8)
        a[2:4, 3:5, 3:5] = 1
        label = make_image(a, pet.GetSpacing(), pet.GetOrigin())
    write(label, folder / f"{names[2]}.nii.gz")
    return folder


def _snapshot(d):
    return sorted((p, os.path.getsize(os.path.join(r, p))) for r, _, fs in os.walk(d) for p in fs)


# ---------------------------------------------------------------------- bad inputs
def _bad_inputs(tmp_path):
    pet = _pet()
    a = sitk.GetArrayFromImage(pet)
    a[1, 2, 3] = np.nan
    nan_pet = make_image(a, pet.GetSpacing())
    lab = make_image(np.zeros((6, 7, 8), np.uint8), (2.0, 2.0, 3.0), (0.0, 0.5, 0.0))
    out = {}
    d = _case_files(tmp_path / "mismatch", pet=pet, label=lab)
    out["mismatch"] = (dict(pet=d / "SUV.nii.gz", label=d / "SEG.nii.gz"), "SEG.nii.gz", "origin (0, 0.5, 0) vs (0, 0, 0)")
    d = _case_files(tmp_path / "nan", pet=nan_pet)
    out["nan"] = (dict(pet=d / "SUV.nii.gz", label=d / "SEG.nii.gz"), "SUV.nii.gz", "1 NaN")
    four = sitk.JoinSeries([pet, pet])
    d = tmp_path / "4d"
    d.mkdir()
    write(four, d / "SUV.nii.gz")
    out["4d"] = (dict(pet=d / "SUV.nii.gz"), "SUV.nii.gz", "4D image")
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "SUV.nii.gz").write_bytes(b"\x1f\x8b not really gzip" * 20)
    out["bad gzip"] = (dict(pet=d / "SUV.nii.gz"), "SUV.nii.gz", "truncated or corrupt (gzip")
    (d / "SUV.nii").write_bytes(b"not an image at all" * 20)
    out["unreadable"] = (dict(pet=d / "SUV.nii"), "SUV.nii", "not a readable PET image")
    d = tmp_path / "trunc"
    d.mkdir()
    write(pet, d / "full.nii.gz")
    (d / "SUV.nii.gz").write_bytes((d / "full.nii.gz").read_bytes()[:150])
    out["truncated"] = (dict(pet=d / "SUV.nii.gz"), "SUV.nii.gz", "truncated or corrupt")
    out["missing"] = (dict(pet=tmp_path / "nope.nii.gz"), "nope.nii.gz", "file not found")
    return out


def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path):
    cases = _bad_inputs(tmp_path)
    before = _snapshot(tmp_path)
    for name, (rec, fname, words) in cases.items():
        with pytest.raises(InputError) as ei:
            load_case(rec)
        msg = str(ei.value)
        assert "\n" not in msg, name
        assert fname in msg and words in msg, (name, msg)
        assert len(msg) < 400, name
    assert _snapshot(tmp_path) == before


def test_nan_detected_in_every_format(tmp_path):
    a = np.ones((4, 5, 6), np.float32)
    a[0, 0, 0] = np.inf
    a[1, 1, 1] = np.nan
    for ext in (".nii", ".nii.gz", ".nrrd", ".mha"):
        p = write(make_image(a), tmp_path / f"x{ext}")
        with pytest.raises(InputError, match=r"1 NaN and 1 infinite"):
            read_image(p, "PET")


def test_cli_data_bad_file_exits_2_one_line(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    rec = cases["nan"][0]
    before = _snapshot(tmp_path)
    rc = main(["data", str(rec["pet"].parent.parent / "nan"), "--check", "full"])
    out = capsys.readouterr()
    assert rc == 1  # the data command reports every problem, then exits non-zero
    assert "1 NaN" in out.out and "problem" in out.out
    rc = main(["data", str(tmp_path / "does-not-exist")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert _snapshot(tmp_path) == before


def test_label_within_tolerance_is_accepted_and_binarised(tmp_path):
    pet = _pet()
    a = np.zeros((6, 7, 8), np.float32)
    a[1:3, 1:3, 1:3] = 2.0  # multi-valued float label
    lab = make_image(a, (2.0, 2.0, 3.0), (1e-5, -1e-5, 0.0))
    d = _case_files(tmp_path / "c", pet=pet, label=lab)
    case = load_case(dict(pet=d / "SUV.nii.gz", label=d / "SEG.nii.gz", ct=d / "CTres.nii.gz"))
    arr = sitk.GetArrayViewFromImage(case.label)
    assert arr.dtype == np.uint8 and arr.max() == 1 and arr.sum() == 8
    assert case.label.GetOrigin() == case.pet.GetOrigin()


def test_ct_resampled_onto_pet_grid_linear_fill(tmp_path):
    pet = _pet(shape=(8, 8, 8), spacing=(4.0, 4.0, 4.0), origin=(-2.0, -2.0, -2.0))
    # CT: a linear ramp in world x on a finer, smaller, flipped grid
    ct_size, ct_sp = (40, 30, 10), (1.0, 1.0, 1.5)  # x 20..-19, y 25..-4, z 0..13.5 (LPS mm)
    d = np.diag([-1.0, -1.0, 1.0])
    origin = np.array([20.0, 25.0, 0.0])
    ii = np.arange(ct_size[0])
    x_world = origin[0] - ii * ct_sp[0]
    ramp = np.broadcast_to(x_world[None, None, :], ct_size[::-1]).astype(np.float32) * 10
    ct = make_image(ramp, ct_sp, origin, d.ravel())
    folder = _case_files(tmp_path / "c", pet=pet, ct=ct)
    case = load_case(dict(pet=folder / "SUV.nii.gz", ct=folder / "CTres.nii.gz"))
    on_pet = case.ct
    assert on_pet.GetSize() == pet.GetSize() and on_pet.GetOrigin() == pet.GetOrigin()
    arr = sitk.GetArrayFromImage(on_pet)  # (z, y, x)
    xw = -2.0 + 4.0 * np.arange(8)
    inside_x = (xw >= x_world.min()) & (xw <= x_world.max())
    assert 0 < inside_x.sum() < 8
    # PET voxel rows z=1 (2 mm), y=1 (2 mm) lie inside the CT; linear interpolation reproduces the ramp
    np.testing.assert_allclose(arr[1, 1, inside_x], 10 * xw[inside_x], atol=1e-3)
    assert (arr[1, 1, ~inside_x] == -1024).all()  # beyond the CT in x: fill -1024
    assert (arr[5:] == -1024).all() and (arr[0] == -1024).all()  # beyond the CT in z
    assert case.ct_native is not None and case.ct_native.GetSize() == ct_size


def test_ct_not_overlapping_pet_is_refused(tmp_path):
    pet = _pet()
    ct = make_image(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0), (500.0, 0.0, 0.0))
    d = _case_files(tmp_path / "c", pet=pet, ct=ct)
    with pytest.raises(InputError, match="does not overlap"):
        load_case(dict(pet=d / "SUV.nii.gz", ct=d / "CTres.nii.gz"))


# ---------------------------------------------------------------------- discovery
def test_discover_autopet_nested_with_problems(tmp_path):
    root = tmp_path / "autopet"
    _case_files(root / "PETCT_a" / "2001-01-01")
    _case_files(root / "PETCT_b" / "2002-02-02", names=("SUV", "CT", "SEG"))
    bad = root / "PETCT_c" / "2003"
    bad.mkdir(parents=True)
    write(_pet(), bad / "CTres.nrrd")
    rep = discover_cases(root)
    assert rep.layout == "autopet"
    ids = [c.case_id for c in rep.cases]
    assert ids == ["PETCT_a_2001-01-01", "PETCT_b_2002-02-02"]
    assert rep.cases[0].ct.name == "CTres.nii.gz" and rep.cases[1].ct.name == "CT.nii.gz"
    assert [p.case_id for p in rep.problems] == ["PETCT_c_2003"] and "no SUV" in rep.problems[0].reason


@pytest.mark.parametrize("order", [("PET", "CT"), ("CT", "PET")])
def test_discover_nnunet_channel_order(tmp_path, order):
    root = tmp_path / "Dataset001"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": order[0], "1": order[1]},
                                                   "labels": {"background": 0, "lesion": 1},
                                                   "file_ending": ".nii.gz"}))
    pet, lab = _pet(), make_image(np.zeros((6, 7, 8), np.uint8), (2.0, 2.0, 3.0))
    for case in ("c1", "c2", "c3"):
        write(pet, root / "imagesTr" / f"{case}_{order.index('PET'):04d}.nii.gz")
        write(pet, root / "imagesTr" / f"{case}_{order.index('CT'):04d}.nii.gz")
    write(lab, root / "labelsTr" / "c1.nii.gz")
    write(lab, root / "labelsTr" / "c2.nii.gz")
    write(lab, root / "labelsTr" / "orphan.nii.gz")
    rep = discover_cases(root, check_headers=True)
    assert rep.layout == "nnunet"
    assert [c.case_id for c in rep.cases] == ["c1", "c2"]
    assert rep.cases[0].pet.name == f"c1_{order.index('PET'):04d}.nii.gz"
    assert rep.cases[0].ct.name == f"c1_{order.index('CT'):04d}.nii.gz"
    reasons = {p.case_id: p.reason for p in rep.problems}
    assert "no label" in reasons["c3"] and "no images" in reasons["orphan"]


def test_discover_manifest_csv_and_json(tmp_path):
    d = _case_files(tmp_path / "c")
    (tmp_path / "m.csv").write_text("case_id,pet,ct,label\n"
                                    "a,c/SUV.nii.gz,c/CTres.nii.gz,c/SEG.nii.gz\n"
                                    "b,c/missing.nii.gz,,\n"
                                    ",c/SUV.nii.gz,,\n")
    rep = discover_cases(tmp_path / "m.csv")
    assert rep.layout == "manifest"
    assert [c.case_id for c in rep.cases] == ["a", "SUV"]
    assert rep.cases[0].label == d / "SEG.nii.gz" and rep.cases[1].ct is None
    assert rep.problems[0].case_id == "b" and "file not found" in rep.problems[0].reason
    (tmp_path / "m.json").write_text(json.dumps({"cases": [{"pet": "c/SUV.nii.gz", "label": "c/SEG.nii.gz", "case_id": "x"},
                                                           {"pet": "c/SUV.nii.gz", "case_id": "x"}]}))
    rep = discover_cases(tmp_path / "m.json")
    assert rep.cases == [] and len(rep.problems) == 2 and "2 times" in rep.problems[0].reason


def test_discover_header_check_reports_grid_mismatch(tmp_path, capsys):
    root = tmp_path / "ap"
    _case_files(root / "good")
    _case_files(root / "bad", label=make_image(np.zeros((6, 7, 9), np.uint8), (2.0, 2.0, 3.0)))
    rep = discover_cases(root, check_headers=True)
    assert [c.case_id for c in rep.cases] == ["good"]
    assert "size (9, 7, 6) vs (8, 7, 6)" in rep.problems[0].reason
    assert main(["data", str(root), "--json", str(tmp_path / "rep.json")]) == 1  # a problem: non-zero exit
    out = capsys.readouterr().out
    assert "autopet layout, 1 case(s)" in out and "bad:" in out
    assert json.loads((tmp_path / "rep.json").read_text())["problems"][0]["case_id"] == "bad"


def test_discover_unknown_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no autoPET"):
        discover_cases(tmp_path)


# ---------------------------------------------------------------------- masks
def test_read_mask_accepts_label_maps_and_refuses_probability_maps(tmp_path):
    a = np.zeros((6, 7, 8), np.uint8)
    a[1:3, 2:4, 2:5] = 1
    a[4, 5, 6] = 3  # a label map: every label > 0 is foreground
    p = tmp_path / "lab.nii.gz"
    write(make_image(a, (2.0, 2.0, 3.0)), p)
    img, fg = read_mask(p, "prediction")
    assert img.GetSize() == (8, 7, 6) and fg.dtype == bool and np.array_equal(fg, a > 0)
    # float 0/1 masks are masks
    q = tmp_path / "float.nii.gz"
    write(make_image(a.astype(np.float32), (2.0, 2.0, 3.0)), q)
    assert np.array_equal(read_mask(q)[1], a > 0)
    # a probability map is not a mask: one line naming the file, whatever reads it
    prob = a.astype(np.float32) * 0.7
    r = tmp_path / "prob.nii.gz"
    write(make_image(prob, (2.0, 2.0, 3.0)), r)
    with pytest.raises(InputError, match=r"prob\.nii\.gz: prediction has non-integer values: .*probability map"):
        read_mask(r, "prediction")
    d = _case_files(tmp_path / "case", label=make_image(prob, (2.0, 2.0, 3.0)))
    with pytest.raises(InputError, match=r"SEG\.nii\.gz: label has non-integer values"):
        load_case(dict(pet=d / "SUV.nii.gz", label=d / "SEG.nii.gz"))
    neg = a.astype(np.int16)
    neg[0, 0, 0] = -1
    n = tmp_path / "neg.nii.gz"
    write(make_image(neg, (2.0, 2.0, 3.0)), n)
    with pytest.raises(InputError, match="negative values"):
        read_mask(n)
