"""Prompt data types: points and boxes in world LPS millimetres, tied to one image grid.

World coordinates are authoritative.  Voxel indices are SimpleITK ``(i, j, k)`` continuous indices
of the referenced (PET) image — voxel centres are integers — kept for convenience and recomputed
from the world position and the stored image geometry whenever prompts are built or loaded.
:class:`ImageRef` is a :class:`sam_l1dfl.data.geometry.Grid` (the package's one grid type), so
index <-> world is the grid's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_l1dfl.data.geometry import Grid

FORMAT = "sam-l1dfl-prompts"
VERSION = 1
POSITIVE, NEGATIVE = 1, 0


@dataclass(frozen=True)
class ImageRef(Grid):
    """The image the prompts belong to: its voxel :class:`~sam_l1dfl.data.geometry.Grid` (size,
    spacing, origin, direction; index <-> world) plus where it was and its checksum."""

    path: str | None = None
    sha256: str | None = None

    @classmethod
    def from_image(cls, image, path: str | None = None, sha256: str | None = None) -> "ImageRef":
        return super().from_image(image, path=path, sha256=sha256)

    def same_grid(self, other: "ImageRef", tol: float = 1e-3) -> bool:
        """Whether a prompt file's stored grid matches an image's (prompt-file tolerance: every
        number within ``tol`` + 1e-5 relative)."""
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


def placed_box(image: ImageRef, center, size, orientation, kind: str) -> BoxPrompt:
    """A box read from a file (our JSON or a Slicer ROI), with its index envelope on ``image``.

    Raises ``ValueError`` (the caller names the file) unless it has center[3], size[3] and
    orientation[9] and every size is a positive finite number.
    """
    c, sz, o = (tuple(float(v) for v in x) for x in (center, size, orientation))
    if len(c) != 3 or len(sz) != 3 or len(o) != 9:
        raise ValueError("a box needs center[3], size[3], orientation[9]")
    if not all(np.isfinite(sz)) or min(sz) <= 0:
        raise ValueError(f"box size must be positive, got {list(sz)}")
    box = BoxPrompt(c, sz, o, (0.0,) * 3, (0.0,) * 3, kind)
    lo, hi = box_index_envelope(image, box)
    return BoxPrompt(c, sz, o, lo, hi, kind)


# -- the image reference as stored in a file (our JSON, or the "sam_l1dfl" block of a markups file):
#    the image path is written relative to the file's folder when it can be, and resolved on load
def relative_path(path: str, folder) -> str:
    """``path`` relative to ``folder`` (POSIX separators); unchanged when there is no relative path."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def resolve_path(path: "str | None", folder) -> "str | None":
    """A stored (possibly relative) path, resolved against ``folder``."""
    if not path:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else (Path(folder) / p))


def image_ref_from_dict(d: dict, folder) -> ImageRef:
    """The :class:`ImageRef` of a stored ``image`` entry; its path resolved against ``folder``.

    Raises ``KeyError``/``TypeError``/``ValueError`` on a malformed entry (the caller names the file).
    """
    return ImageRef(
        size=d["size"],
        spacing=d["spacing"],
        origin=d["origin"],
        direction=d["direction"],
        path=resolve_path(d.get("path"), folder),
        sha256=d.get("sha256"),
    )
