"""The loss comparison: every (model, loss, fold or seed) trained, validated and tested the same way.

``plan_comparison(...)`` resolves everything a comparison will do without training (what
``compare_losses.py --plan`` prints with :func:`describe_plan`); :func:`execute_run` is one run
(one job of :mod:`sam_l1dfl.compare.sweep`, which launches them and merges the report):

1. **Split once** (``splits.json``): the labelled cases of ``data`` are shuffled with
   ``split_seed``; a fixed ``test_fraction`` is the test set, the rest the train/validation pool.
   With ``folds=K`` the pool is cut into K folds stratified by lesion presence
   (:func:`sam_l1dfl.compare.folds.make_folds`); fold k validates on fold k and trains on the
   others.  Without folds one validation set (cases with lesions) is held out and ``seeds`` runs
   share it.
2. **Each run** ``runs/<model>-<loss>-s<seed>/`` (or ``-f<k>``) trains with identical data, seed,
   epochs, augmentation and optimiser for every loss: the loss name and that loss's own
   constructor parameters (``loss_params``, e.g. the authors' ``squared_pred=False`` for MONAI's
   Dice losses) are the only difference.  It keeps its best checkpoint by validation Dice, segments
   the test cases (CNNs: sliding window, no prompt; SAM-Med3D: 1 simulated click per lesion,
   :class:`sam_l1dfl.inference.Segmenter`), evaluates them with
   :func:`sam_l1dfl.metrics.evaluate_case` and records wall time, peak memory and a probability
   histogram of correct and incorrect voxels.  Test masks go to ``runs/<run>/pred/`` (seeds) or
   ``pred/<model>/<loss>/fold<k>/`` (folds).  The run folder is a job folder
   (:mod:`sam_l1dfl.cluster.jobs`): a finished run is skipped, an interrupted one resumes, one
   made with other settings is refused (another ``--out`` or ``--force``).
3. **Fold ensemble** (folds only): the majority vote of the K fold masks per test case (a voxel
   is lesion when more than K/2 folds say so: > 2 of 5, the authors' ``ensemble_predict.py``),
   written to ``pred/<model>/<loss>/ensemble/`` and evaluated like a run.
4. **Report** (:mod:`sam_l1dfl.compare.report`): ``table.md``, ``table.csv``, ``stats.csv``,
   ``figures/`` for the ensemble (folds) or the seed runs, and the per-fold runs in ``folds/``.
   ``meta`` carries ``lesion_free_dice`` (``authors``: a lesion-free test scan scores Dice 0 with
   any false-positive voxel and 1 without; ``nan``: left out) and ``primary_criterion``.

Budgets (:data:`BUDGETS`): ``small`` (2 CPU cores, < 45 min on 16 synthetic cases: tiny widths,
4 mm, 32³ crops, short training, SAM-Med3D's tiny preset from random weights unless a checkpoint
is given, one split and 1 seed — a SMOKE-SCALE result), ``paper`` (the authors' settings, for
GPUs; docs/reproducing-the-paper.md has them side by side).  Any setting of either trainer can be
overridden (``cnn_overrides`` / ``sam_overrides``, ``cnn.train.epochs=20`` on the command line).
The per-job resources of each budget (``BUDGETS[b]["resources"]``, per model under ``models``)
are what the cluster launchers ask for (:mod:`sam_l1dfl.cluster.resources`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import yaml

from sam_l1dfl.baselines import LABELS as BASELINE_LABELS, METHODS as BASELINE_METHODS, threshold_segment
from sam_l1dfl.cnn.config import cnn_config_from_dict
from sam_l1dfl.cnn.infer import AutoSegmenter
from sam_l1dfl.cnn.train import train_cnn
from sam_l1dfl.compare import report
from sam_l1dfl.compare.folds import make_folds, majority_vote, vote_share
from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.data.geometry import Grid
from sam_l1dfl.data.io import CaseRecord, load_case, read_image, read_mask
from sam_l1dfl.devices import cpu_threads
from sam_l1dfl.errors import ConfigError, InputError
from sam_l1dfl.inference import Segmenter
from sam_l1dfl.io_utils import atomic_path, write_image_atomic, write_json_atomic
from sam_l1dfl.losses import LOSS_NAMES, loss_arguments, normalize_loss_name, training_loss_params
from sam_l1dfl.metrics.calibration import add_calibration, case_calibration
from sam_l1dfl.metrics.dataset import evaluate_case
from sam_l1dfl.metrics.quantify import dissemination_mm
from sam_l1dfl.progress import progress as show_progress
from sam_l1dfl.training.config import config_from_dict
from sam_l1dfl.training.loop import train
from sam_l1dfl.training.runconfig import merge

CNN_MODELS = ("unet", "segresnet", "attentionunet", "unetr")
SAM_MODEL = "sam-med3d"
MODELS = CNN_MODELS + (SAM_MODEL,)
LOSSES = ("dice", "dicefocal", "l1dfl")
CALIB_BINS = 20
LESION_FREE_DICE = ("authors", "nan")
#: The authors' baselines: MONAI's DiceLoss / DiceFocalLoss with their defaults (squared_pred=False).
AUTHORS_LOSS_PARAMS = {"dice": {"squared_pred": False}, "dicefocal": {"squared_pred": False},
                       "dicece": {"squared_pred": False}}

#: Per budget: CNN config overrides (``cnn``; per network ``cnn_models``), SAM-Med3D config,
#: per-loss parameters, split sizes, folds, the scoring rules, defaults for the command line.
BUDGETS: dict[str, dict[str, Any]] = {
    "small": {
        "description": "SMOKE-SCALE: tiny widths (0.25), 4 mm grid, 32³ crops, 80 epochs on 2 CPU cores; "
                       "SAM-Med3D = tiny preset (random init unless --sam-checkpoint). Not the paper's result.",
        "default_models": ("unet", "segresnet", SAM_MODEL),
        "default_seeds": 1,
        "default_folds": 0,
        "test_fraction": 0.4,
        "n_val": 2,
        "loss_params": {},
        "lesion_free_dice": "nan",
        "primary_criterion": "c1",
        "cnn": {"preprocess": {"spacing": 4.0}, "network": {"width": 0.25},
                "augment": {"crop_size": 32, "num_samples": 2},
                "optim": {"lr": 2e-3},
                "train": {"epochs": 80, "batch_size": 2, "val_every": 10, "save_every": 20, "keep_last": 1,
                          "log_every": 5, "mixed_precision": "no"},
                "infer": {"sw_batch_size": 4}},
        "cnn_models": {},
        "sam": {"model": {"preset": "tiny", "checkpoint": None},
                "prompts": {"clicks_per_sample": 3, "mask_only": "last"},
                "optim": {"lr": 1e-3, "warmup_steps": 0},
                "train": {"epochs": 8, "batch_size": 2, "val_every": 0, "save_every": 0, "keep_last": 1,
                          "log_every": 5, "mixed_precision": "no"}},
        # per job (sam_l1dfl.cluster.resources); measured: <= 2 min and < 2 GB per run on 2 CPU cores
        "resources": {"gpus": 0, "cpus": 2, "mem_gb": 4, "time_min": 30},
    },
    "paper": {
        "description": "the authors' settings (ObedDzik/pca_segment): full widths, 2 mm, 128³ crops (Attention U-Net "
                       "192³), 1000 epochs, AdamW 2e-4 cosine-annealed to 0, validation every 2 epochs, fp16, "
                       "constant sliding-window blending, MONAI Dice/Dice-Focal with their defaults, 5 folds + "
                       "majority-vote ensemble; SAM-Med3D vit_b_ori decoder fine-tuning from --sam-checkpoint, "
                       "100 epochs; GPUs expected.",
        "default_models": MODELS,
        "default_seeds": 1,
        "default_folds": 5,
        "test_fraction": 0.2,
        "n_val": None,  # 20 % of the rest (without folds)
        "loss_params": AUTHORS_LOSS_PARAMS,
        "lesion_free_dice": "authors",
        "primary_criterion": "c3",
        "cnn": {"data": {"num_workers": 4}, "augment": {"num_samples": 1},
                "optim": {"lr": 2e-4, "weight_decay": 1e-5, "min_lr": 0.0},
                "train": {"epochs": 1000, "val_every": 2, "batch_size": 4, "mixed_precision": "fp16"},
                "infer": {"mode": "constant", "overlap": 0.25}},
        "cnn_models": {"attentionunet": {"augment": {"crop_size": 192}, "train": {"batch_size": 2}}},
        "sam": {"model": {"preset": "vit_b_ori"},
                "train": {"epochs": 100, "batch_size": 8, "mixed_precision": "bf16", "val_every": 500,
                          "save_every": 500}},
        # per job: one GPU; time limits from the cost model of docs/cluster.md (a job that reaches
        # its limit is requeued by SLURM and resumes from its last saved state)
        "resources": {"gpus": 1, "cpus": 8, "mem_gb": 64, "time_min": 1440,
                      "models": {"attentionunet": {"mem_gb": 96}}},
    },
}


# ---------------------------------------------------------------------- helpers
def _is_loss(name: str) -> bool:
    try:
        normalize_loss_name(name)
    except ConfigError:
        return False
    return True


def run_name(model: str, loss: str, seed: int, fold: "int | None" = None) -> str:
    return f"{model}-{loss}-s{seed}" if fold is None else f"{model}-{loss}-f{fold}"


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 50 ms from /proc)
    and, on CUDA, ``torch.cuda.max_memory_allocated``."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # not Linux: the process's lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.peak = self.rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())
        self.result = {"peak_rss_mb": round(self.peak / 2**20, 1)}
        if self.cuda:
            import torch

            self.result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return False


# ---------------------------------------------------------------------- splits
def make_splits(data: "str | os.PathLike", out: Path, split_seed: int, test_fraction: float,
                n_val: "int | None", folds: int = 0, write: bool = True) -> dict:
    """Deterministic test / val / train split of the labelled cases; written to ``splits.json`` and
    ``trainval.csv`` (a manifest of the training + validation cases, what the trainers read).

    With ``folds`` (>= 2) the train/validation pool is cut into that many folds
    (:func:`~sam_l1dfl.compare.folds.make_folds`, ``splits["folds"]``); ``train`` is the whole pool
    and ``val`` is empty (each fold run validates on its fold).  ``write=False``: nothing is written
    (``--plan``)."""
    rep = discover_cases(data)
    recs = sorted((c for c in rep.cases if c.label is not None), key=lambda r: r.case_id)
    missing_ct = [r.case_id for r in recs if r.ct is None]
    if missing_ct:
        raise InputError(data, f"{len(missing_ct)} case(s) without CT (e.g. {missing_ct[0]}); the CNNs take CT + PET")
    if len(recs) < 3:
        raise InputError(data, f"{len(recs)} labelled case(s): need at least 3 (train, validation, test)")
    import SimpleITK as sitk

    # GetArrayFromImage copies: a view of a temporary image would read freed memory
    has = {r.case_id: bool(np.any(sitk.GetArrayFromImage(read_image(r.label, "label")))) for r in recs}
    if sum(has.values()) < 2:
        raise InputError(data, "fewer than 2 cases with lesions: need lesions in the validation and training cases")
    rng = np.random.default_rng(split_seed)
    order = [recs[i] for i in rng.permutation(len(recs))]
    n_test = min(len(recs) - 2, max(1, int(round(test_fraction * len(recs)))))
    test, rest = order[:n_test], order[n_test:]
    fold_ids = None
    if folds:
        fold_ids = make_folds([r.case_id for r in rest], has, folds, split_seed)
        val, train = [], list(rest)
    else:
        nv = n_val if n_val is not None else max(1, int(round(0.2 * len(rest))))
        with_les = [r for r in rest if has[r.case_id]]
        nv = min(max(1, nv), len(with_les) - 1) if len(with_les) > 1 else 1
        # validation cases need lesions (best-epoch Dice; SAM-Med3D validates on lesion crops)
        val = with_les[:nv]
        train = [r for r in rest if r not in val]
    if not any(has[r.case_id] for r in train):
        raise InputError(data, "no training case with lesions after the split; add cases or change --split-seed")
    splits = {"data": str(data), "split_seed": int(split_seed), "n_cases": len(recs),
              "test": sorted(r.case_id for r in test), "val": sorted(r.case_id for r in val),
              "train": sorted(r.case_id for r in train), "has_lesions": has,
              "records": {r.case_id: r.to_dict() for r in recs}}
    if fold_ids is not None:
        splits["folds"] = fold_ids
    if write:
        write_splits(out, splits)
    return splits


def write_splits(out: Path, splits: dict) -> None:
    """``splits.json`` and ``trainval.csv`` (the manifest of the training + validation cases, what
    the trainers read) into ``out``."""
    import csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "splits.json", splits)
    with atomic_path(out / "trainval.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case_id", "pet", "ct", "label"])
            w.writeheader()
            for cid in sorted(splits["train"] + splits["val"]):
                r = CaseRecord.coerce(splits["records"][cid])
                w.writerow({k: ("" if v is None else str(Path(v).resolve()) if k != "case_id" else v)
                            for k, v in r.to_dict().items()})


# ---------------------------------------------------------------------- one run
def _run_config_dict(spec: dict, arm: str, extra: "dict | None" = None) -> dict:
    """The run's config mapping: run basics, the budget's settings (per network for the CNNs), the
    loss's own parameters, then the user's overrides."""
    out = Path(spec["out"])
    d = {"name": spec["name"], "output_dir": str(out / "runs"), "seed": spec["seed"],
         "data": {"root": str(out / "trainval.csv"), "val_cases": spec["val"], "cache_dir": str(out / "cache" / arm)},
         "loss": {"name": spec["loss"], "params": dict(spec.get("loss_params") or {})}, **(extra or {})}
    d = merge(d, spec["budget_cfg"][arm])
    if arm == "sam" and spec.get("sam_checkpoint"):
        d = merge(d, {"model": {"checkpoint": spec["sam_checkpoint"]}})
    return merge(d, spec.get(f"{arm}_overrides") or {})


def cnn_config(spec: dict):
    d = _run_config_dict(spec, "cnn", {"network": {"name": spec["model"]}})
    return cnn_config_from_dict(d, source=f"compare_losses ({spec['name']})")


def sam_config(spec: dict):
    return config_from_dict(_run_config_dict(spec, "sam"), source=f"compare_losses ({spec['name']})")


def run_config(spec: dict):
    """The validated training config of a run (CNN or SAM-Med3D)."""
    return sam_config(spec) if spec["model"] == SAM_MODEL else cnn_config(spec)


def _calibration(prob: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> dict:
    edges = np.linspace(0.0, 1.0, CALIB_BINS + 1)
    correct = pred == ref
    p = np.clip(prob, 0.0, 1.0)
    hc = np.histogram(p[correct], edges)[0]
    hi = np.histogram(p[~correct], edges)[0]
    return {"correct": hc.tolist(), "incorrect": hi.tolist()}


class TestScores:
    """Scores test cases one by one (:func:`~sam_l1dfl.metrics.evaluate_case`, calibration
    histogram) and writes each mask to ``pred_dir/<case>.nii.gz``."""

    def __init__(self, tag: dict, pred_dir: Path):
        self.tag, self.pred_dir = tag, Path(pred_dir)
        self.rows: list = []
        self.lesions: list = []
        self.calib = {"correct": [0] * CALIB_BINS, "incorrect": [0] * CALIB_BINS}
        self.margin = None  # lesion-margin calibration bins (metrics.calibration), summed over cases

    def add(self, cid: str, case, mask: np.ndarray, prob: np.ndarray) -> None:
        import SimpleITK as sitk

        ref = sitk.GetArrayFromImage(case.label) > 0
        pet = sitk.GetArrayFromImage(case.pet).astype(np.float32)
        spacing = tuple(reversed(case.pet.GetSpacing()))
        res = evaluate_case(mask > 0, ref, spacing, pet, case=cid,
                            index_to_world=Grid.from_image(case.pet).array_index_to_world)
        lc = case_calibration(prob, mask > 0, ref, spacing)
        self.margin = add_calibration(self.margin, lc)
        self.rows.append({**self.tag, **res.row, "ref_dmax_mm": dissemination_mm(ref, spacing), "ece": lc["ece"],
                          "mid_share": lc["mid_share"], "n_margin_voxels": lc["n_margin_voxels"]})
        self.lesions += [{**self.tag, **l} for l in res.lesions]
        c = _calibration(prob, mask > 0, ref)
        for k in self.calib:
            self.calib[k] = [a + b for a, b in zip(self.calib[k], c[k])]
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(case.pet)
        write_image_atomic(img, self.pred_dir / f"{cid}.nii.gz")

    def result(self) -> dict:
        return {"cases": self.rows, "lesions": self.lesions, "calibration": {**self.calib, "margin": self.margin}}


def _tag(spec: dict) -> dict:
    return {"model": spec["model"], "loss": spec["loss"], "seed": spec["seed"],
            **({} if spec.get("fold") is None else {"fold": spec["fold"]})}


def _evaluate_test(spec: dict, predict) -> dict:
    """Predict and evaluate every test case; ``predict(case) -> (mask zyx uint8, prob zyx float32)``."""
    scores = TestScores(_tag(spec), Path(spec["pred_dir"]))
    for cid in show_progress(spec["test"], desc=f"test {spec['name']}", unit="case", enabled=spec.get("progress", True)):
        case = load_case(CaseRecord.coerce(spec["records"][cid]))
        mask, prob = predict(case)
        scores.add(cid, case, mask, prob)
    return scores.result()


def is_main_process() -> bool:
    """Rank 0 of a multi-process (``accelerate launch``) job, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _run_cnn(spec: dict) -> "dict | None":
    import SimpleITK as sitk

    cfg = cnn_config(spec)
    res = train_cnn(cfg, resume=True, progress=spec.get("progress", True))
    if not is_main_process():  # the other training processes of a multi-GPU job are done
        return None
    seg = AutoSegmenter(Path(res.run_dir) / "best")

    def predict(case):
        r = seg.segment(case.pet, case.ct_native)
        return sitk.GetArrayFromImage(r.mask), sitk.GetArrayFromImage(r.probability)

    return {"best": {"epoch": res.best_epoch, "val_dice": res.best_val_dice}, "steps": res.steps,
            "epochs": res.epochs, **_evaluate_test(spec, predict)}


