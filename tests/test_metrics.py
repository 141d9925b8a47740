"""Metrics on hand-made masks, every expected value worked out by hand (issue 7, evaluation).

Most cases use 10 mm isotropic voxels, so one voxel is exactly 1 mL and volumes are voxel
counts.  Arrays are indexed [a, b, c]; spacing is given in the same order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sam_l1dfl.metrics import (
    agreement,
    bootstrap_mean_ci,
    bootstrap_pooled_ci,
    dice,
    evaluate_case,
    match_lesions,
    quantify,
    size_stratum,
    strata_summary,
    volume_metrics,
    voxel_volume_ml,
)

SP = (10.0, 10.0, 10.0)  # 1 mL voxels
SHAPE = (10, 10, 10)


def z():
    return np.zeros(SHAPE, dtype=bool)


def nan(x):
    return isinstance(x, float) and math.isnan(x)


# ------------------------------------------------------------------ volume metrics


def test_voxel_volume():
    assert voxel_volume_ml((1, 1, 1)) == pytest.approx(0.001)
    assert voxel_volume_ml((4.0, 2.0, 1.5)) == pytest.approx(0.012)
    with pytest.raises(ValueError):
        voxel_volume_ml((1, 0, 1))


def test_shifted_cube_dice_two_thirds_iou_half():
    ref, pred = z(), z()
    ref[1:4, 1:4, 1:4] = True  # 27 voxels
    pred[2:5, 1:4, 1:4] = True  # 27 voxels, 18 in common
    v = volume_metrics(pred, ref, SP)
    assert v["dice"] == pytest.approx(2 * 18 / 54)  # 2/3
    assert v["fpv_ml"] == 0 and v["fnv_ml"] == 0  # the components overlap
    assert v["ref_volume_ml"] == pytest.approx(27) and v["pred_volume_ml"] == pytest.approx(27)
    m = match_lesions(pred, ref, SP)
    # IoU = 18 / 36 = 0.5 exactly: C2 uses >=, so it is a match
    assert m.ref[0]["best_iou"] == pytest.approx(0.5)
    assert m.counts["c2"]["tp"] == 1 and m.counts["c2"]["fp"] == 0


def test_dice_agrees_with_monai_including_empty_reference():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    for k in range(4):
        ref = rng.random(SHAPE) < 0.2
        pred = rng.random(SHAPE) < 0.3
        if k == 3:
            ref[:] = False
        ours = dice(pred, ref)
        theirs = compute_dice(torch.from_numpy(pred[None, None].astype(np.float32)),
                              torch.from_numpy(ref[None, None].astype(np.float32)),
                              include_background=True, ignore_empty=True).item()
        if k == 3:
            assert nan(ours) and math.isnan(theirs)
        else:
            assert ours == pytest.approx(theirs, rel=1e-6)


def test_corner_touching_lesions_are_two_lesions_edge_touching_one():
    # A and B touch only at one corner: two 18-connected lesions
    ref, pred = z(), z()
    ref[1:3, 1:3, 1:3] = True
    ref[3:5, 3:5, 3:5] = True
    pred[1:3, 1:3, 1:3] = True  # finds A only
    v = volume_metrics(pred, ref, SP)
    assert v["dice"] == pytest.approx(2 * 8 / (8 + 16))
    assert v["fnv_ml"] == pytest.approx(8)  # B (8 voxels) is missed
    assert v["fpv_ml"] == 0
    m = match_lesions(pred, ref, SP)
    assert len(m.ref) == 2
    assert (m.counts["c1"]["tp"], m.counts["c1"]["fp"], m.counts["c1"]["fn"]) == (1, 0, 1)
    assert m.counts["c1"]["recall"] == 0.5 and m.counts["c1"]["precision"] == 1.0
    assert m.counts["c1"]["f1"] == pytest.approx(2 / 3)
    # with 26-connectivity they would be one lesion and nothing would be missed
    assert volume_metrics(pred, ref, SP, connectivity=26)["fnv_ml"] == 0

    # A and B share an edge: one 18-connected lesion of 16 voxels
    ref2 = z()
    ref2[1:3, 1:3, 1:3] = True
    ref2[3:5, 3:5, 1:3] = True
    v2 = volume_metrics(pred, ref2, SP)
    assert v2["fnv_ml"] == 0
    m2 = match_lesions(pred, ref2, SP)
    assert len(m2.ref) == 1 and m2.ref[0]["volume_ml"] == pytest.approx(16)
    assert m2.ref[0]["best_iou"] == pytest.approx(8 / 16)  # C2 boundary again
    assert m2.counts["c2"]["tp"] == 1
    assert m2.ref[0]["dice"] == pytest.approx(16 / 24)


def test_lesion_split_in_two_by_the_prediction():
    ref, pred = z(), z()
    ref[2:4, 2:4, 1:9] = True  # bar of 32 voxels
    pred[2:4, 2:4, 1:4] = True  # piece 1: 12 voxels
    pred[2:4, 2:4, 6:9] = True  # piece 2: 12 voxels (gap at c = 4, 5)
    pet = np.ones(SHAPE, np.float32)
    pet[3, 3, 7] = 9.0  # SUVmax of the lesion, inside piece 2
    v = volume_metrics(pred, ref, SP)
    assert v["dice"] == pytest.approx(2 * 24 / (32 + 24))  # 6/7
    assert v["fpv_ml"] == 0 and v["fnv_ml"] == 0
    m = match_lesions(pred, ref, SP, pet=pet)
    r = m.ref[0]
    assert r["pred_ids"] == [1, 2] and r["best_iou"] == pytest.approx(12 / 32)
    assert r["dice"] == pytest.approx(6 / 7)
    c1, c2, c3 = (m.counts[c] for c in ("c1", "c2", "c3"))
    # C1: the lesion is one TP (matched at most once); both pieces touch it, so no FP
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 0, 0) and c1["f1"] == 1.0
    # C2: each piece has IoU 12/32 < 0.5 -> lesion missed, both pieces FP
    assert (c2["tp"], c2["fp"], c2["fn"]) == (0, 2, 1)
    assert c2["precision"] == 0 and c2["recall"] == 0 and c2["f1"] == 0
    # C3: piece 2 holds the SUVmax voxel -> TP; piece 1 is an FP
    assert (c3["tp"], c3["fp"], c3["fn"]) == (1, 1, 0)
    assert c3["precision"] == 0.5 and c3["recall"] == 1.0 and c3["f1"] == pytest.approx(2 / 3)
    assert [p["fp_c3"] for p in m.pred] == [True, False]


def test_one_prediction_covering_two_lesions():
    ref, pred = z(), z()
    ref[1:3, 1:3, 1:3] = True  # A: 8 voxels
    ref[1:3, 1:3, 5:7] = True  # B: 8 voxels, gap at c = 3, 4
    pred[1:3, 1:3, 1:7] = True  # 24 voxels covering both and the gap
    pet = np.ones(SHAPE, np.float32)
    pet[1, 1, 1] = 5.0
    pet[2, 2, 6] = 7.0
    v = volume_metrics(pred, ref, SP)
    assert v["dice"] == pytest.approx(2 * 16 / (16 + 24))  # 0.8
    assert v["fpv_ml"] == 0 and v["fnv_ml"] == 0
    m = match_lesions(pred, ref, SP, pet=pet)
    assert [r["pred_ids"] for r in m.ref] == [[1], [1]]
    # per-lesion Dice: lesion (8) vs the whole merged component (24)
    assert [r["dice"] for r in m.ref] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert [r["best_iou"] for r in m.ref] == [pytest.approx(1 / 3)] * 2
    c1, c2, c3 = (m.counts[c] for c in ("c1", "c2", "c3"))
    assert (c1["tp"], c1["fp"], c1["fn"]) == (2, 0, 0)  # each lesion detected
    assert (c2["tp"], c2["fp"], c2["fn"]) == (0, 1, 2)  # IoU 1/3 with each
    assert (c3["tp"], c3["fp"], c3["fn"]) == (2, 0, 0)  # both SUVmax voxels inside
    assert m.pred[0]["ref_ids"] == [1, 2]


def test_empty_reference():
    ref, pred = z(), z()
    pred[5:7, 5:7, 5:7] = True  # 8 voxels, all false positive
    v = volume_metrics(pred, ref, SP)
    assert nan(v["dice"])
    assert v["fpv_ml"] == pytest.approx(8) and v["fnv_ml"] == 0
    c = match_lesions(pred, ref, SP).counts["c1"]
    assert (c["tp"], c["fp"], c["fn"]) == (0, 1, 0)
    assert c["precision"] == 0 and nan(c["recall"]) and c["f1"] == 0
    # both empty: everything undefined or zero
    v0 = volume_metrics(z(), z(), SP)
    assert nan(v0["dice"]) and v0["fpv_ml"] == 0 and v0["fnv_ml"] == 0
    c0 = match_lesions(z(), z(), SP).counts["c1"]
    assert (c0["tp"], c0["fp"], c0["fn"]) == (0, 0, 0)
    assert nan(c0["precision"]) and nan(c0["recall"]) and nan(c0["f1"])


def test_empty_prediction():
    ref = z()
    ref[5:7, 5:7, 5:7] = True
    v = volume_metrics(z(), ref, SP)
    assert v["dice"] == 0.0 and v["fpv_ml"] == 0 and v["fnv_ml"] == pytest.approx(8)
    m = match_lesions(z(), ref, SP, pet=np.ones(SHAPE))
    for c in ("c1", "c2", "c3"):
        k = m.counts[c]
        assert (k["tp"], k["fp"], k["fn"]) == (0, 0, 1)
        assert nan(k["precision"]) and k["recall"] == 0 and k["f1"] == 0
    assert m.ref[0]["dice"] == 0 and m.ref[0]["pred_ids"] == []


def test_fpv_counts_only_non_overlapping_components():
    ref, pred = z(), z()
    ref[1:4, 1:4, 1:4] = True
    pred[2:5, 2:5, 2:5] = True  # overlaps: not FPV even though partly outside
    pred[7:9, 7:9, 7:9] = True  # 8 voxels, no overlap: FPV
    ref[0, 8, 8] = True  # 1 voxel lesion, missed: FNV
    v = volume_metrics(pred, ref, SP)
    assert v["fpv_ml"] == pytest.approx(8) and v["fnv_ml"] == pytest.approx(1)


def test_anisotropic_spacing_volumes_and_strata_boundaries():
    sp = (5.0, 2.0, 2.0)  # 20 mm^3 = 0.02 mL per voxel
    shape = (20, 30, 30)
    ref = np.zeros(shape, bool)
    ref[1:4, 1:6, 1:6] = True  # 75 voxels = 1.5 mL   -> "1.5-4 mL" (lower bound inclusive)
    ref[1:4, 10:15, 1:6] = True
    ref[3, 14, 5] = False  # 74 voxels = 1.48 mL    -> "<1.5 mL"
    ref[8:13, 1:6, 10:18] = True  # 200 voxels = 4.0 mL -> ">=4 mL"
    ref[8:13, 10:15, 10:18] = True
    ref[12, 14, 17] = False  # 199 voxels = 3.98 mL   -> "1.5-4 mL"
    pred = ref.copy()
    pred[16:18, 20:25, 20:25] = True  # FP blob: 50 voxels = 1.0 mL
    v = volume_metrics(pred, ref, sp)
    assert v["fpv_ml"] == pytest.approx(1.0) and v["fnv_ml"] == 0
    assert v["ref_volume_ml"] == pytest.approx((75 + 74 + 200 + 199) * 0.02)
    assert v["dice"] == pytest.approx(2 * 548 / (548 + 598))
    # only the product of the spacing matters
    assert volume_metrics(pred, ref, (2.0, 5.0, 2.0))["fpv_ml"] == pytest.approx(1.0)
    m = match_lesions(pred, ref, sp)
    vols = sorted((round(r["volume_ml"], 6), r["stratum"]) for r in m.ref)
    assert vols == [(1.48, "<1.5 mL"), (1.5, "1.5-4 mL"), (3.98, "1.5-4 mL"), (4.0, ">=4 mL")]
    assert [p["stratum"] for p in m.pred if p["fp_c1"]] == ["<1.5 mL"]
    s = strata_summary(m.ref)
    assert s["<1.5 mL"]["n_lesions"] == 1 and s["1.5-4 mL"]["n_lesions"] == 2 and s[">=4 mL"]["n_lesions"] == 1
    assert s["1.5-4 mL"]["dice_mean"] == 1.0 and s["1.5-4 mL"]["recall_c1"] == 1.0
    assert size_stratum(1.4999999) == "<1.5 mL" and size_stratum(4.0000000000001) == ">=4 mL"


def test_strata_dice_by_stratum():
    ref, pred = z(), z()
    ref[0:2, 0:2, 0:1] = True  # 4 mL lesion, half found -> Dice 2*2/(4+2)
    pred[0:1, 0:2, 0:1] = True
    ref[5, 5, 5] = True  # 1 mL lesion, missed -> Dice 0
    s = strata_summary(match_lesions(pred, ref, SP).ref)
    assert s[">=4 mL"]["dice_mean"] == pytest.approx(2 / 3) and s[">=4 mL"]["recall_c1"] == 1.0
    assert s["<1.5 mL"]["dice_mean"] == 0.0 and s["<1.5 mL"]["recall_c1"] == 0.0
    assert s["1.5-4 mL"]["n_lesions"] == 0 and nan(s["1.5-4 mL"]["dice_mean"])


def test_c3_tie_goes_to_first_voxel_in_array_order():
    ref = z()
    ref[1:3, 1:3, 1:3] = True
    pet = np.full(SHAPE, 2.0, np.float32)  # flat: every lesion voxel is a maximum
    first, last = z(), z()
    first[1, 1, 1] = True
    last[2, 2, 2] = True
    assert match_lesions(first, ref, SP, pet=pet).counts["c3"]["tp"] == 1
    k = match_lesions(last, ref, SP, pet=pet).counts["c3"]
    assert (k["tp"], k["fp"], k["fn"]) == (0, 1, 1)
    assert match_lesions(first, ref, SP, pet=pet).ref[0]["suvmax_index"] == (1, 1, 1)


def test_c3_not_reported_without_pet():
    ref = z()
    ref[1:3, 1:3, 1:3] = True
    m = match_lesions(ref, ref, SP)
    assert set(m.counts) == {"c1", "c2"} and "detected_c3" not in m.ref[0]


# ------------------------------------------------------------------ quantification


def test_quantify_by_hand():
    ref = z()
    ref[1:3, 1:3, 1:3] = True  # 8 mL
    ref[6, 6, 6] = True  # 1 mL
    pet = np.zeros(SHAPE, np.float32)
    pet[1:3, 1:3, 1:3] = 2.0
    pet[1, 2, 1] = 10.0
    pet[6, 6, 6] = 4.0
    q = quantify(ref, SP, pet)
    assert q["lesion_count"] == 2 and q["tmtv_ml"] == pytest.approx(9)
    assert q["suv_max"] == 10.0
    assert q["suv_mean"] == pytest.approx((7 * 2 + 10 + 4) / 9)  # 28/9
    assert q["tlu"] == pytest.approx(28.0)  # SUVmean x TMTV = sum of SUV x voxel volume
    e = quantify(z(), SP, pet)
    assert e["lesion_count"] == 0 and e["tmtv_ml"] == 0 and e["tlu"] == 0 and nan(e["suv_max"])
    no_pet = quantify(ref, SP)
    assert no_pet["tmtv_ml"] == pytest.approx(9) and nan(no_pet["suv_mean"])
    # per lesion, from the matching
    m = match_lesions(ref, ref, SP, pet=pet)
    assert [r["suv_max"] for r in m.ref] == [10.0, 4.0]
    assert m.ref[0]["suv_mean"] == pytest.approx(3.0) and m.ref[0]["tlu"] == pytest.approx(24.0)
    assert m.ref[0]["suvmax_index"] == (1, 2, 1)


def test_agreement_by_hand():
    a = agreement([1, 2, 3, 4, float("nan")], [1, 2, 3, 5, 7])
    assert a["n"] == 4
    assert a["mean_diff"] == pytest.approx(-0.25)
    assert a["sd_diff"] == pytest.approx(0.5)  # sqrt((3 * 0.25**2 + 0.75**2) / 3)
    assert a["loa_lower"] == pytest.approx(-0.25 - 0.98) and a["loa_upper"] == pytest.approx(-0.25 + 0.98)
    assert a["spearman_rho"] == pytest.approx(1.0)
    assert a["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 5])[0, 1])
    few = agreement([1, 2], [1, 3])
    assert few["n"] == 2 and nan(few["pearson_r"]) and few["mean_diff"] == pytest.approx(-0.5)


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_mean_ci_seeded_and_nan_dropped():
    v = [0.21, 0.43, 0.5, 0.97, float("nan"), 0.72, 0.11, 0.64, 0.35, 0.88, 0.59, 0.05, 0.3]
    a = bootstrap_mean_ci(v, n_resamples=500, seed=3)
    b = bootstrap_mean_ci(v, n_resamples=500, seed=3)
    c = bootstrap_mean_ci(v, n_resamples=500, seed=4)
    assert a == b and a != c
    finite = [x for x in v if not math.isnan(x)]
    assert a["n"] == 12 and a["mean"] == pytest.approx(sum(finite) / 12)
    assert min(finite) <= a["ci_low"] < a["mean"] < a["ci_high"] <= max(finite)
    one = bootstrap_mean_ci([0.3, float("nan")])
    assert one["mean"] == 0.3 and nan(one["ci_low"])
    const = bootstrap_mean_ci([0.5, 0.5, 0.5])
    assert const["ci_low"] == const["ci_high"] == 0.5


def test_bootstrap_pooled_ratio():
    tp, fp, fn = [3, 0, 2, 1], [1, 2, 0, 0], [0, 1, 1, 0]
    f1 = bootstrap_pooled_ci(tp, fp, fn, "f1", n_resamples=400, seed=1)
    assert f1["value"] == pytest.approx(2 * 6 / (12 + 3 + 2))
    assert f1["ci_low"] <= f1["value"] <= f1["ci_high"]
    p = bootstrap_pooled_ci(tp, fp, fn, "precision", n_resamples=400, seed=1)
    assert p["value"] == pytest.approx(6 / 9)
    assert bootstrap_pooled_ci(tp, fp, fn, "recall", seed=1) == bootstrap_pooled_ci(tp, fp, fn, "recall", seed=1)
    with pytest.raises(ValueError):
        bootstrap_pooled_ci(tp, fp, fn, "accuracy")


# ------------------------------------------------------------------ one case, rows


def test_evaluate_case_rows_and_world_positions():
    ref, pred = z(), z()
    ref[1:3, 1:3, 1:3] = True
    pred[1:3, 1:3, 1:3] = True
    pred[7, 7, 7] = True  # FP
    pet = np.ones(SHAPE, np.float32)
    res = evaluate_case(pred, ref, SP, pet, case="c0", clicks=3,
                        index_to_world=lambda ci: (ci[2] * 10.0, ci[1] * 10.0, ci[0] * 10.0))
    row = res.row
    assert row["case"] == "c0" and row["clicks"] == 3
    assert row["dice"] == pytest.approx(16 / 17) and row["fpv_ml"] == pytest.approx(1)
    assert (row["tp_c1"], row["fp_c1"], row["fn_c1"]) == (1, 1, 0)
    assert row["ref_lesion_count"] == 1 and row["pred_lesion_count"] == 2
    assert row["pred_tmtv_ml"] == pytest.approx(9) and row["ref_tlu"] == pytest.approx(8)
    kinds = [(l["kind"], l["lesion_id"]) for l in res.lesions]
    assert kinds == [("ref", 1), ("pred", 1), ("pred", 2)]
    fp = res.lesions[2]
    assert fp["fp_c1"] is True and (fp["x_mm"], fp["y_mm"], fp["z_mm"]) == (70.0, 70.0, 70.0)
    assert res.lesions[0]["x_mm"] == pytest.approx(15.0)


def test_evaluate_case_labels_each_mask_once(monkeypatch):
    """Volume metrics, detection and quantification share one labelling (cc3d) of each mask: two
    calls per case, not one per metric family; and the shared labelling gives what each family
    computes on its own."""
    import cc3d

    ref, pred = z(), z()
    ref[1:3, 1:3, 1:3] = True
    ref[6:8, 1:3, 1:3] = True
    pred[1:3, 1:3, 1:4] = True
    pred[7, 7, 7] = True
    pet = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) / 100
    alone = (volume_metrics(pred, ref, SP), match_lesions(pred, ref, SP, pet=pet).counts,
             quantify(pred, SP, pet), quantify(ref, SP, pet))
    calls = []
    real = cc3d.connected_components
    monkeypatch.setattr(cc3d, "connected_components", lambda *a, **k: calls.append(1) or real(*a, **k))
    row = evaluate_case(pred, ref, SP, pet).row
    assert len(calls) == 2  # the reference once, the prediction once
    vol, counts, qp, qr = alone
    assert (row["dice"], row["fpv_ml"], row["fnv_ml"]) == (vol["dice"], vol["fpv_ml"], vol["fnv_ml"])
    assert all(row[f"{k}_{c}"] == counts[c][k] for c in counts for k in ("tp", "fp", "fn"))
    assert all(row[f"pred_{q}"] == qp[q] and row[f"ref_{q}"] == qr[q] for q in qp)


# ------------------------------------------------------------------ issue 15: paper's scoring, strata, calibration


def test_lesion_free_dice_rules():
    from sam_l1dfl.metrics.volume import empty_reference_dice

    ref, clean, fp = z(), z(), z()
    fp[5, 5, 5] = True
    assert nan(dice(fp, ref)) and nan(dice(clean, ref))  # ours: undefined
    assert dice(fp, ref, empty_ref="authors") == 0.0  # the authors': any false-positive voxel -> 0
    assert dice(clean, ref, empty_ref="authors") == 1.0  # nothing predicted -> 1
    les = z()
    les[1:3, 1:3, 1:3] = True
    assert dice(les, les, empty_ref="authors") == 1.0 and dice(fp, les, empty_ref="authors") == 0.0
    assert empty_reference_dice(3, "authors") == 0.0 and nan(empty_reference_dice(0, "nan"))
    with pytest.raises(ValueError, match="empty_ref"):
        dice(fp, ref, empty_ref="zero")


def _c3_case():
    """Two lesions with a PET peak each; the prediction holds A's SUVmax voxel, touches B away from
    its SUVmax voxel, and adds a blob far from both."""
    ref, pred = z(), z()
    pet = np.ones(SHAPE, dtype=np.float32)
    ref[1:4, 1:4, 1:4] = True  # A (27 mL)
    pet[2, 2, 2] = 9.0  # A's SUVmax
    ref[6:9, 6:9, 6:9] = True  # B (27 mL)
    pet[8, 8, 8] = 7.0  # B's SUVmax
    pred[1:3, 1:3, 1:3] = True  # covers A's SUVmax voxel (IoU 8/27 < 0.5)
    pred[6, 6, 6] = True  # touches B, not its SUVmax
    pred[0, 9, 0] = True  # blob
    return pred, ref, pet


def test_c3_counting_per_reference_lesion():
    pred, ref, pet = _c3_case()
    m = match_lesions(pred, ref, SP, pet=pet)
    assert m.counts["c1"] == {**m.counts["c1"], "tp": 2, "fp": 1, "fn": 0}
    assert m.counts["c2"] == {**m.counts["c2"], "tp": 0, "fp": 3, "fn": 2}
    # C3: A is a TP (its SUVmax voxel is predicted); the piece on B misses B's SUVmax voxel, so B is an
    # FN and that piece an FP, as is the blob
    c3 = m.counts["c3"]
    assert (c3["tp"], c3["fp"], c3["fn"]) == (1, 2, 1)
    assert c3["f1"] == pytest.approx(2 / (2 + 2 + 1))
    assert [r["detected_c3"] for r in m.ref] == [True, False]
    assert [r["suvmax_index"] for r in m.ref] == [(2, 2, 2), (8, 8, 8)]


def test_new_strata_and_dissemination():
    from sam_l1dfl.metrics.detection import row_stratum, stratum_of, SUVMAX_STRATA, TLU_STRATA
    from sam_l1dfl.metrics.quantify import dissemination_mm

    pred, ref, pet = _c3_case()
    m = match_lesions(pred, ref, SP, pet=pet)
    # A: SUVmax 9 -> 5-10; TLU = mean(26·1 + 9)/27 · 27 mL = 35 -> >=20.  B: SUVmax 7, TLU 33
    assert [row_stratum(r, "suv_max") for r in m.ref] == ["SUVmax 5-10", "SUVmax 5-10"]
    assert m.ref[0]["tlu"] == pytest.approx(35.0) and row_stratum(m.ref[0], "tlu") == "TLU >=20"
    assert stratum_of(10.0, SUVMAX_STRATA) == "SUVmax >=10" and stratum_of(4.999, SUVMAX_STRATA) == "SUVmax <5"
    assert stratum_of(5.0, TLU_STRATA) == "TLU 5-20" and stratum_of(float("nan"), TLU_STRATA) is None
    s = strata_summary(m.ref, criteria=["c1", "c3"], by="suv_max")
    assert s["SUVmax 5-10"]["n_lesions"] == 2 and s["SUVmax 5-10"]["recall_c3"] == pytest.approx(0.5)
    assert s["SUVmax >=10"]["n_lesions"] == 0 and nan(s["SUVmax >=10"]["recall_c1"])
    # scan-level strata: the value of the scan attached to each row
    assert row_stratum({"scan_lesion_count": 0}, "lesion_count") == "0 lesions"
    assert row_stratum({"scan_lesion_count": 2}, "lesion_count") == "2-4 lesions"
    assert row_stratum({"scan_lesion_count": 5}, "lesion_count") == ">=5 lesions"
    assert row_stratum({"scan_lesion_count": 0, "scan_dmax_mm": 0.0}, "spread") == "lesion-free"
    assert row_stratum({"scan_lesion_count": 1, "scan_dmax_mm": 0.0}, "spread") == "Dmax <50 mm"
    assert row_stratum({"scan_lesion_count": 3, "scan_dmax_mm": 200.0}, "spread") == "Dmax >=200 mm"
    # Dmax: from voxel (1,1,1) to (8,8,8) at 10 mm = 70·sqrt(3) mm; anisotropic spacing is honoured
    assert dissemination_mm(ref, SP) == pytest.approx(70 * math.sqrt(3))
    one = z()
    one[2, 3, 4] = True
    one[2, 3, 9] = True
    assert dissemination_mm(one, (1.0, 2.0, 3.0)) == pytest.approx(15.0)
    assert dissemination_mm(z(), SP) == 0.0
    # the convex-hull path gives the brute-force answer
    rng = np.random.default_rng(0)
    big = rng.random((30, 30, 30)) < 0.3
    pts = np.argwhere(big) * np.array([1.0, 2.0, 1.5])
    brute = max(np.sqrt(((pts[i] - pts) ** 2).sum(1)).max() for i in range(len(pts)))
    assert dissemination_mm(big, (1.0, 2.0, 1.5), max_points=100) == pytest.approx(brute)


def test_ece_and_mid_share_by_hand():
    from sam_l1dfl.metrics.calibration import (case_calibration, expected_calibration_error, lesion_margin,
                                               mid_share, reliability_bins)

    # 10 bins. Probabilities and labels:
    #   bin 0 [0, .1):  0.05, 0.05, 0.05, 0.05 ; labels 0,0,0,1  -> |1/4 - 0.05| · 4 = 0.8
    #   bin 5 [.5, .6): 0.55, 0.55            ; labels 1,1        -> |1 - 0.55| · 2 = 0.9
    #   bin 9 [.9, 1]:  0.95, 1.0, 0.95, 0.9  ; labels 1,1,1,0    -> |3/4 - 0.95| · 4 = 0.8
    # ECE = (0.8 + 0.9 + 0.8) / 10 = 0.25
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.55, 0.55, 0.95, 1.0, 0.95, 0.9])
    t = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    b = reliability_bins(p, t, 10)
    assert b["count"].tolist() == [4, 0, 0, 0, 0, 2, 0, 0, 0, 4]
    assert expected_calibration_error(**b) == pytest.approx(0.25)
    assert mid_share(p) == pytest.approx(0.2)  # the two 0.55
    assert mid_share(np.array([0.1, 0.9, 0.0999])) == pytest.approx(1 / 3)  # [0.1, 0.9)
    assert nan(expected_calibration_error([0, 0], [0, 0], [0, 0]))
    # the margin: 10 mm voxels, margin 10 mm -> the lesion voxel and its 6 face neighbours
    ref = z()
    ref[5, 5, 5] = True
    mg = lesion_margin(ref, z(), SP, 10.0)
    assert mg.sum() == 7 and mg[5, 5, 4] and not mg[5, 4, 4]
    assert lesion_margin(ref, z(), SP, 15.0).sum() == 19  # + the 12 edge neighbours (14.1 mm)
    prob = np.zeros(SHAPE, np.float32)
    prob[5, 5, 5] = 0.55
    prob[5, 5, 4] = 0.3
    c = case_calibration(prob, prob > 0.5, ref, SP, margin_mm=10.0, n_bins=10)
    # 7 voxels: 0.55 (lesion), 0.3 (background), five 0.0 (background)
    # ECE = (5·0 + 1·0.3 + 1·|1 - 0.55|) / 7
    assert c["n_margin_voxels"] == 7 and c["ece"] == pytest.approx((0.3 + 0.45) / 7)
    assert c["mid_share"] == pytest.approx(2 / 7)
    assert sum(c["correct"]) == 7 and sum(c["incorrect"]) == 0
    assert nan(case_calibration(prob * 0, prob * 0 > 1, z(), SP)["ece"])
