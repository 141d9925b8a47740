"""DICOM in (issue 16 §1): synthetic DICOM PET/CT from the phantom, read back as SUV, HU and masks.

The expected SUV factors are computed here from the QIBA formula
(``SUVbw = value * weight[g] / (dose * 2 ** (-decay time / half-life))``), independently of
:mod:`sam_l1dfl.data.dicom.suv`; the read-back SUV must equal the phantom's to within what the int16
storage with a per-slice ``RescaleSlope`` allows (half a slope per voxel).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sam_l1dfl.cli import main
from sam_l1dfl.data.dicom import synth
from sam_l1dfl.data.dicom.read import (PET_STORAGE, convert_dicom, read_pet_suv, read_rtstruct_mask, read_seg_mask,
                                       scan_dicom)
from sam_l1dfl.data.dicom.suv import HALF_LIFE_S
from sam_l1dfl.data.geometry import Grid
from sam_l1dfl.data.synthetic import generate_case

SLICES = (16, 56)  # 40 slices of seed 0 (SUV conversion tests)
# the study with contours: phantom 2.0's lesions are small (nodes ~0.4 mL), so seed 1 with 12
# lesions, whose 40 slices 12-52 hold 515 lesion voxels
STUDY = dict(seed=1, n_lesions=12, slices=(12, 52))
HALF_LIVES_MIN = {"F-18": 109.77, "Ga-68": 67.71}


@pytest.fixture(scope="module")
def phantoms():
    out = {}
    for kind in ("lps", "oblique"):
        c = generate_case(0, direction=kind)
        out[kind] = c.pet[:, :, SLICES[0]:SLICES[1]]
    return out


def _pet(folder: Path):
    scan = scan_dicom(folder)
    (study,) = scan.studies
    (series,) = study.of_class(PET_STORAGE)
    return read_pet_suv(series)


def _expected_factor(decay: str, nuclide: str, k: int, slice_seconds: float = 0.0,
                     reference: dt.datetime = synth.SCAN_TIME) -> float:
    """SUV per Bq/mL of slice k, from the formula (not from the package)."""
    half_life_s = HALF_LIVES_MIN[nuclide] * 60.0
    if decay == "ADMIN":
        seconds = 0.0
    elif decay == "START":
        seconds = (reference - synth.INJECTION_TIME).total_seconds()
    else:
        seconds = (synth.SCAN_TIME - synth.INJECTION_TIME).total_seconds() + k * slice_seconds
    return synth.WEIGHT_KG * 1000.0 / (synth.DOSE_BQ * 2.0 ** (-seconds / half_life_s))


def _check_suv(suv: sitk.Image, truth: sitk.Image, files, factors) -> None:
    """Read-back SUV equals the phantom's within half a stored step per slice."""
    got, want = sitk.GetArrayFromImage(suv).astype(np.float64), sitk.GetArrayFromImage(truth).astype(np.float64)
    assert got.shape == want.shape
    slopes = np.array([float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in files])
    for k in range(got.shape[0]):
        bound = 0.5 * slopes[k] * factors[k] * (1 + 1e-6) + 1e-5 * float(np.abs(want[k]).max())
        assert np.abs(got[k] - want[k]).max() <= bound, k
    assert np.abs(got - want).max() <= 2e-5 * want.max()


def _geometry_equal(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)


def test_half_lives():
    assert HALF_LIFE_S["F-18"] == pytest.approx(6586.2)
    assert HALF_LIFE_S["Ga-68"] == pytest.approx(4062.6)


@pytest.mark.parametrize("nuclide", ["F-18", "Ga-68"])
@pytest.mark.parametrize("decay", ["START", "ADMIN", "NONE"])
def test_suv_equals_phantom(phantoms, tmp_path, nuclide, decay):
    truth = phantoms["lps"]
    slice_seconds = 30.0 if decay == "NONE" else 0.0  # NONE: every slice its own decay
    synth.write_pet_series(truth, tmp_path / "PET", nuclide=nuclide, decay_correction=decay,
                           slice_seconds=slice_seconds)
    suv, conversion, files = _pet(tmp_path)
    expected = np.array([_expected_factor(decay, nuclide, k, slice_seconds) for k in range(truth.GetSize()[2])])
    np.testing.assert_allclose(conversion.factors, expected, rtol=1e-9)
    _check_suv(suv, truth, files, expected)
    _geometry_equal(suv, truth)


