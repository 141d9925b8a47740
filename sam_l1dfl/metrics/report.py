"""Evaluation outputs: ``metrics.csv``, ``lesions.csv``, ``summary.json`` and ``report.html``.

The HTML report is a single self-contained file (pictures embedded as base64 PNG, no
scripts, no network), so it opens offline and can be mailed around.  Pictures are drawn with
matplotlib's object API (no pyplot, the global backend is left alone).

Per-case pictures are coronal and sagittal PET maximum-intensity projections drawn with
:mod:`sam_l1dfl.viz` (patient orientation, oblique scans resampled; patient's right on the
left of the coronal view, anterior on the left of the sagittal view, head up):
reference outline green, prediction outline magenta, false-positive components (no overlap
with the reference, the FPV components) filled orange with a square marker, false-negative
lesions (the FNV components) filled blue with a circle marker.

This module only writes: the rows, columns and definitions come from :mod:`.summary`, and
:func:`sam_l1dfl.metrics.dataset.evaluate_dataset` calls :func:`write_outputs` (nothing here
imports the evaluation loop).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sam_l1dfl import viz
from sam_l1dfl.io_utils import write_json_atomic, write_text_atomic

from .summary import CASE_COLUMNS, DEFINITIONS, LESION_COLUMNS

REF_COLOR = "#12b312"
PRED_COLOR = "#d61ad6"
FP_COLOR = "#ff8c00"
FN_COLOR = "#1f5fff"


# --------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.10g}"
    return str(v)


def write_csv(path: "str | Path", rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows atomically; NaN and None become empty cells, booleans ``true``/``false``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return write_text_atomic(path, buf.getvalue())


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


# --------------------------------------------------------------------------- pictures


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _images(gt_img, pet: np.ndarray | None, matching):
    """SimpleITK images (on the reference grid) of PET, reference, prediction, FP and FN masks."""
    import SimpleITK as sitk

    ov = matching.overlap
    fp_ids = [p["lesion_id"] for p in matching.pred if p["fp_c1"]]
    fn_ids = [r["lesion_id"] for r in matching.ref if not r["detected_c1"]]

    def img(a, dtype):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=dtype))
        im.CopyInformation(gt_img)
        return im

    pet_arr = np.zeros(ov.ref_labels.shape, np.float32) if pet is None else pet
    return {
        "pet": img(pet_arr, np.float32),
        "ref": img(ov.ref_labels > 0, np.uint8),
        "pred": img(ov.pred_labels > 0, np.uint8),
        "fp": img(np.isin(ov.pred_labels, fp_ids), np.uint8),
        "fn": img(np.isin(ov.ref_labels, fn_ids), np.uint8),
        "n_fp": len(fp_ids),
        "n_fn": len(fn_ids),
    }


def case_figure(gt_img, pet: np.ndarray | None, matching, title: str, vmax: float | None = None) -> str:
    """Base64 PNG of a case's coronal and sagittal PET MIPs (drawn with :mod:`sam_l1dfl.viz`):
    reference and prediction outlines, FP components and missed lesions (C1) filled and marked.

    ``vmax`` is the PET window (default: SUV 0..10 for SUV-like images, else the 99.9th
    percentile).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from scipy import ndimage

    ims = _images(gt_img, pet, matching)
    if vmax is None:
        vmax = 1.0 if pet is None else (10.0 if float(np.max(pet)) <= 100 else float(np.percentile(pet, 99.9)))
    fig = Figure(figsize=(7.0, 4.8), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, axis in zip(axes, viz.AXES):
        viz.plot_case(ax, ims["pet"], masks={"reference": (ims["ref"], REF_COLOR), "prediction": (ims["pred"], PRED_COLOR)},
                      axis=axis, vmax=vmax, legend=False, scale_bar=axis == "coronal", title=axis)
        for key, color, marker in (("fp", FP_COLOR, "s"), ("fn", FN_COLOR, "o")):
            marr, ext = viz.mask_mip(ims[key], axis)
            if not marr.any():
                continue
            ax.imshow(np.ma.masked_where(~marr, marr.astype(float)), cmap=_one_color(color), alpha=0.55, vmin=0,
                      vmax=1, extent=ext, origin="upper", interpolation="nearest", aspect="equal")
            lab, n = ndimage.label(marr)
            h, w = marr.shape
            for r, c in ndimage.center_of_mass(marr, lab, range(1, n + 1)):
                x = ext[0] + (c + 0.5) * (ext[1] - ext[0]) / w
                y = ext[3] + (r + 0.5) * (ext[2] - ext[3]) / h
                ax.plot(x, y, marker, ms=11, mfc="none", mec=color, mew=1.6)
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
    handles = [Line2D([], [], color=REF_COLOR, lw=1.5, label="reference"),
               Line2D([], [], color=PRED_COLOR, lw=1.5, label="prediction"),
               Line2D([], [], color=FP_COLOR, marker="s", mfc="none", ls="", label=f"FP ({ims['n_fp']})"),
               Line2D([], [], color=FN_COLOR, marker="o", mfc="none", ls="", label=f"FN ({ims['n_fn']})")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.09, wspace=0.05)
    return _png(fig)


def _one_color(color: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([color])


def dice_volume_figure(lesions: Sequence[dict[str, Any]]) -> str | None:
    """Per-lesion Dice against reference lesion volume (log scale), strata boundaries dashed."""
    from matplotlib.figure import Figure

    refl = [l for l in lesions if l["kind"] == "ref"]
    if not refl:
        return None
    vol = np.array([l["volume_ml"] for l in refl], float)
    d = np.array([l["dice"] for l in refl], float)
    hit = np.array([bool(l.get("detected_c1")) for l in refl])
    fig = Figure(figsize=(6.0, 3.8), dpi=80)
    ax = fig.subplots()
    ax.scatter(vol[hit], d[hit], s=18, c=REF_COLOR, label="detected (C1)")
    ax.scatter(vol[~hit], d[~hit], s=26, c=FN_COLOR, marker="x", label="missed (FN)")
    for b in (1.5, 4.0):
        ax.axvline(b, color="0.5", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("reference lesion volume (mL)")
    ax.set_ylabel("per-lesion Dice")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def click_curve_figure(runs: Sequence[dict[str, Any]]) -> str | None:
    """Mean Dice and pooled F1 (C1, C2) with 95% CIs, and mean FPV/FNV, against click count."""
    from matplotlib.figure import Figure

    runs = [r for r in runs if r["clicks"] is not None]
    if len(runs) < 2:
        return None
    x = np.array([r["clicks"] for r in runs], float)
    fig = Figure(figsize=(8.0, 3.4), dpi=80)
    a1, a2 = fig.subplots(1, 2)

    def band(ax, getter, label, color):
        v = np.array([_nan(getter(r).get("mean", getter(r).get("value"))) for r in runs])
        lo = np.array([_nan(getter(r)["ci_low"]) for r in runs])
        hi = np.array([_nan(getter(r)["ci_high"]) for r in runs])
        ax.plot(x, v, "o-", color=color, label=label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2)

    band(a1, lambda r: r["dice"], "Dice", "C0")
    for c, color in (("c1", "C1"), ("c2", "C2")):
        if all(c in r["detection"] for r in runs):
            band(a1, lambda r, c=c: r["detection"][c]["f1"], f"F1 {c.upper()}", color)
    a1.set_ylim(0, 1.02)
    a1.set_xlabel("clicks")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    band(a2, lambda r: r["fpv_ml"], "FPV (mL)", FP_COLOR)
    band(a2, lambda r: r["fnv_ml"], "FNV (mL)", FN_COLOR)
    a2.set_xlabel("clicks")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    for ax in (a1, a2):
        ax.set_xticks(x)
    fig.tight_layout()
    return _png(fig)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


# --------------------------------------------------------------------------- HTML


def _num(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.{nd}f}"


def _ci(d: dict[str, Any], nd: int = 3) -> str:
    v = d.get("mean", d.get("value"))
    return f"{_num(v, nd)} [{_num(d['ci_low'], nd)}, {_num(d['ci_high'], nd)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f1f1f1}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:13px}
.cases{display:flex;flex-wrap:wrap;gap:8px}.cases figure{margin:0}figcaption{font-size:12px;color:#444}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}dt{font-weight:bold;margin-top:.3em}"""


def _words(v: Any) -> str:
    """A summary value as plain words: no Python ``None``, ``{...}`` or ``[...]``."""
    if v is None:
        return "none"
    if isinstance(v, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {_words(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(_words(x) for x in v) or "none"
    return str(v)


def render_html(summary: dict[str, Any], case_rows: Sequence[dict[str, Any]],
                figures: dict[str, Any]) -> str:
    runs = summary["runs"]
    main = runs[-1]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sam-l1dfl evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>Segmentation evaluation</h1>"]
    parts += _html_inputs(summary["inputs"])
    parts += _html_volume(runs, main)
    parts += _html_detection(runs, main)
    parts += _html_strata(main, figures)
    parts += _html_quantification(main)
    parts += _html_cases(case_rows, main, figures)
    parts.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS.items()) + "</dl>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _run_label(r: dict) -> str:
    return "" if r["clicks"] is None else f"{r['clicks']} click(s)"


def _html_inputs(inp: dict) -> list[str]:
    """The inputs, and the predictions without a reference."""
    parts = []
    parts.append("<p class='note'>" + "<br>".join(html.escape(f"{k.replace('_', ' ')}: {_words(v)}")
                                                  for k, v in inp.items() if k != "unmatched_predictions") + "</p>")
    if inp.get("unmatched_predictions"):
        parts.append(f"<p class='note'>Predictions without a reference (ignored): "
                     f"{html.escape(', '.join(inp['unmatched_predictions'][:20]))}</p>")
    return parts


def _html_volume(runs: list, main: dict) -> list[str]:
    """Volume metrics (autoPET) per run."""
    label, parts = _run_label, []
    head = ["run", "cases", "negative", "Dice", "FPV mL", "FNV mL", "lesion Dice"]
    rows = [[label(r) or "all", r["n_cases"], r["n_negative_cases"], _ci(r["dice"]), _ci(r["fpv_ml"], 2),
             _ci(r["fnv_ml"], 2), _ci(r["lesion_dice"])] for r in runs]
    parts.append("<h2>Volume metrics (autoPET)</h2>" + _table(head, rows))
    if main["n_negative_cases"]:
        parts.append(f"<p class='note'>Dice is NaN for the {main['n_negative_cases']} case(s) with an empty "
                     "reference and is left out of the mean; their false positives count in FPV.</p>")
    parts.append("<p class='note'>Means with 95% bootstrap CIs.</p>")
    return parts


def _html_detection(runs: list, main: dict) -> list[str]:
    """Lesion-wise detection per run and criterion."""
    label, parts = _run_label, []
    drows = []
    for r in runs:
        for c, d in r["detection"].items():
            drows.append([label(r) + " " + c.upper(), d["tp"], d["fp"], d["fn"], _ci(d["precision"]),
                          _ci(d["recall"]), _ci(d["f1"]), _ci(d["f1_case_mean"])])
    parts.append("<h2>Lesion-wise detection</h2>" + _table(
        ["criterion", "TP", "FP", "FN", "precision", "recall", "F1 (pooled)", "F1 (case mean)"], drows))
    parts.append(f"<p class='note'>{html.escape(DEFINITIONS['counting'])}</p>")
    if "c3" not in main["detection"]:
        parts.append("<p class='note'>C3 needs the PET and was not computed.</p>")
    return parts


def _html_strata(main: dict, figures: dict) -> list[str]:
    """Size strata of the main run, the Dice-volume scatter and the click curve."""
    label, parts = _run_label, []
    crit = list(main["detection"])
    srows = [[name, e["n_lesions"], _num(e["dice_mean"]), _num(e["dice_median"]),
              *[_num(e.get(f"recall_{c}")) for c in crit], e["n_fp_c1"]] for name, e in main["strata"].items()]
    parts.append(f"<h2>Size strata {html.escape(label(main))}</h2>" + _table(
        ["stratum", "lesions", "mean Dice", "median Dice", *[f"recall {c.upper()}" for c in crit], "FP (C1)"], srows))
    if figures.get("scatter"):
        parts.append(_img(figures["scatter"], "per-lesion Dice vs lesion volume"))
    if figures.get("clicks"):
        parts.append("<h2>Click-number curve</h2>" + _img(figures["clicks"], "metrics vs number of clicks"))
    return parts


def _html_quantification(main: dict) -> list[str]:
    """Quantification of the main run (agreement of the predicted and reference quantities)."""
    label, parts = _run_label, []
    qrows = [[q, _num(a.get("ref_mean")), _num(a.get("pred_mean")), a["n"], _num(a["pearson_r"]),
              _num(a["spearman_rho"]), _num(a["mean_diff"]), f"[{_num(a['loa_lower'])}, {_num(a['loa_upper'])}]"]
             for q, a in main["quantification"].items()]
    parts.append(f"<h2>Quantification {html.escape(label(main))}</h2>" + _table(
        ["quantity", "ref mean", "pred mean", "n", "Pearson r", "Spearman ρ", "mean diff (pred−ref)",
         "95% limits of agreement"], qrows))
    return parts


def _html_cases(case_rows: Sequence[dict[str, Any]], main: dict, figures: dict) -> list[str]:
    """Per case of the main run, with the MIPs."""
    label, parts = _run_label, []
    main_rows = [r for r in case_rows if r["clicks"] == main["clicks"]]
    crit_cols = [c for c in ("c1", "c2", "c3") if c in main["detection"]]
    prow = [[r["case"], _num(r["dice"]), _num(r["fpv_ml"], 2), _num(r["fnv_ml"], 2),
             *[f"{r[f'tp_{c}']}/{r[f'fp_{c}']}/{r[f'fn_{c}']}" for c in crit_cols],
             r["ref_lesion_count"], r["pred_lesion_count"], _num(r["ref_tmtv_ml"], 2), _num(r["pred_tmtv_ml"], 2)]
            for r in main_rows]
    parts.append(f"<h2>Cases {html.escape(label(main))}</h2>" + _table(
        ["case", "Dice", "FPV", "FNV", *[f"TP/FP/FN {c.upper()}" for c in crit_cols], "ref lesions",
         "pred lesions", "ref TMTV", "pred TMTV"], prow))
    if figures.get("cases"):
        parts.append("<p class='note'>Coronal and sagittal PET MIPs (radiological view, head up): reference "
                     "<b style='color:%s'>green</b>, prediction <b style='color:%s'>magenta</b>, false-positive "
                     "components <b style='color:%s'>orange squares</b>, missed lesions <b style='color:%s'>blue "
                     "circles</b> (C1).</p>" % (REF_COLOR, PRED_COLOR, FP_COLOR, FN_COLOR))
        parts.append("<div class='cases'>" + "".join(
            f"<figure>{_img(b, case)}<figcaption>{html.escape(case)}</figcaption></figure>"
            for case, b in figures["cases"]) + "</div>")
        if figures.get("cases_left_out"):
            parts.append(f"<p class='note'>{figures['cases_left_out']} more case(s) not drawn.</p>")
    return parts


def write_outputs(out_dir: "str | Path", case_rows: Sequence[dict[str, Any]], lesion_rows: Sequence[dict[str, Any]],
                  summary: dict[str, Any], figures: dict[str, Any]) -> dict[str, Path]:
    """Write the four output files atomically; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": write_csv(out / "metrics.csv", case_rows, CASE_COLUMNS),
        "lesions": write_csv(out / "lesions.csv", lesion_rows, LESION_COLUMNS),
        "summary": write_json_atomic(out / "summary.json", _clean(summary)),
        "report": write_text_atomic(out / "report.html", render_html(summary, case_rows, figures)),
    }
    return paths
