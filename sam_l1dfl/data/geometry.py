"""Exact geometry between original images and network crops.

The network-space convention is defined in ``docs/architecture.md`` (and explained in
``docs/conventions.md``); this module implements it:

* A :class:`CropGeometry` is a ``size``³ grid at ``spacing`` mm whose axes are world-aligned RAS+.
  Tensor element ``[c, i, j, k]`` sits at RAS position ``origin_ras + spacing * (i, j, k)``, i.e.
  at LPS position ``origin_lps + diag(-1, -1, 1) @ (spacing * (i, j, k))``.  In SimpleITK terms it
  is an image with that origin, spacing and direction ``diag(-1, -1, 1)``.
* Arrays are ``(x, y, z)``-ordered: ``sitk.GetArrayFromImage(...).transpose(2, 1, 0)``.
* Filling a crop is ONE ``sitk.Resample`` from the original image onto the crop grid; putting a
  crop back is ONE ``sitk.Resample`` from the crop grid onto the original grid.

Points map both ways with plain affine algebra (float64), so world -> index -> world round trips
are exact to rounding (~1e-12 mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: Direction of every network crop in SimpleITK's LPS world (RAS+ axes).
CROP_DIRECTION = np.diag([-1.0, -1.0, 1.0])
#: Model spacing (mm) and crop size (voxels) of the published SAM-Med3D weights.
DEFAULT_SPACING = 1.5
DEFAULT_SIZE = 128

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _vec3(v, name: str, dtype=float) -> np.ndarray:
    a = np.asarray(v, dtype=dtype)
    if a.ndim == 0:
        a = np.full(3, a, dtype=dtype)
    if a.shape != (3,):
        raise ValueError(f"{name} must be a scalar or 3 values, got shape {a.shape}")
    return a


def _points(p) -> tuple[np.ndarray, bool]:
    a = np.asarray(p, dtype=np.float64)
    single = a.ndim == 1
    a = np.atleast_2d(a)
    if a.shape[-1] != 3:
        raise ValueError(f"points must have 3 coordinates in the last axis, got shape {a.shape}")
    return a, single


@dataclass(frozen=True)
class CropGeometry:
    """A world-aligned RAS+ network grid: ``origin_lps`` (mm), ``spacing`` (mm, 3), ``size`` (3)."""

    origin_lps: tuple[float, float, float]
    spacing: tuple[float, float, float] = (DEFAULT_SPACING,) * 3
    size: tuple[int, int, int] = (DEFAULT_SIZE,) * 3

    def __post_init__(self):
        o = _vec3(self.origin_lps, "origin_lps")
        s = _vec3(self.spacing, "spacing")
        n = _vec3(self.size, "size", dtype=np.int64)
        if np.any(s <= 0) or np.any(n <= 0):
            raise ValueError(f"spacing and size must be positive, got {s.tolist()} and {n.tolist()}")
        object.__setattr__(self, "origin_lps", tuple(float(v) for v in o))
        object.__setattr__(self, "spacing", tuple(float(v) for v in s))
        object.__setattr__(self, "size", tuple(int(v) for v in n))

    # ------------------------------------------------------------------ construction
    @classmethod
    def centered_at(
        cls,
        world_lps: Sequence[float],
        spacing: "float | Sequence[float]" = DEFAULT_SPACING,
        size: "int | Sequence[int]" = DEFAULT_SIZE,
    ) -> "CropGeometry":
        """The grid whose geometric centre (index ``(size - 1) / 2``) is ``world_lps``."""
        s = _vec3(spacing, "spacing")
        n = _vec3(size, "size", dtype=np.int64)
        c = _vec3(world_lps, "world_lps")
        origin = c - CROP_DIRECTION @ (s * (n - 1) / 2.0)
        return cls(tuple(origin), tuple(s), tuple(int(v) for v in n))

    @classmethod
    def from_arrays(cls, origin_lps, spacing, size) -> "CropGeometry":
        """Rebuild from the plain arrays stored in dataset items (``crop_origin_lps`` ...)."""
        return cls(tuple(np.asarray(origin_lps, dtype=float).tolist()),
                   tuple(np.asarray(spacing, dtype=float).tolist()),
                   tuple(int(v) for v in np.asarray(size).tolist()))

    # ------------------------------------------------------------------ properties
    @property
    def direction(self) -> np.ndarray:
        return CROP_DIRECTION.copy()

    @property
    def origin_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ np.asarray(self.origin_lps)

    @property
    def center_lps(self) -> np.ndarray:
        return self.index_to_world((np.asarray(self.size) - 1) / 2.0)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = CROP_DIRECTION * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin_lps
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS mm (the NIfTI/TorchIO affine of the tensor)."""
        a = np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()
        return a

    def to_dict(self) -> dict:
        return {"origin_lps": list(self.origin_lps), "spacing": list(self.spacing), "size": list(self.size)}

    def shifted(self, voxels: Sequence[int]) -> "CropGeometry":
        """The same grid moved by whole crop voxels (origin -> index ``voxels``)."""
        return CropGeometry(tuple(self.index_to_world(np.asarray(voxels, dtype=float))), self.spacing, self.size)

    def enlarged(self, margin: int) -> "CropGeometry":
        """A grid ``margin`` voxels larger on every side, sharing this grid's lattice."""
        m = int(margin)
        return CropGeometry(tuple(self.index_to_world(np.full(3, -m, dtype=float))), self.spacing,
                            tuple(int(v) + 2 * m for v in self.size))

    # ------------------------------------------------------------------ points
    def world_to_index(self, world_lps) -> np.ndarray:
        """LPS mm -> float crop index ``(i, j, k)`` (tensor dims 2, 3, 4).  Accepts (3,) or (N, 3)."""
        p, single = _points(world_lps)
        idx = ((p - np.asarray(self.origin_lps)) @ CROP_DIRECTION) / np.asarray(self.spacing)
        return idx[0] if single else idx

    def index_to_world(self, index) -> np.ndarray:
        """Float crop index ``(i, j, k)`` -> LPS mm.  Accepts (3,) or (N, 3)."""
        p, single = _points(index)
        w = np.asarray(self.origin_lps) + (p * np.asarray(self.spacing)) @ CROP_DIRECTION.T
        return w[0] if single else w

    def contains_index(self, index, margin: float = 0.0) -> np.ndarray:
        p, _ = _points(index)
        n = np.asarray(self.size)
        return np.all((p >= -0.5 + margin) & (p <= n - 0.5 - margin), axis=-1)

    # ------------------------------------------------------------------ SimpleITK
    def reference_image(self, pixel_id: "int | None" = None) -> "sitk.Image":
        """An (allocated, zero) SimpleITK image with this grid; prefer :func:`resample_to_crop`."""
        import SimpleITK as sitk

        img = sitk.Image([int(v) for v in self.size], sitk.sitkUInt8 if pixel_id is None else pixel_id)
        self._stamp(img)
        return img

    def _stamp(self, img: "sitk.Image") -> "sitk.Image":
        img.SetOrigin(self.origin_lps)
        img.SetSpacing(self.spacing)
        img.SetDirection(tuple(CROP_DIRECTION.ravel().tolist()))
        return img

    def array_to_image(self, array_xyz: np.ndarray) -> "sitk.Image":
        """Wrap an ``(x, y, z)`` array on this grid as a SimpleITK image (no resampling)."""
        import SimpleITK as sitk

        a = np.asarray(array_xyz)
        if a.shape != self.size:
            raise ValueError(f"array shape {a.shape} does not match crop size {self.size}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))
        return self._stamp(img)


# ---------------------------------------------------------------------- resampling
def _interp(interpolator):
    import SimpleITK as sitk

    if isinstance(interpolator, str):
        table = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                 "bspline": sitk.sitkBSpline, "label_gaussian": sitk.sitkLabelGaussian}
        try:
            return table[interpolator]
        except KeyError:
            raise ValueError(f"unknown interpolator {interpolator!r}; use one of {sorted(table)}") from None
    return interpolator


