"""Timing of sam_l1dfl.prompts.clicks.next_click on 128^3 crops (prints figures; no assertions).

    .venv/bin/python scripts/bench_clicks.py [--batch 2] [--repeat 3]

Compares, in the same process: cc3d vs torch-propagation components, "largest" vs "any"
component, centre vs random point, for a typical first click (nothing predicted, lesion-sized
error) and a bad case (a large false-positive region).  Runs on CUDA too when available.
"""

from __future__ import annotations

import argparse
import time

import torch

from sam_l1dfl.prompts.clicks import next_click


def _time(fn, repeat):
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        s, b = 128, args.batch
        gt = torch.zeros(b, 1, s, s, s, dtype=torch.bool, device=dev)
        for i in range(b):
            r = 4 + 4 * i
            gt[i, 0, 64 - r : 64 + r, 60 - r : 60 + r, 62 - r : 62 + r] = True
        first = torch.zeros_like(gt)
        bad = gt.clone()
        bad[:, :, 20:110, 20:110, 40:90] = True
        print(f"device {dev}, batch {b}, crop {s}^3, threads {torch.get_num_threads()}")
        for name, pred in (("first click", first), ("large FP", bad)):
            base = None
            for label, kw in (
                ("cc3d, largest, center", dict(backend="cc3d")),
                ("torch, largest, center", dict(backend="torch")),
                ("any component, center", dict(component="any")),
                ("cc3d, largest, random", dict(backend="cc3d", mode="random")),
            ):
                t = _time(lambda: next_click(pred, gt, **kw), args.repeat)
                base = base or t
                print(f"  {name:12s} {label:24s} {t * 1000:8.1f} ms  ({t / base:4.2f}x of the first row)")


if __name__ == "__main__":
    main()
