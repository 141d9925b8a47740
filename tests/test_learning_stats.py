"""The learning benchmark's bookkeeping (issue #20 §4): variants, strata, per-lesion joins, paired
differences with a case bootstrap, detection per stratum, and the tables."""

from __future__ import annotations

import json
import math

import pytest

from sam_l1dfl.compare.benchmark import MethodRun, parse_budget, tables
from sam_l1dfl.compare.learning import lesion_strata, parse_variant, run_name, variant_label
from sam_l1dfl.compare.paired import detection, fp_rows, lesion_rows, mean_over_seeds, paired_difference
from sam_l1dfl.errors import InputError
from sam_l1dfl.metrics.bootstrap import bootstrap_cluster_mean_ci


def test_variants_parse_into_loss_overrides():
    assert parse_variant("dicefocal") == ("dicefocal", [])
    assert parse_variant("l1dfl[eps=0.1, histogram_scope=roi,warmup_steps=50]") == (
        "l1dfl", ["loss.params.eps=0.1", "loss.params.histogram_scope=roi", "loss.warmup_steps=50"])
    assert parse_variant("l1dfl[train.log_every=5]") == ("l1dfl", ["train.log_every=5"])
    for bad in ("l1dfl[eps=0.1", "l1dfl[eps]", "l1dfl[=1]"):
        with pytest.raises(InputError):
            parse_variant(bad)
    assert variant_label("l1dfl[eps=0.1]") == "fine-tuned, L1DFL [eps=0.1]"
    assert run_name("l1dfl[eps=0.1]", 2, "8x150") == "l1dfl_eps_0.1_8x150_seed2" and run_name("zero-shot") == "zero-shot"
    assert parse_budget("16x300") == (16, 300)
    with pytest.raises(ValueError):
        parse_budget("16-300")


def test_strata_are_the_fixed_definitions():
    assert lesion_strata({"adjacent_to": "bladder", "tbr": 2.99, "volume_ml": 0.49}) == {
        "organ": "near an organ", "contrast": "low contrast", "size": "<0.5 mL"}
    assert lesion_strata({"adjacent_to": None, "tbr": 3.0, "volume_ml": 10.0}) == {
        "organ": "isolated", "contrast": "high contrast", "size": ">=10 mL"}


def test_cluster_bootstrap_moves_cases_together():
    # two cases: one with 9 lesions of +1, one with 1 lesion of -1: lesion mean 0.8; resampling
    # cases (not lesions) gives an interval that reaches down to -1 (both draws the small case)
    v = [1.0] * 9 + [-1.0]
    c = ["a"] * 9 + ["b"]
    r = bootstrap_cluster_mean_ci(v, c, n_resamples=4000, seed=0)
    assert r["mean"] == pytest.approx(0.8) and r["n_clusters"] == 2
    assert r["ci_low"] == pytest.approx(-1.0) and r["ci_high"] == pytest.approx(1.0)
    one = bootstrap_cluster_mean_ci([0.5, 0.7], ["a", "a"])
    assert one["mean"] == pytest.approx(0.6) and math.isnan(one["ci_low"])
    # deterministic for a seed
    assert bootstrap_cluster_mean_ci(v, c, seed=3) == bootstrap_cluster_mean_ci(v, c, seed=3)


class _Eval:
    def __init__(self, lesions):
        self.lesions = lesions


def _truth(tmp_path):
    les = [{"index": 1, "centroid_lps": [0.0, 0.0, 0.0], "adjacent_to": "bladder", "tbr": 10.0, "volume_ml": 0.3},
           {"index": 2, "centroid_lps": [50.0, 0.0, 0.0], "adjacent_to": None, "tbr": 2.0, "volume_ml": 3.0}]
    (tmp_path / "dataset.json").write_text(json.dumps({"cases": [{"case_id": "c1", "lesions": les},
                                                                 {"case_id": "c0", "lesions": []}]}))
    return tmp_path


def _ref(lid, x, dice, det=True):
    return {"kind": "ref", "case": "c1", "lesion_id": lid, "x_mm": x, "y_mm": 0.0, "z_mm": 1e-4, "dice": dice,
            "detected_c3": det, "volume_ml": 1.0, "pred_volume_ml": 2.0}


