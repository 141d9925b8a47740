"""Lesions: the connected components of a label mask, with their size, box, centroid and SUVmax.

A lesion is one connected component of the foreground (every voxel ``> 0``) of the label,
found with cc3d.  The default 18-connectivity is the autoPET convention (faces and edges touch,
corners do not); 6 and 26 are available.  There is **no size threshold**: a single voxel is a
lesion.

Index conventions: everything that says ``index`` is a SimpleITK ``(i, j, k)`` voxel index of the
label image (``i`` runs fastest, the *reverse* of the ``(z, y, x)`` axes of
``sitk.GetArrayFromImage``).  Everything that says ``world`` is LPS millimetres, computed with the
image's origin, spacing and direction.

Lesion ids are 1..N in cc3d's raster order (the first voxel met scanning the ``(z, y, x)`` array),
so the same mask always gives the same ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

CONNECTIVITIES = (6, 18, 26)


@dataclass(frozen=True)
class Lesion:
    """One connected component of a label mask."""

    id: int
    voxel_count: int
    volume_ml: float
    bbox_index: tuple[tuple[int, int, int], tuple[int, int, int]]
    """(min, max) voxel index, both inclusive, SimpleITK (i, j, k) order."""
    centroid_index: tuple[float, float, float]
    """Mean voxel index (i, j, k); may fall outside a concave lesion."""
    centroid_world: tuple[float, float, float]
    """LPS mm."""
    suvmax: float | None = None
    suvmax_index: tuple[int, int, int] | None = None
    suvmax_world: tuple[float, float, float] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox_index"] = [list(self.bbox_index[0]), list(self.bbox_index[1])]
        for k in ("centroid_index", "centroid_world", "suvmax_index", "suvmax_world"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


def _check_connectivity(connectivity: int) -> int:
    if int(connectivity) not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    return int(connectivity)


def label_components(mask_array: np.ndarray, connectivity: int = 18) -> tuple[np.ndarray, int]:
    """Connected components of ``mask_array > 0`` (any 3D array order; cc3d is axis-symmetric).

    Returns ``(labels, n)``: an integer array of the same shape (0 = background, 1..n = component,
    numbered in C raster order) and the number of components.
    """
    import cc3d

    connectivity = _check_connectivity(connectivity)
    arr = np.asarray(mask_array)
    if arr.ndim != 3:
        raise ValueError(f"label_components needs a 3D array, got shape {arr.shape}")
    fg = np.ascontiguousarray(arr > 0, dtype=np.uint8)
    labels, n = cc3d.connected_components(fg, connectivity=connectivity, return_N=True)
    return labels, int(n)


def find_lesions(label: "sitk.Image", pet: "sitk.Image | None" = None, connectivity: int = 18) -> list[Lesion]:
    """The lesions of ``label`` (a SimpleITK image; foreground = voxels > 0).

    ``pet``, if given, must share the label's voxel grid (size; the data layer checks spacing,
    origin and direction); it adds SUVmax and its location to each lesion (ties: the first voxel in
    raster order).  An empty mask gives ``[]``.
    """
    import SimpleITK as sitk

    if label.GetDimension() != 3:
        raise ValueError(f"find_lesions needs a 3D label image, got {label.GetDimension()}D")
    arr = sitk.GetArrayViewFromImage(label)  # (z, y, x)
    labels, n = label_components(arr, connectivity)
    if n == 0:
        return []
    pet_arr = None
    if pet is not None:
        if tuple(pet.GetSize()) != tuple(label.GetSize()):
            raise ValueError(f"PET size {pet.GetSize()} differs from label size {label.GetSize()}")
        pet_arr = sitk.GetArrayViewFromImage(pet)

    import cc3d

    stats = cc3d.statistics(labels)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    out: list[Lesion] = []
    for lid in range(1, n + 1):
        zs, ys, xs = stats["bounding_boxes"][lid]
        count = int(stats["voxel_counts"][lid])
        cz, cy, cx = (float(c) for c in stats["centroids"][lid])
        centroid_index = (cx, cy, cz)
        centroid_world = tuple(float(v) for v in label.TransformContinuousIndexToPhysicalPoint(centroid_index))
        bbox = ((xs.start, ys.start, zs.start), (xs.stop - 1, ys.stop - 1, zs.stop - 1))
        bbox = (tuple(int(v) for v in bbox[0]), tuple(int(v) for v in bbox[1]))
        suvmax = suvmax_index = suvmax_world = None
        if pet_arr is not None:
            sub_lab = labels[zs, ys, xs] == lid
            sub_pet = np.where(sub_lab, np.asarray(pet_arr[zs, ys, xs], dtype=np.float64), -np.inf)
            flat = int(np.argmax(sub_pet))
            dz, dy, dx = np.unravel_index(flat, sub_pet.shape)
            suvmax = float(sub_pet.flat[flat])
            suvmax_index = (int(xs.start + dx), int(ys.start + dy), int(zs.start + dz))
            suvmax_world = tuple(float(v) for v in label.TransformIndexToPhysicalPoint(suvmax_index))
        out.append(
            Lesion(
                id=lid,
                voxel_count=count,
                volume_ml=count * voxel_ml,
                bbox_index=bbox,
                centroid_index=centroid_index,
                centroid_world=centroid_world,
                suvmax=suvmax,
                suvmax_index=suvmax_index,
                suvmax_world=suvmax_world,
            )
        )
    return out


__all__ = ["CONNECTIVITIES", "Lesion", "find_lesions", "label_components"]
