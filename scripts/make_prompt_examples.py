"""Regenerate prompts/examples/ and docs/img/prompts_case.png from the synthetic data set.

    .venv/bin/python scripts/make_prompt_examples.py [--n-cases 4] [--seed 0]

Generates a small synthetic data set in a temporary folder, runs ``sam-l1dfl prompts`` on it
(centre positive point, 2 shell negatives, tight boxes, Slicer markups), copies the prompt files
into ``prompts/examples/`` (image paths rewritten to ``synthetic/<case>/SUV.nii.gz``, i.e. relative
to a data set generated with ``sam-l1dfl synth --out prompts/examples/synthetic``) and draws one
case's PET MIP with its points and boxes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from sam_l1dfl.cli import main as cli
    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.io_utils import dumps_compact, write_text_atomic
    from sam_l1dfl.prompts import load_prompts
    from sam_l1dfl.viz import Panel, save_mip_figure

    out_dir = ROOT / "prompts" / "examples"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        generate_dataset(data, args.n_cases, seed=args.seed, progress=False)
        work = Path(tmp) / "prompts"
        rc = cli(["prompts", "--data", str(data), "--out", str(work), "--n-neg", "2", "--boxes", "--slicer",
                  "--seed", str(args.seed), "--quiet"])
        if rc != 0:
            return rc
        files = sorted(work.glob("*.json"))
        best = None
        for f in files:
            doc = json.loads(f.read_text())
            block = doc["sam_l1dfl"] if "markups" in doc else doc
            case = block["case_id"]
            block["image"]["path"] = f"synthetic/{case}/SUV.nii.gz"
            write_text_atomic(out_dir / f.name, dumps_compact(doc))
            if "markups" not in doc:
                n = len(doc["lesions"])
                if best is None or n > best[1]:
                    best = (case, n)
        case, _ = best
        cp = load_prompts(work / f"{case}.json")
        pet = sitk.ReadImage(str(data / case / "SUV.nii.gz"))
        seg = sitk.ReadImage(str(data / case / "SEG.nii.gz"))
        pts = np.array([p.world for les in cp.lesions for p in les.points])
        labels = np.array([p.label for les in cp.lesions for p in les.points])
        boxes = []
        for les in cp.lesions:
            for b in les.boxes:
                c = b.corners_world()
                boxes.append((c.min(0), c.max(0)))
        panels = [
            Panel(pet=pet, masks={"lesions (SEG)": (seg, "#1f77b4")}, axis=axis, points_world=pts,
                  point_labels=labels, boxes_world=boxes, title=f"{case}, {axis} MIP", extra={"legend": False})
            for axis in ("coronal", "sagittal")
        ]
        png = save_mip_figure(ROOT / "docs" / "img" / "prompts_case.png", panels,
                              suptitle="SEG outline (blue), centre points (green +),\nshell negatives (red x), boxes (orange)")
    print(f"wrote {len(files)} file(s) to {out_dir} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
