"""Does fine-tuning help, and which loss helps most?  The rows of ``scripts/bench_learning.py``
and of ``make demo``'s summary.

Every row is scored the same way: masks on the original PET grid of a held-out synthetic PSMA
test set, from the same prompts (one click per lesion from the reference mask, or a prompt
folder), by :func:`~sam_l1dfl.metrics.evaluate_dataset` (``sam-l1dfl evaluate``'s metrics):

* ``zero-shot``: the starting model (turbo or the stand-in) as it is;
* ``l1dfl`` / ``dicefocal`` / ``dicece``: its mask decoder fine-tuned with that loss
  (:func:`finetune`, the ordinary :func:`~sam_l1dfl.training.train`);
* ``threshold``: the 41 %-SUVmax region grown from the click
  (:class:`~sam_l1dfl.baselines.ThresholdSegmenter`), no training.

Columns (:data:`COLUMNS`): lesion Dice, volume Dice, FPV and FNV (mL), F1 under the C3 criterion
(the reference lesion's SUVmax voxel lies in a predicted component), seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from sam_l1dfl.baselines import ThresholdSegmenter
from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.errors import InputError
from sam_l1dfl.inference import Segmenter
from sam_l1dfl.metrics.dataset import evaluate_dataset
from sam_l1dfl.metrics.detection import FINE_SIZE_STRATA, stratum_of
from sam_l1dfl.compare.paired import lesion_rows, phantom_lesions
from sam_l1dfl.training import load_config, train

LOSSES = ("l1dfl", "dicefocal", "dicece")
#: The held-out synthetic PSMA test set of the benchmark and the demo (8 cases: 27 lesions); no
#: training set uses this seed.
TEST_SEED = 5000
#: The training set of seed ``s`` is ``generate_dataset(seed=TRAIN_SEED_BASE + s)``.
TRAIN_SEED_BASE = 100
ROW_LABELS = {
    "zero-shot": "zero-shot",
    "l1dfl": "fine-tuned, L1DFL",
    "dicefocal": "fine-tuned, DiceFocal",
    "dicece": "fine-tuned, DiceCE (official)",
    "threshold": "41% SUVmax from the click",
}
#: (key, header, format) of the table columns.
COLUMNS = (("lesion_dice", "lesion Dice", ".3f"), ("dice", "volume Dice", ".3f"), ("fpv_ml", "FPV mL", ".2f"),
           ("fnv_ml", "FNV mL", ".2f"), ("f1_c3", "F1 (C3)", ".3f"), ("seconds", "time s", ".0f"))


#: The benchmark's lesion strata, fixed (docs/phantom.md, "Strata") before any result was looked
#: at.  From the phantom's per-lesion facts (``dataset.json``):
#:
#: * ``organ``: "near an organ" when an organ with physiological uptake (bladder, ureter, kidney,
#:   bowel, liver, spleen, salivary or lacrimal gland) lies within 8 mm (the phantom's
#:   ``adjacent_to``; liver metastases are in the liver), else "isolated";
#: * ``contrast``: "low contrast" when the measured SUVmax is under :data:`LOW_CONTRAST_TBR` times
#:   the SUV of the tissue the lesion sits in (where a 41 % threshold reaches the background), else
#:   "high contrast";
#: * ``size``: the reference volume in :data:`~sam_l1dfl.metrics.detection.FINE_SIZE_STRATA`.
STRATA_KEYS = ("organ", "contrast", "size")
LOW_CONTRAST_TBR = 3.0


def lesion_strata(lesion: dict) -> dict[str, str]:
    """The strata of one phantom lesion record (a ``dataset.json`` lesion)."""
    return {"organ": "near an organ" if lesion.get("adjacent_to") else "isolated",
            "contrast": "low contrast" if float(lesion["tbr"]) < LOW_CONTRAST_TBR else "high contrast",
            "size": stratum_of(lesion["volume_ml"], FINE_SIZE_STRATA) or "n/a"}


@dataclass
class Row:
    """One method on one seed."""

    name: str
    seed: "int | None"
    metrics: dict
    seconds: float
    source: str = ""
    extra: dict = field(default_factory=dict)


def score(pred_dir: "str | Path", test_root: "str | Path", out_dir: "str | Path | None" = None,
          mips: bool = False) -> dict:
    """The :data:`COLUMNS` metrics of ``pred_dir`` against the references under ``test_root``."""
    res = evaluate_dataset(pred_dir, test_root, out_dir=out_dir, mips=mips, n_resamples=200, progress=False)
    run = res.summary["runs"][-1]

    def pick(*keys):
        cur = run
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return math.nan
            cur = cur[k]
        return float(cur) if cur is not None else math.nan

    return {"lesion_dice": pick("lesion_dice", "mean"), "dice": pick("dice", "mean"),
            "fpv_ml": pick("fpv_ml", "mean"), "fnv_ml": pick("fnv_ml", "mean"),
            "f1_c3": pick("detection", "c3", "f1", "value")}


def predict(source: str, test_root: "str | Path", out_dir: "str | Path", *,
            prompts_dir: "str | Path | None" = None, device: str = "cpu") -> float:
    """Segment every test case with ``source`` (a checkpoint, ``standin``, or ``"threshold"``);
    prompts from ``prompts_dir``, else one click per lesion from the reference mask.  Seconds."""
    t = time.perf_counter()
    cases = discover_cases(test_root).cases
    seg = ThresholdSegmenter() if source == "threshold" else Segmenter(source, device=device)
    summary = seg.segment_dataset(cases, out_dir, prompts_dir=prompts_dir, from_mask=prompts_dir is None,
                                  data=str(test_root), progress=False)
    if summary.failed:
        raise InputError(test_root, f"{len(summary.failed)} case(s) failed with {source}: {summary.failed[0]}")
    return time.perf_counter() - t


#: The size calibration goal of a promptable starting model: zero-shot, from one click, the median
#: predicted/reference volume of each size bin lies in this range (issue #20 §1).
SIZE_CALIBRATION_RANGE = (0.5, 2.0)


def size_calibration(source: str, cases_root: "str | Path", out_dir: "str | Path", *,
                     device: str = "cpu") -> dict:
    """Zero-shot size calibration of ``source``: one click per reference object of the cases under
    ``cases_root`` (the centre of the object, as ``infer --prompts-from-mask``), masks on the
    original grid, and per size bin (:data:`~sam_l1dfl.metrics.detection.FINE_SIZE_STRATA`) the
    median of predicted/reference volume (predicted: the components overlapping the object).

    Returns ``{"bins": {name: {"n", "median_ratio", "median_dice"}}, "objects": [...],
    "within": bool}``; ``within`` says whether every non-empty bin lies in
    :data:`SIZE_CALIBRATION_RANGE`.
    """
    import statistics

    out = Path(out_dir)
    predict(source, cases_root, out / "pred", device=device)
    res = evaluate_dataset(out / "pred", cases_root, mips=False, n_resamples=20, progress=False)
    objects = [{"case": r["case"], "lesion_id": r["lesion_id"], "volume_ml": r["volume_ml"],
                "pred_volume_ml": r["pred_volume_ml"], "dice": r["dice"],
                "ratio": r["pred_volume_ml"] / r["volume_ml"],
                "bin": stratum_of(r["volume_ml"], FINE_SIZE_STRATA)} for r in res.lesions if r["kind"] == "ref"]
    bins = {}
    for name, _lo, _hi in FINE_SIZE_STRATA:
        sel = [o for o in objects if o["bin"] == name]
        bins[name] = {"n": len(sel),
                      "median_ratio": statistics.median(o["ratio"] for o in sel) if sel else math.nan,
                      "median_dice": statistics.median(o["dice"] for o in sel) if sel else math.nan}
    lo, hi = SIZE_CALIBRATION_RANGE
    within = all(lo <= b["median_ratio"] <= hi for b in bins.values() if b["n"])
    return {"bins": bins, "objects": objects, "within": within}


#: loss-section keys of a variant (``loss.KEY``); every other key of a variant is a ``loss.params`` key
LOSS_SECTION_KEYS = ("warmup_steps", "warmup_name")


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """A fine-tuning variant ``NAME[key=value,...]`` -> ``(loss name, config overrides)``.

    ``l1dfl`` is the authors' L1DFL; ``l1dfl[eps=0.1,histogram_scope=roi]`` sets
    ``loss.params.eps`` and ``loss.params.histogram_scope``; ``warmup_steps``/``warmup_name`` go to the
    ``loss`` section itself (a DiceFocal warm start); a dotted key (``train.log_weight_shares=true``)
    is a config override as it stands.
    """
    spec = str(spec).strip()
    name, _, rest = spec.partition("[")
    overrides = []
    if rest:
        if not rest.endswith("]"):
            raise InputError(None, f"variant {spec!r}: expected NAME[key=value,...]")
        for item in filter(None, (x.strip() for x in rest[:-1].split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(None, f"variant {spec!r}: {item!r} is not key=value")
            key = key.strip()
            if "." in key:  # a full config key, e.g. train.log_weight_shares
                overrides.append(f"{key}={value.strip()}")
            else:
                overrides.append(f"loss.{key}={value.strip()}" if key in LOSS_SECTION_KEYS else
                                 f"loss.params.{key}={value.strip()}")
    return name.strip(), overrides


def variant_label(spec: str) -> str:
    """Row label of a fine-tuning variant: ``fine-tuned, L1DFL [eps=0.1]``."""
    name, _, rest = str(spec).partition("[")
    base = ROW_LABELS.get(name, name)
    return f"{base} [{rest[:-1]}]" if rest else base


def run_name(spec: str, seed: "int | None" = None, tag: str = "") -> str:
    """A folder name for a method or variant, an optional budget tag and seed (file-name safe)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(spec)).strip("_")
    return f"{safe}{'_' + tag if tag else ''}{'' if seed is None else f'_seed{seed}'}"


