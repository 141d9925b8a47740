"""Prompt data types: points and boxes in world LPS millimetres, tied to one image grid.

World coordinates are authoritative.  Voxel indices are SimpleITK ``(i, j, k)`` continuous indices
of the referenced (PET) image — voxel centres are integers — kept for convenience and recomputed
from the world position and the stored image geometry whenever prompts are built or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

FORMAT = "sam-l1dfl-prompts"
VERSION = 1
POSITIVE, NEGATIVE = 1, 0


def _tuple(v: Sequence[float], n: int, cast=float) -> tuple:
    v = tuple(cast(x) for x in v)
    if len(v) != n:
        raise ValueError(f"expected {n} values, got {len(v)}")
    return v


@dataclass(frozen=True)
class ImageRef:
    """The image the prompts belong to: where it was, its checksum and its voxel grid."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns = index axes in LPS (SimpleITK)
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "size", _tuple(self.size, 3, int))
        object.__setattr__(self, "spacing", _tuple(self.spacing, 3))
        object.__setattr__(self, "origin", _tuple(self.origin, 3))
        object.__setattr__(self, "direction", _tuple(self.direction, 9))

    @classmethod
    def from_image(cls, image, path: str | None = None, sha256: str | None = None) -> "ImageRef":
        return cls(
            size=image.GetSize(),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            path=path,
            sha256=sha256,
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_world(self, index) -> np.ndarray:
        """Continuous (i, j, k) index (shape (3,) or (N, 3)) -> LPS mm, as SimpleITK does."""
        idx = np.asarray(index, dtype=np.float64)
        m = self.direction_matrix * np.asarray(self.spacing)[None, :]
        return idx @ m.T + np.asarray(self.origin)

    def world_to_index(self, world) -> np.ndarray:
        """LPS mm (shape (3,) or (N, 3)) -> continuous (i, j, k) index."""
        w = np.asarray(world, dtype=np.float64) - np.asarray(self.origin)
        m = self.direction_matrix * np.asarray(self.spacing)[None, :]
        return w @ np.linalg.inv(m).T

    def contains_index(self, index, tol: float = 0.5) -> bool:
        """True when a continuous index lies inside the image (voxel extents, ±``tol`` voxel)."""
        idx = np.asarray(index, dtype=np.float64)
        return bool(np.all(idx >= -tol) and np.all(idx <= np.asarray(self.size) - 1 + tol))

    def same_grid(self, other: "ImageRef", tol: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }


@dataclass(frozen=True)
class PointPrompt:
    """One click. ``label`` is 1 (positive, on the lesion) or 0 (negative, background)."""

    world: tuple[float, float, float]
    index: tuple[float, float, float]
    label: int
    kind: str = ""  # how it was made: center, suvmax, random, shell, hotspot, slicer, ...

    @property
    def positive(self) -> bool:
        return self.label == POSITIVE

    def to_dict(self) -> dict[str, Any]:
        return {"world": _round(self.world), "index": _round(self.index), "label": self.label, "kind": self.kind}


@dataclass(frozen=True)
class BoxPrompt:
    """An oriented 3D box: centre (LPS mm), edge lengths (mm) along its axes, and its axes.

    ``orientation`` is a row-major 3x3 matrix whose *columns* are the box axes in LPS (the
    SimpleITK direction convention, and the convention of Slicer's ROI ``orientation``).  A box
    made from a lesion uses the image direction, so it is the tight voxel box in index space.
    ``index_min``/``index_max`` is the axis-aligned envelope of the box in continuous voxel index
    (voxel centres are integers, so the tight box over voxels ``a..b`` spans ``a-0.5 .. b+0.5``).
    """

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    orientation: tuple[float, ...]
    index_min: tuple[float, float, float]
    index_max: tuple[float, float, float]
    kind: str = "tight"

    def corners_world(self) -> np.ndarray:
        """The 8 corners in LPS mm, shape (8, 3)."""
        r = np.asarray(self.orientation, dtype=np.float64).reshape(3, 3)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return np.asarray(self.center) + (signs * np.asarray(self.size) / 2.0) @ r.T

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": _round(self.center),
            "size": _round(self.size),
            "orientation": _round(self.orientation),
            "index_min": _round(self.index_min),
            "index_max": _round(self.index_max),
            "kind": self.kind,
        }


@dataclass
class LesionPrompts:
    """The prompts of one lesion (``info``: voxel_count, volume_ml, suvmax, ... when known)."""

    lesion_id: int
    points: list[PointPrompt] = field(default_factory=list)
    boxes: list[BoxPrompt] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_points(self) -> list[PointPrompt]:
        return [p for p in self.points if p.positive]

    @property
    def negative_points(self) -> list[PointPrompt]:
        return [p for p in self.points if not p.positive]


@dataclass
class CasePrompts:
    """All prompts of one case, tied to one image grid."""

    case_id: str
    image: ImageRef
    lesions: list[LesionPrompts]
    generator: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "case_id": self.case_id,
            "coordinate_system": "LPS",
            "units": "mm",
            "index_order": "ijk",
            "image": self.image.to_dict(),
            "generator": self.generator,
            "lesions": [
                {
                    "id": les.lesion_id,
                    **({"info": les.info} if les.info else {}),
                    "points": [p.to_dict() for p in les.points],
                    "boxes": [b.to_dict() for b in les.boxes],
                }
                for les in self.lesions
            ],
        }

    def equivalent(self, other: "CasePrompts", tol_mm: float = 1e-4) -> bool:
        """Same lesions, same points (position, label) and boxes within ``tol_mm``."""
        if [l.lesion_id for l in self.lesions] != [l.lesion_id for l in other.lesions]:
            return False
        for a, b in zip(self.lesions, other.lesions):
            if len(a.points) != len(b.points) or len(a.boxes) != len(b.boxes):
                return False
            for p, q in zip(a.points, b.points):
                if p.label != q.label or not np.allclose(p.world, q.world, atol=tol_mm, rtol=0):
                    return False
            for p, q in zip(a.boxes, b.boxes):
                if not np.allclose(p.corners_world(), q.corners_world(), atol=tol_mm, rtol=0):
                    return False
        return True


def _round(v, nd: int = 6) -> list[float]:
    out = []
    for x in v:
        r = round(float(x), nd)
        out.append(int(r) if r.is_integer() and abs(r) < 2**53 else r)
    return out


def box_from_index_bounds(image: ImageRef, index_min, index_max, kind: str = "tight") -> BoxPrompt:
    """The box spanning continuous index bounds ``index_min..index_max`` (faces), oriented like the image."""
    lo = np.asarray(index_min, dtype=np.float64)
    hi = np.asarray(index_max, dtype=np.float64)
    center = image.index_to_world((lo + hi) / 2.0)
    size = (hi - lo) * np.asarray(image.spacing)
    return BoxPrompt(
        center=tuple(float(v) for v in center),
        size=tuple(float(v) for v in size),
        orientation=tuple(image.direction),
        index_min=tuple(float(v) for v in lo),
        index_max=tuple(float(v) for v in hi),
        kind=kind,
    )


def box_index_envelope(image: ImageRef, box: BoxPrompt) -> tuple[tuple[float, ...], tuple[float, ...]]:
    idx = image.world_to_index(box.corners_world())
    return tuple(float(v) for v in idx.min(0)), tuple(float(v) for v in idx.max(0))
