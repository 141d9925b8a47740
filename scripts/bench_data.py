"""Data-pipeline figures: one Resample per crop vs resample-whole-volume-then-crop, cache reads,
the cost of the NIfTI NaN scan and of the
completeness (truncation) check.  Prints numbers and ratios measured in this process.

    .venv/bin/python scripts/bench_data.py [--size 256 256 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _t(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    from sam_l1dfl.data.geometry import CropGeometry, resample_to_crop
    from sam_l1dfl.data.integrity import nifti_nonfinite_counts
    from sam_l1dfl.data.io import read_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, nargs=3, default=(256, 256, 200), help="PET size (x y z)")
    args = ap.parse_args()
    size = tuple(args.size)
    rng = np.random.default_rng(0)
    pet = sitk.GetImageFromArray(rng.gamma(2.0, 1.0, size=size[::-1]).astype(np.float32))
    pet.SetSpacing((2.04, 2.04, 3.0))
    center = pet.TransformContinuousIndexToPhysicalPoint([s / 2 for s in size])
    geom = CropGeometry.centered_at(center)

    def per_crop():
        resample_to_crop(pet, geom, "linear", 0.0)

    def whole_then_crop():
        sp = 1.5
        new_size = [int(np.ceil(n * s / sp)) for n, s in zip(size, pet.GetSpacing())]
        whole = sitk.Resample(pet, new_size, sitk.Transform(), sitk.sitkLinear, pet.GetOrigin(), (sp,) * 3,
                              pet.GetDirection(), 0.0, sitk.sitkFloat32)
        a = sitk.GetArrayViewFromImage(whole)
        c = [n // 2 for n in a.shape]
        np.array(a[c[0] - 64:c[0] + 64, c[1] - 64:c[1] + 64, c[2] - 64:c[2] + 64])

    t_crop = _t(per_crop)
    t_whole = _t(whole_then_crop, repeat=1)
    print(f"PET {size} at {pet.GetSpacing()} mm, 2-core CPU sandbox")
    print(f"one Resample onto the 128^3 crop: {t_crop * 1e3:.1f} ms")
    print(f"resample whole volume to 1.5 mm, then crop: {t_whole * 1e3:.1f} ms  (x{t_whole / t_crop:.1f} slower)")

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "pet.nii.gz"
        sitk.WriteImage(pet, str(p), True)
        t_read = _t(lambda: sitk.ReadImage(str(p)), repeat=1)
        t_scan = _t(lambda: nifti_nonfinite_counts(p), repeat=1)
        t_full = _t(lambda: read_image(p, "PET"), repeat=1)
        print(f"sitk.ReadImage .nii.gz: {t_read:.2f} s; NaN byte scan: {t_scan:.2f} s; "
              f"read_image total: {t_full:.2f} s (x{t_full / t_read:.2f} of a bare read)")
        # integer CT: no NaN scan, so the completeness check (one streamed gzip pass) is all extra
        ct = sitk.Cast(sitk.ShiftScale(pet, 100.0, 50.0), sitk.sitkInt16)
        q = Path(d) / "ct.nii.gz"
        sitk.WriteImage(ct, str(q), True)
        c_read = _t(lambda: sitk.ReadImage(str(q)), repeat=3)
        c_full = _t(lambda: read_image(q, "CT"), repeat=3)
        print(f"int16 CT .nii.gz: sitk.ReadImage {c_read:.2f} s; read_image with the completeness check: "
              f"{c_full:.2f} s (x{c_full / c_read:.2f} of a bare read)")
        z = Path(d) / "crop.npz"
        arr = resample_to_crop(pet, geom)
        np.savez(z, raw=arr[None], target=np.zeros(arr.shape, np.uint8))
        t_npz = _t(lambda: dict(np.load(z)))
        print(f"cached crop read (.npz, {z.stat().st_size / 1e6:.1f} MB): {t_npz * 1e3:.1f} ms "
              f"(x{t_crop / t_npz:.1f} faster than resampling it)")


if __name__ == "__main__":
    main()