def _run_sam(spec: dict) -> "dict | None":
    import SimpleITK as sitk

    cfg = sam_config(spec)
    res = train(cfg, resume=True, progress=spec.get("progress", True))
    if not is_main_process():
        return None
    best = Path(res.run_dir) / "best"
    seg = Segmenter(best if best.is_dir() else Path(res.run_dir) / "last", batch_size=2)

    def predict(case):
        shape = tuple(reversed(case.pet.GetSize()))
        if not np.any(sitk.GetArrayViewFromImage(case.label)):
            # a prompted model gets no click on a lesion-free scan: nothing is segmented
            return np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
        ct = case.ct_native if seg.input_mode != "pet" else None
        r = seg.segment(case.pet, ct, reference=case.label, clicks=0, probabilities=True)
        prob = np.zeros(shape, np.float32)
        for im in (r.probabilities or {}).values():
            np.maximum(prob, sitk.GetArrayViewFromImage(im), out=prob)
        return sitk.GetArrayFromImage(r.mask), prob

    return {"best": {"step": res.best_step, "val_dice@1": res.best_dice1}, "steps": res.steps,
            "start_from": res.metrics.get("start_from"), **_evaluate_test(spec, predict)}


def execute_run(spec: dict) -> "dict | None":
    """Train + test one (model, loss, fold or seed); writes and returns ``result.json``'s content.
    Training resumes from the run's last saved state.  In a multi-process job (``accelerate
    launch``, one process per GPU) every process trains and rank 0 alone tests and writes (the
    others return None)."""
    import torch

    t0 = time.perf_counter()
    with cpu_threads(spec.get("threads")), PeakMemory() as mem:
        out = _run_sam(spec) if spec["model"] == SAM_MODEL else _run_cnn(spec)
    if out is None:
        return None
    result = {"format": "sam-l1dfl-compare-run", "version": 1, "name": spec["name"], "model": spec["model"],
              "loss": spec["loss"], "seed": spec["seed"], **({} if spec.get("fold") is None else {"fold": spec["fold"]}),
              "fingerprint": spec["fingerprint"], "wall_seconds": round(time.perf_counter() - t0, 2),
              "memory": mem.result, "device": "cuda" if torch.cuda.is_available() else "cpu", **out}
    write_json_atomic(Path(spec["run_dir"]) / "result.json", result)
    return result


