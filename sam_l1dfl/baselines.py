"""Classical whole-scan SUV-threshold segmenters, the baselines the PSMA PET literature reports.

They need no training and run in seconds; as rows of the loss comparison they show how hard a
cohort is.  Arrays are PET in SUV and (optionally) CT in HU on the same grid, any axis order
except that :func:`body_mask` fills holes slice by slice along axis 0 (SimpleITK's z).

* **Body mask** (:func:`body_mask`): CT > −500 HU when a CT is given, else PET > 0.1 SUV
  (:data:`BODY_CT_HU`, :data:`BODY_PET_SUV`); the largest 26-connected component; holes filled
  in 3D and then in every axial slice (lungs and bowel gas are inside the body).
* **Methods** (:data:`METHODS`, :func:`threshold_segment`), all within the body mask:

  - ``suv4``: SUV ≥ 4;
  - ``suv3``: SUV ≥ 3;
  - ``suv41``: 41 % of SUVmax.  In the literature 41 % SUVmax is a *per-lesion* isocontour
    (EANM guideline for tumour volumes); a whole-scan 41 % of the scan's SUVmax would be set by
    the bladder or kidneys in PSMA PET.  We therefore apply it per hot region: every
    18-connected region of SUV ≥ 3 (:data:`HOT_REGION_SUV`) keeps its voxels with
    SUV ≥ 0.41 × that region's SUVmax (the region shrinks only when its SUVmax exceeds 3/0.41 ≈ 7.3).

**Prompted baseline** (:class:`ThresholdSegmenter`, ``sam-l1dfl infer --method threshold``): the
41 %-SUVmax isocontour grown from each lesion's click, what a PET reader does with a click and an
isocontour tool.  It takes the same prompts, checks, outputs and dataset loop as the SAM
:class:`~sam_l1dfl.inference.Segmenter` (it is one, with the model replaced by
:func:`grow_from_clicks`), and works on the original PET voxels: no resampling, masks on the PET
grid like the SAM path's.  Per lesion prompt:

1. **Crop.**  The ``crop_size``³ crop at ``spacing`` mm (default 128³ at 1.5 mm) that SAM-Med3D sees
   around the lesion unshared: centred on its prompt extent (positive points and box corners).  Only
   PET voxels whose centres lie inside the crop's voxel extent take part (the voxels onto which the
   SAM path maps a crop back).
2. **Allowed voxels.**  Inside a box prompt (the reader's VOI), when there is one; minus the voxels
   nearer to a negative point than to every positive point (to the box centre without one).
3. **SUVmax** of the lesion the click sits in: from each positive click, steepest ascent over the
   26-neighbourhood through allowed voxels up to the first local maximum (the lesion's peak); the
   largest peak.  A climb never crosses a valley, so the bladder or a kidney next to a lesion does not
   set its SUVmax (as a sphere around the click would).  A box without positive points: the maximum
   in the box, as a VOI tool.  In noise the climb can stop on a bump short of the peak; the threshold
   is then a little lower and the mask a little larger.
4. **Region.**  Allowed voxels with SUV ≥ 0.41 × SUVmax (:data:`PERCENT_OF_MAX`, the EANM
   isocontour) that are 18-connected (:data:`CLICK_CONNECTIVITY`; 26 lets diagonal noise bridge
   into neighbours) to a peak.  A click below the threshold (on the lesion's rim) is joined to the
   region through its monotone climb.
5. **Labels.**  As the SAM path: lesion id as label.  A voxel claimed by two lesions goes to the one
   with the higher SUVmax (the stricter isocontour, which holds the voxel at a higher threshold): a
   faint lesion whose region spreads over a hot neighbour does not take the neighbour's voxels.

Not tuned: a lesion whose 41 % region touches hotter physiological uptake (bladder, ureter, kidney)
at ≥ 41 % of the lesion's SUVmax leaks into it, as the classical method does; a box prompt bounds that.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.data.geometry import DEFAULT_SIZE, DEFAULT_SPACING, Grid
from sam_l1dfl.data.lesions import label_components
from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.errors import InputError
from sam_l1dfl.inference import InferenceReport, Segmenter, SegmentationResult
from sam_l1dfl.prompts import CasePrompts

BODY_CT_HU = -500.0
BODY_PET_SUV = 0.1
HOT_REGION_SUV = 3.0
PERCENT_OF_MAX = 0.41
#: Connectivity of the click-grown region (:class:`ThresholdSegmenter`).
CLICK_CONNECTIVITY = 18
METHODS = ("suv4", "suv3", "suv41")
#: Row labels of the methods in reports.
LABELS = {"suv4": "SUV>=4", "suv3": "SUV>=3", "suv41": "41% SUVmax"}


def body_mask(pet: np.ndarray, ct: "np.ndarray | None" = None, ct_hu: float = BODY_CT_HU,
              pet_suv: float = BODY_PET_SUV) -> np.ndarray:
    """Boolean body mask (see the module docstring)."""
    m = (np.asarray(ct) > ct_hu) if ct is not None else (np.asarray(pet) > pet_suv)
    if not m.any():
        return m
    labels, n = label_components(m, 26)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        m = labels == int(sizes.argmax())
    m = ndimage.binary_fill_holes(m)
    for k in range(m.shape[0]):
        m[k] = ndimage.binary_fill_holes(m[k])
    return m


def threshold_segment(pet: np.ndarray, ct: "np.ndarray | None" = None, method: str = "suv4",
                      body: "np.ndarray | None" = None) -> np.ndarray:
    """uint8 lesion mask of ``pet`` by ``method`` (one of :data:`METHODS`) within the body mask
    (computed from ``ct``/``pet`` unless ``body`` is given)."""
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose from {list(METHODS)}")
    pet = np.asarray(pet, dtype=np.float32)
    inside = body_mask(pet, ct) if body is None else np.asarray(body, dtype=bool)
    if method == "suv4":
        return ((pet >= 4.0) & inside).astype(np.uint8)
    hot = (pet >= HOT_REGION_SUV) & inside
    if method == "suv3":
        return hot.astype(np.uint8)
    labels, n = label_components(hot, 18)
    if n == 0:
        return hot.astype(np.uint8)
    peak = np.zeros(n + 1, dtype=np.float64)
    peak[1:] = ndimage.maximum(pet, labels, np.arange(1, n + 1))
    return (hot & (pet >= PERCENT_OF_MAX * peak[labels])).astype(np.uint8)


# ---------------------------------------------------------------------------------- prompted baseline
@dataclass
class ClickRegion:
    """What :func:`grow_from_clicks` found: the mask, the SUVmax it used and where (array index)."""

    mask: np.ndarray
    suv_max: float
    peak: "tuple[int, int, int] | None"


def climb(suv: np.ndarray, start, allowed: "np.ndarray | None" = None) -> tuple[int, int, int]:
    """Steepest ascent from voxel ``start`` over the 26-neighbourhood, through ``allowed`` voxels,
    to the first local maximum; its array index.  A plateau (equal values, as in hand-made or clipped
    images) is crossed: the climb goes on from the highest voxel around it, if that one is higher."""
    ok = np.ones(suv.shape, bool) if allowed is None else allowed
    cube = np.ones((3, 3, 3), bool)
    p = tuple(int(v) for v in start)
    while True:
        sl = tuple(slice(max(c - 1, 0), min(c + 2, n)) for c, n in zip(p, suv.shape))
        win = np.where(ok[sl], suv[sl], -np.inf)
        k = np.unravel_index(int(np.argmax(win)), win.shape)
        if win[k] > suv[p]:
            p = tuple(int(s.start + kk) for s, kk in zip(sl, k))
            continue
        comps, _ = label_components(ok & (suv == suv[p]), 26)
        flat = comps == comps[p]
        rim = ndimage.binary_dilation(flat, cube) & ok & ~flat
        if not rim.any() or not suv[rim].max() > suv[p]:
            return p
        p = tuple(int(v) for v in np.argwhere(rim & (suv == suv[rim].max()))[0])


def grow_from_clicks(suv: np.ndarray, clicks, allowed: "np.ndarray | None" = None,
                     fraction: float = PERCENT_OF_MAX, connectivity: int = CLICK_CONNECTIVITY) -> ClickRegion:
    """The ``fraction`` × SUVmax region grown from ``clicks`` ((N, 3) array indices, any axis order
    matching ``suv``) within ``allowed`` (steps 3-4 of the module docstring).  No clicks: SUVmax is the
    maximum over ``allowed`` and the region grows from there.  Clicks outside ``allowed`` are ignored;
    nothing allowed (or no click left) gives an empty mask and ``suv_max`` NaN, a peak of SUV ≤ 0 an
    empty mask."""
    suv = np.asarray(suv, dtype=np.float32)
    ok = np.ones(suv.shape, bool) if allowed is None else np.asarray(allowed, dtype=bool)
    clicks = np.asarray(clicks, dtype=np.int64).reshape(-1, 3)
    empty = ClickRegion(np.zeros(suv.shape, bool), float("nan"), None)
    if len(clicks):
        clicks = clicks[ok[tuple(clicks.T)]]
        if not len(clicks):
            return empty
        peaks = [climb(suv, c, ok) for c in clicks]
    elif ok.any():
        peaks = [np.unravel_index(int(np.argmax(np.where(ok, suv, -np.inf))), suv.shape)]
    else:
        return empty
    peaks = [tuple(int(v) for v in p) for p in peaks]
    top = max(peaks, key=lambda p: suv[p])
    suv_max = float(suv[top])
    if not suv_max > 0:
        return ClickRegion(empty.mask, suv_max, None)
    cand = ok & (suv >= fraction * suv_max)
    comps, _ = label_components(cand, connectivity)
    ids = {int(comps[p]) for p in peaks} - {0}
    return ClickRegion(np.isin(comps, sorted(ids)), suv_max, top)


@dataclass
class ThresholdReport(InferenceReport):
    """:class:`~sam_l1dfl.inference.InferenceReport` of the threshold baseline (no network passes)."""

    method: str = "threshold"
    fraction: float = PERCENT_OF_MAX
    crop_size: int = DEFAULT_SIZE
    spacing: float = DEFAULT_SPACING

    def summary(self) -> str:
        lines = [f"method: threshold ({self.fraction:.0%} of the SUVmax climbed to from each click, "
                 f"{CLICK_CONNECTIVITY}-connected, in a {self.crop_size}^3 crop at {self.spacing:g} mm)   "
                 f"lesions: {self.n_lesions}",
                 f"seconds: prepare {self.seconds['prepare']:.2f}  threshold {self.seconds['crop']:.2f}  "
                 f"total {self.total_seconds:.2f}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


class ThresholdSegmenter(Segmenter):
    """The click-grown 41 %-SUVmax baseline with the :class:`~sam_l1dfl.inference.Segmenter` API.

    ``segment`` (one case: SimpleITK images in, a :class:`SegmentationResult` on the PET grid out) and
    the inherited ``segment_dataset`` (``sam-l1dfl infer --method threshold --data``), with the same
    prompt reading, checks and output files; every report says ``method: threshold``.  No checkpoint,
    CT, probabilities or refinement clicks.  ``fraction`` of SUVmax, ``crop_size`` (voxels) and
    ``spacing`` (mm) of the crop; see the module docstring.
    """

    method = "threshold"
    uses_boxes = True  # a box is the VOI that bounds the region

    def __init__(self, fraction: float = PERCENT_OF_MAX, crop_size: int = DEFAULT_SIZE,
                 spacing: float = DEFAULT_SPACING):
        if not 0.0 < float(fraction) < 1.0:
            raise InputError(None, f"fraction of SUVmax must be in (0, 1), got {fraction}")
        self.fraction = float(fraction)
        self.preprocess = IntensityConfig(spacing=spacing, crop_size=crop_size)  # PET only: no CT read
        self.preprocess_source = "threshold baseline (PET only)"
        self.checkpoint = None
        self.weights = None  # no model: nothing to name
        self.share_crops = False

    def segment(self, pet: "sitk.Image", ct: "sitk.Image | None" = None,
                prompts: "CasePrompts | str | os.PathLike | None" = None, *,
                reference: "sitk.Image | None" = None, clicks: int = 0, probabilities: bool = False,
                share_crops: bool | None = None, allow_checksum_mismatch: bool = False) -> SegmentationResult:
        """Segment every lesion prompt of ``prompts`` (a :class:`CasePrompts` or a prompt file; None
        with ``reference``: prompts from the reference mask) on ``pet``'s grid.  ``share_crops`` is
        accepted for the :class:`Segmenter` signature and has no effect (every lesion has its crop)."""
        cfg = self.preprocess
        rep = ThresholdReport(share_crops=False, batch_size=1, device="cpu", fraction=self.fraction,
                              crop_size=cfg.crop_size, spacing=cfg.spacing)
        t0 = time.perf_counter()
        if ct is not None:
            raise InputError(None, "the threshold baseline reads the PET only: leave the CT out")
        if clicks:
            raise InputError(None, "the threshold baseline has no refinement clicks (clicks must be 0)")
        if probabilities:
            raise InputError(None, "the threshold baseline gives no probabilities")
        resolver = self.resolver
        pet, _, reference = resolver.check_images(pet, None, reference)
        prompts = resolver.prompts(pet, prompts, reference, allow_checksum_mismatch)
        lesions = resolver.lesions(pet, prompts, rep)
        rep.n_lesions = len(lesions)
        t1 = time.perf_counter()
        rep.seconds["prepare"] += t1 - t0
        grid = Grid.from_image(pet)
        suv = sitk.GetArrayViewFromImage(pet)
        best = np.zeros(grid.array_shape, np.float32)
        labels = np.zeros(grid.array_shape, np.uint16)
        out_lesions = []
        for les in lesions:
            geom, sl, lo, region = self._grow(les, grid, suv)
            if region.peak is None:
                les.notes.append("no positive point inside its box and crop, or no SUV > 0 there: empty mask")
                rep.notes.append(f"lesion {les.lesion_id}: " + les.notes[-1])
            else:
                b, lab = best[sl], labels[sl]
                upd = region.mask & (region.suv_max > b)
                b[upd] = region.suv_max
                lab[upd] = les.label
            out_lesions.append(self._record(les, geom, region, lo, grid, len(out_lesions)))
        res = SegmentationResult.from_labels(pet, labels, out_lesions, rep)
        rep.seconds["crop"] += time.perf_counter() - t1
        return res


    def _grow(self, les, grid: Grid, suv: np.ndarray):
        """One lesion's region: ``(crop, PET slices of its crop, their first voxel, grown region)``.
        The region may use the PET voxels inside the crop SAM would see, inside its boxes, and
        nearer its positive points than its negative ones."""
        geom = self.preprocess.geometry_at((les.lo + les.hi) / 2.0)
        lo, hi = grid.index_box(geom.grid.extent_corners())  # the clicks lie in the PET: never None
        sl = Grid.array_slices(lo, hi)
        ijk = np.stack(np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij"), -1)
        world = grid.index_to_world(ijk.reshape(-1, 3).astype(np.float64))
        ok = geom.contains_index(geom.world_to_index(world))
        for box in les.boxes:
            ok &= _in_box(world, box)
        anchors = les.pos if len(les.pos) else np.mean([b.mean(0) for b in les.boxes], axis=0)[None]
        if len(les.neg):
            ok &= _nearest(world, les.neg) >= _nearest(world, anchors)
        ok = ok.reshape(ijk.shape[:3]).transpose(2, 1, 0)  # (i, j, k) voxel order -> numpy (z, y, x)
        sub = np.asarray(suv[sl], dtype=np.float32)
        seeds = np.rint(grid.world_to_index(les.pos)).astype(np.int64).reshape(-1, 3) - lo
        seeds = seeds[np.all((seeds >= 0) & (seeds <= np.asarray(hi) - lo), axis=1)][:, ::-1]
        return geom, sl, lo, grow_from_clicks(sub, seeds, ok, self.fraction)

    def _record(self, les, geom, region, lo, grid: Grid, window: int) -> dict:
        """The lesion's entry in the case report (its SUVmax, where, and the threshold used)."""
        peak = None if region.peak is None else (np.asarray(region.peak)[::-1] + lo).astype(float)
        return {
            "lesion_id": les.lesion_id, "label": les.label, "window": window,
            "window_center_lps": [round(float(v), 3) for v in geom.center_lps],
            "n_points": int(len(les.pos) + len(les.neg)), "iou_pred": None,
            "suv_max": None if peak is None else round(region.suv_max, 4),
            "suv_max_lps": None if peak is None else [round(float(v), 3) for v in grid.index_to_world(peak)],
            "threshold_suv": None if peak is None else round(self.fraction * region.suv_max, 4),
            "notes": les.notes}


def _in_box(world: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Whether LPS points lie in the box given by its 8 corners (``BoxPrompt.corners_world`` order:
    corner 0 and its neighbours along the box axes are corners 4, 2 and 1)."""
    rel = world - corners[0]
    inside = np.ones(len(world), bool)
    for k in (4, 2, 1):
        e = corners[k] - corners[0]
        t = rel @ e / max(float(e @ e), 1e-12)
        inside &= (t >= -1e-6) & (t <= 1 + 1e-6)
    return inside


def _nearest(world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point of ``world`` to the nearest of ``points``."""
    return np.min(np.linalg.norm(world[:, None, :] - points[None, :, :], axis=-1), axis=1)


__all__ = ["BODY_CT_HU", "BODY_PET_SUV", "CLICK_CONNECTIVITY", "HOT_REGION_SUV", "LABELS", "METHODS",
           "PERCENT_OF_MAX", "ClickRegion", "ThresholdReport", "ThresholdSegmenter", "body_mask", "climb",
           "grow_from_clicks", "threshold_segment"]
