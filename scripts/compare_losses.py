#!/usr/bin/env python
"""Dice vs Dice-Focal vs L1DFL across MONAI CNNs and SAM-Med3D, with the paper's statistics.

    python scripts/compare_losses.py --data DIR --models unet,segresnet,attentionunet,unetr,sam-med3d \\
        --losses dice,dicefocal,l1dfl --budget paper --sam-checkpoint checkpoints/sam_med3d_turbo.pth \\
        --out results/                                 # the authors' settings: 5 folds + ensemble
    python scripts/compare_losses.py --data DIR --budget paper --out results/ --plan   # print the plan only
    python scripts/compare_losses.py --data data/synth --budget small --out runs/compare_small   # 2 CPU cores
    python scripts/compare_losses.py ... cnn.train.epochs=300 sam.train.epochs=50 loss_params.dice.squared_pred=true
    # on a cluster (docs/cluster.md): every run a job, resumable, then the merge as its own stage
    python scripts/compare_losses.py --data DIR --budget paper ... --out results/ --launcher submitit \
        --partition gpu --account proj resources.models.attentionunet.mem_gb=128 [--dry-run | --no-wait]
    python scripts/compare_losses.py --status results/       # every job: done / running / failed
    python scripts/compare_losses.py --merge results/        # the report from what finished
    python scripts/compare_losses.py ... --launcher ray --ray-address auto --gpus 1

Every (model, loss, fold or seed) trains with identical data, split, seed, epochs and augmentation,
keeps its best epoch by validation Dice and is evaluated on the held-out test cases; with
``--folds`` the test set is also predicted by the majority vote of the folds.  Every run is a job
(``--launcher local|submitit|ray``): run the command again and finished runs are skipped,
interrupted ones resume, runs made with other settings are refused (``--force`` redoes them).
Writes ``OUT/table.md``, ``table.csv``, ``stats.csv``, ``cases.csv``, ``summary.json`` and
``figures/`` (and ``OUT/folds/`` per fold) when every job finished; otherwise a partial report in
``OUT/partial/`` that says so, and exit status 1.

Settings: ``key=value`` arguments (values parsed as YAML) or ``--config FILE`` (a YAML mapping
with the same keys; the command line wins): ``cnn.<key>`` for every CNN run's config (e.g.
``cnn.train.epochs=20``, see configs/cnn_unet.yaml), ``sam.<key>`` for SAM-Med3D's (configs/psma.yaml),
``loss_params.<loss>.<option>`` for one loss's constructor options (e.g.
``loss_params.dice.squared_pred=false``), ``resources.<key>`` for each job's resources (``gpus``,
``cpus``, ``mem_gb``, ``time_min``, ``partition``, ``account``; per model
``resources.models.<model>.<key>``; the flags ``--gpus`` ... win).  See
docs/reproducing-the-paper.md and docs/cluster.md.
User mistakes print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


OVERRIDE_SECTIONS = ("cnn", "sam", "loss_params", "resources")


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
    from sam_l1dfl.commands import add_launcher_arguments, add_output_flags, launcher_resources, parse_args_with_overrides
    from sam_l1dfl.errors import SamL1dflError

    p = argparse.ArgumentParser(prog="compare_losses.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="labelled cases with CT (autoPET folder, nnU-Net dataset, manifest)")
    p.add_argument("--out", help="output folder (results/)")
    p.add_argument("--merge", metavar="OUT", help="the merge stage alone: the report of the sweep in OUT from the jobs "
                                                  "that finished (missing or failed jobs: a partial report in OUT/partial/)")
    p.add_argument("--status", metavar="OUT", help="print the state of every job of the sweep in OUT (and write "
                                                   "OUT/status.json) and exit")
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
    p.add_argument("--config", default=None, help="YAML with cnn:, sam:, loss_params:, resources: settings (as key=value)")
    p.add_argument("--plan", action="store_true",
                   help="print the resolved plan (runs, configs, comparisons, jobs with resources and fingerprints) "
                        "and exit")
    p.add_argument("--in-process", action="store_true", help="local launcher: run every job in this process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the launcher's: all "
                                                             "cores locally, the job's --cpus on a cluster)")
    p.add_argument("--force", action="store_true", help="redo finished runs and runs made with other settings")
    add_launcher_arguments(p, "run")
    add_output_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="cnn.<key>=V, sam.<key>=V, loss_params.<loss>.<option>=V, resources.<key>=V")
    args = parse_args_with_overrides(p, argv)  # key=value anywhere among the flags
    try:
        from sam_l1dfl.cluster.launch import describe_submission, require, status_table
        from sam_l1dfl.compare.runner import BUDGETS, describe_plan
        from sam_l1dfl.compare.sweep import (LAUNCH_DIR, describe_jobs, merge_comparison, prepare_comparison,
                                             run_comparison, sweep_status)
        from sam_l1dfl.errors import ConfigError
        from sam_l1dfl.io_utils import check_output_path, input_files, refuse_inside, refuse_overwrite
        from sam_l1dfl.training.runconfig import merge

        require(args.launcher)  # a missing extra: one line, before anything else
        if args.status or args.merge:
            if args.data or args.out:
                raise ConfigError(None, "--merge OUT / --status OUT take the sweep's output folder alone (no --data/--out)")
            if args.status:
                print(status_table(sweep_status(args.status)), end="")
                return 0
            s = merge_comparison(args.merge, force=args.force, progress=not args.quiet)
            return _finish(s, args.merge)
        if not (args.data and args.out):
            raise ConfigError(None, "give --data DIR and --out DIR (or --merge OUT / --status OUT)")
        b = BUDGETS[args.budget]
        st = settings(args.config, args.overrides)
        resources = merge(st.get("resources") or {}, launcher_resources(args))
        folds = args.folds if args.folds is not None else (0 if args.seeds else b["default_folds"])
        kw = dict(models=args.models or list(b["default_models"]), losses=args.losses,
                  seeds=args.seeds or b["default_seeds"], budget=args.budget, folds=folds,
                  split_seed=args.split_seed, sam_checkpoint=args.sam_checkpoint, cnn_overrides=st.get("cnn"),
                  sam_overrides=st.get("sam"), loss_params=st.get("loss_params"),
                  lesion_free_dice=args.lesion_free_dice, progress=not args.quiet, threads=args.threads)
        if args.plan or args.dry_run:
            plan, jobs = prepare_comparison(args.data, args.out, resources=resources, **kw)
            if args.plan:
                print(describe_plan(plan) + "\n" + describe_jobs(jobs), end="")
            if args.dry_run:
                print(describe_submission(jobs, args.launcher, work_dir=Path(args.out).resolve() / LAUNCH_DIR,
                                          submitit_cluster=args.submitit_cluster, ray_address=args.ray_address), end="")
            return 0
        check_output_path(args.out, folder=True)  # before any work: a folder we can create, not the data
        refuse_inside(args.out, args.data, "the data folder", "choose another --out")
        # the comparison writes runs/, pred/, table.* under --out: no input may live there
        refuse_overwrite([args.out], input_files(args.config, args.sam_checkpoint),
                         within=[args.out], hint="choose another --out")
        s = run_comparison(args.data, args.out, launcher=args.launcher, isolate=not args.in_process, force=args.force,
                           resources=resources, submitit_cluster=args.submitit_cluster, ray_address=args.ray_address,
                           wait=not args.no_wait, **kw)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if s.get("submitted"):
        print(f"jobs queued; follow with: compare_losses.py --status {args.out}; report with: compare_losses.py "
              f"--merge {args.out}")
        return 0
    return _finish(s, args.out)


def _finish(s: dict, out) -> int:
    """The closing lines: the report, and (exit status 1) what is missing when it is partial."""
    print(s["report"])
    if s["smoke_scale"]:
        print("NOTE: --budget small is a SMOKE-SCALE result (tiny networks, short training): it is not the paper's "
              "experiment and says nothing reliable about the losses.")
    if not s["complete"]:
        print(f"INCOMPLETE: {len(s['missing'])} job(s) did not finish ({', '.join(s['missing'])}); "
              f"{len(s['failed'])} failed. The partial report is not the comparison's result; run the same command "
              f"again to resume them, then compare_losses.py --merge {out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
