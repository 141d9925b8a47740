"""`make demo`: the whole job, end to end, on built-in synthetic PSMA PET/CT data.

    synth (train + held-out test sets) -> prompts -> fine-tune (L1DFL, Accelerate)
    -> prompted inference on the held-out set, before and after fine-tuning
    -> evaluation (Dice, FPV/FNV, lesion-wise F1, report.html) -> export (4 formats)

Uses ``checkpoints/sam_med3d_turbo.pth`` when it is there (SAM-Med3D-turbo, vit_b_ori).
Otherwise it says loudly that it starts from RANDOM weights of the tiny architecture: the
pipeline still runs end to end, but the numbers say nothing about SAM-Med3D.

    .venv/bin/python scripts/demo.py [--out demo_out] [--cases 8] [--test-cases 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TURBO = ROOT / "checkpoints" / "sam_med3d_turbo.pth"


def banner(msg: str) -> None:
    print(f"\n=== {msg} " + "=" * max(3, 76 - len(msg)), flush=True)


def loud(msg: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n!! {msg}\n{line}\n", flush=True)


def cli(*args) -> None:
    from sam_l1dfl.cli import main

    argv = [str(a) for a in args]
    print("$ sam-l1dfl " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"demo: `sam-l1dfl {argv[0]}` failed with exit code {rc}")


def _fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    ap.add_argument("--cases", type=int, default=8, help="synthetic training cases (default 8)")
    ap.add_argument("--test-cases", type=int, default=4, help="held-out synthetic test cases (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("overrides", nargs="*", help="fine-tuning config overrides, key=value")
    args = ap.parse_args(argv)

    import torch

    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.metrics import evaluate_dataset
    from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir
    from sam_l1dfl.training import load_config, train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    # -- 1. data ---------------------------------------------------------------------------
    banner("1/6 synthetic PSMA PET/CT data (autoPET layout)")
    t = time.perf_counter()
    synth, test = out / "synth", out / "test"
    generate_dataset(synth, args.cases, seed=args.seed, n_oblique=2)
    generate_dataset(test, args.test_cases, seed=args.seed + 1000, n_oblique=1)
    for name, d in (("training", synth), ("held-out test", test)):
        meta = json.loads((d / "dataset.json").read_text())
        n_les = sum(len(c.get("lesions", [])) for c in meta["cases"])
        print(f"{name}: {len(meta['cases'])} cases, {n_les} lesions -> {d}")
    times["data"] = time.perf_counter() - t

    # -- 2. prompts ------------------------------------------------------------------------
    banner("2/6 point and box prompts from the lesion masks (JSON + 3D Slicer markups)")
    t = time.perf_counter()
    cli("prompts", "--data", test, "--out", out / "prompts", "--boxes", "--slicer")
    times["prompts"] = time.perf_counter() - t

    # -- 3. fine-tune ----------------------------------------------------------------------
    banner("3/6 fine-tune the mask decoder with L1DFL (Accelerate)")
    t = time.perf_counter()
    overrides = [f"data.root={synth}", f"output_dir={out / 'runs'}"]
    if TURBO.is_file():
        print(f"starting from the published weights: {TURBO}")
        init = TURBO
        overrides += [f"model.checkpoint={TURBO}", "model.preset=vit_b_ori", "optim.lr=1e-4"]  # demo.yaml's lr suits random weights only
    else:
        loud(f"{TURBO.relative_to(ROOT)} not found: starting from RANDOM weights of the tiny architecture. "
             "The pipeline runs end to end, but the Dice numbers say nothing about SAM-Med3D.")
        init = out / "init_model"
        torch.manual_seed(args.seed)
        cfg0 = load_config(args.config, overrides + list(args.overrides))
        model0 = build_sam_med3d(SamMed3DConfig.preset(cfg0.model.preset))
        save_model_dir(model0, init, {"input_mode": cfg0.preprocess.input_mode,
                                      "preprocess": {"spacing": cfg0.preprocess.spacing},
                                      "note": "random initial weights written by scripts/demo.py"})
        overrides += [f"model.checkpoint={init}"]
    cfg = load_config(args.config, overrides + list(args.overrides))
    if cfg.run_dir.is_dir() and (cfg.run_dir / "config.yaml").is_file() and out in cfg.run_dir.resolve().parents:
        # the demo's own run from an earlier `make demo`: start afresh instead of refusing
        print(f"replacing the previous demo run {cfg.run_dir}")
        shutil.rmtree(cfg.run_dir)
    result = train(cfg)
    run_dir = Path(result.run_dir)
    times["fine-tune"] = time.perf_counter() - t

    # -- 4. inference ----------------------------------------------------------------------
    banner("4/6 prompted inference on the held-out cases, before and after fine-tuning")
    t = time.perf_counter()
    for tag, ckpt in (("before", init), ("after", run_dir)):
        cli("infer", "--data", test, "--prompts-dir", out / "prompts", "--checkpoint", ckpt,
            "--out-dir", out / "pred" / tag, "--no-progress")
    times["inference"] = time.perf_counter() - t

    # -- 5. evaluation ---------------------------------------------------------------------
    banner("5/6 evaluation: Dice, autoPET FPV/FNV, lesion-wise detection (report.html)")
    t = time.perf_counter()
    summaries = {}
    for tag in ("before", "after"):
        res = evaluate_dataset(out / "pred" / tag, test, out_dir=out / "report" / tag, progress=False)
        summaries[tag] = res.summary
    times["evaluation"] = time.perf_counter() - t

    # -- 6. export -------------------------------------------------------------------------
    banner("6/6 export: official SAM-Med3D .pth, safetensors + model card, delta, ONNX")
    t = time.perf_counter()
    exp = out / "export"
    cli("export", "--checkpoint", run_dir, "--format", "safetensors", "--out", exp / "safetensors")
    cli("export", "--checkpoint", run_dir, "--format", "sam-med3d", "--out", exp / "sam_med3d_finetuned.pth")
    cli("export", "--checkpoint", run_dir, "--format", "delta", "--base", init, "--out", exp / "delta.safetensors")
    cli("export", "--checkpoint", run_dir, "--format", "onnx", "--out", exp / "onnx")
    times["export"] = time.perf_counter() - t

    # -- summary ---------------------------------------------------------------------------
    banner("summary")
    print("validation crops (training split), Dice after N simulated clicks:")
    print(f"  {'':8s} {'1 click':>8s} {'3 clicks':>8s} {'5 clicks':>8s}")
    for tag, d in (("before", result.dice_before), ("after", result.dice_after)):
        vals = [(d or {}).get(f"dice@{k}") for k in (1, 3, 5)]
        print(f"  {tag:8s} " + " ".join(f"{_fmt(v):>8s}" for v in vals))
    print("held-out test cases (prompt files, masks on the original PET grid):")

    def pick(s: dict, *keys):
        cur = s["runs"][-1]
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    print(f"  {'':8s} {'Dice':>8s} {'FPV mL':>8s} {'FNV mL':>8s} {'F1 (C1)':>8s} {'lesionDice':>10s}")
    for tag, s in summaries.items():
        row = [pick(s, "dice", "mean"), pick(s, "fpv_ml", "mean"), pick(s, "fnv_ml", "mean"),
               pick(s, "detection", "c1", "f1", "value"), pick(s, "lesion_dice", "mean")]
        print(f"  {tag:8s} " + " ".join(f"{_fmt(v):>8s}" for v in row[:4]) + f" {_fmt(row[4]):>10s}")
    print("\ntimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {time.perf_counter() - t0:.0f} s")
    print(f"run directory:  {run_dir}  (TensorBoard: tensorboard --logdir {run_dir})")
    print(f"reports:        {out / 'report' / 'after' / 'report.html'}  (and .../before/report.html)")
    print(f"prompt files:   {out / 'prompts'}  (open the .mrk.json files in 3D Slicer)")
    print(f"exports:        {exp}")
    if not TURBO.is_file():
        print("\nReminder: these numbers come from RANDOM initial weights (no checkpoints/sam_med3d_turbo.pth).")
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import SamL1dflError

    try:
        sys.exit(main())
    except SamL1dflError as exc:  # a user mistake: one line, non-zero exit
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
