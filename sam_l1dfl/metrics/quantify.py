"""Clinical read-out: lesion count, TMTV, SUVmax, SUVmean, TLU, and their agreement.

Per mask (reference or prediction) of one case:

* ``lesion_count``: number of 18-connected components;
* ``tmtv_ml``: total lesion volume in mL (voxels × voxel volume);
* ``suv_max`` / ``suv_mean``: max / mean PET value over all lesion voxels (NaN for an empty
  mask or without PET);
* ``tlu``: total lesion uptake = SUVmean × TMTV (SUV·mL; 0 for an empty mask).

Not part of the per-case read-out (``QUANTITIES``) but used by the loss comparison's strata:
:func:`dissemination_mm`, the authors' tumour dissemination **Dmax** (``metrics/metrics.py:
calculate_patient_level_dissemination`` in ObedDzik/pca_segment): the largest distance between the
centres of any two foreground voxels of a scan, in mm (the authors report cm), 0 for an empty mask.

Agreement between predicted and reference values over cases (:func:`agreement`): Pearson r,
Spearman ρ, and the Bland–Altman mean difference (prediction − reference) with 95 % limits
of agreement (mean ± 1.96 SD of the differences, SD with ddof=1).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .components import AUTOPET_CONNECTIVITY, label_components
from .volume import voxel_volume_ml

QUANTITIES = ("lesion_count", "tmtv_ml", "suv_max", "suv_mean", "tlu")


def quantify(
    mask: np.ndarray,
    spacing: Sequence[float],
    pet: np.ndarray | None = None,
    lesion_count: int | None = None,
    connectivity: int = AUTOPET_CONNECTIVITY,
) -> dict[str, float]:
    """Lesion count, TMTV, SUVmax, SUVmean and TLU of one mask (``lesion_count`` may be given
    when the components are already known)."""
    m = np.asarray(mask) > 0
    if lesion_count is None:
        lesion_count = label_components(m, connectivity)[1]
    nvox = int(np.count_nonzero(m))
    tmtv = nvox * voxel_volume_ml(spacing)
    out = {"lesion_count": int(lesion_count), "tmtv_ml": tmtv}
    if pet is None:
        out.update(suv_max=float("nan"), suv_mean=float("nan"), tlu=float("nan"))
        return out
    pet = np.asarray(pet)
    if pet.shape != m.shape:
        raise ValueError(f"PET shape {pet.shape} differs from mask shape {m.shape}")
    if nvox == 0:
        out.update(suv_max=float("nan"), suv_mean=float("nan"), tlu=0.0)
        return out
    vals = pet[m].astype(np.float64)
    mean = float(vals.mean())
    out.update(suv_max=float(vals.max()), suv_mean=mean, tlu=mean * tmtv)
    return out


def dissemination_mm(mask: np.ndarray, spacing: Sequence[float], max_points: int = 4096) -> float:
    """Dmax: the largest distance (mm) between two foreground voxel centres of ``mask`` (``spacing``
    in array axis order); 0 for an empty mask.  Exact: the farthest pair lies on the convex hull, so
    only hull vertices are compared when there are many voxels."""
    voxel_volume_ml(spacing)  # validates the spacing
    pts = np.argwhere(np.asarray(mask) > 0).astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    if len(pts) < 2:
        return 0.0
    if len(pts) > max_points:
        from scipy.spatial import ConvexHull

        pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]
    best = 0.0
    for i in range(0, len(pts), 256):
        d2 = ((pts[i:i + 256, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def agreement(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """Agreement of paired values (pairs with a NaN are dropped).

    Returns ``n``, ``pearson_r``, ``spearman_rho`` (NaN with fewer than 3 pairs or a constant
    series), ``mean_diff`` (pred − ref), ``sd_diff``, ``loa_lower``, ``loa_upper``.
    """
    from scipy import stats

    p = np.asarray(pred, dtype=float)
    r = np.asarray(ref, dtype=float)
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    n = int(p.size)
    nan = float("nan")
    out = {"n": n, "pearson_r": nan, "spearman_rho": nan, "mean_diff": nan, "sd_diff": nan,
           "loa_lower": nan, "loa_upper": nan}
    if n == 0:
        return out
    d = p - r
    out["mean_diff"] = float(d.mean())
    if n >= 2:
        sd = float(d.std(ddof=1))
        out.update(sd_diff=sd, loa_lower=out["mean_diff"] - 1.96 * sd, loa_upper=out["mean_diff"] + 1.96 * sd)
    if n >= 3 and np.ptp(p) > 0 and np.ptp(r) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["pearson_r"] = float(stats.pearsonr(p, r)[0])
            out["spearman_rho"] = float(stats.spearmanr(p, r)[0])
    return out