def test_reverse_oblique_series(phantoms, tmp_path):
    """Files numbered from the last slice, oblique direction, and per-slice decay (NONE): the
    factors must follow SimpleITK's slice order, and the geometry is the phantom's."""
    truth = phantoms["oblique"]
    files = synth.write_pet_series(truth, tmp_path / "PET", decay_correction="NONE", slice_seconds=45.0,
                                   reverse=True)
    assert pydicom.dcmread(files[0]).InstanceNumber == len(files)  # really stored backwards
    suv, conversion, read_files = _pet(tmp_path)
    assert read_files == files
    expected = np.array([_expected_factor("NONE", "F-18", k, 45.0) for k in range(len(files))])
    np.testing.assert_allclose(conversion.factors, expected, rtol=1e-9)
    _check_suv(suv, truth, files, expected)
    _geometry_equal(suv, truth)


def test_post_processed_series_uses_earliest_acquisition(phantoms, tmp_path):
    """QIBA: a SeriesTime after the acquisition is not the reference; the earliest acquisition is."""
    truth = phantoms["lps"]
    synth.write_pet_series(truth, tmp_path / "PET", series_time=synth.SCAN_TIME + dt.timedelta(hours=2))
    suv, conversion, files = _pet(tmp_path)
    expected = np.full(truth.GetSize()[2], _expected_factor("START", "F-18", 0))
    np.testing.assert_allclose(conversion.factors, expected, rtol=1e-9)
    _check_suv(suv, truth, files, expected)


@pytest.mark.parametrize("date_only", [False, True])
@pytest.mark.parametrize("injection", [synth.INJECTION_TIME, dt.datetime(2026, 1, 4, 23, 50)])
def test_injection_time_without_date(phantoms, tmp_path, injection, date_only):
    """Only RadiopharmaceuticalStartTime: the date is the SeriesDate, or the day before across midnight.
    A RadiopharmaceuticalStartDateTime that holds only the date (no clock time: it would put the
    injection at midnight, hours too early) is treated the same way."""
    truth = phantoms["lps"]
    scan = injection + dt.timedelta(minutes=50)
    files = synth.write_pet_series(truth, tmp_path / "PET", injection_time=injection, scan_time=scan)
    if date_only:
        _edit(files, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                        "RadiopharmaceuticalStartDateTime", injection.strftime("%Y%m%d")))
    else:
        _edit(files, _drop("RadiopharmaceuticalStartDateTime", item=True))
    suv, conversion, _ = _pet(tmp_path)
    factor = synth.WEIGHT_KG * 1000.0 / (synth.DOSE_BQ * 2.0 ** (-50.0 / 109.77))
    np.testing.assert_allclose(conversion.factors, factor, rtol=1e-9)
    _check_suv(suv, truth, files, np.full(len(files), factor))


@pytest.mark.parametrize("variant", ["philips_suv", "philips_activity", "gml"])
def test_cnts_and_gml(phantoms, tmp_path, variant):
    truth = phantoms["lps"]
    units = "GML" if variant == "gml" else "CNTS"
    files = synth.write_pet_series(truth, tmp_path / "PET", units=units, nuclide="Ga-68")
    per_value = 1.0 if units == "GML" else _expected_factor("START", "Ga-68", 0) * synth.CNTS_BQML_PER_COUNT
    if variant == "philips_activity":  # no SUV factor: counts -> Bq/mL (7053,1009), then the BQML rule
        for f in files:
            ds = pydicom.dcmread(f)
            del ds.private_block(0x7053, "Philips PET Private Group")[0x00]
            ds.save_as(f)
    suv, conversion, _ = _pet(tmp_path)
    np.testing.assert_allclose(conversion.factors, per_value, rtol=1e-8)
    _check_suv(suv, truth, files, np.full(len(files), per_value))


