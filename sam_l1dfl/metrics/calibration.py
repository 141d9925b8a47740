"""Calibration of predicted lesion probabilities near the lesions: reliability, ECE, bimodality.

A whole-body scan is almost all background, so calibration over all its voxels says little about
lesions.  Here it is measured over the **lesion margin**: the voxels within ``margin_mm`` (default
:data:`MARGIN_MM` = 10 mm, Euclidean, in world units) of a reference **or** a predicted lesion
voxel (:func:`lesion_margin`), which includes both masks.

* **Reliability** (:func:`reliability_bins`): ``n_bins`` equal-width bins of the predicted
  probability on [0, 1] (the last bin closed, as ``numpy.histogram``); per bin the voxel count,
  the sum of probabilities and the number of reference lesion voxels.
* **ECE** (:func:`expected_calibration_error`) = Σ_b (n_b / N) · |ȳ_b − p̄_b|, with ȳ_b the share
  of lesion voxels and p̄_b the mean probability in bin b (NaN with no voxel).
* **Mid share** (:func:`mid_share`): the share of voxels with probability in [0.1, 0.9) (:data:`MID`);
  a bimodal, well-separated prediction has a small mid share.
* :func:`case_calibration` computes all of them for one case plus the probability histograms of
  correctly and incorrectly classified margin voxels; :func:`add_calibration` sums the bins of
  several cases (the pooled reliability diagram).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MARGIN_MM = 10.0
N_BINS = 20
MID = (0.1, 0.9)


def lesion_margin(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                  margin_mm: float = MARGIN_MM) -> np.ndarray:
    """Boolean mask of the voxels within ``margin_mm`` of a voxel of ``ref`` or ``pred`` (both included).

    The distance transform runs on the bounding box of both masks grown by the margin, so a
    whole-body volume costs what its lesions cost."""
    from scipy.ndimage import distance_transform_edt

    fg = (np.asarray(ref) > 0) | (np.asarray(pred) > 0)
    out = np.zeros(fg.shape, dtype=bool)
    if not fg.any():
        return out
    sp = np.asarray(spacing, dtype=float)
    grow = np.ceil(margin_mm / sp).astype(int) + 1
    nz = np.nonzero(fg)
    box = tuple(slice(max(0, int(ix.min()) - g), min(n, int(ix.max()) + g + 1))
                for ix, g, n in zip(nz, grow, fg.shape))
    dist = distance_transform_edt(~fg[box], sampling=sp)
    out[box] = dist <= margin_mm
    return out


def reliability_bins(prob: np.ndarray, target: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """``count``, ``prob_sum`` and ``pos_sum`` (reference lesion voxels) per equal-width probability bin."""
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), 0.0, 1.0)
    t = (np.asarray(target) > 0).ravel().astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"count": np.histogram(p, edges)[0].astype(np.float64),
            "prob_sum": np.histogram(p, edges, weights=p)[0],
            "pos_sum": np.histogram(p, edges, weights=t)[0]}


def expected_calibration_error(count, prob_sum, pos_sum) -> float:
    """ECE = Σ_b (n_b / N) |ȳ_b − p̄_b| from per-bin sums (NaN when there is no voxel)."""
    n = np.asarray(count, dtype=np.float64)
    tot = n.sum()
    if tot <= 0:
        return float("nan")
    return float(np.abs(np.asarray(pos_sum, float) - np.asarray(prob_sum, float)).sum() / tot)


def mid_share(prob: np.ndarray, mid: tuple[float, float] = MID) -> float:
    """Share of values in ``[mid[0], mid[1])`` (NaN for no values)."""
    p = np.asarray(prob, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    return float(np.count_nonzero((p >= mid[0]) & (p < mid[1])) / p.size)


def case_calibration(prob: np.ndarray, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                     margin_mm: float = MARGIN_MM, n_bins: int = N_BINS) -> dict:
    """Calibration of one case over its lesion margin.

    Returns ``ece``, ``mid_share``, ``n_margin_voxels`` (scalars, NaN/0 for a case with neither
    lesions nor predictions) and the lists ``count``, ``prob_sum``, ``pos_sum`` (reliability bins),
    ``correct`` and ``incorrect`` (probability histograms of voxels whose thresholded prediction
    does / does not equal the reference)."""
    region = lesion_margin(ref, pred, spacing, margin_mm)
    p = np.clip(np.asarray(prob, dtype=np.float64)[region], 0.0, 1.0)
    r = np.asarray(ref)[region] > 0
    ok = (np.asarray(pred)[region] > 0) == r
    bins = reliability_bins(p, r, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"margin_mm": float(margin_mm), "n_margin_voxels": int(p.size),
            "ece": expected_calibration_error(**bins), "mid_share": mid_share(p),
            **{k: v.tolist() for k, v in bins.items()},
            "correct": np.histogram(p[ok], edges)[0].tolist(), "incorrect": np.histogram(p[~ok], edges)[0].tolist()}


BIN_KEYS = ("count", "prob_sum", "pos_sum", "correct", "incorrect")


def add_calibration(total: "dict | None", case: dict) -> dict:
    """Sum the per-bin lists of ``case`` into ``total`` (a new dict when ``total`` is None)."""
    if total is None:
        return {"margin_mm": case["margin_mm"], **{k: list(case[k]) for k in BIN_KEYS}}
    for k in BIN_KEYS:
        total[k] = [a + b for a, b in zip(total[k], case[k])]
    return total


__all__ = ["MARGIN_MM", "MID", "N_BINS", "add_calibration", "case_calibration", "expected_calibration_error",
           "lesion_margin", "mid_share", "reliability_bins"]
