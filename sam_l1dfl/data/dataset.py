"""Lesion-crop dataset for training: one network crop per lesion (or per cluster of nearby lesions).

* Lesions are the connected components of each label (:func:`sam_l1dfl.data.lesions.find_lesions`,
  18-connectivity by default).  No size threshold: a 2-voxel lesion gets its crop.
* Each crop is centred on the bounding-box centre of its lesion(s) (as the official inference
  centres on the label), on the RAS+ network grid of :mod:`sam_l1dfl.data.geometry`, padded
  outside the image (PET 0, CT -1024 HU).
* Training jitter (``jitter_mm``) shifts the crop by whole network voxels, never pushing the
  target lesion out of the crop.  To make jitter free, a crop enlarged by the jitter margin is
  resampled once and cached; a jittered crop is a slice of it, normalised afterwards (the PET
  z-score is over voxels > 0 of the final crop, as in SAM-Med3D).
* Cache: one ``.npz`` per crop (no pickle), named by the SHA-256 of the PET/CT/label file contents,
  the :class:`IntensityConfig`, the connectivity, clustering, margin and the crop itself; an index
  file per case holds its crop list.  A second epoch or run reads these instead of resampling.
  Entries are zip-deflated (``np.savez_compressed``): the source-intensity float32 crop is stored
  losslessly, so training is bit-identical to an uncached run; a 128³ PET crop and its two masks
  take 5.9-7.3 MB instead of 12.6 MB (synthetic cases; reading one costs ~60 ms more).  Uncompressed entries written by earlier versions are read
  as they are (``np.load`` reads both; the content is the same, so the key is unchanged).

Items are dicts:

``image``           float32 (C, N, N, N) normalised network input
``label``           uint8 (1, N, N, N): the target lesion(s) of this crop
``label_all``       uint8 (1, N, N, N): every lesion voxel in the crop (for negative prompts)
``case_id``         str
``lesion_id``       str: ``"3"``, or ``"3+5"`` for a cluster (ids from ``find_lesions``)
``crop_origin_lps`` float64 (3,), ``crop_spacing`` float64 (3,), ``crop_size`` int64 (3,):
                    :meth:`CropGeometry.from_arrays` rebuilds the grid
``centroid_index``  float32 (3,): mean voxel index of ``label`` in the crop (tensor dims 2-4)
``target_voxels``   int64: number of ``label`` voxels in the crop
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from sam_l1dfl.data.crop_cache import CACHE_VERSION, CropCache
from sam_l1dfl.data.geometry import CropGeometry, image_index_to_world, resample_to_crop
from sam_l1dfl.data.io import Case, CaseRecord, load_case
from sam_l1dfl.data.lesions import find_lesions, label_components
from sam_l1dfl.data.preprocess import IntensityConfig, normalize_channels, raw_crop
from sam_l1dfl.errors import InputError
from sam_l1dfl.progress import progress as show_progress

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

try:  # torch is always installed; keep the import cheap to reason about
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object



@dataclass(frozen=True)
class CropSpec:
    """One crop to build: which case, which lesion(s), where (LPS centre)."""

    case_id: str
    lesion_ids: tuple[int, ...]
    center_lps: tuple[float, float, float]

    @property
    def lesion_id(self) -> str:
        return "+".join(str(i) for i in self.lesion_ids)

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "lesion_ids": list(self.lesion_ids), "center_lps": list(self.center_lps)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CropSpec":
        return cls(str(d["case_id"]), tuple(int(i) for i in d["lesion_ids"]), tuple(float(v) for v in d["center_lps"]))


# ---------------------------------------------------------------------- lesion crops
def lesion_world_box(label: "sitk.Image", lesion) -> tuple[np.ndarray, np.ndarray]:
    """World-aligned LPS box around the voxel centres of the lesion's bounding-box corners."""
    lo, hi = np.asarray(lesion.bbox_index[0], float), np.asarray(lesion.bbox_index[1], float)
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)])
    w = image_index_to_world(label, corners)
    return w.min(axis=0), w.max(axis=0)