# ---------------------------------------------------------------------- studies and contours
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An oblique study stored in reverse slice order, with SEG and RTSTRUCT."""
    out = tmp_path_factory.mktemp("dicom") / "study"
    return synth.write_synthetic_study(out, oblique=True, reverse=True, **STUDY)


def test_seg_and_rtstruct_match_phantom(study):
    scan = scan_dicom(study["pet"][0].parents[1])
    (st,) = scan.studies
    (pet_series,) = st.of_class(PET_STORAGE)
    suv, _, _ = read_pet_suv(pet_series)
    truth = sitk.GetArrayFromImage(study["seg_image"]).astype(bool)
    assert truth.sum() > 300
    seg, labels = read_seg_mask(study["seg"], suv, pet_series.frame_of_reference)
    assert labels == ["lesion"]
    _geometry_equal(seg, study["suv"])
    assert np.array_equal(sitk.GetArrayFromImage(seg).astype(bool), truth)
    rt, names = read_rtstruct_mask(study["rtstruct"], pet_series, suv)
    assert names == ["lesion"]
    got = sitk.GetArrayFromImage(rt).astype(bool)
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.9, dice


def test_dicom_command_end_to_end(study, tmp_path, capsys):
    root = study["pet"][0].parents[1]
    cases = tmp_path / "cases"
    assert main(["dicom", str(root), "--out", str(cases), "--verbose"]) == 0
    (case,) = [d for d in cases.iterdir() if d.is_dir()]
    suv = sitk.ReadImage(str(case / "SUV.nii.gz"))
    _geometry_equal(suv, study["suv"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), sitk.GetArrayFromImage(study["suv"]),
                               atol=2e-5 * float(sitk.GetArrayFromImage(study["suv"]).max()))
    ct = sitk.ReadImage(str(case / "CT.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(study["ct_image"]))  # HU exact
    seg = sitk.ReadImage(str(case / "SEG.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(study["seg_image"]))
    out = capsys.readouterr().out
    assert "SEG lesion" in out and "wrote 1 case(s)" in out and "SUV factor per slice" in out  # --verbose
    assert main(["data", str(cases)]) == 0
    assert "1 case(s) (1 with CT, 1 with label), 0 problem(s)" in capsys.readouterr().out


def test_rtstruct_only_study(tmp_path, capsys):
    """Without a SEG, the RTSTRUCT (rasterised by rt-utils) gives the mask."""
    study = synth.write_synthetic_study(tmp_path / "study", contours=("rtstruct",), **STUDY)
    cases = tmp_path / "cases"
    assert main(["dicom", str(tmp_path / "study"), "--out", str(cases)]) == 0
    assert "RTSTRUCT lesion" in capsys.readouterr().out
    (case,) = [d for d in cases.iterdir() if d.is_dir()]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "SEG.nii.gz"))).astype(bool)
    truth = sitk.GetArrayFromImage(study["seg_image"]).astype(bool)
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.9


def test_synth_dicom_command(tmp_path, capsys):
    study = tmp_path / "study"
    assert main(["synth", "--dicom", str(study), "--seed", "0", "--nuclide", "Ga-68"]) == 0
    assert "3 lesion(s)" in capsys.readouterr().out
    assert {p.name for p in study.iterdir()} == {"PET", "CT", "SEG.dcm", "RTSTRUCT.dcm"}
    ds = pydicom.dcmread(next((study / "PET").iterdir()), stop_before_pixels=True)
    assert ds.Units == "BQML" and float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife) == \
        pytest.approx(67.71 * 60)
    assert main(["synth", "--dicom", str(study)]) == 2  # never into a non-empty folder
    assert capsys.readouterr().err.startswith("error: ")


def test_several_studies_and_series(phantoms, tmp_path, capsys):
    """Two patients -> two cases; a non-attenuation-corrected PET beside the AC one is left out;
    two AC PET series of one study -> one case each, named by series number."""
    truth = phantoms["lps"][:, :, :8]
    root = tmp_path / "in"
    synth.write_pet_series(truth, root / "a" / "AC", patient_id="A", series_number=3)
    nac = synth.write_pet_series(truth, root / "a" / "NAC", patient_id="A", series_number=4)
    _edit(nac, _set("CorrectedImage", ["DECY"]))
    synth.write_pet_series(truth, root / "b" / "PET1", patient_id="B", series_number=5)
    synth.write_pet_series(truth, root / "b" / "PET2", patient_id="B", series_number=6, nuclide="Ga-68")
    assert main(["dicom", str(root), "--out", str(tmp_path / "cases")]) == 0
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == \
        ["A_20260105", "B_20260105_s5", "B_20260105_s6"]
    out = capsys.readouterr().out
    assert "wrote 3 case(s)" in out and "note: left out the non-attenuation-corrected series 4" in out


# ---------------------------------------------------------------------- bad input
def _edit(files, fn):
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def _drop(*keywords, item=False):
    def fn(ds):
        target = ds.RadiopharmaceuticalInformationSequence[0] if item else ds
        for kw in keywords:
            if kw in target:
                delattr(target, kw)
    return fn


def _set(keyword, value):
    return lambda ds: setattr(ds, keyword, value)


def _duplicate_slice(folder: Path, files):
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "extra.dcm", enforce_file_format=True)


def _enhanced(ds):
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.130"


def _copy_into(folder: Path, file: Path):
    folder.mkdir()
    shutil.copy(file, folder / file.name)


def _later_injection(files):
    later = (synth.SCAN_TIME + dt.timedelta(minutes=5)).strftime("%Y%m%d%H%M%S")
    _edit(files, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                    "RadiopharmaceuticalStartDateTime", later))


BAD = {
    "no dose": (lambda d, f: _edit(f, _drop("RadionuclideTotalDose", item=True)), "RadionuclideTotalDose"),
    "no weight": (lambda d, f: _edit(f, _drop("PatientWeight")), "PatientWeight"),
    "no injection time": (lambda d, f: _edit(f, _drop("RadiopharmaceuticalStartTime",
                                                      "RadiopharmaceuticalStartDateTime", item=True)),
                          "RadiopharmaceuticalStartTime"),
    "no series time": (lambda d, f: _edit(f, _drop("SeriesTime")), "SeriesTime"),
    "zero half-life": (lambda d, f: _edit(f, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                                                "RadionuclideHalfLife", "0")), "RadionuclideHalfLife"),
    "unknown units": (lambda d, f: _edit(f, _set("Units", "PROPCNTS")), "Units PROPCNTS"),
    "unknown decay": (lambda d, f: _edit(f, _set("DecayCorrection", "XYZ")), "DecayCorrection"),
    "cnts without philips": (lambda d, f: _edit(f, _set("Units", "CNTS")), "Philips"),
    "not attenuation-corrected": (lambda d, f: _edit(f, _set("CorrectedImage", ["DECY"])), "ATTN"),
    "weight differs": (lambda d, f: _edit(f[2:3], _set("PatientWeight", "60")), "PatientWeight"),
    "injection after scan": (lambda d, f: _later_injection(f), "h apart"),
    "mixed series": (lambda d, f: _duplicate_slice(d, f), "mixed series"),
    "mixed sizes": (lambda d, f: _edit(f[4:5], lambda ds: (setattr(ds, "Rows", 50),
                                                           setattr(ds, "PixelData", ds.PixelData[:len(ds.PixelData) // 2]))),
                    "mixed series"),
    "non-uniform spacing": (lambda d, f: f[4].unlink(), "non-uniform slice spacing"),
    "missing end slice": (lambda d, f: f[-1].unlink(), "NumberOfSlices"),
    "truncated slice": (lambda d, f: f[5].write_bytes(f[5].read_bytes()[:1500]), "PT0006.dcm"),
    "truncated pixels": (lambda d, f: f[5].write_bytes(f[5].read_bytes()[:-3000]), "PT0006.dcm"),
    "no PET": (lambda d, f: [p.unlink() for p in f], "no PET image series"),
    # pydicom reads a file cut between two elements without a complaint: it must not be skipped
    "truncated header": (lambda d, f: f[5].write_bytes(f[5].read_bytes()[:400]), "PT0006.dcm: incomplete PET"),
    "empty slice file": (lambda d, f: f[5].write_bytes(b""), "PT0006.dcm: empty file"),
    "enhanced PET": (lambda d, f: _edit(f, _enhanced), "Enhanced PET (multi-frame)"),
    "copied image": (lambda d, f: _copy_into(d / "copy", f[3]), "the same image (SOPInstanceUID"),
    "no PET, other files": (lambda d, f: ([p.unlink() for p in f], (d / "notes.txt").write_text("x")),
                            "skipped 1 file(s) that are not DICOM"),
}


@pytest.fixture(scope="module")
def small_pet(phantoms, tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "PET"
    synth.write_pet_series(phantoms["lps"][:, :, 20:30], folder)
    return folder


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_one_line(small_pet, tmp_path, capsys, name):
    folder = tmp_path / "in" / "PET"
    shutil.copytree(small_pet, folder)
    files = sorted(folder.glob("*.dcm"))
    if name.startswith("no PET"):  # a study with a CT only
        synth.write_ct_series(generate_case(0).ct[:, :, 20:24], tmp_path / "in" / "CT", study_uid="1.2.3",
                              frame_of_reference_uid="1.2.4")
    spoil, words = BAD[name]
    spoil(folder, files)
    out = tmp_path / "cases"
    capsys.readouterr()
    rc = main(["dicom", str(tmp_path / "in"), "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], lines[0]
    assert not out.exists()


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dicomdir_and_other_files_are_skipped(small_pet, tmp_path, capsys):
    """A DICOMDIR (DICOM, but of no series), a text file and a macOS ``._*.dcm`` companion are
    skipped with a note; the input folder is left byte for byte as it was."""
    from pydicom.fileset import FileSet

    root = tmp_path / "in"
    shutil.copytree(small_pet, root / "PET")
    fs = FileSet()
    fs.add(pydicom.dcmread(next((root / "PET").iterdir())))
    fs.write(tmp_path / "cd")
    shutil.copy(tmp_path / "cd" / "DICOMDIR", root / "DICOMDIR")
    (root / "README.txt").write_text("exported from the PACS")
    (root / "PET" / "._PT0001.dcm").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS AppleDouble
    before = _hashes(root)
    assert main(["dicom", str(root), "--out", str(tmp_path / "cases")]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 file(s)" in out and "wrote 1 case(s)" in out
    assert _hashes(root) == before


def test_dose_in_mbq_warns(small_pet, tmp_path):
    """A dose recorded in MBq (250 for 250 MBq) is a valid number, but the SUV comes out a million
    times too high: the conversion warns in one line, pointing to the header tags."""
    root = tmp_path / "in"
    shutil.copytree(small_pet, root / "PET")
    _edit(sorted((root / "PET").iterdir()), lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                                              "RadionuclideTotalDose", "250"))
    with pytest.warns(UserWarning, match=r"PET: does not look like SUV .*RadionuclideTotalDose \(must be in Bq"):
        convert_dicom(root, tmp_path / "cases")


def test_convert_does_not_warn_on_a_good_series(small_pet, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(small_pet, root / "PET")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_dicom(root, tmp_path / "cases")
    assert not [w for w in caught if "look like SUV" in str(w.message)]


def test_convert_refuses_existing_case(study, tmp_path):
    root = study["pet"][0].parents[1]
    convert_dicom(root, tmp_path / "cases")
    with pytest.raises(ValueError, match="exists"):
        convert_dicom(root, tmp_path / "cases")


# ---------------------------------------------------------------------- old exports, other grids
def _without_preamble(src: Path, dst: Path) -> None:
    """A copy of a study as old PACS exports write it: the PET slices as bare implicit-VR data sets
    (no preamble, no file meta) named ``IM0001``..., the other files with their file meta but
    without the 128-byte preamble and ``DICM``."""
    shutil.copytree(src, dst)
    for k, f in enumerate(sorted(dst.rglob("*.dcm"))):
        if f.parent.name == "PET":
            ds = pydicom.dcmread(f)
            ds.preamble = None
            del ds.file_meta
            ds.save_as(f.with_name(f"IM{k:04d}"), implicit_vr=True, little_endian=True, enforce_file_format=False)
            f.unlink()
        else:
            f.write_bytes(f.read_bytes()[132:])


def _same_case(got: Path, want: Path) -> None:
    for name in ("SUV.nii.gz", "CT.nii.gz", "SEG.nii.gz"):
        a, b = sitk.ReadImage(str(got / name)), sitk.ReadImage(str(want / name))
        _geometry_equal(a, b)
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), name


def test_files_without_preamble_are_read_with_one_warning(study, tmp_path):
    """Files without the preamble (a synthetic study rewritten so) give the same case as the
    original, with one warning line; a file of random bytes beside them is still skipped, and the
    input is left as it was."""
    root = study["pet"][0].parents[1]
    bare = tmp_path / "bare"
    _without_preamble(root, bare)
    assert not any(f.read_bytes()[128:132] == b"DICM" for f in bare.rglob("*") if f.is_file())
    (bare / "IM9999").write_bytes(np.random.default_rng(0).bytes(4096))
    before = _hashes(bare)
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl", "dicom", str(bare), "--out", str(tmp_path / "cases")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n = len(study["pet"]) + len(study["ct"]) + 2  # and the SEG and RTSTRUCT
    assert r.stderr.splitlines() == [f"warning: {bare}: {n} DICOM file(s) without the 128-byte preamble and 'DICM' "
                                     f"prefix (an old PACS export?), read as DICOM; the first: {bare / 'CT' / 'CT0001.dcm'}"]
    assert "skipped 1 file(s)" in r.stdout and "SEG lesion" in r.stdout
    assert _hashes(bare) == before
    convert_dicom(root, tmp_path / "want")
    (case,), (want,) = (list(p.iterdir()) for p in (tmp_path / "cases", tmp_path / "want"))
    _same_case(case, want)
    # without the SEG: the RTSTRUCT, through rt-utils, which reads only files with the preamble
    for folder in (bare, root.parent / "rt_only"):
        if folder != bare:
            shutil.copytree(root, folder)
        (folder / "SEG.dcm").unlink()
    with pytest.warns(UserWarning, match="without the 128-byte preamble"):
        convert_dicom(bare, tmp_path / "rt_bare")
    convert_dicom(root.parent / "rt_only", tmp_path / "rt_want")
    (case,), (want,) = (list(p.iterdir()) for p in (tmp_path / "rt_bare", tmp_path / "rt_want"))
    assert json.loads((case / "dicom.json").read_text())["contours"]["kind"] == "RTSTRUCT"
    _same_case(case, want)


def test_contours_on_the_ct_grid_warn_with_both_grids(tmp_path):
    """A SEG or RTSTRUCT drawn on a CT of its own (finer, shifted) grid is placed on the PET grid,
    with one warning line naming both grids; contours on the PET's grid say nothing."""
    case = generate_case(0)
    suv, ct, seg = (img[:, :, SLICES[0]:SLICES[1]] for img in (case.pet, case.ct, case.seg))
    pet_grid = Grid.from_image(suv)
    sp = pet_grid.spacing
    fine = Grid((2 * pet_grid.size[0], 2 * pet_grid.size[1], pet_grid.size[2]), (sp[0] / 2, sp[1] / 2, sp[2]),
                np.asarray(pet_grid.origin) - [sp[0] / 4, sp[1] / 4, 0]).reference_image()
    ct_fine = sitk.Resample(ct, fine, sitk.Transform(), sitk.sitkLinear, -1000.0)
    seg_fine = sitk.Resample(seg, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    root = tmp_path / "in"
    pet_files = synth.write_pet_series(suv, root / "PET")
    first = pydicom.dcmread(pet_files[0], stop_before_pixels=True)
    ct_files = synth.write_ct_series(ct_fine, root / "CT", study_uid=first.StudyInstanceUID,
                                     frame_of_reference_uid=first.FrameOfReferenceUID, patient_id=first.PatientID)
    synth.write_seg(seg_fine, ct_files, root / "SEG.dcm")
    synth.write_rtstruct(seg_fine, root / "CT", root / "RTSTRUCT.dcm")
    truth = sitk.GetArrayFromImage(seg).astype(bool)
    # the SEG's own grid holds its non-empty frames only, stored from the last slice (highdicom)
    grids = (r"\((SEG 200x200x\d+|RTSTRUCT 200x200x40) of 2.035x2.035x3 mm at \(-195.4, -233, -[\d.]+\)"
             r"(, direction \(1, 0, 0, 0, 1, 0, 0, 0, -1\))?; "
             r"PET 100x100x40 of 4.07x4.07x3 mm at \(-194.4, -232, -756.6\)\): placed on the PET grid")
    for kind, out in (("SEG", "cases_seg"), ("RTSTRUCT", "cases_rt")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert_dicom(root, tmp_path / out)
        said = [str(w.message) for w in caught if "drawn on another grid" in str(w.message)]
        assert len(said) == 1 and said[0].startswith(f"{root / (kind + '.dcm')}: the {kind} is drawn on another grid "
                                                     "than the PET ("), said
        assert re.search(grids, said[0]), said[0]
        (got,) = (tmp_path / out).iterdir()
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(got / "SEG.nii.gz"))).astype(bool)
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8
        (root / "SEG.dcm").unlink(missing_ok=True)  # then the RTSTRUCT


