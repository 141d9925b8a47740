"""Arrays in the protocol's conventions: the image, its geometry, points and boxes (array order).

nnInteractive's protocol sends an image ``[C, a, b, c]``, its ``spacing`` in the same axis order,
points ``(a, b, c)`` and boxes ``[[a0, a1], [b0, b1], [c0, c1]]`` (half-open voxel ranges).  The
image goes into world space as SimpleITK reads such an array (axis ``c`` is the image's x axis);
``origin`` (LPS mm of voxel ``[0, 0, 0]``) and ``direction`` (3 x 3, row-major, column ``k`` the
LPS direction of array axis ``k``) are our extension.  Every check here raises a one-line
:class:`~sam_l1dfl.errors.InputError`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.errors import InputError


def _has_bool(values) -> bool:
    if isinstance(values, (list, tuple)):
        return any(_has_bool(v) for v in values)
    return isinstance(values, (bool, np.bool_))


def finite_numbers(values, n: int, what: str) -> np.ndarray:
    """``values`` (nested lists allowed) as ``n`` float64 numbers, or a one-line error (true and
    false are not numbers here)."""
    try:
        arr = None if _has_bool(values) else np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(None, f"{what} must be {n} finite numbers, got {str(values)[:80]}")
    return arr


def parse_geometry(spacing=None, origin=None, direction=None) -> "tuple[tuple, tuple | None, tuple | None, list[str]]":
    """``(spacing, origin, direction, notes)`` in SimpleITK's order, checked (positive spacing,
    finite numbers, an orthonormal direction); without spacing 1 mm, and a note that says so."""
    notes = []
    if spacing is None:
        sp = np.ones(3)
        notes.append("no spacing given: 1 mm assumed on every axis")
    else:
        sp = finite_numbers(spacing, 3, "spacing")
        if (sp <= 0).any():
            raise InputError(None, f"spacing must be positive, got {sp.tolist()}")
    org = None if origin is None else tuple(float(v) for v in finite_numbers(origin, 3, "origin"))
    dsitk = None
    if direction is not None:
        d = finite_numbers(direction, 9, "direction").reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
            raise InputError(None, "direction must be an orthonormal 3 x 3 matrix")
        dsitk = tuple(float(v) for v in d[:, ::-1].ravel())  # columns: array axes c, b, a
    return tuple(float(v) for v in sp[::-1]), org, dsitk, notes


def image_from_array(array: np.ndarray, spacing=None, origin=None, direction=None) -> "tuple[sitk.Image, list[str]]":
    """One channel ``(a, b, c)`` as a float32 SimpleITK image, and the notes of :func:`parse_geometry`."""
    sp, org, d, notes = parse_geometry(spacing, origin, direction)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing(sp)
    if org is not None:
        img.SetOrigin(org)
    if d is not None:
        img.SetDirection(d)
    return img, notes


def check_image(image: np.ndarray, channels: int, input_mode: str) -> None:
    """``[channels, a, b, c]`` of finite numbers."""
    if image.ndim != 4 or image.shape[0] != channels or min(image.shape[1:]) < 1:
        raise InputError(None, f"the image must be [{channels}, a, b, c] (the checkpoint's input_mode is "
                               f"{input_mode!r}), got shape {list(image.shape)}")
    if image.dtype.kind not in "biuf":
        raise InputError(None, f"the image must hold numbers, got dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError(None, "the image has NaN or Inf voxels")


def voxel_index(coords, shape) -> np.ndarray:
    """A point's voxel (rounded, as nnInteractive rounds), inside ``shape``."""
    idx = np.rint(finite_numbers(coords, 3, "a point's coordinates")).astype(np.int64)
    shape = np.asarray(shape)
    if (idx < 0).any() or (idx >= shape).any():
        raise InputError(None, f"point {idx.tolist()} lies outside the image (shape {shape.tolist()})")
    return idx


def voxel_box(bounds, shape) -> "tuple[np.ndarray, np.ndarray]":
    """``(lo, hi)`` of a box of three half-open ``[start, stop]`` ranges, non-empty, inside ``shape``."""
    try:
        b = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        b = np.zeros(0)
    if b.shape != (3, 2) or not np.isfinite(b).all():
        raise InputError(None, f"a box must be three [start, stop] pairs, got {str(bounds)[:80]}")
    lo, hi = np.rint(b[:, 0]).astype(np.int64), np.rint(b[:, 1]).astype(np.int64)
    shape = np.asarray(shape)
    if (lo < 0).any() or (hi > shape).any() or (hi <= lo).any():
        raise InputError(None, f"box {b.astype(int).tolist()} is empty or lies outside the image "
                               f"(shape {shape.tolist()})")
    return lo, hi


def first_clicks(prompts) -> list[tuple[int, int, int]]:
    """Each lesion's first point of a :class:`~sam_l1dfl.prompts.CasePrompts` as a voxel in array
    order: the clicks a viewer would send for them."""
    return [tuple(int(v) for v in np.rint(lp.points[0].index)[::-1]) for lp in prompts.lesions if lp.points]


def check_mask(mask: np.ndarray, shape) -> np.ndarray:
    """A mask of ``shape`` (nonzero inside) as uint8 0/1."""
    if mask.shape != tuple(shape):
        raise InputError(None, f"the initial segmentation has shape {list(mask.shape)}, the image {list(shape)}")
    if mask.dtype.kind not in "biuf" or (mask.dtype.kind == "f" and not np.isfinite(mask).all()):
        raise InputError(None, "the initial segmentation must hold finite numbers")
    return (mask != 0).astype(np.uint8)


__all__ = ["check_image", "check_mask", "finite_numbers", "first_clicks", "image_from_array", "parse_geometry", "voxel_box",
           "voxel_index"]
