"""Where L1DFL puts its weight on decoder crops, step by step (docs/l1dfl.md, BENCHMARKS.md "L1DFL on decoder crops").

    .venv/bin/python scripts/plot_l1dfl_mechanism.py RUN_DIR [RUN_DIR ...] [--labels A B ...]
        [--out docs/img/l1dfl_mechanism.png]

Each RUN_DIR is a fine-tuning run trained with ``train.log_weight_shares=true`` (L1DFL); its
``train_log.jsonl`` holds, per logged step, the share of the total weight ``sum(beta)`` and of the
weighted Dice's gradient magnitude on the lesion interior, the boundary band and the background
(:func:`sam_l1dfl.losses.l1_weight_shares`), and the training-crop Dice after the last click.  One
column per run: weight shares (top), gradient shares (middle), training Dice (bottom).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REGIONS = ("interior", "boundary", "background")
COLOURS = {"interior": "#2ca02c", "boundary": "#ff7f0e", "background": "#7f7f7f"}


def read_log(run: Path) -> list[dict]:
    rows = []
    for line in (run / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("type") == "train" and "beta_interior" in r:
            rows.append(r)
    if not rows:
        raise SystemExit(f"error: {run / 'train_log.jsonl'}: no weight shares logged (train.log_weight_shares=true)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/img/l1dfl_mechanism.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sam_l1dfl.io_utils import atomic_path

    labels = args.labels or [r.name for r in args.runs]
    fig, axes = plt.subplots(3, len(args.runs), figsize=(4.2 * len(args.runs), 8), squeeze=False, sharex="col")
    for j, (run, label) in enumerate(zip(args.runs, labels)):
        rows = read_log(run)
        steps = [r["step"] for r in rows]
        for i, (prefix, title) in enumerate((("beta", "share of the weight Σβ"),
                                             ("dgrad", "share of |∂Dice/∂p|"))):
            ax = axes[i][j]
            for reg in REGIONS:
                ax.plot(steps, [r[f"{prefix}_{reg}"] for r in rows], color=COLOURS[reg], label=reg)
            ax.set_ylim(0, 1)
            ax.set_title(f"{label}: {title}", fontsize=9)
            if j == 0:
                ax.legend(fontsize=8, loc="center right")
        ax = axes[2][j]
        ax.plot(steps, [r["dice"] for r in rows], color="#1f77b4")
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: training-crop Dice (last click)", fontsize=9)
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