# ---------------------------------------------------------------------- SUV-threshold baselines
def run_baselines(out: Path, splits: dict, force: bool = False, progress: bool = True) -> list[dict]:
    """The classical SUV-threshold segmenters (:mod:`sam_l1dfl.baselines`) on the test cases, scored
    like a run (masks in ``pred/threshold/<method>/``); cached in ``baselines/<method>/result.json``
    until the test set changes.  Their results carry ``"baseline": True`` and no calibration."""
    import SimpleITK as sitk

    results = []
    for method in BASELINE_METHODS:
        rj = Path(out) / "baselines" / method / "result.json"
        fp = fingerprint({"method": method, "test": splits["test"]})
        if rj.is_file() and not force:
            prev = json.loads(rj.read_text())
            if prev.get("fingerprint") == fp:
                results.append(prev)
                continue
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            scores = TestScores({"model": "threshold", "loss": BASELINE_LABELS[method], "seed": 0},
                                Path(out) / "pred" / "threshold" / method)
            for cid in show_progress(splits["test"], desc=f"baseline {method}", unit="case", enabled=progress):
                case = load_case(CaseRecord.coerce(splits["records"][cid]))
                ct = sitk.GetArrayFromImage(case.ct) if case.ct is not None else None
                mask = threshold_segment(sitk.GetArrayFromImage(case.pet), ct, method)
                scores.add(cid, case, mask, mask.astype(np.float32))
        result = {"format": "sam-l1dfl-compare-run", "version": 1, "name": f"threshold-{method}", "model": "threshold",
                  "loss": BASELINE_LABELS[method], "seed": 0, "baseline": True, "fingerprint": fp,
                  "wall_seconds": round(time.perf_counter() - t0, 2), "memory": mem.result, "device": "cpu",
                  "best": {}, **scores.result(), "calibration": None}
        write_json_atomic(rj, result)
        results.append(result)
    return results


