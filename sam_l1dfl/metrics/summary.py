"""Evaluation tables: the columns of ``metrics.csv`` and ``lesions.csv``, the metric definitions,
and :func:`summarize_run`, the data-set figures of one run computed from those rows.

Pure functions of rows (no files, no pictures): :mod:`.dataset` fills the rows and calls
:func:`summarize_run`; :mod:`.report` writes them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .bootstrap import N_RESAMPLES, bootstrap_mean_ci, bootstrap_pooled_ci
from .detection import CRITERIA, STRATA, strata_summary
from .quantify import QUANTITIES, agreement

CASE_COLUMNS = [
    "case", "clicks", "dice", "fpv_ml", "fnv_ml",
    *[f"{k}_{c}" for c in ("c1", "c2", "c3") for k in ("tp", "fp", "fn", "precision", "recall", "f1")],
    *[f"{w}_{q}" for q in QUANTITIES for w in ("ref", "pred")],
    "voxel_ml", "spacing_mm", "has_pet", "gt_file", "pred_file", "pet_file",
]
LESION_COLUMNS = [
    "case", "clicks", "kind", "lesion_id", "voxels", "volume_ml", "stratum",
    "x_mm", "y_mm", "z_mm", "dice", "best_iou", "n_overlapping", "overlapping_ids",
    "detected_c1", "detected_c2", "detected_c3", "fp_c1", "fp_c2", "fp_c3",
    "suv_max", "suv_mean", "tlu", "pred_volume_ml", "pred_suv_max", "pred_suv_mean",
]

DEFINITIONS = {
    "dice": "Foreground Dice 2|P∩R|/(|P|+|R|) per case; NaN (left out of means) when the reference is empty.",
    "fpv_ml": "Volume (mL) of predicted 18-connected components with no voxel in the reference (autoPET FPV).",
    "fnv_ml": "Volume (mL) of reference 18-connected components with no voxel in the prediction (autoPET FNV).",
    "lesions": "Lesions are 18-connected components of the binarised masks; touching lesions are one lesion.",
    "c1": "C1: a predicted component overlaps the reference lesion by at least one voxel.",
    "c2": "C2: IoU between the reference lesion and one predicted component >= 0.5.",
    "c3": "C3: the reference lesion's SUVmax voxel (first in array order on ties) lies in the predicted component (needs PET).",
    "counting": ("A reference lesion is matched at most once: TP if at least one predicted component meets the "
                 "criterion with it (a lesion split in pieces is one TP), else FN. A predicted component that "
                 "meets the criterion with no reference lesion is one FP (so under C2/C3 a piece that touches a "
                 "lesion but fails the criterion is an FP). A component meeting it for several lesions (a merge) "
                 "makes each a TP; merges lower C2 and the per-lesion Dice. precision=TP/(TP+FP), "
                 "recall=TP/(TP+FN), F1=2TP/(2TP+FP+FN), NaN when the denominator is 0."),
    "totals": "Data-set precision/recall/F1 pool TP, FP, FN over cases; f1_case_mean averages per-case F1.",
    "lesion_dice": "Per-lesion Dice: reference lesion vs the union of predicted components overlapping it (0 if none).",
    "strata": "Size strata by reference lesion volume: <1.5 mL, 1.5-4 mL (1.5 <= v < 4), >=4 mL; FP components by their own volume.",
    "quantification": ("Per mask: lesion count, TMTV (mL), SUVmax, SUVmean over all lesion voxels, TLU = SUVmean x TMTV. "
                       "Agreement: Pearson r, Spearman rho, Bland-Altman mean difference (pred - ref) and 95% limits "
                       "(mean +/- 1.96 SD)."),
    "ci": "95% CIs: percentile bootstrap over cases (lesions for per-lesion Dice), seeded.",
}


# --------------------------------------------------------------------------- summary


def summarize_run(
    rows: Sequence[dict[str, Any]], lesions: Sequence[dict[str, Any]],
    n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> dict[str, Any]:
    """Data-set figures of one run (one click count) from the per-case and per-lesion rows."""
    s: dict[str, Any] = {
        "clicks": rows[0]["clicks"] if rows else None,
        "n_cases": len(rows),
        "n_negative_cases": sum(1 for r in rows if r["ref_lesion_count"] == 0),
        "n_ref_lesions": sum(1 for l in lesions if l["kind"] == "ref"),
        "n_pred_components": sum(1 for l in lesions if l["kind"] == "pred"),
    }
    for k in ("dice", "fpv_ml", "fnv_ml"):
        s[k] = bootstrap_mean_ci([r[k] for r in rows], n_resamples, seed=seed)
    det: dict[str, Any] = {}
    for c in CRITERIA:
        rc = [r for r in rows if r.get(f"tp_{c}") is not None]
        if not rc:
            continue
        tp, fp, fn = ([int(r[f"{k}_{c}"]) for r in rc] for k in ("tp", "fp", "fn"))
        det[c] = {"n_cases": len(rc), "tp": sum(tp), "fp": sum(fp), "fn": sum(fn)}
        for which in ("precision", "recall", "f1"):
            det[c][which] = bootstrap_pooled_ci(tp, fp, fn, which, n_resamples, seed=seed)
        det[c]["f1_case_mean"] = bootstrap_mean_ci([r[f"f1_{c}"] for r in rc], n_resamples, seed=seed)
    s["detection"] = det
    refl = [l for l in lesions if l["kind"] == "ref"]
    predl = [l for l in lesions if l["kind"] == "pred"]
    s["lesion_dice"] = bootstrap_mean_ci([l["dice"] for l in refl], n_resamples, seed=seed)
    strata = strata_summary(refl, criteria=[c for c in CRITERIA if c in det])
    for name, _, _ in STRATA:
        strata[name]["n_fp_c1"] = sum(1 for l in predl if l["stratum"] == name and l.get("fp_c1"))
    s["strata"] = strata
    quant: dict[str, Any] = {}
    has_pet = any(r["has_pet"] for r in rows)
    for q in QUANTITIES:
        if q in ("suv_max", "suv_mean", "tlu") and not has_pet:
            continue
        pv = [r[f"pred_{q}"] for r in rows]
        rv = [r[f"ref_{q}"] for r in rows]
        quant[q] = {"ref_mean": _nanmean(rv), "pred_mean": _nanmean(pv), **agreement(pv, rv)}
    detected = [l for l in refl if l.get("detected_c1")]
    quant["lesion_volume_ml"] = agreement([l["pred_volume_ml"] for l in detected], [l["volume_ml"] for l in detected])
    if has_pet:
        quant["lesion_suv_max"] = agreement([l["pred_suv_max"] for l in detected], [l["suv_max"] for l in detected])
    s["quantification"] = quant
    return s


def _nanmean(v: Sequence[Any]) -> float:
    a = np.array([np.nan if x is None else x for x in v], dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


__all__ = ["CASE_COLUMNS", "DEFINITIONS", "LESION_COLUMNS", "summarize_run"]
