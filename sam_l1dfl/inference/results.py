"""What inference gives back: the report of one call, the result of one case, a data set's summary.

:class:`InferenceReport` counts and times the stages of :meth:`~sam_l1dfl.inference.Segmenter.segment`
(:data:`STAGES`, timed with :func:`stage_timer`); :class:`SegmentationResult` holds the label map,
the mask, the probabilities and the lesion records on the PET grid and writes them;
:class:`DatasetSummary` is ``summary.json`` of :meth:`~sam_l1dfl.inference.Segmenter.segment_dataset`,
and :func:`write_empty_case` the outputs of a case with nothing to segment.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic

STAGES = ("prepare", "crop", "encoder", "decoder", "clicks", "map_back")


@dataclass
class InferenceReport:
    """What one :meth:`Segmenter.segment` call did (``method``: where the masks came from)."""

    method: str = "sam"
    n_lesions: int = 0
    encoder_passes: int = 0
    decoder_passes: int = 0
    clicks: int = 0
    batch_size: int = 1
    share_crops: bool = False
    device: str = "cpu"
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        d["total_seconds"] = round(self.total_seconds, 4)
        return d

    def summary(self) -> str:
        per = self.encoder_passes / self.n_lesions if self.n_lesions else 0.0
        lines = [
            f"lesions: {self.n_lesions}   encoder passes: {self.encoder_passes} ({per:.2f} per lesion, "
            f"crop sharing {'on' if self.share_crops else 'off'}, batch {self.batch_size})   "
            f"decoder passes: {self.decoder_passes}   refinement clicks: {self.clicks}   device: {self.device}",
            "seconds: " + "  ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())
            + f"  total {self.total_seconds:.2f}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def stage_timer(report: InferenceReport, stage: str, sync: Callable[[], None] | None = None):
    """A context manager adding its wall time to ``report.seconds[stage]`` (after ``sync()``, so
    that CUDA work queued inside counts)."""

    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            if sync is not None:
                sync()
            report.seconds[stage] += time.perf_counter() - self.t

    return _T()


@dataclass
class SegmentationResult:
    labels: "sitk.Image"
    mask: "sitk.Image"
    probabilities: "dict[int, sitk.Image] | None"
    lesions: list[dict[str, Any]]
    report: InferenceReport

    @classmethod
    def from_labels(cls, pet: "sitk.Image", labels: np.ndarray, lesions: list[dict[str, Any]],
                    report: InferenceReport, probabilities: "dict[int, sitk.Image] | None" = None
                    ) -> "SegmentationResult":
        """The result of a uint16 ``(z, y, x)`` label array on ``pet``'s grid: each lesion record
        (``lesion_id``, ``label``, ...) gets its ``voxels`` and ``volume_ml`` (an empty one a note in
        the report), records sorted by label, the label map and the binary mask as images."""
        counts = np.bincount(labels.ravel(), minlength=max([d["label"] for d in lesions] + [0]) + 1)
        vml = float(np.prod(pet.GetSpacing())) / 1000.0
        for d in lesions:
            d["voxels"] = int(counts[d["label"]])
            d["volume_ml"] = round(d["voxels"] * vml, 4)
            if d["voxels"] == 0:
                report.notes.append(f"lesion {d['lesion_id']}: empty prediction")
        lesions.sort(key=lambda d: d["label"])
        lab_img = sitk.GetImageFromArray(labels)
        lab_img.CopyInformation(pet)
        mask_img = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
        mask_img.CopyInformation(pet)
        return cls(lab_img, mask_img, probabilities, lesions, report)

    def to_dict(self) -> dict:
        """JSON-able record (no images): lesions and the report."""
        return {"lesions": self.lesions, "report": self.report.to_dict()}

    def write(self, mask_path: "str | os.PathLike", labels_path: "str | os.PathLike",
              json_path: "str | os.PathLike", prob_dir: "str | os.PathLike | None" = None,
              extra: "dict | None" = None) -> None:
        """Write the mask, the label map, the JSON record (``extra`` first) and, with ``prob_dir``,
        ``lesion_<id>.nii.gz`` probability maps; atomically."""
        write_image_atomic(self.mask, mask_path)
        write_image_atomic(self.labels, labels_path)
        if prob_dir is not None and self.probabilities:
            for lid, im in self.probabilities.items():
                write_image_atomic(im, Path(prob_dir) / f"lesion_{lid}.nii.gz")
        write_json_atomic(json_path, {**(extra or {}), **self.to_dict()})


@dataclass
class DatasetSummary:
    """What :meth:`Segmenter.segment_dataset` did; :meth:`to_dict` is its ``summary.json``."""

    checkpoint: "str | None"
    data: "str | None"
    cases: int
    clicks: int
    share_crops: bool
    out_dir: str
    method: str = "sam"  # where the masks came from: "sam" or "threshold" (baselines.ThresholdSegmenter)
    weights: "str | None" = None  # the model's weights origin (model.standin.weights_origin); None: no model
    segmented: list[str] = field(default_factory=list)  # case ids
    empty: list[str] = field(default_factory=list)  # "<case>: <why>" (an empty mask was written)
    failed: list[str] = field(default_factory=list)  # "<case>: <error>" (nothing written)
    lesions: int = 0
    encoder_passes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        n_les, n_enc = self.lesions, self.encoder_passes
        return {
            "method": self.method, "checkpoint": self.checkpoint, "weights": self.weights, "data": self.data,
            "cases": self.cases,
            "segmented": self.segmented, "empty": self.empty, "failed": self.failed, "lesions": n_les,
            "encoder_passes": n_enc, "encoder_passes_per_lesion": round(n_enc / n_les, 4) if n_les else None,
            "clicks": self.clicks, "share_crops": self.share_crops,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "wall_seconds": round(self.wall_seconds, 3),
            "seconds_per_case": round(self.wall_seconds / max(len(self.segmented), 1), 3),
        }


def write_empty_case(pet: sitk.Image, out: Path, case_id: str, why: str, provenance: dict) -> None:
    """The outputs of a case with nothing to segment: empty mask and label map, and a JSON note
    (with ``provenance``: :attr:`Segmenter.provenance`)."""
    z = sitk.Image(pet.GetSize(), sitk.sitkUInt8)
    z.CopyInformation(pet)
    write_image_atomic(z, out / f"{case_id}.nii.gz")
    write_image_atomic(sitk.Cast(z, sitk.sitkUInt16), out / "lesions" / f"{case_id}.nii.gz")
    write_json_atomic(out / f"{case_id}.json", {"case_id": case_id, **provenance, "lesions": [],
                                                "note": f"{why}: empty prediction"})


__all__ = ["DatasetSummary", "InferenceReport", "STAGES", "SegmentationResult", "stage_timer", "write_empty_case"]