def finetune(init: str, train_root: "str | Path", out_root: "str | Path", loss: str, seed: int, *,
             config: "str | Path", overrides: Sequence[str] = (), name: "str | None" = None,
             progress: bool = False):
    """Fine-tune ``init``'s decoder on ``train_root`` with ``loss`` (``config`` + overrides);
    returns ``(TrainResult, seconds)``.  An earlier run of the same name is replaced."""
    import shutil

    name = name or f"{loss}_seed{seed}"
    cfg = load_config(config, [f"data.root={train_root}", f"output_dir={out_root}", f"name={name}",
                               f"model.checkpoint={init}", f"loss.name={loss}", f"seed={seed}", *overrides])
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)
    t = time.perf_counter()
    result = train(cfg, progress=progress)
    return result, time.perf_counter() - t


def picture_case(test_root: "str | Path", threshold_pred: "str | Path",
                 organs: Sequence[str] = ("bladder", "kidney")) -> tuple[str, str]:
    """The test case worth drawing: the one with a lesion beside ``organs`` (else any uptake organ)
    into which the threshold's mask leaks most (predicted/reference volume).  ``(case_id, note)``."""
    res = evaluate_dataset(threshold_pred, test_root, mips=False, n_resamples=20, progress=False)
    rows = lesion_rows(res, test_root, lesion_strata)
    truth = phantom_lesions(test_root)
    best = None
    for r in rows:
        organ = next(les for les in truth[r["case"]] if les["index"] == r["phantom_index"])["adjacent_to"]
        rank = (organ in organs, organ is not None, r["pred_volume_ml"] / r["volume_ml"])
        if best is None or rank > best[0]:
            best = (rank, r, organ)
    if best is None:
        cases = sorted(truth, key=lambda c: -len(truth[c]))
        return cases[0], "the case with the most lesions"
    _, r, organ = best
    where = f"beside the {organ}" if organ else "isolated"
    return r["case"], (f"lesion {r['lesion_id']} {where}: the threshold's mask {r['pred_volume_ml']:.1f} mL "
                       f"for a {r['volume_ml']:.2f} mL lesion")


