"""The comparison's statistics against scipy and hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sam_l1dfl.compare.stats import bonferroni, rank_biserial, rank_sums, wilcoxon_paired

A = [0.81, 0.62, 0.75, 0.40, 0.90, 0.55, 0.71, 0.66, 0.58, 0.77]
B = [0.78, 0.60, 0.79, 0.41, 0.84, 0.50, 0.71, 0.61, 0.52, 0.70]


def test_wilcoxon_matches_scipy_on_fixed_numbers():
    w = wilcoxon_paired(A, B)
    ref = sps.wilcoxon(np.subtract(A, B), zero_method="wilcox", alternative="two-sided")
    assert w["n"] == 10 and w["n_nonzero"] == 9  # one zero difference (0.71 - 0.71) dropped
    assert w["statistic"] == pytest.approx(float(ref.statistic))
    assert w["p"] == pytest.approx(float(ref.pvalue))
    assert w["statistic"] == pytest.approx(min(w["r_plus"], w["r_minus"]))
    assert w["r_plus"] + w["r_minus"] == pytest.approx(9 * 10 / 2)  # ranks 1..9


def test_rank_biserial_hand_worked():
    # d = 1, 2, 3, -1.5, 0, 4 -> non-zero |d| ranks 1, 3, 4, 2, 5; R+ = 13, R- = 2
    a = [1, 2, 3, -1.5, 0, 4]
    b = [0] * 6
    assert rank_sums(np.asarray(a, float)) == (13.0, 2.0)
    assert rank_biserial(a, b) == pytest.approx(11 / 15)
    # Kerby's simple difference formula gives the same: r = R+/S - R-/S
    assert wilcoxon_paired(a, b)["effect_size"] == pytest.approx(13 / 15 - 2 / 15)
    assert rank_biserial(b, a) == pytest.approx(-11 / 15)  # antisymmetric


def test_ties_use_average_ranks_like_scipy():
    d = np.array([1.0, -1.0, 2.0, 2.0, -3.0, 0.5])
    rp, rm = rank_sums(d)
    r = sps.rankdata(np.abs(d))
    assert rp == pytest.approx(r[d > 0].sum()) and rm == pytest.approx(r[d < 0].sum())
    assert wilcoxon_paired(d, np.zeros_like(d))["statistic"] == pytest.approx(
        float(sps.wilcoxon(d, zero_method="wilcox").statistic))


def test_nan_pairs_dropped_and_degenerate_cases():
    w = wilcoxon_paired([1.0, np.nan, 3.0, 0.2], [0.5, 1.0, np.nan, 0.1])
    assert w["n"] == 2
    ref = sps.wilcoxon([0.5, 0.1])
    assert w["p"] == pytest.approx(float(ref.pvalue))
    same = wilcoxon_paired([1, 2, 3], [1, 2, 3])
    assert same["p"] == 1.0 and math.isnan(same["effect_size"])
    empty = wilcoxon_paired([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["p"])
    with pytest.raises(ValueError):
        wilcoxon_paired([1, 2], [1, 2, 3])


def test_bonferroni():
    assert bonferroni([0.01, 0.2, 0.6]) == pytest.approx([0.03, 0.6, 1.0])
    out = bonferroni([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert bonferroni([0.01], m=5) == pytest.approx([0.05])
