"""Connected components and their overlaps, the basis of every lesion-wise metric.

Lesions are the **18-connected** components of a binary mask (the autoPET definition):
voxels that share a face or an edge belong to the same lesion, voxels that touch only at a
corner do not.  Connectivity is counted in voxel-index space, whatever the spacing, exactly as
the autoPET evaluation script does with ``cc3d.connected_components(mask, connectivity=18)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_l1dfl.data.lesions import label_components

#: Lesions are 18-connected components (autoPET); :func:`label_components` is
#: :func:`sam_l1dfl.data.lesions.label_components`, so prompts and metrics see the same lesions.
AUTOPET_CONNECTIVITY = 18


@dataclass
class Overlap:
    """Components of a reference and a predicted mask and how they overlap.

    ``ref_sizes[i]`` / ``pred_sizes[j]`` are voxel counts of component ``i`` / ``j`` (index 0 is the
    background and unused).  ``pairs`` lists every overlapping (reference, prediction) pair
    once, as ``(ref_id, pred_id, n_common_voxels)`` rows.
    """

    ref_labels: np.ndarray
    pred_labels: np.ndarray
    n_ref: int
    n_pred: int
    ref_sizes: np.ndarray
    pred_sizes: np.ndarray
    pairs: np.ndarray  # (k, 3) int64

    def iou(self, row: np.ndarray) -> float:
        i, j, inter = (int(v) for v in row)
        return inter / float(self.ref_sizes[i] + self.pred_sizes[j] - inter)

    def pred_overlapping(self, i: int) -> np.ndarray:
        """Predicted component ids that overlap reference lesion ``i``."""
        return self.pairs[self.pairs[:, 0] == i, 1]

    def ref_overlapping(self, j: int) -> np.ndarray:
        """Reference lesion ids that overlap predicted component ``j``."""
        return self.pairs[self.pairs[:, 1] == j, 0]


def component_overlap(pred: np.ndarray, ref: np.ndarray, connectivity: int = AUTOPET_CONNECTIVITY) -> Overlap:
    """Label both masks and tabulate the overlaps of their components (sparse, one pass)."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    rl, nr = label_components(ref, connectivity)
    pl, npred = label_components(pred, connectivity)
    ref_sizes = np.bincount(rl.ravel(), minlength=nr + 1).astype(np.int64)
    pred_sizes = np.bincount(pl.ravel(), minlength=npred + 1).astype(np.int64)
    both = (rl > 0) & (pl > 0)
    if both.any():
        code = rl[both].astype(np.int64) * (npred + 1) + pl[both].astype(np.int64)
        uniq, counts = np.unique(code, return_counts=True)
        pairs = np.stack([uniq // (npred + 1), uniq % (npred + 1), counts], axis=1).astype(np.int64)
    else:
        pairs = np.zeros((0, 3), dtype=np.int64)
    return Overlap(rl, pl, nr, npred, ref_sizes, pred_sizes, pairs)
