#!/usr/bin/env python
"""Dice vs Dice-Focal vs L1DFL across MONAI CNNs and SAM-Med3D, with the paper's statistics.

    python scripts/compare_losses.py --data DIR --models unet,segresnet,attentionunet,unetr,sam-med3d \\
        --losses dice,dicefocal,l1dfl --budget paper --sam-checkpoint checkpoints/sam_med3d_turbo.pth \\
        --out results/                                 # the authors' settings: 5 folds + ensemble
    python scripts/compare_losses.py --data DIR --budget paper --out results/ --plan   # print the plan only
    python scripts/compare_losses.py --data data/synth --budget small --out runs/compare_small   # 2 CPU cores
    python scripts/compare_losses.py ... cnn.train.epochs=300 sam.train.epochs=50 loss_params.dice.squared_pred=true

Every (model, loss, fold or seed) trains with identical data, split, seed, epochs and augmentation,
keeps its best epoch by validation Dice and is evaluated on the held-out test cases; with
``--folds`` the test set is also predicted by the majority vote of the folds.  Finished runs are
skipped when the command is run again.  Writes ``OUT/table.md``, ``table.csv``, ``stats.csv``,
``cases.csv``, ``summary.json`` and ``figures/`` (and ``OUT/folds/`` per fold).

Settings: ``key=value`` arguments (values parsed as YAML) or ``--config FILE`` (a YAML mapping
with the same keys; the command line wins): ``cnn.<key>`` for every CNN run's config (e.g.
``cnn.train.epochs=20``, see configs/cnn_unet.yaml), ``sam.<key>`` for SAM-Med3D's (configs/psma.yaml),
``loss_params.<loss>.<option>`` for one loss's constructor options (e.g.
``loss_params.dice.squared_pred=false``).  See docs/reproducing-the-paper.md.
User mistakes print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


OVERRIDE_SECTIONS = ("cnn", "sam", "loss_params")


def settings(config: "str | None", overrides: "list[str]") -> dict:
    """``{"cnn": {...}, "sam": {...}, "loss_params": {...}}`` from ``--config`` and ``key=value``."""
    from sam_l1dfl.errors import ConfigError
    from sam_l1dfl.training.runconfig import merge, parse_overrides, read_yaml_mapping

    d = merge(read_yaml_mapping(config) if config else {}, parse_overrides(overrides))
    bad = sorted(set(d) - set(OVERRIDE_SECTIONS))
    if bad:
        raise ConfigError(config if config and not overrides else "command line",
                          f"unknown setting(s) {bad}: keys start with one of {list(OVERRIDE_SECTIONS)} "
                          "(e.g. cnn.train.epochs=20, loss_params.dice.squared_pred=false)")
    for k in OVERRIDE_SECTIONS:
        if not isinstance(d.get(k, {}), dict):
            raise ConfigError("command line", f"{k}: expected keys below it (e.g. {k}.train.epochs=20)")
    return d


def main(argv=None) -> int:
    from sam_l1dfl.commands import add_output_flags, parse_args_with_overrides
    from sam_l1dfl.errors import SamL1dflError

    p = argparse.ArgumentParser(prog="compare_losses.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled cases with CT (autoPET folder, nnU-Net dataset, manifest)")
    p.add_argument("--out", required=True, help="output folder (results/)")
    p.add_argument("--budget", choices=("small", "paper"), default="small",
                   help="small: smoke scale on CPUs (< 45 min on 2 cores); paper: the authors' settings (GPUs)")
    p.add_argument("--models", type=_list, default=None,
                   help="comma list of unet, segresnet, attentionunet, unetr, sam-med3d "
                        "(default: small = unet,segresnet,sam-med3d; paper = all)")
    p.add_argument("--losses", type=_list, default=["dice", "dicefocal", "l1dfl"], help="comma list (default: %(default)s)")
    p.add_argument("--folds", type=int, default=None,
                   help="K-fold cross-validation over the train/validation pool + majority-vote ensemble on the test "
                        "set (default: paper 5, small 0 = one split; 0 when --seeds is given)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per (model, loss) on one split (default 1)")
    p.add_argument("--lesion-free-dice", choices=("authors", "nan"), default=None,
                   help="Dice of a lesion-free test scan: authors = 0 with any false positive, 1 without; "
                        "nan = left out (default: paper authors, small nan)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the test split and the folds (default 0)")
    p.add_argument("--sam-checkpoint", default=None, help="SAM-Med3D weights to fine-tune (required for paper)")
    p.add_argument("--config", default=None, help="YAML with cnn:, sam:, loss_params: settings (as key=value)")
    p.add_argument("--plan", action="store_true", help="print the resolved plan (runs, configs, comparisons) and exit")
    p.add_argument("--in-process", action="store_true", help="run everything in this process (no subprocess per run)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    add_output_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="cnn.<key>=V, sam.<key>=V, loss_params.<loss>.<option>=V")
    args = parse_args_with_overrides(p, argv)  # key=value anywhere among the flags
    try:
        from sam_l1dfl.compare.runner import BUDGETS, describe_plan, plan_comparison, run_comparison
        from sam_l1dfl.io_utils import check_output_path, input_files, refuse_inside, refuse_overwrite

        b = BUDGETS[args.budget]
        st = settings(args.config, args.overrides)
        folds = args.folds if args.folds is not None else (0 if args.seeds else b["default_folds"])
        kw = dict(models=args.models or list(b["default_models"]), losses=args.losses,
                  seeds=args.seeds or b["default_seeds"], budget=args.budget, folds=folds,
                  split_seed=args.split_seed, sam_checkpoint=args.sam_checkpoint, cnn_overrides=st.get("cnn"),
                  sam_overrides=st.get("sam"), loss_params=st.get("loss_params"),
                  lesion_free_dice=args.lesion_free_dice, progress=not args.quiet, threads=args.threads)
        if args.plan:
            print(describe_plan(plan_comparison(args.data, args.out, write=False, **kw)), end="")
            return 0
        check_output_path(args.out, folder=True)  # before any work: a folder we can create, not the data
        refuse_inside(args.out, args.data, "the data folder", "choose another --out")
        # the comparison writes runs/, pred/, table.* under --out: no input may live there
        refuse_overwrite([args.out], input_files(args.config, args.sam_checkpoint),
                         within=[args.out], hint="choose another --out")
        s = run_comparison(args.data, args.out, isolate=not args.in_process, force=args.force, **kw)
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
