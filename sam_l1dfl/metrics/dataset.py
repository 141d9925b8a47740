"""Evaluate whole data sets: find files by case id, check grids, compute every metric.

File layout (matching is by case id):

* reference (``gt_dir``): the autoPET layout ``<case>/SEG.nii.gz`` (PET beside it as
  ``<case>/SUV.nii.gz``), also one level deeper (``<patient>/<study>/SEG.nii.gz``, case id
  ``<patient>_<study>``), or flat files ``<case>.nii.gz``;
* predictions (``pred_dir``): flat files ``<case>.nii.gz`` (any
  :data:`~sam_l1dfl.data.io.IMAGE_SUFFIXES` ending: ``.nii``, ``.mha``, ``.nrrd``, ...) or
  ``<case>/SEG.nii.gz``; label maps are binarised (> 0); or the shard folders ``shard-K-of-N/``
  that ``infer --shard`` / ``infer-auto --shard`` write, merged (every shard present and finished,
  no case twice; a missing one is refused, naming it);
* PET (``pet_dir``, optional): ``<case>/SUV.nii.gz``, ``<case>.nii.gz`` or nnU-Net's
  ``<case>_0000.nii.gz`` (the PET channel of ``dataset.json``); without ``pet_dir`` the
  ``SUV.nii.gz`` beside each ``SEG.nii.gz`` is used when present.

Several click counts: give ``pred_dir`` as ``{clicks: dir}``, as a list of dirs with
``clicks=[...]`` of the same length, or as one dir with subfolders ``clicks_<N>`` (or
``clicks<N>``), optionally selected by ``clicks``.

Files are read with :mod:`sam_l1dfl.data.io` (:func:`~sam_l1dfl.data.io.read_mask`,
:func:`~sam_l1dfl.data.io.read_image`): a truncated or corrupt file, NaN/inf PET voxels, a mask
with negative or non-integer values are refused.  A prediction must be on the reference grid
(size, spacing, origin, direction; :func:`sam_l1dfl.data.geometry.grid_mismatches`), and so must
the PET.  Every case's files are checked; when some are unusable no report is written (metrics
over a silently smaller set would mislead) and one :class:`~sam_l1dfl.errors.InputError` names the
first file and lists the other cases (:func:`failed_cases_error`).  Lesion positions are
world millimetres of the reference :class:`~sam_l1dfl.data.geometry.Grid`.

This module is the evaluation loop; the columns, definitions and run summaries come from
:mod:`.summary` and the files are written by :mod:`.report`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sam_l1dfl.data.discovery import SHARD_DIR, nnunet_pet_file, shard_dir_name
from sam_l1dfl.data.geometry import Grid, grid_mismatches
from sam_l1dfl.data.io import IMAGE_SUFFIXES, image_suffix, read_image, read_mask, strip_suffix
from sam_l1dfl.data.dicom.suv_sanity import warn_if_not_suv
from sam_l1dfl.errors import InputError
from sam_l1dfl.model.standin import ORIGIN_WORDS
from sam_l1dfl.progress import progress as show_progress

from .components import AUTOPET_CONNECTIVITY, component_overlap
from .detection import match_lesions
from .quantify import QUANTITIES, quantify
from .report import case_figure, click_curve_figure, dice_volume_figure, write_outputs
from .summary import DEFINITIONS, summarize_run
from .volume import volume_metrics, voxel_volume_ml

_CLICK_DIR = re.compile(r"^clicks_?(\d+)$")


def _find_named(folder: Path, stem: str) -> Path | None:
    for e in IMAGE_SUFFIXES:
        p = folder / f"{stem}{e}"
        if p.is_file():
            return p
    return None


def _shard_masks(folder: Path, shards: dict[int, dict[int, Path]]) -> dict[str, Path]:
    """The masks of every shard of ``folder`` (``shard-K-of-N/``, ``--shard K/N``): one N, every K
    from 1 to N present and finished (its ``summary.json`` written last), no case twice."""
    if len(shards) > 1:
        raise InputError(folder, f"holds shards of {len(shards)} different splits (N = {', '.join(map(str, sorted(shards)))}); "
                                 "keep the folders of one")
    (n, parts), = shards.items()
    absent = [k for k in range(1, n + 1) if k not in parts]
    if absent:
        raise InputError(folder / shard_dir_name(absent[0], n),
                         f"missing: {len(absent)} of {n} shard(s) not run ({', '.join(f'{k}/{n}' for k in absent)}); "
                         "run them with --shard K/N")
    out: dict[str, Path] = {}
    for k in range(1, n + 1):
        if not (parts[k] / "summary.json").is_file():
            raise InputError(parts[k], f"shard {k}/{n} did not finish (no summary.json); run it again")
        for case, path in find_masks(parts[k]).items():
            if case in out:
                raise InputError(path, f"case {case!r} is in two shards (also {out[case]})")
            out[case] = path
    return out


def find_masks(folder: "str | Path") -> dict[str, Path]:
    """Case id -> mask file in ``folder`` (see the module docstring for the layouts); a folder of
    shards (``shard-K-of-N/``, written by ``infer --shard``) is merged (:func:`_shard_masks`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    shards: dict[int, dict[int, Path]] = {}
    for p in folder.iterdir():
        m = SHARD_DIR.match(p.name)
        if m and p.is_dir():
            shards.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if shards:
        return _shard_masks(folder, shards)
    out: dict[str, Path] = {}

    def add(case: str, path: Path) -> None:
        if case in out:
            raise InputError(path, f"case {case!r} is given twice (also {out[case]})")
        out[case] = path

    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file():
            stem = strip_suffix(p.name)
            if image_suffix(p.name) and stem:
                add(stem, p)
        elif p.is_dir():
            seg = _find_named(p, "SEG")
            if seg is not None:
                add(p.name, seg)
                continue
            for q in sorted(p.iterdir()):
                if q.is_dir() and not q.name.startswith("."):
                    seg = _find_named(q, "SEG")
                    if seg is not None:
                        add(f"{p.name}_{q.name}", seg)
    return out


def find_pet(case: str, gt_path: Path, pet_dir: "str | Path | None") -> Path | None:
    """PET file of ``case``: in ``pet_dir`` if given (error if absent), else beside the SEG."""
    if pet_dir is None:
        if gt_path.name.startswith("SEG."):
            return _find_named(gt_path.parent, "SUV")
        return None
    pet_dir = Path(pet_dir)
    for cand in (_find_named(pet_dir / case, "SUV"), _find_named(pet_dir, case),
                 _find_named(pet_dir, f"{case}_SUV")):
        if cand is not None:
            return cand
    if "_" in case:  # nested autoPET layout <patient>/<study>/SUV.nii.gz
        head, _, tail = case.partition("_")
        cand = _find_named(pet_dir / head / tail, "SUV")
        if cand is not None:
            return cand
    cand = nnunet_pet_file(pet_dir, case)  # imagesTs/<case>_0000.nii.gz
    if cand is not None:
        return cand
    raise InputError(pet_dir, f"no PET for case {case!r} (looked for {case}/SUV.nii.gz, {case}.nii.gz and "
                              f"nnU-Net's {case}_0000.nii.gz)")


def masks_origin(pred_dir: "str | Path") -> str:
    """Where the masks in ``pred_dir`` came from, in words, from the ``summary.json`` that
    ``sam-l1dfl infer`` writes beside them (method, checkpoint and its weights' origin)."""
    first = sorted(p for p in Path(pred_dir).glob("shard-*-of-*") if SHARD_DIR.match(p.name))  # sharded: shard 1's
    try:
        info = json.loads(((first[0] if first else Path(pred_dir)) / "summary.json").read_text())
    except (OSError, ValueError):
        return "not recorded (no summary.json from sam-l1dfl infer)"
    if not isinstance(info, dict) or "method" not in info:
        return "not recorded"
    if info["method"] != "sam":
        return f"{info['method']} (no model)"
    origin = info.get("weights") or "other"
    return f"SAM-Med3D, checkpoint {info.get('checkpoint')}; weights: {ORIGIN_WORDS.get(origin, origin)}"


def resolve_runs(
    pred_dir: "str | Path | Sequence[str | Path] | Mapping[int, str | Path]",
    clicks: "Sequence[int] | None" = None,
) -> list[tuple[int | None, Path]]:
    """``[(clicks or None, folder), ...]`` sorted by click count."""
    if isinstance(pred_dir, Mapping):
        if clicks is not None:
            raise InputError(None, "give click counts either as the keys of pred_dir or as clicks, not both")
        runs = [(int(k), Path(v)) for k, v in pred_dir.items()]
    elif isinstance(pred_dir, (str, Path)):
        folder = Path(pred_dir)
        if not folder.is_dir():
            raise InputError(folder, "prediction folder does not exist")
        sub = {int(m.group(1)): p for p in folder.iterdir() if p.is_dir() and (m := _CLICK_DIR.match(p.name))}
        if clicks is not None and len(clicks) == 1 and not sub:
            runs = [(int(clicks[0]), folder)]
        elif clicks is not None:
            missing = [c for c in clicks if int(c) not in sub]
            if missing:
                raise InputError(folder, f"no subfolder clicks_{missing[0]} for click count {missing[0]}")
            runs = [(int(c), sub[int(c)]) for c in clicks]
        elif sub and not find_masks(folder):
            runs = sorted(sub.items())
        else:
            runs = [(None, folder)]
    else:
        dirs = [Path(p) for p in pred_dir]
        if clicks is None:
            if len(dirs) != 1:
                raise InputError(None, f"{len(dirs)} prediction folders need as many click counts (clicks=...)")
            runs = [(None, dirs[0])]
        else:
            if len(clicks) != len(dirs):
                raise InputError(None, f"{len(dirs)} prediction folders but {len(clicks)} click counts")
            runs = [(int(c), d) for c, d in zip(clicks, dirs)]
    keys = [c for c, _ in runs]
    if len(set(keys)) != len(keys):
        raise InputError(None, f"click counts repeat: {keys}")
    for _, d in runs:
        if not d.is_dir():
            raise InputError(d, "prediction folder does not exist")
    return sorted(runs, key=lambda r: -1 if r[0] is None else r[0])


# --------------------------------------------------------------------------- one case


def check_grid(image, reference, path: Path, ref_path: Path) -> None:
    """Raise a one-line InputError naming ``path`` unless ``image`` is on ``reference``'s grid
    (the rule of :func:`sam_l1dfl.data.geometry.grid_mismatches`)."""
    for what, value, ref_value in grid_mismatches(reference, image)[:1]:
        fa = tuple(round(float(v), 4) for v in np.ravel(value))
        fb = tuple(round(float(v), 4) for v in np.ravel(ref_value))
        raise InputError(path, f"{what} {fa} differs from the reference {ref_path} ({fb}); "
                               "resample the prediction onto the reference grid")


@dataclass
class CaseResult:
    """Everything computed for one case (rows for the CSV files, the matching for pictures)."""

    row: dict[str, Any]
    lesions: list[dict[str, Any]]
    matching: Any = field(repr=False, default=None)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    pet: np.ndarray | None = None,
    case: str = "",
    clicks: int | None = None,
    index_to_world: Callable[[Sequence[float]], Sequence[float]] | None = None,
    connectivity: int = AUTOPET_CONNECTIVITY,
) -> CaseResult:
    """All metrics of one case from arrays (``spacing`` in array axis order).

    Each mask is labelled once (:func:`~sam_l1dfl.metrics.components.component_overlap`, cc3d);
    volume metrics, detection and quantification all take that labelling.

    ``index_to_world`` maps a continuous array index to world millimetres for the lesion
    positions in ``lesions.csv`` (without it the array index is given).
    """
    ov = component_overlap(pred, ref, connectivity)
    vol = volume_metrics(pred, ref, spacing, overlap=ov)
    m = match_lesions(pred, ref, spacing, pet=pet, overlap=ov)
    row: dict[str, Any] = {"case": case, "clicks": clicks, **{k: vol[k] for k in ("dice", "fpv_ml", "fnv_ml")}}
    for c in ("c1", "c2", "c3"):
        for k in ("tp", "fp", "fn", "precision", "recall", "f1"):
            row[f"{k}_{c}"] = m.counts[c][k] if c in m.counts else None
    qr = quantify(ref, spacing, pet, lesion_count=ov.n_ref)
    qp = quantify(pred, spacing, pet, lesion_count=ov.n_pred)
    for q in QUANTITIES:
        row[f"ref_{q}"] = qr[q]
        row[f"pred_{q}"] = qp[q]
    row["voxel_ml"] = voxel_volume_ml(spacing)
    row["spacing_mm"] = "x".join(f"{float(s):g}" for s in spacing)
    row["has_pet"] = pet is not None

    def lesion_row(kind: str, r: dict[str, Any], overlapping: list[int]) -> dict[str, Any]:
        ci = r["centroid_index"]
        w = index_to_world(ci) if index_to_world is not None else ci
        return {
            "case": case, "clicks": clicks, "kind": kind, "lesion_id": r["lesion_id"], "voxels": r["voxels"],
            "volume_ml": r["volume_ml"], "stratum": r["stratum"],
            "x_mm": float(w[0]), "y_mm": float(w[1]), "z_mm": float(w[2]), "best_iou": r["best_iou"],
            "n_overlapping": len(overlapping), "overlapping_ids": ";".join(map(str, overlapping)),
            "suv_max": r.get("suv_max"), "suv_mean": r.get("suv_mean"), "tlu": r.get("tlu"),
        }

    lesions: list[dict[str, Any]] = []
    for r in m.ref:
        lesions.append({
            **lesion_row("ref", r, r["pred_ids"]), "dice": r["dice"],
            **{f"detected_{c}": r.get(f"detected_{c}") for c in ("c1", "c2", "c3")},
            "pred_volume_ml": r["pred_volume_ml"], "pred_suv_max": r.get("pred_suv_max"),
            "pred_suv_mean": r.get("pred_suv_mean"),
        })
    for p in m.pred:
        lesions.append({**lesion_row("pred", p, p["ref_ids"]),
                        **{f"fp_{c}": p.get(f"fp_{c}") for c in ("c1", "c2", "c3")}})
    return CaseResult(row, lesions, m)


