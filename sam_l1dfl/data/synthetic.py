"""Synthetic PSMA PET/CT phantom in the autoPET layout.

No public PSMA PET/CT data can be downloaded in our CI, so the demo, the tests and the
benchmarks use this generator.  It is meant to be realistic enough that pipeline mistakes
(orientation, spacing, SUV scaling, label/grid mismatches, lesion bookkeeping) show up.

Model
-----
* **Anatomy** is defined analytically in *patient* millimetres (LPS: x to the patient's left,
  y posterior, z superior; ``z = 0`` at the pubic symphysis of an adult) and evaluated at the
  world position of every voxel, so the same anatomy can be sampled on any grid: LPS
  identity, flipped (``diag(-1, -1, 1)``, what a RAS-stored NIfTI reads as) or oblique
  direction cosines.  Body contour with subcutaneous fat, lungs, heart and great vessels,
  spine, pelvis, femora, ribs, liver, spleen, kidneys, ureters, bladder, bowel, parotid and
  submandibular glands.
* **Size**: default cases are a small patient (anatomy scaled by 0.5; lesions keep their real
  size) on a 100 x 100 x 130 grid of 4.07 x 4.07 x 3 mm voxels, so CI stays fast.
  ``full_size=True`` gives an adult from upper thigh to skull base on a 200 x 200 x 330 grid.
* **PSMA biodistribution** (SUV), calibrated to published SUVmax (docs/phantom.md): liver,
  spleen, kidneys, parotid, submandibular and lacrimal glands drawn around their published
  means; bladder 10-60, bowel patchy up to 18, ureters with urine activity, background 0.5-1.5.
* **Lesions** (generator 2.0): 0-12 per case in pelvic, spinal and rib bone, pelvic,
  retroperitoneal (para-aortic and at the renal hilum), mesenteric and cervical lymph nodes, the
  prostate bed and the liver, with the location mix, sizes and SUVmax of published PSMA PET
  cohorts (log-normal per site; 15 % of bone lesions PSMA-low, SUVmax 2-5; liver metastases barely
  above the liver).  Many sit next to physiological uptake: the bladder, a ureter, a kidney, the
  bowel, a salivary gland, inside the liver.  Irregular shapes (a perturbed union of
  ellipsoids), heterogeneous uptake, and a necrotic core in a third of those over 2 mL.  Lesions
  never touch each other: each one is a single 18-connected component and every pair is
  separated by at least one voxel (26-neighbourhood), so counting connected components of
  ``SEG`` gives the lesion count.  Each lesion records the facts its strata are built from:
  ``volume_ml``, ``tbr`` (measured SUVmax over the SUV of the tissue it sits in),
  ``nearest_organ``/``organ_distance_mm`` and ``adjacent_to`` (an uptake organ within 8 mm).
* **Physics**: a lesion's activity is its *partial-volume occupancy* of each voxel (27 samples
  per voxel), so the scanner point-spread function (Gaussian, FWHM 4-7 mm per case) acts on
  the continuous activity before voxel sampling; then count-dependent, spatially correlated
  noise (variance proportional to the activity and inversely to the scan's count level; liver
  COV about 12 %).  ``SEG`` holds the voxels at least half inside a lesion (its core voxel for
  one smaller than half a voxel), as an annotator would draw it, before blur.  CT is in HU on the
  PET grid (like autoPET's ``CTres``): air -1000, lung about -800, fat about -100, soft tissue
  30-60, bone 250-1200.

Public API: :func:`generate_case` -> :class:`SyntheticCase` (in memory, with the organ label
map), :func:`write_case`, :func:`generate_dataset` (writes ``<out>/<case>/SUV.nii.gz``,
``CTres.nii.gz``, ``SEG.nii.gz``, ``organs.nii.gz`` and ``<out>/dataset.json``) and
:func:`case_seed`.  Everything is deterministic for a given seed; case ``i`` of a data set
depends only on ``(seed, i)``, not on the number of cases.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.data.geometry import Grid
from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic
from sam_l1dfl.progress import progress as show_progress

GENERATOR_VERSION = "2.0"
FORMAT = "sam-l1dfl-synthetic"

#: file names inside each case folder (autoPET layout, plus the organ label map)
PET_NAME = "SUV.nii.gz"
CT_NAME = "CTres.nii.gz"
SEG_NAME = "SEG.nii.gz"
ORGANS_NAME = "organs.nii.gz"

#: organ label map values (``SyntheticCase.organs``; ``organs.nii.gz``)
ORGAN_LABELS: dict[str, int] = {
    "background": 0,  # air outside the body
    "soft_tissue": 1,  # muscle and other unlabelled soft tissue inside the body
    "fat": 2,  # subcutaneous fat
    "lung": 3,
    "blood": 4,  # heart and great vessels (blood pool)
    "bone_spine": 5,
    "bone_pelvis": 6,  # iliac wings, sacrum, pubic bones, acetabula
    "bone_other": 7,  # ribs, femora
    "liver": 8,
    "spleen": 9,
    "kidney": 10,
    "ureter": 11,
    "bladder": 12,
    "bowel": 13,
    "parotid": 14,
    "submandibular": 15,
    "lacrimal": 16,
}
BONE_LABELS = ("bone_spine", "bone_pelvis", "bone_other")
#: organs with physiological PSMA uptake next to which a lesion counts as "near an organ"
#: (the classical failure sites of a fixed SUV threshold); see ``organ_distance_mm``
UPTAKE_ORGANS = ("bladder", "ureter", "kidney", "bowel", "liver", "spleen", "parotid", "submandibular", "lacrimal")

# ---- lesion population (docs/phantom.md gives the source of every number) ------------------
#: per-lesion location probabilities, from the share of patients with bone (65.8 %), nodal
#: (59.9 %), prostate-bed (21.1 %) and visceral (14.5 %) disease at first PSMA PET/CT
LOCATION_PROBABILITY: dict[str, float] = {
    "bone_pelvis": 0.18, "bone_spine": 0.15, "bone_rib": 0.08,
    "node_pelvic": 0.17, "node_retroperitoneal": 0.10, "node_mesenteric": 0.05, "node_cervical": 0.05,
    "prostate_bed": 0.13, "liver": 0.09,
}
LOCATIONS = tuple(LOCATION_PROBABILITY)
#: location -> the site class of the published SUVmax table
LESION_SITE = {k: ("bone" if k.startswith("bone") else "node" if k.startswith("node") else
                   "prostate_bed" if k == "prostate_bed" else "visceral") for k in LOCATIONS}
#: site -> (median, IQR low, IQR high, min, max) SUVmax at first PSMA PET/CT (n = 152 patients)
SUVMAX_BY_SITE = {"bone": (24.0, 14.3, 37.9, 3.8, 127.0), "node": (16.7, 11.0, 28.0, 2.1, 138.0),
                  "prostate_bed": (10.1, 7.9, 19.9, 3.0, 68.0), "visceral": (17.5, 6.0, 27.0, 4.6, 45.0)}
#: PSMA-positive liver metastases: SUVmax mean, sd, then clipped to [min, max]
LIVER_SUVMAX = (10.27, 5.28, 4.6, 45.0)
#: share of bone lesions with low PSMA expression, and their SUVmax range
PSMA_LOW_FRACTION = 0.15
PSMA_LOW_SUVMAX = (2.0, 5.0)
#: location -> (median, log-sd, min, max) of the equivalent diameter in mm (log-normal)
LESION_DIAMETER = {
    "bone_pelvis": (12.0, 0.45, 4.0, 40.0), "bone_spine": (12.0, 0.45, 4.0, 40.0), "bone_rib": (9.0, 0.35, 4.0, 25.0),
    "node_pelvic": (9.0, 0.25, 4.0, 30.0), "node_retroperitoneal": (9.0, 0.25, 4.0, 30.0),
    "node_mesenteric": (9.0, 0.25, 4.0, 30.0), "node_cervical": (9.0, 0.25, 4.0, 30.0),
    "prostate_bed": (11.0, 0.35, 4.0, 30.0), "liver": (12.0, 0.45, 5.0, 40.0),
}
#: organ -> (mean, sd) of its physiological SUVmax on PSMA PET; the organ's activity is drawn
#: from it and divided by the organ's max/mean ratio in this phantom (:data:`_MAX_OVER_MEAN`,
#: measured over 20 cases: noise raises the maximum of a large organ, blur lowers a small one's),
#: so that the phantom's organ SUVmax matches the published one (docs/phantom.md)
ORGAN_SUVMAX = {"liver": (8.2, 2.5), "spleen": (10.9, 3.9), "kidney": (66.4, 25.4), "parotid": (24.4, 8.1),
                "submandibular": (26.7, 7.1), "lacrimal": (15.7, 7.2)}
_MAX_OVER_MEAN = {"liver": 2.1, "spleen": 1.6, "kidney": 1.03, "parotid": 1.06, "submandibular": 0.96, "lacrimal": 1.0}
#: a lesion larger than this (mL) has a necrotic core with this probability
NECROSIS_MIN_ML, NECROSIS_PROBABILITY = 2.0, 0.35

DEFAULT_SIZE = (100, 100, 130)
FULL_SIZE = (200, 200, 330)
DEFAULT_SPACING = (4.07, 4.07, 3.0)
_DEFAULT_SCALE = 0.5
_FULL_SCALE = 1.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # 1/2.3548
#: reconstructed PET resolution (FWHM, mm) drawn per case
PSF_FWHM_MM = (4.0, 7.0)
#: noise variance per unit SUV at the median count level (liver COV about 12 %), and the
#: log-sd of the count level over cases (injected activity x scan time / weight)
NOISE_K, COUNT_LEVEL_LOG_SD = 0.045, 0.35
#: a lesion within this distance of an organ of :data:`UPTAKE_ORGANS` is ``adjacent_to`` it
#: (about 1.5 x the median PSF FWHM: the organ's blurred uptake reaches the lesion); organs are
#: looked for up to :data:`ORGAN_SEARCH_MM` away
NEAR_ORGAN_MM, ORGAN_SEARCH_MM = 8.0, 30.0


@dataclass
class SyntheticCase:
    """One generated case, in memory.

    ``pet`` (SUV, float32), ``ct`` (HU, int16) and ``seg`` (uint8 0/1) share one grid;
    ``organs`` is a uint8 label map on the same grid (values in :data:`ORGAN_LABELS`);
    ``lesions`` has one dict per lesion (see :func:`generate_case`); ``info`` holds the
    per-case parameters (PSF, organ SUVs, geometry, ...).
    """

    case_id: str
    seed: int
    pet: sitk.Image
    ct: sitk.Image
    seg: sitk.Image
    organs: sitk.Image
    lesions: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    #: lesion instance map (0 = none, i = lesions[i-1]); not written to disk
    instances: np.ndarray | None = field(default=None, repr=False)

    def organ_mask(self, name: str) -> np.ndarray:
        """Boolean array (SimpleITK (z, y, x) order) of one organ, or of ``"bone"`` (all bone)
        or ``"body"`` (everything but the outside air)."""
        lab = sitk.GetArrayViewFromImage(self.organs)
        if name == "body":
            return lab != ORGAN_LABELS["background"]
        if name == "bone":
            return np.isin(lab, [ORGAN_LABELS[b] for b in BONE_LABELS])
        if name not in ORGAN_LABELS:
            raise KeyError(f"unknown organ {name!r}; known: {', '.join(ORGAN_LABELS)}")
        return lab == ORGAN_LABELS[name]


# ----------------------------------------------------------------------------- seeds


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a data set generated with ``seed`` (independent of N)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


# ----------------------------------------------------------------------------- grid


def _rotation(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _box_slices(g: Grid, lo, hi, pad: int = 1):
    """numpy (z, y, x) slices covering the world box ``[lo, hi]`` grown by ``pad`` voxels (None if outside)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    box = g.index_box(corners, pad)
    return None if box is None else Grid.array_slices(*box)