def aggregate(rows: Iterable[Row]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{name: {column: (mean, sd, n)}}`` over seeds (sample sd; 0 for one value)."""
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.name, []).append(r)
    out = {}
    for name, rs in by.items():
        cols = {}
        for key, _h, _f in COLUMNS:
            vals = [r.seconds if key == "seconds" else r.metrics.get(key, math.nan) for r in rs]
            vals = [v for v in vals if v == v]
            if not vals:
                cols[key] = (math.nan, math.nan, 0)
                continue
            m = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            cols[key] = (m, sd, len(vals))
        out[name] = cols
    return out


def table(rows: Iterable[Row], markdown: bool = False) -> str:
    """The rows as a text (or Markdown) table, mean ± sd over seeds."""
    agg = aggregate(rows)
    order = [n for n in ("zero-shot",) if n in agg] + [n for n in agg if n not in ("zero-shot", "threshold")] + \
        [n for n in ("threshold",) if n in agg]
    head = ["method"] + [h for _k, h, _f in COLUMNS]
    body = []
    for name in order:
        cells = [variant_label(name)]
        for key, _h, fmt in COLUMNS:
            m, sd, n = agg[name][key]
            if m != m:
                cells.append("n/a")
            elif n > 1 and key != "seconds":
                cells.append(f"{m:{fmt}} ± {sd:{fmt}}")
            else:
                cells.append(f"{m:{fmt}}")
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt_row(head)] + [fmt_row(r) for r in body])


__all__ = ["COLUMNS", "LOSSES", "LOSS_SECTION_KEYS", "LOW_CONTRAST_TBR", "SIZE_CALIBRATION_RANGE", "parse_variant",
           "picture_case", "run_name", "size_calibration", "variant_label", "STRATA_KEYS", "lesion_strata", "TEST_SEED", "TRAIN_SEED_BASE", "ROW_LABELS", "Row", "aggregate", "finetune", "predict", "score", "table"]
