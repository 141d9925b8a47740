"""The loss comparison: every (model, loss, seed) trained, validated and tested the same way.

``run_comparison(data, out, models, losses, seeds, budget)``:

1. **Split once** (``splits.json``): the labelled cases of ``data`` are shuffled with
   ``split_seed`` into test / validation / training cases.  Every run uses the same split.
2. **Each run** ``runs/<model>-<loss>-s<seed>/`` trains with identical data, seed, epochs,
   augmentation and optimiser for every loss (the loss name is the only difference), keeps its
   best checkpoint by validation Dice, segments the test cases (CNNs: sliding window, no prompt;
   SAM-Med3D: 1 simulated click per lesion, :class:`sam_l1dfl.inference.Segmenter`), evaluates
   them with :func:`sam_l1dfl.metrics.evaluate_case` (Dice, FPV, FNV, C1/C2/C3 TP/FP/FN/F1,
   per-lesion strata) and records wall time, peak memory and a probability histogram of correct
   and incorrect voxels.  ``result.json`` marks a finished run; a rerun skips it (resume), unless
   its settings changed (then it refuses: choose another ``--out`` or ``--force``).
3. **Report** (:mod:`sam_l1dfl.compare.report`): ``table.md``, ``table.csv``, ``stats.csv``,
   ``figures/``.

Budgets: ``small`` (2 CPU cores, < 45 min on 16 synthetic cases: tiny widths, 4 mm, 32³ crops,
short training, SAM-Med3D's tiny preset from random weights unless a checkpoint is given — a
SMOKE-SCALE result), ``paper`` (the paper's settings, for GPUs; SAM-Med3D from the given
checkpoint).  Runs execute in a subprocess each by default (clean memory figures and state).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sam_l1dfl.cnn.config import cnn_config_from_dict
from sam_l1dfl.cnn.infer import AutoSegmenter
from sam_l1dfl.cnn.train import train_cnn
from sam_l1dfl.compare.report import write_report
from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.data.geometry import Grid
from sam_l1dfl.data.io import CaseRecord, load_case, read_image
from sam_l1dfl.errors import ConfigError, InputError, SamL1dflError
from sam_l1dfl.inference import Segmenter
from sam_l1dfl.io_utils import atomic_path, write_image_atomic, write_json_atomic
from sam_l1dfl.losses import LOSS_NAMES, normalize_loss_name
from sam_l1dfl.metrics.dataset import evaluate_case
from sam_l1dfl.training.config import config_from_dict
from sam_l1dfl.training.loop import train

CNN_MODELS = ("unet", "segresnet", "attentionunet", "unetr")
SAM_MODEL = "sam-med3d"
MODELS = CNN_MODELS + (SAM_MODEL,)
LOSSES = ("dice", "dicefocal", "l1dfl")
CALIB_BINS = 20

#: Per budget: CNN config overrides, SAM-Med3D config, split sizes, defaults for the command line.
BUDGETS: dict[str, dict[str, Any]] = {
    "small": {
        "description": "SMOKE-SCALE: tiny widths (0.25), 4 mm grid, 32³ crops, 80 epochs on 2 CPU cores; "
                       "SAM-Med3D = tiny preset (random init unless --sam-checkpoint). Not the paper's result.",
        "default_models": ("unet", "segresnet", SAM_MODEL),
        "default_seeds": 1,
        "test_fraction": 0.4,
        "n_val": 2,
        "cnn": {"preprocess": {"spacing": 4.0}, "network": {"width": 0.25},
                "augment": {"crop_size": 32, "num_samples": 2},
                "optim": {"lr": 2e-3},
                "train": {"epochs": 80, "batch_size": 2, "val_every": 10, "save_every": 20, "keep_last": 1,
                          "log_every": 5, "mixed_precision": "no"},
                "infer": {"sw_batch_size": 4}},
        "sam": {"model": {"preset": "tiny", "checkpoint": None},
                "prompts": {"clicks_per_sample": 3, "mask_only": "last"},
                "optim": {"lr": 1e-3, "warmup_steps": 0},
                "train": {"epochs": 8, "batch_size": 2, "val_every": 0, "save_every": 0, "keep_last": 1,
                          "log_every": 5, "mixed_precision": "no"}},
    },
    "paper": {
        "description": "paper settings: full widths, 2 mm, 128³ crops, 300 epochs (CNNs); SAM-Med3D vit_b_ori "
                       "decoder fine-tuning from --sam-checkpoint, 100 epochs; GPUs expected.",
        "default_models": MODELS,
        "default_seeds": 3,
        "test_fraction": 0.2,
        "n_val": None,  # 20 % of the rest
        "cnn": {"data": {"num_workers": 4}, "train": {"epochs": 300, "mixed_precision": "bf16"}},
        "sam": {"model": {"preset": "vit_b_ori"},
                "train": {"epochs": 100, "batch_size": 8, "mixed_precision": "bf16", "val_every": 500,
                          "save_every": 500}},
    },
}


# ---------------------------------------------------------------------- helpers
def _merge(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_loss(name: str) -> bool:
    try:
        normalize_loss_name(name)
    except ConfigError:
        return False
    return True


def run_name(model: str, loss: str, seed: int) -> str:
    return f"{model}-{loss}-s{seed}"


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
                n_val: "int | None") -> dict:
    """Deterministic test / val / train split of the labelled cases; written to ``splits.json`` and
    ``trainval.csv`` (a manifest of the training + validation cases, what the trainers read)."""
    import csv

    rep = discover_cases(data)
    recs = sorted((c for c in rep.cases if c.label is not None), key=lambda r: r.case_id)
    missing_ct = [r.case_id for r in recs if r.ct is None]
    if missing_ct:
        raise InputError(data, f"{len(missing_ct)} case(s) without CT (e.g. {missing_ct[0]}); the CNNs take CT + PET")
    if len(recs) < 3:
        raise InputError(data, f"{len(recs)} labelled case(s): need at least 3 (train, validation, test)")
    import SimpleITK as sitk

    has = {r.case_id: bool(np.any(sitk.GetArrayViewFromImage(read_image(r.label, "label")))) for r in recs}
    if sum(has.values()) < 2:
        raise InputError(data, "fewer than 2 cases with lesions: need lesions in the validation and training cases")
    rng = np.random.default_rng(split_seed)
    order = [recs[i] for i in rng.permutation(len(recs))]
    n_test = min(len(recs) - 2, max(1, int(round(test_fraction * len(recs)))))
    test, rest = order[:n_test], order[n_test:]
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
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "splits.json", splits)
    with atomic_path(out / "trainval.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case_id", "pet", "ct", "label"])
            w.writeheader()
            for r in sorted(train + val, key=lambda r: r.case_id):
                w.writerow({k: ("" if v is None else str(Path(v).resolve()) if k != "case_id" else v)
                            for k, v in r.to_dict().items()})
    return splits


# ---------------------------------------------------------------------- one run
def cnn_config(spec: dict):
    out = Path(spec["out"])
    d = {"name": spec["name"], "output_dir": str(out / "runs"), "seed": spec["seed"],
         "data": {"root": str(out / "trainval.csv"), "val_cases": spec["val"], "cache_dir": str(out / "cache" / "cnn")},
         "network": {"name": spec["model"]}, "loss": {"name": spec["loss"]}}
    d = _merge(d, spec["budget_cfg"]["cnn"])
    d = _merge(d, spec.get("cnn_overrides") or {})
    return cnn_config_from_dict(d, source=f"compare_losses ({spec['name']})")


def sam_config(spec: dict):
    out = Path(spec["out"])
    d = {"name": spec["name"], "output_dir": str(out / "runs"), "seed": spec["seed"],
         "data": {"root": str(out / "trainval.csv"), "val_cases": spec["val"], "cache_dir": str(out / "cache" / "sam")},
         "loss": {"name": spec["loss"]}}
    d = _merge(d, spec["budget_cfg"]["sam"])
    if spec.get("sam_checkpoint"):
        d = _merge(d, {"model": {"checkpoint": spec["sam_checkpoint"]}})
    d = _merge(d, spec.get("sam_overrides") or {})
    return config_from_dict(d, source=f"compare_losses ({spec['name']})")


def _calibration(prob: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> dict:
    edges = np.linspace(0.0, 1.0, CALIB_BINS + 1)
    correct = pred == ref
    p = np.clip(prob, 0.0, 1.0)
    hc = np.histogram(p[correct], edges)[0]
    hi = np.histogram(p[~correct], edges)[0]
    return {"correct": hc.tolist(), "incorrect": hi.tolist()}


def _evaluate_test(spec: dict, predict) -> tuple[list, list, dict]:
    """Predict and evaluate every test case; ``predict(case) -> (mask zyx uint8, prob zyx float32)``."""
    import SimpleITK as sitk
    from tqdm import tqdm

    rows, lesions = [], []
    calib = {"correct": [0] * CALIB_BINS, "incorrect": [0] * CALIB_BINS}
    pred_dir = Path(spec["run_dir"]) / "pred"
    for cid in tqdm(spec["test"], desc=f"test {spec['name']}", unit="case", disable=not spec.get("progress", True)):
        case = load_case(CaseRecord.coerce(spec["records"][cid]))
        mask, prob = predict(case)
        ref = sitk.GetArrayFromImage(case.label) > 0
        pet = sitk.GetArrayFromImage(case.pet).astype(np.float32)
        spacing = tuple(reversed(case.pet.GetSpacing()))
        res = evaluate_case(mask > 0, ref, spacing, pet, case=cid, index_to_world=Grid.from_image(case.pet).array_index_to_world)
        tag = {"model": spec["model"], "loss": spec["loss"], "seed": spec["seed"]}
        rows.append({**tag, **res.row})
        lesions += [{**tag, **l} for l in res.lesions]
        c = _calibration(prob, mask > 0, ref)
        for k in calib:
            calib[k] = [a + b for a, b in zip(calib[k], c[k])]
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(case.pet)
        write_image_atomic(img, pred_dir / f"{cid}.nii.gz")
    return rows, lesions, calib


def _run_cnn(spec: dict) -> dict:
    import SimpleITK as sitk

    cfg = cnn_config(spec)
    res = train_cnn(cfg, resume=True, progress=spec.get("progress", True))
    seg = AutoSegmenter(Path(res.run_dir) / "best")

    def predict(case):
        r = seg.segment(case.pet, case.ct_native)
        return sitk.GetArrayFromImage(r.mask), sitk.GetArrayFromImage(r.probability)

    rows, lesions, calib = _evaluate_test(spec, predict)
    return {"best": {"epoch": res.best_epoch, "val_dice": res.best_val_dice}, "steps": res.steps,
            "epochs": res.epochs, "cases": rows, "lesions": lesions, "calibration": calib}


def _run_sam(spec: dict) -> dict:
    import SimpleITK as sitk

    cfg = sam_config(spec)
    res = train(cfg, resume=True, progress=spec.get("progress", True))
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

    rows, lesions, calib = _evaluate_test(spec, predict)
    return {"best": {"step": res.best_step, "val_dice@1": res.best_dice1}, "steps": res.steps,
            "start_from": res.metrics.get("start_from"), "cases": rows, "lesions": lesions, "calibration": calib}


def execute_run(spec: dict) -> dict:
    """Train + test one (model, loss, seed); writes and returns ``result.json``'s content."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        out = _run_sam(spec) if spec["model"] == SAM_MODEL else _run_cnn(spec)
    result = {"format": "sam-l1dfl-compare-run", "version": 1, "name": spec["name"], "model": spec["model"],
              "loss": spec["loss"], "seed": spec["seed"], "fingerprint": spec["fingerprint"],
              "wall_seconds": round(time.perf_counter() - t0, 2), "memory": mem.result,
              "device": "cuda" if torch.cuda.is_available() else "cpu", **out}
    write_json_atomic(Path(spec["run_dir"]) / "result.json", result)
    return result


