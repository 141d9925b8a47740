"""PET maximum-intensity projections (MIPs) with mask outlines, points and boxes.

Everything is computed in patient space, so a picture looks the same whatever the image's
direction cosines:

* images are reoriented to LPS-aligned storage with :func:`SimpleITK.DICOMOrient` (an exact
  permutation/flip); an oblique image is then resampled onto an LPS-aligned grid covering it
  (linear for PET, nearest neighbour for masks);
* ``"coronal"`` is the anterior view (projection along the anterior-posterior axis), head up,
  the patient's right on the viewer's left, as nuclear-medicine readers show it;
  ``"sagittal"`` projects along left-right, head up, anterior on the viewer's left;
* every 2-D array comes with an ``extent`` in millimetres ``(left, right, bottom, top)`` for
  ``imshow(..., origin="upper", extent=extent)``, so the physical aspect ratio is right and
  masks from other grids line up.

Pictures use inverted grey PET (SUV window 0..10 by default), coloured mask outlines (contours
of the mask MIP), a legend and a scale bar.  :func:`save_mip_figure` writes a PNG atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.io_utils import atomic_path

AXES = ("coronal", "sagittal")
DEFAULT_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def _check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, not {axis!r}")
    return axis


def to_lps_aligned(image: sitk.Image, is_label: bool = False) -> sitk.Image:
    """The image on an LPS-aligned grid (identity direction): exact for axis-aligned images,
    resampled (linear, or nearest neighbour for labels) for oblique ones."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    img = sitk.DICOMOrient(image, "LPS")
    D = np.array(img.GetDirection()).reshape(3, 3)
    if np.allclose(D, np.eye(3), atol=1e-6):
        return img
    # oblique: resample onto an identity-direction grid covering the image's bounding box
    size = np.array(img.GetSize())
    sp = np.array(img.GetSpacing())
    corners = np.array([[a, b, c] for a in (0, size[0] - 1) for b in (0, size[1] - 1)
                        for c in (0, size[2] - 1)], float)
    world = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    lo, hi = world.min(0), world.max(0)
    new_size = np.ceil((hi - lo) / sp).astype(int) + 1
    ref = sitk.Image([int(v) for v in new_size], img.GetPixelID())
    ref.SetSpacing(tuple(float(v) for v in sp))
    ref.SetOrigin(tuple(float(v) for v in lo))
    ref.SetDirection(tuple(np.eye(3).ravel().tolist()))
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, img.GetPixelID())


def _project(image: sitk.Image, axis: str, is_label: bool, reduce) -> tuple[np.ndarray, tuple]:
    _check_axis(axis)
    img = to_lps_aligned(image, is_label=is_label)
    arr = sitk.GetArrayViewFromImage(img)  # (z: S+, y: P+, x: L+)
    sp = np.array(img.GetSpacing())
    o = np.array(img.GetOrigin())
    n = np.array(img.GetSize())
    # voxel-edge extents along each world axis
    lo = o - sp / 2.0
    hi = o + sp * (n - 0.5)
    if axis == "coronal":
        m = reduce(arr, axis=1)  # (z, x)
        # rows: superior at the top; columns: patient right (small x) on the viewer's left
        out = m[::-1, :]
        extent = (lo[0], hi[0], lo[2], hi[2])
    else:
        m = reduce(arr, axis=2)  # (z, y)
        # columns: anterior (small y) on the viewer's left
        out = m[::-1, :]
        extent = (lo[1], hi[1], lo[2], hi[2])
    return np.ascontiguousarray(out), tuple(float(v) for v in extent)


def mip(image: sitk.Image, axis: str = "coronal") -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Maximum-intensity projection of a 3-D image in patient orientation.

    Returns ``(array2d, extent)``: row 0 is the most superior row; for ``"coronal"`` column 0
    is the patient's right (anterior view), for ``"sagittal"`` column 0 is anterior.  ``extent``
    is ``(left, right, bottom, top)`` in LPS millimetres (x or y horizontally, z vertically).
    """
    return _project(image, axis, False, np.max)


def mask_mip(mask: sitk.Image, axis: str = "coronal") -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Boolean projection (any voxel > 0 along the ray) of a mask, same layout as :func:`mip`."""
    arr, ext = _project(mask, axis, True, np.max)
    return arr > 0, ext


