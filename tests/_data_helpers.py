"""Tiny SimpleITK scenes for the data tests (no dependency on the synthetic generator)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
FLIPPED_XY = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
# array axis i runs along world y, j along z, k along x
PERMUTED = (0, 0, 1, 1, 0, 0, 0, 1, 0)


def oblique_direction(deg_z: float = 20.0, deg_x: float = 8.0) -> tuple:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel().tolist())


DIRECTIONS = {"identity": IDENTITY, "flipped_xy": FLIPPED_XY, "permuted": PERMUTED, "oblique": oblique_direction()}


def make_image(array_zyx: np.ndarray, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    return img


def world_grid(size_xyz, spacing, origin, direction) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre."""
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=float) for n in size_xyz], indexing="ij")
    idx = np.stack([ii, jj, kk], -1)  # (x, y, z, 3)
    m = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)[None, :]
    w = np.asarray(origin, float) + idx @ m.T
    return w.transpose(2, 1, 0, 3)


def sample_scene(fn, size_xyz, spacing, origin=(0, 0, 0), direction=IDENTITY, dtype=np.float32) -> sitk.Image:
    """Image whose voxels are ``fn(world_lps (..., 3))`` at their centres."""
    w = world_grid(size_xyz, spacing, origin, direction)
    return make_image(fn(w).astype(dtype), spacing, origin, direction)


def blob(center, sigma=6.0, amp=10.0, floor=1.0):
    c = np.asarray(center, float)

    def f(w):
        d2 = ((w - c) ** 2).sum(-1)
        return floor + amp * np.exp(-d2 / (2 * sigma**2))

    return f


def ball(center, radius):
    c = np.asarray(center, float)

    def f(w):
        return (((w - c) ** 2).sum(-1) <= radius**2).astype(np.uint8)

    return f


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


def write(img: sitk.Image, path) -> str:
    sitk.WriteImage(img, str(path), True)
    return str(path)