# ---------------------------------------------------------------------- the comparison
def run_comparison(data: "str | os.PathLike", out: "str | os.PathLike", models: Sequence[str] = ("unet",),
                   losses: Sequence[str] = LOSSES, seeds: int = 1, budget: str = "small", *,
                   split_seed: int = 0, sam_checkpoint: "str | None" = None, isolate: bool = True,
                   force: bool = False, cnn_overrides: "dict | None" = None, sam_overrides: "dict | None" = None,
                   progress: bool = True, threads: "int | None" = None, log=print) -> dict:
    """Run every (model, loss, seed), skipping finished ones, then write the report; returns its summary."""
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
    b = BUDGETS[budget]
    if SAM_MODEL in models:
        if budget == "paper" and not sam_checkpoint:
            raise ConfigError(None, "--budget paper with sam-med3d needs --sam-checkpoint (e.g. sam_med3d_turbo.pth)")
    out = Path(out)
    splits = make_splits(data, out, split_seed, b["test_fraction"], b["n_val"])
    log(f"split (seed {split_seed}): {len(splits['train'])} train, {len(splits['val'])} validation, "
        f"{len(splits['test'])} test cases -> {out / 'splits.json'}")
    log(f"budget {budget}: {b['description']}")
    specs = []
    for model in models:
        for loss in losses:
            for seed in range(seeds):
                name = run_name(model, loss, seed)
                spec = {"name": name, "model": model, "loss": loss, "seed": seed, "out": str(out.resolve()),
                        "run_dir": str((out / "runs" / name).resolve()), "budget": budget,
                        "budget_cfg": {k: b[k] for k in ("cnn", "sam")}, "val": splits["val"],
                        "test": splits["test"], "records": splits["records"], "sam_checkpoint": sam_checkpoint,
                        "cnn_overrides": cnn_overrides or {}, "sam_overrides": sam_overrides or {},
                        "threads": threads}
                # everything that defines the run except the loss-independent paths
                spec["fingerprint"] = fingerprint({k: spec[k] for k in ("model", "loss", "seed", "budget_cfg", "val",
                                                                        "test", "sam_checkpoint", "cnn_overrides",
                                                                        "sam_overrides")})
                spec["progress"] = progress
                specs.append(spec)
    t0 = time.perf_counter()
    done, ran = 0, 0
    for i, spec in enumerate(specs, 1):
        rj = Path(spec["run_dir"]) / "result.json"
        if rj.is_file() and not force:
            prev = json.loads(rj.read_text())
            if prev.get("fingerprint") != spec["fingerprint"]:
                raise ConfigError(rj, "finished with other settings (budget, split, overrides); use another --out "
                                      "or --force to rerun")
            log(f"[{i}/{len(specs)}] {spec['name']}: finished earlier, skipped")
            done += 1
            continue
        if force and Path(spec["run_dir"]).exists():
            import shutil

            shutil.rmtree(spec["run_dir"])
        log(f"[{i}/{len(specs)}] {spec['name']}: training ...")
        t1 = time.perf_counter()
        if isolate:
            _run_subprocess(spec, out)
        else:
            execute_run(spec)
        ran += 1
        log(f"[{i}/{len(specs)}] {spec['name']}: done in {time.perf_counter() - t1:.0f} s")
    meta = {"budget": budget, "budget_description": b["description"], "models": models, "losses": losses,
            "seeds": seeds, "split_seed": split_seed, "n_runs": len(specs), "skipped": done, "ran": ran,
            "seconds_this_invocation": round(time.perf_counter() - t0, 1), "data": str(data)}
    summary = write_report(out, [json.loads((Path(s["run_dir"]) / "result.json").read_text()) for s in specs],
                           splits, meta)
    log(f"report: {out / 'table.md'}")
    return summary


def _run_subprocess(spec: dict, out: Path) -> None:
    sp = Path(spec["run_dir"]) / "spec.json"
    write_json_atomic(sp, spec)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl.compare.runner", str(sp)], env=env)
    if r.returncode != 0:
        raise InputError(Path(spec["run_dir"]), f"run {spec['name']} failed (exit {r.returncode}); see the output above")


def _main(argv: "list[str]") -> int:  # the subprocess entry: python -m sam_l1dfl.compare.runner spec.json

    spec = json.loads(Path(argv[0]).read_text())
    try:
        execute_run(spec)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["BUDGETS", "CNN_MODELS", "LOSSES", "MODELS", "PeakMemory", "SAM_MODEL", "execute_run", "make_splits",
           "run_comparison"]