def test_lesion_rows_join_the_phantom_and_fps_take_the_nearest_lesion(tmp_path):
    root = _truth(tmp_path)
    ev = _Eval([_ref(1, 0.0, 0.5), _ref(2, 50.0, 0.25, det=False),
                {"kind": "pred", "case": "c1", "x_mm": 45.0, "y_mm": 0.0, "z_mm": 0.0, "volume_ml": 9.0, "fp_c3": True},
                {"kind": "pred", "case": "c1", "x_mm": 1.0, "y_mm": 0.0, "z_mm": 0.0, "volume_ml": 1.0, "fp_c3": False}])
    rows = lesion_rows(ev, root, lesion_strata)
    assert [(r["lesion_id"], r["phantom_index"], r["organ"], r["contrast"]) for r in rows] == [
        (1, 1, "near an organ", "high contrast"), (2, 2, "isolated", "low contrast")]
    fps = fp_rows(ev, root, lesion_strata)
    assert len(fps) == 1 and fps[0]["organ"] == "isolated"  # nearest to lesion 2
    assert detection(rows, fps) == {"tp": 1, "fn": 1, "fp": 1, "f1": pytest.approx(0.5)}
    # a reference lesion the phantom does not know is an error, not a silent mismatch
    with pytest.raises(InputError, match="not in the phantom"):
        lesion_rows(_Eval([_ref(3, 20.0, 0.1)]), root, lesion_strata)


def test_paired_difference_averages_seeds_first():
    les = [{"case": "a", "lesion_id": 1}, {"case": "b", "lesion_id": 1}]
    a = [[{"case": "a", "lesion_id": 1, "dice": 0.6}, {"case": "b", "lesion_id": 1, "dice": 0.2}],
         [{"case": "a", "lesion_id": 1, "dice": 0.8}, {"case": "b", "lesion_id": 1, "dice": 0.4}]]
    b = [[{"case": "a", "lesion_id": 1, "dice": 0.5}, {"case": "b", "lesion_id": 1, "dice": 0.5}]]
    assert mean_over_seeds(a) == {("a", 1): pytest.approx(0.7), ("b", 1): pytest.approx(0.3)}
    d = paired_difference(a, b, les, n_resamples=500)
    assert d["mean"] == pytest.approx(((0.7 - 0.5) + (0.3 - 0.5)) / 2) and d["n"] == 2
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]


def test_tables_report_every_row_stratum_and_difference():
    def lesions(dices):
        return [{"case": f"c{i // 2}", "lesion_id": i % 2 + 1, "dice": d, "detected_c3": d > 0.2,
                 "organ": "near an organ" if i % 2 else "isolated", "contrast": "high contrast", "size": "<0.5 mL"}
                for i, d in enumerate(dices)]

    m = {"lesion_dice": 0.5, "dice": 0.5, "fpv_ml": 0.0, "fnv_ml": 0.0, "f1_c3": 0.9}
    runs = [MethodRun("zero-shot", None, "", m, lesions([0.3, 0.1, 0.3, 0.1])),
            MethodRun("threshold", None, "", m, lesions([0.6, 0.0, 0.6, 0.0])),
            MethodRun("dicefocal", 0, "8x150", m, lesions([0.5, 0.5, 0.5, 0.5])),
            MethodRun("dicefocal", 1, "8x150", m, lesions([0.7, 0.3, 0.7, 0.3])),
            MethodRun("dicefocal", 0, "16x300", {**m, "lesion_dice": 0.61}, lesions([0.6] * 4))]
    md = tables({"runs": runs, "methods": ["dicefocal"], "curve": ["16x300"]}, "8x150", n_resamples=200)
    assert "| zero-shot (start) |" in md and "| fine-tuned, DiceFocal |" in md and "41% SUVmax" in md
    assert "near an organ (n=2)" in md and "isolated (n=2)" in md and "n/a" in md  # empty strata say so
    # paired: mean over seeds 0.6/0.4 per lesion vs zero-shot 0.3/0.1 -> +0.300 overall
    assert "| fine-tuned, DiceFocal − zero-shot | +0.300 [" in md
    assert "| fine-tuned, DiceFocal − threshold | +0.200 [" in md  # (0 + 0.4 + 0 + 0.4) / 4
    assert "| 8x150 | 16x300 |" in md and "| 0.500 | 0.610 |" in md


def test_curve_methods_outside_methods_are_refused_before_anything_runs(tmp_path):
    from sam_l1dfl.compare.benchmark import run_benchmark
    from sam_l1dfl.errors import InputError

    with pytest.raises(InputError, match=r"--curve-methods dicece: not among --methods"):
        run_benchmark(tmp_path / "b", init="standin", config="configs/demo.yaml", seeds=[0], methods=["dicefocal"],
                      train_cases=2, curve=["4x10"], curve_methods=["dicefocal", "dicece"])
    assert not (tmp_path / "b").exists()