def plan_crops(case_id: str, label: "sitk.Image", lesions: Sequence, cfg: IntensityConfig,
               cluster_mm: float | None = None, margin_vox: int = 0) -> list[CropSpec]:
    """One :class:`CropSpec` per lesion, or per cluster of lesions whose centroids are within
    ``cluster_mm`` (single linkage), as long as the cluster's box fits the crop (minus margin)."""
    if not lesions:
        return []
    boxes = [lesion_world_box(label, les) for les in lesions]
    groups: list[list[int]] = [[i] for i in range(len(lesions))]
    if cluster_mm and len(lesions) > 1:
        from scipy.sparse.csgraph import connected_components
        from scipy.spatial import cKDTree
        import scipy.sparse as sp

        pts = np.array([les.centroid_world for les in lesions], dtype=float)
        pairs = np.array(sorted(cKDTree(pts).query_pairs(float(cluster_mm))), dtype=np.int64).reshape(-1, 2)
        adj = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts),) * 2)
        n, comp = connected_components(adj, directed=False)
        fov = cfg.crop_size * cfg.spacing - 2 * (margin_vox + 1) * cfg.spacing
        groups = []
        for g in range(n):
            members = [int(i) for i in np.flatnonzero(comp == g)]
            lo = np.min([boxes[i][0] for i in members], axis=0)
            hi = np.max([boxes[i][1] for i in members], axis=0)
            if len(members) > 1 and np.any(hi - lo > fov):
                groups += [[i] for i in members]  # too spread out for one crop: one crop each
            else:
                groups.append(members)
        groups.sort(key=lambda m: min(m))
    specs = []
    for members in groups:
        lo = np.min([boxes[i][0] for i in members], axis=0)
        hi = np.max([boxes[i][1] for i in members], axis=0)
        c = (lo + hi) / 2.0
        specs.append(CropSpec(case_id, tuple(int(lesions[i].id) for i in members), tuple(float(v) for v in c)))
    return specs


