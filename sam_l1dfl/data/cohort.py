"""A broad synthetic cohort for *pretraining* the stand-in SAM-Med3D (not the PSMA task).

The stand-in foundation model (:mod:`scripts/pretrain_standin.py`, shipped in
``sam_l1dfl/resources/``) must behave like a promptable model pretrained on many kinds of
images, so that PSMA PET lesions are a domain shift for it, as they are for the published
SAM-Med3D-turbo weights (mostly CT and MRI organs).  Each case of this cohort is one random
"scan":

* **Modality** ``ct`` (HU-like: air −1000, tissue 0–80, bright or dark organs), ``pet``
  (positive activity, Gaussian PSF, activity-dependent noise) or ``mr`` (arbitrary positive
  scale, multiplicative bias field, Rician-like noise).  Intensities are then scaled by a
  random factor (not for ``ct``), so absolute values carry no meaning.
* **Grid**: 72–112 voxels per axis, spacing 1.0–4.0 mm per axis (anisotropic allowed), and
  sometimes a flipped direction.
* **Anatomy-free structure**: a body ellipsoid, 2–5 large unlabelled "organs" (distractors)
  and smooth texture.
* **Targets** (the label): up to 8 objects per case (3–8 attempted; placement can fail),
  ellipsoids, lobulated blobs (unions of ellipsoids) or rounded boxes, equivalent radius 2–40 mm
  (log-uniform; at least 0.9 voxel spacing), with *positive or negative* contrast against what
  surrounds them; about a third sit against an organ, half in PET-like scans, where organs have
  physiological-uptake-like values up to 40 × the tissue and most targets are hot spots.  Targets
  never touch each other (one voxel of background between them, 26-neighbourhood), so every
  connected component of ``SEG`` is one target, as the fine-tuning data pipeline expects.

Cases are written in the autoPET layout (``<case>/SUV.nii.gz`` and ``SEG.nii.gz``; "SUV" is
only the file name the pipeline discovers: the values are whatever the modality gives), so the
pretraining runs through exactly the same data, crop, prompt and training code as fine-tuning.

Public API: :func:`generate_cohort_case` (in memory) and :func:`generate_cohort` (writes a
data set).  Case ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sam_l1dfl.data.synthetic import PET_NAME, SEG_NAME
from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic
from sam_l1dfl.seeding import seed_of

FORMAT = "sam-l1dfl-pretraining-cohort"
COHORT_VERSION = "2.0"
MODALITIES = ("ct", "pet", "mr")
#: target equivalent radius range (mm), drawn log-uniformly (version 2.0: down to 2 mm, as
#: SA-Med3D-140K holds lesions of a few millimetres; at least about two voxels across)
RADIUS_MM = (2.0, 40.0)
#: the seed of held-out cohort cases (the stand-in's size calibration); no pretraining uses it
HELDOUT_SEED = 777


def describe_cohort() -> str:
    """One sentence on what this cohort version holds (for the stand-in's model card)."""
    return (f"CT-like (HU), PET-like (PSF blur, activity-dependent noise; organs with uptake up to 40 x the tissue and "
            f"half the targets against them) and MR-like (bias field, Rician-like noise) scans on 1.0-4.0 mm grids, "
            f"with unlabelled organs and 3-8 labelled objects per case (ellipsoids, lobulated blobs, rounded boxes, "
            f"{RADIUS_MM[0]:g}-{RADIUS_MM[1]:g} mm radius, log-uniform) of positive or negative contrast.")


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _shape_level(coords: list[np.ndarray], centre: np.ndarray, radius: float, kind: str,
                 rng: np.random.Generator) -> np.ndarray:
    """A level function (<= 1 inside) of one random shape, evaluated on ``coords`` (mm, z y x)."""
    rel = np.stack([c - m for c, m in zip(coords, centre)], axis=-1)
    parts = 1 if kind != "blob" else int(rng.integers(2, 5))
    level = np.full(rel.shape[:-1], np.inf)
    for p in range(parts):
        axes = radius * np.exp(rng.uniform(-0.45, 0.45, size=3))
        off = np.zeros(3) if p == 0 else rng.normal(scale=0.55 * radius, size=3)
        local = (rel - off) @ _rotation(rng)
        if kind == "box":
            power = 4.0
            lv = np.sum(np.abs(local / axes) ** power, axis=-1) ** (1.0 / power)
        else:
            lv = np.sqrt(np.sum((local / axes) ** 2, axis=-1))
        level = np.minimum(level, lv)
    return level


def _smooth_noise(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma_vox)
    s = float(n.std())
    return n / s if s > 0 else n


def generate_cohort_case(seed: int, index: int) -> "tuple[sitk.Image, sitk.Image, dict]":
    """``(image, label, info)`` of cohort case ``index`` (see the module docstring)."""
    rng = np.random.default_rng(seed_of("cohort", seed, index))
    modality = MODALITIES[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
    shape = tuple(int(v) for v in rng.integers(72, 113, size=3))  # (z, y, x)
    spacing = np.exp(rng.uniform(math.log(1.0), math.log(4.0), size=3))
    if rng.random() < 0.6:  # most scans are near-isotropic in-plane
        spacing[1] = spacing[2]
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)], indexing="ij")
    extent = np.array(shape) * spacing
    mid = extent / 2.0

    values, body, body_axes, organ_levels, tissue = _background_and_organs(shape, coords, extent, mid, modality, rng)
    label, targets = _place_targets(values, coords, body, body_axes, organ_levels, shape, spacing, mid, modality, rng)
    img = _scan_physics(values, shape, spacing, tissue, modality, rng)
    image, seg = _to_images(img, label, spacing, rng)
    info = {"modality": modality, "size": list(shape[::-1]), "spacing": [round(float(s), 3) for s in spacing[::-1]],
            "targets": targets}
    return image, seg, info


