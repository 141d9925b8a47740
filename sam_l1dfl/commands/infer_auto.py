"""``sam-l1dfl infer-auto``: automatic (non-prompted) whole-scan segmentation with a trained CNN.

One case::

    sam-l1dfl infer-auto --checkpoint runs/cnn/cnn_unet/best --pet SUV.nii.gz --ct CTres.nii.gz --out pred.nii.gz

A data set (``--data DIR``, discovered like ``sam-l1dfl data``)::

    sam-l1dfl infer-auto --checkpoint runs/cnn/cnn_unet/best --data DIR --out-dir O

writes ``O/<case>.nii.gz`` (binary mask on the PET grid; what ``sam-l1dfl evaluate --pred-dir O``
reads), with ``--probabilities`` also ``O/prob/<case>.nii.gz``, and ``O/summary.json`` (seconds
per case and stage).  A case whose files are unusable is listed with its one-line reason (exit
status 1 after the others are written).  Every output is written atomically.
"""

from __future__ import annotations

import argparse

HELP = "automatic whole-scan segmentation with a trained MONAI CNN (sliding window)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="CNN model directory (runs/cnn/<name>/best)")
    g = p.add_argument_group("one case")
    g.add_argument("--pet", help="PET (SUV) image; its grid is the output grid")
    g.add_argument("--ct", help="CT image")
    g.add_argument("--out", help="output binary mask (e.g. pred.nii.gz)")
    d = p.add_argument_group("a data set")
    d.add_argument("--data", help="data folder (autoPET, nnU-Net) or a .csv/.json manifest")
    d.add_argument("--out-dir", help="output folder: <case>.nii.gz (+ prob/<case>.nii.gz)")
    o = p.add_argument_group("options")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    o.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's, 0.5)")
    o.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the model's, 0.25)")
    o.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass")
    o.add_argument("--probabilities", action="store_true", help="also write the lesion probability maps")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from sam_l1dfl.cnn.infer import AutoSegmenter
    from sam_l1dfl.data.io import read_image
    from sam_l1dfl.errors import InputError, SamL1dflError
    from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic

    one = any(v is not None for v in (args.pet, args.ct, args.out))
    many = any(v is not None for v in (args.data, args.out_dir))
    if one == many:
        raise InputError(None, "give either --pet/--ct/--out (one case) or --data/--out-dir (a data set)")
    if one and not (args.pet and args.ct and args.out):
        raise InputError(None, "one case needs --pet, --ct and --out")
    if many and not (args.data and args.out_dir):
        raise InputError(None, "a data set needs --data and --out-dir")
    seg = AutoSegmenter(args.checkpoint, device=args.device, threshold=args.threshold, overlap=args.overlap,
                        sw_batch_size=args.sw_batch_size)
    if one:
        out = Path(args.out)
        res = seg.segment(read_image(args.pet, "PET"), read_image(args.ct, "CT"))
        write_image_atomic(res.mask, out)
        if args.probabilities:
            name = out.name.split(".")[0]
            write_image_atomic(res.probability, out.with_name(f"{name}_prob.nii.gz"))
        print(f"{out}: {_count(res.mask)} lesion voxels "
              f"({res.seconds['network']:.1f} s network)")
        return 0

    from tqdm import tqdm

    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.data.io import load_case

    rep = discover_cases(args.data)
    if not rep.cases:
        raise InputError(args.data, "no cases found (see `sam-l1dfl data`)")
    out_dir = Path(args.out_dir)
    rows, failed = [], []
    for rec in tqdm(rep.cases, desc="infer-auto", unit="case", disable=args.no_progress):
        try:
            case = load_case(rec, load_label=False)
            res = seg.segment(case.pet, case.ct_native)
        except SamL1dflError as exc:
            failed.append({"case": rec.case_id, "reason": str(exc)})
            continue
        write_image_atomic(res.mask, out_dir / f"{rec.case_id}.nii.gz")
        if args.probabilities:
            write_image_atomic(res.probability, out_dir / "prob" / f"{rec.case_id}.nii.gz")
        rows.append({"case": rec.case_id, "lesion_voxels": _count(res.mask), "seconds": res.seconds})
    write_json_atomic(out_dir / "summary.json", {"checkpoint": str(args.checkpoint), "cases": rows,
                                                  "failed": failed, "config": seg.cfg.to_dict()})
    print(f"{out_dir}: {len(rows)} case(s) segmented, {len(failed)} failed")
    for f in failed:
        print(f"  {f['case']}: {f['reason']}")
    return 1 if failed else 0


def _count(mask) -> int:
    import SimpleITK as sitk

    return int(sitk.GetArrayViewFromImage(mask).sum())
