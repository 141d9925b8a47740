#!/usr/bin/env python
"""Dice vs Dice-Focal vs L1DFL across MONAI CNNs and SAM-Med3D, with the paper's statistics.

    python scripts/compare_losses.py --data DIR --models unet,segresnet,attentionunet,unetr,sam-med3d \\
        --losses dice,dicefocal,l1dfl --seeds 3 --budget paper --sam-checkpoint checkpoints/sam_med3d_turbo.pth \\
        --out results/
    python scripts/compare_losses.py --data data/synth --budget small --out runs/compare_small   # 2 CPU cores

Every (model, loss, seed) trains with identical data, split, seed, epochs and augmentation, keeps
its best epoch by validation Dice and is evaluated on the held-out test cases.  Finished runs are
skipped when the command is run again.  Writes ``OUT/table.md``, ``table.csv``, ``stats.csv``,
``cases.csv``, ``summary.json`` and ``figures/``.  See docs/reproducing-the-paper.md.
User mistakes print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    from sam_l1dfl.errors import SamL1dflError

    p = argparse.ArgumentParser(prog="compare_losses.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled cases with CT (autoPET folder, nnU-Net dataset, manifest)")
    p.add_argument("--out", required=True, help="output folder (results/)")
    p.add_argument("--budget", choices=("small", "paper"), default="small",
                   help="small: smoke scale on CPUs (< 45 min on 2 cores); paper: the paper's settings (GPUs)")
    p.add_argument("--models", type=_list, default=None,
                   help="comma list of unet, segresnet, attentionunet, unetr, sam-med3d "
                        "(default: small = unet,segresnet,sam-med3d; paper = all)")
    p.add_argument("--losses", type=_list, default=["dice", "dicefocal", "l1dfl"], help="comma list (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per (model, loss) (default: small 1, paper 3)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--sam-checkpoint", default=None, help="SAM-Med3D weights to fine-tune (required for paper)")
    p.add_argument("--in-process", action="store_true", help="run everything in this process (no subprocess per run)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        from sam_l1dfl.compare.runner import BUDGETS, run_comparison
        from sam_l1dfl.io_utils import check_output_path, refuse_inside

        check_output_path(args.out, folder=True)  # before any work: a folder we can create, not the data
        refuse_inside(args.out, args.data, "the data folder", "choose another --out")
        b = BUDGETS[args.budget]
        s = run_comparison(args.data, args.out, models=args.models or list(b["default_models"]), losses=args.losses,
                           seeds=args.seeds or b["default_seeds"], budget=args.budget, split_seed=args.split_seed,
                           sam_checkpoint=args.sam_checkpoint, isolate=not args.in_process, force=args.force,
                           progress=not args.quiet, threads=args.threads)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(args.out) / "table.md")
    if s["smoke_scale"]:
        print("NOTE: --budget small is a SMOKE-SCALE result (tiny networks, short training): it is not the paper's "
              "experiment and says nothing reliable about the losses.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
