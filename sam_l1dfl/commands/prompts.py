"""``sam-l1dfl prompts``: point/box prompt files from the lesion masks of a data set.

Writes ``<out>/<case>.json`` (and ``<case>.mrk.json`` for 3D Slicer with ``--slicer``) per case
with a label.  Cases without any lesion are listed as skipped; cases whose files are unusable are
listed with their one-line reason (exit status 1 when there is at least one, after the others are
written).
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import DATA_HELP, add_output_flags, case_inputs

HELP = "generate point/box prompts from lesion masks"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl prompts --data data/psma --out prompts/psma --n-neg 2 --boxes --slicer",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="output folder for <case>.json prompt files")
    p.add_argument("--strategy", default="center", choices=("center", "suvmax", "random"),
                   help="positive points: deepest interior voxel (default), hottest voxel, or uniform")
    p.add_argument("--n-pos", type=int, default=1, help="positive points per lesion (default 1)")
    p.add_argument("--n-neg", type=int, default=0, help="negative points per lesion (default 0)")
    p.add_argument("--neg-strategy", default="shell", choices=("shell", "hotspot"),
                   help="negative points: shell around the lesion, or physiological hot spots")
    p.add_argument("--boxes", action="store_true", help="add the tight 3D bounding box of each lesion")
    p.add_argument("--box-jitter-mm", type=float, default=0.0, help="uniform jitter of each box face in mm")
    p.add_argument("--connectivity", type=int, default=18, choices=(6, 18, 26),
                   help="lesion connectivity (default 18, as in autoPET)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--slicer", action="store_true", help="also write <case>.mrk.json (3D Slicer markups)")
    add_output_flags(p, verbose="also list the cases written")


def _write_prompts(cases: list, cfg, out, args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """Each labelled case's prompts (and Slicer markups): the lines written, skipped (no lesion)
    and failed."""
    from sam_l1dfl.data.io import load_case
    from sam_l1dfl.errors import PromptError, SamL1dflError
    from sam_l1dfl.progress import progress
    from sam_l1dfl.prompts import generate_prompts, save_prompts

    written, skipped, failed = [], [], []
    for rec in progress(cases, desc="prompts", unit="case", enabled=not args.quiet):
        try:
            case = load_case(rec, load_ct=False)
            prompts = generate_prompts(case.label, case.pet, cfg, image_path=rec.pet, case_id=rec.case_id)
        except PromptError as exc:
            if "no lesion" in str(exc):
                skipped.append(f"{rec.case_id}: no lesion in {rec.label}")
                continue
            failed.append(f"{rec.case_id}: {exc}")
            continue
        except SamL1dflError as exc:
            failed.append(f"{rec.case_id}: {exc}")
            continue
        save_prompts(prompts, out / f"{rec.case_id}.json")
        if args.slicer:
            save_prompts(prompts, out / f"{rec.case_id}.mrk.json")
        n_les = len(prompts.lesions)
        written.append(f"{rec.case_id}: {n_les} lesion{'s' if n_les != 1 else ''}")
    return written, skipped, failed


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_output_path, check_outputs
    from sam_l1dfl.prompts import PromptConfig

    cfg = PromptConfig(
        strategy=args.strategy,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        neg_strategy=args.neg_strategy,
        boxes=args.boxes,
        box_jitter_mm=args.box_jitter_mm,
        connectivity=args.connectivity,
        seed=args.seed,
    ).validate()
    out = check_output_path(args.out, folder=True)
    report = discover_cases(args.data)
    cases = [c for c in report.cases if c.label is not None]
    if not cases:
        raise InputError(args.data, f"no case with a label found ({len(report.cases)} case(s) without one)")
    names = [out / f"{c.case_id}{ext}" for c in cases for ext in ((".json", ".mrk.json") if args.slicer else (".json",))]
    check_outputs(names, inputs=case_inputs(cases, args.data),
                  hint="choose another --out")

    written, skipped, failed = _write_prompts(cases, cfg, out, args)

    print(f"{out}: wrote prompts for {len(written)} case(s)"
          + (" (+ Slicer markups)" if args.slicer and written else "")
          + f", skipped {len(skipped)} without lesion, {len(failed)} failed")
    for line in written if args.verbose else []:
        print(f"  {line}")
    for line in skipped:
        print(f"  skipped {line}")
    for line in report.problems:
        print(f"  not found properly: {line}")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0
