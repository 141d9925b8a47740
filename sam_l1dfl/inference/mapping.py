"""Step 5 of inference: the crop-space logits back onto the original PET grid, exactly.

:class:`LabelCanvas` maps each lesion's crop logits with ONE linear ``sitk.Resample`` onto the part
of the PET grid that the crop covers (:func:`~sam_l1dfl.data.geometry.crop_to_image`, on the PET
sub-grid :func:`covered_subgrid`; PET voxels outside the crop get :data:`OUTSIDE_LOGIT`), then
thresholds there, on the PET's own grid (``probability >= threshold``).  Overlapping lesions:
each voxel goes to the lesion with the highest probability among those above the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.data.geometry import CropGeometry, Grid, crop_to_image

from .results import InferenceReport, SegmentationResult

#: Logit given to PET voxels outside a lesion's crop (sigmoid ~ 1e-13).
OUTSIDE_LOGIT = -30.0


def covered_subgrid(reference: "sitk.Image", geom: CropGeometry) -> "tuple[sitk.Image, tuple[slice, slice, slice]] | None":
    """The part of ``reference``'s grid that ``geom`` covers: a small image on the same lattice,
    and its (z, y, x) slices into the full array.  None when they do not overlap."""
    grid = Grid.from_image(reference)
    box = grid.index_box(geom.grid.extent_corners())
    if box is None:
        return None
    return grid.subgrid(*box).reference_image(), Grid.array_slices(*box)


def map_logits(reference: "sitk.Image", logits: np.ndarray, geom: CropGeometry) -> "tuple[tuple[slice, slice, slice], np.ndarray] | None":
    """Crop logits ``(X, Y, Z)`` at ``geom`` on the part of ``reference``'s grid the crop covers,
    by ONE linear resampling: ``((z, y, x) slices into the full array, logits there)``, or None
    when the crop misses the image.  Voxels of that part outside the crop get :data:`OUTSIDE_LOGIT`."""
    sub = covered_subgrid(reference, geom)
    if sub is None:
        return None
    ref_small, sl = sub
    img = crop_to_image(logits, geom, ref_small, "linear", OUTSIDE_LOGIT)
    return sl, sitk.GetArrayFromImage(img)  # a copy: a view would outlive the image it reads


def threshold_logit(threshold: float) -> float:
    """The logit of a probability threshold (a voxel is in the mask when its logit is >= it)."""
    return math.log(threshold / (1.0 - threshold))


class LabelCanvas:
    """The label map of one case on ``pet``'s grid, filled lesion by lesion (:meth:`add`), and the
    per-lesion probability maps when ``probabilities``."""

    def __init__(self, pet: "sitk.Image", threshold: float, probabilities: bool = False):
        self.pet = pet
        self.size_zyx = tuple(reversed(pet.GetSize()))
        self.best = np.full(self.size_zyx, -np.inf, dtype=np.float32)
        self.labels = np.zeros(self.size_zyx, dtype=np.uint16)
        self.thr_logit = threshold_logit(threshold)
        self.probabilities = probabilities
        self.prob_maps: dict[int, np.ndarray] = {}

    def add(self, logits: np.ndarray, geom: CropGeometry, label: int, lesion_id: int) -> None:
        """One lesion's crop logits ``(X, Y, Z)`` at ``geom``: its voxels above the threshold take
        ``label`` where they beat every lesion added before."""
        mapped = map_logits(self.pet, logits, geom)
        if mapped is None:
            return
        sl, a = mapped
        b, lab = self.best[sl], self.labels[sl]
        upd = (a >= self.thr_logit) & (a > b)
        b[upd] = a[upd]
        lab[upd] = label
        if self.probabilities:
            pm = np.zeros(self.size_zyx, dtype=np.float32)
            pm[sl] = 1.0 / (1.0 + np.exp(-np.asarray(a, dtype=np.float64)))
            self.prob_maps[lesion_id] = pm

    def result(self, lesions: list[dict[str, Any]], rep: InferenceReport) -> SegmentationResult:
        """The :class:`SegmentationResult` of the lesions added (their records ``lesions``)."""
        probs = None
        if self.probabilities:
            probs = {}
            for lid, pm in self.prob_maps.items():
                im = sitk.GetImageFromArray(pm)
                im.CopyInformation(self.pet)
                probs[lid] = im
        return SegmentationResult.from_labels(self.pet, self.labels, lesions, rep, probs)


__all__ = ["LabelCanvas", "OUTSIDE_LOGIT", "covered_subgrid", "map_logits", "threshold_logit"]