def crop_components(components: "sitk.Image", comp_arr: np.ndarray, geom: CropGeometry,
                    target_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(target mask, all-lesions mask) on ``geom``, uint8 (X, Y, Z).

    Nearest-neighbour resampling of the component image, plus, for each target lesion, the crop
    voxel containing each of its original voxel centres, so no target lesion vanishes however
    small it is.
    """
    c = resample_to_crop(components, geom, "nearest", 0)
    ids = np.asarray(sorted(set(int(i) for i in target_ids)))
    target = np.isin(c, ids)
    allm = c > 0
    zyx = np.argwhere(np.isin(comp_arr, ids)) if ids.size else np.zeros((0, 3), np.int64)
    if len(zyx):
        idx = np.rint(geom.world_to_index(image_index_to_world(components, zyx[:, ::-1].astype(float))))
        idx = idx.astype(np.int64)
        idx = idx[np.all((idx >= 0) & (idx < np.asarray(geom.size)), axis=1)]
        target[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        allm[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return target.astype(np.uint8), allm.astype(np.uint8)


# ---------------------------------------------------------------------- dataset
class LesionCropDataset(_TorchDataset):
    """Lesion-centred crops of labelled cases, cached on disk.

    ``cases``: :class:`CaseRecord` objects, dicts with ``pet``/``ct``/``label``, or a
    :class:`~sam_l1dfl.data.discovery.DiscoveryReport`.  Cases without lesions contribute no crop
    and are listed in :attr:`notes`.  ``train=True`` with ``jitter_mm > 0`` shifts each crop
    randomly (torch's RNG, so DataLoader workers differ and ``torch.manual_seed`` reproduces it).
    """

    def __init__(self, cases, cfg: IntensityConfig | None = None, cache_dir: "str | os.PathLike | None" = None,
                 train: bool = False, jitter_mm: float = 0.0, cluster_mm: float | None = None,
                 connectivity: int = 18, progress: bool = True):
        self.cfg = cfg or IntensityConfig()
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.train = bool(train)
        self.jitter_mm = float(jitter_mm)
        if self.jitter_mm < 0:
            raise ValueError(f"jitter_mm must be >= 0, got {jitter_mm}")
        self.margin = int(math.ceil(self.jitter_mm / self.cfg.spacing - 1e-9)) if self.jitter_mm > 0 else 0
        self.cluster_mm = cluster_mm
        self.connectivity = int(connectivity)
        self.progress = progress
        self.stats = {"crops_built": 0, "crops_from_cache": 0, "cases_loaded": 0, "index_from_cache": 0}
        self.notes: list[str] = []
        records = getattr(cases, "cases", cases)
        self.records = {r.case_id: r for r in (CaseRecord.coerce(x) for x in records)}
        for r in self.records.values():
            if r.label is None:
                raise InputError(r.pet, f"case {r.case_id} has no label; the lesion-crop dataset needs labels")
            if self.cfg.needs_ct and r.ct is None:
                raise InputError(r.pet, f"case {r.case_id} has no CT but input_mode is {self.cfg.input_mode!r}")
        self.cache = CropCache(self.cache_dir, self.cfg, self.connectivity, self.cluster_mm, self.margin)
        self._memo: tuple[str, Case, Any, np.ndarray] | None = None
        self.specs: list[CropSpec] = self._build_index()

    # -------------------------------------------------------------- index
    def _build_index(self) -> list[CropSpec]:
        specs: list[CropSpec] = []
        it = show_progress(self.records.values(), desc="indexing lesions", unit="case", enabled=self.progress)
        for rec in it:
            path = self.cache.index_path(rec)
            cached = self.cache.read_index(path, CropSpec.from_dict)
            if cached is not None:
                self.stats["index_from_cache"] += 1
            if cached is None:
                case, _, _ = self._load(rec)

                lesions = find_lesions(case.label, case.pet, self.connectivity)
                cached = plan_crops(rec.case_id, case.label, lesions, self.cfg, self.cluster_mm, self.margin)
                self.cache.write_index(path, rec.case_id, cached)
            if not cached:
                self.notes.append(f"{rec.case_id}: no lesions in {rec.label} (no crops)")
            specs += cached
        return specs

    # -------------------------------------------------------------- building crops
    def _load(self, rec: CaseRecord):
        if self._memo is not None and self._memo[0] == rec.case_id:
            return self._memo[1], self._memo[2], self._memo[3]
        import SimpleITK as sitk

        case = load_case(rec, load_ct=self.cfg.needs_ct)
        self.stats["cases_loaded"] += 1
        comp_arr, _ = label_components(sitk.GetArrayViewFromImage(case.label), self.connectivity)
        comp_img = sitk.GetImageFromArray(comp_arr)
        comp_img.CopyInformation(case.label)
        self._memo = (rec.case_id, case, comp_img, comp_arr)
        return case, comp_img, comp_arr

    def _geometry(self, spec: CropSpec) -> CropGeometry:
        return self.cfg.geometry_at(spec.center_lps)

    def _build(self, spec: CropSpec) -> dict[str, np.ndarray]:
        case, comp_img, comp_arr = self._load(self.records[spec.case_id])
        big = self._geometry(spec).enlarged(self.margin)
        raw = raw_crop(case, big, self.cfg)
        target, allm = crop_components(comp_img, comp_arr, big, spec.lesion_ids)
        self.stats["crops_built"] += 1
        nz = np.argwhere(target)
        bbox = np.stack([nz.min(0), nz.max(0)]) if len(nz) else np.full((2, 3), -1, np.int64)
        return {"raw": raw, "target": target, "all": allm, "bbox": bbox.astype(np.int64)}

    def _get_arrays(self, spec: CropSpec) -> dict[str, np.ndarray]:
        path = self.cache.crop_path(self.records[spec.case_id], spec)
        out = self.cache.read_crop(path)  # None for a corrupt entry too: rebuilt
        if out is not None:
            self.stats["crops_from_cache"] += 1
            return out
        arrays = self._build(spec)
        self.cache.write_crop(path, arrays)
        return arrays

    def precompute(self) -> None:
        """Build every missing cache entry, case by case (each case read once), with a progress bar."""
        order = sorted(range(len(self.specs)), key=lambda i: self.specs[i].case_id)
        for i in show_progress(order, desc="caching crops", unit="crop", enabled=self.progress):
            self._get_arrays(self.specs[i])
        self._memo = None

    # -------------------------------------------------------------- Dataset API
    def __len__(self) -> int:
        return len(self.specs)

    def _shift(self, bbox: np.ndarray) -> np.ndarray:
        m, n = self.margin, self.cfg.crop_size
        if not (self.train and m > 0):
            return np.zeros(3, np.int64)
        import torch

        lo = np.full(3, -m)
        hi = np.full(3, m)
        if bbox[0, 0] >= 0:  # keep the target inside the window [m + s, m + s + n)
            lo = np.maximum(lo, bbox[1] - n + 1 - m)
            hi = np.minimum(hi, bbox[0] - m)
            bad = lo > hi
            lo[bad] = 0
            hi[bad] = 0
        return np.array([int(torch.randint(int(a), int(b) + 1, (1,))) for a, b in zip(lo, hi)], np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        spec = self.specs[index]
        arr = self._get_arrays(spec)
        n = self.cfg.crop_size
        s = self._shift(arr["bbox"])
        a = s + self.margin
        sl = (slice(a[0], a[0] + n), slice(a[1], a[1] + n), slice(a[2], a[2] + n))
        raw = arr["raw"][(slice(None),) + sl]
        target = np.ascontiguousarray(arr["target"][sl])
        geom = self._geometry(spec).shifted(s)
        nz = np.argwhere(target)
        centroid = nz.mean(0) if len(nz) else np.full(3, np.nan)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(normalize_channels(raw, self.cfg))),
            "label": torch.from_numpy(target[None]),
            "label_all": torch.from_numpy(np.ascontiguousarray(arr["all"][sl])[None]),
            "case_id": spec.case_id,
            "lesion_id": spec.lesion_id,
            "crop_origin_lps": np.asarray(geom.origin_lps, dtype=np.float64),
            "crop_spacing": np.asarray(geom.spacing, dtype=np.float64),
            "crop_size": np.asarray(geom.size, dtype=np.int64),
            "centroid_index": centroid.astype(np.float32),
            "target_voxels": int(len(nz)),
        }


__all__ = ["CACHE_VERSION", "CropSpec", "LesionCropDataset", "crop_components", "lesion_world_box", "plan_crops"]
