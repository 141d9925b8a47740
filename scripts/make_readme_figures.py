#!/usr/bin/env python
"""Make the README picture: coronal PET MIPs of synthetic cases with their lesion outlines.

The cases are exactly those of ``sam-l1dfl synth --out DIR --cases 4 --seed 1`` (case ``i``
depends only on the seed and ``i``), drawn with :func:`sam_l1dfl.viz.save_mip_figure`.

    python scripts/make_readme_figures.py [--out docs/img/synthetic_mips.png] [--seed 1] [--cases 4] [--full-size]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "synthetic_mips.png"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--full-size", action="store_true", help="adult field of view instead of the default small cases")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from sam_l1dfl.data.synthetic import case_seed, generate_case
    from sam_l1dfl.viz import DEFAULT_COLORS, Panel, save_mip_figure

    panels = []
    for i in tqdm(range(args.cases), desc="cases", unit="case"):
        cid = f"synth_{i:03d}"
        c = generate_case(case_seed(args.seed, i), cid, full_size=args.full_size,
                          n_lesions=0 if i % 4 == 3 else None)
        n = len(c.lesions)
        small = sum(les["volume_ml"] < 1.5 for les in c.lesions)
        title = f"{cid}: {n} lesion{'s' if n != 1 else ''}" + (f" ({small} < 1.5 mL)" if n else "")
        panels.append(Panel(pet=c.pet, masks={"lesion (SEG)": (c.seg, DEFAULT_COLORS[0])}, axis="coronal",
                            title=title))
    size = "full-size" if args.full_size else "default-size"
    out = save_mip_figure(args.out, panels, ncols=len(panels), panel_width=2.6,
                          suptitle=f"Synthetic PSMA PET/CT ({size}, seed {args.seed}): coronal MIPs, SUV 0-10")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
