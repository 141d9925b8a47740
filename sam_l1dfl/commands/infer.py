"""``sam-l1dfl infer``: prompted inference on PET (and CT) volumes.

One case::

    sam-l1dfl infer --pet SUV.nii.gz [--ct CT.nii.gz] --prompts case.json|case.mrk.json \\
        --checkpoint runs/x/best --out pred.nii.gz
    sam-l1dfl infer --pet SUV.nii.gz --prompts-from-mask SEG.nii.gz --clicks 3 ...   # evaluation mode

writes ``pred.nii.gz`` (binary mask), ``pred_lesions.nii.gz`` (label map: one label per lesion
prompt) and ``pred.json`` (lesion -> label, volumes, encoder passes, seconds per stage); with
``--probabilities`` also ``pred_prob/lesion_<id>.nii.gz``.  ``--dicom-seg pred_seg.dcm --dicom-ref
PET_SERIES_DIR`` also writes the label map as a DICOM SEG of that series
(:func:`sam_l1dfl.export.dicom_seg.write_dicom_seg`; the PET must be on the series' grid, checked
before any work).  The PET is checked to look like SUV (:mod:`sam_l1dfl.data.dicom.suv_sanity`).

A whole data set (``--data DIR``, discovered like ``sam-l1dfl data``)::

    sam-l1dfl infer --data DIR --prompts-dir P --checkpoint ... --out-dir O
    sam-l1dfl infer --data DIR --prompts-from-mask --clicks 3 --checkpoint ... --out-dir O

writes ``O/<case>.nii.gz`` (binary; what ``sam-l1dfl evaluate --pred-dir O`` reads),
``O/lesions/<case>.nii.gz``, ``O/<case>.json`` and ``O/summary.json``.  ``--shard K/N`` segments
part K of N of the cases (sorted by id) into ``O/shard-K-of-N/``; ``--shards N`` runs every part
as a job with the launcher options (``--launcher submitit|ray``, ``--gpus``, ..., docs/cluster.md);
``evaluate --pred-dir O`` merges the parts and refuses a missing one.  A case without a prompt
file (or, with ``--prompts-from-mask``, without a lesion) gets an empty mask; a case whose files
are unusable is listed with its one-line reason (exit status 1 after the others are written).
Every output is written atomically.

``--method threshold`` runs the classical baseline instead of a model
(:class:`sam_l1dfl.baselines.ThresholdSegmenter`: 41 % of the SUVmax reached from each click,
18-connected, in the lesion's 128³ crop at 1.5 mm): no ``--checkpoint`` (refused, like ``--ct``,
``--clicks`` and ``--probabilities``), the same outputs, ``method: threshold`` in every JSON.

Before any work the output paths are checked (an image suffix; no parent that is a file; no
output, side outputs included, that is one of the files read) and ``--device`` is parsed.
This module only checks the arguments, calls :class:`sam_l1dfl.inference.Segmenter`
(``segment`` + ``SegmentationResult.write`` for one case, ``segment_dataset`` for a data set) and
prints.
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import (DATA_HELP, DEVICE_HELP, PET_HELP, add_output_flags, add_shard_arguments, case_inputs,
                                check_shard_arguments, image_output, launch_shards, shard_cases)

HELP = "prompted inference on PET (and CT) volumes"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl infer --pet SUV.nii.gz --prompts case.json --checkpoint runs/psma_l1dfl --out pred.nii.gz",
    "sam-l1dfl infer --method threshold --pet SUV.nii.gz --prompts slicer_saved/ --out pred.nii.gz",
    "sam-l1dfl infer --data data/psma --prompts-dir prompts/psma --checkpoint runs/psma_l1dfl --out-dir pred/",
)
_FROM_CASE = "__case_label__"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("sam", "threshold"), default="sam",
                   help="sam: the SAM-Med3D checkpoint (default); threshold: the classical 41%%-SUVmax region grown "
                        "from each click in its 128^3 crop at 1.5 mm (no model, PET only)")
    p.add_argument("--checkpoint",
                   help="run/model directory (runs/<name>/best), exported file, sam_med3d_turbo.pth, or "
                        "'standin' (the packaged synthetic-pretrained stand-in) (required with --method sam)")
    g = p.add_argument_group("one case")
    g.add_argument("--pet", help=PET_HELP)
    g.add_argument("--ct", help="CT image (for pet+ct or ct checkpoints)")
    g.add_argument("--prompts", nargs="+", metavar="FILE",
                   help="prompt file (.json) or 3D Slicer markups (.mrk.json); several .mrk.json files, or a "
                        "folder of them, for the nodes Slicer saves one per file")
    g.add_argument("--out", help="output binary mask (e.g. pred.nii.gz); label map and report beside it")
    g.add_argument("--dicom-seg", metavar="OUT.dcm",
                   help="also write the prediction as a DICOM SEG (one segment per lesion) of the --dicom-ref series")
    g.add_argument("--dicom-ref", metavar="PET_SERIES_DIR",
                   help="folder of the DICOM PET series the --pet image was converted from (its grid must match)")
    g.add_argument("--dicom-seg-single", action="store_true", help="one 'lesion' segment instead of one per lesion")
    d = p.add_argument_group("a data set")
    d.add_argument("--data", help=DATA_HELP)
    d.add_argument("--prompts-dir", help="folder of <case>.json or <case>.mrk.json prompt files, or of <case>/ "
                                         "folders of Slicer markups files")
    d.add_argument("--out-dir", help="output folder: <case>.nii.gz, lesions/<case>.nii.gz, <case>.json")
    e = p.add_argument_group("evaluation mode")
    e.add_argument("--prompts-from-mask", nargs="?", const=_FROM_CASE, metavar="SEG",
                   help="generate prompts from a reference mask (one interior point per lesion); with --data "
                        "give no value to use each case's label")
    e.add_argument("--clicks", type=int, default=0,
                   help="refinement clicks per lesion simulated against the reference mask (default 0)")
    o = p.add_argument_group("options")
    o.add_argument("--device", default=None, help=DEVICE_HELP)
    o.add_argument("--batch-size", type=int, default=2, help="crops per encoder call (default 2)")
    o.add_argument("--share-crops", action="store_true",
                   help="one encoder pass for lesions close together (faster; lesions off the crop centre are "
                        "segmented worse by models trained on centred crops; default: one centred crop per lesion)")
    o.add_argument("--no-share", action="store_false", dest="share_crops", help=argparse.SUPPRESS)  # the old default
    o.add_argument("--margin", type=float, default=16,
                   help="crop sharing: crop voxels kept free around every lesion's prompts (default 16)")
    o.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    o.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    o.add_argument("--probabilities", action="store_true", help="also write per-lesion probability maps")
    o.add_argument("--trust", action="store_true", help="allow checkpoints that need full unpickling")
    o.add_argument("--allow-checksum-mismatch", action="store_true",
                   help="use prompt files made for an image with another SHA-256 (warning only)")
    add_output_flags(p, verbose="report lesions, encoder passes, seconds per stage")
    add_shard_arguments(p)


def _check_arguments(args: argparse.Namespace) -> bool:
    """Refuse inconsistent options before anything is loaded; True in one-case (``--pet``) mode."""
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
        if (args.dicom_seg is None) != (args.dicom_ref is None):
            raise InputError(None, "--dicom-seg and --dicom-ref go together (the SEG references that series)")
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
        if args.dicom_seg or args.dicom_ref:
            raise InputError(None, "--dicom-seg/--dicom-ref belong to --pet mode (one case, one DICOM series)")
    if args.clicks < 0:
        raise InputError(None, f"--clicks must be >= 0, got {args.clicks}")
    if args.clicks and args.prompts_from_mask is None:
        raise InputError(None, "--clicks simulates clicks against a reference: add --prompts-from-mask")
    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}")
    check_shard_arguments(args)
    if args.method == "sam" and args.checkpoint is None:
        raise InputError(None, "--checkpoint is required with --method sam (or use --method threshold)")
    unused = [o for o, v in (("--checkpoint", args.checkpoint), ("--ct", args.ct), ("--clicks", args.clicks),
                             ("--probabilities", args.probabilities)) if v and args.method == "threshold"]
    if unused:
        raise InputError(None, f"{', '.join(unused)}: not used by --method threshold (PET-only baseline, no model)")
    return single


def run(args: argparse.Namespace) -> int:
    single = _check_arguments(args)

    from sam_l1dfl.devices import parse_device
    from sam_l1dfl.inference import Segmenter

    device = parse_device(args.device)
    if args.shards:  # every part a job (each runs this command with --shard K/N)
        return launch_shards(args, __name__)
    cases = _check_one(args) if single else _check_dataset(args)  # output paths, before any work
    if args.method == "threshold":
        from sam_l1dfl.baselines import ThresholdSegmenter

        seg = ThresholdSegmenter()
    else:
        seg = Segmenter(args.checkpoint, device=device, batch_size=args.batch_size,
                        share_crops=args.share_crops, margin_vox=args.margin, threshold=args.threshold,
                        autocast=args.bf16, trust=args.trust)
    if args.method == "sam" and (args.verbose or seg.weights in ("standin", "random")):
        from sam_l1dfl.model.standin import ORIGIN_WORDS

        print(f"checkpoint: {args.checkpoint} (weights: {ORIGIN_WORDS.get(seg.weights, seg.weights)}"
              + (f"; input_mode {seg.input_mode}, preprocessing: {seg.preprocess_source})" if args.verbose else ")"))
    if single:
        return _run_one(args, seg)
    return _run_dataset(args, seg, cases)


def _outputs_one(args) -> tuple:
    """``(mask, label map, report, probability folder or None)`` of ``--out``."""
    out, stem, suf = image_output(args.out)
    return (out, out.parent / f"{stem}_lesions{suf}", out.parent / f"{stem}.json",
            out.parent / f"{stem}_prob" if args.probabilities else None)


def _check_one(args) -> None:
    from sam_l1dfl.io_utils import check_outputs, input_files

    *files, prob = _outputs_one(args)
    inputs = input_files(args.pet, args.ct, *(args.prompts or []), args.prompts_from_mask, args.checkpoint,
                         args.dicom_ref)
    check_outputs(files + [args.dicom_seg], [prob], inputs, within=[prob], hint="choose another --out")


def _check_dataset(args) -> list:
    """The discovered cases, after checking that no output is one of their files."""
    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.io_utils import check_output_path, check_outputs, input_files

    cases = shard_cases(args, discover_cases(args.data).cases)  # --shard K/N: its part, into OUT_DIR/shard-K-of-N
    out = check_output_path(args.out_dir, folder=True)
    files = [out / "summary.json"]
    for rec in cases:
        files += [out / f"{rec.case_id}.nii.gz", out / "lesions" / f"{rec.case_id}.nii.gz", out / f"{rec.case_id}.json"]
    inputs = case_inputs(cases, args.data) + input_files(args.prompts_dir, args.checkpoint)
    check_outputs(files, inputs=inputs, within=[out / "probabilities"] if args.probabilities else [],
                  hint="choose another --out-dir")
    return cases


def _run_one(args, seg) -> int:
    import SimpleITK as sitk

    from sam_l1dfl.data.dicom.suv_sanity import warn_if_not_suv
    from sam_l1dfl.inference import load_single_case

    pet, ct, ref = load_single_case(args.pet, args.ct, args.prompts_from_mask)
    warn_if_not_suv(sitk.GetArrayViewFromImage(pet), args.pet)
    if args.dicom_ref:  # before the work: the SEG must fit the series
        from sam_l1dfl.export.dicom_seg import check_series_grid, write_dicom_seg

        check_series_grid(pet, args.dicom_ref, args.pet)
    prompts = args.prompts[0] if args.prompts and len(args.prompts) == 1 else args.prompts  # a file or folder, or several
    res = seg.segment(pet, ct, prompts=prompts, reference=ref, clicks=args.clicks,
                      probabilities=args.probabilities, allow_checksum_mismatch=args.allow_checksum_mismatch)
    out, labels, report, prob = _outputs_one(args)
    extra = {"pet": str(args.pet), "ct": args.ct, "prompts": args.prompts,
             "prompts_from_mask": args.prompts_from_mask, **seg.provenance}
    res.write(out, labels, report, prob, extra)
    if args.verbose:
        print(res.report.summary())
        for d in res.lesions:
            print(f"  lesion {d['lesion_id']}: label {d['label']}, window {d['window']}, "
                  f"{d['voxels']} voxels ({d['volume_ml']} mL), predicted IoU {d['iou_pred']}")
    passes = f"{res.report.encoder_passes} encoder pass(es), " if args.method == "sam" else "threshold baseline, "
    print(f"wrote {out} ({len(res.lesions)} lesion(s), {passes}{res.report.total_seconds:.1f} s)")
    if args.dicom_seg:
        dseg = write_dicom_seg(res.mask if args.dicom_seg_single else res.labels, args.dicom_ref, args.dicom_seg,
                               per_lesion=not args.dicom_seg_single, mask_name=labels,
                               segment_labels={x["label"]: f"lesion {x['lesion_id']}" for x in res.lesions},
                               algorithm_parameters={"method": args.method, "checkpoint": args.checkpoint})
        print(f"wrote {dseg.path} (DICOM SEG of series {dseg.referenced_series_uid}: {len(dseg.segments)} segment(s))")
    return 0


def _run_dataset(args, seg, cases) -> int:
    import sys

    from tqdm import tqdm

    def on_case(case_id, res):
        tqdm.write(f"{case_id}: " + res.report.summary().replace("\n", "\n  "))

    s = seg.segment_dataset(cases, args.out_dir, prompts_dir=args.prompts_dir,
                            from_mask=args.prompts_from_mask is not None, clicks=args.clicks,
                            probabilities=args.probabilities, allow_checksum_mismatch=args.allow_checksum_mismatch,
                            data=args.data, progress=not args.quiet, on_case=on_case if args.verbose else None)
    if args.verbose:
        print("stages: " + "  ".join(f"{k} {v:.1f}s" for k, v in s.seconds.items()))
    per = f", {s.encoder_passes / s.lesions:.2f} encoder passes per lesion" if s.lesions and args.method == "sam" \
        else ""
    print(f"{len(s.segmented)} case(s) segmented ({s.lesions} lesions{per}), {len(s.empty)} empty, "
          f"{len(s.failed)} failed; wrote {s.out_dir}")
    for line in s.empty if args.verbose else []:
        print(f"  empty: {line}")
    for line in s.failed:  # one line per unusable case, like `sam-l1dfl prompts`
        print(f"error: {line}", file=sys.stderr)
    return 1 if s.failed else 0
