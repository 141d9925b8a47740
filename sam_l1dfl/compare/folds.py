"""K-fold cross-validation over the train/validation pool, and the fold ensemble's majority vote.

The authors (``ObedDzik/pca_segment``) train 5 folds on the train/validation pool, each
validating on its fifth, and predict the fixed test set with every fold; ``ensemble_predict.py``
then keeps a voxel when more than 2 of the 5 fold masks have it (``sum > 2``).

* :func:`make_folds`: deterministic folds (the same ids, ``k`` and seed give the same folds),
  stratified by lesion presence: the cases with lesions are dealt round-robin over the folds
  first, then the lesion-free ones, each group in a seeded random order, so every validation
  fold holds lesion cases (best-epoch Dice needs them) and the folds differ in size by at most 1.
* :func:`majority_vote`: a voxel is lesion when a strict majority of the masks say so
  (``count > k // 2``: more than 2 of 5, the authors' rule); :func:`vote_share` is the fraction
  of folds that say so (the ensemble's probability for calibration).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sam_l1dfl.errors import ConfigError


def make_folds(case_ids: Sequence[str], has_lesions: Mapping[str, bool], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint folds covering ``case_ids``, stratified by ``has_lesions``; each sorted."""
    if k < 2:
        raise ConfigError(None, f"--folds must be >= 2, got {k}")
    ids = sorted(set(case_ids))
    with_les = [c for c in ids if has_lesions.get(c)]
    if len(with_les) < k:
        raise ConfigError(None, f"--folds {k}: the train/validation pool has {len(with_les)} case(s) with lesions; "
                                f"every validation fold needs one (use fewer folds or --seeds)")
    rng = np.random.default_rng(seed)
    without = [c for c in ids if not has_lesions.get(c)]
    order = [with_les[i] for i in rng.permutation(len(with_les))] + [without[i] for i in rng.permutation(len(without))]
    folds: list[list[str]] = [[] for _ in range(k)]
    for i, c in enumerate(order):
        folds[i % k].append(c)
    return [sorted(f) for f in folds]


def vote_count(masks: Sequence[np.ndarray]) -> np.ndarray:
    """How many of ``masks`` (same shape) mark each voxel (int32)."""
    if not masks:
        raise ValueError("vote of no masks")
    count = np.zeros(np.shape(masks[0]), np.int32)
    for m in masks:
        count += np.asarray(m) > 0
    return count


def vote_share(masks: Sequence[np.ndarray]) -> np.ndarray:
    """The fraction of ``masks`` that mark each voxel, float32 in [0, 1]."""
    return (vote_count(masks) / len(masks)).astype(np.float32)


def majority_vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 mask: 1 where more than half of ``masks`` are non-zero (> 2 of 5)."""
    return (vote_count(masks) > len(masks) // 2).astype(np.uint8)


__all__ = ["majority_vote", "make_folds", "vote_count", "vote_share"]
