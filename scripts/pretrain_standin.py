"""Build the synthetic-pretrained stand-in SAM-Med3D shipped in ``sam_l1dfl/resources/``.

    .venv/bin/python scripts/pretrain_standin.py [--out runs/standin] [--cases 96] [--seed 0]
        [--resume] [--install] [key=value ...]
    accelerate launch scripts/pretrain_standin.py ...      # GPU / several processes

1. writes the broad synthetic cohort (:mod:`sam_l1dfl.data.cohort`: CT-, PET- and MR-like scans,
   organs and blobs of both contrasts; never the PSMA task) to ``<out>/cohort``;
2. pretrains the WHOLE tiny SAM-Med3D from random weights the way the official SAM-Med3D trains
   (11 simulated clicks, DiceCE) with ``configs/standin_pretrain.yaml`` through the same
   ``sam_l1dfl.training.train`` as fine-tuning (seeded, resumable with ``--resume``,
   Accelerate: the GPU is used when there is one);
3. with ``--install``, copies the best validated weights to
   ``sam_l1dfl/resources/sam_med3d_standin/`` with a model card (``MODEL_CARD.md``) that says
   what it is: synthetic-only, not for real images, and how to rebuild it.

``--install`` alone (no training left to do) installs the finished run again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/standin", help="work folder: cohort/ and runs/ (default runs/standin)")
    ap.add_argument("--cases", type=int, default=96, help="cohort cases (default 96)")
    ap.add_argument("--seed", type=int, default=0, help="cohort and training seed (default 0)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "standin_pretrain.yaml"))
    ap.add_argument("--resume", action="store_true", help="continue the run in <out>/runs")
    ap.add_argument("--install", action="store_true",
                    help="copy the best weights into sam_l1dfl/resources/sam_med3d_standin/ when done")
    ap.add_argument("--calibration-cases", type=int, default=8,
                    help="held-out cohort cases for the size calibration written to the model card (default 8)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)

    from sam_l1dfl.compare.learning import size_calibration
    from sam_l1dfl.data.cohort import HELDOUT_SEED, describe_cohort, generate_cohort
    from sam_l1dfl.model.standin import install_standin
    from sam_l1dfl.training import load_config, train

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    generate_cohort(out / "cohort", args.cases, seed=args.seed)
    t_cohort = time.perf_counter() - t0
    print(f"cohort: {args.cases} cases in {t_cohort:.0f} s -> {out / 'cohort'}", flush=True)
    cfg = load_config(args.config, [f"data.root={out / 'cohort'}", f"output_dir={out / 'runs'}",
                                    f"seed={args.seed}"] + list(args.overrides))
    run_dir = cfg.run_dir
    done = (run_dir / "metrics.json").is_file() and not args.resume
    if done:
        print(f"already trained: {run_dir} (delete it to train again, or --resume to continue it)")
    else:
        train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"pretraining: {time.perf_counter() - t0:.0f} s in all -> {run_dir}", flush=True)
    if args.install:
        cohort = json.loads((out / "cohort" / "dataset.json").read_text())  # what the run trained on
        # zero-shot size calibration of the best weights on held-out cohort cases (BENCHMARKS.md)
        held = out / "heldout"
        generate_cohort(held, args.calibration_cases, seed=HELDOUT_SEED)
        cal = size_calibration(str(run_dir / "best"), held, out / "calibration")
        cal_txt = "; ".join(f"{k} {v['median_ratio']:.2f} (n={v['n']}, median Dice {v['median_dice']:.2f})"
                            for k, v in cal["bins"].items() if v["n"]) + \
            f" — {'within' if cal['within'] else 'NOT within'} the goal ({args.calibration_cases} cases, seed {HELDOUT_SEED})."
        print(f"size calibration: {cal_txt}")
        import torch

        recipe = (f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, "
                  f"{cfg.train.mixed_precision if torch.cuda.is_available() else 'fp32'}, {cfg.train.max_steps} steps "
                  f"of batch {cfg.train.batch_size}, {cfg.prompts.clicks_per_sample} clicks")
        dest = install_standin(run_dir, cohort_cases=len(cohort["cases"]), cohort_seed=cohort["seed"], work=out,
                               cohort=describe_cohort(), cohort_version=cohort.get("version", ""),
                               calibration=cal_txt, recipe=recipe)
        print(f"installed the stand-in: {dest}")
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
