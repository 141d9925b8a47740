"""Whole scans on the network grid: a RAS+ grid at the CNN spacing covering the PET, filled by SimpleITK.

The CNNs see the whole scan, not a lesion crop, but on the same kind of grid as SAM-Med3D's crops
(docs/architecture.md): world-aligned RAS+ axes, ``(x, y, z)`` array order, a
:class:`~sam_l1dfl.data.geometry.CropGeometry` whose ``size`` is the scan's extent at the
network spacing (:func:`whole_image_geometry`).  SimpleITK does all reading and resampling
(:func:`~sam_l1dfl.data.geometry.resample_to_crop` there, :func:`~sam_l1dfl.data.geometry.crop_to_image`
back); MONAI transforms only ever see these arrays.

Channels: ``[CT, PET]``.  CT min-max scaled to [0, 1] per image (computed on the resampled volume,
padding included as -1024 HU), PET in SUV, unnormalised (the paper's setting).  The label uses
:func:`~sam_l1dfl.data.preprocess.crop_mask` (nearest neighbour, small lesions kept).

:func:`body_mask` (CT > a HU threshold, from the scaled CT channel and the volume's
``ct_range``) is the body the training crops are cut from (``augment.body_hu``).

Resampled volumes are cached as ``.npz`` under ``cache_dir`` keyed by the files' identity (path,
size, mtime) and the preprocessing, so every run of a comparison reads each scan once.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam_l1dfl.data.geometry import LPS_TO_RAS, CropGeometry, image_world_bounds, resample_to_crop
from sam_l1dfl.data.io import load_case
from sam_l1dfl.data.preprocess import crop_mask
from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

    from sam_l1dfl.cnn.config import CnnPreprocessConfig
    from sam_l1dfl.data.io import Case, CaseRecord

CACHE_VERSION = 2  # 2: + ct_range


def whole_image_geometry(image: "sitk.Image", spacing: float) -> CropGeometry:
    """The RAS+ grid at ``spacing`` mm covering ``image``'s voxel extent (centred on it).

    For oblique images the grid covers the world-aligned bounding box of the extent, so every
    original voxel lies inside it.
    """
    s = float(spacing)
    lo, hi = image_world_bounds(image)  # LPS
    ras_lo = np.array([-hi[0], -hi[1], lo[2]])
    ras_hi = np.array([-lo[0], -lo[1], hi[2]])
    ext = ras_hi - ras_lo
    size = np.maximum(1, np.ceil(ext / s - 1e-6)).astype(int)
    centre_ras = (ras_lo + ras_hi) / 2.0
    origin_ras = centre_ras - s * (size - 1) / 2.0
    origin_lps = LPS_TO_RAS @ origin_ras
    return CropGeometry(tuple(origin_lps), (s, s, s), tuple(int(v) for v in size))


def minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def channels_and_ct_range(case: "Case", geom: CropGeometry,
                          pre: "CnnPreprocessConfig") -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`network_channels` and the (min, max) HU of the resampled CT (what min-max scaled)."""
    if case.ct_native is None:
        raise InputError(getattr(case.record, "pet", None), f"case {case.case_id} has no CT; the CNNs take CT + PET")
    pet = resample_to_crop(case.pet, geom, "linear", 0.0)
    ct = resample_to_crop(case.ct_native, geom, "linear", pre.ct_pad_hu)
    ct_range = (float(ct.min()), float(ct.max()))
    if pre.ct_normalization == "minmax":
        ct = minmax(ct)
    return np.stack([ct, pet]).astype(np.float32, copy=False), ct_range


def network_channels(case: "Case", geom: CropGeometry, pre: "CnnPreprocessConfig") -> np.ndarray:
    """``(2, X, Y, Z)`` float32: CT (min-max [0, 1] or HU) and PET (SUV) on ``geom``."""
    return channels_and_ct_range(case, geom, pre)[0]


def body_mask(volume: dict, hu: float, pre: "CnnPreprocessConfig") -> np.ndarray:
    """``(1, X, Y, Z)`` bool: CT > ``hu`` (HU) on a volume of :func:`load_volume`, read from its
    CT channel (min-max scaled back through ``ct_range``); all True when nothing exceeds ``hu``
    (a crop to the body then keeps the whole volume)."""
    ct = volume["image"][:1]
    if pre.ct_normalization == "minmax":
        lo, hi = (float(x) for x in volume["ct_range"])
        thr = (hu - lo) / (hi - lo) if hi > lo else (0.0 if hu < lo else 1.0)
    else:
        thr = hu
    m = ct > thr
    return m if m.any() else np.ones_like(m)


def _file_id(p: "Path | None") -> Any:
    if p is None:
        return None
    st = Path(p).stat()
    return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]


def cache_key(rec: "CaseRecord", pre: "CnnPreprocessConfig") -> str:
    import dataclasses

    ident = {"v": CACHE_VERSION, "pet": _file_id(rec.pet), "ct": _file_id(rec.ct), "label": _file_id(rec.label),
             "pre": dataclasses.asdict(pre)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def load_volume(rec: "CaseRecord", pre: "CnnPreprocessConfig", cache_dir: "Path | None" = None,
                with_label: bool = True) -> dict[str, Any]:
    """``{"image": (2, X, Y, Z) float32, "label": (1, X, Y, Z) uint8 | None, "geom": CropGeometry, "case_id",
    "ct_range": (min, max) HU of the CT before scaling}``."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{rec.case_id}-{cache_key(rec, pre)}.npz"
        if path.is_file():
            try:
                z = np.load(path)
                geom = CropGeometry.from_arrays(z["origin_lps"], z["spacing"], z["size"])
                lab = z["label"] if ("label" in z.files and with_label) else None
                return {"image": z["image"], "label": lab, "geom": geom, "case_id": rec.case_id,
                        "ct_range": tuple(float(x) for x in z["ct_range"])}
            except Exception:  # a damaged cache entry is recomputed
                pass
    case = load_case(rec, load_label=with_label)
    geom = whole_image_geometry(case.pet, pre.spacing)
    image, ct_range = channels_and_ct_range(case, geom, pre)
    label = None
    if with_label and case.label is not None:
        label = crop_mask(case.label, geom)[None]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"image": image, "origin_lps": np.asarray(geom.origin_lps), "spacing": np.asarray(geom.spacing),
                  "size": np.asarray(geom.size), "ct_range": np.asarray(ct_range)}
        if label is not None:
            arrays["label"] = label
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return {"image": image, "label": label, "geom": geom, "case_id": rec.case_id, "ct_range": ct_range}


def n_windows(size, roi: int, overlap: float) -> int:
    """Number of sliding windows MONAI visits for a volume of ``size`` (for progress figures)."""
    step = max(1, int(roi * (1 - overlap)))
    return int(np.prod([1 if n <= roi else math.ceil((n - roi) / step) + 1 for n in size]))


__all__ = ["body_mask", "cache_key", "channels_and_ct_range", "load_volume", "minmax", "network_channels", "n_windows",
           "whole_image_geometry"]
