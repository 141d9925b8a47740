"""Per-case volume metrics with exactly the autoPET challenge definitions.

* **Dice** = 2 |P ∩ R| / (|P| + |R|) on the binarised masks (foreground Dice).  It is **NaN when
  the reference is empty** (a negative case), whatever the prediction: false positives on
  negative cases are measured by FPV instead.  These are the semantics of
  ``monai.metrics.compute_dice(..., include_background=True, ignore_empty=True)``; we compute
  it in numpy on boolean arrays to avoid float tensor copies of whole-body volumes (a test
  checks that both agree).  ``dice(..., empty_ref="authors")`` applies instead the rule of the
  paper's released code for a lesion-free scan: Dice 1 when the prediction is empty too, 0 when it
  has any voxel (:func:`empty_reference_dice`; the loss comparison offers both rules).
* **FPV** (false positive volume, mL) = volume of the predicted 18-connected components that
  share no voxel with the reference.
* **FNV** (false negative volume, mL) = volume of the reference 18-connected components that
  share no voxel with the prediction.
* Voxel volume = product of the image spacing (mm) / 1000, in mL.

Arrays may be in any axis order as long as ``spacing`` follows the same order (only its
product is used).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .components import AUTOPET_CONNECTIVITY, Overlap, component_overlap


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL (spacing in mm)."""
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    return float(np.prod(sp)) / 1000.0


#: Rules for the Dice of a lesion-free scan: ``"nan"`` (ours, autoPET: undefined, left out of
#: means) and ``"authors"`` (Dzikunu et al.'s code: 1 if nothing is predicted, else 0).
EMPTY_REF_RULES = ("nan", "authors")


def empty_reference_dice(pred_voxels: float, rule: str = "nan") -> float:
    """Dice of a scan whose reference is empty, given the number of predicted voxels (or lesions)."""
    if rule not in EMPTY_REF_RULES:
        raise ValueError(f"empty_ref must be one of {EMPTY_REF_RULES}, got {rule!r}")
    if rule == "nan":
        return float("nan")
    return 0.0 if pred_voxels > 0 else 1.0


def dice(pred: np.ndarray, ref: np.ndarray, empty_ref: str = "nan") -> float:
    """Foreground Dice of two masks (> 0 is foreground).  When ``ref`` is empty: NaN
    (``empty_ref="nan"``) or the authors' rule (``"authors"``: 1 if ``pred`` is empty, else 0)."""
    p = np.asarray(pred) > 0
    r = np.asarray(ref) > 0
    nr = int(np.count_nonzero(r))
    if nr == 0:
        return empty_reference_dice(int(np.count_nonzero(p)), empty_ref)
    return float(dice_from_counts(int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), nr))


def fp_fn_voxels(ov: Overlap) -> tuple[int, int]:
    """Voxel counts of non-overlapping predicted (FP) and reference (FN) components."""
    hit_pred = np.zeros(ov.n_pred + 1, dtype=bool)
    hit_ref = np.zeros(ov.n_ref + 1, dtype=bool)
    hit_pred[ov.pairs[:, 1]] = True
    hit_ref[ov.pairs[:, 0]] = True
    fp = int(ov.pred_sizes[1:][~hit_pred[1:]].sum())
    fn = int(ov.ref_sizes[1:][~hit_ref[1:]].sum())
    return fp, fn


def volume_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    connectivity: int = AUTOPET_CONNECTIVITY,
    overlap: Overlap | None = None,
) -> dict[str, float]:
    """autoPET metrics of one case: ``dice``, ``fpv_ml``, ``fnv_ml`` plus both total volumes."""
    vml = voxel_volume_ml(spacing)
    ov = overlap if overlap is not None else component_overlap(pred, ref, connectivity)
    fp, fn = fp_fn_voxels(ov)
    return {
        "dice": dice(pred, ref),
        "fpv_ml": fp * vml,
        "fnv_ml": fn * vml,
        "ref_volume_ml": int(ov.ref_sizes[1:].sum()) * vml,
        "pred_volume_ml": int(ov.pred_sizes[1:].sum()) * vml,
    }


# ---------------------------------------------------------------------- model selection (training)
def dice_from_counts(inter, n_pred, n_ref):
    """``2·inter / (n_pred + n_ref)``, and 1 where both masks are empty (0 where only ``ref`` is).

    The Dice of :func:`dice` written on voxel counts, with the model-selection convention for an
    empty reference (a lesion-free case left clean scores 1) instead of NaN.  Works elementwise on
    numbers, numpy arrays and torch tensors without a branch, so a GPU never waits on the host.
    """
    tot = n_pred + n_ref
    empty = tot == 0
    return (2 * inter + empty) / (tot + empty)


def dice_batch(pred, ref):
    """Per-sample Dice of boolean masks ``(B, ...)`` (numpy arrays or torch tensors), as
    :func:`dice_from_counts`: training validation and the CNN trainer's model selection use it."""
    b = pred.shape[0]
    p, r = pred.reshape(b, -1), ref.reshape(b, -1)
    return dice_from_counts((p & r).sum(1), p.sum(1), r.sum(1))