def test_contours_on_the_pet_grid_say_nothing(study, tmp_path):
    """The synthetic SEG leaves out its empty frames (a sub-grid of the PET's, stored from the last
    slice) and the RTSTRUCT is drawn on the PET: neither is "another grid"."""
    root = study["pet"][0].parents[1]
    for out in ("seg", "rt"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (meta,), _ = convert_dicom(root if out == "seg" else root.parent / "no_seg", tmp_path / out)
        assert meta["contours"]["kind"] == {"seg": "SEG", "rt": "RTSTRUCT"}[out]
        assert not [w for w in caught if "drawn on another grid" in str(w.message)]
        if out == "seg":
            shutil.copytree(root, root.parent / "no_seg")
            (root.parent / "no_seg" / "SEG.dcm").unlink()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_synthetic_study_is_valid_dicom(study):
    """The synthetic PET, CT, SEG and RTSTRUCT pass dicom3tools' IOD checker without an error."""
    import subprocess

    for f in (study["pet"][0], study["ct"][0], study["seg"], study["rtstruct"]):
        report = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (f, errors)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("units,decay", [("BQML", "NONE"), ("BQML", "ADMIN"), ("CNTS", "START"), ("GML", "START")])
def test_synthetic_pet_variants_are_valid_dicom(phantoms, tmp_path, units, decay):
    """Every Units / DecayCorrection variant of the synthetic PET passes dciodvfy (DecayFactor is
    Type 1C: absent when DecayCorrection is NONE)."""
    import subprocess

    (first, *_) = synth.write_pet_series(phantoms["lps"][:, :, :2], tmp_path / "PET", units=units,
                                         decay_correction=decay, slice_seconds=30.0)
    report = subprocess.run(["dciodvfy", str(first)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors
