"""The classical SUV-threshold baselines on hand-made volumes (issue 15, item 9)."""

from __future__ import annotations

import numpy as np
import pytest

from sam_l1dfl.baselines import METHODS, body_mask, threshold_segment

SHAPE = (8, 20, 20)  # (z, y, x)


def phantom():
    """A body (CT 0 HU) with a hollow lung (CT -800 HU) in air (-1000 HU); PET 1 SUV in the body, an
    air hot spot outside it (SUV 20), a lesion of SUV 5 with a 12 SUV core and a faint one of SUV 3.5."""
    ct = np.full(SHAPE, -1000.0)
    ct[:, 2:18, 2:18] = 0.0
    ct[:, 6:10, 6:10] = -800.0  # lung: inside the body, below -500 HU
    pet = np.zeros(SHAPE, np.float32)
    pet[:, 2:18, 2:18] = 1.0
    pet[3:6, 12:16, 12:16] = 5.0  # lesion: 3 x 4 x 4 = 48 voxels
    pet[4, 13, 13] = 12.0  # its peak
    pet[2:4, 3:5, 3:5] = 3.5  # faint lesion: 8 voxels
    pet[0, 0, 0] = 20.0  # outside the body (air): never segmented
    return pet, ct


def test_body_mask_largest_component_holes_filled():
    pet, ct = phantom()
    ct[0, 0, 0:2] = 50.0  # a small island outside the body: not the largest component
    b = body_mask(pet, ct)
    assert b.dtype == bool and b.sum() == 8 * 16 * 16  # the lung is filled, the island dropped
    assert not b[0, 0, 0] and b[4, 7, 7]
    # without CT: PET > 0.1 SUV
    assert body_mask(pet).sum() == 8 * 16 * 16


def test_threshold_methods_by_hand():
    pet, ct = phantom()
    s4 = threshold_segment(pet, ct, "suv4")
    assert s4.dtype == np.uint8 and s4.sum() == 48 and s4[0, 0, 0] == 0
    s3 = threshold_segment(pet, ct, "suv3")
    assert s3.sum() == 48 + 8  # the faint lesion too
    # 41 % of each hot region's SUVmax: the lesion region's max is 12 -> threshold 4.92: its 48 voxels;
    # the faint region's max 3.5 -> 1.435: all its 8 voxels
    s41 = threshold_segment(pet, ct, "suv41")
    assert s41.sum() == 56
    pet2 = pet.copy()
    pet2[4, 13, 13] = 20.0  # now 0.41 x 20 = 8.2 > 5: only the peak is left of that region
    s41b = threshold_segment(pet2, ct, "suv41")
    assert s41b.sum() == 1 + 8 and s41b[4, 13, 13] == 1
    # a given body mask is used as is
    assert threshold_segment(pet, body=np.ones(SHAPE, bool), method="suv4")[0, 0, 0] == 1
    assert set(METHODS) == {"suv4", "suv3", "suv41"}
    with pytest.raises(ValueError, match="unknown threshold method"):
        threshold_segment(pet, ct, "otsu")
