"""The sections of the comparison's ``table.md``, one function each, written from a
:class:`ReportData` (what :func:`sam_l1dfl.compare.report.write_report` computed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sam_l1dfl.compare.report_metrics import LOWER_IS_BETTER, REFERENCE_LOSS
from sam_l1dfl.metrics.calibration import MID
from sam_l1dfl.metrics.detection import CRITERIA, STRATIFIERS


@dataclass
class ReportData:
    """Everything the sections of ``table.md`` read."""

    meta: dict
    splits: dict
    results: list
    primary: str
    lesion_free_dice: str
    smoke: bool
    tmetrics: tuple
    smetrics: tuple
    models: list
    losses: list
    keys: list
    base_keys: list
    table_rows: list
    stats: list
    det_stats: list
    cal_stats: list
    strata: dict
    calib: dict
    fig_paths: dict

    @property
    def P(self) -> str:
        return self.primary.upper()

    @property
    def all_keys(self) -> list:
        return self.keys + self.base_keys


def _fmt(mean: float, sd: float, nd: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{nd}f} ± {sd:.{nd}f}" if math.isfinite(sd) else f"{mean:.{nd}f}"


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



def table_md(R: ReportData) -> str:
    """The text of ``table.md``."""
    L: list = []
    _intro(L, R)
    best = _main_table(L, R)
    _who_won(L, R, best)
    _detection(L, R)
    _strata(L, R)
    _calibration(L, R)
    _figures_and_runs(L, R)
    return "\n".join(L)


def _intro(L: list, R: ReportData) -> None:
    """The title, the warnings (smoke scale, incomplete sweep), the budget, the data and the rules."""
    meta, splits, smoke, lesion_free_dice, P = R.meta, R.splits, R.smoke, R.lesion_free_dice, R.P
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


def _best(R: ReportData) -> dict:
    """``{(model, metric): losses}``: the best mean per model and metric (ties all; nobody when all tie)."""
    tmetrics, models, table_rows = R.tmetrics, R.models, R.table_rows
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
    return best


def _main_table(L: list, R: ReportData) -> dict:
    """The main table, the best means in bold; returns them (:func:`_best`)."""
    tmetrics, table_rows, base_keys = R.tmetrics, R.table_rows, R.base_keys
    hdr = ["Model", "Loss"] + [lab for _, lab in tmetrics] + ["time / run (s)", "peak RSS (MB)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    best = _best(R)
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
    return best


def _who_won(L: list, R: ReportData, best: dict) -> None:
    """Does L1DFL win here? and the primary tests."""
    losses, models, smetrics, stats, P = R.losses, R.models, R.smetrics, R.stats, R.P
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


def _detection(L: list, R: ReportData) -> None:
    """Detection under C1, C2 and C3, and its tests."""
    table_rows, det_stats = R.table_rows, R.det_stats
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


def _strata(L: list, R: ReportData) -> None:
    """Detection F1 per lesion size and per the other stratifiers."""
    all_keys, strata, P = R.all_keys, R.strata, R.P
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


def _calibration(L: list, R: ReportData) -> None:
    """Calibration over whole scans and the lesion margin, and its tests."""
    keys, calib, table_rows, cal_stats = R.keys, R.calib, R.table_rows, R.cal_stats
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


def _figures_and_runs(L: list, R: ReportData) -> None:
    """The figures, then one row per run."""
    fig_paths, results = R.fig_paths, R.results
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
