"""Lesion-wise detection: C1/C2/C3 matching, TP/FP/FN, size strata, per-lesion Dice.

Lesions are the 18-connected components of the reference mask; predicted "lesions" are the
18-connected components of the prediction (both binarised, so touching lesions are one
lesion, as in autoPET).  For a reference lesion ``R`` and a predicted component ``P``:

* **C1** (any overlap): ``|R ∩ P| ≥ 1``.
* **C2** (IoU): ``|R ∩ P| / |R ∪ P| ≥ 0.5`` (computed per component pair, exactly, in integers).
* **C3** (SUVmax): the voxel of highest PET value inside ``R`` lies in ``P`` (ties: the first
  such voxel in C order of the array).  Needs the PET; without it C3 is not reported.

Counting, per criterion (documented in the report):

* A reference lesion is **matched at most once**: it is one **TP** if at least one predicted
  component satisfies the criterion with it, otherwise one **FN**.  A lesion split into
  several predicted pieces is still one TP.
* A predicted component is one **FP** if it satisfies the criterion with *no* reference lesion.
  So under C2/C3 a predicted piece that touches a lesion but fails the criterion is an FP
  (and the lesion an FN unless another piece matches it).
* A predicted component that satisfies the criterion with several reference lesions (a
  merge) makes **each** of them a TP and is not an FP; merges are penalised by C2 (the IoU
  with each lesion drops) and by the per-lesion Dice.
* precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN); each is
  NaN when its denominator is 0 (e.g. precision with an empty prediction).

**Per-lesion Dice** of reference lesion ``R`` is the Dice between ``R`` and the union ``U`` of
all predicted components that overlap it (0 when none does), so a merged component that
also covers a neighbour lowers the Dice of both lesions.

**Size strata** use the reference lesion volume: ``<1.5 mL``, ``1.5-4 mL`` (1.5 ≤ v < 4),
``>=4 mL``.  False-positive components are stratified by their own volume.  The finer bins
``<0.5``, ``0.5-2``, ``2-10``, ``>=10 mL`` (:data:`FINE_SIZE_STRATA`, ``by="size_fine"``) serve the
size calibration of a promptable model and the learning benchmark.

**Other strata** (:data:`STRATIFIERS`, for the loss comparison; :func:`stratum_of`,
:func:`strata_summary` with ``by=``): per lesion by its **SUVmax** (``<5``, ``5-10``, ``>=10``)
and its **TLU** = SUVmean × volume (``<5``, ``5-20``, ``>=20`` SUV·mL), false-positive components
again by their own value; per scan (every lesion and component of the scan falls in the scan's
stratum) by the **number of reference lesions** (``0``, ``1``, ``2-4``, ``>=5``) and by the
**spread**, the authors' dissemination Dmax of the reference mask
(:func:`sam_l1dfl.metrics.quantify.dissemination_mm`: ``lesion-free``, ``<50 mm``, ``50-200 mm``,
``>=200 mm``).  Boundaries are fixed (not quantiles), so every loss is stratified alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .components import AUTOPET_CONNECTIVITY, Overlap, component_overlap
from .volume import voxel_volume_ml

CRITERIA = ("c1", "c2", "c3")
IOU_THRESHOLD = 0.5
#: (name, lower bound inclusive, upper bound exclusive), volumes in mL.
STRATA: tuple[tuple[str, float, float], ...] = (
    ("<1.5 mL", 0.0, 1.5),
    ("1.5-4 mL", 1.5, 4.0),
    (">=4 mL", 4.0, float("inf")),
)


INF = float("inf")
#: finer size bins (mL) for the size calibration of a promptable model and the learning
#: benchmark's size strata: small PSMA lesions are mostly under 2 mL
FINE_SIZE_STRATA = (("<0.5 mL", 0.0, 0.5), ("0.5-2 mL", 0.5, 2.0), ("2-10 mL", 2.0, 10.0), (">=10 mL", 10.0, INF))
SUVMAX_STRATA = (("SUVmax <5", -INF, 5.0), ("SUVmax 5-10", 5.0, 10.0), ("SUVmax >=10", 10.0, INF))
TLU_STRATA = (("TLU <5", -INF, 5.0), ("TLU 5-20", 5.0, 20.0), ("TLU >=20", 20.0, INF))
COUNT_STRATA = (("0 lesions", 0, 1), ("1 lesion", 1, 2), ("2-4 lesions", 2, 5), (">=5 lesions", 5, INF))
#: the first spread stratum holds the scans without reference lesions (no value matches its bounds)
SPREAD_STRATA = (("lesion-free", float("nan"), float("nan")), ("Dmax <50 mm", 0.0, 50.0), ("Dmax 50-200 mm", 50.0, 200.0),
                 ("Dmax >=200 mm", 200.0, INF))
#: name -> (level, key of the value in a lesion row, strata); ``level="scan"``: the value is the
#: scan's and is attached to each lesion row by the caller (``scan_lesion_count``, ``scan_dmax_mm``).
STRATIFIERS: dict[str, tuple[str, str, tuple]] = {
    "size": ("lesion", "volume_ml", STRATA),
    "size_fine": ("lesion", "volume_ml", FINE_SIZE_STRATA),
    "suv_max": ("lesion", "suv_max", SUVMAX_STRATA),
    "tlu": ("lesion", "tlu", TLU_STRATA),
    "lesion_count": ("scan", "scan_lesion_count", COUNT_STRATA),
    "spread": ("scan", "scan_dmax_mm", SPREAD_STRATA),
}


def stratum_of(value: float, strata: Sequence[tuple[str, float, float]]) -> "str | None":
    """Name of the stratum ``lo <= value < hi`` (value rounded at 1e-9); None for a missing or
    NaN value or one outside every stratum."""
    try:
        v = round(float(value), 9)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(v):
        return None
    for name, lo, hi in strata:
        if lo <= v < hi:
            return name
    return None


def size_stratum(volume_ml: float) -> str:
    """Name of the size stratum of a lesion volume in mL (boundaries rounded at 1e-9 mL)."""
    name = stratum_of(volume_ml, STRATA)
    if name is None:
        raise ValueError(f"invalid lesion volume {volume_ml!r}")
    return name


def row_stratum(row: dict[str, Any], by: str = "size") -> "str | None":
    """The ``by`` stratum (a key of :data:`STRATIFIERS`) of a lesion or component row (spread: a
    row with ``scan_lesion_count == 0`` is ``lesion-free``)."""
    if by == "size" and "stratum" in row:
        return row["stratum"]
    if by == "spread" and row.get("scan_lesion_count") == 0:
        return SPREAD_STRATA[0][0]
    _, key, strata = STRATIFIERS[by]
    return stratum_of(row.get(key), strata)


def ratios(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall and F1 from counts (NaN where the denominator is zero)."""
    nan = float("nan")
    return {
        "precision": tp / (tp + fp) if tp + fp > 0 else nan,
        "recall": tp / (tp + fn) if tp + fn > 0 else nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else nan,
    }


