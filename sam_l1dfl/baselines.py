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
"""

from __future__ import annotations

import numpy as np

from sam_l1dfl.data.lesions import label_components

BODY_CT_HU = -500.0
BODY_PET_SUV = 0.1
HOT_REGION_SUV = 3.0
PERCENT_OF_MAX = 0.41
METHODS = ("suv4", "suv3", "suv41")
#: Row labels of the methods in reports.
LABELS = {"suv4": "SUV>=4", "suv3": "SUV>=3", "suv41": "41% SUVmax"}


def body_mask(pet: np.ndarray, ct: "np.ndarray | None" = None, ct_hu: float = BODY_CT_HU,
              pet_suv: float = BODY_PET_SUV) -> np.ndarray:
    """Boolean body mask (see the module docstring)."""
    from scipy import ndimage

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
    from scipy import ndimage

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


__all__ = ["BODY_CT_HU", "BODY_PET_SUV", "HOT_REGION_SUV", "LABELS", "METHODS", "PERCENT_OF_MAX", "body_mask",
           "threshold_segment"]