# ---------------------------------------------------------------------- the fold ensemble
def ensemble_dir(out: Path, model: str, loss: str) -> Path:
    return Path(out) / "pred" / model / loss / "ensemble"


def run_ensemble(out: Path, fold_specs: Sequence[dict], fold_results: Sequence[dict], force: bool = False,
                 progress: bool = True) -> dict:
    """The majority vote of the fold runs' test masks (> K/2 of K) per test case, written to
    ``pred/<model>/<loss>/ensemble/`` and scored like a run (the calibration histogram uses the
    vote share as the probability); cached in its ``result.json`` until a fold changes."""
    first = fold_specs[0]
    model, loss, k = first["model"], first["loss"], len(fold_specs)
    d = ensemble_dir(out, model, loss)
    # the folds' settings and their outcomes: a fold trained again (--force) makes a new ensemble
    fp = fingerprint([[s["fingerprint"] for s in fold_specs], [r.get("wall_seconds") for r in fold_results]])
    rj = d / "result.json"
    if rj.is_file() and not force:
        prev = json.loads(rj.read_text())
        if prev.get("fingerprint") == fp:
            return prev
    t0 = time.perf_counter()
    scores = TestScores({"model": model, "loss": loss, "seed": 0, "fold": "ensemble"}, d)
    for cid in show_progress(first["test"], desc=f"ensemble {model}-{loss}", unit="case", enabled=progress):
        case = load_case(CaseRecord.coerce(first["records"][cid]))
        masks = [read_mask(Path(s["pred_dir"]) / f"{cid}.nii.gz", "prediction")[1] for s in fold_specs]
        scores.add(cid, case, majority_vote(masks), vote_share(masks))
    mem = [r["memory"] for r in fold_results]
    result = {"format": "sam-l1dfl-compare-run", "version": 1, "name": f"{model}-{loss}-ensemble", "model": model,
              "loss": loss, "seed": 0, "fold": "ensemble", "fingerprint": fp,
              "rule": f"majority vote of {k} folds: lesion where more than {k // 2} of {k} fold masks say so",
              "wall_seconds": round(sum(r["wall_seconds"] for r in fold_results), 2),
              "ensemble_seconds": round(time.perf_counter() - t0, 2),
              "memory": {key: max(m.get(key, 0) for m in mem) for key in mem[0]},
              "device": fold_results[0]["device"], "best": {"folds": k}, **scores.result()}
    write_json_atomic(rj, result)
    return result


