"""Paired statistics for the loss comparison: Wilcoxon signed-rank, Bonferroni, rank-biserial r.

* :func:`wilcoxon_paired` — two-sided Wilcoxon signed-rank test of per-case differences
  ``d = a - b`` (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: zero differences are
  dropped, as are pairs with a NaN).  It also returns the rank sums ``R+`` and ``R-`` (average
  ranks of ``|d|`` over the non-zero differences) and the effect size.
* :func:`rank_biserial` — the matched-pairs rank-biserial correlation
  ``r = (R+ - R-) / (R+ + R-)`` (Kerby 2014), in [-1, 1]: +1 when every non-zero difference is
  positive (``a`` larger in every case), 0 for balanced ranks.
* :func:`bonferroni` — ``min(1, p × m)`` for ``m`` comparisons.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of the same length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok] - b[ok]


def rank_sums(d: np.ndarray) -> tuple[float, float]:
    """``(R+, R-)``: sums of the average ranks of ``|d|`` over positive / negative non-zero ``d``."""
    from scipy.stats import rankdata

    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0, 0.0
    r = rankdata(np.abs(d))
    return float(r[d > 0].sum()), float(r[d < 0].sum())


def rank_biserial(a: Sequence[float], b: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of ``a - b`` (NaN when every difference is zero)."""
    rp, rm = rank_sums(_paired(a, b))
    return (rp - rm) / (rp + rm) if rp + rm > 0 else float("nan")


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (paired by position).

    Returns ``n`` (finite pairs), ``n_nonzero``, ``statistic`` (scipy's: ``min(R+, R-)``),
    ``r_plus``, ``r_minus``, ``p`` (NaN with fewer than 1 non-zero difference; 1.0 when every
    difference is zero), ``effect_size`` (rank-biserial r), ``median_diff`` and ``mean_diff``.
    """
    d = _paired(a, b)
    rp, rm = rank_sums(d)
    nz = int((d != 0).sum())
    out = {"n": int(d.size), "n_nonzero": nz, "r_plus": rp, "r_minus": rm,
           "median_diff": float(np.median(d)) if d.size else float("nan"),
           "mean_diff": float(np.mean(d)) if d.size else float("nan"),
           "effect_size": (rp - rm) / (rp + rm) if rp + rm > 0 else float("nan")}
    if d.size == 0:
        out.update(statistic=float("nan"), p=float("nan"))
    elif nz == 0:
        out.update(statistic=0.0, p=1.0)
    else:
        from scipy.stats import wilcoxon

        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def bonferroni(pvalues: Sequence[float], m: "int | None" = None) -> list[float]:
    """Bonferroni-adjusted p-values ``min(1, p × m)``; ``m`` defaults to the number of finite p-values."""
    ps = [float(p) for p in pvalues]
    if m is None:
        m = sum(1 for p in ps if math.isfinite(p))
    return [min(1.0, p * m) if math.isfinite(p) else float("nan") for p in ps]


__all__ = ["bonferroni", "rank_biserial", "rank_sums", "wilcoxon_paired"]
