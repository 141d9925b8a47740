"""Per-lesion results of the learning benchmark: rows joined with the phantom's strata, detection
per stratum, and paired differences between methods with case-resampling bootstrap CIs.

* :func:`lesion_rows` -- one row per reference lesion of an evaluation (``sam-l1dfl evaluate``'s
  ``lesions.csv`` rows of kind ``ref``) with the strata of
  :func:`~sam_l1dfl.compare.learning.lesion_strata`, matched to the phantom's ``dataset.json``
  lesion by centroid (both are the mean voxel position of the same 18-connected component).
* :func:`fp_rows` -- predicted components that match no lesion under C3, each given the strata of
  the nearest reference lesion of its case (with one prompt per lesion, a stray component belongs
  to the lesion whose prompt made it).
* :func:`detection` -- TP/FN over lesion rows and FP over those components: F1 under C3.
* :func:`paired_difference` -- per lesion, method A's Dice minus method B's (each averaged over its
  training seeds first), mean and 95 % CI from a bootstrap over cases
  (:func:`~sam_l1dfl.metrics.bootstrap.bootstrap_cluster_mean_ci`): lesions of one case are not
  independent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from sam_l1dfl.errors import InputError
from sam_l1dfl.metrics.bootstrap import bootstrap_cluster_mean_ci

#: centroids of the same component agree to float rounding; anything farther is another lesion
MATCH_MM = 1.0


def phantom_lesions(test_root: "str | Path") -> dict[str, list[dict]]:
    """``{case_id: [lesion records]}`` from the phantom's ``dataset.json`` under ``test_root``."""
    path = Path(test_root) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the phantom's lesion list: {exc}") from None
    return {c["case_id"]: c.get("lesions", []) for c in meta["cases"]}


def _nearest(lesions: Sequence[dict], xyz: Sequence[float]) -> "tuple[dict | None, float]":
    best, dist = None, math.inf
    for les in lesions:
        d = float(np.linalg.norm(np.asarray(les["centroid_lps"], float) - np.asarray(xyz, float)))
        if d < dist:
            best, dist = les, d
    return best, dist


def lesion_rows(evaluation, test_root: "str | Path", strata) -> list[dict[str, Any]]:
    """Per reference lesion of ``evaluation`` (an :class:`~sam_l1dfl.metrics.dataset.EvaluationResult`):
    ``case``, ``lesion_id``, ``dice``, ``detected_c3``, ``volume_ml`` and the strata
    (``strata(record) -> {key: name}``) of the phantom lesion it is."""
    truth = phantom_lesions(test_root)
    rows = []
    for r in evaluation.lesions:
        if r["kind"] != "ref":
            continue
        les, dist = _nearest(truth.get(r["case"], []), (r["x_mm"], r["y_mm"], r["z_mm"]))
        if les is None or dist > MATCH_MM:
            raise InputError(test_root, f"case {r['case']}: reference lesion {r['lesion_id']} is not in the phantom's "
                                        f"dataset.json (nearest centroid {dist:.2f} mm away)")
        rows.append({"case": r["case"], "lesion_id": r["lesion_id"], "phantom_index": les["index"],
                     "dice": float(r["dice"]), "detected_c3": bool(r.get("detected_c3")),
                     "volume_ml": float(r["volume_ml"]), "pred_volume_ml": float(r["pred_volume_ml"]),
                     **strata(les)})
    return rows


def fp_rows(evaluation, test_root: "str | Path", strata) -> list[dict[str, Any]]:
    """Predicted components that are false positives under C3, with the strata of the nearest
    reference lesion of their case (none for a case without lesions)."""
    truth = phantom_lesions(test_root)
    rows = []
    for r in evaluation.lesions:
        if r["kind"] != "pred" or not r.get("fp_c3"):
            continue
        les, _ = _nearest(truth.get(r["case"], []), (r["x_mm"], r["y_mm"], r["z_mm"]))
        rows.append({"case": r["case"], "volume_ml": float(r["volume_ml"]), **(strata(les) if les else {})})
    return rows


def select(rows: Iterable[dict], key: "str | None" = None, value: "str | None" = None) -> list[dict]:
    """The rows of one stratum (all rows when ``key`` is None)."""
    return [r for r in rows if key is None or r.get(key) == value]


def detection(lesions: Sequence[dict], fps: Sequence[dict]) -> dict[str, float]:
    """C3 TP, FN, FP and F1 (NaN without any lesion or component)."""
    tp = sum(1 for r in lesions if r["detected_c3"])
    fn = len(lesions) - tp
    fp = len(fps)
    den = 2 * tp + fp + fn
    return {"tp": tp, "fn": fn, "fp": fp, "f1": 2 * tp / den if den else math.nan}


def mean_over_seeds(runs: Sequence[Sequence[dict]], field: str = "dice") -> dict[tuple, float]:
    """``{(case, lesion_id): mean of field over the runs}`` (one run per training seed)."""
    acc: dict[tuple, list[float]] = {}
    for rows in runs:
        for r in rows:
            acc.setdefault((r["case"], r["lesion_id"]), []).append(float(r[field]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def paired_difference(a_runs: Sequence[Sequence[dict]], b_runs: Sequence[Sequence[dict]],
                      lesions: Sequence[dict], n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean per-lesion Dice difference A − B over ``lesions`` (rows naming ``case`` and
    ``lesion_id``), each method first averaged over its runs, with a case-bootstrap 95 % CI."""
    a, b = mean_over_seeds(a_runs), mean_over_seeds(b_runs)
    keys = [(r["case"], r["lesion_id"]) for r in lesions]
    diffs = [a[k] - b[k] for k in keys]
    return bootstrap_cluster_mean_ci(diffs, [k[0] for k in keys], n_resamples=n_resamples, seed=seed)


__all__ = ["MATCH_MM", "detection", "fp_rows", "lesion_rows", "mean_over_seeds", "paired_difference",
           "phantom_lesions", "select"]
