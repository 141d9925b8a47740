"""The comparison's report: ``table.md``, ``table.csv``, ``stats.csv``, ``cases.csv``, ``figures/``.

* Per (model, loss): mean ± sd over **test cases** of each case's value averaged over seeds
  (Dice is NaN on a lesion-free case and F1 on a case with neither lesions nor predictions; those
  cases are left out of that column's mean and its ``n``).
* Paired per-case two-sided Wilcoxon signed-rank tests, L1DFL vs each baseline, per model, on
  Dice, lesion F1 (C1) and false-positive lesions per case (C1); Bonferroni over all the tests
  in the table; effect size = matched-pairs rank-biserial r of (L1DFL − baseline).
* Per size stratum F1 (C1), pooled over test cases and seeds (TP, FN from reference lesions in the
  stratum; FP from predicted components of that size).
* Calibration: histogram of the predicted lesion probability for correctly and incorrectly
  classified voxels (threshold 0.5), and the share of each with 0.1 ≤ p < 0.9.
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
from sam_l1dfl.metrics.detection import STRATA

TABLE_METRICS = (("dice", "Dice"), ("fpv_ml", "FPV (mL)"), ("fnv_ml", "FNV (mL)"), ("f1_c1", "F1 C1"),
                 ("f1_c2", "F1 C2"), ("f1_c3", "F1 C3"), ("fp_c1", "FP lesions"))
#: (metric, label, +1 if higher is better else -1)
STAT_METRICS = (("dice", "Dice", 1), ("f1_c1", "F1 C1", 1), ("fp_c1", "FP lesions", -1))
REFERENCE_LOSS = "l1dfl"
MID = (0.1, 0.9)


def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def per_case_means(results: Sequence[dict]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(model, loss): {case: {metric: mean over seeds}}}``."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        for row in r["cases"]:
            for m, _ in TABLE_METRICS:
                acc[(r["model"], r["loss"])][row["case"]][m].append(_f(row.get(m)))
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


def strata_f1(results: Sequence[dict], criterion: str = "c1") -> dict[tuple[str, str], dict[str, dict]]:

    out: dict = {}
    for r in results:
        key = (r["model"], r["loss"])
        d = out.setdefault(key, {name: {"tp": 0, "fp": 0, "fn": 0} for name, _, _ in STRATA})
        for l in r["lesions"]:
            s = d[l["stratum"]]
            if l["kind"] == "ref":
                s["tp" if l.get(f"detected_{criterion}") else "fn"] += 1
            elif l.get(f"fp_{criterion}"):
                s["fp"] += 1
    for d in out.values():
        for s in d.values():
            den = 2 * s["tp"] + s["fp"] + s["fn"]
            s["f1"] = 2 * s["tp"] / den if den else float("nan")
    return out


def calibration(results: Sequence[dict]) -> dict[tuple[str, str], dict]:
    out: dict = {}
    for r in results:
        key = (r["model"], r["loss"])
        c = out.setdefault(key, {"correct": np.zeros(len(r["calibration"]["correct"])),
                                 "incorrect": np.zeros(len(r["calibration"]["incorrect"]))})
        c["correct"] += np.asarray(r["calibration"]["correct"], dtype=float)
        c["incorrect"] += np.asarray(r["calibration"]["incorrect"], dtype=float)
    for c in out.values():
        n = len(c["correct"])
        centres = (np.arange(n) + 0.5) / n
        mid = (centres >= MID[0]) & (centres < MID[1])
        for k in ("correct", "incorrect"):
            tot = c[k].sum()
            c[f"{k}_mid_share"] = float(c[k][mid].sum() / tot) if tot else float("nan")
            c[f"{k}_total"] = int(tot)
        tot_i = c["incorrect"].sum()
        c["incorrect_confident_share"] = float(c["incorrect"][~mid].sum() / tot_i) if tot_i else float("nan")
    return out


def statistics(means: dict, models: Sequence[str], losses: Sequence[str]) -> list[dict]:

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
            for m, label, direction in STAT_METRICS:
                a = [ref[c][m] for c in cases]
                b = [other[c][m] for c in cases]
                w = wilcoxon_paired(a, b)
                fa, fb = np.asarray(a, float), np.asarray(b, float)
                ok = np.isfinite(fa) & np.isfinite(fb)
                rows.append({"model": model, "comparison": f"{REFERENCE_LOSS} vs {base}", "baseline": base,
                             "metric": m, "metric_label": label, "higher_is_better": direction > 0,
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
def _save_fig(fig, path: Path) -> Path:

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def figures(out: Path, results: Sequence[dict], keys: list, means: dict, strata: dict, calib: dict,
            smoke: bool) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fdir = out / "figures"
    paths = {}
    tag = "  [SMOKE-SCALE]" if smoke else ""
    labels = [f"{m}\n{l}" for m, l in keys]
    colors = {"dice": "#4c72b0", "dicefocal": "#dd8452", "l1dfl": "#55a868", "dicece": "#8172b3", "focal": "#937860"}
    # 1. per-stratum F1 bars
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    names = [n for n, _, _ in STRATA]
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        vals = [strata[k][n]["f1"] if k in strata else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width, np.nan_to_num(vals), width,
               label=f"{k[0]} / {k[1]}", color=colors.get(k[1]), edgecolor="black", linewidth=0.4, hatch=["", "//", "..", "xx", "\\\\"][[m for m, _ in keys].index(k[0]) % 5])
    ax.set_xticks(np.arange(len(names)), [f"{n}\n(n={sum(strata[keys[0]][n][x] for x in ('tp', 'fn'))} lesions)"
                                          if keys else n for n in names])
    ax.set_ylabel("F1 (C1, pooled over test cases and seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("Lesion detection F1 per size stratum" + tag)
    ax.legend(fontsize=7, ncol=2)
    paths["strata_f1"] = _save_fig(fig, fdir / "strata_f1.png")
    # 2. FP count distributions
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    data = [[v["fp_c1"] for v in means[k].values() if math.isfinite(v["fp_c1"])] for k in keys]
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=colors.get(keys[i - 1][1], "k"), zorder=3)
    ax.set_xticks(range(1, len(keys) + 1), labels, fontsize=8)
    ax.set_ylabel("false-positive lesions per test case (C1)")
    ax.set_title("False positives per case" + tag)
    paths["fp_counts"] = _save_fig(fig, fdir / "fp_counts.png")
    # 3. calibration: probability histograms of correct vs incorrect voxels
    models = list(dict.fromkeys(m for m, _ in keys))
    losses = list(dict.fromkeys(l for _, l in keys))
    fig, axes = plt.subplots(len(models), len(losses), figsize=(3.2 * len(losses), 2.6 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        for j, l in enumerate(losses):
            ax = axes[i][j]
            c = calib.get((m, l))
            if c is None:
                ax.axis("off")
                continue
            n = len(c["correct"])
            edges = np.linspace(0, 1, n + 1)
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
    fig.suptitle("Calibration: probabilities of correctly vs incorrectly classified voxels" + tag, fontsize=10)
    fig.tight_layout()
    paths["calibration"] = _save_fig(fig, fdir / "calibration.png")
    return paths


# ---------------------------------------------------------------------- writing
def _csv_text(rows: list[dict], fields: "list[str] | None" = None) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    fields = fields or list(rows[0])
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def write_report(out: "str | Path", results: Sequence[dict], splits: dict, meta: dict) -> dict:

    out = Path(out)
    smoke = meta.get("budget") == "small"
    models = [m for m in meta["models"] if any(r["model"] == m for r in results)]
    losses = [l for l in meta["losses"] if any(r["loss"] == l for r in results)]
    keys = [(m, l) for m in models for l in losses if any(r["model"] == m and r["loss"] == l for r in results)]
    means = per_case_means(results)
    strata = strata_f1(results)
    calib = calibration(results)
    stats = statistics(means, models, losses)
    by_key: dict = defaultdict(list)
    for r in results:
        by_key[(r["model"], r["loss"])].append(r)

    table_rows = []
    for k in keys:
        row: dict[str, Any] = {"model": k[0], "loss": k[1], "n_test_cases": len(means[k]), "n_seeds": len(by_key[k])}
        for m, _ in TABLE_METRICS:
            mu, sd, n = _msd([v[m] for v in means[k].values()])
            row[f"{m}_mean"], row[f"{m}_sd"], row[f"{m}_n"] = mu, sd, n
        runs = by_key[k]
        row["wall_seconds_mean"] = float(np.mean([r["wall_seconds"] for r in runs]))
        row["peak_rss_mb_max"] = max(r["memory"]["peak_rss_mb"] for r in runs)
        cu = [r["memory"].get("cuda_peak_allocated_mb") for r in runs if r["memory"].get("cuda_peak_allocated_mb")]
        row["cuda_peak_mb_max"] = max(cu) if cu else float("nan")
        c = calib.get(k, {})
        row["correct_mid_share"] = c.get("correct_mid_share", float("nan"))
        row["incorrect_mid_share"] = c.get("incorrect_mid_share", float("nan"))
        table_rows.append(row)

    fig_paths = figures(out, results, keys, means, strata, calib, smoke)

    # ---- table.md
    L = []
    L.append("# Loss comparison: Dice vs Dice-Focal vs L1DFL")
    L.append("")
    if smoke:
        L.append("> **SMOKE-SCALE RESULT** (`--budget small`): tiny networks, short training, few cases. It shows "
                 "that the machinery runs end to end; it is **not** evidence for or against the paper's claim.")
        L.append("")
    L.append(f"Budget `{meta['budget']}`: {meta['budget_description']}  ")
    L.append(f"Data `{meta['data']}`: {len(splits['train'])} training, {len(splits['val'])} validation, "
             f"{len(splits['test'])} test cases (split seed {splits['split_seed']}; the same for every run). "
             f"Seeds per (model, loss): {meta['seeds']}. Every loss got identical data, splits, seeds, epochs, "
             "augmentation and optimiser settings; nothing was tuned per loss.")
    L.append("")
    L.append("Mean ± sd over test cases (each case's value averaged over seeds). Dice is undefined on lesion-free "
             "cases and F1 on cases with neither lesions nor predictions: *n* in `table.csv`.")
    L.append("")
    hdr = ["Model", "Loss"] + [lab for _, lab in TABLE_METRICS] + ["time / run (s)", "peak RSS (MB)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    best: dict = {}
    for m, _ in TABLE_METRICS:
        for model in models:
            vals = [(r[f"{m}_mean"], r["loss"]) for r in table_rows if r["model"] == model and math.isfinite(r[f"{m}_mean"])]
            if len(vals) > 1:
                lower = m in ("fpv_ml", "fnv_ml", "fp_c1")
                top = min(v for v, _ in vals) if lower else max(v for v, _ in vals)
                winners = {l for v, l in vals if v == top}
                if len(winners) < len(vals):  # a tie for everyone is nobody's win
                    best[(model, m)] = winners
    for r in table_rows:
        cells = [r["model"], r["loss"]]
        for m, _ in TABLE_METRICS:
            nd = 2 if m in ("fpv_ml", "fnv_ml", "fp_c1") else 3
            s = _fmt(r[f"{m}_mean"], r[f"{m}_sd"], nd)
            cells.append(f"**{s}**" if r["loss"] in best.get((r["model"], m), ()) else s)
        cells += [f"{r['wall_seconds_mean']:.0f}", f"{r['peak_rss_mb_max']:.0f}"]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Bold: best mean per model (lower is better for FPV, FNV and FP lesions; ties all bold, no bold when "
             "every loss ties).")
    L.append("")
    # who won
    if REFERENCE_LOSS in losses and len(losses) > 1:
        L.append("## Does L1DFL win here?")
        L.append("")
        for m_, lab, _ in STAT_METRICS:
            wins = [model for model in models if REFERENCE_LOSS in best.get((model, m_), ())]
            L.append(f"- {lab}: L1DFL has the best (or tied best) mean for {len(wins)} of {len(models)} model(s)"
                     + (f" ({', '.join(wins)})" if wins else "") + ".")
        sig = [s for s in stats if s["significant_0.05"]]
        L.append(f"- Significant after Bonferroni (p < 0.05, m = {stats[0]['m_tests'] if stats else 0} tests): "
                 + ("; ".join(f"{s['model']} {s['metric_label']} {s['comparison']} (favours {s['favours']})"
                              for s in sig) if sig else "none") + ".")
        L.append("")
    # stats
    if stats:
        L.append("## Paired Wilcoxon signed-rank tests (per test case), L1DFL vs each baseline")
        L.append("")
        L.append(f"Two-sided; Bonferroni over all m = {stats[0]['m_tests']} tests below; effect size = matched-pairs "
                 "rank-biserial r of (L1DFL − baseline) (+1: L1DFL larger in every case with a difference). "
                 "Pairs with an undefined value and zero differences are dropped (`n` pairs, `nz` non-zero).")
        L.append("")
        L.append("| Model | Comparison | Metric | n | nz | L1DFL | baseline | median diff | W | p | p (Bonf.) | r_rb | favours |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in stats:
            L.append(f"| {s['model']} | {s['comparison']} | {s['metric_label']} | {s['n_pairs']} | {s['n_nonzero']} | "
                     f"{s['l1dfl_mean']:.3f} | {s['baseline_mean']:.3f} | {s['median_diff']:+.3f} | "
                     f"{s['W']:.1f} | {_p(s['p'])} | {_p(s['p_bonferroni'])} | "
                     f"{s['effect_size_rb']:+.2f} | {s['favours']} |")
        L.append("")
    # strata

    L.append("## Detection F1 (C1) per lesion size stratum")
    L.append("")
    L.append("Pooled over test cases and seeds: TP/FN from reference lesions in the stratum, FP from predicted "
             "components of that size.")
    L.append("")
    L.append("| Model | Loss | " + " | ".join(f"{n} F1 (TP/FP/FN)" for n, _, _ in STRATA) + " |")
    L.append("|---|---|" + "---|" * len(STRATA))
    for k in keys:
        cells = []
        for n, _, _ in STRATA:
            s = strata[k][n]
            f1 = "n/a" if not math.isfinite(s["f1"]) else f"{s['f1']:.3f}"
            cells.append(f"{f1} ({s['tp']}/{s['fp']}/{s['fn']})")
        L.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Calibration")
    L.append("")
    L.append(f"Share of voxels with a predicted lesion probability in [{MID[0]}, {MID[1]}) (uncertain), for "
             "correctly and incorrectly classified voxels (all voxels of the test scans; threshold 0.5). The paper "
             "reports a bimodal separation for L1DFL: correct voxels confident, errors less so. Higher "
             "'incorrect uncertain' with low 'correct uncertain' is that separation.")
    L.append("")
    L.append("| Model | Loss | correct: uncertain | incorrect: uncertain | incorrect: confident |")
    L.append("|---|---|---|---|---|")
    for k in keys:
        c = calib.get(k)
        if c:
            L.append(f"| {k[0]} | {k[1]} | {c['correct_mid_share']:.4f} | {c['incorrect_mid_share']:.3f} | "
                     f"{c['incorrect_confident_share']:.3f} |")
    L.append("")
    L.append("## Figures")
    L.append("")
    for name, p in fig_paths.items():
        L.append(f"![{name}](figures/{p.name})")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append("| Run | device | wall (s) | peak RSS (MB) | CUDA peak (MB) | best |")
    L.append("|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["model"], r["loss"], r["seed"])):
        L.append(f"| {r['name']} | {r['device']} | {r['wall_seconds']:.0f} | {r['memory']['peak_rss_mb']:.0f} | "
                 f"{r['memory'].get('cuda_peak_allocated_mb', 'n/a')} | "
                 + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["best"].items())
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
    write_text_atomic(out / "table.csv", _csv_text(table_rows, tfields))
    write_text_atomic(out / "stats.csv", _csv_text(stats) if stats else "")
    case_rows = [row for r in results for row in r["cases"]]
    write_text_atomic(out / "cases.csv", _csv_text(case_rows))
    summary = {"format": "sam-l1dfl-compare", "version": 1, "smoke_scale": smoke, **meta,
               "table": table_rows, "stats": stats,
               "strata_f1": {f"{k[0]}/{k[1]}": v for k, v in strata.items()},
               "calibration": {f"{k[0]}/{k[1]}": {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv)
                                                 for kk, vv in v.items()} for k, v in calib.items()},
               "figures": {k: str(v) for k, v in fig_paths.items()}}
    write_json_atomic(out / "summary.json", summary)
    return summary


__all__ = ["STAT_METRICS", "TABLE_METRICS", "calibration", "per_case_means", "statistics", "strata_f1",
           "write_report"]
