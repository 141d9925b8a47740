"""``evaluate --pet-dir`` finds nnU-Net's ``<case>_XXXX`` PET files (issue 22): the PET channel of
``dataset.json`` (``0000`` without one), in ``imagesTs``/``imagesTr`` or the dataset folder."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import SimpleITK as sitk

from sam_l1dfl.cli import main
from sam_l1dfl.data.discovery import nnunet_pet_file

syn = pytest.importorskip("sam_l1dfl.data.synthetic")


@pytest.fixture(scope="module")
def autopet(tmp_path_factory):
    root = tmp_path_factory.mktemp("petdir")
    syn.generate_dataset(root / "ap", 2, seed=3, progress=False)
    return root


def nnunet(src, ds, channels: "dict | None"):
    """The autoPET cases of ``src`` as an nnU-Net test set ``ds``: labelsTs/<case>.nii.gz,
    imagesTs/<case>_XXXX.nii.gz."""
    (ds / "imagesTs").mkdir(parents=True)
    (ds / "labelsTs").mkdir()
    order = {"PET": 0, "CT": 1} if channels is None else {v: int(k) for k, v in channels.items()}
    for case in ("synth_000", "synth_001"):
        shutil.copy(src / "ap" / case / "SEG.nii.gz", ds / "labelsTs" / f"{case}.nii.gz")
        shutil.copy(src / "ap" / case / "SUV.nii.gz", ds / "imagesTs" / f"{case}_{order['PET']:04d}.nii.gz")
        shutil.copy(src / "ap" / case / "CTres.nii.gz", ds / "imagesTs" / f"{case}_{order['CT']:04d}.nii.gz")
    if channels is not None:
        (ds / "dataset.json").write_text(json.dumps({"channel_names": channels, "file_ending": ".nii.gz"}))
    return ds


def suv_max(path) -> float:
    return float(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))).max())


@pytest.mark.parametrize("channels", [None, {"0": "PET", "1": "CT"}, {"0": "CT", "1": "PET"}],
                         ids=["no-dataset-json", "pet-first", "ct-first-as-autopet-nnunet"])
def test_pet_dir_finds_the_pet_channel(autopet, tmp_path, capsys, channels):
    ds = nnunet(autopet, tmp_path / "Dataset", channels)
    pet_ch = 1 if channels and channels["1"] == "PET" else 0
    assert nnunet_pet_file(ds / "imagesTs", "synth_000") == ds / "imagesTs" / f"synth_000_{pet_ch:04d}.nii.gz"
    assert nnunet_pet_file(ds, "synth_000") == ds / "imagesTs" / f"synth_000_{pet_ch:04d}.nii.gz"
    assert nnunet_pet_file(ds / "imagesTs", "synth_009") is None
    out = tmp_path / "report"
    assert main(["evaluate", "--pred-dir", str(ds / "labelsTs"), "--gt-dir", str(ds / "labelsTs"),
                 "--pet-dir", str(ds / "imagesTs"), "--out", str(out), "--quiet", "--n-boot", "10"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    for case in ("synth_000", "synth_001"):
        assert rows[case]["has_pet"] == "true"
        # the SUV read-out comes from the PET, never the CT channel
        lesion_max = float(rows[case]["ref_suv_max"])
        assert 0 < lesion_max <= suv_max(autopet / "ap" / case / "SUV.nii.gz") + 1e-4


def test_a_missing_pet_channel_is_one_line(autopet, tmp_path, capsys):
    ds = nnunet(autopet, tmp_path / "Dataset", None)
    (ds / "imagesTs" / "synth_001_0000.nii.gz").unlink()
    before = sorted(p.name for p in (ds / "imagesTs").iterdir())
    capsys.readouterr()
    assert main(["evaluate", "--pred-dir", str(ds / "labelsTs"), "--gt-dir", str(ds / "labelsTs"),
                 "--pet-dir", str(ds / "imagesTs"), "--out", str(tmp_path / "report"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {ds / 'imagesTs'}: no PET for case 'synth_001'") and "_0000" in err, err
    assert "\n" not in err and not (tmp_path / "report").exists()
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == before