def resample_to_crop(image: "sitk.Image", geom: CropGeometry, interpolator="linear", default: float = 0.0,
                     output_pixel_type: "int | None" = None) -> np.ndarray:
    """ONE ``sitk.Resample`` of ``image`` onto ``geom``; returns the ``(x, y, z)`` numpy array.

    Points of the crop outside ``image`` get ``default`` (zero padding for PET, -1024 for CT).
    Linear resampling returns float32; nearest keeps the image's pixel type unless
    ``output_pixel_type`` says otherwise.
    """
    import SimpleITK as sitk

    interp = _interp(interpolator)
    if output_pixel_type is None:
        output_pixel_type = sitk.sitkFloat32 if interp != sitk.sitkNearestNeighbor else image.GetPixelID()
    out = sitk.Resample(
        image,
        [int(v) for v in geom.size],
        sitk.Transform(),
        interp,
        geom.origin_lps,
        geom.spacing,
        tuple(CROP_DIRECTION.ravel().tolist()),
        float(default),
        output_pixel_type,
    )
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def crop_to_image(array_xyz: np.ndarray, geom: CropGeometry, reference_image: "sitk.Image",
                  interpolator="linear", default: float = 0.0,
                  output_pixel_type: "int | None" = None) -> "sitk.Image":
    """ONE ``sitk.Resample`` of a crop-space ``(x, y, z)`` array back onto ``reference_image``'s grid.

    Use it for probabilities (linear), then threshold on the original grid.  Original voxels
    outside the crop get ``default``.
    """
    import SimpleITK as sitk

    a = np.asarray(array_xyz)
    if a.dtype == np.float64 or a.dtype == np.float16 or a.dtype == bool:
        a = a.astype(np.float32)
    src = geom.array_to_image(a)
    interp = _interp(interpolator)
    if output_pixel_type is None:
        output_pixel_type = sitk.sitkFloat32 if interp != sitk.sitkNearestNeighbor else src.GetPixelID()
    return sitk.Resample(src, reference_image, sitk.Transform(), interp, float(default), output_pixel_type)


