"""The "does not look like SUV" warning: a PET left in Bq/mL (SUV x 5000) warns once, in one line,
in ``data --check full``, ``infer`` and ``evaluate``; the synthetic phantom and realistic SUV
images never do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl.cli import main
from sam_l1dfl.data.dicom.suv_sanity import MAX_BODY_MEDIAN, suv_warning
from sam_l1dfl.data.synthetic import generate_case, write_case

BQML_PER_SUV = 5000.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """``ok/`` holds a phantom case in SUV, ``bq/`` the same case in Bq/mL (one PET x 5000)."""
    root = tmp_path_factory.mktemp("suv")
    case = generate_case(2, case_id="case_a", n_lesions=3)
    for d in ("ok", "bq"):
        write_case(case, root / d, organs=False)
    bq = sitk.Cast(case.pet, sitk.sitkFloat32) * BQML_PER_SUV
    sitk.WriteImage(bq, str(root / "bq" / "case_a" / "SUV.nii.gz"))
    return root


def _not_suv(record) -> list[str]:
    return [str(w.message) for w in record if "does not look like SUV" in str(w.message)]


def test_phantoms_and_realistic_suv_do_not_warn():
    for seed in range(6):
        for direction in ("lps", "oblique"):
            case = generate_case(seed, direction=direction)
            pet = sitk.GetArrayFromImage(case.pet)
            assert suv_warning(pet) is None
            assert suv_warning(pet * BQML_PER_SUV, source="x.nii.gz").startswith("x.nii.gz: does not look like SUV")
            # the default body median is within a factor of 2.5 of the true one
            true = float(np.median(pet[case.organ_mask("body")]))
            got = float(suv_warning(pet * 1e3).split("body median ")[1].split(",")[0]) / 1e3
            assert 0.4 * true < got < 1.1 * true
    # realistic extremes: a bladder at SUV 300 in a body at SUV 0.5, an all-zero scan, Ga-68 in Bq/mL (x1000)
    pet = np.zeros((40, 40, 40), np.float32)
    pet[5:35, 5:35, 5:35] = 0.5
    pet[18:22, 18:22, 18:22] = 300.0
    assert suv_warning(pet) is None and suv_warning(np.zeros((8, 8, 8))) is None
    assert suv_warning(pet * 1000) is not None
    # a given body mask is used as is: the bladder alone has a median of 300
    body = np.zeros(pet.shape, bool)
    body[18:22, 18:22, 18:22] = True
    assert 300 > MAX_BODY_MEDIAN and "body median 300, maximum 300" in suv_warning(pet, body)
    # the maximum alone: SUV 2e4 in one voxel
    pet[20, 20, 20] = 2e4
    assert "body median 0.5, maximum 2e+04" in suv_warning(pet)


def test_data_check_full_warns_once(cohort, recwarn, capsys):
    assert main(["data", str(cohort / "bq"), "--check", "full", "--quiet"]) == 0
    lines = _not_suv(recwarn)
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith(str(cohort / "bq" / "case_a" / "SUV.nii.gz"))
    assert "sam-l1dfl dicom" in lines[0]
    recwarn.clear()
    assert main(["data", str(cohort / "ok"), "--check", "full", "--quiet"]) == 0
    assert not _not_suv(recwarn)


def test_infer_warns_once(cohort, tmp_path, recwarn):
    for d, n in (("bq", 1), ("ok", 0)):
        case = cohort / d / "case_a"
        assert main(["infer", "--method", "threshold", "--pet", str(case / "SUV.nii.gz"), "--prompts-from-mask",
                     str(case / "SEG.nii.gz"), "--out", str(tmp_path / f"{d}.nii.gz"), "--quiet"]) == 0
        assert len(_not_suv(recwarn)) == n
        recwarn.clear()
    # --data mode reads the PET in the library (Segmenter.segment_dataset)
    assert main(["infer", "--method", "threshold", "--data", str(cohort / "bq"), "--prompts-from-mask",
                 "--out-dir", str(tmp_path / "o"), "--quiet"]) == 0
    assert len(_not_suv(recwarn)) == 1


def test_evaluate_warns_once(cohort, tmp_path, recwarn):
    for d, n in (("bq", 1), ("ok", 0)):
        pred = tmp_path / f"pred_{d}"
        pred.mkdir()
        shutil.copy(cohort / d / "case_a" / "SEG.nii.gz", pred / "case_a.nii.gz")
        assert main(["evaluate", "--pred-dir", str(pred), "--gt-dir", str(cohort / d), "--out",
                     str(tmp_path / f"rep_{d}"), "--no-mips", "--n-boot", "10", "--quiet"]) == 0
        assert len(_not_suv(recwarn)) == n
        recwarn.clear()


def test_the_command_prints_exactly_one_warning_line(cohort):
    """In a real process: stderr holds the one ``warning: ...`` line and nothing else."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl.cli", "data", str(cohort / "bq"), "--check", "full",
                        "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {cohort / 'bq' / 'case_a' / 'SUV.nii.gz'}: does not look "
                                                   "like SUV (body median "), r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the SUV case raises nothing
        assert suv_warning(sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "ok" / "case_a" / "SUV.nii.gz")))) is None
