"""Inference figures: seconds per case and encoder passes per lesion, with and without crop sharing.

One synthetic case with 12 lesions (``generate_case(seed, n_lesions=12)``), random weights of the
real size (``vit_b_ori``) and ``tiny``, fast encoder path, fp32, on the CPU (and CUDA when
available, also with bf16 autocast).  Prints the stage times of each run, the ratios shared vs
unshared measured in this process, and the encoder passes per lesion that crop sharing gives over
several synthetic cases (planning only, no network).

    .venv/bin/python scripts/bench_infer.py [--models tiny vit_b_ori] [--seed 0] [--cases 10]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def _run(seg, case, prompts, share):
    t = time.perf_counter()
    res = seg.segment(case.pet, prompts=prompts, share_crops=share)
    return time.perf_counter() - t, res.report


def main() -> None:
    from sam_l1dfl.data.preprocess import IntensityConfig
    from sam_l1dfl.data.synthetic import case_seed, generate_case
    from sam_l1dfl.inference import Segmenter, plan_windows
    from sam_l1dfl.model import build_sam_med3d
    from sam_l1dfl.prompts import generate_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "vit_b_ori"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=10, help="synthetic cases for the passes-per-lesion figure")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--margin", type=float, default=16)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    args = ap.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"cuda {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")

    case = generate_case(args.seed, n_lesions=12)
    prompts = generate_prompts(case.seg, case.pet)
    n = len(prompts.lesions)
    print(f"case: seed {args.seed}, {n} lesion prompts, PET {case.pet.GetSize()} at {case.pet.GetSpacing()} mm")
    rows = []
    for dev in devices:
        for name in args.models:
            torch.manual_seed(0)
            model = build_sam_med3d(name)
            for bf16 in ([False, True] if dev == "cuda" else [False]):
                seg = Segmenter(None, device=dev, model=model, preprocess=IntensityConfig(),
                                batch_size=args.batch_size, margin_vox=args.margin, autocast=bf16)
                _run(seg, case, prompts, True)  # warm-up (allocator, kernels)
                out = {}
                for share in (True, False):
                    sec, rep = _run(seg, case, prompts, share)
                    out[share] = (sec, rep)
                    per_pass = rep.seconds["encoder"] / max(rep.encoder_passes, 1)
                    tag = f"{dev}{' bf16' if bf16 else ''} {name:9s} share={'on ' if share else 'off'}"
                    print(f"{tag}: {sec:7.2f} s/case  {rep.encoder_passes:2d} encoder passes "
                          f"({rep.encoder_passes / n:.2f}/lesion)  {per_pass:.2f} s/encoder pass  "
                          + " ".join(f"{k} {v:.2f}" for k, v in rep.seconds.items()))
                    rows.append((tag, sec, rep.encoder_passes, per_pass))
                (s1, r1), (s0, r0) = out[True], out[False]
                print(f"  -> sharing: {r0.encoder_passes / r1.encoder_passes:.1f}x fewer encoder passes, "
                      f"{s0 / s1:.2f}x faster per case")

    # passes per lesion over several synthetic cases (planning only)
    cfg = IntensityConfig()
    tot_l = tot_w = 0
    per_case = []
    for i in range(args.cases):
        c = generate_case(case_seed(args.seed, i), n_lesions=None)
        if not c.lesions:
            continue
        pr = generate_prompts(c.seg, c.pet)
        pts = [np.array([p.world for p in l.points]) for l in pr.lesions]
        lo = np.stack([p.min(0) for p in pts])
        hi = np.stack([p.max(0) for p in pts])
        w = plan_windows(lo, hi, cfg.crop_size, cfg.spacing, args.margin)
        tot_l += len(pts)
        tot_w += len(w)
        per_case.append(f"{len(pts)}->{len(w)}")
    if tot_l:
        print(f"synthetic set ({len(per_case)} cases with lesions, margin {args.margin:g} voxels): lesions->passes "
              f"{' '.join(per_case)}; {tot_l} lesions, {tot_w} encoder passes: {tot_l / tot_w:.1f}x fewer "
              f"({tot_w / tot_l:.2f} passes per lesion)")


if __name__ == "__main__":
    main()