def _coords(g: Grid, sl=None):
    """World coordinates (X, Y, Z) of the voxels in ``sl``, float32, broadcastable (z, y, x)
    (zero terms of the grid matrix are skipped, so an axis-aligned grid gives thin arrays)."""
    if sl is None:
        sl = tuple(slice(0, n) for n in g.array_shape)
    k = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None, None]
    j = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :, None]
    i = np.arange(sl[2].start, sl[2].stop, dtype=np.float32)[None, None, :]
    out = []
    for w in range(3):
        acc = np.float32(g.origin[w])
        for col, arr in ((0, i), (1, j), (2, k)):
            if abs(g.matrix[w, col]) > 1e-12:
                acc = acc + np.float32(g.matrix[w, col]) * arr
        out.append(acc)
    return tuple(out)


# ----------------------------------------------------------------------------- anatomy


class _Anatomy:
    """Patient-space anatomy: maps world mm to patient mm ``u = (p - ref) / scale``."""

    def __init__(self, grid: Grid, ref: np.ndarray, scale: float, rng: np.random.Generator):
        self.g, self.ref, self.s = grid, np.asarray(ref, float), float(scale)
        j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        self.p = {
            "body_w": j(0.9, 1.1), "body_d": j(0.9, 1.1), "fat_mm": j(10, 25),
            "liver": j(0.9, 1.1), "spleen": j(0.85, 1.15), "kidney_z": j(-15, 15),
            "bladder_fill": j(0.6, 1.25), "lung": j(0.92, 1.08), "heart_x": j(15, 35),
        }
        self.rng = rng

    # world <-> patient
    def w(self, u) -> np.ndarray:
        return self.ref + self.s * np.asarray(u, float)

    def u_coords(self, sl):
        X, Y, Z = _coords(self.g, sl)
        r, s = self.ref, np.float32(self.s)
        return (X - np.float32(r[0])) / s, (Y - np.float32(r[1])) / s, (Z - np.float32(r[2])) / s

    def crop(self, lo_u, hi_u):
        sl = _box_slices(self.g, self.w(lo_u), self.w(hi_u))
        if sl is None:
            return None, None
        return sl, self.u_coords(sl)

    # primitives (patient mm)
    def ellipsoid(self, label_arr, lab, c, a, R=None, where=None, value=None):
        """Set ``label_arr`` to ``lab`` inside an ellipsoid (centre c, semi-axes a, rotation R).
        Returns (slices, normalised radius array in the crop) for further texture work."""
        c, a = np.asarray(c, float), np.asarray(a, float)
        ext = np.full(3, a.max()) if R is not None else a
        sl, xyz = self.crop(c - ext, c + ext)
        if sl is None:
            return None, None
        X, Y, Z = xyz
        dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
        if R is not None:
            R = np.asarray(R, float)
            dx, dy, dz = (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz,
                          R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz,
                          R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz)
        r = np.sqrt((dx / a[0]) ** 2 + (dy / a[1]) ** 2 + (dz / a[2]) ** 2)
        m = r <= 1.0
        if where is not None:
            m &= where(label_arr[sl])
        label_arr[sl][m] = lab
        return sl, np.where(m, r, np.inf)

    def tube(self, label_arr, lab, pts, radius_u, where=None):
        """Set ``lab`` inside a tube of radius ``radius_u`` (patient mm) around a polyline."""
        pts = np.asarray(pts, float)
        sl, xyz = self.crop(pts.min(0) - radius_u, pts.max(0) + radius_u)
        if sl is None:
            return None, None
        X, Y, Z = xyz
        d2, tpos = _polyline_dist2(X, Y, Z, pts)
        m = d2 <= radius_u ** 2
        if where is not None:
            m &= where(label_arr[sl])
        label_arr[sl][m] = lab
        return sl, np.where(m, tpos, np.nan)


