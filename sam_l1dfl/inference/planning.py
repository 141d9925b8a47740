"""Step 2 of inference: planning the crops, one per lesion or shared by lesions close together.

A crop is a ``crop_size``³ network grid at the model spacing (world-aligned RAS+, see
docs/architecture.md), centred on a :class:`Window`; :func:`crop_batches` groups the windows
``batch_size`` at a time for the encoder and lists the lesions each batch serves.

**Crop sharing.**  Lesions close together share one encoder pass: :func:`plan_windows` clusters
them greedily so that every member's prompt extent (its positive points and box corners) lies
inside the shared window with ``margin_vox`` crop voxels to spare on every side.  The seed of each
window is the unassigned lesion that can share with the most others; candidates join nearest
first while the union of their extents still fits.  A window's centre is the centre of that union
(for a single lesion: the centre of its own extent, which is where an unshared crop goes).  Each
lesion still gets its own decoder pass.  ``share_crops=False`` (the default) gives one encoder
pass per lesion, on a crop centred on that lesion's prompts.  Sharing is opt-in because SAM-Med3D
is trained on crops centred on the target (the official crop is TorchIO's ``CropOrPad`` around
the label; our fine-tuning and the stand-in's pretraining do the same), and a lesion far from
the centre of a shared crop is segmented worse: the stand-in's zero-shot lesion Dice on the 8
held-out synthetic cases of BENCHMARKS.md ("Learning under phantom 1.0") was 0.072 with sharing and 0.305 without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from sam_l1dfl.data.geometry import CropGeometry
from sam_l1dfl.data.preprocess import IntensityConfig

from .lesions import PromptedLesion


@dataclass
class Window:
    """One shared network crop: its centre (LPS mm) and the lesions (indices) it serves."""

    center_lps: tuple[float, float, float]
    members: list[int]


def plan_windows(lo: np.ndarray, hi: np.ndarray, crop_size: int = 128, spacing: float = 1.5,
                 margin_vox: float = 16, share: bool = True) -> list[Window]:
    """Group lesions into shared crops (see the module docstring).

    ``lo``/``hi``: (N, 3) LPS extents of each lesion's prompts (crop axes are world-aligned, so
    the box is the same in crop axes).  A window fits a group when the union of its extents spans
    at most ``(crop_size - 1 - 2 * margin_vox) * spacing`` mm on every axis.
    """
    lo = np.asarray(lo, dtype=np.float64).reshape(-1, 3)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1, 3)
    n = len(lo)
    centre = (lo + hi) / 2.0
    if not share or n <= 1:
        return [Window(tuple(float(v) for v in centre[i]), [i]) for i in range(n)]
    span = (crop_size - 1 - 2.0 * margin_vox) * spacing
    # pairwise fit of two lesions' union
    ulo = np.minimum(lo[:, None], lo[None, :])
    uhi = np.maximum(hi[:, None], hi[None, :])
    fits = np.all(uhi - ulo <= span + 1e-9, axis=-1)
    left = np.ones(n, dtype=bool)
    windows: list[Window] = []
    while left.any():
        counts = np.where(left, (fits & left[None, :]).sum(1), -1)
        seed = int(np.argmax(counts))
        members = [seed]
        left[seed] = False
        glo, ghi = lo[seed].copy(), hi[seed].copy()
        cand = [j for j in np.flatnonzero(left & fits[seed])]
        cand.sort(key=lambda j: (float(np.linalg.norm(centre[j] - centre[seed])), j))
        for j in cand:
            nlo, nhi = np.minimum(glo, lo[j]), np.maximum(ghi, hi[j])
            if np.all(nhi - nlo <= span + 1e-9):
                glo, ghi = nlo, nhi
                members.append(int(j))
                left[j] = False
        windows.append(Window(tuple(float(v) for v in (glo + ghi) / 2.0), sorted(members)))
    return windows


def plan_crops(lesions: Sequence[PromptedLesion], preprocess: IntensityConfig, margin_vox: float,
               share: bool) -> list[Window]:
    """:func:`plan_windows` for resolved lesions, with the checkpoint's crop size and spacing."""
    return plan_windows(np.stack([l.lo for l in lesions]), np.stack([l.hi for l in lesions]),
                        preprocess.crop_size, preprocess.spacing, margin_vox, share)


@dataclass
class CropBatch:
    """Windows encoded together: the crop geometry of each, and one item per lesion they serve,
    ``(window index, index in this batch, lesion index)``."""

    geometries: list[CropGeometry]
    items: list[tuple[int, int, int]]


def crop_batches(windows: Sequence[Window], batch_size: int, preprocess: IntensityConfig) -> Iterator[CropBatch]:
    """The windows ``batch_size`` at a time, in order, as :class:`CropBatch` es."""
    for w0 in range(0, len(windows), batch_size):
        chunk = windows[w0:w0 + batch_size]
        geoms = [preprocess.geometry_at(w.center_lps) for w in chunk]
        yield CropBatch(geoms, [(w0 + wi, wi, li) for wi, w in enumerate(chunk) for li in w.members])


__all__ = ["CropBatch", "Window", "crop_batches", "plan_crops", "plan_windows"]
