"""One voxel-grid type, and exact geometry between original images and network crops.

* :class:`Grid` is THE voxel grid of the package: ``size`` (i, j, k), ``spacing`` (mm),
  ``origin`` (LPS mm) and ``direction`` (9 values, row-major, columns = index axes in LPS; the
  SimpleITK convention).  It maps continuous indices to world millimetres and back (vectorised,
  float64: ``world = origin + direction @ (spacing * index)``), gives the voxel-extent bounds of
  the grid, tests overlap and containment, cuts an index box out of it, and converts from and to
  SimpleITK images.  Image grids (:meth:`Grid.from_image`), prompt files
  (:class:`~sam_l1dfl.prompts.types.ImageRef` is a Grid), the synthetic phantom, inference and
  evaluation all use it.
* A :class:`CropGeometry` is the network grid, built on :class:`Grid`: a ``size``³ grid at
  ``spacing`` mm whose axes are world-aligned RAS+.  Tensor element ``[c, i, j, k]`` sits at RAS
  position ``origin_ras + spacing * (i, j, k)``, i.e. at LPS position
  ``origin_lps + diag(-1, -1, 1) @ (spacing * (i, j, k))``.  In SimpleITK terms it is an image with
  that origin, spacing and direction ``diag(-1, -1, 1)``.  The network-space convention is defined
  in ``docs/architecture.md`` (and explained in ``docs/conventions.md``).
* Arrays are ``(x, y, z)``-ordered in crop space (``sitk.GetArrayFromImage(...).transpose(2, 1, 0)``);
  numpy arrays of whole images are ``(z, y, x)`` (:meth:`Grid.array_shape`).
* Filling a crop is ONE ``sitk.Resample`` from the original image onto the crop grid; putting a
  crop back is ONE ``sitk.Resample`` from the crop grid onto the original grid.
* :func:`grid_differences` is the one rule for "same grid" (size exactly; spacing and origin within
  1e-3 of the smallest spacing; direction cosines within 1e-4).

Points map both ways with plain affine algebra (float64), so world -> index -> world round trips
are exact to rounding (~1e-12 mm); for the signed-permutation direction of a crop the inverse is a
sign flip and a division by the spacing, so crop indices are correctly rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: Direction of every network crop in SimpleITK's LPS world (RAS+ axes).
CROP_DIRECTION = np.diag([-1.0, -1.0, 1.0])
#: Model spacing (mm) and crop size (voxels) of the published SAM-Med3D weights.
DEFAULT_SPACING = 1.5
DEFAULT_SIZE = 128
#: Identity direction cosines (9 values, row-major).
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_CROP_DIRECTION9 = tuple(CROP_DIRECTION.ravel().tolist())

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


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


#: The 8 corners of the unit cube, (8, 3), in (i, j, k) order.
_CUBE = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)


# ---------------------------------------------------------------------- the grid type
class _GridExtent:
    """The extent part of :class:`Grid`: its voxel extent and boxes in world and index space (a
    mixin: ``self`` is the grid)."""

    def extent_corners(self) -> np.ndarray:
        """The 8 corners of the voxel extent (indices -0.5 and size - 0.5) in LPS mm, (8, 3)."""
        return self.index_to_world(_CUBE * np.asarray(self.size, dtype=float) - 0.5)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS box (min, max) around the voxel extent."""
        w = self.extent_corners()
        return w.min(axis=0), w.max(axis=0)

    def overlaps(self, other: "Grid") -> bool:
        """Whether the world boxes (:meth:`world_bounds`) of the two grids intersect."""
        alo, ahi = self.world_bounds()
        blo, bhi = other.world_bounds()
        return bool(np.all(alo <= bhi) and np.all(blo <= ahi))

    def index_box(self, world, pad: int = 0) -> "tuple[np.ndarray, np.ndarray] | None":
        """Inclusive voxel-index box ``(lo, hi)`` covering the LPS points ``world`` (N, 3), grown
        by ``pad`` voxels and clipped to the grid; None when it misses the grid."""
        idx = np.atleast_2d(self.world_to_index(world))
        lo = np.maximum(np.floor(idx.min(0)).astype(np.int64) - pad, 0)
        hi = np.minimum(np.ceil(idx.max(0)).astype(np.int64) + pad, np.asarray(self.size) - 1)
        if np.any(hi < lo):
            return None
        return lo, hi

    @staticmethod
    def array_slices(lo, hi) -> tuple[slice, slice, slice]:
        """numpy ``(z, y, x)`` slices of the inclusive index box ``lo..hi`` (given as (i, j, k))."""
        return tuple(slice(int(lo[a]), int(hi[a]) + 1) for a in (2, 1, 0))

    def subgrid(self, lo, hi) -> "Grid":
        """The grid of voxels ``lo..hi`` (inclusive (i, j, k)): same lattice, smaller size."""
        lo = np.asarray(lo, dtype=np.int64)
        size = np.asarray(hi, dtype=np.int64) - lo + 1
        return Grid(tuple(size), self.spacing, tuple(self.index_to_world(lo.astype(float))), self.direction)


