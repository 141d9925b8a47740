#!/usr/bin/env python
"""The cost of the paper's sweep per network: measured epochs, counted FLOPs, modelled GPU-hours.

    python scripts/bench_sweep.py --data runs/synth16 --out bench_sweep.json       # CPU: smoke size
    python scripts/bench_sweep.py --data DIR --budget paper --epochs 2 ...          # on a GPU: paper size

**Measured** on this machine: seconds per training epoch of every network at ``--budget``'s settings
(``small``: the smoke size; ``paper``: the authors' settings, meant for a GPU), summed over the
logged steps of ``--epochs`` epochs after a first one (caches, warm-up), seconds per inference case (sliding window, mapped back to the PET grid), and the CPU seconds of
the paper's data pipeline per training crop (2 mm volume, body crop, ``RandCropByPosNegLabeld`` +
``RandAffined`` at 128³, 192³ for Attention U-Net).  **Counted** (``torch.utils.flop_counter`` on
the meta device, nothing computed): FLOPs of one training crop (forward + backward) and of one
sliding window (forward) at the smoke and the paper sizes.  **Modelled**: the GPU-hours of one
paper-budget job and of each network's 15 jobs (5 folds × 3 losses) for a cohort of ``--cohort``
cases: counted FLOPs at an *assumed* effective GPU throughput (``--gpu-tflops``), never faster than
the measured data pipeline on ``--workers`` loader processes; validation every 2 epochs and the test
set by sliding window over whole scans of ``--scan-mm`` (assumed: a 70 cm field of view, 1 m long).  SAM-Med3D:
``--sam-samples-per-s`` (the official trainer's rate recorded in BENCHMARKS.md) × its epochs.
Prints a Markdown table (docs/cluster.md) and writes every number to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def flops(name: str, width: float, crop: int) -> tuple[float, float]:
    """(forward + backward FLOPs of one training crop, forward FLOPs of one window) of a CNN."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sam_l1dfl.cnn.networks import build_network

    with torch.device("meta"):
        net = build_network(name, width, crop)
        x = torch.randn(2, 2, crop, crop, crop)  # batch 2: batch norm of a 1³ bottleneck needs 2 values
    fc = FlopCounterMode(display=False)
    with fc:
        y = net(x)
        fwd = fc.get_total_flops()
        y.float().sum().backward()
    return float(fc.get_total_flops()) / 2, float(fwd) / 2


def windows(shape, roi: int, overlap: float) -> int:
    """Sliding windows over ``shape`` (MONAI's count: ceil((size - roi) / stride) + 1 per axis)."""
    stride = max(1, int(roi * (1 - overlap)))
    return math.prod(1 if s <= roi else math.ceil((s - roi) / stride) + 1 for s in shape)


