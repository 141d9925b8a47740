#!/usr/bin/env python
"""Forward + backward time of L1DFLoss vs MONAI DiceFocalLoss, DiceCELoss and DiceLoss, in one process.

    .venv/bin/python scripts/bench_loss.py                  # B = 2,4,8 at 128^3, C = 1,2, CPU (+CUDA)
    .venv/bin/python scripts/bench_loss.py --repeats 5      # more repeats (median reported)
    .venv/bin/python scripts/bench_loss.py --size 64 --batches 2 --device cpu

C = 1: sigmoid mode (SAM-Med3D's single logit, binary target); C = 2: softmax mode with a
(B, 1, ...) label map and to_onehot_y=True.  All three losses get the same arguments
(DiceLoss/DiceFocalLoss/DiceCELoss with squared_pred=True, the L1DFL Dice denominator).  Prints the
median time of each and its ratio to DiceFocalLoss (the goal for L1DFL is <= 1.3x); "L1DFL train" is
the loss as the trainers build it (validate=False), compared with DiceCE (official SAM-Med3D's).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sam_l1dfl.losses import L1DFLoss  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_all(losses: dict, x, y, device: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median fwd+bwd seconds per loss; the losses alternate within each repeat so that a
    change of machine load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in losses}
    for i in range(warmup + repeats):
        for name, loss in losses.items():
            xi = x.detach().requires_grad_(True)
            _sync(device)
            t0 = time.perf_counter()
            loss(xi, y).backward()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
            del xi
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="cube edge (default 128)")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per case (median; default 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            print("CUDA is not available", file=sys.stderr)
            return 2
        devices.remove("cuda")

    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(f"# fwd+bwd median of {args.repeats} (after {args.warmup} warm-up), fp32, {args.size}^3")
    cases = [(d, c, b) for d in devices for c in args.channels for b in args.batches]
    rows = []
    for device, c, b in tqdm(cases, desc="bench_loss", leave=False):
        g = torch.Generator().manual_seed(0)
        shape = (b, c) + (args.size,) * 3
        x = (torch.randn(shape, generator=g) * 3).to(device)
        fg = torch.rand((b, 1) + (args.size,) * 3, generator=g) < 0.05
        if c == 1:
            kw = {"sigmoid": True}
            y = fg.float().to(device)
        else:
            kw = {"softmax": True, "to_onehot_y": True}
            y = fg.long().to(device)
        losses = {
            "L1DFL": L1DFLoss(**kw),
            "L1DFL train": L1DFLoss(validate=False, **kw),  # what the trainers build (no value check)
            "DiceFocal": DiceFocalLoss(squared_pred=True, **kw),
            "DiceCE": DiceCELoss(squared_pred=True, **kw),
            "Dice": DiceLoss(squared_pred=True, **kw),
        }
        t = _time_all(losses, x, y, device, args.repeats, args.warmup)
        rows.append((device, c, b, t))
        del x, y

    print(f"{'device':6} {'C':>2} {'B':>2} {'L1DFL s':>9} {'L1DFL tr s':>10} {'DiceFocal s':>11} {'DiceCE s':>9} "
          f"{'Dice s':>8} {'L1DFL/DF':>9} {'L1DFL tr/DiceCE':>15}")
    for device, c, b, t in rows:
        df = t["DiceFocal"]
        print(f"{device:6} {c:>2} {b:>2} {t['L1DFL']:9.3f} {t['L1DFL train']:10.3f} {df:11.3f} {t['DiceCE']:9.3f} "
              f"{t['Dice']:8.3f} {t['L1DFL'] / df:9.2f} {t['L1DFL train'] / t['DiceCE']:15.2f}")
    worst = max(t["L1DFL"] / t["DiceFocal"] for *_, t in rows)
    print(f"# worst L1DFL/DiceFocal ratio: {worst:.2f} (goal <= 1.30)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
