"""``sam-l1dfl infer``: prompted inference on PET (and CT) volumes.

One case::

    sam-l1dfl infer --pet SUV.nii.gz [--ct CT.nii.gz] --prompts case.json|case.mrk.json \\
        --checkpoint runs/x/best --out pred.nii.gz
    sam-l1dfl infer --pet SUV.nii.gz --prompts-from-mask SEG.nii.gz --clicks 3 ...   # evaluation mode

writes ``pred.nii.gz`` (binary mask), ``pred_lesions.nii.gz`` (label map: one label per lesion
prompt) and ``pred.json`` (lesion -> label, volumes, encoder passes, seconds per stage); with
``--probabilities`` also ``pred_prob/lesion_<id>.nii.gz``.

A whole data set (``--data DIR``, discovered like ``sam-l1dfl data``)::

    sam-l1dfl infer --data DIR --prompts-dir P --checkpoint ... --out-dir O
    sam-l1dfl infer --data DIR --prompts-from-mask --clicks 3 --checkpoint ... --out-dir O

writes ``O/<case>.nii.gz`` (binary; what ``sam-l1dfl evaluate --pred-dir O`` reads),
``O/lesions/<case>.nii.gz``, ``O/<case>.json`` and ``O/summary.json``.  A case without a prompt
file (or, with ``--prompts-from-mask``, without a lesion) gets an empty mask; a case whose files
are unusable is listed with its one-line reason (exit status 1 after the others are written).
Every output is written atomically.
"""

from __future__ import annotations

import argparse

HELP = "prompted inference on PET (and CT) volumes"
_FROM_CASE = "__case_label__"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="run/model directory (runs/<name>/best), exported file, or sam_med3d_turbo.pth")
    g = p.add_argument_group("one case")
    g.add_argument("--pet", help="PET (SUV) image; its grid is the output grid")
    g.add_argument("--ct", help="CT image (for pet+ct or ct checkpoints)")
    g.add_argument("--prompts", help="prompt file (.json) or 3D Slicer markups (.mrk.json)")
    g.add_argument("--out", help="output binary mask (e.g. pred.nii.gz); label map and report beside it")
    d = p.add_argument_group("a data set")
    d.add_argument("--data", help="data folder (autoPET, nnU-Net) or a .csv/.json manifest")
    d.add_argument("--prompts-dir", help="folder of <case>.json or <case>.mrk.json prompt files")
    d.add_argument("--out-dir", help="output folder: <case>.nii.gz, lesions/<case>.nii.gz, <case>.json")
    e = p.add_argument_group("evaluation mode")
    e.add_argument("--prompts-from-mask", nargs="?", const=_FROM_CASE, metavar="SEG",
                   help="generate prompts from a reference mask (one interior point per lesion); with --data "
                        "give no value to use each case's label")
    e.add_argument("--clicks", type=int, default=0,
                   help="refinement clicks per lesion simulated against the reference mask (default 0)")
    o = p.add_argument_group("options")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    o.add_argument("--batch-size", type=int, default=2, help="crops per encoder call (default 2)")
    o.add_argument("--no-share", action="store_true", help="one encoder pass per lesion (no crop sharing)")
    o.add_argument("--margin", type=float, default=16,
                   help="crop sharing: crop voxels kept free around every lesion's prompts (default 16)")
    o.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    o.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    o.add_argument("--probabilities", action="store_true", help="also write per-lesion probability maps")
    o.add_argument("--trust", action="store_true", help="allow checkpoints that need full unpickling")
    o.add_argument("--allow-checksum-mismatch", action="store_true",
                   help="use prompt files made for an image with another SHA-256 (warning only)")
    o.add_argument("--verbose", "-v", action="store_true", help="report lesions, encoder passes, seconds per stage")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def _stem(path) -> str:
    from sam_l1dfl.data.io import strip_suffix

    return strip_suffix(path.name)


def _suffix(path) -> str:
    from sam_l1dfl.data.io import image_suffix

    return image_suffix(path.name) or ".nii.gz"


