"""Regenerate tests/data/preprocess_golden/ from ../shared/reference/preprocess_golden.

    .venv/bin/python scripts/make_preprocess_golden_compact.py [--reference DIR]

For each of the four headers: the scene's ``<name>_pet.nii.gz`` and ``<name>_label.nii.gz``
copied byte for byte, and ``<name>_official.npz`` with the official network input in compact form
(tests/data/preprocess_golden/README.md says why each form, and what error it adds):

* ``image``: the official ``roi_image`` (already fp16), unchanged: axial_lps, flipped_xy, permuted;
* ``image_q8`` with ``offset`` and ``scale`` (``value ≈ offset + scale * level``): the oblique one,
  quantised to 256 levels (its official values are only compared by correlation);
* ``label_bits`` (``np.packbits`` of the 128³ ROI label), ``affine_ras`` (4x4, float64) and
  ``source_sha256``, the SHA-256 of the ``.pt`` file it came from.

The arrays are ``(128, 128, 128)`` in the official tensor's axis order; the files are
``np.savez_compressed`` archives (read with ``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("axial_lps", "flipped_xy", "permuted", "oblique")
QUANTISED = ("oblique",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference" / "preprocess_golden")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "preprocess_golden")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from sam_l1dfl.io_utils import atomic_path, sha256_file

    if not args.reference.is_dir():
        print(f"error: {args.reference}: not found (the official preprocessing goldens)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        for part in ("pet", "label"):
            shutil.copyfile(args.reference / f"{name}_{part}.nii.gz", args.out / f"{name}_{part}.nii.gz")
        src = args.reference / f"{name}_official_input.pt"
        ref = torch.load(src, weights_only=True)
        image = ref["roi_image"][0, 0].numpy()
        arrays = {"label_bits": np.packbits(ref["roi_label"][0, 0].numpy() > 0),
                  "affine_ras": np.asarray(ref["roi_affine_ras"], dtype=np.float64),
                  "source_sha256": np.array(sha256_file(src))}
        if name in QUANTISED:
            lo, hi = float(image.min()), float(image.max())
            scale = (hi - lo) / 255.0
            arrays.update(image_q8=np.round((image.astype(np.float64) - lo) / scale).astype(np.uint8),
                          offset=np.float64(lo), scale=np.float64(scale))
        else:
            arrays["image"] = image
        with atomic_path(args.out / f"{name}_official.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
