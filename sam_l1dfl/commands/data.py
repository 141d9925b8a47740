"""``sam-l1dfl data DIR``: discover the cases of a data folder (or manifest) and report problems."""

from __future__ import annotations

HELP = "discover cases in a data folder and report problems"


def add_arguments(parser) -> None:
    parser.add_argument("path", metavar="DIR", help="autoPET folder, nnU-Net dataset folder, or .csv/.json manifest")
    parser.add_argument("--check", choices=("none", "headers", "full"), default="headers",
                        help="headers: read every header and compare label/PET grids (default); "
                             "full: also read every voxel (NaN/inf, corrupt data); none: file names only")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON (atomically)")


def run(args) -> int:
    from sam_l1dfl.data.discovery import CaseProblem, discover_cases
    from sam_l1dfl.errors import InputError

    report = discover_cases(args.path, check_headers=args.check in ("headers", "full"))
    if args.check == "full" and report.cases:
        from tqdm import tqdm

        from sam_l1dfl.data.io import load_case

        keep = []
        for rec in tqdm(report.cases, desc="reading cases", unit="case"):
            try:
                load_case(rec)
            except InputError as exc:
                report.problems.append(CaseProblem(rec.case_id, str(exc)))
                continue
            keep.append(rec)
        report.cases = keep
    print(report.summary())
    print(report.table())
    if args.json:
        from sam_l1dfl.io_utils import write_json_atomic

        write_json_atomic(args.json, report.to_dict())
    return 0