def read_evaluation_case(gt_path: Path, pred_path: Path | None, pet_path: Path | None):
    """Read and check one case; returns ``(gt_img, pred, ref, pet, spacing_zyx)`` as arrays.

    A missing prediction (``pred_path=None``) is an empty mask.
    """
    import SimpleITK as sitk

    gt_img, ref = read_mask(gt_path, "reference")
    if pred_path is None:
        pred = np.zeros_like(ref)
    else:
        pimg, pred = read_mask(pred_path, "prediction")
        check_grid(pimg, gt_img, pred_path, gt_path)
    pet = None
    if pet_path is not None:
        petimg = read_image(pet_path, "PET")
        check_grid(petimg, gt_img, pet_path, gt_path)
        pet = sitk.GetArrayFromImage(petimg).astype(np.float32, copy=False)
        warn_if_not_suv(pet, pet_path)
    spacing = tuple(reversed(gt_img.GetSpacing()))
    return gt_img, pred, ref, pet, spacing


# --------------------------------------------------------------------------- data set


def failed_cases_error(failed: "Sequence[tuple[str, InputError]]") -> InputError:
    """One :class:`InputError` for every case of a run that could not be read: the first one's
    file and problem, and the ids of the others."""
    (_, first), others = failed[0], [c for c, _ in failed[1:]]
    if not others:
        return first
    more = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    return InputError(first.path, f"{first.problem} (and {len(others)} more unusable case(s): {more})")



