"""``sam-l1dfl synth --out DIR --cases N --seed S``: generate the synthetic PSMA PET/CT data set."""

from __future__ import annotations

from sam_l1dfl.commands import add_output_flags

HELP = "generate the synthetic PSMA PET/CT data set"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl synth --out data/synth --cases 4 --seed 0",
)


def add_arguments(parser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR",
                        help="output folder (autoPET layout: DIR/<case>/SUV.nii.gz, CTres.nii.gz, SEG.nii.gz; "
                             "plus DIR/dataset.json)")
    target.add_argument("--dicom", metavar="DIR",
                        help="instead, write case --seed as one DICOM PET/CT study (DIR/PET/, DIR/CT/, DIR/SEG.dcm, "
                             "DIR/RTSTRUCT.dcm; oblique with --oblique 1) for `sam-l1dfl dicom`")
    parser.add_argument("--nuclide", choices=("F-18", "Ga-68"), default="F-18",
                        help="PET nuclide of the --dicom study (default F-18)")
    parser.add_argument("--cases", type=int, default=4, metavar="N", help="number of cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; case i depends only on (S, i) (default 0)")
    parser.add_argument("--full-size", action="store_true",
                        help="adult anatomy on a realistic 200x200x330 field of view (default: a small "
                             "100x100x130 case for fast CI)")
    parser.add_argument("--oblique", type=int, default=0, metavar="K",
                        help="write the first K cases with non-identity direction cosines "
                             "(alternately oblique and flipped) to test orientation handling")
    add_output_flags(parser)


def summary_table(meta: dict) -> str:
    """Plain-text table of a dataset.json dictionary."""
    head = f"{'case':<10} {'direction':<9} {'size':<13} {'lesions':>7} {'<1.5mL':>6} {'>=4mL':>5} " \
           f"{'vol mL':>7} {'SUVmax':>6} {'bladder':>7}"
    lines = [head, "-" * len(head)]
    for c in meta["cases"]:
        vols = [les["volume_ml"] for les in c["lesions"]]
        smax = max((les["suv_max"] for les in c["lesions"]), default=0.0)
        size = "x".join(str(v) for v in c["geometry"]["size"])
        lines.append(
            f"{c['case_id']:<10} {c['direction_kind']:<9} {size:<13} {c['n_lesions']:>7} "
            f"{sum(v < 1.5 for v in vols):>6} {sum(v >= 4 for v in vols):>5} {sum(vols):>7.1f} "
            f"{smax:>6.1f} {c['organ_suv']['bladder']:>7.1f}")
    s = meta["summary"]
    lines.append("-" * len(head))
    lines.append(f"{meta['n_cases']} cases, {s['n_lesions']} lesions ({s['lesions_lt_1p5_ml']} < 1.5 mL, "
                 f"{s['lesions_ge_4_ml']} >= 4 mL), {s['lesion_free_cases']} lesion-free; "
                 f"seed {meta['seed']}, generator {meta['generator_version']}, {s['seconds']:.1f} s")
    return "\n".join(lines)


def write_dicom(args) -> int:
    """``--dicom DIR``: one synthetic DICOM study."""
    from pathlib import Path

    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_output_path

    out = Path(args.dicom)
    check_output_path(out, folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise InputError(out, "exists and is not empty; choose a new folder for the DICOM study")
    if not 0 <= args.oblique <= 1:
        raise InputError(None, f"--oblique must be 0 or 1 with --dicom, not {args.oblique}")
    from sam_l1dfl.data.dicom.synth import write_synthetic_study

    study = write_synthetic_study(out, seed=args.seed, nuclide=args.nuclide, oblique=bool(args.oblique))
    print(f"wrote a synthetic {args.nuclide} PET/CT study ({len(study['pet'])} PET and {len(study['ct'])} CT "
          f"slices, {len(study['case'].lesions)} lesion(s), SEG and RTSTRUCT) to {out}")
    return 0


def run(args) -> int:
    import json
    from pathlib import Path

    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_output_path

    if args.dicom is not None:
        return write_dicom(args)
    out = Path(args.out)
    if args.cases < 1:
        raise InputError(None, f"--cases must be at least 1, not {args.cases}")
    if not 0 <= args.oblique <= args.cases:
        raise InputError(None, f"--oblique must be between 0 and --cases ({args.cases}), not {args.oblique}")
    check_output_path(out, folder=True)
    from sam_l1dfl.data.synthetic import generate_dataset

    try:
        path = generate_dataset(out, args.cases, seed=args.seed, full_size=args.full_size,
                                n_oblique=args.oblique, progress=not args.quiet)
    except PermissionError as exc:
        raise InputError(out, f"cannot write here ({exc.strerror})") from None
    meta = json.loads(Path(path).read_text())
    print(summary_table(meta))
    print(f"wrote {path}")
    return 0
