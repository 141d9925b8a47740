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

from sam_l1dfl.compare.stats import bonferroni, wilcoxon_paired
from sam_l1dfl.io_utils import atomic_path, write_json_atomic, write_text_atomic
from sam_l1dfl.metrics.calibration import MID, expected_calibration_error
from sam_l1dfl.metrics.detection import CRITERIA, STRATA, STRATIFIERS, ratios, row_stratum
from sam_l1dfl.metrics.volume import EMPTY_REF_RULES, empty_reference_dice

TABLE_METRICS = (("dice", "Dice"), ("fpv_ml", "FPV (mL)"), ("fnv_ml", "FNV (mL)"), ("f1_c1", "F1 C1"),
                 ("f1_c2", "F1 C2"), ("f1_c3", "F1 C3"), ("fp_c1", "FP lesions"))
#: every per-case value averaged over seeds (the table's plus the other criteria and calibration)
CASE_METRICS = tuple(m for m, _ in TABLE_METRICS) + ("fp_c2", "fp_c3", "recall_c1", "recall_c2", "recall_c3",
                                                     "ece", "mid_share")
#: (metric, label, +1 if higher is better else -1): the primary family with C1 as the criterion
STAT_METRICS = (("dice", "Dice", 1), ("f1_c1", "F1 C1", 1), ("fp_c1", "FP lesions", -1))
CALIBRATION_METRICS = (("ece", "ECE (margin)", -1), ("mid_share", "mid share (margin)", -1))
REFERENCE_LOSS = "l1dfl"
LOWER_IS_BETTER = ("fpv_ml", "fnv_ml", "fp_c1", "fp_c2", "fp_c3")


def stat_metrics(primary: str = "c1") -> tuple:
    """The primary family: Dice, F1 and FP lesions under ``primary``."""
    return (("dice", "Dice", 1), (f"f1_{primary}", f"F1 {primary.upper()}", 1),
            (f"fp_{primary}", "FP lesions" if primary == "c1" else f"FP lesions {primary.upper()}", -1))


def detection_metrics() -> tuple:
    return tuple(x for c in CRITERIA for x in ((f"f1_{c}", f"F1 {c.upper()}", 1),
                                              (f"fp_{c}", f"FP lesions {c.upper()}", -1)))


def stat_families(primary: str = "c1") -> list[tuple[str, tuple]]:
    """``[(family, metrics), ...]``: the Wilcoxon test families of the report, each Bonferroni-corrected
    over its own tests (the calibration family runs only when the runs recorded margin calibration)."""
    return [("primary", stat_metrics(primary)), ("detection", detection_metrics()),
            ("calibration", CALIBRATION_METRICS)]


def table_metrics(primary: str = "c1") -> tuple:
    fp = stat_metrics(primary)[2]
    return TABLE_METRICS[:-1] + ((fp[0], fp[1]),)


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


def _fmt(mean: float, sd: float, nd: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{nd}f} ± {sd:.{nd}f}" if math.isfinite(sd) else f"{mean:.{nd}f}"


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


# ---------------------------------------------------------------------- figures
COLORS = {"dice": "#4c72b0", "dicefocal": "#dd8452", "l1dfl": "#55a868", "dicece": "#8172b3", "focal": "#937860"}
HATCHES = ["", "//", "..", "xx", "\\\\"]


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _strata_bars(ax, keys: list, strata: dict, names: list, models: list) -> None:
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        vals = [strata[k][n]["f1"] if k in strata else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width, np.nan_to_num(vals), width,
               label=f"{k[0]} / {k[1]}", color=COLORS.get(k[1], "#999999"), edgecolor="black", linewidth=0.4,
               hatch=HATCHES[models.index(k[0]) % len(HATCHES)])
    ax.set_xticks(np.arange(len(names)), [f"{n}\n(n={sum(strata[keys[0]][n][x] for x in ('tp', 'fn'))} lesions)"
                                          if keys else n for n in names], fontsize=7)
    ax.set_ylim(0, 1)


def _grid(models: list, losses: list, w: float = 3.2, h: float = 2.6):
    import matplotlib.pyplot as plt

    return plt.subplots(len(models), len(losses), figsize=(w * len(losses), h * len(models)), squeeze=False)