def epoch_seconds(spec: dict, epochs: int, out: Path) -> dict:
    """Training seconds per epoch of a run of ``1 + epochs`` epochs (every step logged; the first
    epoch, which builds caches, left out; validation and state saving off)."""
    from sam_l1dfl.compare.runner import SAM_MODEL, cnn_config, sam_config
    from sam_l1dfl.training.runconfig import merge

    arm = "sam" if spec["model"] == SAM_MODEL else "cnn"
    s = {**spec, f"{arm}_overrides": merge(spec[f"{arm}_overrides"], {"train": {
        "epochs": 1 + epochs, "max_steps": None, "val_every": 0, "save_every": 0, "log_every": 1}})}
    t0 = time.perf_counter()
    if arm == "cnn":
        from sam_l1dfl.cnn.train import train_cnn

        cfg = cnn_config(s)
        res = train_cnn(cfg, progress=False)
    else:
        from sam_l1dfl.training.loop import train

        cfg = sam_config(s)
        res = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (Path(res.run_dir) / "train_log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x.get("type") == "train" and x.get("epoch", 0) >= 1]
    secs = sum(x["seconds"] if "seconds" in x else cfg.train.batch_size / x["samples_per_s"] for x in steps)
    return {"epoch_s": round(secs / epochs, 3), "steps_per_epoch": len(steps) / epochs,
            "run_dir": str(res.run_dir), "wall_s": round(wall, 1)}


def infer_seconds(run_dir: Path, records: list) -> float:
    from sam_l1dfl.cnn.infer import AutoSegmenter
    from sam_l1dfl.data.io import CaseRecord, load_case

    seg = AutoSegmenter(Path(run_dir) / "last")
    times = []
    for r in records:
        case = load_case(CaseRecord.coerce(r), load_label=False)
        t0 = time.perf_counter()
        seg.segment(case.pet, case.ct_native)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def data_seconds(spec: dict, cache: Path, items: int) -> float:
    """CPU seconds per training crop of a network's data pipeline (paper settings)."""
    from sam_l1dfl.cnn.train import CropDataset
    from sam_l1dfl.cnn.volumes import load_volume
    from sam_l1dfl.compare.runner import cnn_config
    from sam_l1dfl.data.io import CaseRecord

    cfg = cnn_config(spec)
    recs = [CaseRecord.coerce(spec["records"][c]) for c in sorted(spec["records"])[:3]]
    vols = [load_volume(r, cfg.preprocess, cache) for r in recs]
    ds = CropDataset(vols, cfg, 0)
    ds[0]  # warm-up (MONAI's lazy grids)
    times = []
    for k in range(items):
        ds.set_epoch(k // len(vols) + 1)
        t0 = time.perf_counter()
        ds[k % len(vols)]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / max(1, cfg.augment.num_samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="labelled cases (e.g. sam-l1dfl synth --cases 16)")
    p.add_argument("--budget", choices=("small", "paper"), default="small", help="the settings the epochs are timed at")
    p.add_argument("--models", default="unet,segresnet,attentionunet,unetr,sam-med3d")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed after the first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--data-items", type=int, default=6, help="paper-size crops timed per network (default 6)")
    p.add_argument("--cohort", type=int, default=380, help="cases of the cohort (default 380: the paper's PSMA scans)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--paper-epochs", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=2)
    p.add_argument("--scan-mm", type=float, nargs=3, default=(700.0, 700.0, 1000.0),
                   help="whole-scan field of view of the sliding window, mm (default 700 x 700 x 1000: a 70 cm "
                        "PET field of view, skull base to mid-thigh; assumed)")
    p.add_argument("--gpu-tflops", type=float, nargs="+", default=(20.0, 60.0),
                   help="assumed effective GPU throughput(s), TFLOP/s (default 20 60)")
    p.add_argument("--workers", type=int, default=4, help="data-loader processes per GPU (paper config: 4)")
    p.add_argument("--sam-samples-per-s", type=float, default=34.0,
                   help="SAM-Med3D fine-tuning rate on a GPU (default 34: the official trainer at batch 8 on an H200)")
    p.add_argument("--sam-crops-per-case", type=float, default=5.0, help="lesion crops per training case (assumed)")
    p.add_argument("--sam-epochs", type=int, default=100)
    p.add_argument("--out", default=None, help="JSON file with every number")
    a = p.parse_args(argv)

    import torch

    from sam_l1dfl.compare.runner import BUDGETS, CNN_MODELS, SAM_MODEL, cnn_config, plan_comparison

    torch.set_num_threads(a.threads)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    res: dict = {"machine": f"{torch.get_num_threads()} torch threads, cuda={torch.cuda.is_available()}",
                 "date": time.strftime("%Y-%m-%d"), "budget": a.budget, "networks": {}}
    with tempfile.TemporaryDirectory(prefix="bench_sweep.") as tmp:
        tmp = Path(tmp)
        plan = plan_comparison(a.data, tmp / "o", models, ["dice"], 1, a.budget, progress=False, write=True,
                               sam_checkpoint=None)
        paper = plan_comparison(a.data, tmp / "p", [m for m in models if m != SAM_MODEL], ["dice"], 1, "paper",
                                progress=False, write=False) if any(m != SAM_MODEL for m in models) else None
        for spec in plan["specs"]:
            m = spec["model"]
            t0 = time.perf_counter()
            r = epoch_seconds({**spec, "progress": False}, a.epochs, tmp)
            if m != SAM_MODEL:
                cfg = cnn_config(spec)
                n_train = len(plan["splits"]["train"])
                r["smoke_flops_per_epoch"] = n_train * cfg.augment.num_samples * flops(
                    m, cfg.network.width, cfg.augment.crop_size)[0]
                r["infer_s_per_case"] = round(infer_seconds(r["run_dir"], [spec["records"][c] for c in spec["test"]]), 2)
                pspec = next(s for s in paper["specs"] if s["model"] == m)
                pcfg = cnn_config(pspec)
                crop = pcfg.augment.crop_size
                tr, fw = flops(m, 1.0, crop)
                r.update(paper_crop=crop, paper_train_flops=tr, paper_window_flops=fw,
                         paper_data_s_per_crop=round(data_seconds(pspec, tmp / "cache", a.data_items), 3),
                         paper_batch=pcfg.train.batch_size, paper_overlap=pcfg.infer.overlap)
            r["bench_seconds"] = round(time.perf_counter() - t0, 1)
            res["networks"][m] = r
            print(f"{m}: {json.dumps({k: v for k, v in r.items() if k != 'run_dir'})}", flush=True)
    # ---- the model at the paper budget
    pool = round(a.cohort * (1 - a.test_fraction))
    n_test, n_val = a.cohort - pool, pool / a.folds
    n_train = pool - n_val
    shape = [round(x / 2.0) for x in a.scan_mm]  # the paper's 2 mm grid
    res["model"] = {"cohort": a.cohort, "train_per_fold": n_train, "val_per_fold": n_val, "test": n_test,
                    "scan_voxels_2mm": shape, "gpu_tflops": list(a.gpu_tflops), "workers": a.workers}
    rows = []
    for m, r in res["networks"].items():
        if m == SAM_MODEL:
            samples = a.sam_epochs * n_train * a.sam_crops_per_case
            h = samples / a.sam_samples_per_s / 3600
            r["paper_job_gpu_h"] = {"official rate": round(h, 2)}
            rows.append((m, "—", "—", "—", "—", f"{h:.1f} (at {a.sam_samples_per_s:g} samples/s)",
                         f"{15 * h:.0f}"))
            continue
        nwin = windows(shape, r["paper_crop"], r["paper_overlap"])
        train_f = a.paper_epochs * n_train * r["paper_train_flops"]
        val_f = a.paper_epochs / a.val_every * n_val * nwin * r["paper_window_flops"]
        test_f = n_test * nwin * r["paper_window_flops"]
        floor_h = a.paper_epochs * n_train * r["paper_data_s_per_crop"] / a.workers / 3600
        per = {}
        for t in a.gpu_tflops:
            train_h = max(train_f / (t * 1e12) / 3600, floor_h)
            per[f"{t:g}"] = round(train_h + (val_f + test_f) / (t * 1e12) / 3600, 2)
        r.update(paper_windows_per_scan=nwin, paper_job_train_pflop=train_f / 1e15,
                 paper_job_val_pflop=val_f / 1e15, paper_job_test_pflop=test_f / 1e15,
                 paper_job_data_floor_h=round(floor_h, 2), paper_job_gpu_h=per)
        rows.append((m, f"{r['epoch_s']:.2f}", f"{r['paper_train_flops'] / 1e9:.0f} / {r['paper_window_flops'] / 1e9:.0f}",
                     f"{r['paper_data_s_per_crop']:.2f}", f"{floor_h:.1f}",
                     " – ".join(f"{v:.1f}" for v in per.values()), " – ".join(f"{15 * v:.0f}" for v in per.values())))
    hdr = ("network", f"CPU s/epoch ({a.budget}, measured)", "GFLOP per crop (train) / window (fwd), paper",
           "data s/crop (CPU, measured)", "data floor h/job", f"GPU h/job at {'–'.join(f'{t:g}' for t in a.gpu_tflops)} "
           "TFLOP/s", "GPU h per network (15 jobs)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
