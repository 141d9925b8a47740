"""Learning benchmark: does fine-tuning beat the starting model and the threshold?  (BENCHMARKS.md, "Learning benchmark")

    .venv/bin/python scripts/bench_learning.py [--out bench_out/learning] [--seeds 0 1 2]
        [--methods l1dfl dicefocal dicece 'l1dfl[histogram_scope=roi]'] [--train-cases 8] [--steps N]
        [--val-cases 8] [--test-cases 24] [--curve 16x300 32x600] [--curve-seeds 0] [--curve-methods ...]
        [--init standin] [--config configs/demo.yaml] [--markdown learning.md] [key=value ...]

Rows (:mod:`sam_l1dfl.compare.benchmark`), on a held-out phantom test set with its own seed (one click
per lesion from the reference mask, masks on the original PET grid, ``sam-l1dfl evaluate``'s metrics):
the starting model zero-shot (``--init``: the packaged stand-in by default, or a turbo checkpoint),
its mask decoder fine-tuned with each ``--methods`` variant (``NAME[key=value,...]``: a loss and its
``loss.params``) per training seed, and the 41 %-SUVmax threshold grown from the click.  ``best/`` is
picked on a separate validation set.  Tables: overall, per stratum (near an organ / isolated, low /
high contrast, size), paired per-lesion differences with bootstrap CIs over cases, and the budget
curve (``--curve CASESxSTEPS ...``, for ``--curve-seeds``).  ``key=value`` overrides change the
fine-tuning configuration.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/learning")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["l1dfl", "dicefocal", "dicece"],
                    help="fine-tuning variants NAME[key=value,...] (default: l1dfl dicefocal dicece)")
    ap.add_argument("--train-cases", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    ap.add_argument("--val-cases", type=int, default=8)
    ap.add_argument("--test-cases", type=int, default=24)
    ap.add_argument("--curve", nargs="*", default=[], help="extra budgets CASESxSTEPS for the budget curve")
    ap.add_argument("--curve-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--curve-methods", nargs="+", default=None, help="variants of the budget curve (default: --methods)")
    ap.add_argument("--init", default="standin", help="starting checkpoint (default: the packaged stand-in)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    ap.add_argument("overrides", nargs="*", help="fine-tuning config overrides, key=value")
    args = ap.parse_args(argv)

    import torch

    from sam_l1dfl.compare.benchmark import parse_budget, run_benchmark, tables
    from sam_l1dfl.io_utils import atomic_path

    for b in args.curve:
        parse_budget(b)
    t0 = time.perf_counter()
    res = run_benchmark(args.out, init=args.init, config=args.config, seeds=args.seeds, methods=args.methods,
                        train_cases=args.train_cases, steps=args.steps, val_cases=args.val_cases,
                        test_cases=args.test_cases, curve=args.curve, curve_seeds=args.curve_seeds,
                        curve_methods=args.curve_methods,
                        overrides=args.overrides, log=lambda m: print(m, flush=True))
    head = (f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, {time.strftime('%Y-%m-%d')}; whole benchmark {time.perf_counter() - t0:.0f} s.  "
            f"Start: `{args.init}`.  Fine-tuning: `{Path(args.config).name}` {' '.join(args.overrides)} "
            f"({res['main_budget']} = training cases x steps), seeds {', '.join(map(str, args.seeds))} (mean ± sd).  "
            f"Test: {args.test_cases} cases, {res['sets']['test']} lesions; validation: {args.val_cases} cases, "
            f"{res['sets']['val']} lesions.")
    md = head + "\n\n" + tables(res, res["main_budget"]) + "\n"
    print("\n" + md)
    if args.markdown:
        with atomic_path(Path(args.markdown)) as tmp:
            Path(tmp).write_text(md)
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