# ---------------------------------------------------------------------- the plan
def _check_loss_params(loss_params: dict) -> dict:
    """``{loss: params}`` with canonical loss names (known losses only; each value a mapping)."""
    out: dict = {}
    for name, params in (loss_params or {}).items():
        if not _is_loss(name):
            raise ConfigError("loss_params", f"unknown loss {name!r}; choose from {list(LOSS_NAMES)}")
        if not isinstance(params, dict):
            raise ConfigError("loss_params", f"{name}: expected a mapping of constructor options, got {params!r}")
        out.setdefault(normalize_loss_name(name), {}).update(params)
    return out


def _checked_plan_args(budget: str, models: Sequence[str], losses: Sequence[str], seeds: int, folds: int,
                       lesion_free_dice: "str | None", sam_checkpoint: "str | None") -> tuple[list, list, str]:
    """:func:`plan_comparison`'s arguments checked: the models and losses normalised, the lesion-free
    Dice rule."""
    if budget not in BUDGETS:
        raise ConfigError(None, f"--budget must be one of {list(BUDGETS)}, got {budget!r}")
    models = [m.strip().lower() for m in models]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ConfigError(None, f"unknown model(s) {bad}; choose from {list(MODELS)}")
    badl = [l for l in losses if not _is_loss(l)]
    if badl:
        raise ConfigError(None, f"unknown loss(es) {badl}; choose from {list(LOSS_NAMES)}")
    losses = [normalize_loss_name(l) for l in losses]
    if seeds < 1:
        raise ConfigError(None, f"--seeds must be >= 1, got {seeds}")
    if folds and seeds > 1:
        raise ConfigError(None, f"--folds {folds} with --seeds {seeds}: choose folds (the paper) or seeds, not both")
    if folds == 1 or folds < 0:
        raise ConfigError(None, f"--folds must be 0 (one split) or >= 2, got {folds}")
    b = BUDGETS[budget]
    lfd = lesion_free_dice or b["lesion_free_dice"]
    if lfd not in LESION_FREE_DICE:
        raise ConfigError(None, f"--lesion-free-dice must be one of {list(LESION_FREE_DICE)}, got {lfd!r}")
    if SAM_MODEL in models:
        if budget == "paper" and not sam_checkpoint:
            raise ConfigError(None, "--budget paper with sam-med3d needs --sam-checkpoint (e.g. sam_med3d_turbo.pth)")
    return models, losses, lfd


