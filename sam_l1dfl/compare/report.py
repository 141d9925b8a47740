"""The comparison's report: ``table.md``, ``table.csv``, ``stats.csv``, ``cases.csv``, ``figures/``.

* **Primary criterion** ``primary`` (``"c1"`` by default, ``"c3"`` for the paper preset: the
  reference lesion's SUVmax voxel lies in the prediction, the paper's true positive).  The table's
  "FP lesions", the primary tests and the strata use it.
* **Lesion-free scans** (``lesion_free_dice``): ``"nan"`` (ours: Dice undefined, left out) or
  ``"authors"`` (Dice 1 if nothing is predicted, else 0:
  :func:`sam_l1dfl.metrics.volume.empty_reference_dice`); the table's caption names the rule.
* Per (model, loss): mean ± sd over **test cases** of each case's value averaged over seeds
  (undefined values are left out of that column's mean and its ``n``).
* **Detection** under C1, C2 and C3 each: pooled over all lesions (TP/FP/FN summed over test cases
  and seeds, then precision, recall, F1) and per case (mean F1, FP lesions).
* **Tests**, paired per-case two-sided Wilcoxon signed-rank, L1DFL vs each baseline, per model, in
  three families, each Bonferroni-corrected over its own tests (``family`` in ``stats.csv``):
  ``primary`` (Dice, F1 and FP lesions under the primary criterion; ``summary["stats"]``),
  ``detection`` (F1 and FP lesions under each of C1, C2, C3) and ``calibration`` (per-case ECE and
  mid share over the lesion margin).  Effect size = matched-pairs rank-biserial r of (L1DFL − baseline).
* **Strata** (:data:`sam_l1dfl.metrics.detection.STRATIFIERS`): F1 under the primary criterion,
  pooled over test cases and seeds, by lesion size, lesion SUVmax, lesion TLU (reference lesions
  by their value, FP components by theirs), lesions per scan and spread (Dmax) of the scan.
* **Calibration**: over all voxels of the test scans (histograms of correct / incorrect voxels,
  threshold 0.5), and over the lesion margin (:mod:`sam_l1dfl.metrics.calibration`: reliability
  diagram, ECE, histograms, mid share = share of probabilities in [0.1, 0.9)).
* **Baselines**: results with ``"baseline": True`` (SUV thresholds, :mod:`sam_l1dfl.baselines`)
  are extra rows of the table and the detection and strata tables; they enter no test.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sam_l1dfl.compare.report_figures import figures
from sam_l1dfl.compare.report_metrics import (CALIBRATION_METRICS, CASE_METRICS, LOWER_IS_BETTER,  # noqa: F401
                                              REFERENCE_LOSS, STAT_METRICS, TABLE_METRICS, detection_metrics,
                                              stat_families, stat_metrics, table_metrics)
from sam_l1dfl.compare.report_text import ReportData, table_md
from sam_l1dfl.compare.stats import bonferroni, wilcoxon_paired
from sam_l1dfl.io_utils import write_json_atomic, write_text_atomic
from sam_l1dfl.metrics.calibration import MID, expected_calibration_error
from sam_l1dfl.metrics.detection import CRITERIA, STRATIFIERS, ratios, row_stratum
from sam_l1dfl.metrics.volume import EMPTY_REF_RULES, empty_reference_dice

def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def case_value(row: dict, metric: str, lesion_free_dice: str = "nan") -> float:
    """One case's value of ``metric``; Dice of a lesion-free scan by the ``lesion_free_dice`` rule."""
    if metric == "dice" and lesion_free_dice != "nan" and _f(row.get("ref_lesion_count")) == 0:
        # any predicted voxel counts: the volume (TMTV), not only the components that were counted
        known = [v for v in (_f(row.get(k)) for k in ("pred_tmtv_ml", "fpv_ml", "pred_lesion_count"))
                 if not math.isnan(v)]
        return empty_reference_dice(max(known), lesion_free_dice) if known else float("nan")
    return _f(row.get(metric))


def per_case_means(results: Sequence[dict], lesion_free_dice: str = "nan") -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(model, loss): {case: {metric: mean over seeds}}}``."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        for row in r["cases"]:
            for m in CASE_METRICS:
                acc[(r["model"], r["loss"])][row["case"]][m].append(case_value(row, m, lesion_free_dice))
    out: dict = {}
    for key, cases in acc.items():
        out[key] = {}
        for case, ms in cases.items():
            out[key][case] = {}
            for m, vals in ms.items():
                v = np.asarray(vals, dtype=float)
                v = v[np.isfinite(v)]
                out[key][case][m] = float(v.mean()) if v.size else float("nan")
    return out


