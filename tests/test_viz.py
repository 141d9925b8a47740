"""PET MIP pictures: patient orientation for any direction cosines, outlines, PNG output."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl import viz

SIZE = (20, 16, 24)  # (i, j, k)
SPACING = (4.0, 3.0, 2.5)


def _image(direction, point_lps, origin=(-37.0, 12.0, -480.0), value=5.0, is_label=False):
    """Blank image with one bright voxel nearest to ``point_lps``."""
    img = sitk.Image(SIZE, sitk.sitkUInt8 if is_label else sitk.sitkFloat32)
    img.SetSpacing(SPACING)
    img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    img.SetOrigin(origin)
    idx = img.TransformPhysicalPointToIndex(tuple(float(v) for v in point_lps))
    img[idx] = 1 if is_label else value
    return img, np.array(img.TransformIndexToPhysicalPoint(idx))


def _rot(deg_z, deg_x):
    cz, sz = np.cos(np.radians(deg_z)), np.sin(np.radians(deg_z))
    cx, sx = np.cos(np.radians(deg_x)), np.sin(np.radians(deg_x))
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


DIRECTIONS = {
    "lps": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float),  # columns: i->P, j->-S, k->L
    "oblique": _rot(12, -17),
}


def _peak_world(arr, ext):
    r, c = np.unravel_index(np.argmax(arr), arr.shape)
    h, w = arr.shape
    x = ext[0] + (c + 0.5) * (ext[1] - ext[0]) / w
    z = ext[3] - (r + 0.5) * (ext[3] - ext[2]) / h
    return x, z


@pytest.mark.parametrize("kind", list(DIRECTIONS))
def test_mip_places_a_voxel_at_its_world_position(kind):
    D = DIRECTIONS[kind]
    centre = np.array([-37.0, 12.0, -480.0]) + D @ (np.array(SPACING) * (np.array(SIZE) - 1) / 2)
    img, p = _image(D, centre + np.array([-11.0, 7.0, 14.0]))
    tol = 0.6 * max(SPACING) if kind != "oblique" else 1.5 * max(SPACING)
    cor, ext = viz.mip(img, "coronal")
    assert cor.max() == pytest.approx(5.0, rel=0.05 if kind != "oblique" else 0.9)
    x, z = _peak_world(cor, ext)
    assert abs(x - p[0]) <= tol and abs(z - p[2]) <= tol
    sag, ext_s = viz.mip(img, "sagittal")
    y, z2 = _peak_world(sag, ext_s)
    assert abs(y - p[1]) <= tol and abs(z2 - p[2]) <= tol
    # the mask projection of the same voxel lands on the same spot
    mimg, _ = _image(D, p, is_label=True)
    mm, mext = viz.mask_mip(mimg, "coronal")
    assert mm.dtype == bool and mm.sum() >= 1
    mx, mz = _peak_world(mm.astype(float), mext)
    assert abs(mx - x) <= tol and abs(mz - z) <= tol


def test_orientation_convention_and_extent():
    """Anterior view: patient right on the viewer's left, head at the top; extents in mm."""
    img = sitk.Image(SIZE, sitk.sitkFloat32)
    img.SetSpacing(SPACING)
    img[1, 8, 22] = 9.0  # patient right (small x), superior (large z)
    cor, ext = viz.mip(img, "coronal")
    assert cor.shape == (SIZE[2], SIZE[0])
    r, c = np.unravel_index(np.argmax(cor), cor.shape)
    assert c == 1 and r == SIZE[2] - 1 - 22
    assert ext[1] - ext[0] == pytest.approx(SIZE[0] * SPACING[0])
    assert ext[3] - ext[2] == pytest.approx(SIZE[2] * SPACING[2])
    img2 = sitk.Image(SIZE, sitk.sitkFloat32)
    img2.SetSpacing(SPACING)
    img2[5, 2, 3] = 9.0  # anterior (small y)
    sag, ext_s = viz.mip(img2, "sagittal")
    assert sag.shape == (SIZE[2], SIZE[1])
    r, c = np.unravel_index(np.argmax(sag), sag.shape)
    assert c == 2 and r == SIZE[2] - 1 - 3  # anterior on the viewer's left
    with pytest.raises(ValueError):
        viz.mip(img, "axial")


def test_project_points():
    p = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(viz.project_points(p, "coronal"), [[1, 3], [4, 6]])
    np.testing.assert_array_equal(viz.project_points(p, "sagittal"), [[2, 3], [5, 6]])


def _phantom():
    from sam_l1dfl.data.synthetic import generate_case

    return generate_case(3, "viz_case", n_lesions=5)


def test_save_mip_figure_writes_png_atomically(tmp_path):
    from matplotlib.image import imread

    case = _phantom()
    les = case.lesions[0]
    lo = np.array(les["centroid_lps"]) - 15
    hi = np.array(les["centroid_lps"]) + 15
    panels = [
        viz.Panel(pet=case.pet, masks={"SEG": (case.seg, "red")}, axis="coronal", title="coronal",
                  points_world=[les["centroid_lps"], lo], point_labels=[1, 0], boxes_world=[(lo, hi)]),
        dict(pet=case.pet, masks={"SEG": case.seg}, axis="sagittal", title="sagittal"),
    ]
    out = tmp_path / "fig.png"
    assert viz.save_mip_figure(out, panels) == out
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    # something dark (PET), something red (outline) and something green (positive point)
    rgb = img[..., :3]
    assert (rgb.sum(-1) < 0.6).any()
    assert ((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).any()
    assert ((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # no temporary left behind
    with pytest.raises(ValueError):
        viz.save_mip_figure(tmp_path / "empty.png", [])


def test_cli_mip(tmp_path, capsys):
    from sam_l1dfl.cli import main
    from sam_l1dfl.io_utils import write_image_atomic

    case = _phantom()
    pet, seg = tmp_path / "SUV.nii.gz", tmp_path / "SEG.nii.gz"
    write_image_atomic(case.pet, pet)
    write_image_atomic(case.seg, seg)
    out = tmp_path / "mip.png"
    assert main(["mip", "--pet", str(pet), "--mask", f"lesions={seg}", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert main(["mip", "--pet", str(pet), "--mask", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    far = sitk.Image(case.seg)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    write_image_atomic(far, tmp_path / "far.nii.gz")
    assert main(["mip", "--pet", str(pet), "--mask", str(tmp_path / "far.nii.gz"), "--out", str(out)]) == 2
    assert "does not overlap" in capsys.readouterr().err
    assert main(["mip", "--pet", str(pet), "--out", str(tmp_path / "x.jpg")]) == 2