def _write(res, out_mask, out_labels, out_json, prob_dir, extra: dict) -> None:
    from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic

    write_image_atomic(res.mask, out_mask)
    write_image_atomic(res.labels, out_labels)
    if prob_dir is not None and res.probabilities:
        for lid, im in res.probabilities.items():
            write_image_atomic(im, prob_dir / f"lesion_{lid}.nii.gz")
    write_json_atomic(out_json, {**extra, **res.to_dict()})


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sam_l1dfl.errors import InputError

    single = args.pet is not None
    if single == (args.data is not None):
        raise InputError(None, "give either --pet (one case) or --data (a data set)")
    if single:
        if not args.out:
            raise InputError(None, "--out is required with --pet")
        if args.prompts is None and args.prompts_from_mask in (None, _FROM_CASE):
            raise InputError(None, "give --prompts FILE or --prompts-from-mask SEG")
        if args.prompts_dir or args.out_dir:
            raise InputError(None, "--prompts-dir/--out-dir belong to --data mode")
    else:
        if not args.out_dir:
            raise InputError(None, "--out-dir is required with --data")
        if (args.prompts_dir is None) == (args.prompts_from_mask is None):
            raise InputError(None, "with --data give either --prompts-dir or --prompts-from-mask")
        if args.prompts_from_mask not in (None, _FROM_CASE):
            raise InputError(args.prompts_from_mask, "with --data, --prompts-from-mask takes no file "
                                                     "(each case's label is used)")
        if args.ct or args.prompts or args.out:
            raise InputError(None, "--ct/--prompts/--out belong to --pet mode")
    if args.clicks < 0:
        raise InputError(None, f"--clicks must be >= 0, got {args.clicks}")
    if args.clicks and args.prompts_from_mask is None:
        raise InputError(None, "--clicks simulates clicks against a reference: add --prompts-from-mask")
    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}")

    from sam_l1dfl.inference import Segmenter

    seg = Segmenter(args.checkpoint, device=args.device, batch_size=args.batch_size,
                    share_crops=not args.no_share, margin_vox=args.margin, threshold=args.threshold,
                    autocast=args.bf16, trust=args.trust)
    if args.verbose:
        print(f"checkpoint: {args.checkpoint} (input_mode {seg.input_mode}, preprocessing: {seg.preprocess_source})")
    if single:
        return _run_one(args, seg)
    return _run_dataset(args, seg)


def _run_one(args, seg) -> int:
    from pathlib import Path

    from sam_l1dfl.data.io import read_image

    pet = read_image(args.pet, "PET")
    ct = read_image(args.ct, "CT") if args.ct else None
    ref = read_image(args.prompts_from_mask, "label") if args.prompts_from_mask else None
    res = seg.segment(pet, ct, prompts=args.prompts, reference=ref, clicks=args.clicks,
                      probabilities=args.probabilities, allow_checksum_mismatch=args.allow_checksum_mismatch)
    out = Path(args.out)
    stem, suf = _stem(out), _suffix(out)
    extra = {"pet": str(args.pet), "ct": args.ct, "prompts": args.prompts,
             "prompts_from_mask": args.prompts_from_mask, "checkpoint": str(args.checkpoint)}
    _write(res, out, out.parent / f"{stem}_lesions{suf}", out.parent / f"{stem}.json",
           out.parent / f"{stem}_prob" if args.probabilities else None, extra)
    if args.verbose:
        print(res.report.summary())
        for d in res.lesions:
            print(f"  lesion {d['lesion_id']}: label {d['label']}, window {d['window']}, "
                  f"{d['voxels']} voxels ({d['volume_ml']} mL), predicted IoU {d['iou_pred']}")
    print(f"wrote {out} ({len(res.lesions)} lesion(s), {res.report.encoder_passes} encoder pass(es), "
          f"{res.report.total_seconds:.1f} s)")
    return 0


