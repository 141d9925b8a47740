"""DICOM SEG out (``sam_l1dfl.export.dicom_seg``, ``sam-l1dfl infer --dicom-seg``): read back with
highdicom and compared voxel for voxel with the mask, references to the source PET series,
SNOMED CT codes, and the DICOM SEG IOD checked by ``dciodvfy`` (dicom3tools) when installed.

The PET series are synthetic (:func:`sam_l1dfl.data.dicom.synth.write_synthetic_study`, 30
slices of the phantom holding its 4 lesions): axial, stored in reverse slice order, and oblique.
"""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from sam_l1dfl.cli import main
from sam_l1dfl.data.dicom.synth import write_synthetic_study
from sam_l1dfl.errors import InputError
from sam_l1dfl.export.dicom_seg import write_dicom_seg

SEED = 36  # phantom 2.0: all four lesions of this seed lie in slices 12-26
SLICES = (5, 35)


def _study(root, **kw) -> dict:
    st = write_synthetic_study(root, seed=SEED, contours=(), n_lesions=4, slices=SLICES, **kw)
    labels = sitk.GetImageFromArray(st["case"].instances[SLICES[0]:SLICES[1]].astype(np.uint16))
    labels.CopyInformation(st["suv"])
    st["labels"] = labels
    st["sources"] = [pydicom.dcmread(f) for f in st["pet"]]
    return st


@pytest.fixture(scope="module", params=["axial", "reverse", "oblique"])
def study(request, tmp_path_factory):
    kw = {"axial": {}, "reverse": {"reverse": True}, "oblique": {"oblique": True}}[request.param]
    return _study(tmp_path_factory.mktemp(request.param) / "study", **kw)


def _read_back(path, sources) -> tuple[hd.seg.Segmentation, np.ndarray]:
    """The SEG and its segments as a label map in the order of the source slices."""
    seg = hd.seg.segread(path)
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
                                           combine_segments=True, skip_overlap_checks=True)
    return seg, px


def _check_header(seg, sources, labels):
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} == {d.SOPInstanceUID for d in sources}
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == labels
    for d in seg.SegmentSequence:
        cat, typ = d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("49755003", "SCT")  # morphologically abnormal structure
        assert (typ.CodeValue, typ.CodingSchemeDesignator) == ("108369006", "SCT")  # neoplasm
        # the codes are those of the DICOM context groups (PS3.16): CID 7150 categories, CID 7151 types
        assert codes.cid7150.MorphologicallyAbnormalStructure.value == cat.CodeValue
        assert codes.cid7151.Neoplasm.value == typ.CodeValue
        assert d.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert d.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "sam-l1dfl"


def test_source_series_without_preamble(study, tmp_path):
    """A source series stored without the preamble and 'DICM' (an old PACS export) is a source like
    any other: the SEG references its instances and holds the label map voxel for voxel."""
    folder = tmp_path / "PET"
    folder.mkdir()
    for f in study["pet"]:
        (folder / f.stem).write_bytes(f.read_bytes()[132:])
    out = tmp_path / "pred_seg.dcm"
    write_dicom_seg(study["labels"], folder, out, per_lesion=True)
    seg, px = _read_back(out, study["sources"])
    assert np.array_equal(px, sitk.GetArrayFromImage(study["labels"]))
    _check_header(seg, study["sources"], ["lesion 1", "lesion 2", "lesion 3", "lesion 4"])


def test_per_lesion_seg_matches_the_label_map(study, tmp_path):
    out = tmp_path / "pred_seg.dcm"
    s = write_dicom_seg(study["labels"], study["pet"][0].parent, out, per_lesion=True,
                        segment_labels={1: "lesion A"})
    seg, px = _read_back(out, study["sources"])
    assert np.array_equal(px, sitk.GetArrayFromImage(study["labels"]))  # voxel for voxel, slice k = source k
    assert s.segments == ["lesion A", "lesion 2", "lesion 3", "lesion 4"] and s.frames == SLICES[1] - SLICES[0]
    _check_header(seg, study["sources"], s.segments)


