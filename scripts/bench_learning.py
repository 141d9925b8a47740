"""Learning benchmark: does fine-tuning help, and which loss helps most?  (BENCHMARKS.md, "Learning")

    .venv/bin/python scripts/bench_learning.py [--out bench_out/learning] [--seeds 0 1 2]
        [--train-cases 8] [--test-cases 8] [--init standin] [--config configs/demo.yaml]
        [--markdown learning.md] [key=value ...]

Rows (:mod:`sam_l1dfl.compare.learning`), on a held-out synthetic PSMA test set with its own seed
(never seen in training), one click per lesion from the reference mask, masks on the original
PET grid, ``sam-l1dfl evaluate``'s metrics:

* the starting model zero-shot (``--init``: ``standin`` by default, or a turbo checkpoint);
* its mask decoder fine-tuned with L1DFL, DiceFocal and DiceCE (the official SAM-Med3D loss),
  one run per seed: the seed sets the training cases and the training randomness;
* the 41 %-SUVmax threshold grown from the click (no training).

``key=value`` overrides change the fine-tuning budget (e.g. ``train.max_steps=400``).
Zero-shot and the threshold do not depend on the seed (same test set and clicks).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/learning")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-cases", type=int, default=8)
    ap.add_argument("--test-cases", type=int, default=8)
    ap.add_argument("--init", default="standin", help="starting checkpoint (default: the packaged stand-in)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--losses", nargs="+", default=None, help="subset of l1dfl dicefocal dicece")
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    ap.add_argument("overrides", nargs="*", help="fine-tuning config overrides, key=value")
    args = ap.parse_args(argv)

    import torch

    from sam_l1dfl.compare.learning import LOSSES, TEST_SEED, TRAIN_SEED_BASE, Row, finetune, predict, score, table
    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.io_utils import atomic_path, write_json_atomic
    from sam_l1dfl.training import load_config

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    losses = args.losses or list(LOSSES)
    t0 = time.perf_counter()
    test = out / "test"
    generate_dataset(test, args.test_cases, seed=TEST_SEED, n_oblique=1, progress=False)
    n_test_lesions = sum(len(c.get("lesions", [])) for c in json.loads((test / "dataset.json").read_text())["cases"])
    rows: list[Row] = []

    def run(name, source, seed=None):
        pred = out / "pred" / (name if seed is None else f"{name}_seed{seed}")
        secs = predict(source, test, pred)
        m = score(pred, test)
        rows.append(Row(name, seed, m, secs if seed is None else secs + train_secs.get((name, seed), 0.0), source))
        print(f"  {name:10s} seed {seed if seed is not None else '-'}: lesion Dice {m['lesion_dice']:.3f}, "
              f"volume Dice {m['dice']:.3f}, F1 (C3) {m['f1_c3']:.3f}", flush=True)

    train_secs: dict = {}
    print(f"test set: {args.test_cases} cases, {n_test_lesions} lesions (seed {TEST_SEED})", flush=True)
    run("zero-shot", args.init)
    run("threshold", "threshold")
    for seed in args.seeds:
        train_root = out / f"train_seed{seed}"
        generate_dataset(train_root, args.train_cases, seed=TRAIN_SEED_BASE + seed, n_oblique=1, progress=False)
        for loss in losses:
            res, secs = finetune(args.init, train_root, out / "runs", loss, seed, config=args.config,
                                 overrides=args.overrides)
            train_secs[(loss, seed)] = secs
            print(f"  fine-tuned {loss} seed {seed}: {res.steps} steps in {secs:.0f} s, best step {res.best_step}, "
                  f"val 1-click Dice {res.dice_before.get('dice@1', float('nan')):.3f} -> "
                  f"{res.best_dice1:.3f}", flush=True)
            run(loss, str(res.run_dir), seed)

    cfg = load_config(args.config, list(args.overrides))
    train_lesions = sum(len(c.get("lesions", [])) for s in args.seeds
                        for c in json.loads((out / f"train_seed{s}" / "dataset.json").read_text())["cases"]) / len(args.seeds)
    head = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; whole benchmark {time.perf_counter() - t0:.0f} s.",
            f"Start: `{args.init}`. Fine-tuning: `{Path(args.config).name}` {' '.join(args.overrides) or ''} "
            f"(decoder only, {cfg.train.max_steps} steps of batch {cfg.train.batch_size}, lr {cfg.optim.lr:g}, "
            f"{cfg.prompts.clicks_per_sample} click(s) per sample); {args.train_cases} training cases per seed "
            f"(~{train_lesions:.0f} lesions), seeds {', '.join(map(str, args.seeds))} (mean ± sd).",
            f"Test: {args.test_cases} held-out cases, {n_test_lesions} lesions, one click per lesion from the "
            "reference mask; time = fine-tuning + inference seconds."]
    tab = table(rows, markdown=True)
    agg_json = {"rows": [r.__dict__ for r in rows], "head": head, "overrides": args.overrides}
    write_json_atomic(out / "learning.json", json.loads(json.dumps(agg_json, default=str)))
    md = "\n".join(head) + "\n\n" + tab + "\n"
    print("\n" + table(rows))
    print("\n" + md)
    if args.markdown:
        with atomic_path(Path(args.markdown)) as tmp:
            Path(tmp).write_text(md)
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