def _msd(vals: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def pooled_detection(results: Sequence[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    """``{(model, loss): {criterion: {tp, fp, fn, precision, recall, f1}}}``, summed over cases and seeds."""
    out: dict = {}
    for r in results:
        d = out.setdefault((r["model"], r["loss"]), {c: {"tp": 0, "fp": 0, "fn": 0} for c in CRITERIA})
        for row in r["cases"]:
            for c in CRITERIA:
                for k in ("tp", "fp", "fn"):
                    v = _f(row.get(f"{k}_{c}"))
                    d[c][k] += int(v) if math.isfinite(v) else 0
    for d in out.values():
        for s in d.values():
            s.update(ratios(s["tp"], s["fp"], s["fn"]))
    return out


def _scan_values(r: dict) -> dict:
    """``case -> {scan_lesion_count, scan_dmax_mm}`` from a run's case rows."""
    return {row["case"]: {"scan_lesion_count": _f(row.get("ref_lesion_count")),
                          "scan_dmax_mm": _f(row.get("ref_dmax_mm"))} for row in r["cases"]}


def strata_f1(results: Sequence[dict], criterion: str = "c1", by: str = "size") -> dict[tuple[str, str], dict[str, dict]]:
    """Per (model, loss) and ``by`` stratum: TP/FN of reference lesions and FP of predicted
    components under ``criterion``, pooled over test cases and seeds, and their F1."""
    names = [n for n, _, _ in STRATIFIERS[by][2]]
    scan_level = STRATIFIERS[by][0] == "scan"
    out: dict = {}
    for r in results:
        d = out.setdefault((r["model"], r["loss"]), {name: {"tp": 0, "fp": 0, "fn": 0} for name in names})
        scans = _scan_values(r) if scan_level else {}
        for l in r["lesions"]:
            st = row_stratum({**l, **scans.get(l.get("case"), {})}, by)
            if st is None:
                continue
            s = d[st]
            if l["kind"] == "ref":
                s["tp" if l.get(f"detected_{criterion}") else "fn"] += 1
            elif l.get(f"fp_{criterion}"):
                s["fp"] += 1
    for d in out.values():
        for s in d.values():
            den = 2 * s["tp"] + s["fp"] + s["fn"]
            s["f1"] = 2 * s["tp"] / den if den else float("nan")
    return out


def _hist_shares(c: dict) -> None:
    """Add mid shares (and totals) of the ``correct`` / ``incorrect`` histograms of ``c`` in place."""
    n = len(c["correct"])
    centres = (np.arange(n) + 0.5) / n
    mid = (centres >= MID[0]) & (centres < MID[1])
    for k in ("correct", "incorrect"):
        tot = c[k].sum()
        c[f"{k}_mid_share"] = float(c[k][mid].sum() / tot) if tot else float("nan")
        c[f"{k}_total"] = int(tot)
    tot_i = c["incorrect"].sum()
    c["incorrect_confident_share"] = float(c["incorrect"][~mid].sum() / tot_i) if tot_i else float("nan")
    tot = c["correct"].sum() + tot_i
    c["mid_share"] = float((c["correct"][mid].sum() + c["incorrect"][mid].sum()) / tot) if tot else float("nan")


def calibration(results: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """Per (model, loss): the whole-scan histograms summed over runs with their shares, and under
    ``margin`` (when the runs recorded it) the lesion-margin reliability bins, histograms, pooled ECE
    and shares."""
    out: dict = {}
    for r in results:
        cal = r.get("calibration")
        if not cal:
            continue
        key = (r["model"], r["loss"])
        c = out.setdefault(key, {"correct": np.zeros(len(cal["correct"])), "incorrect": np.zeros(len(cal["incorrect"]))})
        c["correct"] += np.asarray(cal["correct"], dtype=float)
        c["incorrect"] += np.asarray(cal["incorrect"], dtype=float)
        if cal.get("margin"):
            mg = c.setdefault("margin", {k: np.zeros(len(v)) for k, v in cal["margin"].items() if isinstance(v, list)})
            mg["margin_mm"] = cal["margin"]["margin_mm"]
            for k, v in cal["margin"].items():
                if isinstance(v, list):
                    mg[k] = mg[k] + np.asarray(v, dtype=float)
    for c in out.values():
        _hist_shares(c)
        mg = c.get("margin")
        if mg:
            _hist_shares(mg)
            mg["ece"] = expected_calibration_error(mg["count"], mg["prob_sum"], mg["pos_sum"])
    return out


def statistics(means: dict, models: Sequence[str], losses: Sequence[str], metrics: Sequence = STAT_METRICS,
               family: str = "primary") -> list[dict]:
    """Paired Wilcoxon tests of L1DFL vs each baseline per model on ``metrics``, Bonferroni over them."""
    rows = []
    if REFERENCE_LOSS not in losses:
        return rows
    for model in models:
        ref = means.get((model, REFERENCE_LOSS))
        if ref is None:
            continue
        for base in losses:
            if base == REFERENCE_LOSS or (model, base) not in means:
                continue
            other = means[(model, base)]
            cases = sorted(set(ref) & set(other))
            for m, label, direction in metrics:
                a = [ref[c].get(m, float("nan")) for c in cases]
                b = [other[c].get(m, float("nan")) for c in cases]
                w = wilcoxon_paired(a, b)
                fa, fb = np.asarray(a, float), np.asarray(b, float)
                ok = np.isfinite(fa) & np.isfinite(fb)
                rows.append({"family": family, "model": model, "comparison": f"{REFERENCE_LOSS} vs {base}",
                             "baseline": base, "metric": m, "metric_label": label, "higher_is_better": direction > 0,
                             "n_pairs": w["n"], "n_nonzero": w["n_nonzero"],
                             "l1dfl_mean": float(fa[ok].mean()) if ok.any() else float("nan"),
                             "baseline_mean": float(fb[ok].mean()) if ok.any() else float("nan"),
                             "median_diff": w["median_diff"], "W": w["statistic"], "p": w["p"],
                             "effect_size_rb": w["effect_size"]})
    adj = bonferroni([r["p"] for r in rows])
    m = sum(1 for r in rows if math.isfinite(r["p"]))
    for r, pa in zip(rows, adj):
        r["p_bonferroni"] = pa
        r["m_tests"] = m
        md = r["l1dfl_mean"] - r["baseline_mean"]
        sign = (1 if r["higher_is_better"] else -1) * (md if math.isfinite(md) else 0.0)
        r["favours"] = "l1dfl" if sign > 0 else (r["baseline"] if sign < 0 else "neither")
        r["significant_0.05"] = bool(math.isfinite(pa) and pa < 0.05)
    return rows


# ---------------------------------------------------------------------- writing
def _csv_text(rows: list[dict], fields: "list[str] | None" = None) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _report_rules(meta: dict, primary: "str | None", lesion_free_dice: "str | None") -> tuple[str, str]:
    """The primary criterion and the lesion-free Dice rule of :func:`write_report`, checked."""
    paper = meta.get("budget") == "paper"
    primary = (primary or meta.get("primary_criterion") or ("c3" if paper else "c1")).lower()
    if primary not in CRITERIA:
        raise ValueError(f"primary criterion must be one of {CRITERIA}, got {primary!r}")
    lesion_free_dice = lesion_free_dice or meta.get("lesion_free_dice") or ("authors" if paper else "nan")
    if lesion_free_dice not in EMPTY_REF_RULES:
        raise ValueError(f"lesion_free_dice must be one of {EMPTY_REF_RULES}, got {lesion_free_dice!r}")
    return primary, lesion_free_dice


def _table_rows(results: Sequence[dict], all_keys: list, base_keys: list, means: dict, pooled: dict,
                calib: dict) -> list[dict]:
    """One row of ``table.csv`` per (model, loss): the means, the pooled detection, cost, calibration."""
    by_key: dict = defaultdict(list)
    for r in results:
        by_key[(r["model"], r["loss"])].append(r)

    table_rows = []
    for k in all_keys:
        row: dict[str, Any] = {"model": k[0], "loss": k[1], "n_test_cases": len(means[k]), "n_seeds": len(by_key[k])}
        for m in CASE_METRICS:
            mu, sd, n = _msd([v[m] for v in means[k].values()])
            row[f"{m}_mean"], row[f"{m}_sd"], row[f"{m}_n"] = mu, sd, n
        for c in CRITERIA:
            for q in ("tp", "fp", "fn", "precision", "recall", "f1"):
                row[f"pooled_{q}_{c}"] = pooled[k][c][q]
        rk = by_key[k]
        row["wall_seconds_mean"] = float(np.mean([r["wall_seconds"] for r in rk]))
        row["peak_rss_mb_max"] = max(r["memory"]["peak_rss_mb"] for r in rk)
        cu = [r["memory"].get("cuda_peak_allocated_mb") for r in rk if r["memory"].get("cuda_peak_allocated_mb")]
        row["cuda_peak_mb_max"] = max(cu) if cu else float("nan")
        c = calib.get(k, {})
        row["correct_mid_share"] = c.get("correct_mid_share", float("nan"))
        row["incorrect_mid_share"] = c.get("incorrect_mid_share", float("nan"))
        row["margin_ece_pooled"] = c.get("margin", {}).get("ece", float("nan"))
        row["margin_mid_share_pooled"] = c.get("margin", {}).get("mid_share", float("nan"))
        row["baseline"] = k in base_keys
        table_rows.append(row)
    return table_rows


def _write_csvs(out: Path, table_rows: list, all_stats: list, results: Sequence[dict]) -> None:
    """``table.csv``, ``stats.csv`` and ``cases.csv``."""
    tfields = ["model", "loss", "n_test_cases", "n_seeds"] + [f"{m}_{s}" for m, _ in TABLE_METRICS
                                                               for s in ("mean", "sd", "n")] + \
              ["wall_seconds_mean", "peak_rss_mb_max", "cuda_peak_mb_max", "correct_mid_share", "incorrect_mid_share"]
    tfields += [f for f in table_rows[0] if f not in tfields] if table_rows else []
    write_text_atomic(out / "table.csv", _csv_text(table_rows, tfields))
    write_text_atomic(out / "stats.csv", _csv_text(all_stats) if all_stats else "")
    case_rows = [row for r in results for row in r["cases"]]
    write_text_atomic(out / "cases.csv", _csv_text(case_rows))


def _jsonable(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else _jsonable(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


def write_report(out: "str | Path", results: Sequence[dict], splits: dict, meta: dict, *,
                 primary: "str | None" = None, lesion_free_dice: "str | None" = None) -> dict:
    """Write the report of ``results`` (one dict per finished run, ``result.json``); returns the summary.

    ``primary``: the detection criterion of the table's FP column, the primary tests and the strata
    (default: ``meta["primary_criterion"]``, else ``"c3"`` for the ``paper`` budget and ``"c1"``
    otherwise); ``lesion_free_dice``: ``"nan"`` or ``"authors"`` (default: ``meta["lesion_free_dice"]``,
    else ``"authors"`` for ``paper`` and ``"nan"`` otherwise)."""
    out = Path(out)
    primary, lesion_free_dice = _report_rules(meta, primary, lesion_free_dice)
    smoke = meta.get("budget") == "small"
    runs = [r for r in results if not r.get("baseline")]
    base_runs = [r for r in results if r.get("baseline")]
    models = [m for m in meta["models"] if any(r["model"] == m for r in runs)]
    losses = [l for l in meta["losses"] if any(r["loss"] == l for r in runs)]
    keys = [(m, l) for m in models for l in losses if any(r["model"] == m and r["loss"] == l for r in runs)]
    base_keys = list(dict.fromkeys((r["model"], r["loss"]) for r in base_runs))
    all_keys = keys + base_keys
    means = per_case_means(results, lesion_free_dice)
    strata = {by: strata_f1(results, primary, by) for by in STRATIFIERS}
    pooled = pooled_detection(results)
    calib = calibration(runs)
    has_margin = any(c.get("margin") for c in calib.values())
    fam = {f: statistics(means, models, losses, mets, f) if f != "calibration" or has_margin else []
           for f, mets in stat_families(primary)}
    stats, det_stats, cal_stats = fam["primary"], fam["detection"], fam["calibration"]
    table_rows = _table_rows(results, all_keys, base_keys, means, pooled, calib)
    fig_paths = figures(out, all_keys, means, strata, calib, smoke, primary)
    R = ReportData(meta, splits, results, primary, lesion_free_dice, smoke, table_metrics(primary),
                   stat_metrics(primary), models, losses, keys, base_keys, table_rows, stats, det_stats, cal_stats,
                   strata, calib, fig_paths)
    write_text_atomic(out / "table.md", table_md(R))
    _write_csvs(out, table_rows, stats + det_stats + cal_stats, results)
    summary = {"format": "sam-l1dfl-compare", "version": 1, "smoke_scale": smoke, **meta,
               "primary_criterion": primary, "lesion_free_dice": lesion_free_dice,
               "table": table_rows, "stats": stats, "detection_stats": det_stats, "calibration_stats": cal_stats,
               "pooled_detection": {f"{k[0]}/{k[1]}": v for k, v in pooled.items()},
               "strata_f1": {f"{k[0]}/{k[1]}": v for k, v in strata["size"].items()},
               "strata": {by: {f"{k[0]}/{k[1]}": v for k, v in st.items()} for by, st in strata.items()},
               "calibration": {f"{k[0]}/{k[1]}": _jsonable(v) for k, v in calib.items()},
               "figures": {k: str(v) for k, v in fig_paths.items()}}
    write_json_atomic(out / "summary.json", summary)
    return summary


__all__ = ["CALIBRATION_METRICS", "CASE_METRICS", "STAT_METRICS", "TABLE_METRICS", "calibration", "case_value",
           "detection_metrics", "per_case_means", "pooled_detection", "stat_metrics", "statistics", "strata_f1",
           "table_metrics", "stat_families", "write_report"]