def test_single_segment_seg_matches_the_mask(study, tmp_path):
    out = tmp_path / "pred_seg.dcm"
    write_dicom_seg(study["seg_image"], study["pet"][0].parent, out)
    seg, px = _read_back(out, study["sources"])
    assert np.array_equal(px, sitk.GetArrayFromImage(study["seg_image"]))
    _check_header(seg, study["sources"], ["lesion"])


@pytest.fixture(scope="module")
def axial(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("axial") / "study")


def test_label_values_need_not_be_consecutive(axial, tmp_path):
    arr = sitk.GetArrayFromImage(axial["labels"]).astype(np.uint16)
    arr[arr == 2] = 0
    arr[arr == 4] = 9
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(axial["labels"])
    s = write_dicom_seg(img, axial["pet"][0].parent, tmp_path / "s.dcm", per_lesion=True)
    _, px = _read_back(tmp_path / "s.dcm", axial["sources"])
    assert s.segments == ["lesion 1", "lesion 3", "lesion 9"]
    assert np.array_equal(px, np.array([0, 1, 0, 2, 0, 0, 0, 0, 0, 3])[arr])


def test_empty_prediction_gives_an_empty_segment(axial, tmp_path):
    empty = sitk.Image(axial["labels"].GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(axial["labels"])
    s = write_dicom_seg(empty, axial["pet"][0].parent, tmp_path / "e.dcm", per_lesion=True)
    seg, px = _read_back(tmp_path / "e.dcm", axial["sources"])
    assert s.segments == ["lesion"] and seg.NumberOfFrames == len(axial["sources"]) and not px.any()


def test_a_mask_off_the_series_grid_is_refused_in_one_line(axial, tmp_path):
    moved = sitk.Image(axial["labels"])
    moved.SetOrigin(tuple(o + 2.0 for o in moved.GetOrigin()))
    with pytest.raises(InputError, match=r"pred_lesions.nii.gz: is not on the grid of the DICOM series .*origin") as e:
        write_dicom_seg(moved, axial["pet"][0].parent, tmp_path / "x.dcm", mask_name="pred_lesions.nii.gz")
    assert "\n" not in str(e.value) and not (tmp_path / "x.dcm").exists()


def test_a_folder_with_two_series_is_refused(axial, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for f in axial["pet"][:3] + axial["ct"][:3]:
        shutil.copy(f, both / f.name)
    with pytest.raises(InputError, match="holds 2 DICOM series; give the folder of exactly one series"):
        write_dicom_seg(axial["labels"], both, tmp_path / "x.dcm")


def test_a_study_folder_or_a_ct_series_is_refused(axial, tmp_path):
    """--dicom-ref must be the PET series: the study folder (where GDCM finds only the SEG) and a
    CT series on the same grid are refused in one line, and nothing is written."""
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    write_dicom_seg(axial["labels"], axial["pet"][0].parent, study_dir / "SEG.dcm")
    with pytest.raises(InputError, match=r"holds a SEG series \(Segmentation Storage\), not a PET image series"):
        write_dicom_seg(axial["labels"], study_dir, tmp_path / "x.dcm")
    with pytest.raises(InputError, match=r"holds a CT series \(CT Image Storage\), not a PET image series"):
        write_dicom_seg(axial["labels"], axial["ct"][0].parent, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("per_lesion", [True, False])
def test_dciodvfy_finds_no_error_in_the_seg_iod(study, tmp_path, per_lesion):
    """dicom3tools' IOD checker against the DICOM Segmentation IOD (PS3.3 A.51): no Error lines."""
    out = tmp_path / "s.dcm"
    write_dicom_seg(study["labels"] if per_lesion else study["seg_image"], study["pet"][0].parent, out,
                    per_lesion=per_lesion, algorithm_parameters={"checkpoint": "runs/x/best"})
    r = subprocess.run([DCIODVFY, str(out)], capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    assert lines and lines[0].strip() == "Segmentation"  # the IOD it was checked against
    for w in (x for x in lines if x.startswith("Warning")):
        print(w)
    assert not [x for x in lines if x.startswith("Error")], "\n".join(lines)


def test_dciodvfy_would_report_a_broken_seg(axial, tmp_path):
    """The check above can fail: a SEG without a required attribute gives Error lines."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    out = tmp_path / "s.dcm"
    write_dicom_seg(axial["seg_image"], axial["pet"][0].parent, out)
    ds = pydicom.dcmread(out)
    del ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence
    ds.save_as(out)
    r = subprocess.run([DCIODVFY, str(out)], capture_output=True, text=True, timeout=60)
    assert any(x.startswith("Error") and "SegmentedPropertyTypeCodeSequence" in x
               for x in (r.stdout + r.stderr).splitlines())


def test_infer_writes_the_seg_of_the_reference_series(axial, tmp_path, capsys):
    """``sam-l1dfl infer --pet ... --dicom-seg ... --dicom-ref PET/`` (threshold baseline: no model)."""
    pet, ref = tmp_path / "SUV.nii.gz", tmp_path / "SEG.nii.gz"
    sitk.WriteImage(axial["suv"], str(pet))
    sitk.WriteImage(axial["seg_image"], str(ref))
    series = axial["pet"][0].parent
    base = ["infer", "--method", "threshold", "--pet", str(pet), "--prompts-from-mask", str(ref),
            "--out", str(tmp_path / "pred.nii.gz"), "--quiet"]
    assert main(base + ["--dicom-seg", str(tmp_path / "pred_seg.dcm"), "--dicom-ref", str(series)]) == 0
    assert ": 4 segment(s))" in capsys.readouterr().out
    seg, px = _read_back(tmp_path / "pred_seg.dcm", axial["sources"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred_lesions.nii.gz")))
    assert labels.any() and np.array_equal(px > 0, labels > 0)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == axial["sources"][0].SeriesInstanceUID
    assert len(seg.SegmentSequence) == len(np.unique(labels)) - 1

    # one segment, and the refusals: in one line, before any output is written
    assert main(base[:-3] + ["--out", str(tmp_path / "p1.nii.gz"), "--dicom-seg", str(tmp_path / "one.dcm"),
                             "--dicom-ref", str(series), "--dicom-seg-single", "--quiet"]) == 0
    assert [d.SegmentLabel for d in hd.seg.segread(tmp_path / "one.dcm").SegmentSequence] == ["lesion"]
    capsys.readouterr()
    assert main(base + ["--dicom-seg", str(tmp_path / "x.dcm")]) == 2
    assert "--dicom-seg and --dicom-ref go together" in capsys.readouterr().err
    assert main(base + ["--dicom-seg", str(series / axial["pet"][0].name), "--dicom-ref", str(series)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    for name, img in (("moved.nii.gz", axial["suv"]), ("moved_seg.nii.gz", axial["seg_image"])):
        moved = sitk.Image(img)
        moved.SetSpacing((4.0, 4.0, 3.5))
        sitk.WriteImage(moved, str(tmp_path / name))
    argv = ["infer", "--method", "threshold", "--pet", str(tmp_path / "moved.nii.gz"), "--prompts-from-mask",
            str(tmp_path / "moved_seg.nii.gz"), "--out", str(tmp_path / "m.nii.gz"), "--dicom-seg", str(tmp_path / "m.dcm"),
            "--dicom-ref", str(series)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not on the grid of the DICOM series" in err and "spacing" in err
    assert not (tmp_path / "m.nii.gz").exists() and not (tmp_path / "m.dcm").exists()
    assert main(["infer", "--method", "threshold", "--data", str(tmp_path), "--prompts-from-mask",
                 "--out-dir", str(tmp_path / "o"), "--dicom-seg", "x.dcm", "--dicom-ref", str(series)]) == 2
    assert "belong to --pet mode" in capsys.readouterr().err