def _run_spec(model: str, loss: str, seed: int, fold: "int | None", out: Path, budget: str, budget_cfg: dict,
              splits: dict, sam_checkpoint: "str | None", cnn_overrides: "dict | None", sam_overrides: "dict | None",
              lp: dict, threads: "int | None", progress: bool) -> dict:
    """One run's spec, its config validated (before anything trains)."""
    name = run_name(model, loss, seed, fold)
    run_dir = (out / "runs" / name).resolve()
    pred_dir = run_dir / "pred" if fold is None else (out / "pred" / model / loss / f"fold{fold}").resolve()
    spec = {"name": name, "model": model, "loss": loss, "seed": seed, "fold": fold,
            "out": str(out.resolve()), "run_dir": str(run_dir), "pred_dir": str(pred_dir),
            "budget": budget, "budget_cfg": budget_cfg,
            "val": splits["val"] if fold is None else splits["folds"][fold],
            "test": splits["test"], "records": splits["records"], "sam_checkpoint": sam_checkpoint,
            "cnn_overrides": cnn_overrides or {}, "sam_overrides": sam_overrides or {},
            "loss_params": lp.get(loss, {}), "threads": threads}
    # everything that defines the run except the loss-independent paths
    spec["fingerprint"] = fingerprint({k: spec[k] for k in (
        "model", "loss", "seed", "budget_cfg", "val", "test", "sam_checkpoint", "cnn_overrides",
        "sam_overrides", "loss_params")})
    spec["progress"] = progress
    cfg = run_config(spec)  # every config validated before anything trains
    mode = "sigmoid" if model == SAM_MODEL else "softmax"
    spec["loss_arguments"] = loss_arguments(loss, mode, **training_loss_params(loss, cfg.loss.params))
    return spec


