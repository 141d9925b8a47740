"""Exact geometry: point round trips, axis order, header invariance, mask round trips, edge crops."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from _data_helpers import DIRECTIONS, FLIPPED_XY, IDENTITY, ball, blob, dice, make_image, sample_scene
from sam_l1dfl.data.geometry import (
    CROP_DIRECTION,
    CropGeometry,
    Grid,
    crop_to_image,
    grid_differences,
    grid_mismatches,
    image_index_to_world,
    image_world_to_index,
    resample_to_crop,
    same_grid,
    same_lattice,
)
from sam_l1dfl.data.io import Case
from sam_l1dfl.data.preprocess import IntensityConfig, crop_mask, make_network_input
from sam_l1dfl.prompts.types import ImageRef

SPACINGS = {"iso": (2.0, 2.0, 2.0), "aniso": (4.07, 3.3, 2.5)}


@pytest.mark.parametrize("dname", sorted(DIRECTIONS))
@pytest.mark.parametrize("sname", sorted(SPACINGS))
def test_world_voxel_world_round_trip(dname, sname):
    img = make_image(np.zeros((7, 6, 5), np.float32), SPACINGS[sname], (-30.5, 12.25, 101.0), DIRECTIONS[dname])
    rng = np.random.default_rng(0)
    idx = rng.uniform(-3, 10, size=(50, 3))
    world = image_index_to_world(img, idx)
    # agrees with SimpleITK itself
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    assert np.abs(world - ref).max() < 1e-9
    back = image_index_to_world(img, image_world_to_index(img, world))
    assert np.abs(back - world).max() < 1e-4
    # through the network crop and back to the original voxel grid
    geom = CropGeometry.centered_at(world.mean(0), 1.5, 32)
    w2 = geom.index_to_world(geom.world_to_index(world))
    assert np.abs(w2 - world).max() < 1e-4
    idx2 = image_world_to_index(img, geom.index_to_world(geom.world_to_index(world)))
    assert np.abs(idx2 - idx).max() < 1e-6


def test_crop_geometry_is_ras_and_matches_sitk():
    geom = CropGeometry.centered_at((10.0, -20.0, 30.0), 1.5, 16)
    ref = geom.reference_image()
    assert ref.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    idx = np.array([[0, 0, 0], [15, 0, 0], [0, 15, 0], [0, 0, 15], [3.25, 7.5, 1.0]])
    sitk_w = np.array([ref.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    assert np.abs(geom.index_to_world(idx) - sitk_w).max() < 1e-9
    assert np.allclose(geom.world_to_index((10.0, -20.0, 30.0)), 7.5)
    # RAS affine: i goes to +x_RAS (patient right->left is -x_LPS), k goes superior
    a = geom.affine_ras()
    assert np.allclose(np.diag(a)[:3], 1.5)
    ras = a @ np.array([1.0, 2.0, 3.0, 1.0])
    lps = geom.index_to_world((1.0, 2.0, 3.0))
    assert np.allclose(ras[:3], lps * np.array([-1, -1, 1]))


def test_tensor_axis_order_is_xyz_ras():
    """A hot point at LPS p shows up at tensor index world_to_index(p): i runs to RAS +x (= -x_LPS),
    j to RAS +y (anterior, = -y_LPS), k superior -- whatever the stored header."""
    p = np.array([4.5, -6.5, 10.5])
    for direction in (IDENTITY, FLIPPED_XY):
        img = sample_scene(blob(p, sigma=2.0, amp=100.0, floor=0.0), (40, 40, 40), (1.0, 1.0, 1.0),
                           origin=-20.0 * np.asarray(direction).reshape(3, 3) @ np.ones(3), direction=direction)
        geom = CropGeometry.centered_at((0.0, 0.0, 0.0), 1.0, 32)
        arr = resample_to_crop(img, geom)
        assert arr.shape == (32, 32, 32)
        hot = np.unravel_index(np.argmax(arr), arr.shape)
        assert tuple(int(v) for v in hot) == (11, 22, 26)  # 15.5 - 4.5, 15.5 + 6.5, 15.5 + 10.5
        assert np.allclose(geom.world_to_index(p), hot)


@pytest.mark.parametrize("dname", ["flipped_xy", "permuted"])
def test_same_scene_different_headers_same_network_input(dname):
    """Voxels at the same world points, stored with other (correct) headers -> identical input."""
    fn = blob((3.0, -5.0, 7.0), sigma=8.0)
    size, spacing = (24, 20, 22), (2.0, 2.0, 2.0)
    ref_img = sample_scene(fn, size, spacing, origin=(-24.0, -20.0, -22.0))
    # the same lattice of world points, but addressed through another direction/axis order
    d = np.asarray(DIRECTIONS[dname], float).reshape(3, 3)
    lo = np.array([-24.0, -20.0, -22.0])
    hi = lo + (np.array(size) - 1) * 2.0
    new_size = np.abs(np.linalg.inv(d) @ (np.array(size, float))).astype(int)
    corner = np.where(d.sum(1) < 0, hi, lo)  # start at the corner the first voxel must sit on
    other = sample_scene(fn, tuple(int(v) for v in new_size), spacing, origin=corner, direction=DIRECTIONS[dname])
    cfg = IntensityConfig(crop_size=32)
    geom = cfg.geometry_at((1.0, -2.0, 3.0))
    a = make_network_input(Case("a", ref_img), geom, cfg)
    b = make_network_input(Case("b", other), geom, cfg)
    assert a.shape == (1, 32, 32, 32)
    assert float((a - b).abs().max()) < 1e-4


def test_oblique_header_gives_world_aligned_input():
    """Oblique scan of the same scene -> close to the axis-aligned input (world-aligned grid)."""
    fn = blob((0.0, 0.0, 0.0), sigma=9.0)
    ref_img = sample_scene(fn, (30, 30, 30), (2.0, 2.0, 2.0), origin=(-29.0, -29.0, -29.0))
    d = np.asarray(DIRECTIONS["oblique"]).reshape(3, 3)
    origin = -d @ (np.full(3, 14.5) * 2.0)
    obl = sample_scene(fn, (30, 30, 30), (2.0, 2.0, 2.0), origin=origin, direction=DIRECTIONS["oblique"])
    cfg = IntensityConfig(crop_size=24)
    geom = cfg.geometry_at((0.0, 0.0, 0.0))
    a = make_network_input(Case("a", ref_img), geom, cfg).numpy().ravel()
    b = make_network_input(Case("b", obl), geom, cfg).numpy().ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_mask_round_trip_exact_where_grids_coincide():
    """Original 1.5 mm LPS grid; crop (RAS, i.e. flipped x/y) on the same lattice: nearest there and
    back reproduces the mask voxel for voxel inside the crop."""
    size = (40, 36, 30)
    lab = sample_scene(ball((2.0, 1.0, -3.0), 7.0), size, (1.5, 1.5, 1.5), origin=(-30.0, -27.0, -22.5), dtype=np.uint8)
    # crop origin on an original voxel centre, so every crop voxel is an original voxel
    geom = CropGeometry(tuple(image_index_to_world(lab, (30.0, 28.0, 2.0))), (1.5,) * 3, (24, 24, 24))
    crop = resample_to_crop(lab, geom, "nearest", 0)
    back = crop_to_image(crop, geom, lab, "nearest", 0)
    a = sitk.GetArrayFromImage(lab)
    b = sitk.GetArrayFromImage(back)
    inside = sitk.GetArrayFromImage(crop_to_image(np.ones(geom.size, np.uint8), geom, lab, "nearest", 0)) > 0
    assert a[inside].sum() == a.sum() > 100  # the ball lies inside the crop
    assert np.array_equal(a[inside], b[inside])


@pytest.mark.parametrize("dname", ["flipped_xy", "oblique"])
def test_mask_round_trip_other_grids_high_dice(dname):
    """Anisotropic oblique/flipped grid: linear to the crop, linear back, threshold 0.5 -> Dice >= 0.9
    and the mask centroid moves less than 0.5 mm."""
    d = np.asarray(DIRECTIONS[dname]).reshape(3, 3)
    spacing = (2.3, 2.0, 3.1)
    size = (30, 30, 20)
    origin = -d @ ((np.array(size) - 1) / 2 * np.array(spacing))
    lab = sample_scene(ball((3.0, -2.0, 4.0), 10.0), size, spacing, origin=origin, direction=DIRECTIONS[dname],
                       dtype=np.uint8)
    geom = CropGeometry.centered_at((0.0, 0.0, 0.0), 1.5, 40)
    prob = resample_to_crop(sitk.Cast(lab, sitk.sitkFloat32), geom, "linear", 0)
    back = sitk.GetArrayFromImage(crop_to_image(prob, geom, lab, "linear", 0)) > 0.5
    a = sitk.GetArrayFromImage(lab)
    assert a.sum() > 100
    assert dice(a, back) >= 0.9
    ca = image_index_to_world(lab, np.argwhere(a)[:, ::-1].astype(float)).mean(0)
    cb = image_index_to_world(lab, np.argwhere(back)[:, ::-1].astype(float)).mean(0)
    assert np.linalg.norm(ca - cb) < 0.5


@pytest.mark.parametrize("dname", ["flipped_xy", "oblique", "permuted"])
def test_lesion_points_map_back_exactly(dname):
    """A lesion voxel -> world -> crop index -> world -> original index is the same voxel (1e-4 mm)."""
    d = np.asarray(DIRECTIONS[dname]).reshape(3, 3)
    lab = make_image(np.zeros((12, 14, 16), np.uint8), (2.5, 3.0, 4.0), -d @ np.array([20.0, 21.0, 15.0]), DIRECTIONS[dname])
    vox = np.array([[3, 4, 5], [0, 0, 0], [15, 13, 11]], float)
    w = image_index_to_world(lab, vox)
    geom = CropGeometry.centered_at(w[0], 1.5, 128)
    ci = geom.world_to_index(w)
    assert np.abs(geom.index_to_world(ci) - w).max() < 1e-4
    assert np.abs(image_world_to_index(lab, geom.index_to_world(ci)) - vox).max() < 1e-6
    assert np.allclose(ci[0], 63.5)


def test_crop_of_lesion_at_volume_edge_contains_it():
    arr = np.zeros((10, 12, 14), np.uint8)
    arr[0:2, 0:2, 0:3] = 1  # corner lesion (z, y, x)
    lab = make_image(arr, (4.0, 4.0, 3.0), (0, 0, 0), FLIPPED_XY)
    pet = make_image(np.where(arr > 0, 20.0, 2.0).astype(np.float32), (4.0, 4.0, 3.0), (0, 0, 0), FLIPPED_XY)
    from sam_l1dfl.data.preprocess import label_bbox_center_world

    cfg = IntensityConfig(crop_size=32)
    geom = cfg.geometry_at(label_bbox_center_world(lab))
    m = crop_mask(lab, geom)
    assert m.sum() > 0
    # every lesion voxel centre falls inside the crop
    w = image_index_to_world(lab, np.argwhere(arr)[:, ::-1].astype(float))
    assert geom.contains_index(geom.world_to_index(w)).all()
    raw = resample_to_crop(pet, geom, "linear", 0.0)
    assert raw.max() > 15  # the hot lesion is in the crop
    assert (raw == 0).mean() > 0.3  # and the outside is zero padded


def test_tiny_lesion_survives_downsampling():
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[10, 10, 10] = 1  # one 0.8 mm voxel, smaller than a network voxel
    lab = make_image(arr, (0.8, 0.8, 0.8))
    geom = CropGeometry.centered_at(image_index_to_world(lab, (10.3, 10.0, 10.0)), 1.5, 16)
    m = crop_mask(lab, geom)
    assert m.sum() == 1
    assert np.allclose(np.argwhere(m)[0], np.rint(geom.world_to_index(image_index_to_world(lab, (10, 10, 10)))))


# ---------------------------------------------------------------------- the one grid type
def _oblique_image(size=(9, 7, 5), spacing=(4.07, 3.3, 2.5), origin=(-30.5, 12.25, 101.0)):
    return make_image(np.zeros(size[::-1], np.float32), spacing, origin, DIRECTIONS["oblique"])


def test_grid_index_world_matches_sitk_on_oblique_grid():
    img = _oblique_image()
    g = Grid.from_image(img)
    assert (g.size, g.spacing, g.origin, g.direction) == (img.GetSize(), img.GetSpacing(), img.GetOrigin(),
                                                          img.GetDirection())
    idx = np.random.default_rng(1).uniform(-3, 10, size=(40, 3))
    world = g.index_to_world(idx)
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    assert world.shape == (40, 3) and np.abs(world - ref).max() < 1e-9
    back = np.array([img.TransformPhysicalPointToContinuousIndex(w.tolist()) for w in ref])
    assert np.abs(g.world_to_index(ref) - back).max() < 1e-9
    assert np.abs(g.world_to_index(world) - idx).max() < 1e-12
    # one point in, one point out; numpy (z, y, x) array indices are reversed (i, j, k)
    assert g.index_to_world(idx[0]).shape == (3,) and np.allclose(g.index_to_world(idx[0]), ref[0], atol=1e-9)
    assert np.array_equal(g.array_index_to_world(idx[:, ::-1]), world)
    # a grid survives a trip through a SimpleITK image exactly
    assert Grid.from_image(g.reference_image()) == g
    arr = np.arange(np.prod(g.array_shape), dtype=np.float32).reshape(g.array_shape)
    im = g.image_from_array(arr)
    assert Grid.from_image(im) == g and np.array_equal(sitk.GetArrayViewFromImage(im), arr)
    with pytest.raises(ValueError, match="does not match"):
        g.image_from_array(arr.T)
    with pytest.raises(ValueError, match="positive"):
        Grid((3, 3, 3), (1.0, 0.0, 1.0))


def test_grid_bounds_overlap_containment_and_subgrid():
    img = _oblique_image()
    g = Grid.from_image(img)
    n = np.asarray(g.size)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)])
    w = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in corners])
    lo, hi = g.world_bounds()
    assert np.allclose(lo, w.min(0), atol=1e-9) and np.allclose(hi, w.max(0), atol=1e-9)
    far = Grid(g.size, g.spacing, tuple(np.asarray(g.origin) + (hi - lo) + 1.0), g.direction)
    near = Grid(g.size, g.spacing, tuple(np.asarray(g.origin) + 0.5 * (hi - lo)), g.direction)
    assert g.overlaps(near) and near.overlaps(g) and not g.overlaps(far) and not far.overlaps(g)
    # containment: voxel extent, shrunk or grown by a margin
    pts = np.array([[-0.5, 0, 0], [-0.51, 0, 0], [n[0] - 0.5, 3, 2], [4, 3, 2]])
    assert g.contains_index(pts).tolist() == [True, False, True, True]
    assert g.contains_index(pts, margin=0.2).tolist() == [False, False, False, True]
    assert g.contains_index(pts, margin=-0.02).tolist() == [True, True, True, True]
    assert g.contains_world(g.index_to_world(pts)).tolist() == [True, False, True, True]
    # an index box around points, clipped, and the subgrid on the same lattice
    box = g.index_box(g.index_to_world(np.array([[1.2, 2.5, -4.0], [3.0, 2.6, 1.4]])))
    assert [v.tolist() for v in box] == [[1, 2, 0], [3, 3, 2]]
    assert g.index_box(g.index_to_world(np.array([[40.0, 40.0, 40.0]]))) is None
    sub = g.subgrid(*box)
    assert sub.size == (3, 2, 3) and sub.spacing == g.spacing and sub.direction == g.direction
    assert np.allclose(sub.index_to_world([0, 0, 0]), img.TransformIndexToPhysicalPoint((1, 2, 0)), atol=1e-9)
    assert Grid.array_slices(*box) == (slice(0, 3), slice(2, 4), slice(1, 4))


def test_crop_geometry_is_a_grid_with_exact_crop_indices():
    geom = CropGeometry.centered_at((0.75, -0.75, 0.75), 1.5, 128)
    assert geom.grid == Grid(geom.size, geom.spacing, geom.origin_lps, tuple(CROP_DIRECTION.ravel()))
    assert Grid.from_image(geom.reference_image()) == geom.grid
    idx = np.stack(np.meshgrid(*[np.arange(128.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[::97]
    assert np.array_equal(geom.world_to_index(geom.index_to_world(idx)), idx)
    # bit for bit the published crop formulas: a sign flip and a division by the spacing (not a
    # multiplication by a rounded reciprocal), and origin + (index * spacing) with the flips
    o, s = np.asarray(geom.origin_lps), np.asarray(geom.spacing)
    w = np.random.default_rng(2).uniform(-200, 200, size=(500, 3))
    assert np.array_equal(geom.world_to_index(w), ((w - o) @ CROP_DIRECTION) / s)
    assert np.array_equal(geom.index_to_world(idx), o + (idx * s) @ CROP_DIRECTION.T)


def test_image_ref_is_a_grid():
    img = _oblique_image()
    ref = ImageRef.from_image(img, path="pet.nii.gz", sha256="ab")
    assert isinstance(ref, Grid) and ref.path == "pet.nii.gz"
    assert Grid.from_image(img) == Grid(ref.size, ref.spacing, ref.origin, ref.direction)
    p = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 4.5]])
    assert np.array_equal(ref.index_to_world(p), Grid.from_image(img).index_to_world(p))
    assert ref.contains_index((0.0, 0.0, 0.0)) and not ref.contains_index((-0.6, 0.0, 0.0))


def test_grid_mismatches_one_rule_for_images_and_grids():
    img = _oblique_image()
    g = Grid.from_image(img)
    moved = make_image(np.zeros((5, 7, 9), np.float32), (4.07, 3.3, 2.5), (-30.5, 12.26, 101.0), DIRECTIONS["oblique"])
    assert grid_mismatches(img, img) == [] and same_grid(g, img)
    # 0.01 mm is more than 1e-3 of the smallest spacing (2.5 mm): refused, with the numbers
    assert [m[0] for m in grid_mismatches(img, moved)] == ["origin"]
    assert grid_differences(g, Grid.from_image(moved)) == ["origin (-30.5, 12.26, 101) vs (-30.5, 12.25, 101)"]
    assert same_grid(img, moved, coord_tol=0.02)
    small = Grid((9, 7, 4), g.spacing, g.origin, g.direction)
    assert grid_differences(g, small) == ["size (9, 7, 4) vs (9, 7, 5)"]


def test_same_lattice_cut_extended_or_flipped_but_not_moved_or_finer():
    g = Grid.from_image(_oblique_image())
    assert same_lattice(g, g)
    cut = g.subgrid((1, 2, 1), (5, 6, 3))
    assert same_lattice(g, cut) and not same_grid(g, cut)
    m = g.direction_matrix
    top = g.index_to_world((0, 0, g.size[2] - 1))  # the same voxels stored from the last slice
    flipped = Grid(g.size, g.spacing, tuple(top), tuple((m @ np.diag([1.0, 1.0, -1.0])).ravel()))
    assert same_lattice(g, flipped) and not same_grid(g, flipped)
    shifted = Grid(g.size, g.spacing, tuple(g.index_to_world((0.5, 0, 0))), g.direction)  # half a voxel
    finer = Grid(g.size, tuple(np.asarray(g.spacing) / 2), g.origin, g.direction)  # every other voxel is new
    coarser = Grid(g.size, tuple(np.asarray(g.spacing) * 2), g.origin, g.direction)  # voxels of g, but sparse
    assert not same_lattice(g, shifted) and not same_lattice(g, finer) and not same_lattice(g, coarser)
    assert g.describe().startswith("9x7x5 of 4.07x3.3x2.5 mm at (-30.5, 12.25, 101), direction (")
    assert Grid((2, 3, 4), (1.0, 1.5, 3.0), (0.5, -2, 1e3)).describe() == "2x3x4 of 1x1.5x3 mm at (0.5, -2, 1000)"
