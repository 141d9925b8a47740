"""Point and box prompts from a lesion mask (and the PET).

For every lesion (a connected component, :func:`sam_l1dfl.data.lesions.find_lesions`):

* **positive points** (label 1), ``strategy``:

  - ``center``: the lesion voxel farthest from the lesion boundary, by an exact Euclidean distance
    transform in millimetres (``scipy.ndimage.distance_transform_edt`` with the voxel spacing; the
    image border counts as boundary).  It is a lesion voxel by construction, so it lies inside
    even a C-shaped lesion whose centroid does not.  Ties go to the tied voxel nearest their
    mean.  More than one point: each next point maximises ``min(depth, distance to the points
    already chosen)``, which spreads them over the lesion while staying deep inside it.
  - ``suvmax``: the hottest voxels (the way readers click), hottest first.
  - ``random``: uniform over the lesion voxels, without replacement.

  A lesion smaller than ``n_pos`` voxels gets one point per voxel.
* **negative points** (label 0), ``neg_strategy``:

  - ``shell``: uniform over the voxels whose distance to this lesion is in
    ``(shell_inner_mm, shell_outer_mm]`` and that belong to no lesion.  When that shell is empty
    (crowded or edge lesions) the outer radius doubles until candidates appear.
  - ``hotspot``: physiological uptake, as in the autoPET interactive challenge: voxels whose PET
    is at or above the ``hotspot_percentile`` of non-lesion PET (voxels > 0), that lie farther than
    ``neg_min_dist_mm`` from every lesion; preferring those within ``hotspot_radius_mm`` of the
    lesion centroid (so they fall in its network crop), else the nearest ones.
* **boxes**: the tight box of the lesion voxels in index space (image orientation), optionally
  with every face moved by an independent uniform jitter in ``[-box_jitter_mm, +box_jitter_mm]``
  (never collapsing below one voxel).

Sampling is seeded per lesion (``numpy.random.default_rng([seed, lesion_id])``), so a lesion's
prompts do not depend on the other lesions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sam_l1dfl.data.lesions import Lesion, find_lesions, label_components
from sam_l1dfl.errors import ConfigError, InputError, PromptError
from sam_l1dfl.io_utils import sha256_file
from sam_l1dfl.prompts.types import (
    NEGATIVE,
    POSITIVE,
    BoxPrompt,
    CasePrompts,
    ImageRef,
    LesionPrompts,
    PointPrompt,
    box_from_index_bounds,
)

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

STRATEGIES = ("center", "suvmax", "random")
NEG_STRATEGIES = ("shell", "hotspot")


@dataclass
class PromptConfig:
    strategy: str = "center"
    n_pos: int = 1
    n_neg: int = 0
    neg_strategy: str = "shell"
    boxes: bool = False
    box_jitter_mm: float = 0.0
    shell_inner_mm: float = 3.0
    shell_outer_mm: float = 15.0
    hotspot_percentile: float = 99.5
    hotspot_radius_mm: float = 96.0  # half the 128 x 1.5 mm network crop
    neg_min_dist_mm: float = 3.0
    connectivity: int = 18
    seed: int = 0

    def validate(self) -> "PromptConfig":
        def bad(msg):
            raise ConfigError(None, f"prompt config: {msg}")

        if self.strategy not in STRATEGIES:
            bad(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.neg_strategy not in NEG_STRATEGIES:
            bad(f"neg_strategy must be one of {NEG_STRATEGIES}, got {self.neg_strategy!r}")
        if self.n_pos < 0 or self.n_neg < 0:
            bad("n_pos and n_neg must be >= 0")
        if self.n_pos == 0 and self.n_neg == 0 and not self.boxes:
            bad("nothing to generate (n_pos = n_neg = 0 and no boxes)")
        if self.box_jitter_mm < 0:
            bad("box_jitter_mm must be >= 0")
        if not (0 <= self.shell_inner_mm < self.shell_outer_mm):
            bad("need 0 <= shell_inner_mm < shell_outer_mm")
        if not (0 < self.hotspot_percentile < 100):
            bad("hotspot_percentile must be in (0, 100)")
        if self.connectivity not in (6, 18, 26):
            bad("connectivity must be 6, 18 or 26")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# helpers on (z, y, x) arrays; indices are converted to SimpleITK (i, j, k) at the end


def _crop_slices(bbox_ijk, pad_vox: Sequence[int], shape_zyx) -> tuple[slice, slice, slice]:
    (i0, j0, k0), (i1, j1, k1) = bbox_ijk
    lo = (k0, j0, i0)
    hi = (k1, j1, i1)
    return tuple(
        slice(max(0, lo[a] - int(pad_vox[a])), min(shape_zyx[a], hi[a] + int(pad_vox[a]) + 1)) for a in range(3)
    )


def _center_points(sub_mask: np.ndarray, spacing_zyx, n: int) -> np.ndarray:
    """Up to ``n`` interior points (z, y, x, local to ``sub_mask``); see the module docstring."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(sub_mask, 1)  # the crop (or image) border is a boundary
    depth = distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    vox = np.argwhere(sub_mask)  # raster order
    d = depth[sub_mask]
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    chosen: list[int] = []
    score = d.copy()
    for _ in range(min(n, len(vox))):
        best = score.max()
        tied = np.flatnonzero(score >= best - 1e-9)
        if len(tied) > 1:
            pos = vox[tied] * sp
            tied = tied[[int(np.argmin(((pos - pos.mean(0)) ** 2).sum(1)))]]
        c = int(tied[0])
        chosen.append(c)
        dist_c = np.sqrt((((vox - vox[c]) * sp) ** 2).sum(1))
        score = np.minimum(score, dist_c)
        score[chosen] = -1.0
    return vox[chosen]