def _background_and_organs(shape: tuple, coords: list, extent: np.ndarray, mid: np.ndarray, modality: str,
                           rng: np.random.Generator) -> tuple:
    """Body and organs: a value map before physics; returns it with the body mask and axes, the
    organs' shape levels and the tissue value."""
    body_axes = extent * rng.uniform(0.42, 0.56, size=3)
    body = np.sqrt(sum(((c - m) / a) ** 2 for c, m, a in zip(coords, mid, body_axes))) <= 1.0
    if modality == "ct":
        outside, tissue = -1000.0, rng.uniform(0.0, 60.0)
        organ_values = lambda: rng.choice([rng.uniform(-900, -600), rng.uniform(-120, -60),  # noqa: E731
                                           rng.uniform(20, 90), rng.uniform(150, 900)])
    elif modality == "pet":  # organs with physiological uptake: often much brighter than tissue
        outside, tissue = 0.0, 1.0
        organ_values = lambda: float(np.exp(rng.uniform(math.log(0.3), math.log(40.0))))  # noqa: E731
    else:
        outside, tissue = 0.0, 1.0
        organ_values = lambda: float(np.exp(rng.uniform(math.log(0.2), math.log(12.0))))  # noqa: E731
    values = np.where(body, tissue, outside).astype(np.float32)
    values += (body * _smooth_noise(shape, 4.0, rng) * (8.0 if modality == "ct" else 0.08 * tissue)).astype(np.float32)
    organs = np.zeros(shape, bool)
    organ_levels = []
    for _ in range(int(rng.integers(2, 6))):
        centre = mid + rng.uniform(-0.3, 0.3, size=3) * extent
        radius = float(np.exp(rng.uniform(math.log(15.0), math.log(45.0))))
        lv = _shape_level(coords, centre, radius, str(rng.choice(["ellipsoid", "blob"])), rng)
        inside = (lv <= 1.0) & body
        values[inside] = organ_values()
        organs |= inside
        organ_levels.append(lv)
    return values, body, body_axes, organ_levels, tissue


def _place_targets(values: np.ndarray, coords: list, body: np.ndarray, body_axes: np.ndarray, organ_levels: list,
                   shape: tuple, spacing: np.ndarray, mid: np.ndarray, modality: str,
                   rng: np.random.Generator) -> "tuple[np.ndarray, list[dict]]":
    """The targets, painted into ``values`` (in place): their label and descriptions."""
    label = np.zeros(shape, bool)
    blocked = np.zeros(shape, bool)  # targets and their 26-neighbourhood
    targets = []
    n_targets = int(rng.integers(3, 9))
    near_organ = 0.5 if modality == "pet" else 0.35  # PET: hot spots next to bright organs
    for _ in range(80):
        if len(targets) == n_targets:
            break
        radius = float(np.exp(rng.uniform(math.log(RADIUS_MM[0]), math.log(RADIUS_MM[1]))))
        radius = max(radius, 0.9 * float(spacing.max()))  # at least about two voxels across
        if organ_levels and rng.random() < near_organ:  # against an organ: on its surface
            lv = organ_levels[int(rng.integers(len(organ_levels)))]
            surface = np.argwhere((lv > 0.95) & (lv < 1.05) & body)
            if not len(surface):
                continue
            centre = surface[int(rng.integers(len(surface)))] * spacing
        else:
            centre = mid + rng.uniform(-0.38, 0.38, size=3) * body_axes * 2 * 0.8
        kind = str(rng.choice(["ellipsoid", "blob", "box"], p=[0.45, 0.4, 0.15]))
        inside = (_shape_level(coords, centre, radius, kind, rng) <= 1.0) & body
        if inside.sum() < 4 or (inside & blocked).any():
            continue
        local = float(np.median(values[inside]))
        sign = 1.0 if rng.random() < (0.85 if modality == "pet" else 0.65) else -1.0
        if modality == "ct":
            delta = sign * rng.uniform(40.0, 400.0)
        else:
            delta = local * (rng.uniform(1.0, 8.0) if sign > 0 else -rng.uniform(0.4, 0.85))
        texture = 1.0 + 0.15 * _smooth_noise(shape, 1.5, rng)[inside]
        values[inside] = local + delta * texture
        label |= inside
        blocked |= ndimage.binary_dilation(inside, structure=np.ones((3, 3, 3), bool))
        targets.append({"kind": kind, "radius_mm": round(radius, 2), "contrast": "positive" if sign > 0 else "negative",
                        "voxels": int(inside.sum())})
    return label, targets