def _histograms(calib: dict, models: list, losses: list, title: str, margin: bool):
    fig, axes = _grid(models, losses)
    for i, m in enumerate(models):
        for j, l in enumerate(losses):
            ax = axes[i][j]
            c = calib.get((m, l))
            c = c.get("margin") if (c and margin) else c
            if c is None:
                ax.axis("off")
                continue
            edges = np.linspace(0, 1, len(c["correct"]) + 1)
            for k, col in (("correct", "#4c72b0"), ("incorrect", "#c44e52")):
                tot = c[k].sum()
                ax.stairs(c[k] / tot if tot else c[k], edges, label=f"{k} ({int(tot):,} vox)", color=col, fill=False,
                          linewidth=1.4)
            ax.set_yscale("log")
            ax.set_title(f"{m} / {l}", fontsize=9)
            ax.set_xlabel("predicted lesion probability", fontsize=8)
            if j == 0:
                ax.set_ylabel("fraction of voxels (log)", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figures(out: Path, keys: list, means: dict, strata: dict, calib: dict, smoke: bool,
            primary: str = "c1") -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fdir = out / "figures"
    paths = {}
    tag = "  [SMOKE-SCALE]" if smoke else ""
    P = primary.upper()
    labels = [f"{m}\n{l}" for m, l in keys]
    models = list(dict.fromkeys(m for m, _ in keys))
    losses = list(dict.fromkeys(l for _, l in keys))
    # 1. per-size-stratum F1 bars
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    _strata_bars(ax, keys, strata["size"], [n for n, _, _ in STRATA], models)
    ax.set_ylabel(f"F1 ({P}, pooled over test cases and seeds)")
    ax.set_title("Lesion detection F1 per size stratum" + tag)
    ax.legend(fontsize=7, ncol=2)
    paths["strata_f1"] = _save_fig(fig, fdir / "strata_f1.png")
    # 2. the other strata
    others = [b for b in STRATIFIERS if b != "size"]
    fig, axs = plt.subplots(1, len(others), figsize=(max(6, 1.1 * len(keys) + 2) * len(others) / 1.6, 4), squeeze=False)
    for ax, by in zip(axs[0], others):
        _strata_bars(ax, keys, strata[by], [n for n, _, _ in STRATIFIERS[by][2]], models)
        ax.set_title(f"by {by.replace('_', ' ')}", fontsize=9)
    axs[0][0].set_ylabel(f"F1 ({P}, pooled)")
    axs[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle("Lesion detection F1 per stratum" + tag, fontsize=10)
    fig.tight_layout()
    paths["strata_other"] = _save_fig(fig, fdir / "strata_other.png")
    # 3. FP count distributions
    fp = f"fp_{primary}"
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    data = [[v[fp] for v in means[k].values() if math.isfinite(v[fp])] for k in keys]
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=COLORS.get(keys[i - 1][1], "k"), zorder=3)
    ax.set_xticks(range(1, len(keys) + 1), labels, fontsize=8)
    ax.set_ylabel(f"false-positive lesions per test case ({P})")
    ax.set_title("False positives per case" + tag)
    paths["fp_counts"] = _save_fig(fig, fdir / "fp_counts.png")
    # 4. whole-scan calibration histograms
    cal_keys = [k for k in keys if k in calib]
    cm = list(dict.fromkeys(m for m, _ in cal_keys))
    cl = list(dict.fromkeys(l for _, l in cal_keys))
    if cal_keys:
        fig = _histograms(calib, cm, cl, "Calibration: probabilities of correctly vs incorrectly classified voxels "
                          "(whole scans)" + tag, margin=False)
        paths["calibration"] = _save_fig(fig, fdir / "calibration.png")
    margin_keys = [k for k in cal_keys if calib[k].get("margin")]
    if margin_keys:
        mm = calib[margin_keys[0]]["margin"]["margin_mm"]
        fig = _histograms(calib, cm, cl, f"Calibration within {mm:g} mm of the lesions: correct vs incorrect voxels"
                          + tag, margin=True)
        paths["calibration_margin"] = _save_fig(fig, fdir / "calibration_margin.png")
        # 5. reliability diagrams, one panel per model
        mm_models = list(dict.fromkeys(m for m, _ in margin_keys))
        fig, axs = plt.subplots(1, len(mm_models), figsize=(3.6 * len(mm_models), 3.6), squeeze=False)
        for ax, m in zip(axs[0], mm_models):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            for k in margin_keys:
                if k[0] != m:
                    continue
                g = calib[k]["margin"]
                ok = g["count"] > 0
                conf = g["prob_sum"][ok] / g["count"][ok]
                freq = g["pos_sum"][ok] / g["count"][ok]
                ax.plot(conf, freq, marker="o", markersize=3, color=COLORS.get(k[1], "k"),
                        label=f"{k[1]} (ECE {g['ece']:.3f})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("mean predicted probability", fontsize=8)
            ax.set_ylabel("share of lesion voxels", fontsize=8)
            ax.legend(fontsize=6)
        fig.suptitle(f"Reliability within {mm:g} mm of the lesions (equal-width bins)" + tag, fontsize=10)
        fig.tight_layout()
        paths["reliability"] = _save_fig(fig, fdir / "reliability.png")
        # 6. bimodality: per-case share of probabilities in [0.1, 0.9)
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(margin_keys) + 2), 4))
        data = [[v["mid_share"] for v in means[k].values() if math.isfinite(v.get("mid_share", float("nan")))]
                for k in margin_keys]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, 1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=COLORS.get(margin_keys[i - 1][1], "k"),
                       zorder=3)
        ax.set_xticks(range(1, len(margin_keys) + 1), [f"{m}\n{l}" for m, l in margin_keys], fontsize=8)
        ax.set_ylabel(f"share of margin voxels with p in [{MID[0]}, {MID[1]})")
        ax.set_title("Bimodality per test case (lower: more bimodal)" + tag)
        paths["bimodality"] = _save_fig(fig, fdir / "bimodality.png")
    return paths


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


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _num(v: float, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if math.isfinite(v) else "n/a"


def _stats_table(L: list, stats: list, title: str, note: str) -> None:
    if not stats:
        return
    L.append(f"## {title}")
    L.append("")
    L.append(f"Two-sided; Bonferroni over the m = {stats[0]['m_tests']} tests of this table; {note}"
             "effect size = matched-pairs rank-biserial r of (L1DFL − baseline) (+1: L1DFL larger in every case "
             "with a difference). Pairs with an undefined value and zero differences are dropped (`n` pairs, `nz` "
             "non-zero).")
    L.append("")
    L.append("| Model | Comparison | Metric | n | nz | L1DFL | baseline | median diff | W | p | p (Bonf.) | r_rb | favours |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in stats:
        L.append(f"| {s['model']} | {s['comparison']} | {s['metric_label']} | {s['n_pairs']} | {s['n_nonzero']} | "
                 f"{s['l1dfl_mean']:.3f} | {s['baseline_mean']:.3f} | {s['median_diff']:+.3f} | "
                 f"{s['W']:.1f} | {_p(s['p'])} | {_p(s['p_bonferroni'])} | "
                 f"{s['effect_size_rb']:+.2f} | {s['favours']} |")
    L.append("")


def _strata_table(L: list, keys: list, strata: dict, by: str, P: str) -> None:
    names = [n for n, _, _ in STRATIFIERS[by][2]]
    L.append("| Model | Loss | " + " | ".join(f"{n} F1 (TP/FP/FN)" for n in names) + " |")
    L.append("|---|---|" + "---|" * len(names))
    for k in keys:
        cells = []
        for n in names:
            s = strata[k][n]
            cells.append(f"{_num(s['f1'])} ({s['tp']}/{s['fp']}/{s['fn']})")
        L.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")
    L.append("")


LESION_FREE_TEXT = {
    "nan": "Dice of a lesion-free scan is undefined and left out (ours, autoPET)",
    "authors": "Dice of a lesion-free scan is 1 when nothing is predicted and 0 otherwise (the authors' rule)",
}


def write_report(out: "str | Path", results: Sequence[dict], splits: dict, meta: dict, *,
                 primary: "str | None" = None, lesion_free_dice: "str | None" = None) -> dict:
    """Write the report of ``results`` (one dict per finished run, ``result.json``); returns the summary.

    ``primary``: the detection criterion of the table's FP column, the primary tests and the strata
    (default: ``meta["primary_criterion"]``, else ``"c3"`` for the ``paper`` budget and ``"c1"``
    otherwise); ``lesion_free_dice``: ``"nan"`` or ``"authors"`` (default: ``meta["lesion_free_dice"]``,
    else ``"authors"`` for ``paper`` and ``"nan"`` otherwise)."""
    out = Path(out)
    paper = meta.get("budget") == "paper"
    primary = (primary or meta.get("primary_criterion") or ("c3" if paper else "c1")).lower()
    if primary not in CRITERIA:
        raise ValueError(f"primary criterion must be one of {CRITERIA}, got {primary!r}")
    lesion_free_dice = lesion_free_dice or meta.get("lesion_free_dice") or ("authors" if paper else "nan")
    if lesion_free_dice not in EMPTY_REF_RULES:
        raise ValueError(f"lesion_free_dice must be one of {EMPTY_REF_RULES}, got {lesion_free_dice!r}")
    P = primary.upper()
    tmetrics = table_metrics(primary)
    smetrics = stat_metrics(primary)
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

    fig_paths = figures(out, all_keys, means, strata, calib, smoke, primary)

    # ---- table.md
    L = []
    L.append("# Loss comparison: Dice vs Dice-Focal vs L1DFL")
    L.append("")
    if smoke:
        L.append("> **SMOKE-SCALE RESULT** (`--budget small`): tiny networks, short training, few cases. It shows "
                 "that the machinery runs end to end; it is **not** evidence for or against the paper's claim.")
        L.append("")
    if meta.get("complete") is False:  # the merge of a sweep with jobs missing (compare.sweep)
        L.append(f"> **INCOMPLETE: {len(meta.get('missing', []))} of {meta.get('n_runs', '?')} jobs did not finish** "
                 "(missing: " + (", ".join(meta.get("missing", [])) or "none") + "; failed: "
                 + (", ".join(meta.get("failed", [])) or "none") + "). This table shows the jobs that finished only; "
                 "it is **not** the comparison's result.")
        L.append("")
    L.append(f"Budget `{meta['budget']}`: {meta['budget_description']}  ")
    L.append(f"Data `{meta['data']}`: {len(splits['train'])} training, {len(splits['val'])} validation, "
             f"{len(splits['test'])} test cases (split seed {splits['split_seed']}; the same for every run). "
             f"Seeds per (model, loss): {meta['seeds']}. Every loss got identical data, splits, seeds, epochs, "
             "augmentation and optimiser settings; nothing was tuned per loss.")
    L.append("")
    L.append(f"Mean ± sd over test cases (each case's value averaged over seeds). {LESION_FREE_TEXT[lesion_free_dice]}; "
             f"F1 is undefined on cases with neither lesions nor predictions: *n* in `table.csv`. "
             f"Primary detection criterion: **{P}** (FP lesions, the primary tests and the strata use it; C3 = the "
             "reference lesion's SUVmax voxel lies in the prediction, the paper's true positive).")
    L.append("")
    hdr = ["Model", "Loss"] + [lab for _, lab in tmetrics] + ["time / run (s)", "peak RSS (MB)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    best: dict = {}
    for m, _ in tmetrics:
        for model in models:
            vals = [(r[f"{m}_mean"], r["loss"]) for r in table_rows
                    if r["model"] == model and not r["baseline"] and math.isfinite(r[f"{m}_mean"])]
            if len(vals) > 1:
                top = min(v for v, _ in vals) if m in LOWER_IS_BETTER else max(v for v, _ in vals)
                winners = {l for v, l in vals if v == top}
                if len(winners) < len(vals):  # a tie for everyone is nobody's win
                    best[(model, m)] = winners
    for r in table_rows:
        cells = [r["model"], r["loss"]]
        for m, _ in tmetrics:
            nd = 2 if m in LOWER_IS_BETTER else 3
            s = _fmt(r[f"{m}_mean"], r[f"{m}_sd"], nd)
            cells.append(f"**{s}**" if not r["baseline"] and r["loss"] in best.get((r["model"], m), ()) else s)
        cells += [f"{r['wall_seconds_mean']:.0f}", f"{r['peak_rss_mb_max']:.0f}"]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Bold: best mean per model (lower is better for FPV, FNV and FP lesions; ties all bold, no bold when "
             "every loss ties)."
             + (" Rows of model `threshold` are the classical SUV-threshold baselines (no training; "
                "`sam_l1dfl.baselines`), for scale: they enter no test." if base_keys else ""))
    L.append("")
    # who won
    if REFERENCE_LOSS in losses and len(losses) > 1:
        L.append("## Does L1DFL win here?")
        L.append("")
        for m_, lab, _ in smetrics:
            wins = [model for model in models if REFERENCE_LOSS in best.get((model, m_), ())]
            L.append(f"- {lab}: L1DFL has the best (or tied best) mean for {len(wins)} of {len(models)} model(s)"
                     + (f" ({', '.join(wins)})" if wins else "") + ".")
        sig = [s for s in stats if s["significant_0.05"]]
        L.append(f"- Significant after Bonferroni (p < 0.05, m = {stats[0]['m_tests'] if stats else 0} primary tests): "
                 + ("; ".join(f"{s['model']} {s['metric_label']} {s['comparison']} (favours {s['favours']})"
                              for s in sig) if sig else "none") + ".")
        L.append("")
    _stats_table(L, stats, "Paired Wilcoxon signed-rank tests (per test case), L1DFL vs each baseline",
                 f"primary criterion {P}; ")
    # detection under every criterion
    L.append("## Detection under C1, C2 and C3")
    L.append("")
    L.append("C1: any overlap; C2: IoU ≥ 0.5; C3: the reference lesion's SUVmax voxel in the predicted component. "
             "Pooled: TP/FP/FN summed over all test lesions, cases and seeds, then precision / recall / F1; per "
             "case: mean ± sd of the per-case F1 and FP lesions (docs/evaluation.md, counting per reference lesion).")
    L.append("")
    L.append("| Model | Loss | " + " | ".join(f"{c.upper()} pooled P / R / F1 (TP/FP/FN) | {c.upper()} per-case F1 | "
                                             f"{c.upper()} FP / case" for c in CRITERIA) + " |")
    L.append("|---|---|" + "---|" * (3 * len(CRITERIA)))
    for r in table_rows:
        cells = []
        for c in CRITERIA:
            cells.append(f"{_num(r[f'pooled_precision_{c}'])} / {_num(r[f'pooled_recall_{c}'])} / "
                         f"{_num(r[f'pooled_f1_{c}'])} ({r[f'pooled_tp_{c}']}/{r[f'pooled_fp_{c}']}/"
                         f"{r[f'pooled_fn_{c}']})")
            cells.append(_fmt(r[f"f1_{c}_mean"], r[f"f1_{c}_sd"]))
            cells.append(_fmt(r[f"fp_{c}_mean"], r[f"fp_{c}_sd"], 2))
        L.append(f"| {r['model']} | {r['loss']} | " + " | ".join(cells) + " |")
    L.append("")
    _stats_table(L, det_stats, "Wilcoxon tests per detection criterion (secondary)", "")
    # strata
    L.append(f"## Detection F1 ({P}) per lesion size stratum")
    L.append("")
    L.append("Pooled over test cases and seeds: TP/FN from reference lesions in the stratum, FP from predicted "
             "components of that size.")
    L.append("")
    _strata_table(L, all_keys, strata["size"], "size", P)
    L.append(f"## Detection F1 ({P}) per lesion SUVmax, TLU, lesions per scan and spread")
    L.append("")
    L.append("Pooled as above. SUVmax and TLU (SUVmean × volume, SUV·mL): reference lesions by their value, FP "
             "components by theirs. Lesions per scan and spread: every lesion and predicted component of a scan "
             "counts in the scan's stratum; spread = the authors' dissemination Dmax of the reference mask (largest "
             "distance between two lesion voxels, mm).")
    L.append("")
    for by in STRATIFIERS:
        if by == "size":
            continue
        L.append(f"**{by.replace('_', ' ')}**")
        L.append("")
        _strata_table(L, all_keys, strata[by], by, P)
    L.append("## Calibration")
    L.append("")
    L.append(f"Whole scans: share of voxels with a predicted lesion probability in [{MID[0]}, {MID[1]}) (uncertain), "
             "for correctly and incorrectly classified voxels (all voxels of the test scans; threshold 0.5). The paper "
             "reports a bimodal separation for L1DFL: correct voxels confident, errors less so. Higher "
             "'incorrect uncertain' with low 'correct uncertain' is that separation.")
    L.append("")
    margin = [k for k in keys if calib.get(k, {}).get("margin")]
    mm = calib[margin[0]]["margin"]["margin_mm"] if margin else None
    hdr = "| Model | Loss | correct: uncertain | incorrect: uncertain | incorrect: confident |"
    if margin:
        hdr += f" ECE ≤{mm:g} mm (pooled) | ECE per case | mid share ≤{mm:g} mm (pooled) | mid share per case |"
    L.append(hdr)
    L.append("|---|---|---|---|---|" + ("---|---|---|---|" if margin else ""))
    for r in table_rows:
        k = (r["model"], r["loss"])
        c = calib.get(k)
        if c:
            line = (f"| {k[0]} | {k[1]} | {c['correct_mid_share']:.4f} | {c['incorrect_mid_share']:.3f} | "
                    f"{c['incorrect_confident_share']:.3f} |")
            if margin:
                line += (f" {_num(r['margin_ece_pooled'], 4)} | {_fmt(r['ece_mean'], r['ece_sd'], 4)} | "
                         f"{_num(r['margin_mid_share_pooled'], 4)} | {_fmt(r['mid_share_mean'], r['mid_share_sd'], 4)} |")
            L.append(line)
    L.append("")
    if margin:
        L.append(f"Margin: voxels within {mm:g} mm of a reference or predicted lesion. ECE = Σ_b (n_b/N)·|share of "
                 f"lesion voxels − mean probability| over {len(calib[margin[0]]['margin']['count'])} equal-width bins; "
                 f"mid share = share of margin voxels with p in [{MID[0]}, {MID[1]}) (lower: more bimodal).")
        L.append("")
    _stats_table(L, cal_stats, "Wilcoxon tests of calibration (per test case, lesion margin)",
                 "lower ECE and lower mid share count as better; ")
    L.append("## Figures")
    L.append("")
    for name, p in fig_paths.items():
        L.append(f"![{name}](figures/{p.name})")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append("| Run | device | wall (s) | peak RSS (MB) | CUDA peak (MB) | best |")
    L.append("|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["model"], r["loss"], r.get("seed", 0))):
        L.append(f"| {r['name']} | {r.get('device', 'cpu')} | {r['wall_seconds']:.0f} | {r['memory']['peak_rss_mb']:.0f} | "
                 f"{r['memory'].get('cuda_peak_allocated_mb', 'n/a')} | "
                 + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (r.get("best") or {}).items())
                 + " |")
    if any(r["model"] == "sam-med3d" and not (r.get("start_from") or {}).get("checkpoint") for r in results):
        L.append("")
        L.append("SAM-Med3D runs started from **random weights** (no `--sam-checkpoint`): they test the machinery, "
                 "not SAM-Med3D.")
    L.append("")
    text = "\n".join(L)
    write_text_atomic(out / "table.md", text)
    tfields = ["model", "loss", "n_test_cases", "n_seeds"] + [f"{m}_{s}" for m, _ in TABLE_METRICS
                                                               for s in ("mean", "sd", "n")] + \
              ["wall_seconds_mean", "peak_rss_mb_max", "cuda_peak_mb_max", "correct_mid_share", "incorrect_mid_share"]
    tfields += [f for f in table_rows[0] if f not in tfields] if table_rows else []
    write_text_atomic(out / "table.csv", _csv_text(table_rows, tfields))
    all_stats = stats + det_stats + cal_stats
    write_text_atomic(out / "stats.csv", _csv_text(all_stats) if all_stats else "")
    case_rows = [row for r in results for row in r["cases"]]
    write_text_atomic(out / "cases.csv", _csv_text(case_rows))

    def _jsonable(d: dict) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else _jsonable(v) if isinstance(v, dict) else v)
                for k, v in d.items()}

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
