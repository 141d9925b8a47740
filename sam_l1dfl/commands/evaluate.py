"""``sam-l1dfl evaluate``: autoPET and lesion-wise metrics, quantification and an HTML report.

Examples::

    sam-l1dfl evaluate --pred-dir preds/ --gt-dir data/ --out report/
    sam-l1dfl evaluate --pred-dir c1/ c3/ c5/ --clicks 1 3 5 --gt-dir data/ --out report/

Files are matched by case id: references ``<gt-dir>/<case>/SEG.nii.gz`` (autoPET layout,
PET taken from ``SUV.nii.gz`` beside it) or ``<gt-dir>/<case>.nii.gz``; predictions
``<pred-dir>/<case>.nii.gz``; PET ``<pet-dir>/<case>/SUV.nii.gz``, ``<pet-dir>/<case>.nii.gz`` or
nnU-Net's ``<pet-dir>/<case>_0000.nii.gz`` (the PET channel of ``dataset.json``).
Writes ``metrics.csv``, ``lesions.csv``, ``summary.json`` and ``report.html`` to ``--out``.
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import add_output_flags

HELP = "Dice, FPV/FNV and lesion-wise detection metrics"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl evaluate --pred-dir pred/ --gt-dir data/psma --out report/ --n-boot 200",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred-dir", nargs="+", required=True, metavar="DIR",
                        help="prediction folder(s) with <case>.nii.gz; several with --clicks, or one "
                             "folder with clicks_<N> subfolders")
    parser.add_argument("--gt-dir", required=True, metavar="DIR",
                        help="reference masks: <case>/SEG.nii.gz (autoPET) or <case>.nii.gz")
    parser.add_argument("--pet-dir", metavar="DIR",
                        help="PET (SUV) volumes for C3 and SUV read-outs: <case>/SUV.nii.gz, <case>.nii.gz or "
                             "nnU-Net's <case>_0000.nii.gz (default: SUV.nii.gz beside SEG.nii.gz)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the report")
    parser.add_argument("--clicks", nargs="+", type=int, metavar="N",
                        help="click count of each --pred-dir (draws a click-number curve)")
    parser.add_argument("--missing-as-empty", action="store_true",
                        help="count a reference case without a prediction as an empty prediction")
    parser.add_argument("--n-boot", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--no-mips", action="store_true", help="leave the pictures out of the report")
    parser.add_argument("--max-mip-cases", type=int, metavar="N", help="draw MIPs for at most N cases")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    import math

    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_output_path, check_outputs, input_files
    from sam_l1dfl.metrics import evaluate_dataset

    if args.n_boot < 1:
        raise InputError(None, f"--n-boot must be at least 1, got {args.n_boot}")
    out = check_output_path(args.out, folder=True)  # before any work
    check_outputs([out / n for n in ("metrics.csv", "lesions.csv", "summary.json", "report.html")],
                  inputs=input_files(*args.pred_dir, args.gt_dir, args.pet_dir), hint="choose another --out")
    pred = args.pred_dir[0] if len(args.pred_dir) == 1 else args.pred_dir
    res = evaluate_dataset(pred, args.gt_dir, pet_dir=args.pet_dir, out_dir=args.out, clicks=args.clicks,
                           missing_as_empty=args.missing_as_empty, n_resamples=args.n_boot, seed=args.seed,
                           mips=not args.no_mips, max_mip_cases=args.max_mip_cases, progress=not args.quiet)

    def f(v, nd=3):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"

    for r in res.summary["runs"]:
        tag = "" if r["clicks"] is None else f"[{r['clicks']} clicks] "
        d = r["dice"]
        print(f"{tag}{r['n_cases']} cases: Dice {f(d['mean'])} (95% CI {f(d['ci_low'])}-{f(d['ci_high'])}, "
              f"{d['n']} cases with lesions), FPV {f(r['fpv_ml']['mean'], 2)} mL, FNV {f(r['fnv_ml']['mean'], 2)} mL")
        for c, det in r["detection"].items():
            print(f"{tag}  {c.upper()}: TP {det['tp']} FP {det['fp']} FN {det['fn']}  precision "
                  f"{f(det['precision']['value'])} recall {f(det['recall']['value'])} F1 {f(det['f1']['value'])}")
    unmatched = res.summary["inputs"]["unmatched_predictions"]
    if unmatched:
        print(f"note: {len(unmatched)} prediction file(s) without a reference were ignored, e.g. {unmatched[0]}")
    print(f"wrote {res.paths['report']} (and metrics.csv, lesions.csv, summary.json)")
    return 0
