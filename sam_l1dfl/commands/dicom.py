"""``sam-l1dfl dicom DIR --out CASES``: DICOM PET/CT studies to autoPET cases (SUV, CT, SEG).

Finds the studies and series under DIR, converts each attenuation-corrected PET series to SUVbw
(QIBA vendor-neutral definition, see docs/dicom.md), and writes ``CASES/<case>/SUV.nii.gz``,
``CT.nii.gz`` (the CT of the same frame of reference) and ``SEG.nii.gz`` (from a DICOM SEG or
RTSTRUCT of the study, on the PET grid), plus ``dicom.json`` (where each came from).  The cases
are what ``sam-l1dfl data CASES``, ``finetune`` and ``infer --data`` read.
"""

from __future__ import annotations

HELP = "convert DICOM PET/CT studies (PET to SUV, CT, SEG/RTSTRUCT) into autoPET cases"
#: Shown by ``--help`` (tests/test_help_examples.py parses them; tests/test_readme_dicom.py runs the first).
EXAMPLES = (
    "sam-l1dfl dicom study --out cases",
    "sam-l1dfl dicom study --out cases --roi lesion --verbose",
)


def add_arguments(parser) -> None:
    from sam_l1dfl.commands import add_output_flags

    parser.add_argument("dicom", metavar="DIR", help="folder with the DICOM files (searched recursively)")
    parser.add_argument("--out", required=True, metavar="CASES",
                        help="output folder: CASES/<case>/SUV.nii.gz, CT.nii.gz, SEG.nii.gz, dicom.json")
    parser.add_argument("--roi", action="append", metavar="NAME",
                        help="use only this segment/ROI of the SEG or RTSTRUCT (repeat for several; "
                             "default: the union of all)")
    add_output_flags(parser, verbose="also print each case's source series and per-slice SUV factors")


def run(args) -> int:
    from pathlib import Path

    from sam_l1dfl.data.dicom.read import case_summary, convert_dicom
    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_outputs, refuse_inside

    src, out = Path(args.dicom), Path(args.out)
    if not src.exists():
        raise InputError(src, "not found")
    check_outputs(folders=[out])
    refuse_inside(out, src, "the DICOM folder")
    cases, scan = convert_dicom(src, out, rois=args.roi)
    for meta in cases:
        print(case_summary(meta))
        for note in meta["notes"] + meta["suv"]["notes"]:
            print(f"  note: {note}")
        if args.verbose:
            factors = meta["suv"]["factors"]
            print(f"  PET series {meta['pet_series_uid']} ({len(meta['pet_files'])} files, first "
                  f"{meta['pet_files'][0]}); CT series {meta['ct_series_uid'] or '-'}")
            print(f"  SUV factor per slice: {min(factors):.6g} to {max(factors):.6g}")
    if scan.skipped:
        print(f"skipped {len(scan.skipped)} file(s) that are not DICOM images or objects (e.g. {scan.skipped[0]})")
    print(f"wrote {len(cases)} case(s) to {out}")
    return 0