def plan_comparison(data: "str | os.PathLike", out: "str | os.PathLike", models: Sequence[str] = ("unet",),
                    losses: Sequence[str] = LOSSES, seeds: int = 1, budget: str = "small", *, folds: int = 0,
                    split_seed: int = 0, sam_checkpoint: "str | None" = None, cnn_overrides: "dict | None" = None,
                    sam_overrides: "dict | None" = None, loss_params: "dict | None" = None,
                    lesion_free_dice: "str | None" = None, progress: bool = True, threads: "int | None" = None,
                    write: bool = True) -> dict:
    """Everything a comparison will do, resolved and validated, without training: the split (and
    folds), one spec per run with its config, the meta the report gets.  ``write=False`` writes
    nothing (``--plan``)."""
    models, losses, lfd = _checked_plan_args(budget, models, losses, seeds, folds, lesion_free_dice, sam_checkpoint)
    b = BUDGETS[budget]
    lp = _check_loss_params(merge(b["loss_params"], _check_loss_params(loss_params or {})))
    out = Path(out)
    splits = make_splits(data, out, split_seed, b["test_fraction"], b["n_val"], folds=folds, write=write)
    specs = []
    for model in models:
        budget_cfg = {"cnn": merge(b["cnn"], b["cnn_models"].get(model, {})), "sam": b["sam"]}
        for loss in losses:
            for fold in (range(folds) if folds else [None]):
                for seed in range(seeds):
                    specs.append(_run_spec(model, loss, seed, fold, out, budget, budget_cfg, splits, sam_checkpoint,
                                           cnn_overrides, sam_overrides, lp, threads, progress))
    meta = {"budget": budget, "budget_description": b["description"], "models": models, "losses": losses,
            "seeds": seeds, "folds": folds, "split_seed": split_seed, "n_runs": len(specs), "data": str(data),
            "loss_params": lp, "lesion_free_dice": lfd, "primary_criterion": b["primary_criterion"],
            "evaluation": (f"test set predicted by each of {folds} folds; the ensemble is their majority vote "
                           f"(lesion where more than {folds // 2} of {folds} fold masks say so)") if folds else
                          f"test set predicted by each of {seeds} seed(s); per-case values averaged over seeds"}
    return {"splits": splits, "specs": specs, "meta": meta, "out": str(out)}


def describe_plan(plan: dict) -> str:
    """The plan in words: split and folds, every run with its loss arguments, each model's full
    config, the ensemble rule, the scoring rules and the statistics the report will run."""
    meta, splits, specs = plan["meta"], plan["splits"], plan["specs"]
    L = _plan_data_and_rules(meta, splits)
    L.append(f"runs ({len(specs)}):")
    for s in specs:
        args = ", ".join(f"{k}={v}" for k, v in s["loss_arguments"].items())
        where = f"validation fold {s['fold']}" if s["fold"] is not None else f"seed {s['seed']}"
        L.append(f"  {s['name']}: {where}; loss {s['loss']}({args})")
    L.append("")
    L += _plan_model_settings(meta, specs)
    L += _plan_statistics(meta)
    return "\n".join(L) + "\n"


