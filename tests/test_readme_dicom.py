"""The README's "From DICOM" commands run as written, in a fresh folder, through ``sam_l1dfl.cli.main``.

``sam-l1dfl weights download`` runs offline against a local Hugging Face cache holding the tiny
official-format golden checkpoint under the turbo file's name, so the later commands use that
model at ``checkpoints/sam_med3d_turbo.pth``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import highdicom as hd
import pydicom

from _weights_helpers import offline_hub, populate_hf_cache, tiny_official_checkpoint
from sam_l1dfl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(heading: str = "## From DICOM") -> list[list[str]]:
    """The commands of the first ```bash block under ``heading``: continuation lines joined,
    comments dropped, split like a shell would."""
    text = README.read_text()
    section = text[text.index(heading + "\n"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_from_dicom_section_runs(tmp_path, monkeypatch, recwarn, capsys):
    cmds = readme_commands()
    assert [c[:2] for c in cmds] == [["sam-l1dfl", "synth"], ["sam-l1dfl", "dicom"], ["sam-l1dfl", "data"],
                                     ["sam-l1dfl", "weights"], ["sam-l1dfl", "infer"], ["sam-l1dfl", "evaluate"],
                                     ["sam-l1dfl", "infer"]]
    populate_hf_cache(offline_hub(monkeypatch, tmp_path / "hf"), tiny_official_checkpoint(tmp_path / "tiny.pth"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for cmd in cmds:
        assert main(cmd[1:]) == 0, shlex.join(cmd)
    out = capsys.readouterr().out
    case = work / "cases" / "SYNTH0001_20260105"
    for f in ("study/SEG.dcm", "study/RTSTRUCT.dcm", "checkpoints/sam_med3d_turbo.pth",
              "checkpoints/sam_med3d_turbo.pth.sha256", "pred/SYNTH0001_20260105.nii.gz", "report/report.html",
              "report/metrics.csv", "pred_case.nii.gz", "pred_case_lesions.nii.gz", "pred_seg.dcm"):
        assert (work / f).is_file(), f
    assert all((case / n).is_file() for n in ("SUV.nii.gz", "CT.nii.gz", "SEG.nii.gz", "dicom.json"))
    assert "0 problem(s)" in out and not [w for w in recwarn if "does not look like SUV" in str(w.message)]
    # the SEG references the study's PET series
    seg = hd.seg.segread(work / "pred_seg.dcm")
    pet = pydicom.dcmread(next((work / "study" / "PET").iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet.SeriesInstanceUID
