"""Seeded bootstrap 95 % confidence intervals for data-set figures (case resampling).

Means use :func:`scipy.stats.bootstrap` with the percentile method (BCa needs jack-knife
values that degenerate on the small, tied data sets typical here) and a
``numpy.random.default_rng(seed)``, so the same inputs and seed give the same interval.
Pooled detection ratios (TP/FP/FN summed over the resampled cases) resample case indices
with the same kind of generator in numpy, because a resample can make the ratio 0/0 and
``scipy.stats.bootstrap`` cannot skip such resamples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_RESAMPLES = 2000


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of the finite values and its percentile bootstrap CI: ``{mean, ci_low, ci_high, n}``.

    NaNs (e.g. Dice of negative cases) are dropped first; the CI is NaN with fewer than two
    values.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    out = {"mean": float(v.mean()) if v.size else float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "n": int(v.size)}
    if v.size < 2:
        return out
    if np.ptp(v) == 0:
        out.update(ci_low=float(v[0]), ci_high=float(v[0]))
        return out
    res = stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high))
    return out


def _pooled(which: str):
    def stat(tp, fp, fn, axis=-1):
        tp, fp, fn = (np.sum(a, axis=axis) for a in (tp, fp, fn))
        with np.errstate(invalid="ignore", divide="ignore"):
            if which == "precision":
                return tp / (tp + fp)
            if which == "recall":
                return tp / (tp + fn)
            return 2 * tp / (2 * tp + fp + fn)

    return stat


def bootstrap_pooled_ci(
    tp: Sequence[int], fp: Sequence[int], fn: Sequence[int], which: str = "f1",
    n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """Pooled (micro) precision, recall or F1 over cases with a case-resampling bootstrap CI.

    Resamples in which the ratio is undefined (0/0) are ignored by taking the percentiles of
    the finite values.
    """
    if which not in ("precision", "recall", "f1"):
        raise ValueError(f"unknown ratio {which!r}")
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    stat = _pooled(which)
    est = float(stat(tp, fp, fn))
    out = {"value": est, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(tp.size)}
    if tp.size < 2:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, tp.size, size=(n_resamples, tp.size))
    boot = stat(tp[idx], fp[idx], fn[idx], axis=-1)
    boot = boot[np.isfinite(boot)]
    if boot.size:
        a = (1 - confidence) / 2
        out.update(ci_low=float(np.quantile(boot, a)), ci_high=float(np.quantile(boot, 1 - a)))
    return out


def bootstrap_cluster_mean_ci(
    values: Sequence[float], clusters: Sequence, n_resamples: int = N_RESAMPLES, confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of per-item ``values`` (e.g. per-lesion paired differences) with a percentile bootstrap CI
    that resamples whole ``clusters`` (e.g. cases), so items of one cluster, which are not
    independent, move together: ``{mean, ci_low, ci_high, n, n_clusters}``.  NaN values are dropped.
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray([str(x) for x in clusters])
    keep = np.isfinite(v)
    v, c = v[keep], c[keep]
    ids, inv = np.unique(c, return_inverse=True)
    out = {"mean": float(v.mean()) if v.size else float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "n": int(v.size), "n_clusters": int(ids.size)}
    if ids.size < 2:
        return out
    sums = np.bincount(inv, weights=v, minlength=ids.size)
    counts = np.bincount(inv, minlength=ids.size).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ids.size, size=(n_resamples, ids.size))
    boot = sums[idx].sum(1) / counts[idx].sum(1)
    a = (1 - confidence) / 2
    out.update(ci_low=float(np.quantile(boot, a)), ci_high=float(np.quantile(boot, 1 - a)))
    return out