def _pick(rng: np.random.Generator, n_candidates: int, n: int) -> np.ndarray:
    n = min(n, n_candidates)
    return np.sort(rng.choice(n_candidates, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)


def _to_ijk(zyx: np.ndarray, offset_zyx=(0, 0, 0)) -> list[tuple[int, int, int]]:
    zyx = np.asarray(zyx, dtype=np.int64).reshape(-1, 3) + np.asarray(offset_zyx, dtype=np.int64)
    return [(int(x), int(y), int(z)) for z, y, x in zyx]


def _points(ref: ImageRef, ijk: list[tuple[int, int, int]], label: int, kind: str) -> list[PointPrompt]:
    if not ijk:
        return []
    world = ref.index_to_world(np.asarray(ijk, dtype=np.float64))
    # world mm rounded to the prompt files' 6 decimals: a saved prompt reads back identical, so
    # prompts made here and prompts read from a file give the same crops (bit for bit)
    return [
        PointPrompt(world=tuple(round(float(v), 6) for v in w), index=tuple(float(v) for v in i), label=label,
                    kind=kind)
        for w, i in zip(world, ijk)
    ]


def _check_same_grid(label, pet, where):
    ref_l, ref_p = ImageRef.from_image(label), ImageRef.from_image(pet)
    if not ref_l.same_grid(ref_p):
        raise InputError(
            where,
            f"label grid (size {ref_l.size}, spacing {ref_l.spacing}, origin {ref_l.origin}) differs from "
            f"PET grid (size {ref_p.size}, spacing {ref_p.spacing}, origin {ref_p.origin}); resample the label first",
        )


# ----------------------------------------------------------------------------------------------


def generate_prompts(
    label: "sitk.Image",
    pet: "sitk.Image | None" = None,
    cfg: PromptConfig | None = None,
    image_path: "str | os.PathLike | None" = None,
    case_id: str | None = None,
) -> CasePrompts:
    """Prompts for every lesion of ``label`` (on the PET grid).

    ``image_path`` is the PET file the prompts refer to (its SHA-256 is recorded); the grid is
    taken from ``pet`` (or ``label`` when there is no PET: ``suvmax`` and ``hotspot`` need PET).
    Raises :class:`PromptError` when the label has no lesion.
    """
    import SimpleITK as sitk

    cfg = (cfg or PromptConfig()).validate()
    where = os.fspath(image_path) if image_path is not None else case_id
    if pet is None and (cfg.strategy == "suvmax" or (cfg.n_neg > 0 and cfg.neg_strategy == "hotspot")):
        raise ConfigError(where, f"strategy {cfg.strategy!r}/{cfg.neg_strategy!r} needs the PET image")
    if pet is not None:
        _check_same_grid(label, pet, where)
    grid = pet if pet is not None else label
    ref = ImageRef.from_image(
        grid,
        path=os.fspath(image_path) if image_path is not None else None,
        sha256=sha256_file(image_path) if image_path is not None else None,
    )
    if case_id is None:
        case_id = _case_id_from_path(image_path) if image_path is not None else "case"

    lesions = find_lesions(label, pet, connectivity=cfg.connectivity)
    if not lesions:
        raise PromptError(where, "the label has no lesion (empty mask); nothing to prompt")

    lab_arr = sitk.GetArrayViewFromImage(label)
    labels, _ = label_components(lab_arr, cfg.connectivity)
    any_lesion = labels > 0
    pet_arr = np.asarray(sitk.GetArrayViewFromImage(pet), dtype=np.float32) if pet is not None else None
    spacing_zyx = tuple(reversed(ref.spacing))

    hot = None
    if cfg.n_neg > 0 and cfg.neg_strategy == "hotspot":
        hot = _hotspot_candidates(pet_arr, any_lesion, labels, ref, cfg)

    out = [_lesion_prompts(les, labels, any_lesion, pet_arr, spacing_zyx, ref, cfg, hot) for les in lesions]

    return CasePrompts(case_id=case_id, image=ref, lesions=out, generator={"name": "sam-l1dfl", **cfg.to_dict()})


def _lesion_prompts(les, labels: np.ndarray, any_lesion: np.ndarray, pet_arr: "np.ndarray | None",
                    spacing_zyx: tuple, ref: ImageRef, cfg: PromptConfig, hot) -> LesionPrompts:
    """One lesion's points (positive, then negative), box and info; its own random stream
    ``(seed, lesion id)``."""
    shape = labels.shape
    rng = np.random.default_rng([int(cfg.seed), int(les.id)])
    sl = _crop_slices(les.bbox_index, (1, 1, 1), shape)
    off = tuple(s.start for s in sl)
    sub = labels[sl] == les.id
    points: list[PointPrompt] = []
    if cfg.n_pos:
        if cfg.strategy == "center":
            pos = _center_points(sub, spacing_zyx, cfg.n_pos)
        elif cfg.strategy == "suvmax":
            vox = np.argwhere(sub)
            vals = pet_arr[sl][sub]
            order = np.argsort(-vals, kind="stable")[: cfg.n_pos]
            pos = vox[order]
        else:
            vox = np.argwhere(sub)
            pos = vox[_pick(rng, len(vox), cfg.n_pos)]
        points += _points(ref, _to_ijk(pos, off), POSITIVE, cfg.strategy)
    if cfg.n_neg:
        if cfg.neg_strategy == "shell":
            neg = _shell_negatives(labels, any_lesion, les, ref, cfg, rng)
        else:
            neg = _hotspot_negatives(hot, les, cfg, rng)
        points += _points(ref, neg, NEGATIVE, cfg.neg_strategy)
    boxes: list[BoxPrompt] = []
    if cfg.boxes:
        boxes.append(_lesion_box(ref, les, cfg, rng))
    info = {
        "voxel_count": les.voxel_count,
        "volume_ml": round(les.volume_ml, 6),
        "centroid_world": [round(v, 6) for v in les.centroid_world],
        "bbox_index": [list(les.bbox_index[0]), list(les.bbox_index[1])],
    }
    if les.suvmax is not None:
        info["suvmax"] = round(les.suvmax, 6)
        info["suvmax_world"] = [round(v, 6) for v in les.suvmax_world]
    return LesionPrompts(lesion_id=les.id, points=points, boxes=boxes, info=info)


def _case_id_from_path(path) -> str:
    p = Path(path)
    name = p.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    # autoPET: <case>/SUV.nii.gz -> the folder names the case
    return p.parent.name if name.upper() in {"SUV", "PET", "CTRES", "CT", "SEG"} else name


def _shell_negatives(labels, any_lesion, les: Lesion, ref: ImageRef, cfg: PromptConfig, rng) -> list:
    from scipy.ndimage import distance_transform_edt

    spacing_zyx = np.asarray(tuple(reversed(ref.spacing)))
    outer = cfg.shell_outer_mm
    max_extent = float(np.max(np.asarray(labels.shape) * spacing_zyx))
    while True:
        pad = np.ceil(outer / spacing_zyx).astype(int) + 1
        sl = _crop_slices(les.bbox_index, pad, labels.shape)
        this = labels[sl] == les.id
        dist = distance_transform_edt(~this, sampling=spacing_zyx)
        cand = (dist > cfg.shell_inner_mm) & (dist <= outer) & ~any_lesion[sl]
        vox = np.argwhere(cand)
        if len(vox) or outer > 2 * max_extent:
            break
        outer *= 2.0
    if not len(vox):
        return []
    return _to_ijk(vox[_pick(rng, len(vox), cfg.n_neg)], tuple(s.start for s in sl))


def _hotspot_candidates(pet_arr, any_lesion, labels, ref: ImageRef, cfg: PromptConfig):
    """Hot non-lesion voxels farther than ``neg_min_dist_mm`` from every lesion: (zyx, world)."""
    from scipy.spatial import cKDTree

    body = (pet_arr > 0) & ~any_lesion
    if not body.any():
        return np.zeros((0, 3), np.int64), np.zeros((0, 3))
    thr = np.percentile(pet_arr[body], cfg.hotspot_percentile)
    vox = np.argwhere(body & (pet_arr >= thr))
    world = ref.index_to_world(vox[:, ::-1].astype(np.float64))
    les_world = ref.index_to_world(np.argwhere(any_lesion)[:, ::-1].astype(np.float64))
    d, _ = cKDTree(les_world).query(world, k=1)
    keep = d > cfg.neg_min_dist_mm
    return vox[keep], world[keep]


def _hotspot_negatives(hot, les: Lesion, cfg: PromptConfig, rng) -> list:
    vox, world = hot
    if not len(vox):
        return []
    d = np.sqrt(((world - np.asarray(les.centroid_world)) ** 2).sum(1))
    near = np.flatnonzero(d <= cfg.hotspot_radius_mm)
    if len(near):
        chosen = near[_pick(rng, len(near), cfg.n_neg)]
    else:
        chosen = np.sort(np.argsort(d, kind="stable")[: cfg.n_neg])
    return _to_ijk(vox[chosen])


def _lesion_box(ref: ImageRef, les: Lesion, cfg: PromptConfig, rng) -> BoxPrompt:
    lo = np.asarray(les.bbox_index[0], dtype=np.float64) - 0.5
    hi = np.asarray(les.bbox_index[1], dtype=np.float64) + 0.5
    kind = "tight"
    if cfg.box_jitter_mm > 0:
        sp = np.asarray(ref.spacing)
        j = rng.uniform(-cfg.box_jitter_mm, cfg.box_jitter_mm, size=(2, 3)) / sp
        new_lo, new_hi = lo + j[0], hi + j[1]
        # never collapse below one voxel: keep at least one voxel width around the centre
        mid = (new_lo + new_hi) / 2.0
        new_lo = np.minimum(new_lo, mid - 0.5)
        new_hi = np.maximum(new_hi, mid + 0.5)
        lo, hi, kind = new_lo, new_hi, "jittered"
    return box_from_index_bounds(ref, lo, hi, kind=kind)


__all__ = ["NEG_STRATEGIES", "STRATEGIES", "PromptConfig", "generate_prompts"]
