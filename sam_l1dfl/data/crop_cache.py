"""The on-disk cache of :class:`~sam_l1dfl.data.dataset.LesionCropDataset`: one index file per case
(its crop plan) and one compressed ``.npz`` per crop, each named by the SHA-256 of the case's files,
the intensity config, the lesion settings and what is cached.  A corrupt entry reads as missing
(it is rebuilt); entries are written atomically and never unpickled."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from sam_l1dfl.data.io import CaseRecord
from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.io_utils import atomic_path, sha256_file, write_json_atomic

CACHE_VERSION = 1


class CropCache:
    """Where the crops of a dataset are cached (``cache_dir`` None: nowhere, every path is None)."""

    def __init__(self, cache_dir: "Path | None", cfg: IntensityConfig, connectivity: int,
                 cluster_mm: "float | None", margin: int):
        self.cache_dir, self.cfg, self.connectivity, self.cluster_mm, self.margin = (
            cache_dir, cfg, connectivity, cluster_mm, margin)
        self._hashes: dict[str, dict[str, str]] = {}

    def _file_hashes(self, rec: CaseRecord) -> dict[str, str]:
        if rec.case_id not in self._hashes:
            h = {"pet": sha256_file(rec.pet), "label": sha256_file(rec.label)}
            if self.cfg.needs_ct:
                h["ct"] = sha256_file(rec.ct)
            self._hashes[rec.case_id] = h
        return self._hashes[rec.case_id]

    def _key(self, rec: CaseRecord, extra: Mapping[str, Any]) -> str:
        payload = {"v": CACHE_VERSION, "files": self._file_hashes(rec), "cfg": self.cfg.to_dict(),
                   "connectivity": self.connectivity, "cluster_mm": self.cluster_mm, **extra}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    # -------------------------------------------------------------- the crop plan of a case
    def index_path(self, rec: CaseRecord) -> "Path | None":
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"index-{self._key(rec, {'what': 'index', 'margin': self.margin})}.json"

    @staticmethod
    def read_index(path: "Path | None", parse: Callable[[dict], Any]) -> "list | None":
        """The cached crop plan, each entry read by ``parse`` (``CropSpec.from_dict``); None: not
        cached, or unreadable."""
        if path is None or not path.is_file():
            return None
        try:
            return [parse(d) for d in json.loads(path.read_text())["crops"]]
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def write_index(path: "Path | None", case_id: str, specs: list) -> None:
        if path is not None:
            write_json_atomic(path, {"case_id": case_id, "crops": [s.to_dict() for s in specs]})

    # -------------------------------------------------------------- the arrays of a crop
    def crop_path(self, rec: CaseRecord, spec) -> "Path | None":
        if self.cache_dir is None:
            return None
        key = self._key(rec, {"what": "crop", "margin": self.margin, "crop": spec.to_dict()})
        return self.cache_dir / spec.case_id[:64].replace(os.sep, "_") / f"crop-{key[:32]}.npz"

    @staticmethod
    def read_crop(path: "Path | None") -> "dict[str, np.ndarray] | None":
        """The cached arrays of a crop (None: not cached, or a corrupt entry to rebuild)."""
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("raw", "target", "all", "bbox")}
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def write_crop(path: "Path | None", arrays: dict[str, np.ndarray]) -> None:
        if path is not None:
            with atomic_path(path, suffix=".npz") as tmp:
                np.savez_compressed(tmp, **arrays)
