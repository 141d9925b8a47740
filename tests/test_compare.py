"""compare_losses: the report from fixed numbers, and the whole runner on 3 synthetic cases × 1 epoch.

The issue asks for 2 cases; 3 is the minimum for disjoint training, validation and test cases
(the runner refuses to test on a case it trained or selected the epoch on).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from sam_l1dfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def fake_result(model, loss, seed, dice, fp, f1):
    cases = [{"case": f"c{i}", "dice": d, "fpv_ml": 0.5 * f, "fnv_ml": 0.1, "f1_c1": f1v, "f1_c2": f1v,
              "f1_c3": f1v, "fp_c1": f} for i, (d, f, f1v) in enumerate(zip(dice, fp, f1))]
    lesions = [{"kind": "ref", "stratum": "<1.5 mL", "detected_c1": True},
               {"kind": "ref", "stratum": ">=4 mL", "detected_c1": loss == "l1dfl"},
               {"kind": "pred", "stratum": "<1.5 mL", "fp_c1": True}]
    return {"name": f"{model}-{loss}-s{seed}", "model": model, "loss": loss, "seed": seed, "wall_seconds": 10.0,
            "memory": {"peak_rss_mb": 100.0}, "device": "cpu", "best": {"epoch": 1},
            "cases": cases, "lesions": lesions,
            "calibration": {"correct": [50] + [0] * 8 + [50], "incorrect": [1] * 10}}


def test_report_from_fixed_numbers(tmp_path):
    from sam_l1dfl.compare.report import write_report

    d_l1 = [0.80, 0.70, 0.65, float("nan"), 0.90, 0.60]
    d_dc = [0.75, 0.72, 0.55, float("nan"), 0.80, 0.50]
    fp_l1, fp_dc = [0, 1, 2, 0, 1, 3], [2, 1, 4, 1, 3, 5]
    f1 = [0.5, 0.6, 0.7, float("nan"), 0.8, 0.9]
    results = [fake_result("unet", "l1dfl", 0, d_l1, fp_l1, f1), fake_result("unet", "dice", 0, d_dc, fp_dc, f1)]
    # a second seed for dice with the same numbers + 0.02: per-case seed means enter the table
    results.append(fake_result("unet", "dice", 1, [x + 0.02 for x in d_dc], fp_dc, f1))
    splits = {"train": ["a"], "val": ["b"], "test": [f"c{i}" for i in range(6)], "split_seed": 0}
    meta = {"budget": "small", "budget_description": "test", "models": ["unet"], "losses": ["dice", "l1dfl"],
            "seeds": 2, "data": "x"}
    s = write_report(tmp_path, results, splits, meta)
    rows = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    ok = [x for x in d_l1 if math.isfinite(x)]
    assert float(rows["l1dfl"]["dice_mean"]) == pytest.approx(np.mean(ok), abs=1e-6)
    assert float(rows["l1dfl"]["dice_sd"]) == pytest.approx(np.std(ok, ddof=1), abs=1e-6)
    assert int(rows["l1dfl"]["dice_n"]) == 5
    assert float(rows["dice"]["dice_mean"]) == pytest.approx(np.mean([x + 0.01 for x in d_dc if math.isfinite(x)]),
                                                            abs=1e-6)
    st = {r["metric"]: r for r in s["stats"]}
    assert set(st) == {"dice", "f1_c1", "fp_c1"} and all(r["m_tests"] == 3 for r in s["stats"])
    a = np.array([x for x in d_l1 if math.isfinite(x)])
    b = np.array([x + 0.01 for x in d_dc if math.isfinite(x)])
    ref = sps.wilcoxon(a - b)
    assert st["dice"]["p"] == pytest.approx(ref.pvalue) and st["dice"]["W"] == pytest.approx(ref.statistic)
    assert st["dice"]["p_bonferroni"] == pytest.approx(min(1.0, 3 * ref.pvalue))
    assert st["fp_c1"]["effect_size_rb"] == pytest.approx(-1.0)  # L1DFL has fewer FPs in every differing case
    assert st["fp_c1"]["favours"] == "l1dfl"
    assert st["f1_c1"]["n_nonzero"] == 0 and st["f1_c1"]["p"] == 1.0 and st["f1_c1"]["favours"] == "neither"
    sf = s["strata_f1"]["unet/l1dfl"]
    assert sf[">=4 mL"]["f1"] == pytest.approx(1.0) and sf["<1.5 mL"]["f1"] == pytest.approx(2 / 3)
    assert s["strata_f1"]["unet/dice"][">=4 mL"]["f1"] == 0.0
    cal = s["calibration"]["unet/l1dfl"]
    assert cal["correct_mid_share"] == pytest.approx(0.0) and cal["incorrect_mid_share"] == pytest.approx(0.8)
    md = (tmp_path / "table.md").read_text()
    assert "SMOKE-SCALE RESULT" in md and "| unet | l1dfl |" in md and "Wilcoxon" in md
    for f in ("strata_f1", "fp_counts", "calibration"):
        assert (tmp_path / "figures" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_runner_end_to_end_and_resume(tmp_path):
    from sam_l1dfl.compare.sweep import run_comparison
    from sam_l1dfl.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "synth", 3, seed=1, progress=False)
    tiny = {"preprocess": {"spacing": 8.0}, "network": {"width": 0.125}, "augment": {"crop_size": 32},
            "train": {"epochs": 1, "batch_size": 1, "val_every": 1, "save_every": 1}}
    out = tmp_path / "results"
    logs: list[str] = []
    kw = dict(models=["unet"], losses=["dice", "l1dfl"], seeds=1, budget="small", isolate=False,
              cnn_overrides=tiny, progress=False, log=logs.append)
    s = run_comparison(tmp_path / "synth", out, **kw)
    sp = json.loads((out / "splits.json").read_text())
    assert len(sp["train"]) == len(sp["val"]) == len(sp["test"]) == 1
    assert not set(sp["test"]) & set(sp["train"] + sp["val"])
    rows = list(csv.DictReader(open(out / "table.csv")))
    # the SUV-threshold baselines follow the trained rows (issue 15)
    assert [(r["model"], r["loss"]) for r in rows] == [("unet", "dice"), ("unet", "l1dfl"), ("threshold", "SUV>=4"),
                                                     ("threshold", "SUV>=3"), ("threshold", "41% SUVmax")]
    rows = [r for r in rows if r["baseline"] == "False"]
    for r in rows:
        assert 0.0 <= float(r["dice_mean"]) <= 1.0 and float(r["fp_c1_mean"]) >= 0 and int(r["n_test_cases"]) == 1
        assert float(r["wall_seconds_mean"]) > 0 and float(r["peak_rss_mb_max"]) > 50
    md = (out / "table.md").read_text()
    assert md.count("| unet | ") >= 2 and "SMOKE-SCALE" in md
    assert len(s["stats"]) == 3 and {r["comparison"] for r in s["stats"]} == {"l1dfl vs dice"}
    for f in ("strata_f1.png", "fp_counts.png", "calibration.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    for name in ("unet-dice-s0", "unet-l1dfl-s0"):
        res = json.loads((out / "runs" / name / "result.json").read_text())
        assert res["cases"][0]["case"] == sp["test"][0] and sum(res["calibration"]["correct"]) > 0
        assert (out / "runs" / name / "pred" / f"{sp['test'][0]}.nii.gz").is_file()
    # identical settings apart from the loss
    cfgs = [json.loads((out / "runs" / n / "best" / "config.json").read_text())["training"]["config"]
            for n in ("unet-dice-s0", "unet-l1dfl-s0")]
    for c in cfgs:
        c.pop("name"), c["loss"].pop("name")
    assert cfgs[0] == cfgs[1]
    # resume: everything finished is skipped
    logs.clear()
    run_comparison(tmp_path / "synth", out, **kw)
    assert sum("skipped" in l for l in logs) == 2
    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="finished with other settings"):
        run_comparison(tmp_path / "synth", out, **{**kw, "cnn_overrides": {**tiny, "optim": {"lr": 1e-3}}})


def test_runner_argument_errors(tmp_path):
    from sam_l1dfl.compare.sweep import run_comparison

    with pytest.raises(ConfigError, match="unknown model"):
        run_comparison(tmp_path, tmp_path / "o", models=["vnet"])
    with pytest.raises(ConfigError, match="unknown loss"):
        run_comparison(tmp_path, tmp_path / "o", losses=["tversky"])
    with pytest.raises(ConfigError, match="--sam-checkpoint"):
        run_comparison(tmp_path, tmp_path / "o", models=["sam-med3d"], budget="paper")


def test_script_reports_one_line_error(tmp_path, capsys):
    from _script_helpers import load_script

    mod = load_script("compare_losses")
    assert mod.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err


@pytest.mark.slow
def test_sam_arm_one_click_per_lesion(tmp_path):
    """The SAM-Med3D arm: fine-tuning API with the loss, then 1 simulated click per lesion on the test case."""
    from sam_l1dfl.compare.sweep import run_comparison
    from sam_l1dfl.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "synth", 3, seed=1, progress=False)
    sam = {"data": {"max_train_crops": 2, "max_val_crops": 1}, "prompts": {"clicks_per_sample": 2},
           "train": {"epochs": 1, "max_steps": 1, "save_every": 1}}
    s = run_comparison(tmp_path / "synth", tmp_path / "o", models=["sam-med3d"], losses=["l1dfl"], seeds=1,
                       budget="small", isolate=False, sam_overrides=sam, progress=False, log=lambda m: None)
    res = json.loads((tmp_path / "o" / "runs" / "sam-med3d-l1dfl-s0" / "result.json").read_text())
    assert res["steps"] == 1 and res["start_from"]["checkpoint"] is None
    test_case = res["cases"][0]
    n_ref = sum(1 for l in res["lesions"] if l["kind"] == "ref")
    assert n_ref > 0 and test_case["tp_c1"] + test_case["fn_c1"] == n_ref
    assert s["table"][0]["model"] == "sam-med3d" and not s["stats"]  # one loss: nothing to compare
    md = (tmp_path / "o" / "table.md").read_text()
    assert "random weights" in md
