"""``sam-l1dfl data DIR``: discover the cases of a data folder (or manifest) and report problems.

Every case with a problem (``--check full``: also a truncated, corrupt or NaN image) is listed
with its one-line reason and the others are checked on; the exit status is 1 when there is at
least one problem, so the command can gate a script.
"""

from __future__ import annotations

from sam_l1dfl.commands import add_output_flags

HELP = "discover cases in a data folder and report problems"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl data data/psma --check full",
)


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="DIR", help="autoPET folder, nnU-Net dataset folder, or .csv/.json manifest")
    parser.add_argument("--check", choices=("none", "headers", "full"), default="headers",
                        help="headers: read every header and compare label/PET grids (default); "
                             "full: also read every voxel (NaN/inf, corrupt data); none: file names only")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON (atomically)")
    add_output_flags(parser)


def run(args) -> int:
    from sam_l1dfl.commands import case_inputs
    from sam_l1dfl.data.discovery import CaseProblem, discover_cases
    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_outputs

    check_outputs([args.json], inputs=case_inputs([], args.path), hint="choose another --json")  # before any work
    report = discover_cases(args.path, check_headers=args.check in ("headers", "full"))
    check_outputs([args.json], inputs=case_inputs(report.cases, args.path), hint="choose another --json")
    if args.check == "full" and report.cases:
        import SimpleITK as sitk

        from sam_l1dfl.data.io import load_case
        from sam_l1dfl.data.dicom.suv_sanity import warn_if_not_suv
        from sam_l1dfl.progress import progress

        keep = []
        for rec in progress(report.cases, desc="reading cases", unit="case", enabled=not args.quiet):
            try:
                case = load_case(rec)
            except InputError as exc:
                report.problems.append(CaseProblem(rec.case_id, str(exc)))
                continue
            warn_if_not_suv(sitk.GetArrayViewFromImage(case.pet), rec.pet)
            keep.append(rec)
        report.cases = keep
    print(report.summary())
    print(report.table())
    if args.json:
        from sam_l1dfl.io_utils import write_json_atomic

        write_json_atomic(args.json, report.to_dict())
    return 1 if report.problems else 0