@dataclass
class EvaluationResult:
    """Rows of ``metrics.csv`` / ``lesions.csv``, the ``summary.json`` content, written paths."""

    cases: list[dict[str, Any]]
    lesions: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def evaluate_dataset(
    pred_dir: "str | Path | Sequence[str | Path] | Mapping[int, str | Path]",
    gt_dir: "str | Path",
    pet_dir: "str | Path | None" = None,
    out_dir: "str | Path | None" = None,
    clicks: "Sequence[int] | None" = None,
    *,
    missing_as_empty: bool = False,
    n_resamples: int = 2000,
    seed: int = 0,
    mips: bool = True,
    max_mip_cases: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate predictions against references for a whole data set (and several click counts).

    Writes ``metrics.csv``, ``lesions.csv``, ``summary.json`` and ``report.html`` to
    ``out_dir`` when given.  A reference case without a prediction is an error unless
    ``missing_as_empty`` (then it counts as an empty prediction); predictions without a
    reference are listed in ``summary["inputs"]["unmatched_predictions"]`` and ignored.
    MIPs are drawn for the largest click count (at most ``max_mip_cases`` cases).
    """
    gt = find_masks(gt_dir)
    if not gt:
        raise InputError(gt_dir, "no reference masks found (expected <case>/SEG.nii.gz or <case>.nii.gz)")
    runs = resolve_runs(pred_dir, clicks)
    pets = {case: find_pet(case, path, pet_dir) for case, path in gt.items()}
    cases_rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    run_summaries = []
    unmatched: list[str] = []
    missing_all: dict[str, list[str]] = {}
    figures: dict[str, Any] = {"cases": []}
    for k, (nclicks, folder) in enumerate(runs):
        preds = find_masks(folder)
        missing = _missing_predictions(folder, gt, preds, gt_dir, missing_as_empty)
        missing_all[str(folder)] = missing
        unmatched += [str(preds[c]) for c in sorted(set(preds) - set(gt))]
        draw = mips and k == len(runs) - 1
        rows_run, les_run = _evaluate_run(gt, preds, pets, nclicks, figures if draw else None, max_mip_cases, progress)
        cases_rows += rows_run
        lesion_rows += les_run
        run_summaries.append(summarize_run(rows_run, les_run, n_resamples, seed))
    summary = _evaluation_summary(gt_dir, pet_dir, runs, gt, pets, missing_all, unmatched, n_resamples, seed,
                                  run_summaries)
    main_lesions = [l for l in lesion_rows if l["clicks"] == runs[-1][0]]
    if mips:
        figures["scatter"] = dice_volume_figure(main_lesions)
        figures["clicks"] = click_curve_figure(run_summaries)
    result = EvaluationResult(cases_rows, lesion_rows, summary)
    if out_dir is not None:
        result.paths = write_outputs(out_dir, cases_rows, lesion_rows, summary, figures)
    return result


def _missing_predictions(folder: Path, gt: dict, preds: dict, gt_dir, missing_as_empty: bool) -> list[str]:
    """The reference cases without a prediction in ``folder``: an error unless ``missing_as_empty``
    (and always when none matches)."""
    missing = sorted(set(gt) - set(preds))
    if missing and not missing_as_empty:
        more = f"; all {len(missing)} without one: {', '.join(missing[:20])}{', ...' if len(missing) > 20 else ''}" \
            if len(missing) > 1 else ""
        raise InputError(folder / f"{missing[0]}.nii.gz",
                         f"no prediction for reference case {missing[0]!r}{more} (use --missing-as-empty to count "
                         "them as empty predictions)")
    if len(missing) == len(gt):
        raise InputError(folder, f"no prediction matches a reference case in {gt_dir}")
    return missing


def _evaluate_run(gt: dict, preds: dict, pets: dict, nclicks: "int | None", figures: "dict | None",
                  max_mip_cases: "int | None", progress: bool) -> tuple[list[dict], list[dict]]:
    """The case rows and lesion rows of one run (one click count); MIPs into ``figures`` when given.
    Every case is read before any fails: the error names them all."""
    rows_run, les_run = [], []
    desc = "evaluate" + ("" if nclicks is None else f" ({nclicks} clicks)")
    failed: list[tuple[str, InputError]] = []
    for case in show_progress(sorted(gt), desc=desc, unit="case", enabled=progress):
        try:
            gt_img, pred, ref, pet, spacing = read_evaluation_case(gt[case], preds.get(case), pets[case])
        except InputError as exc:
            failed.append((case, exc))
            continue
        if failed:  # no report will be written: only check the remaining cases' files
            continue
        res = evaluate_case(pred, ref, spacing, pet, case=case, clicks=nclicks,
                            index_to_world=Grid.from_image(gt_img).array_index_to_world)
        res.row.update(gt_file=str(gt[case]), pred_file=str(preds.get(case, "")),
                       pet_file=str(pets[case] or ""),
                       spacing_mm="x".join(f"{s:g}" for s in gt_img.GetSpacing()))  # image (x, y, z) order
        rows_run.append(res.row)
        les_run += res.lesions
        if figures is not None:
            if max_mip_cases is None or len(figures["cases"]) < max_mip_cases:
                title = f"{case}  Dice {res.row['dice']:.3f}  FPV {res.row['fpv_ml']:.2f} mL  FNV {res.row['fnv_ml']:.2f} mL"
                figures["cases"].append((case, case_figure(gt_img, pet, res.matching, title)))
            else:
                figures["cases_left_out"] = figures.get("cases_left_out", 0) + 1
    if failed:
        raise failed_cases_error(failed)
    return rows_run, les_run


def _evaluation_summary(gt_dir, pet_dir, runs: list, gt: dict, pets: dict, missing_all: dict, unmatched: list,
                        n_resamples: int, seed: int, run_summaries: list) -> dict:
    """``summary.json``: the inputs, the definitions and one summary per run."""
    return {
        "format": "sam-l1dfl-evaluation",
        "version": 1,
        "inputs": {
            "gt_dir": str(gt_dir),
            "pet_dir": None if pet_dir is None else str(pet_dir),
            "pred_dirs": {("all" if c is None else str(c)): str(f) for c, f in runs},
            "masks_from": {("all" if c is None else str(c)): masks_origin(f) for c, f in runs},
            "n_cases": len(gt),
            "cases_with_pet": sum(1 for p in pets.values() if p is not None),
            "missing_predictions_counted_empty": {f: m for f, m in missing_all.items() if m},
            "unmatched_predictions": unmatched,
            "bootstrap": {"n_resamples": n_resamples, "seed": seed},
        },
        "definitions": DEFINITIONS,
        "runs": run_summaries,
    }