def _scan_physics(values: np.ndarray, shape: tuple, spacing: np.ndarray, tissue: float, modality: str,
                  rng: np.random.Generator) -> np.ndarray:
    """The modality's blur, noise and intensity scale."""
    if modality == "pet":
        fwhm = rng.uniform(4.0, 8.0)
        img = ndimage.gaussian_filter(values, fwhm / 2.3548 / spacing)
        img = np.clip(img, 0, None)
        img = img + np.sqrt(img * rng.uniform(0.01, 0.05)) * _smooth_noise(shape, 0.8, rng)
        img = np.clip(img, 0, None)
    elif modality == "ct":
        img = ndimage.gaussian_filter(values, 0.6 / spacing * spacing.min())
        img = img + rng.uniform(5.0, 30.0) * rng.normal(size=shape).astype(np.float32)
    else:
        img = ndimage.gaussian_filter(values, 0.7)
        img = img * np.exp(0.25 * _smooth_noise(shape, 20.0, rng))
        sigma = rng.uniform(0.02, 0.08) * tissue
        img = np.hypot(img + sigma * rng.normal(size=shape), sigma * rng.normal(size=shape))
    if modality != "ct":
        img = img * float(np.exp(rng.uniform(math.log(0.05), math.log(200.0))))
    return img


def _to_images(img: np.ndarray, label: np.ndarray, spacing: np.ndarray,
               rng: np.random.Generator) -> "tuple[sitk.Image, sitk.Image]":
    """The image and its label on a (sometimes flipped) grid at a random origin."""
    direction = np.eye(3)
    if rng.random() < 0.3:
        direction = np.diag([-1.0, -1.0, 1.0])
    image = sitk.GetImageFromArray(img.astype(np.float32))
    seg = sitk.GetImageFromArray(label.astype(np.uint8))
    origin = rng.uniform(-300, 100, size=3)
    for im in (image, seg):
        im.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # numpy (z, y, x) -> ITK (x, y, z)
        im.SetOrigin(tuple(float(o) for o in origin))
        im.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image, seg


def generate_cohort(out_dir: "str | Path", n_cases: int, seed: int = 0) -> Path:
    """Write ``n_cases`` cohort cases ``pre_000 ...`` under ``out_dir`` and ``dataset.json``; return it.

    A folder already holding this cohort (same seed, version and size) is kept as it is; any other
    ``pre_*`` content there is replaced, so no case of another cohort is left to be discovered.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "dataset.json"
    if index.is_file():
        try:
            old = json.loads(index.read_text())
        except (OSError, ValueError):
            old = {}
        if (old.get("format"), old.get("version"), old.get("seed"), len(old.get("cases", []))) == \
                (FORMAT, COHORT_VERSION, seed, n_cases) and \
                all((out / c["case_id"] / SEG_NAME).is_file() for c in old["cases"]):
            return index  # already written by an earlier call
    for extra in out.glob("pre_*"):  # another seed, version or size: every case is written anew
        if extra.is_dir() and not (extra.name[4:].isdigit() and int(extra.name[4:]) < n_cases):
            shutil.rmtree(extra)
    records = []
    for i in range(n_cases):
        case_dir = out / f"pre_{i:03d}"
        image, seg, info = generate_cohort_case(seed, i)
        case_dir.mkdir(exist_ok=True)
        write_image_atomic(image, case_dir / PET_NAME)
        write_image_atomic(seg, case_dir / SEG_NAME)
        records.append({"case_id": case_dir.name, **info})
    return write_json_atomic(out / "dataset.json", {"format": FORMAT, "version": COHORT_VERSION, "seed": seed,
                                                    "cases": records})


__all__ = ["COHORT_VERSION", "FORMAT", "HELDOUT_SEED", "MODALITIES", "RADIUS_MM", "describe_cohort", "generate_cohort", "generate_cohort_case"]