def project_points(points_world, axis: str) -> np.ndarray:
    """(N, 3) LPS mm points -> (N, 2) plot coordinates (horizontal mm, vertical mm)."""
    p = np.asarray(points_world, float).reshape(-1, 3)
    return p[:, [0, 2]] if _check_axis(axis) == "coronal" else p[:, [1, 2]]


def _scale_bar(ax, extent, color="black"):
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    width = abs(extent[1] - extent[0])
    length = 100 if width > 250 else 50
    bar = AnchoredSizeBar(ax.transData, length, f"{length} mm", "lower right", pad=0.4,
                          color=color, frameon=False, size_vertical=max(width / 150, 1.0),
                          fontproperties={"size": 7})
    ax.add_artist(bar)


def plot_case(ax, pet: sitk.Image, masks: "Mapping[str, tuple[sitk.Image, str]] | None" = None,
              axis: str = "coronal", points_world=None, point_labels=None, boxes_world=None,
              title: str | None = None, vmax: float = 10.0, legend: bool = True,
              scale_bar: bool = True, linewidth: float = 1.0):
    """Draw one MIP panel on a matplotlib ``ax``.

    ``masks``: ``{name: (mask image, colour)}``; each is outlined (contour of its MIP).
    ``points_world``: (N, 3) LPS mm; ``point_labels`` 1 (positive, drawn as a green plus) or
    0 (negative, red cross).  ``boxes_world``: iterable of ``(min_lps, max_lps)`` corners in mm.
    Returns the ``AxesImage`` of the PET.
    """
    arr, ext = mip(pet, axis)
    im = ax.imshow(arr, cmap="gray_r", vmin=0.0, vmax=vmax, extent=ext, origin="upper",
                   interpolation="bilinear", aspect="equal")
    handles = _draw_masks(ax, masks, axis, linewidth)
    handles += _draw_points(ax, points_world, point_labels, axis)
    handles += _draw_boxes(ax, boxes_world, axis)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if axis == "coronal":
        ax.text(0.02, 0.98, "R", transform=ax.transAxes, va="top", ha="left", fontsize=7, color="0.3")
        ax.text(0.98, 0.98, "L", transform=ax.transAxes, va="top", ha="right", fontsize=7, color="0.3")
    else:
        ax.text(0.02, 0.98, "A", transform=ax.transAxes, va="top", ha="left", fontsize=7, color="0.3")
        ax.text(0.98, 0.98, "P", transform=ax.transAxes, va="top", ha="right", fontsize=7, color="0.3")
    if title:
        ax.set_title(title, fontsize=8)
    if legend and handles:
        ax.legend(handles=handles, loc="lower left", fontsize=6, frameon=True, framealpha=0.8)
    if scale_bar:
        _scale_bar(ax, ext)
    return im


def _draw_masks(ax, masks, axis: str, linewidth: float) -> list:
    """Outline each mask (contour of its MIP); one legend handle per mask."""
    from matplotlib.lines import Line2D

    handles = []
    for n, (name, spec) in enumerate((masks or {}).items()):
        if isinstance(spec, sitk.Image):
            mimg, color = spec, DEFAULT_COLORS[n % len(DEFAULT_COLORS)]
        else:
            mimg, color = spec
        marr, mext = mask_mip(mimg, axis)
        if marr.any():
            # contour coordinates: pixel centres of the mask MIP in mm
            h, w = marr.shape
            xs = np.linspace(mext[0], mext[1], w, endpoint=False) + (mext[1] - mext[0]) / (2 * w)
            ys = np.linspace(mext[3], mext[2], h, endpoint=False) + (mext[2] - mext[3]) / (2 * h)
            ax.contour(xs, ys, marr.astype(np.float32), levels=[0.5], colors=[color],
                       linewidths=linewidth)
        handles.append(Line2D([], [], color=color, lw=1.5, label=name))
    return handles