def label_stats(labels: np.ndarray, n: int, pet: np.ndarray | None):
    """Per-label voxel centroid (array index order), PET sum, max and argmax (flat index).

    Index 0 (background) is unused.  Ties of the max go to the first voxel in C order.
    """
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(np.int64)
    counts = np.bincount(lab, minlength=n + 1).astype(np.float64)
    coords = np.unravel_index(idx, labels.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.stack(
            [np.bincount(lab, weights=c, minlength=n + 1) / counts for c in coords], axis=1
        )
    if pet is None:
        return centroid, None, None, None
    val = np.asarray(pet, dtype=np.float64).ravel()[idx]
    sums = np.bincount(lab, weights=val, minlength=n + 1)
    maxes = np.full(n + 1, np.nan)
    argmax = np.full(n + 1, -1, dtype=np.int64)
    if idx.size:
        order = np.lexsort((idx, -val, lab))  # by label, then value descending, then position
        first = np.unique(lab[order], return_index=True)[1]
        sel = order[first]
        maxes[lab[sel]] = val[sel]
        argmax[lab[sel]] = idx[sel]
    return centroid, sums, maxes, argmax


@dataclass
class LesionMatching:
    """Result of :func:`match_lesions` for one case.

    ``ref`` has one dict per reference lesion and ``pred`` one per predicted component (see
    :func:`match_lesions` for the keys); ``counts[criterion]`` holds ``tp``, ``fp``, ``fn``,
    ``precision``, ``recall``, ``f1``.  ``criteria`` lists the criteria evaluated (C3 only
    with a PET).
    """

    ref: list[dict[str, Any]]
    pred: list[dict[str, Any]]
    counts: dict[str, dict[str, float]]
    criteria: tuple[str, ...]
    overlap: Overlap = field(repr=False)


def _component_row(lesion_id: int, voxels: int, voxel_ml: float, centroid) -> dict[str, Any]:
    """The columns every lesion or predicted component has: id, size, stratum, centroid (array index)."""
    return {"lesion_id": lesion_id, "voxels": voxels, "volume_ml": voxels * voxel_ml,
            "stratum": size_stratum(voxels * voxel_ml), "centroid_index": tuple(float(c) for c in centroid)}


def match_lesions(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    pet: np.ndarray | None = None,
    connectivity: int = AUTOPET_CONNECTIVITY,
    iou_threshold: float = IOU_THRESHOLD,
    overlap: Overlap | None = None,
) -> LesionMatching:
    """Match predicted components to reference lesions under C1, C2 and (with ``pet``) C3.

    ``spacing`` follows the array axis order.  Keys of each ``ref`` row: ``lesion_id``,
    ``voxels``, ``volume_ml``, ``stratum``, ``centroid_index`` (array order), ``pred_ids``
    (overlapping predicted components), ``best_iou`` (largest per-component IoU),
    ``dice`` (vs the union of overlapping components), ``pred_volume_ml`` (that union),
    ``detected_c1/c2[/c3]`` and, with PET, ``suv_max``, ``suv_mean``, ``tlu``,
    ``suvmax_index``, ``pred_suv_max``, ``pred_suv_mean``.  Each ``pred`` row: ``lesion_id``,
    ``voxels``, ``volume_ml``, ``stratum``, ``centroid_index``, ``ref_ids``, ``best_iou``,
    ``fp_c1/c2[/c3]`` and, with PET, ``suv_max``, ``suv_mean``, ``tlu``.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pet is not None:
        pet = np.asarray(pet)
        if pet.shape != ref.shape:
            raise ValueError(f"PET shape {pet.shape} differs from mask shape {ref.shape}")
    vml = voxel_volume_ml(spacing)
    ov = overlap if overlap is not None else component_overlap(pred, ref, connectivity)
    rc, rsum, rmax, rarg = label_stats(ov.ref_labels, ov.n_ref, pet)
    pc, psum, pmax, _ = label_stats(ov.pred_labels, ov.n_pred, pet)

    criteria = CRITERIA if pet is not None else CRITERIA[:2]
    cand, iou_pair = _candidate_pairs(ov, criteria, iou_threshold, rarg if pet is not None else None)
    ref_rows = _reference_rows(ov, criteria, cand, iou_pair, vml, rc, rsum, rmax, rarg, psum, pmax, pet, ref.shape)
    pred_rows = _prediction_rows(ov, criteria, cand, iou_pair, vml, pc, psum, pmax, pet)
    counts: dict[str, dict[str, float]] = {}
    for c in criteria:
        tp = sum(r[f"detected_{c}"] for r in ref_rows)
        fp = sum(r[f"fp_{c}"] for r in pred_rows)
        fn = ov.n_ref - tp
        counts[c] = {"tp": int(tp), "fp": int(fp), "fn": int(fn), **ratios(tp, fp, fn)}
    return LesionMatching(ref_rows, pred_rows, counts, criteria, ov)


def _candidate_pairs(ov: Overlap, criteria: tuple, iou_threshold: float, rarg: "np.ndarray | None"):
    """The (reference, predicted) component pairs that match under each criterion, and every
    overlapping pair's IoU; C3 (``rarg``: each lesion's SUVmax voxel) when PET is given."""
    cand: dict[str, set[tuple[int, int]]] = {c: set() for c in criteria}
    iou_pair: dict[tuple[int, int], float] = {}
    for i, j, inter in ov.pairs.tolist():
        union = int(ov.ref_sizes[i] + ov.pred_sizes[j] - inter)
        iou_pair[(i, j)] = inter / union
        cand["c1"].add((i, j))
        if inter >= iou_threshold * union:
            cand["c2"].add((i, j))
    if rarg is not None:
        pflat = ov.pred_labels.ravel()
        for i in range(1, ov.n_ref + 1):
            j = int(pflat[rarg[i]])
            if j > 0:
                cand["c3"].add((i, j))
    return cand, iou_pair


def _reference_rows(ov: Overlap, criteria: tuple, cand: dict, iou_pair: dict, vml: float, rc, rsum, rmax, rarg,
                    psum, pmax, pet: "np.ndarray | None", shape: tuple) -> list[dict[str, Any]]:
    """One row per reference lesion (the keys of :func:`match_lesions`)."""
    ref_rows: list[dict[str, Any]] = []
    for i in range(1, ov.n_ref + 1):
        sel = ov.pairs[ov.pairs[:, 0] == i]
        pids = [int(j) for j in sel[:, 1]]
        inter = int(sel[:, 2].sum())
        uvox = int(ov.pred_sizes[pids].sum()) if pids else 0
        vox = int(ov.ref_sizes[i])
        row: dict[str, Any] = {
            **_component_row(i, vox, vml, rc[i]),
            "pred_ids": pids,
            "best_iou": max((iou_pair[(i, j)] for j in pids), default=0.0),
            "dice": 2.0 * inter / (vox + uvox),
            "pred_volume_ml": uvox * vml,
        }
        for c in criteria:
            row[f"detected_{c}"] = any((i, j) in cand[c] for j in pids)
        if pet is not None:
            row["suv_max"] = float(rmax[i])
            row["suv_mean"] = float(rsum[i] / vox)
            row["tlu"] = float(rsum[i] / vox) * vox * vml
            row["suvmax_index"] = tuple(int(v) for v in np.unravel_index(rarg[i], shape))
            row["pred_suv_max"] = float(max((pmax[j] for j in pids), default=np.nan))
            row["pred_suv_mean"] = float(psum[pids].sum() / uvox) if uvox else float("nan")
        ref_rows.append(row)
    return ref_rows


def _prediction_rows(ov: Overlap, criteria: tuple, cand: dict, iou_pair: dict, vml: float, pc, psum, pmax,
                     pet: "np.ndarray | None") -> list[dict[str, Any]]:
    """One row per predicted component (the keys of :func:`match_lesions`)."""
    pred_rows: list[dict[str, Any]] = []
    for j in range(1, ov.n_pred + 1):
        rids = [int(i) for i in ov.pairs[ov.pairs[:, 1] == j, 0]]
        vox = int(ov.pred_sizes[j])
        row = {
            **_component_row(j, vox, vml, pc[j]),
            "ref_ids": rids,
            "best_iou": max((iou_pair[(i, j)] for i in rids), default=0.0),
        }
        for c in criteria:
            # a C3 match implies overlap, so looking among the overlapping lesions suffices
            row[f"fp_{c}"] = not any((i, j) in cand[c] for i in rids)
        if pet is not None:
            row["suv_max"] = float(pmax[j])
            row["suv_mean"] = float(psum[j] / vox)
            row["tlu"] = float(psum[j] / vox) * vox * vml
        pred_rows.append(row)
    return pred_rows


def strata_summary(ref_rows: Sequence[dict[str, Any]], criteria: Sequence[str] = CRITERIA[:2],
                   by: str = "size") -> dict[str, dict[str, float]]:
    """Per stratum (``by``: a key of :data:`STRATIFIERS`, default the size strata): number of
    reference lesions, mean/median per-lesion Dice, recall per criterion."""
    out: dict[str, dict[str, float]] = {}
    for name, _, _ in STRATIFIERS[by][2]:
        rows = [r for r in ref_rows if row_stratum(r, by) == name]
        d = np.array([r["dice"] for r in rows], dtype=float)
        entry: dict[str, float] = {
            "n_lesions": len(rows),
            "dice_mean": float(d.mean()) if d.size else float("nan"),
            "dice_median": float(np.median(d)) if d.size else float("nan"),
        }
        for c in criteria:
            hits = [bool(r.get(f"detected_{c}")) for r in rows if f"detected_{c}" in r]
            entry[f"recall_{c}"] = float(np.mean(hits)) if hits else float("nan")
        out[name] = entry
    return out
