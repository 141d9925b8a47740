"""The comparison report's paper options (issue 15): C3 as the primary criterion, C1/C2/C3 pooled
and per case, the lesion-free Dice rule, the new strata, lesion-margin calibration tests, baseline rows."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from sam_l1dfl.compare.report import write_report
from sam_l1dfl.metrics import evaluate_case
from sam_l1dfl.metrics.calibration import add_calibration, case_calibration

SP = (10.0, 10.0, 10.0)
SHAPE = (10, 10, 10)


def cases(variant: int):
    """(case id, pred, ref, pet): c0 two lesions (see test_metrics._c3_case), c1 lesion-free with a
    blob (or clean for variant 1), c2 one lesion, hit at its SUVmax voxel."""
    out = []
    ref, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    pet = np.ones(SHAPE, np.float32)
    ref[1:4, 1:4, 1:4] = True
    pet[2, 2, 2] = 9.0
    ref[6:9, 6:9, 6:9] = True
    pet[8, 8, 8] = 7.0
    pred[1:3, 1:3, 1:3] = True
    pred[6, 6, 6] = True
    pred[0, 9, 0] = True
    out.append(("c0", pred, ref, pet))
    ref, pred = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    if variant == 0:
        pred[5, 5, 5] = True
    out.append(("c1", pred, ref, np.ones(SHAPE, np.float32)))
    ref, pred, pet = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), np.ones(SHAPE, np.float32)
    ref[2:5, 2:5, 2:5] = True
    pet[3, 3, 3] = 15.0
    pred[3:5, 3:5, 3:5] = True if variant == 0 else False
    if variant == 1:
        pred[2:5, 2:5, 2:5] = True
    out.append(("c2", pred, ref, pet))
    return out


def result(model, loss, variant, baseline=False):
    rows, lesions, margin = [], [], None
    for cid, pred, ref, pet in cases(variant):
        r = evaluate_case(pred, ref, SP, pet, case=cid)
        prob = np.where(pred, 0.8, 0.05).astype(np.float32)
        lc = case_calibration(prob, pred, ref, SP)
        margin = add_calibration(margin, lc)
        tag = {"model": model, "loss": loss, "seed": 0}
        rows.append({**tag, **r.row, "ref_dmax_mm": 0.0, "ece": lc["ece"], "mid_share": lc["mid_share"]})
        lesions += [{**tag, **l} for l in r.lesions]
    return {"name": f"{model}-{loss}-s0", "model": model, "loss": loss, "seed": 0, "wall_seconds": 1.0,
            "memory": {"peak_rss_mb": 10.0}, "device": "cpu", "best": {}, "cases": rows, "lesions": lesions,
            "baseline": baseline,
            "calibration": None if baseline else {"correct": [1] * 20, "incorrect": [1] * 20, "margin": margin}}


SPLITS = {"train": ["a"], "val": ["b"], "test": ["c0", "c1", "c2"], "split_seed": 0}


def meta(budget):
    return {"budget": budget, "budget_description": "test", "models": ["unet"], "losses": ["dice", "l1dfl"],
            "seeds": 1, "data": "x"}


def test_paper_report_c3_primary_pooled_and_per_case(tmp_path):
    results = [result("unet", "l1dfl", 0), result("unet", "dice", 1),
               result("threshold", "SUV>=4", 1, baseline=True)]
    s = write_report(tmp_path, results, SPLITS, meta("paper"))
    assert s["primary_criterion"] == "c3" and s["lesion_free_dice"] == "authors"
    # pooled C3 for l1dfl: c0 TP 1 FP 2 FN 1; c1 FP 1; c2 TP 1 (SUVmax voxel (3,3,3) predicted) -> 2/3/1
    pc = s["pooled_detection"]["unet/l1dfl"]["c3"]
    assert (pc["tp"], pc["fp"], pc["fn"]) == (2, 3, 1) and pc["f1"] == pytest.approx(4 / 8)
    pc1 = s["pooled_detection"]["unet/l1dfl"]["c1"]
    assert (pc1["tp"], pc1["fp"], pc1["fn"]) == (3, 2, 0)
    rows = {(r["model"], r["loss"]): r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    l1 = rows[("unet", "l1dfl")]
    # per case F1 C3: c0 2/5, c1 0, c2 1 -> mean 0.4667
    assert float(l1["f1_c3_mean"]) == pytest.approx((0.4 + 0 + 1) / 3, abs=1e-5)
    assert float(l1["fp_c3_mean"]) == pytest.approx(1.0)
    # the authors' lesion-free rule: c1 (one FP voxel) scores Dice 0 and counts in the mean
    d0 = 2 * 9 / (27 * 2 + 10)  # c0: 8 + 1 common voxels, |P| = 10, |R| = 54
    d2 = 2 * 8 / (27 + 8)
    assert int(l1["dice_n"]) == 3 and float(l1["dice_mean"]) == pytest.approx((d0 + 0 + d2) / 3, abs=1e-5)
    # primary tests: Dice, F1 C3, FP C3; detection tests for each criterion; calibration tests
    assert [r["metric"] for r in s["stats"]] == ["dice", "f1_c3", "fp_c3"]
    assert {r["metric"] for r in s["detection_stats"]} == {f"{k}_{c}" for k in ("f1", "fp") for c in ("c1", "c2", "c3")}
    assert {r["metric"] for r in s["calibration_stats"]} == {"ece", "mid_share"}
    assert all(r["m_tests"] == 6 for r in s["detection_stats"])
    fams = [r["family"] for r in csv.DictReader(open(tmp_path / "stats.csv"))]
    assert fams.count("primary") == 3 and fams.count("detection") == 6 and fams.count("calibration") == 2
    # baseline rows: in the table, not in the tests
    assert ("threshold", "SUV>=4") in rows and rows[("threshold", "SUV>=4")]["baseline"] == "True"
    assert all(r["baseline"] == "dice" for r in s["stats"])
    md = (tmp_path / "table.md").read_text()
    assert "the authors' rule" in md and "Primary detection criterion: **C3**" in md
    assert "| threshold | SUV>=4 |" in md and "## Detection under C1, C2 and C3" in md
    # strata under C3, pooled: by lesions per scan c0 (2 lesions) -> "2-4 lesions": TP 1 FP 2 FN 1
    st = s["strata"]["lesion_count"]["unet/l1dfl"]
    assert (st["2-4 lesions"]["tp"], st["2-4 lesions"]["fp"], st["2-4 lesions"]["fn"]) == (1, 2, 1)
    assert (st["0 lesions"]["fp"], st["1 lesion"]["tp"]) == (1, 1)
    assert s["strata"]["suv_max"]["unet/l1dfl"]["SUVmax >=10"]["tp"] == 1  # c2's lesion, SUVmax 15
    assert s["strata"]["spread"]["unet/l1dfl"]["lesion-free"]["fp"] == 1
    assert set(s["strata"]) == {"size", "size_fine", "suv_max", "tlu", "lesion_count", "spread"}
    # calibration over the margin: pooled ECE from pooled bins, per-case ECE in the table
    mg = s["calibration"]["unet/l1dfl"]["margin"]
    assert math.isfinite(mg["ece"]) and 0 <= mg["ece"] <= 1 and sum(mg["count"]) > 0
    for f in ("strata_f1", "strata_other", "fp_counts", "calibration", "calibration_margin", "reliability",
              "bimodality"):
        assert (tmp_path / "figures" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_budget_keeps_c1_and_nan_rule(tmp_path):
    results = [result("unet", "l1dfl", 0), result("unet", "dice", 1)]
    s = write_report(tmp_path, results, SPLITS, meta("small"))
    assert s["primary_criterion"] == "c1" and s["lesion_free_dice"] == "nan"
    assert [r["metric"] for r in s["stats"]] == ["dice", "f1_c1", "fp_c1"]
    rows = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    assert int(rows["l1dfl"]["dice_n"]) == 2  # the lesion-free case is left out
    assert "left out (ours, autoPET)" in (tmp_path / "table.md").read_text()
    # the options can be given explicitly
    s = write_report(tmp_path, results, SPLITS, meta("small"), primary="c2", lesion_free_dice="authors")
    assert [r["metric"] for r in s["stats"]] == ["dice", "f1_c2", "fp_c2"]
    with pytest.raises(ValueError, match="lesion_free_dice"):
        write_report(tmp_path, results, SPLITS, meta("small"), lesion_free_dice="zero")


def test_authors_lesion_free_rule_counts_predicted_volume_not_only_components():
    from sam_l1dfl.compare.report import case_value

    row = {"ref_lesion_count": 0, "pred_lesion_count": 0, "pred_tmtv_ml": 0.3, "fpv_ml": 0.3, "dice": "nan"}
    assert case_value(row, "dice", "authors") == 0.0  # FP voxels, though no component was counted
    assert case_value({**row, "pred_tmtv_ml": 0, "fpv_ml": 0}, "dice", "authors") == 1.0
    assert math.isnan(case_value(row, "dice", "nan"))