def _draw_points(ax, points_world, point_labels, axis: str) -> list:
    """Positive points as green pluses, negative ones as red crosses; their legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    if points_world is not None and len(points_world):
        pts = project_points(points_world, axis)
        labels = np.ones(len(pts), int) if point_labels is None else np.asarray(point_labels).ravel()
        pos, neg = labels > 0, labels <= 0
        if pos.any():
            ax.plot(pts[pos, 0], pts[pos, 1], "+", color="#00a000", ms=7, mew=1.5, ls="none")
            handles.append(Line2D([], [], marker="+", color="#00a000", ls="none", label="positive point"))
        if neg.any():
            ax.plot(pts[neg, 0], pts[neg, 1], "x", color="#d00000", ms=6, mew=1.5, ls="none")
            handles.append(Line2D([], [], marker="x", color="#d00000", ls="none", label="negative point"))
    return handles


def _draw_boxes(ax, boxes_world, axis: str) -> list:
    """Box prompts as orange rectangles; a legend handle when there is one."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    handles = []
    if boxes_world is not None:
        nbox = 0
        for lo, hi in boxes_world:
            p = project_points(np.array([lo, hi], float), axis)
            x0, y0 = p.min(0)
            x1, y1 = p.max(0)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#ff9900", lw=1.0))
            nbox += 1
        if nbox:
            handles.append(Line2D([], [], color="#ff9900", lw=1.0, label="box prompt"))
    return handles


@dataclass
class Panel:
    """One panel of :func:`save_mip_figure` (keyword arguments of :func:`plot_case`)."""

    pet: sitk.Image
    masks: "Mapping[str, Any] | None" = None
    axis: str = "coronal"
    points_world: Any = None
    point_labels: Any = None
    boxes_world: Any = None
    title: str | None = None
    extra: dict = field(default_factory=dict)


def save_mip_figure(path: "str | os.PathLike", panels: "Sequence[Panel | Mapping[str, Any]]",
                    ncols: int | None = None, vmax: float = 10.0, suptitle: str | None = None,
                    panel_width: float = 2.4, dpi: int = 130, colorbar: bool = True) -> Path:
    """Render panels side by side (wrapping after ``ncols``) and write a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [p if isinstance(p, Panel) else Panel(**p) for p in panels]
    if not panels:
        raise ValueError("no panels to draw")
    n = len(panels)
    ncols = min(ncols or n, n)
    nrows = (n + ncols - 1) // ncols
    # height from the physical aspect of the first panel
    _, ext = mip(panels[0].pet, panels[0].axis)
    aspect = abs(ext[3] - ext[2]) / max(abs(ext[1] - ext[0]), 1e-6)
    fig = Figure(figsize=(panel_width * ncols + (0.6 if colorbar else 0), panel_width * aspect * nrows + 0.4
                          + (0.3 if suptitle else 0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for ax, p in zip(axes.ravel(), panels):
        im = plot_case(ax, p.pet, p.masks, p.axis, p.points_world, p.point_labels, p.boxes_world,
                       p.title, vmax=vmax, **p.extra)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93 if colorbar else 1, 1))
    if colorbar and im is not None:
        cax = fig.add_axes((0.945, 0.25, 0.015, 0.5))
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("SUV", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def lesion_outline_panels(cases: Iterable[Any], axis: str = "coronal") -> list[Panel]:
    """Panels for in-memory :class:`~sam_l1dfl.data.synthetic.SyntheticCase` objects."""
    out = []
    for c in cases:
        n = len(c.lesions)
        out.append(Panel(pet=c.pet, masks={"lesions (SEG)": (c.seg, DEFAULT_COLORS[0])}, axis=axis,
                         title=f"{c.case_id}: {n} lesion{'s' if n != 1 else ''}"))
    return out
