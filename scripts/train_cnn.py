#!/usr/bin/env python
"""Train a MONAI CNN (UNet, SegResNet, AttentionUnet, UNETR) for automatic lesion segmentation.

    accelerate launch scripts/train_cnn.py --config configs/cnn_unet.yaml [key=value ...] [--resume]
    accelerate launch --multi_gpu --num_processes 4 scripts/train_cnn.py --config configs/cnn_unetr.yaml
    python scripts/train_cnn.py --config configs/cnn_segresnet.yaml loss.name=dice name=segresnet_dice

Then: ``sam-l1dfl infer-auto --checkpoint runs/cnn/<name>/best --data DIR --out-dir O``.
User mistakes print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    from sam_l1dfl.commands import add_output_flags, parse_args_with_overrides
    from sam_l1dfl.errors import SamL1dflError

    parser = argparse.ArgumentParser(prog="train_cnn.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, metavar="YAML", help="CNN config (configs/cnn_*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. loss.name=dice train.epochs=50")
    parser.add_argument("--resume", action="store_true", help="continue from the latest saved state of the run")
    parser.add_argument("--trust", action="store_true",
                        help="with --resume: load a saved state even if its pickles hold more than tensors and "
                             "plain values (that can run code: only for run directories you trust)")
    parser.add_argument("--name", default=None, help="run name; same as name=...")
    add_output_flags(parser)
    args = parse_args_with_overrides(parser, argv)  # key=value anywhere among the flags
    try:
        from sam_l1dfl.cnn.config import load_cnn_config
        from sam_l1dfl.cnn.train import train_cnn
        from sam_l1dfl.io_utils import input_files

        ov = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
        cfg = load_cnn_config(args.config, ov)
        cfg.check_outputs(input_files(args.config))  # before any work
        res = train_cnn(cfg, resume=args.resume, progress=not args.quiet, trust=args.trust)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res.main_process:  # one summary, not one per process
        print(f"run: {res.run_dir}  steps: {res.steps}  epochs: {res.epochs}  "
              f"best validation Dice {res.best_val_dice:.4f} at epoch {res.best_epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
