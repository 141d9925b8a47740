"""A data set through a :class:`~sam_l1dfl.inference.Segmenter` (``sam-l1dfl infer --data``).

:func:`segment_dataset` reads each case (:func:`~sam_l1dfl.data.io.load_case`), finds its prompts
(a prompt folder, or the case's own label with ``from_mask``), segments it and writes, atomically,
into the output folder: ``<case>.nii.gz`` (binary; what ``sam-l1dfl evaluate`` reads),
``lesions/<case>.nii.gz``, ``<case>.json``, ``probabilities/<case>/`` with ``probabilities``, and
``summary.json``.  A case without a prompt file or without a reference lesion gets an empty mask;
a case whose files are unusable is listed in ``failed`` with its one-line reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import SimpleITK as sitk

from sam_l1dfl.data.dicom.suv_sanity import warn_if_not_suv
from sam_l1dfl.data.io import CaseRecord, load_case
from sam_l1dfl.errors import InputError, SamL1dflError
from sam_l1dfl.io_utils import write_json_atomic
from sam_l1dfl.progress import progress as show_progress

from .results import DatasetSummary, SegmentationResult, write_empty_case


def _prompt_file(pdir: Path, case_id: str) -> "Path | None":
    """``<case>.json``, ``<case>.mrk.json`` or a ``<case>/`` folder of markups in ``pdir``."""
    cands = [pdir / f"{case_id}.json", pdir / f"{case_id}.mrk.json", pdir / case_id]
    return next((c for c in cands if c.is_file() or c.is_dir()), None)


def _read_case(seg, rec: CaseRecord, from_mask: bool):
    """The case with its CT when the checkpoint needs one and its label with ``from_mask``;
    one-line errors for a missing label or CT."""
    needs_ct = seg.preprocess.needs_ct
    case = load_case(rec, load_ct=needs_ct, load_label=from_mask)
    warn_if_not_suv(sitk.GetArrayViewFromImage(case.pet), rec.pet)
    if from_mask and case.label is None:
        raise InputError(rec.pet, f"case {rec.case_id} has no label for --prompts-from-mask")
    if needs_ct and case.ct_native is None:
        raise InputError(rec.pet, f"case {rec.case_id} has no CT but the checkpoint's input_mode is "
                                  f"{seg.input_mode!r}")
    return case


def _add_to_summary(summary: DatasetSummary, case_id: str, res: SegmentationResult) -> None:
    r = res.report
    summary.lesions += r.n_lesions
    summary.encoder_passes += r.encoder_passes
    for k, v in r.seconds.items():
        summary.seconds[k] += v
    summary.segmented.append(case_id)


def segment_dataset(seg, cases: "Sequence[CaseRecord]", out_dir: "str | os.PathLike", *,
                    prompts_dir: "str | os.PathLike | None" = None, from_mask: bool = False, clicks: int = 0,
                    probabilities: bool = False, allow_checksum_mismatch: bool = False,
                    data: "str | os.PathLike | None" = None, progress: bool = True,
                    on_case: "Callable[[str, SegmentationResult], None] | None" = None) -> DatasetSummary:
    """Segment every case with ``seg`` (a :class:`~sam_l1dfl.inference.Segmenter`) and write the files of the module docstring into ``out_dir``.

    Prompts: ``prompts_dir`` (``<case>.json``, ``<case>.mrk.json``, or a ``<case>/`` folder of
    Slicer markups files), or ``from_mask`` (each case's label, optionally with ``clicks``
    refinement clicks).  ``data`` names the source in the summary; ``on_case(case_id, result)`` is
    called after each segmented case.
    """
    cases = list(cases)
    if not cases:
        raise InputError(data, "no case found")
    if (prompts_dir is None) == (not from_mask):
        raise InputError(None, "give either prompts_dir or from_mask")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    pdir = Path(prompts_dir) if prompts_dir is not None else None
    if pdir is not None and not pdir.is_dir():
        raise InputError(pdir, "prompt folder does not exist")
    summary = DatasetSummary(seg.checkpoint, None if data is None else str(data), len(cases), int(clicks),
                             seg.share_crops, str(out), seg.method, seg.weights)
    t0 = time.perf_counter()
    bar = show_progress(cases, desc="infer", unit="case", enabled=progress)
    for rec in bar:
        try:
            case = _read_case(seg, rec, from_mask)
            prompts = _prompt_file(pdir, rec.case_id) if pdir is not None else None
            why = "no prompt file" if pdir is not None else "no lesion in the reference mask"
            if (pdir is not None and prompts is None) or (from_mask and not sitk.GetArrayViewFromImage(case.label).any()):
                write_empty_case(case.pet, out, rec.case_id, why, seg.provenance)
                summary.empty.append(f"{rec.case_id}: {why}")
                continue
            res = seg.segment(case.pet, case.ct_native if seg.preprocess.needs_ct else None, prompts=prompts,
                              reference=case.label if from_mask else None, clicks=clicks,
                              probabilities=probabilities, allow_checksum_mismatch=allow_checksum_mismatch)
        except SamL1dflError as exc:
            summary.failed.append(f"{rec.case_id}: {exc}")
            continue
        res.write(out / f"{rec.case_id}.nii.gz", out / "lesions" / f"{rec.case_id}.nii.gz",
                  out / f"{rec.case_id}.json", out / "probabilities" / rec.case_id if probabilities else None,
                  {"case_id": rec.case_id, "pet": str(rec.pet), "prompts": None if prompts is None else str(prompts),
                   **seg.provenance})
        _add_to_summary(summary, rec.case_id, res)
        bar.set_postfix(lesions=summary.lesions, passes=summary.encoder_passes)
        if on_case is not None:
            on_case(rec.case_id, res)
    summary.wall_seconds = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary.to_dict())
    return summary


__all__ = ["segment_dataset"]
