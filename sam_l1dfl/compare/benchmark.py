"""The learning benchmark (``scripts/bench_learning.py``, BENCHMARKS.md "Learning benchmark"): does fine-tuning
beat the starting model and the 41 %-SUVmax threshold, on which lesions, at which budget?

Fixed before any result was looked at (docs/phantom.md, "Strata"; issue #20 §4):

* **Test set**: :data:`~sam_l1dfl.compare.learning.TEST_SEED`, ``test_cases`` phantom cases (24 by
  default: 18 with lesions, every 4th lesion-free), one click per lesion from the reference mask,
  masks on the original PET grid.  **Validation set** (picks ``best/``): its own seed
  (:data:`VAL_SEED`), ``val_cases`` cases, every lesion.  **Training sets**: seed
  ``TRAIN_SEED_BASE + s`` for training seed ``s``; case ``i`` depends only on ``(seed, i)``, so a
  larger budget's cases include the smaller one's.
* **Rows**: the starting model zero-shot, the threshold (neither depends on the seed) and each
  fine-tuning variant (:func:`~sam_l1dfl.compare.learning.parse_variant`) per training seed.
* **Statistics**: per-lesion Dice of each method (fine-tunes averaged over their seeds first), paired
  differences against zero-shot and against the threshold with a bootstrap over cases
  (:mod:`sam_l1dfl.compare.paired`), overall and per stratum; F1 under C3 per stratum (a false
  positive belongs to the stratum of the nearest lesion of its case).
* **Budget curve**: lesion Dice against (training cases × steps) per variant, seed 0 unless asked.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sam_l1dfl.compare.learning import (COLUMNS, STRATA_KEYS, TEST_SEED, TRAIN_SEED_BASE, finetune, lesion_strata,
                                        parse_variant, predict, run_name, variant_label)
from sam_l1dfl.compare.paired import detection, fp_rows, lesion_rows, paired_difference, select
from sam_l1dfl.data.synthetic import generate_dataset
from sam_l1dfl.errors import InputError
from sam_l1dfl.metrics.dataset import evaluate_dataset
from sam_l1dfl.io_utils import write_json_atomic
from sam_l1dfl.metrics.detection import FINE_SIZE_STRATA
from sam_l1dfl.training import load_config

#: the validation set's seed (picks ``best/``); no training or test set uses it
VAL_SEED = 4000
#: the strata values in table order
STRATA_ORDER = {"organ": ("near an organ", "isolated"), "contrast": ("low contrast", "high contrast"),
                "size": tuple(n for n, _lo, _hi in FINE_SIZE_STRATA)}


@dataclass
class MethodRun:
    """One method on the test set: its metrics, per-lesion rows and false-positive components."""

    name: str
    seed: "int | None" = None
    budget: str = ""
    metrics: dict = field(default_factory=dict)
    lesions: list = field(default_factory=list)
    fps: list = field(default_factory=list)
    seconds: float = 0.0
    train: dict = field(default_factory=dict)


def evaluate_predictions(pred_dir: "str | Path", test_root: "str | Path") -> tuple[dict, list, list]:
    """``(metrics of COLUMNS, lesion rows, false-positive rows)`` of the masks in ``pred_dir``."""
    res = evaluate_dataset(pred_dir, test_root, mips=False, n_resamples=200, progress=False)
    run = res.summary["runs"][-1]

    def pick(*keys):
        cur = run
        for k in keys:
            if not isinstance(cur, dict) or k not in cur or cur[k] is None:
                return math.nan
            cur = cur[k]
        return float(cur)

    metrics = {"lesion_dice": pick("lesion_dice", "mean"), "dice": pick("dice", "mean"),
               "fpv_ml": pick("fpv_ml", "mean"), "fnv_ml": pick("fnv_ml", "mean"),
               "f1_c3": pick("detection", "c3", "f1", "value")}
    return metrics, lesion_rows(res, test_root, lesion_strata), fp_rows(res, test_root, lesion_strata)


def parse_budget(text: str) -> tuple[int, int]:
    """``"16x300"`` -> (16 training cases, 300 steps)."""
    try:
        cases, steps = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"budget {text!r}: expected CASESxSTEPS, e.g. 16x300") from None
    if cases < 2 or steps < 1:
        raise ValueError(f"budget {text!r}: needs at least 2 training cases and 1 step")
    return cases, steps


def run_benchmark(out: "str | Path", *, init: str, config: "str | Path", seeds: Sequence[int],
                  methods: Sequence[str], train_cases: int, steps: "int | None" = None, val_cases: int = 8,
                  test_cases: int = 24, curve: Sequence[str] = (), curve_seeds: Sequence[int] = (0,),
                  curve_methods: "Sequence[str] | None" = None,
                  overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict:
    """Run the benchmark into ``out``; returns ``{"runs": [MethodRun...], "sets": {...}}`` (also
    written to ``out/learning.json`` with every per-lesion row)."""
    extra = [m for m in (curve_methods or ()) if m not in methods]
    if extra:  # the tables list the curve per method of --methods: another would train unseen
        raise InputError(None, f"--curve-methods {', '.join(extra)}: not among --methods")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test, val = out / "test", out / "val"
    generate_dataset(test, test_cases, seed=TEST_SEED, n_oblique=1, progress=False)
    generate_dataset(val, val_cases, seed=VAL_SEED, progress=False)
    sets = {name: sum(len(c.get("lesions", [])) for c in json.loads((d / "dataset.json").read_text())["cases"])
            for name, d in (("test", test), ("val", val))}
    log(f"test set: {test_cases} cases, {sets['test']} lesions (seed {TEST_SEED}); validation: {val_cases} cases, "
        f"{sets['val']} lesions (seed {VAL_SEED})")
    runs: list[MethodRun] = []

    def score(name, source, pred, seed=None, budget="", train_s=0.0, train=None):
        secs = predict(source, test, pred)
        m, les, fps = evaluate_predictions(pred, test)
        runs.append(MethodRun(name, seed, budget, m, les, fps, secs + train_s, train or {}))
        log(f"  {name:24s} {budget:8s} seed {'-' if seed is None else seed}: lesion Dice {m['lesion_dice']:.3f}, "
            f"F1 (C3) {m['f1_c3']:.3f}, volume Dice {m['dice']:.3f}")

    score("zero-shot", init, out / "pred" / "zero-shot")
    score("threshold", "threshold", out / "pred" / "threshold")
    if steps is None:
        steps = load_config(config, list(overrides)).train.max_steps
    plan = [(f"{train_cases}x{steps}", train_cases, steps, s, list(methods)) for s in seeds]
    plan += [(b, *parse_budget(b), s, list(curve_methods or methods)) for b in curve for s in curve_seeds]
    for budget, n_cases, n_steps, seed, specs in plan:
        root = out / f"train_seed{seed}_n{n_cases}"
        generate_dataset(root, n_cases, seed=TRAIN_SEED_BASE + seed, n_oblique=1, progress=False)
        for spec in specs:
            loss, extra = parse_variant(spec)
            budget_over = [f"train.max_steps={n_steps}", f"train.val_every={max(25, n_steps // 3)}",
                           f"train.save_every={max(25, n_steps // 3)}"]
            res, secs = finetune(init, root, out / "runs", loss, seed, config=config,
                                 name=run_name(spec, seed, budget),
                                 overrides=[f"data.val_root={val}", "data.max_train_crops=null",
                                            "data.max_val_crops=null", *budget_over, *overrides, *extra])
            train = {"steps": res.steps, "best_step": res.best_step, "seconds": round(secs, 1),
                     "val_dice1_before": (res.dice_before or {}).get("dice@1"), "val_dice1_best": res.best_dice1,
                     "best_is_initial": bool(res.metrics.get("best_is_initial"))}
            log(f"  fine-tuned {spec} ({budget}, seed {seed}): {res.steps} steps in {secs:.0f} s, best step "
                f"{res.best_step}, val 1-click Dice {train['val_dice1_before'] or math.nan:.3f} -> {res.best_dice1:.3f}")
            score(spec, str(res.run_dir), out / "pred" / run_name(spec, seed, budget), seed,
                  budget, secs, train)
    result = {"runs": runs, "sets": sets, "test_cases": test_cases, "val_cases": val_cases,
              "train_cases": train_cases, "main_budget": f"{train_cases}x{steps}", "methods": list(methods), "seeds": list(seeds), "curve": list(curve)}
    write_json_atomic(out / "learning.json", json.loads(json.dumps(
        {**result, "runs": [asdict(r) for r in runs]}, default=str)))
    return result


# ------------------------------------------------------------------------------ tables
def _fmt(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or v != v else f"{v:{fmt}}"


def _ci(d: dict) -> str:
    if not d["n"]:
        return "n/a"
    if d["ci_low"] != d["ci_low"]:  # one case: no interval
        return f"{d['mean']:+.3f} (1 case)"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def tables(result: dict, main_budget: str, n_resamples: int = 2000) -> str:
    """The Markdown tables of a benchmark result (overall, per stratum, paired differences)."""
    runs: list[MethodRun] = [r if isinstance(r, MethodRun) else MethodRun(**r) for r in result["runs"]]
    base = {r.name: r for r in runs if r.seed is None}
    methods = result["methods"]
    by_method = {m: [r for r in runs if r.name == m and r.budget == main_budget] for m in methods}
    ref_rows = base["zero-shot"].lesions
    groups = [(k, v) for k in STRATA_KEYS for v in STRATA_ORDER[k]]
    lines = _overall_table(base, methods, by_method)
    lines += _strata_table(base, methods, by_method, groups, ref_rows)
    lines += _paired_table(base, methods, by_method, groups, ref_rows, n_resamples)
    lines += _budget_curve_table(result, runs, methods, main_budget)
    return "\n".join(lines)


def _overall_table(base: dict, methods: list, by_method: dict) -> list[str]:
    """Overall: one row per method, mean ± sd over seeds."""
    lines = []
    head = ["method"] + [h for _k, h, _f in COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, rs):
        cells = [label]
        for key, _h, fmt in COLUMNS:
            vals = [r.seconds if key == "seconds" else r.metrics.get(key, math.nan) for r in rs]
            vals = [v for v in vals if v == v]
            if not vals:
                cells.append("n/a")
            elif len(vals) > 1 and key != "seconds":
                cells.append(f"{np.mean(vals):{fmt}} ± {np.std(vals, ddof=1):{fmt}}")
            else:
                cells.append(f"{np.mean(vals):{fmt}}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row("zero-shot (start)", [base["zero-shot"]]))
    for m in methods:
        if by_method[m]:
            lines.append(row(variant_label(m), by_method[m]))
    lines.append(row("41% SUVmax from the click", [base["threshold"]]))
    return lines


def _strata_table(base: dict, methods: list, by_method: dict, groups: list, ref_rows: list) -> list[str]:
    """Per stratum: lesion Dice and F1 (C3)."""
    lines = []
    lines += ["", "Per stratum (lesion Dice / F1 under C3; fine-tunes: mean over seeds):", ""]
    counts = [len(select(ref_rows, k, v)) for k, v in groups]
    lines += ["| method | " + " | ".join(f"{v} (n={n})" for (k, v), n in zip(groups, counts)) + " |",
              "|" + "---|" * (len(groups) + 1)]

    def strat_cells(rs: Sequence[MethodRun]) -> list[str]:
        cells = []
        for k, v in groups:
            d = [np.mean([x["dice"] for x in select(r.lesions, k, v)]) if select(r.lesions, k, v) else math.nan
                 for r in rs]
            f = [detection(select(r.lesions, k, v), select(r.fps, k, v))["f1"] for r in rs]
            cells.append(f"{_fmt(float(np.mean(d)))} / {_fmt(float(np.mean(f)))}")
        return cells

    lines.append("| zero-shot | " + " | ".join(strat_cells([base["zero-shot"]])) + " |")
    for m in methods:
        if by_method[m]:
            lines.append(f"| {variant_label(m)} | " + " | ".join(strat_cells(by_method[m])) + " |")
    lines.append("| 41% threshold | " + " | ".join(strat_cells([base["threshold"]])) + " |")
    return lines


def _paired_table(base: dict, methods: list, by_method: dict, groups: list, ref_rows: list,
                  n_resamples: int) -> list[str]:
    """Paired per-lesion lesion-Dice differences against the zero-shot start and the threshold."""
    lines = []
    lines += ["", "Paired per-lesion lesion-Dice differences, mean [95 % CI, bootstrap over cases]:", ""]
    cols = [("all", None, None)] + [(v, k, v) for k, v in groups]
    lines += ["| difference | " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for m in methods:
        if not by_method[m]:
            continue
        a = [r.lesions for r in by_method[m]]
        for other in ("zero-shot", "threshold"):
            cells = [_ci(paired_difference(a, [base[other].lesions], select(ref_rows, k, v), n_resamples))
                     for _lbl, k, v in cols]
            lines.append(f"| {variant_label(m)} − {other} | " + " | ".join(cells) + " |")
    return lines


def _budget_curve_table(result: dict, runs: list, methods: list, main_budget: str) -> list[str]:
    """Budget curve: lesion Dice per training budget (none when the benchmark ran one budget)."""
    lines = []
    curve = result.get("curve") or []
    if curve:
        lines += ["", "Budget curve (lesion Dice on the test set; training cases × steps):", ""]
        budgets = [main_budget] + [b for b in curve if b != main_budget]
        lines += ["| method | " + " | ".join(budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
        for m in methods:
            cells = []
            for b in budgets:
                rs = [r for r in runs if r.name == m and r.budget == b]
                cells.append(_fmt(float(np.mean([r.metrics["lesion_dice"] for r in rs]))) if rs else "n/a")
            lines.append(f"| {variant_label(m)} | " + " | ".join(cells) + " |")
    return lines


__all__ = ["MethodRun", "STRATA_ORDER", "VAL_SEED", "evaluate_predictions", "parse_budget", "run_benchmark", "tables"]