@dataclass(frozen=True)
class Grid(_GridExtent):
    """A 3D voxel grid in LPS millimetres: ``world = origin + direction @ (spacing * index)``.

    ``size`` is (i, j, k) (numpy arrays of the grid are ``(k, j, i)``, :attr:`array_shape`);
    ``direction`` holds 9 values, row-major, whose columns are the index axes in LPS (SimpleITK).
    Voxel centres sit at integer indices; a voxel's extent reaches half a voxel past its centre.
    Point methods accept one point ``(3,)`` or many ``(N, 3)`` and answer in the same shape.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self):
        n = _vec3(self.size, "size", dtype=np.int64)
        s = _vec3(self.spacing, "spacing")
        o = _vec3(self.origin, "origin")
        d = np.asarray(self.direction, dtype=float).ravel()
        if d.shape != (9,):
            raise ValueError(f"direction must have 9 values, got {d.size}")
        if np.any(s <= 0) or np.any(n <= 0):
            raise ValueError(f"spacing and size must be positive, got {s.tolist()} and {n.tolist()}")
        object.__setattr__(self, "size", tuple(int(v) for v in n))
        object.__setattr__(self, "spacing", tuple(float(v) for v in s))
        object.__setattr__(self, "origin", tuple(float(v) for v in o))
        object.__setattr__(self, "direction", tuple(float(v) for v in d))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_image(cls, image, **extra) -> "Grid":
        """The grid of a SimpleITK image (or image-file header); a 4D one gives its 3D part."""
        dim = image.GetDimension()
        if dim not in (3, 4):
            raise ValueError(f"expected a 3D image, got {dim}D")
        d = image.GetDirection()
        return cls(size=tuple(image.GetSize())[:3], spacing=tuple(image.GetSpacing())[:3],
                   origin=tuple(image.GetOrigin())[:3],
                   direction=tuple(d[i * dim + j] for i in range(3) for j in range(3)), **extra)

    @staticmethod
    def of(obj: "Grid | sitk.Image") -> "Grid":
        """``obj`` itself if it is a Grid, else the grid of the image ``obj``."""
        return obj if isinstance(obj, Grid) else Grid.from_image(obj)

    # ------------------------------------------------------------------ matrices
    @cached_property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction cosines (columns = index axes), read-only."""
        return _frozen(np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @cached_property
    def matrix(self) -> np.ndarray:
        """3x3 ``direction @ diag(spacing)``: one index step along each axis in LPS mm, read-only."""
        return _frozen(self.direction_matrix * np.asarray(self.spacing)[None, :])

    @cached_property
    def _unrotate(self) -> np.ndarray:
        return _frozen(np.linalg.inv(self.direction_matrix).T)

    def describe(self) -> str:
        """Short form for messages: ``"100x100x130 of 4.07x4.07x3 mm at (-194.4, -232, -804.6)"``,
        then ``", direction (...)"`` unless the direction is the identity."""
        text = ("x".join(str(v) for v in self.size) + " of " + "x".join(f"{v:.4g}" for v in self.spacing)
                + " mm at (" + ", ".join(f"{v:.4g}" for v in self.origin) + ")")
        if np.max(np.abs(self.direction_matrix - np.eye(3))) > 1e-6:
            text += ", direction (" + ", ".join(f"{v:.3g}" for v in self.direction) + ")"
        return text

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of a numpy array of this grid, ``(k, j, i)`` (``sitk.GetArrayFromImage``)."""
        return self.size[::-1]

    # ------------------------------------------------------------------ points
    def index_to_world(self, index) -> np.ndarray:
        """Continuous index ``(i, j, k)`` -> LPS mm, as SimpleITK does.  (3,) or (N, 3)."""
        p, single = _points(index)
        w = np.asarray(self.origin) + p @ self.matrix.T
        return w[0] if single else w

    def world_to_index(self, world) -> np.ndarray:
        """LPS mm -> continuous index ``(i, j, k)``.  (3,) or (N, 3)."""
        p, single = _points(world)
        idx = ((p - np.asarray(self.origin)) @ self._unrotate) / np.asarray(self.spacing)
        return idx[0] if single else idx

    def array_index_to_world(self, zyx) -> np.ndarray:
        """Continuous numpy-array index ``(z, y, x)`` -> LPS mm.  (3,) or (N, 3)."""
        return self.index_to_world(np.asarray(zyx, dtype=np.float64)[..., ::-1])

    def contains_index(self, index, margin: float = 0.0):
        """Whether each continuous index lies in the voxel extent (``-0.5 .. size - 0.5``) shrunk by
        ``margin`` voxels (a negative margin grows it).  A bool for (3,), a bool array for (N, 3)."""
        p, single = _points(index)
        n = np.asarray(self.size)
        inside = np.all((p >= -0.5 + margin) & (p <= n - 0.5 - margin), axis=-1)
        return inside[0] if single else inside

    def contains_world(self, world, margin: float = 0.0):
        """:meth:`contains_index` for LPS points."""
        return self.contains_index(self.world_to_index(world), margin)

    # ------------------------------------------------------------------ SimpleITK
    def stamp(self, image: "sitk.Image") -> "sitk.Image":
        """Set ``image``'s spacing, origin and direction to this grid's (in place); returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference_image(self, pixel_id: "int | None" = None) -> "sitk.Image":
        """An (allocated, zero) SimpleITK image on this grid (uint8 unless ``pixel_id``)."""
        import SimpleITK as sitk

        return self.stamp(sitk.Image(list(self.size), sitk.sitkUInt8 if pixel_id is None else pixel_id))

    def image_from_array(self, array_zyx: np.ndarray) -> "sitk.Image":
        """Wrap a numpy ``(z, y, x)`` array on this grid as a SimpleITK image (no resampling)."""
        import SimpleITK as sitk

        a = np.asarray(array_zyx)
        if a.shape != self.array_shape:
            raise ValueError(f"array shape {a.shape} does not match the grid's {self.array_shape}")
        return self.stamp(sitk.GetImageFromArray(a))


# ---------------------------------------------------------------------- network crops
@dataclass(frozen=True)
class CropGeometry:
    """A world-aligned RAS+ network grid: ``origin_lps`` (mm), ``spacing`` (mm, 3), ``size`` (3).

    Its points, bounds and SimpleITK images come from :attr:`grid`, the :class:`Grid` with direction
    :data:`CROP_DIRECTION`.
    """

    origin_lps: tuple[float, float, float]
    spacing: tuple[float, float, float] = (DEFAULT_SPACING,) * 3
    size: tuple[int, int, int] = (DEFAULT_SIZE,) * 3

    def __post_init__(self):
        grid = Grid(self.size, self.spacing, self.origin_lps, _CROP_DIRECTION9)
        object.__setattr__(self, "origin_lps", grid.origin)
        object.__setattr__(self, "spacing", grid.spacing)
        object.__setattr__(self, "size", grid.size)
        self.__dict__["grid"] = grid  # the cached_property below, filled at once

    @cached_property
    def grid(self) -> Grid:
        """This crop as a :class:`Grid` (direction ``diag(-1, -1, 1)``)."""
        return Grid(self.size, self.spacing, self.origin_lps, _CROP_DIRECTION9)

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
        a[:3, :3] = self.grid.matrix
        a[:3, 3] = self.origin_lps
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS mm (the NIfTI/TorchIO affine of the tensor)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

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

    # ------------------------------------------------------------------ points (see Grid)
    def world_to_index(self, world_lps) -> np.ndarray:
        """LPS mm -> float crop index ``(i, j, k)`` (tensor dims 2, 3, 4).  Accepts (3,) or (N, 3)."""
        return self.grid.world_to_index(world_lps)

    def index_to_world(self, index) -> np.ndarray:
        """Float crop index ``(i, j, k)`` -> LPS mm.  Accepts (3,) or (N, 3)."""
        return self.grid.index_to_world(index)

    def contains_index(self, index, margin: float = 0.0):
        return self.grid.contains_index(index, margin)

    # ------------------------------------------------------------------ SimpleITK
    def reference_image(self, pixel_id: "int | None" = None) -> "sitk.Image":
        """An (allocated, zero) SimpleITK image with this grid; prefer :func:`resample_to_crop`."""
        return self.grid.reference_image(pixel_id)

    def array_to_image(self, array_xyz: np.ndarray) -> "sitk.Image":
        """Wrap an ``(x, y, z)`` array on this grid as a SimpleITK image (no resampling)."""
        a = np.asarray(array_xyz)
        if a.shape != self.size:
            raise ValueError(f"array shape {a.shape} does not match crop size {self.size}")
        return self.grid.image_from_array(np.ascontiguousarray(a.transpose(2, 1, 0)))


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
        _CROP_DIRECTION9,
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


# ---------------------------------------------------------------------- whole-image shorthands
def image_index_to_world(image: "sitk.Image", index) -> np.ndarray:
    """``Grid.from_image(image).index_to_world(index)``: SimpleITK continuous index -> LPS mm."""
    return Grid.from_image(image).index_to_world(index)


def image_world_to_index(image: "sitk.Image", world_lps) -> np.ndarray:
    """``Grid.from_image(image).world_to_index(world_lps)``: LPS mm -> SimpleITK continuous index."""
    return Grid.from_image(image).world_to_index(world_lps)


def image_world_bounds(image: "sitk.Image") -> tuple[np.ndarray, np.ndarray]:
    """``Grid.from_image(image).world_bounds()``: LPS box around the image's voxel extent."""
    return Grid.from_image(image).world_bounds()


def images_overlap(a: "sitk.Image | Grid", b: "sitk.Image | Grid") -> bool:
    """Whether the world boxes of two images (or grids) intersect."""
    return Grid.of(a).overlaps(Grid.of(b))


# ---------------------------------------------------------------------- comparing grids
def same_grid(a: "sitk.Image | Grid", b: "sitk.Image | Grid", coord_tol: float | None = None,
              dir_tol: float = 1e-4) -> bool:
    """Whether two images (or grids) share size, spacing, origin and direction within tolerance."""
    return not grid_mismatches(a, b, coord_tol, dir_tol)


def grid_mismatches(a: "sitk.Image | Grid", b: "sitk.Image | Grid", coord_tol: float | None = None,
                    dir_tol: float = 1e-4) -> list[tuple[str, tuple, tuple]]:
    """``(what, value of b, value of a)`` for each of size, spacing, origin, direction that differs.

    ``coord_tol`` (mm) defaults to 1e-3 of the smallest spacing of ``a``; it bounds spacing and
    origin differences.  ``dir_tol`` bounds direction-cosine differences.  Images of different
    dimension give ``[("dimension", dim b, dim a)]``.
    """
    if hasattr(a, "GetDimension") and hasattr(b, "GetDimension") and a.GetDimension() != b.GetDimension():
        return [("dimension", b.GetDimension(), a.GetDimension())]
    ga, gb = Grid.of(a), Grid.of(b)
    out = []
    if ga.size != gb.size:
        out.append(("size", gb.size, ga.size))
    tol = 1e-3 * min(ga.spacing) if coord_tol is None else float(coord_tol)
    dir_tol = float(dir_tol)
    for what, limit in (("spacing", tol), ("origin", tol), ("direction", dir_tol)):
        va, vb = getattr(ga, what), getattr(gb, what)
        if np.max(np.abs(np.asarray(va) - np.asarray(vb))) > limit:
            out.append((what, vb, va))
    return out


def same_lattice(a: "sitk.Image | Grid", b: "sitk.Image | Grid", coord_tol: float | None = None) -> bool:
    """Whether ``b``'s voxels are voxels of ``a``: each index step of ``b`` is one voxel of ``a``
    along one of its axes (either sign, any order) and ``b``'s voxel centres, its far corners
    included, lie on ``a``'s within ``coord_tol`` mm (default 1e-3 of ``a``'s smallest spacing, as
    :func:`grid_mismatches`).  ``b`` is then ``a`` cut, extended or flipped, and nearest-neighbour
    resampling from one onto the other moves nothing."""
    ga, gb = Grid.of(a), Grid.of(b)
    tol = 1e-3 * min(ga.spacing) if coord_tol is None else float(coord_tol)
    spacing = np.asarray(ga.spacing)
    origin = ga.world_to_index(gb.origin)
    steps = ga.world_to_index(gb.origin + gb.matrix.T) - origin  # row k: b's step k in a's indices
    unit = np.rint(steps)
    if not np.array_equal(np.abs(unit) @ np.ones(3), np.ones(3)) or not np.array_equal(np.abs(unit).sum(0), np.ones(3)):
        return False
    centres = ga.world_to_index(gb.index_to_world(_CUBE * (np.asarray(gb.size) - 1.0)))
    off = np.abs(np.vstack([steps - unit, centres - np.rint(centres)])) * spacing
    return bool(off.max() <= tol)


def grid_differences(a: "sitk.Image | Grid", b: "sitk.Image | Grid", coord_tol: float | None = None,
                     dir_tol: float = 1e-4) -> list[str]:
    """Human-readable :func:`grid_mismatches` of ``b`` against ``a`` (empty: the same grid)."""
    out = []
    for what, vb, va in grid_mismatches(a, b, coord_tol, dir_tol):
        if what in ("dimension", "size"):
            out.append(f"{what} {vb} vs {va}")
        else:
            out.append(f"{what} {_fmt(vb)} vs {_fmt(va)}")
    return out


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.6g}" for x in np.ravel(v)) + ")"


__all__ = [
    "CROP_DIRECTION", "DEFAULT_SIZE", "DEFAULT_SPACING", "IDENTITY_DIRECTION", "CropGeometry", "Grid",
    "crop_to_image", "grid_differences", "grid_mismatches", "image_index_to_world", "image_world_bounds",
    "image_world_to_index", "images_overlap", "resample_to_crop", "same_grid", "same_lattice",
]