def _run_dataset(args, seg) -> int:
    import sys
    import time
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk
    from tqdm import tqdm

    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.data.io import load_case
    from sam_l1dfl.errors import InputError, SamL1dflError
    from sam_l1dfl.inference import STAGES
    from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic

    report = discover_cases(args.data)
    cases = list(report.cases)
    if not cases:
        raise InputError(args.data, "no case found")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    pdir = Path(args.prompts_dir) if args.prompts_dir else None
    if pdir is not None and not pdir.is_dir():
        raise InputError(pdir, "prompt folder does not exist")
    from_mask = args.prompts_from_mask is not None
    done, empty, failed = [], [], []
    totals = {s: 0.0 for s in STAGES}
    n_les = n_enc = 0
    t0 = time.perf_counter()
    bar = tqdm(cases, desc="infer", unit="case", disable=args.no_progress or None)
    for rec in bar:
        try:
            case = load_case(rec, load_ct=seg.preprocess.needs_ct, load_label=from_mask)
            if from_mask and case.label is None:
                raise InputError(rec.pet, f"case {rec.case_id} has no label for --prompts-from-mask")
            if seg.preprocess.needs_ct and case.ct_native is None:
                raise InputError(rec.pet, f"case {rec.case_id} has no CT but the checkpoint's input_mode is "
                                          f"{seg.input_mode!r}")
            prompts = None
            if pdir is not None:
                cands = [pdir / f"{rec.case_id}.json", pdir / f"{rec.case_id}.mrk.json"]
                prompts = next((c for c in cands if c.is_file()), None)
                why = "no prompt file"
            else:
                why = "no lesion in the reference mask"
            if (pdir is not None and prompts is None) or (from_mask and not sitk.GetArrayViewFromImage(case.label).any()):
                z = sitk.Image(case.pet.GetSize(), sitk.sitkUInt8)
                z.CopyInformation(case.pet)
                write_image_atomic(z, out / f"{rec.case_id}.nii.gz")
                write_image_atomic(sitk.Cast(z, sitk.sitkUInt16), out / "lesions" / f"{rec.case_id}.nii.gz")
                write_json_atomic(out / f"{rec.case_id}.json", {"case_id": rec.case_id, "lesions": [],
                                                                "note": f"{why}: empty prediction"})
                empty.append(f"{rec.case_id}: {why}")
                continue
            res = seg.segment(case.pet, case.ct_native if seg.preprocess.needs_ct else None, prompts=prompts,
                              reference=case.label if from_mask else None, clicks=args.clicks,
                              probabilities=args.probabilities,
                              allow_checksum_mismatch=args.allow_checksum_mismatch)
        except SamL1dflError as exc:
            failed.append(f"{rec.case_id}: {exc}")
            continue
        _write(res, out / f"{rec.case_id}.nii.gz", out / "lesions" / f"{rec.case_id}.nii.gz",
               out / f"{rec.case_id}.json", out / "probabilities" / rec.case_id if args.probabilities else None,
               {"case_id": rec.case_id, "pet": str(rec.pet), "prompts": None if prompts is None else str(prompts),
                "checkpoint": str(args.checkpoint)})
        r = res.report
        n_les += r.n_lesions
        n_enc += r.encoder_passes
        for k, v in r.seconds.items():
            totals[k] += v
        done.append(rec.case_id)
        bar.set_postfix(lesions=n_les, passes=n_enc)
        if args.verbose:
            tqdm.write(f"{rec.case_id}: " + r.summary().replace("\n", "\n  "))
    wall = time.perf_counter() - t0
    summary = {
        "checkpoint": str(args.checkpoint), "data": str(args.data), "cases": len(cases),
        "segmented": done, "empty": empty, "failed": failed, "lesions": n_les, "encoder_passes": n_enc,
        "encoder_passes_per_lesion": round(n_enc / n_les, 4) if n_les else None, "clicks": args.clicks,
        "share_crops": not args.no_share, "seconds": {k: round(v, 3) for k, v in totals.items()},
        "wall_seconds": round(wall, 3),
        "seconds_per_case": round(wall / max(len(done), 1), 3),
    }
    write_json_atomic(out / "summary.json", summary)
    if args.verbose:
        print("stages: " + "  ".join(f"{k} {v:.1f}s" for k, v in totals.items()))
    per = f", {n_enc / n_les:.2f} encoder passes per lesion" if n_les else ""
    print(f"{len(done)} case(s) segmented ({n_les} lesions{per}), {len(empty)} empty, {len(failed)} failed; "
          f"wrote {out}")
    for line in empty if args.verbose else []:
        print(f"  empty: {line}")
    for line in failed:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failed else 0
