"""``sam-l1dfl infer-auto``: automatic (non-prompted) whole-scan segmentation with a trained CNN.

One case::

    sam-l1dfl infer-auto --checkpoint runs/cnn/cnn_unet/best --pet SUV.nii.gz --ct CTres.nii.gz --out pred.nii.gz

A data set (``--data DIR``, discovered like ``sam-l1dfl data``)::

    sam-l1dfl infer-auto --checkpoint runs/cnn/cnn_unet/best --data DIR --out-dir O

writes ``O/<case>.nii.gz`` (binary mask on the PET grid; what ``sam-l1dfl evaluate --pred-dir O``
reads), with ``--probabilities`` also ``O/prob/<case>.nii.gz``, and ``O/summary.json`` (seconds
per case and stage).  ``--shard K/N``: part K of N of the cases (sorted by id) into
``O/shard-K-of-N/``; ``--shards N``: every part a job (launcher options, docs/cluster.md);
``evaluate --pred-dir O`` merges the parts.  A case whose files are unusable is listed with its one-line reason (exit
status 1 after the others are written).  Every output is written atomically; before any work the
output paths are checked (no parent that is a file, no output that is one of the files read) and
``--device`` is parsed.

This module only checks the arguments, calls :class:`sam_l1dfl.cnn.infer.AutoSegmenter`
(``segment`` + ``AutoResult.write``, or ``segment_dataset``) and prints.
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import (DATA_HELP, DEVICE_HELP, PET_HELP, add_output_flags, add_shard_arguments, case_inputs,
                                check_shard_arguments, image_output, launch_shards, shard_cases)

HELP = "automatic whole-scan segmentation with a trained MONAI CNN (sliding window)"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl infer-auto --data data/psma --checkpoint runs/cnn/unet/best --out-dir pred_cnn/",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="CNN model directory (runs/cnn/<name>/best) or its run folder (then best/, else last/)")
    g = p.add_argument_group("one case")
    g.add_argument("--pet", help=PET_HELP)
    g.add_argument("--ct", help="CT image")
    g.add_argument("--out", help="output binary mask (e.g. pred.nii.gz)")
    d = p.add_argument_group("a data set")
    d.add_argument("--data", help=DATA_HELP)
    d.add_argument("--out-dir", help="output folder: <case>.nii.gz (+ prob/<case>.nii.gz)")
    o = p.add_argument_group("options")
    o.add_argument("--device", default=None, help=DEVICE_HELP)
    o.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's, 0.5)")
    o.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the model's, 0.25)")
    o.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass")
    o.add_argument("--probabilities", action="store_true", help="also write the lesion probability maps")
    add_output_flags(p)
    add_shard_arguments(p)


def run(args) -> int:
    import sys
    from pathlib import Path

    from sam_l1dfl.cnn.infer import AutoSegmenter
    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.data.io import CaseRecord, load_case
    from sam_l1dfl.errors import InputError

    one = any(v is not None for v in (args.pet, args.ct, args.out))
    many = any(v is not None for v in (args.data, args.out_dir))
    if one == many:
        raise InputError(None, "give either --pet/--ct/--out (one case) or --data/--out-dir (a data set)")
    if one and not (args.pet and args.ct and args.out):
        raise InputError(None, "one case needs --pet, --ct and --out")
    if many and not (args.data and args.out_dir):
        raise InputError(None, "a data set needs --data and --out-dir")
    check_shard_arguments(args)
    from sam_l1dfl.devices import parse_device
    from sam_l1dfl.io_utils import check_output_path, check_outputs, input_files

    device = parse_device(args.device)
    if args.shards:  # every part a job (each runs this command with --shard K/N)
        return launch_shards(args, __name__)
    if one:  # the output paths, before any work
        out = image_output(args.out)[0]
        prob = out.with_name(f"{out.name.split('.')[0]}_prob.nii.gz") if args.probabilities else None
        check_outputs([out, prob], inputs=input_files(args.pet, args.ct, args.checkpoint), hint="choose another --out")
    else:
        rep = discover_cases(args.data)
        if not rep.cases:
            raise InputError(args.data, "no cases found (see `sam-l1dfl data`)")
        cases = shard_cases(args, rep.cases)  # --shard K/N: its part, into OUT_DIR/shard-K-of-N
        out = check_output_path(args.out_dir, folder=True)
        files = [out / "summary.json"] + [out / f"{r.case_id}.nii.gz" for r in cases]
        files += [out / "prob" / f"{r.case_id}.nii.gz" for r in cases] if args.probabilities else []
        check_outputs(files, inputs=case_inputs(rep.cases, args.data) + input_files(args.checkpoint),
                      hint="choose another --out-dir")
    seg = AutoSegmenter(args.checkpoint, device=device, threshold=args.threshold, overlap=args.overlap,
                        sw_batch_size=args.sw_batch_size)
    if one:
        out = Path(args.out)
        case = load_case(CaseRecord("case", Path(args.pet), Path(args.ct)), load_label=False)  # CT overlaps the PET
        res = seg.segment(case.pet, case.ct_native)
        name = out.name.split(".")[0]
        res.write(out, out.with_name(f"{name}_prob.nii.gz") if args.probabilities else None)
        print(f"{out}: {res.lesion_voxels} lesion voxels ({res.seconds['network']:.1f} s network)")
        return 0

    s = seg.segment_dataset(cases, args.out_dir, probabilities=args.probabilities, progress=not args.quiet)
    print(f"{s.out_dir}: {len(s.cases)} case(s) segmented, {len(s.failed)} failed")
    for f in s.failed:  # one line per unusable case, like `sam-l1dfl prompts`
        print(f"error: {f['case']}: {f['reason']}", file=sys.stderr)
    return 1 if s.failed else 0