# ---------------------------------------------------------------------- whole-image helpers
def image_matrix(image: "sitk.Image") -> np.ndarray:
    """3x3 matrix ``direction @ diag(spacing)`` mapping SimpleITK (i, j, k) steps to LPS mm."""
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return d * np.asarray(image.GetSpacing(), dtype=float)[None, :]


def image_index_to_world(image: "sitk.Image", index) -> np.ndarray:
    """SimpleITK continuous index ``(i, j, k)`` of ``image`` -> LPS mm.  (3,) or (N, 3)."""
    p, single = _points(index)
    w = np.asarray(image.GetOrigin(), dtype=float) + p @ image_matrix(image).T
    return w[0] if single else w


def image_world_to_index(image: "sitk.Image", world_lps) -> np.ndarray:
    """LPS mm -> SimpleITK continuous index ``(i, j, k)`` of ``image``.  (3,) or (N, 3)."""
    p, single = _points(world_lps)
    inv = np.linalg.inv(image_matrix(image))
    idx = (p - np.asarray(image.GetOrigin(), dtype=float)) @ inv.T
    return idx[0] if single else idx


def image_world_bounds(image: "sitk.Image") -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS box (min, max) around the image's voxel *extent* (corners at index -0.5)."""
    n = np.asarray(image.GetSize(), dtype=float)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    corners = corners * n - 0.5
    w = image_index_to_world(image, corners)
    return w.min(axis=0), w.max(axis=0)


def same_grid(a: "sitk.Image", b: "sitk.Image", coord_tol: float | None = None, dir_tol: float = 1e-4) -> bool:
    """Whether two images share size, spacing, origin and direction within tolerance."""
    return not grid_differences(a, b, coord_tol, dir_tol)


def grid_differences(a: "sitk.Image", b: "sitk.Image", coord_tol: float | None = None,
                     dir_tol: float = 1e-4) -> list[str]:
    """Human-readable differences between the grids of ``a`` and ``b`` (empty: the same grid).

    ``coord_tol`` (mm) defaults to 1e-3 of the smallest spacing of ``a``; it bounds spacing and
    origin differences.  ``dir_tol`` bounds direction-cosine differences.
    """
    out = []
    if a.GetDimension() != b.GetDimension():
        return [f"dimension {b.GetDimension()} vs {a.GetDimension()}"]
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        out.append(f"size {tuple(b.GetSize())} vs {tuple(a.GetSize())}")
    sa, sb = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    tol = 1e-3 * float(sa.min()) if coord_tol is None else float(coord_tol)
    if np.max(np.abs(sa - sb)) > tol:
        out.append(f"spacing {_fmt(sb)} vs {_fmt(sa)}")
    oa, ob = np.asarray(a.GetOrigin()), np.asarray(b.GetOrigin())
    if np.max(np.abs(oa - ob)) > tol:
        out.append(f"origin {_fmt(ob)} vs {_fmt(oa)}")
    da, db = np.asarray(a.GetDirection()), np.asarray(b.GetDirection())
    if np.max(np.abs(da - db)) > dir_tol:
        out.append(f"direction {_fmt(db)} vs {_fmt(da)}")
    return out


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.6g}" for x in np.ravel(v)) + ")"


__all__ = [
    "CROP_DIRECTION", "DEFAULT_SIZE", "DEFAULT_SPACING", "CropGeometry", "crop_to_image",
    "grid_differences", "image_index_to_world", "image_matrix", "image_world_bounds",
    "image_world_to_index", "resample_to_crop", "same_grid",
]