def _polyline_dist2(X, Y, Z, pts):
    """Squared distance to a polyline and the arc-length parameter (0..1) of the nearest point."""
    seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)]) / max(seg_len.sum(), 1e-9)
    best = None
    tbest = None
    for n in range(len(pts) - 1):
        a, b = pts[n], pts[n + 1]
        ab = b - a
        L2 = float(ab @ ab)
        t = ((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / L2
        t = np.clip(t, 0.0, 1.0)
        d2 = (X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2
        tt = cum[n] + t * (cum[n + 1] - cum[n])
        if best is None:
            best, tbest = d2, np.broadcast_to(tt, d2.shape).copy()
        else:
            closer = d2 < best
            best = np.where(closer, d2, best)
            tbest = np.where(closer, tt, tbest)
    return best, tbest


def _smooth_field(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-sd smooth Gaussian random field (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return f / max(float(f.std()), 1e-6)


def _interp(z, zs, vs):
    return np.interp(z, zs, vs).astype(np.float32)


# body cross-section profile along z (patient mm): semi-axes a (lateral), b (AP), centre y
_PROFILE_Z = [-260, -40, 0, 60, 160, 300, 420, 560, 600, 640, 690, 760]
_PROFILE_A = [0, 0, 175, 180, 165, 160, 170, 175, 120, 60, 62, 80]
_PROFILE_B = [0, 0, 115, 115, 110, 110, 115, 110, 90, 60, 64, 95]
_PROFILE_Y = [0, 0, 5, 5, 5, 5, 5, 10, 20, 25, 20, 10]


def _build_anatomy(an: _Anatomy, lab: np.ndarray) -> dict[str, Any]:
    """Fill the organ label map; return geometry needed for lesions and textures (an organ family
    at a time, in this order: the draws of ``an.rng`` follow it)."""
    out: dict[str, Any] = {}
    _body(an, lab)
    _chest_and_vessels(an, lab, out)
    _bones(an, lab, out)
    _liver_spleen_kidneys(an, lab, out)
    _bowel_bladder_ureters(an, lab, out)
    _glands(an, lab)
    return out


def _inside(cur: np.ndarray) -> np.ndarray:
    """Inside the body: where a label map is not background."""
    return cur != ORGAN_LABELS["background"]


def _body(an: _Anatomy, lab: np.ndarray) -> None:
    """Body contour + subcutaneous fat (trunk, neck, head), and the thighs."""
    L, p, g = ORGAN_LABELS, an.p, an.g
    sl = tuple(slice(0, n) for n in g.array_shape)
    X, Y, Z = an.u_coords(sl)
    a = _interp(Z, _PROFILE_Z, _PROFILE_A) * np.float32(p["body_w"])
    b = _interp(Z, _PROFILE_Z, _PROFILE_B) * np.float32(p["body_d"])
    yc = _interp(Z, _PROFILE_Z, _PROFILE_Y)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt((X / np.maximum(a, 1e-3)) ** 2 + ((Y - yc) / np.maximum(b, 1e-3)) ** 2)
    trunk = (r <= 1.0) & (a > 1)
    fat_rel = np.float32(p["fat_mm"]) / np.maximum(b, 1e-3)
    fat = trunk & (r > 1.0 - fat_rel)
    # thighs below the pelvis (two cylinders that merge into the pelvis)
    thigh_r = np.float32(80 * p["body_w"])
    zt = np.clip((Z + 40.0) / 40.0, 0, 1)  # 0 below -40, 1 at 0
    thighs = np.zeros_like(trunk)
    for sx in (-1, 1):
        cx = sx * (95 - 20 * zt)
        rr = np.sqrt((X - cx) ** 2 + (Y - 5) ** 2)
        tr = (rr <= thigh_r) & (Z <= 0) & (Z >= -260)
        thighs |= tr
        fat |= tr & (rr > thigh_r - np.float32(p["fat_mm"])) & ~(trunk & ~fat)
    body = trunk | thighs
    lab[body] = L["soft_tissue"]
    lab[fat & body] = L["fat"]
    del X, Y, Z, a, b, yc, r, fat, thighs, trunk


def _chest_and_vessels(an: _Anatomy, lab: np.ndarray, out: dict) -> None:
    """Lungs, heart, vessels (``out``: the aorta's lower part and the iliac arteries)."""
    L, p, inside = ORGAN_LABELS, an.p, _inside
    lg = p["lung"]
    for sx in (-1, 1):
        an.ellipsoid(lab, L["lung"], (sx * 78, 20, 470), (62 * lg, 80 * lg, 135 * lg), where=inside)
    hx = p["heart_x"]
    an.ellipsoid(lab, L["blood"], (hx, -25, 400), (60, 50, 58), R=_rotation("y", 20), where=inside)
    aorta = np.array([[hx - 10, 0, 430], [25, 20, 520], [15, 40, 470], [10, 35, 330],
                      [5, 25, 190]])
    an.tube(lab, L["blood"], aorta, 11, where=inside)
    ivc = np.array([[-20, 20, 190], [-20, 25, 330], [-10, 0, 390]])
    an.tube(lab, L["blood"], ivc, 10, where=inside)
    iliac = {}
    for sx, name in ((1, "left"), (-1, "right")):
        pts = np.array([[5, 25, 190], [sx * 45, 25, 125], [sx * 70, 0, 55], [sx * 80, -15, 5]])
        an.tube(lab, L["blood"], pts, 6, where=inside)
        iliac[name] = pts
    out["aorta"], out["iliac"] = aorta[3:], iliac


def _bones(an: _Anatomy, lab: np.ndarray, out: dict) -> None:
    """Spine (``out["spine"]``), pelvis, femora and ribs."""
    L, inside = ORGAN_LABELS, _inside
    # spine: vertebral bodies with discs, plus posterior elements
    zs = np.array([60, 140, 330, 560, 640, 700], float)
    ys = np.array([70, 55, 60, 75, 40, 30], float)
    rs = np.array([24, 24, 19, 16, 11, 10], float)
    spine_pts = np.stack([np.zeros_like(zs), ys, zs], 1)
    sl, (X, Y, Z) = an.crop(np.array([-40, -10, 50]), np.array([40, 140, 710]))
    if sl is not None:
        yz = _interp(Z, zs, ys)
        rz = _interp(Z, zs, rs)
        body_v = (X ** 2 + (Y - yz) ** 2) <= rz ** 2
        period = np.where(Z > 600, 20.0, 32.0).astype(np.float32)
        disc = np.mod(Z, period) < 5.0
        post = ((X / (rz * 0.5)) ** 2 + ((Y - yz - rz * 1.6) / (rz * 0.7)) ** 2) <= 1.0
        sp = ((body_v & ~disc) | (post & ~disc)) & (Z >= 60) & (Z <= 700)
        cur = lab[sl]
        cur[sp & (cur != L["background"])] = L["bone_spine"]
    out["spine"] = spine_pts
    # pelvis: sacrum, iliac wings, acetabula, pubic bones
    an.ellipsoid(lab, L["bone_pelvis"], (0, 80, 95), (38, 18, 50), R=_rotation("x", -25), where=inside)
    for sx in (-1, 1):
        an.ellipsoid(lab, L["bone_pelvis"], (sx * 100, 40, 120), (18, 60, 48),
                     R=_rotation("z", sx * -30), where=inside)
        an.ellipsoid(lab, L["bone_pelvis"], (sx * 78, 10, 25), (30, 30, 30), where=inside)
        an.ellipsoid(lab, L["bone_pelvis"], (sx * 35, -40, 0), (35, 12, 14), R=_rotation("z", sx * 25),
                     where=inside)
        # femoral head + shaft
        an.ellipsoid(lab, L["bone_other"], (sx * 90, 10, 15), (22, 22, 22), where=inside)
        an.tube(lab, L["bone_other"], [[sx * 95, 10, 10], [sx * 110, 10, -40], [sx * 95, 5, -260]], 14,
                where=inside)
    # ribs: stripes of an elliptical shell around the chest
    sl, (X, Y, Z) = an.crop(np.array([-180, -130, 330]), np.array([180, 140, 590]))
    if sl is not None:
        rr = np.sqrt((X / 135) ** 2 + ((Y - 15) / 100) ** 2)
        ribs = (np.abs(rr - 1.0) < 0.07) & (np.mod(Z + 0.25 * (Y - 15), 26.0) < 9.0)
        cur = lab[sl]
        cur[ribs & (cur != L["background"])] = L["bone_other"]


def _liver_spleen_kidneys(an: _Anatomy, lab: np.ndarray, out: dict) -> None:
    """Liver, spleen and kidneys (``out``: the kidneys, their heights and the ureters' paths)."""
    L, p = ORGAN_LABELS, an.p
    lv = p["liver"]
    hepatic = lambda cur: (cur != L["background"]) & (cur != L["lung"]) & (cur != L["bone_spine"])  # noqa
    an.ellipsoid(lab, L["liver"], (-60, 0, 290), (100 * lv, 85 * lv, 80 * lv), R=_rotation("y", -25),
                 where=hepatic)
    sp_ = p["spleen"]
    an.ellipsoid(lab, L["spleen"], (100, 45, 300), (28 * sp_, 48 * sp_, 55 * sp_), R=_rotation("z", 30),
                 where=hepatic)
    kz = p["kidney_z"]
    kidneys, ureters = {}, {}
    soft = lambda cur: np.isin(cur, [L["soft_tissue"], L["fat"], L["liver"], L["spleen"]])  # noqa
    for sx, name in ((1, "left"), (-1, "right")):
        zc = 240 + kz + (0 if sx > 0 else -18)
        c = (sx * 65, 55, zc)
        sl_k, r_k = an.ellipsoid(lab, L["kidney"], c, (28, 24, 55), R=_rotation("z", sx * 25), where=soft)
        kidneys[name] = (sl_k, r_k)
        out.setdefault("kidney_z", {})[name] = zc
        pts = np.array([[sx * 45, 50, zc - 10], [sx * 42, 40, zc - 70], [sx * 48, 30, 130],
                        [sx * 60, 15, 70], [sx * 40, -10, 40], [sx * 18, -25, 40]])
        ureters[name] = pts
    out["kidneys"], out["ureters"] = kidneys, ureters


def _bowel_bladder_ureters(an: _Anatomy, lab: np.ndarray, out: dict) -> None:
    """Bowel (a thresholded random field, ``out["bowel_field"]``), bladder and ureters."""
    L, p, rng, g = ORGAN_LABELS, an.p, an.rng, an.g
    ureters = out["ureters"]
    # bowel: thresholded smooth random field in the abdomen, outside other organs
    sl, (X, Y, Z) = an.crop(np.array([-140, -100, 80]), np.array([140, 60, 240]))
    if sl is not None:
        shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
        sig = max(1.0, 9.0 * an.s / min(g.spacing))
        f1 = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig)
        f2 = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig * 1.5)
        f1 /= f1.std() + 1e-9
        f2 /= f2.std() + 1e-9
        reg = ((X / 130) ** 2 + ((Y + 15) / 80) ** 2 + ((Z - 160) / 80) ** 2) <= 1.0
        bowel = reg & (np.abs(f1) < 0.32)
        cur = lab[sl]
        cur[bowel & np.isin(cur, [L["soft_tissue"], L["fat"]])] = L["bowel"]
        out["bowel_field"] = (sl, f2)
    # bladder (filling varies case to case)
    bf = p["bladder_fill"]
    out["bladder"] = dict(c=np.array([0.0, -30.0, 35 + 25 * bf]), a=np.array([48, 38, 35]) * bf)
    an.ellipsoid(lab, L["bladder"], out["bladder"]["c"], out["bladder"]["a"],
                 where=lambda cur: np.isin(cur, [L["soft_tissue"], L["fat"], L["bowel"], L["blood"]]))
    # ureters (radius in world mm: 4 mm)
    out["ureter_slices"] = {}
    for name, pts in ureters.items():
        out["ureter_slices"][name] = an.tube(
            lab, L["ureter"], pts, 4.0 / an.s,
            where=lambda cur: np.isin(cur, [L["soft_tissue"], L["fat"], L["bowel"]]))


def _glands(an: _Anatomy, lab: np.ndarray) -> None:
    """Salivary and lacrimal glands."""
    L, inside = ORGAN_LABELS, _inside
    # salivary glands
    for sx in (-1, 1):
        an.ellipsoid(lab, L["parotid"], (sx * 50, 15, 705), (14, 24, 26), where=inside)
        an.ellipsoid(lab, L["submandibular"], (sx * 30, -5, 660), (15, 15, 12), where=inside)
        # lacrimal glands (superolateral orbit): above the default field of view, which ends at
        # the skull base like autoPET's; present when a grid reaches that high
        an.ellipsoid(lab, L["lacrimal"], (sx * 35, -60, 745), (10, 6, 5), where=inside)


# ----------------------------------------------------------------------------- values


def _organ_values(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    suv = {
        "background": 0.0, "soft_tissue": u(0.6, 1.1), "fat": u(0.25, 0.45), "lung": u(0.2, 0.4),
        "blood": u(1.0, 1.5), "bone_spine": u(0.9, 1.4), "bone_pelvis": u(0.8, 1.3),
        "bone_other": u(0.6, 1.0), "ureter": u(12, 40), "bladder": float(np.exp(rng.uniform(np.log(10), np.log(60)))),
        "bowel": u(5, 9),
    }
    for name, (mean, sd) in ORGAN_SUVMAX.items():  # aimed at the published SUVmax of the organ
        suv[name] = float(np.clip(mean + sd * rng.standard_normal(), mean - 1.5 * sd, mean + 1.5 * sd)) / _MAX_OVER_MEAN[name]
    hu = {
        "background": -1000.0, "soft_tissue": u(40, 55), "fat": u(-110, -90), "lung": u(-850, -760),
        "blood": u(35, 45), "bone_spine": u(250, 350), "bone_pelvis": u(250, 350),
        "bone_other": u(300, 400), "liver": u(50, 60), "spleen": u(40, 50), "kidney": u(30, 40),
        "ureter": 10.0, "bladder": u(2, 12), "bowel": 30.0, "parotid": u(30, 40),
        "submandibular": u(35, 45), "lacrimal": u(30, 40),
    }
    return suv, hu


# ----------------------------------------------------------------------------- lesions


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _lesion_shape(rng: np.random.Generator, R_mm: float) -> list[tuple]:
    """Random parameters of an irregular lesion: a perturbed union of 1-3 ellipsoids."""
    blobs = []
    for b in range(int(rng.integers(1, 4))):
        rot = _random_rotation(rng)
        ax = rng.uniform(0.7, 1.3, 3)
        ax /= ax.prod() ** (1 / 3)
        if b == 0:
            off, size = np.zeros(3), R_mm
        else:
            v = rng.standard_normal(3)
            off, size = R_mm * rng.uniform(0.4, 0.75) * v / np.linalg.norm(v), R_mm * rng.uniform(0.45, 0.75)
        waves = []
        for _ in range(3):  # low-order angular perturbation of the surface
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            waves.append((n, int(rng.integers(1, 4)), float(rng.uniform(0.03, 0.13)), float(rng.uniform(0, 2 * math.pi))))
        blobs.append((rot, ax, off, size, waves))
    return blobs


def _lesion_level(shape: list[tuple], dx, dy, dz) -> np.ndarray:
    """Irregular 'radius' field of ``shape`` at offsets (dx, dy, dz) mm from its centre: < 1 inside."""
    f = None
    for rot, ax, off, size, waves in shape:
        ex, ey, ez = dx - off[0], dy - off[1], dz - off[2]
        ux = rot[0, 0] * ex + rot[1, 0] * ey + rot[2, 0] * ez
        uy = rot[0, 1] * ex + rot[1, 1] * ey + rot[2, 1] * ez
        uz = rot[0, 2] * ex + rot[1, 2] * ey + rot[2, 2] * ez
        rad = np.sqrt((ux / ax[0]) ** 2 + (uy / ax[1]) ** 2 + (uz / ax[2]) ** 2) + 1e-6
        pert = np.ones_like(rad)
        for n, k, amp, ph in waves:
            pert = pert + amp * np.cos(math.pi * k * (n[0] * ux + n[1] * uy + n[2] * uz) / rad + ph)
        fb = rad / (size * pert)
        f = fb if f is None else np.minimum(f, fb)
    return f


#: sub-voxel sample offsets (in voxel units) for the partial-volume occupancy of a lesion
_SUB = np.array([(a, b, c) for a in (-1 / 3, 0.0, 1 / 3) for b in (-1 / 3, 0.0, 1 / 3) for c in (-1 / 3, 0.0, 1 / 3)])


def _occupancy(g: Grid, sl, c_w, shape, allowed: np.ndarray, volume_ml: float) -> "tuple[np.ndarray, np.ndarray] | None":
    """Partial-volume occupancy of a lesion of ``volume_ml`` in the voxels of ``sl``.

    The level field is sampled at 3 x 3 x 3 points per voxel; the level set ``f < t`` whose
    occupancy (restricted to ``allowed`` voxels) sums to the target volume is found by bisection.
    Returns ``(occupancy in [0, 1], level field at the voxel centres)`` or None when the box
    cannot hold the lesion.
    """
    X, Y, Z = _coords(g, sl)
    shp = allowed.shape
    M = g.matrix
    vox_ml = float(np.prod(g.spacing)) / 1000.0
    samples = []
    for o in _SUB:
        w = M @ o  # world offset of this sub-voxel point (mm)
        samples.append(_lesion_level(shape, X + np.float32(w[0] - c_w[0]), Y + np.float32(w[1] - c_w[1]),
                                     Z + np.float32(w[2] - c_w[2])))
    fs = np.stack([np.broadcast_to(f, shp) for f in samples]).astype(np.float32)
    centre = np.broadcast_to(samples[13], shp)
    lo, hi = 0.05, 1.8
    if (fs < hi).mean(0)[allowed].sum() * vox_ml < volume_ml:
        return None  # not enough room for it here
    for _ in range(30):
        t = 0.5 * (lo + hi)
        v = (fs < t).mean(0)[allowed].sum() * vox_ml
        lo, hi = (t, hi) if v < volume_ml else (lo, t)
    occ = np.where(allowed, (fs < hi).mean(0), 0.0).astype(np.float32)
    return occ, centre


class _SiteDraws:
    """The ways of drawing the world centre of a lesion of radius ``R`` (mm), from ``rng``."""

    def __init__(self, an: _Anatomy, R: float, rng: np.random.Generator):
        self.an, self.R, self.rng = an, R, rng

    def random_voxel(self, flat_idx):
        if flat_idx.size == 0:
            return None
        g, rng = self.an.g, self.rng
        kji = np.unravel_index(int(flat_idx[rng.integers(flat_idx.size)]), g.array_shape)
        return g.index_to_world(np.array(kji[::-1], float))

    def beside(self, pts, gap_u):
        an, R, rng = self.an, self.R, self.rng
        seg = int(rng.integers(len(pts) - 1))
        base = pts[seg] + rng.uniform(0.1, 0.9) * (pts[seg + 1] - pts[seg])
        v = rng.standard_normal(3)
        v[2] *= 0.3
        v /= np.linalg.norm(v)
        return an.w(base) + v * (gap_u * an.s + R * rng.uniform(0.6, 1.0) + rng.uniform(1.0, 4.0))

    def next_to_organ(self, c_u, a_u):
        """On the surface of an ellipsoidal organ (centre, semi-axes in patient mm), 1-4 mm off."""
        an, R, rng = self.an, self.R, self.rng
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        surf = an.w(np.asarray(c_u) + v * np.asarray(a_u))
        return surf + v * (R * rng.uniform(0.7, 1.0) + rng.uniform(1.0, 4.0))


def _lesion_site(an: _Anatomy, lab: np.ndarray, anat: dict, loc: str, R: float, rng: np.random.Generator,
                 organ_vox: dict) -> "tuple[np.ndarray, str] | None":
    """World centre and site description of a new lesion at ``loc`` (None when none is found)."""
    draw = _SiteDraws(an, R, rng)
    if loc in ("bone_pelvis", "bone_spine", "bone_rib"):
        c_w = draw.random_voxel(organ_vox[loc])
        if c_w is None:
            return None
        u = (c_w - an.ref) / an.s
        site = {"bone_pelvis": "sacrum" if abs(u[0]) < 45 and u[1] > 55 else "ilium/acetabulum",
                "bone_spine": "lumbar" if u[2] < 300 else "thoracic/cervical", "bone_rib": "rib"}[loc]
        return c_w, site
    if loc == "liver":
        c_w = draw.random_voxel(organ_vox["liver"])
        return None if c_w is None else (c_w, "liver")
    if loc in ("node_pelvic", "node_retroperitoneal", "node_mesenteric", "node_cervical"):
        return _node_site(an, anat, loc, R, rng, organ_vox, draw)
    # prostate bed, under the bladder
    bl = anat["bladder"]
    u = np.array([rng.uniform(-18, 18), bl["c"][1] + rng.uniform(5, 25), bl["c"][2] - bl["a"][2] - rng.uniform(-5, 12)])
    return an.w(u), "prostate bed"


def _node_site(an: _Anatomy, anat: dict, loc: str, R: float, rng: np.random.Generator, organ_vox: dict,
               draw: _SiteDraws) -> "tuple[np.ndarray, str] | None":
    """:func:`_lesion_site` of a lymph node (``loc`` ``node_*``)."""
    if loc == "node_pelvic":
        side = "left" if rng.random() < 0.5 else "right"
        if rng.random() < 0.35:  # next to the ureter (a classic false-positive trap)
            return draw.beside(anat["ureters"][side][2:], 3.5 / an.s), f"{side} pelvic, beside ureter"
        return draw.beside(anat["iliac"][side][1:], 6.0), f"{side} iliac"
    if loc == "node_retroperitoneal":
        if rng.random() < 0.4:  # at the renal hilum, next to the kidney
            side, sx = ("left", 1) if rng.random() < 0.5 else ("right", -1)
            zc = anat["kidney_z"][side]
            return draw.next_to_organ((sx * 33, 48, zc), (6, 10, 25)), f"{side} renal hilum"
        return draw.beside(anat["aorta"], 11.0), "para-aortic"
    if loc == "node_mesenteric":
        c_w = draw.random_voxel(organ_vox["bowel"])
        if c_w is None:
            return None
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        return c_w + v * (R * rng.uniform(0.8, 1.1) + rng.uniform(3.0, 8.0)), "mesenteric, beside bowel"
    # node_cervical
    sx = 1 if rng.random() < 0.5 else -1
    side = "left" if sx > 0 else "right"
    if rng.random() < 0.6:
        return draw.next_to_organ((sx * 30, -5, 660), (15, 15, 12)), f"{side} cervical level II, beside submandibular gland"
    return draw.next_to_organ((sx * 50, 15, 705), (14, 24, 26)), f"{side} cervical, beside parotid"


def _lesion_size_and_suvmax(loc: str, rng: np.random.Generator, suv: dict) -> tuple[float, float]:
    """Equivalent diameter (mm) and target SUVmax of a new lesion (docs/phantom.md: sources)."""
    median_d, sd_d, lo_d, hi_d = LESION_DIAMETER[loc]
    d = float(np.clip(median_d * math.exp(sd_d * rng.standard_normal()), lo_d, hi_d))
    site = LESION_SITE[loc]
    if loc == "liver":  # PSMA-positive liver metastases: SUVmax 10.3 +/- 5.3, above the liver
        lo = max(1.2 * suv["liver"], LIVER_SUVMAX[2])
        target = float(np.clip(LIVER_SUVMAX[0] + LIVER_SUVMAX[1] * rng.standard_normal(), lo, LIVER_SUVMAX[3]))
    elif site == "bone" and rng.random() < PSMA_LOW_FRACTION:  # PSMA-low bone lesion
        target = float(rng.uniform(*PSMA_LOW_SUVMAX))
    else:
        # a two-piece log-normal through the published median and quartiles, clipped to the range
        median, iqr_lo, iqr_hi, mn, mx = SUVMAX_BY_SITE[site]
        z = float(rng.standard_normal())
        sd = math.log((median / iqr_lo) if z < 0 else (iqr_hi / median)) / 0.6745
        target = float(np.clip(median * math.exp(sd * z), mn, mx))
    return d, target


def _organ_voxels(an: _Anatomy, lab: np.ndarray) -> dict[str, np.ndarray]:
    """Flat indices of the voxels a lesion centre is drawn from, per location (ribs: bone_other
    above the pelvis, not the femora)."""
    L, g = ORGAN_LABELS, an.g
    flat = lab.ravel()
    organ_vox = {k: np.flatnonzero(flat == L[k]) for k in ("bone_spine", "bone_pelvis", "liver", "bowel")}
    ribs = np.flatnonzero(flat == L["bone_other"])
    if ribs.size:  # ribs: bone_other above the pelvis (not the femora)
        kk = np.unravel_index(ribs, g.array_shape)
        zw = np.stack([kk[2], kk[1], kk[0]], 1).astype(float) @ g.matrix.T + g.origin
        ribs = ribs[((zw - an.ref) / an.s)[:, 2] > 300]
    organ_vox["bone_rib"] = ribs
    return organ_vox


def _place_lesions(an: _Anatomy, lab: np.ndarray, anat: dict, n: int, rng: np.random.Generator,
                   suv: dict) -> tuple[np.ndarray, list[dict], list[float]]:
    """Place ``n`` lesions; return the instance map, per-lesion dicts (with the partial-volume
    occupancy ``_occ`` on ``_slices``), per-lesion target SUVmax."""
    L = ORGAN_LABELS
    g = an.g
    inst = np.zeros(g.array_shape, np.uint8)
    occupied = np.zeros(g.array_shape, bool)  # lesion voxels dilated by the 26-neighbourhood
    lesions: list[dict] = []
    soft_ok = np.array([L["soft_tissue"], L["fat"]])
    bone_ok = np.array([L["bone_spine"], L["bone_pelvis"], L["bone_other"], L["soft_tissue"], L["fat"]])
    liver_ok = np.array([L["liver"]])
    organ_vox = _organ_voxels(an, lab)
    targets: list[float] = []
    ball = ndimage.generate_binary_structure(3, 3)
    names = list(LOCATION_PROBABILITY)
    p_loc = np.array([LOCATION_PROBABILITY[k] for k in names])
    vox_ml = float(np.prod(g.spacing)) / 1000.0

    for _ in range(n):
        for _attempt in range(30):
            loc = str(rng.choice(names, p=p_loc / p_loc.sum()))
            d_mm, target = _lesion_size_and_suvmax(loc, rng, suv)
            R = d_mm / 2.0
            found = _lesion_site(an, lab, anat, loc, R, rng, organ_vox)
            if found is None:
                continue
            c_w, site = found
            half = 1.6 * R + 2.0 * max(g.spacing)
            sl = _box_slices(g, c_w - half, c_w + half, pad=1)
            if sl is None:
                continue
            ok = liver_ok if loc == "liver" else bone_ok if loc.startswith("bone") else soft_ok
            allowed = np.isin(lab[sl], ok) & ~occupied[sl]
            shape = _lesion_shape(rng, R)
            res = _occupancy(g, sl, c_w, shape, allowed, (math.pi / 6.0) * d_mm ** 3 / 1000.0)
            if res is None:
                continue
            occ, f = res
            m = occ >= 0.5
            if not m.any():  # smaller than half a voxel everywhere: the annotator draws its core voxel
                m = occ == occ.max()
                if occ.max() < 0.2:
                    continue
            cc = cc3d.connected_components(m.astype(np.uint8), connectivity=18)
            core = np.unravel_index(int(np.argmax(np.where(m, occ - 1e-3 * f, -1.0))), m.shape)
            m = cc == cc[core]
            occ = occ * ndimage.binary_dilation(m, ball)  # drop partial voxels of any other piece
            idx = len(lesions) + 1
            inst[sl][m] = idx
            big = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, nmax)) for s, nmax in zip(sl, g.array_shape))
            occupied[big] |= ndimage.binary_dilation(inst[big] == idx, ball)
            targets.append(target)
            lesions.append({"index": idx, "location": loc, "site": site, "target_diameter_mm": round(d_mm, 2),
                            "target_suv_max": round(target, 3), "_slices": sl, "_f": f, "_occ": occ})
            break
    return inst, lesions, targets


# ----------------------------------------------------------------------------- main API


def _grid_for(direction: str, full_size: bool, rng: np.random.Generator) -> tuple[Grid, float, np.ndarray]:
    size = FULL_SIZE if full_size else DEFAULT_SIZE
    scale = _FULL_SCALE if full_size else _DEFAULT_SCALE
    spacing = np.array(DEFAULT_SPACING)
    if direction == "lps":
        D = np.eye(3)
    elif direction == "flipped":
        D = np.diag([-1.0, -1.0, 1.0])  # what a RAS-stored NIfTI reads as in SimpleITK
    elif direction == "oblique":
        D = _rotation("z", float(rng.uniform(8, 15)) * rng.choice([-1, 1])) @ \
            _rotation("x", float(rng.uniform(10, 20)) * rng.choice([-1, 1]))
    else:
        raise ValueError(f"direction must be 'lps', 'flipped' or 'oblique', not {direction!r}")
    # scanner-like world position of the FOV centre (table height, bed position)
    centre = np.array([rng.uniform(-8, 8), rng.uniform(-40, -10), rng.uniform(-900, -500)])
    extent = spacing * (np.array(size) - 1)
    origin = centre - D @ (extent / 2.0)
    # patient z range covered: default [-45, 735] * 0.5 ; full [-250, 740] * 1.0
    u_mid_z = 345.0 if not full_size else 245.0
    ref = centre - scale * np.array([0.0, 0.0, u_mid_z]) + np.array([0.0, 0.0, rng.uniform(-6, 6)])
    return Grid(size, spacing, origin, D.ravel()), scale, ref


def generate_case(seed: int, case_id: str = "synth_000", full_size: bool = False,
                  direction: str = "lps", n_lesions: int | None = None) -> SyntheticCase:
    """Generate one case in memory (deterministic for ``seed``).

    ``direction``: ``"lps"`` (identity direction cosines), ``"flipped"`` (``diag(-1,-1,1)``)
    or ``"oblique"`` (rotated 10-25 degrees).  ``n_lesions``: None draws 0-12 (0 with
    probability 0.15), otherwise exactly that many are attempted (0-12).

    Each entry of ``lesions``: ``index`` (value in ``instances``), ``location`` (one of
    :data:`LOCATIONS`), ``site``, ``target_diameter_mm``, ``target_suv_max``, ``host_suv`` (activity
    of the tissue it sits in), ``uptake_suv`` (activity before blur), ``necrotic``,
    ``nearest_organ`` and ``organ_distance_mm`` (the nearest organ of :data:`UPTAKE_ORGANS` within
    30 mm, voxel centre to voxel centre), ``adjacent_to`` (that organ when within
    :data:`NEAR_ORGAN_MM`, else None), ``voxels``, ``volume_ml``, ``equivalent_diameter_mm``,
    ``suv_max``, ``suv_mean`` (measured on the final PET inside the label), ``tbr``
    (``suv_max / host_suv``), ``centroid_lps`` (mm), ``centroid_index`` (SimpleITK (i, j, k)),
    ``bbox_index`` ((i0, j0, k0), (i1, j1, k1))
    inclusive.
    """
    if n_lesions is not None and not (0 <= int(n_lesions) <= 12):
        raise ValueError(f"n_lesions must be in 0..12, not {n_lesions}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(int(seed))
    rng_geo, rng_anat, rng_val, rng_les, rng_noise = (np.random.default_rng(s) for s in
                                                     np.random.SeedSequence(int(seed)).spawn(5))
    grid, scale, ref = _grid_for(direction, full_size, rng_geo)
    an = _Anatomy(grid, ref, scale, rng_anat)
    lab = np.zeros(grid.array_shape, np.uint8)
    anat = _build_anatomy(an, lab)
    suv, hu = _organ_values(rng_val)
    act, ct = _tissue_maps(lab, anat, suv, hu, rng_val)

    # lesions ------------------------------------------------------------------------------
    if n_lesions is None:
        n_lesions = 0 if rng.random() < 0.15 else int(1 + rng.binomial(11, 0.3))
    inst, lesions, targets = _place_lesions(an, lab, anat, int(n_lesions), rng_les, suv)
    fwhm = float(rng_val.uniform(*PSF_FWHM_MM))
    sigma_vox = fwhm * _FWHM_TO_SIGMA / np.asarray(grid.spacing[::-1])  # numpy (z, y, x) order
    host = act.copy()  # the activity of the tissue each lesion sits in, before any lesion
    for les, target in zip(lesions, targets):
        _paint_lesion(les, target, act, ct, host, inst, grid, sigma_vox, rng_val)

    pet, counts, k_noise = _pet_physics(act, grid, sigma_vox, rng_val, rng_noise)
    ct = _ct_physics(ct, grid, rng_noise)
    seg = (inst > 0).astype(np.uint8)
    final = _measure_lesions(lesions, inst, lab, pet, grid)
    # renumber instances consecutively (they already are: 1..n)
    info = _case_info(direction, full_size, scale, fwhm, k_noise, counts, suv, hu, grid, t0)
    return SyntheticCase(
        case_id=case_id, seed=int(seed), pet=grid.image_from_array(pet), ct=grid.image_from_array(ct),
        seg=grid.image_from_array(seg), organs=grid.image_from_array(lab), lesions=final, info=info, instances=inst)


def _case_info(direction: str, full_size: bool, scale: float, fwhm: float, k_noise: float, counts: float,
               suv: dict, hu: dict, grid: Grid, t0: float) -> dict[str, Any]:
    """The case's ``info``: how it was made (geometry, organ values, PET physics, time taken)."""
    return {
        "direction_kind": direction,
        "full_size": bool(full_size),
        "anatomy_scale": scale,
        "psf_fwhm_mm": round(fwhm, 3),
        "noise_k": round(k_noise, 4),
        "count_level": round(counts, 4),
        "organ_suv": {k: round(v, 3) for k, v in suv.items()},
        "organ_hu": {k: round(v, 1) for k, v in hu.items()},
        "geometry": {
            "size": list(grid.size),
            "spacing": [float(v) for v in grid.spacing],
            "origin": [round(float(v), 4) for v in grid.origin],
            "direction": [round(float(v), 8) for v in grid.direction],
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _tissue_maps(lab: np.ndarray, anat: dict, suv: dict, hu: dict,
                 rng_val: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Activity and CT from the label map, with textures: bowel patchy 2-10, kidney cortex vs
    medulla, ureter peristalsis, bone cortex (draws from ``rng_val``: the ureter phases, then the
    cortex HU)."""
    L = ORGAN_LABELS
    lut_suv = np.zeros(256, np.float32)
    lut_hu = np.full(256, -1000.0, np.float32)
    for name, v in L.items():
        lut_suv[v] = suv[name]
        lut_hu[v] = hu[name]
    act = lut_suv[lab]
    ct = lut_hu[lab]
    if "bowel_field" in anat:
        sl, f2 = anat["bowel_field"]
        m = lab[sl] == L["bowel"]
        patch = np.clip(suv["bowel"] * (1.0 + 0.6 * f2), 2.0, 18.0).astype(np.float32)
        act[sl][m] = patch[m]
        gas = (f2 < -0.9) & m
        ct[sl][gas] = -600.0
    for name, (sl, r) in anat["kidneys"].items():
        if sl is None:
            continue
        m = lab[sl] == L["kidney"]
        medulla = m & (r < 0.6)
        act[sl][medulla] = suv["kidney"] * 0.55
    for name, (sl, tpos) in anat["ureter_slices"].items():
        if sl is None:
            continue
        m = lab[sl] == L["ureter"]
        ph = float(rng_val.uniform(0, 2 * math.pi))
        mod = 0.55 + 0.45 * np.cos(2 * math.pi * 3.0 * np.nan_to_num(tpos) + ph)
        act[sl][m] = (suv["ureter"] * mod[m]).astype(np.float32)
    bone = np.isin(lab, [L[b] for b in BONE_LABELS])
    cortex = bone & ~ndimage.binary_erosion(bone)
    ct[cortex] = float(rng_val.uniform(900, 1200))
    return act, ct


def _paint_lesion(les: dict, target: float, act: np.ndarray, ct: np.ndarray, host: np.ndarray, inst: np.ndarray,
                  grid: Grid, sigma_vox: np.ndarray, rng_val: np.random.Generator) -> None:
    """One lesion's activity (aimed at its target SUVmax through the PSF) and CT, in place; adds
    ``uptake_suv``, ``host_suv`` and ``necrotic`` to ``les``."""
    sl, occ = les["_slices"], les["_occ"]
    m = inst[sl] == les["index"]
    bg = float(np.median(host[sl][m])) if m.any() else 1.0
    # texture inside the lesion: brighter core, smooth heterogeneity, sometimes a necrotic core
    f = np.broadcast_to(np.asarray(les["_f"]), occ.shape)
    tex = (1.12 - 0.25 * np.clip(f, 0, 1.2)) * np.clip(
        1.0 + 0.2 * _smooth_field(occ.shape, 1.0, rng_val), 0.5, 1.6)
    necrotic = m.sum() * float(np.prod(grid.spacing)) / 1000.0 >= NECROSIS_MIN_ML and \
        rng_val.random() < NECROSIS_PROBABILITY
    if necrotic:
        tex = np.where(f < float(rng_val.uniform(0.45, 0.65)), tex * float(rng_val.uniform(0.15, 0.4)), tex)
    # partial-volume recovery of this lesion alone (occupancy x texture through the PSF), to
    # aim the measured SUVmax at the target
    pad = tuple(slice(max(s.start - 4, 0), min(s.stop + 4, n)) for s, n in zip(sl, grid.array_shape))
    ind = np.zeros(tuple(p.stop - p.start for p in pad), np.float32)
    inner = tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(sl, pad))
    ind[inner] = occ * tex
    rc = float(ndimage.gaussian_filter(ind, sigma_vox, mode="constant").max())
    uptake = min(bg + (target - bg) / max(rc, 1e-3), 3.0 * target)
    act[sl] = (act[sl] * (1.0 - occ) + occ * uptake * tex).astype(np.float32)
    les.update({"uptake_suv": round(float(uptake), 3), "host_suv": round(bg, 3), "necrotic": bool(necrotic)})
    if les["location"].startswith("bone"):
        ct[sl][m] = np.maximum(ct[sl][m], float(rng_val.uniform(450, 950)))
    elif les["location"] == "liver":
        ct[sl][m] = ct[sl][m] - float(rng_val.uniform(10, 25))  # hypodense on CT
    else:
        ct[sl][m] = float(rng_val.uniform(30, 50))


def _pet_physics(act: np.ndarray, grid: Grid, sigma_vox: np.ndarray, rng_val: np.random.Generator,
                 rng_noise: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """PET physics: PSF blur of the partial-volume activity, count-dependent correlated noise;
    returns the PET, the scan's relative count level and the noise factor."""
    pet = ndimage.gaussian_filter(act, sigma_vox, mode="nearest")
    noise = rng_noise.standard_normal(grid.array_shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, 0.8)
    noise *= np.float32(1.0 / max(float(noise.std()), 1e-6))
    counts = float(math.exp(rng_val.normal(0.0, COUNT_LEVEL_LOG_SD)))  # relative count level of the scan
    k_noise = NOISE_K / counts  # noise variance = k * SUV: Poisson-like, inversely proportional to counts
    pet = pet + np.sqrt(k_noise * np.maximum(pet, 0) + 0.002).astype(np.float32) * noise
    pet = np.maximum(pet, 0).astype(np.float32)
    return pet, counts, k_noise


def _ct_physics(ct: np.ndarray, grid: Grid, rng_noise: np.random.Generator) -> np.ndarray:
    """CT: CTres-like partial volume and noise (after the PET's noise in ``rng_noise``)."""
    ct = ndimage.gaussian_filter(ct, 0.6, mode="nearest")
    ct += 12.0 * rng_noise.standard_normal(grid.array_shape, dtype=np.float32)
    return np.clip(np.round(ct), -1024, 3071).astype(np.int16)


def _measure_lesions(lesions: list[dict], inst: np.ndarray, lab: np.ndarray, pet: np.ndarray,
                     grid: Grid) -> list[dict]:
    """Per-lesion bookkeeping on the final PET: size, SUV, TBR, the nearest uptake organ, where it
    is; drops the placement's private keys."""
    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    final = []
    organ_vals = {nm: ORGAN_LABELS[nm] for nm in UPTAKE_ORGANS}
    reach = [int(math.ceil(ORGAN_SEARCH_MM / sp)) + 1 for sp in grid.spacing[::-1]]
    for les in lesions:
        sl = les.pop("_slices")
        les.pop("_f")
        les.pop("_occ")
        m = inst[sl] == les["index"]
        zz, yy, xx = np.nonzero(m)
        off = np.array([sl[2].start, sl[1].start, sl[0].start])
        ijk = np.stack([xx, yy, zz], 1) + off
        cen = ijk.mean(0)
        n = int(m.sum())
        vals = pet[sl][m]
        nearest, odist = _nearest_organ(les, ijk, inst, lab, grid, organ_vals, reach)
        les.update({
            "adjacent_to": nearest if odist is not None and odist <= NEAR_ORGAN_MM else None,
            "nearest_organ": nearest,
            "organ_distance_mm": None if odist is None else round(odist, 2),
            "tbr": round(float(vals.max()) / max(les["host_suv"], 1e-3), 3),
            "voxels": n,
            "volume_ml": round(n * vox_ml, 4),
            "equivalent_diameter_mm": round((6.0 * n * vox_ml * 1000.0 / math.pi) ** (1 / 3), 2),
            "suv_max": round(float(vals.max()), 3),
            "suv_mean": round(float(vals.mean()), 3),
            "centroid_lps": [round(float(v), 2) for v in grid.index_to_world(cen)],
            "centroid_index": [round(float(v), 2) for v in cen],
            "bbox_index": [ijk.min(0).astype(int).tolist(), ijk.max(0).astype(int).tolist()],
        })
        final.append(les)
    return final


def _nearest_organ(les: dict, ijk: np.ndarray, inst: np.ndarray, lab: np.ndarray, grid: Grid, organ_vals: dict,
                   reach: list) -> "tuple[str | None, float | None]":
    """The nearest organ with physiological uptake and its distance (voxel centre to voxel centre,
    mm), searched within ``reach`` voxels of the lesion's box."""
    box = tuple(slice(max(int(lo) - r, 0), min(int(hi) + 1 + r, nmax)) for lo, hi, r, nmax in
                zip(ijk.min(0)[::-1], ijk.max(0)[::-1], reach, grid.array_shape))
    dist = ndimage.distance_transform_edt(inst[box] != les["index"], sampling=grid.spacing[::-1])
    near = {nm: float(dist[lab[box] == v].min()) for nm, v in organ_vals.items() if np.any(lab[box] == v)}
    nearest = min(near, key=near.get) if near else None
    odist = near[nearest] if nearest else None
    return nearest, odist


def case_record(case: SyntheticCase, n_lesions_requested: int | None = None) -> dict[str, Any]:
    """The ``dataset.json`` entry of one case."""
    vols = [les["volume_ml"] for les in case.lesions]
    rec = {
        "case_id": case.case_id,
        "seed": case.seed,
        "n_lesions_requested": n_lesions_requested,
        "files": {"pet": f"{case.case_id}/{PET_NAME}", "ct": f"{case.case_id}/{CT_NAME}",
                  "seg": f"{case.case_id}/{SEG_NAME}", "organs": f"{case.case_id}/{ORGANS_NAME}"},
        "n_lesions": len(case.lesions),
        "lesion_volume_ml": round(float(sum(vols)), 4),
    }
    rec.update({k: v for k, v in case.info.items() if k != "seconds"})
    rec["lesions"] = case.lesions
    return rec


def write_case(case: SyntheticCase, out_dir: "str | Path", organs: bool = True) -> Path:
    """Write one case in the autoPET layout under ``out_dir/<case_id>/`` (atomically)."""
    d = Path(out_dir) / case.case_id
    d.mkdir(parents=True, exist_ok=True)
    write_image_atomic(case.pet, d / PET_NAME)
    write_image_atomic(case.ct, d / CT_NAME)
    write_image_atomic(case.seg, d / SEG_NAME)
    if organs:
        write_image_atomic(case.organs, d / ORGANS_NAME)
    return d


def dataset_directions(n_cases: int, n_oblique: int) -> list[str]:
    """Direction kind of each case: the first ``n_oblique`` cases alternate oblique/flipped."""
    return [("oblique" if i % 2 == 0 else "flipped") if i < n_oblique else "lps" for i in range(n_cases)]


def generate_dataset(out_dir: "str | Path", n_cases: int, seed: int = 0, full_size: bool = False,
                     n_oblique: int = 0, progress: bool = True) -> Path:
    """Generate ``n_cases`` cases under ``out_dir`` and write ``dataset.json``; return its path.

    Case ``i`` is ``synth_{i:03d}``, generated with :func:`case_seed` ``(seed, i)``; every
    fourth case (``i % 4 == 3``) is lesion-free, as in real cohorts.  The first
    ``n_oblique`` cases get a non-identity direction (alternately oblique and flipped).
    """
    if n_cases < 1:
        raise ValueError("n_cases must be at least 1")
    if not (0 <= n_oblique <= n_cases):
        raise ValueError("n_oblique must be between 0 and n_cases")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = dataset_directions(n_cases, n_oblique)
    records = []
    it = range(n_cases)
    bar = show_progress(total=n_cases, desc="synth", unit="case", enabled=progress)
    t0 = time.perf_counter()
    for i in it:
        cid = f"synth_{i:03d}"
        req = 0 if i % 4 == 3 else None
        case = generate_case(case_seed(seed, i), cid, full_size=full_size, direction=dirs[i], n_lesions=req)
        write_case(case, out)
        records.append(case_record(case, req))
        bar.update(1)
        bar.set_postfix(lesions=len(case.lesions))
    bar.close()
    all_les = [les for r in records for les in r["lesions"]]
    vols = np.array([les["volume_ml"] for les in all_les]) if all_les else np.zeros(0)
    meta = {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_cases": int(n_cases),
        "full_size": bool(full_size),
        "n_oblique": int(n_oblique),
        "layout": {"pet": PET_NAME, "ct": CT_NAME, "seg": SEG_NAME, "organs": ORGANS_NAME},
        "units": {"pet": "SUVbw", "ct": "HU", "seg": "binary lesion mask (support before PSF blur)"},
        "organ_labels": ORGAN_LABELS,
        "summary": {
            "n_lesions": len(all_les),
            "lesion_free_cases": sum(1 for r in records if r["n_lesions"] == 0),
            "lesions_lt_1p5_ml": int((vols < 1.5).sum()),
            "lesions_ge_4_ml": int((vols >= 4.0).sum()),
            "seconds": round(time.perf_counter() - t0, 2),
        },
        "cases": records,
    }
    return write_json_atomic(out / "dataset.json", meta)