def _plan_data_and_rules(meta: dict, splits: dict) -> list[str]:
    """The budget, the split (and folds), the evaluation and scoring rules, the loss parameters."""
    folds = meta["folds"]
    L = [f"PLAN (nothing is trained): budget {meta['budget']}: {meta['budget_description']}",
         f"data {meta['data']}: {splits['n_cases']} labelled cases; {len(splits['test'])} test cases (fixed, split "
         f"seed {splits['split_seed']}): {', '.join(splits['test'])}"]
    if folds:
        pool = splits["train"]
        L.append(f"{folds} folds over the train/validation pool of {len(pool)} cases, stratified by lesion presence "
                 f"(deterministic, split seed {splits['split_seed']}); fold k validates on fold k and trains on the rest:")
        for k, f in enumerate(splits["folds"]):
            n_les = sum(splits["has_lesions"][c] for c in f)
            L.append(f"  fold {k}: {len(f)} validation cases ({n_les} with lesions), {len(pool) - len(f)} training: "
                     f"{', '.join(f)}")
    else:
        L.append(f"one split: {len(splits['train'])} training, {len(splits['val'])} validation cases "
                 f"({', '.join(splits['val'])}); {meta['seeds']} seed(s) per (model, loss)")
    L.append(f"evaluation: {meta['evaluation']}" + (" (ensemble_predict.py: > 2 of 5)" if folds == 5 else ""))
    L.append("lesion-free test scans: " + ("Dice 0 with any false-positive voxel, 1 without (the authors' rule)"
                                           if meta["lesion_free_dice"] == "authors" else
                                           "Dice undefined (NaN), left out of Dice means and tests"))
    L.append(f"primary detection criterion: {meta['primary_criterion'].upper()}"
             + (" (a reference lesion is detected when its SUVmax voxel lies in the prediction)"
                if meta["primary_criterion"] == "c3" else ""))
    L.append("loss parameters (per loss, on top of each loss's defaults): "
             + (", ".join(f"{k}: {v}" for k, v in meta["loss_params"].items()) or "none"))
    L.append("")
    return L


def _plan_model_settings(meta: dict, specs: list) -> list[str]:
    """Each model's settings and its first run's full config."""
    L = []
    L.append("settings per model (identical for every loss and fold/seed except name, seed, data.val_cases, "
             "loss.name and loss.params):")
    for model in meta["models"]:
        s = next(x for x in specs if x["model"] == model)
        cfg = run_config(s)
        if model != SAM_MODEL:
            t, o, a, i = cfg.train, cfg.optim, cfg.augment, cfg.infer
            L.append(f"- {model}: {t.epochs} epochs, validation every {t.val_every} epochs, AdamW lr {o.lr:g} "
                     f"(weight decay {o.weight_decay:g}) cosine-annealed to {o.min_lr:g}, batch {t.batch_size} volumes "
                     f"× {a.num_samples} crop(s) of {a.crop_size}³ per process, mixed precision {t.mixed_precision}; "
                     f"crops: body CT > {a.body_hu} HU, centres where PET > {a.crop_pet_threshold}, pos/neg "
                     f"{a.pos:g}/{a.neg:g}, {a.padding_mode} padding; sliding window {a.crop_size}³ overlap "
                     f"{i.overlap:g}, {i.mode} blending")
        else:
            t = cfg.train
            L.append(f"- {model}: preset {cfg.model.preset} from {cfg.model.checkpoint or 'random weights'}, "
                     f"{t.epochs} epochs, validation every {t.val_every} steps, mixed precision {t.mixed_precision}")
        L.append("  config (first run):")
        L += ["    " + line for line in yaml.safe_dump(cfg.to_dict(), sort_keys=False).splitlines()]
    L.append("")
    return L


def _plan_statistics(meta: dict) -> list[str]:
    """The tests the report will run (none without L1DFL and a baseline)."""
    L, folds = [], meta["folds"]
    baselines = [l for l in meta["losses"] if l != report.REFERENCE_LOSS]
    if report.REFERENCE_LOSS in meta["losses"] and baselines:
        for family, stat in report.stat_families(meta["primary_criterion"]):
            m = len(meta["models"]) * len(baselines) * len(stat)
            L.append(f"comparisons ({family}): per model, {report.REFERENCE_LOSS} vs each of {', '.join(baselines)}: "
                     f"paired two-sided Wilcoxon signed-rank tests on per-test-case values "
                     f"({'ensemble' if folds else 'seed means'}) of {', '.join(x[1] for x in stat)}; Bonferroni over "
                     f"m = {len(meta['models'])} models × {len(baselines)} baselines × {len(stat)} metrics = {m} "
                     "tests; effect size: matched-pairs rank-biserial r")
        L.append("classical baselines (no tests): " + ", ".join(BASELINE_LABELS[k] for k in BASELINE_METHODS)
                 + " within the body mask (sam_l1dfl.baselines)")
    else:
        L.append(f"comparisons: none ({report.REFERENCE_LOSS} and a baseline are needed)")
    return L


__all__ = ["AUTHORS_LOSS_PARAMS", "BUDGETS", "CNN_MODELS", "LESION_FREE_DICE", "LOSSES", "MODELS", "PeakMemory",
           "SAM_MODEL", "TestScores", "cnn_config", "describe_plan", "ensemble_dir", "execute_run", "is_main_process", "make_splits",
           "plan_comparison", "run_baselines", "run_config", "run_ensemble", "sam_config", "write_splits"]
