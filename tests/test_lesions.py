"""Lesions: connected components, volumes, boxes, centroids and SUVmax in index and world space."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl.data.lesions import Lesion, find_lesions, label_components


def _image(arr_zyx, spacing=(2.0, 3.0, 4.0), origin=(10.0, -5.0, 7.0), direction=None):
    img = sitk.GetImageFromArray(np.asarray(arr_zyx))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_empty_mask_gives_no_lesion():
    assert find_lesions(_image(np.zeros((4, 5, 6), np.uint8))) == []


def test_connectivity_6_18_26():
    a = np.zeros((5, 5, 5), np.uint8)
    a[1, 1, 1] = 1
    a[1, 2, 2] = 1  # shares an edge with (1,1,1)
    a[2, 3, 3] = 1  # shares only a corner with (1,2,2)
    lab = _image(a)
    assert len(find_lesions(lab, connectivity=6)) == 3
    assert len(find_lesions(lab, connectivity=18)) == 2
    assert len(find_lesions(lab, connectivity=26)) == 1
    with pytest.raises(ValueError):
        find_lesions(lab, connectivity=8)


def test_lesion_fields_in_sitk_index_order_and_world():
    a = np.zeros((6, 7, 8), np.uint8)  # (z, y, x)
    a[2:4, 1:2, 3:7] = 1  # k=2..3, j=1, i=3..6 : 8 voxels
    a[5, 6, 0] = 7  # a single voxel, other label value still foreground
    pet = np.zeros(a.shape, np.float32)
    pet[3, 1, 5] = 9.5
    pet[5, 6, 0] = 2.0
    d = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane
    lab = _image(a, direction=d)
    les = find_lesions(lab, _image(pet, direction=d))
    assert [l.id for l in les] == [1, 2]
    big, tiny = les
    assert isinstance(big, Lesion)
    assert big.voxel_count == 8 and tiny.voxel_count == 1
    assert big.volume_ml == pytest.approx(8 * 2 * 3 * 4 / 1000)
    assert big.bbox_index == ((3, 1, 2), (6, 1, 3))
    assert big.centroid_index == pytest.approx((4.5, 1.0, 2.5))
    assert big.centroid_world == pytest.approx(lab.TransformContinuousIndexToPhysicalPoint((4.5, 1.0, 2.5)))
    assert big.suvmax == pytest.approx(9.5)
    assert big.suvmax_index == (5, 1, 3)
    assert big.suvmax_world == pytest.approx(lab.TransformIndexToPhysicalPoint((5, 1, 3)))
    assert tiny.bbox_index == ((0, 6, 5), (0, 6, 5))
    assert tiny.suvmax == pytest.approx(2.0) and tiny.suvmax_index == (0, 6, 5)
    assert find_lesions(lab)[0].suvmax is None
    d0 = big.to_dict()
    assert d0["bbox_index"] == [[3, 1, 2], [6, 1, 3]]


def test_label_components_reusable_on_arrays():
    a = np.zeros((3, 4, 5), bool)
    a[0, 0, 0] = a[2, 3, 4] = True
    labels, n = label_components(a, 26)
    assert n == 2 and labels.shape == a.shape and labels[0, 0, 0] == 1 and labels[2, 3, 4] == 2


def test_pet_grid_mismatch_refused():
    lab = _image(np.ones((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="size"):
        find_lesions(lab, _image(np.ones((2, 2, 3), np.float32)))
