"""Interactive segmentation of one object, click by click: the Python API behind ``sam-l1dfl serve``.

::

    sess = InteractiveSession(Segmenter("runs/x/best"))
    sess.set_image(pet[None], spacing=(3.0, 4.07, 4.07))   # [C, a, b, c]; spacing in array order
    change = sess.add_point((40, 52, 61), positive=True)    # a voxel index in array order
    sess.mask           # uint8 (a, b, c): the object's mask, 1 inside
    change.bbox         # [[lo, hi]] * 3, half-open: the box of the mask that changed (None: nothing)
    sess.add_point((44, 50, 60), positive=False)           # refines the same object
    sess.undo(); sess.reset()

**Axes.**  Everything is in the array's axis order, as nnInteractive's protocol has it: the image
``[C, a, b, c]``, its ``spacing`` (mm per axis), points ``(a, b, c)`` and boxes ``[[a0, a1], [b0,
b1], [c0, c1]]`` (half-open voxel ranges; a 2D box has one range of width 1).  The image is put
into world space as SimpleITK reads such an array: axis ``c`` is the image's first (x) axis.
``origin`` (LPS mm of voxel ``[0, 0, 0]``) and ``direction`` (3 x 3, row-major, column ``k`` the
LPS direction of array axis ``k``) are our extension; without them the origin is 0 and array axes
``c, b, a`` run along L, P, S.  Without ``spacing`` 1 mm is assumed, and :meth:`set_image` says so.

**The steps are the segmenter's** (:class:`~sam_l1dfl.inference.Segmenter`), so a click gives what
``sam-l1dfl infer`` gives for the same image, spacing and prompts:

1. The prompts so far become one lesion prompt (:class:`~.lesions.PromptResolver`: points inside
   the image, a box's centre as the positive point of weights without box embeddings).
2. The first prediction places a crop as ``infer`` does (:func:`~.planning.plan_crops`, centred on
   the lesion's prompt extent).  Later clicks inside that crop keep it, and its image embedding is
   cached (:class:`~.encoding.CropEncoder` runs once per crop); a positive click outside it, or a
   new box, places it again from all the prompts, as ``infer`` would.
3. :meth:`~.decoding.LesionDecoder.decode_lesion` decodes all the points with the previous
   low-resolution logits as the mask prompt (SAM-Med3D's click loop; empty for a new crop, so the
   first click, and the first click after a move, equal ``infer`` exactly).  An initial
   segmentation becomes the mask prompt as ``+-`` :data:`INITIAL_MASK_LOGIT` logits of its
   occupancy at the low resolution.
4. :func:`~.mapping.map_logits` puts the crop logits on the image grid (one linear resampling,
   thresholded there); the prediction replaces the mask on the part of the grid that the crop
   covers and leaves the rest as it was (nnInteractive pastes its patch the same way).

Undo restores the state and the mask before the last interaction exactly (up to ``max_undo``
steps); :meth:`reset` starts a new object on the same image.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from sam_l1dfl.data.geometry import CropGeometry, resample_to_crop
from sam_l1dfl.data.io import Case
from sam_l1dfl.errors import InputError, PromptError
from sam_l1dfl.prompts.types import CasePrompts, ImageRef, LesionPrompts, PointPrompt, box_from_index_bounds

from .lesions import PromptedLesion
from .mapping import map_logits, threshold_logit
from .planning import plan_crops
from .results import InferenceReport

#: Logit magnitude of an initial segmentation given as a mask prompt (sigmoid(4) = 0.982).
INITIAL_MASK_LOGIT = 4.0


#: What a box does with weights that have no box embeddings (the official ones).
BOX_NOTE = "these weights have no box embeddings: the box placed the crop and gave a positive click at its centre"


class StateError(InputError):
    """A call that does not fit the session's state (a click before any image)."""


@dataclass(frozen=True)
class ObjectState:
    """What the session knows of its object: the prompts (world LPS), the crop they are decoded
    in, the last low-resolution logits there, the initial segmentation, unpredicted prompts."""

    points: tuple[PointPrompt, ...] = ()
    boxes: tuple = ()
    crop: "CropGeometry | None" = None
    low: "torch.Tensor | None" = None
    initial: "np.ndarray | None" = None
    replace_crop: bool = False
    pending: bool = False

    @property
    def has_positive(self) -> bool:
        return any(p.positive for p in self.points) or bool(self.boxes) or self.initial is not None


@dataclass
class Change:
    """What an interaction did: ``ran`` (a prediction or an undo ran), ``bbox`` (half-open, array
    order: the part of the mask that changed; None when nothing did), notes, and a report."""

    ran: bool
    bbox: "list[list[int]] | None" = None
    notes: list[str] = field(default_factory=list)
    iou: "float | None" = None
    encoded: bool = False
    report: "InferenceReport | None" = None


def _diff_box(old: np.ndarray, new: np.ndarray) -> "list[list[int]] | None":
    """Half-open box of the voxels where ``old`` and ``new`` differ (None: none do)."""
    d = old != new
    if not d.any():
        return None
    box = []
    for ax in range(d.ndim):
        hit = np.flatnonzero(d.any(axis=tuple(a for a in range(d.ndim) if a != ax)))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def _slices(box) -> tuple:
    return tuple(slice(lo, hi) for lo, hi in box)


def _finite_numbers(values, n: int, what: str) -> np.ndarray:
    """``values`` (nested lists allowed) as ``n`` float64 numbers, or a one-line error."""
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(None, f"{what} must be {n} finite numbers, got {str(values)[:80]}")
    return arr


def parse_geometry(spacing=None, origin=None, direction=None) -> "tuple[tuple, tuple | None, tuple | None, list[str]]":
    """``(spacing, origin, direction, notes)`` in SimpleITK's order from the conventions of the module
    docstring, checked (positive spacing, finite numbers, an orthonormal direction); one-line errors."""
    notes = []
    if spacing is None:
        sp = np.ones(3)
        notes.append("no spacing given: 1 mm assumed on every axis")
    else:
        sp = _finite_numbers(spacing, 3, "spacing")
        if (sp <= 0).any():
            raise InputError(None, f"spacing must be positive, got {sp.tolist()}")
    org = None if origin is None else tuple(float(v) for v in _finite_numbers(origin, 3, "origin"))
    dsitk = None
    if direction is not None:
        d = _finite_numbers(direction, 9, "direction").reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
            raise InputError(None, "direction must be an orthonormal 3 x 3 matrix")
        dsitk = tuple(float(v) for v in d[:, ::-1].ravel())  # columns: array axes c, b, a
    return tuple(float(v) for v in sp[::-1]), org, dsitk, notes


def image_from_array(array: np.ndarray, spacing=None, origin=None, direction=None) -> "tuple[sitk.Image, list[str]]":
    """One channel ``(a, b, c)`` as a SimpleITK image with the conventions of the module docstring,
    and the notes (spacing assumed)."""
    sp, org, d, notes = parse_geometry(spacing, origin, direction)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing(sp)
    if org is not None:
        img.SetOrigin(org)
    if d is not None:
        img.SetDirection(d)
    return img, notes


class InteractiveSession:
    """One user's image and object on a shared :class:`~sam_l1dfl.inference.Segmenter` (see the
    module docstring).  Not thread-safe: the server holds a lock per session, and one more around
    the model.  ``max_undo``: undo steps kept; ``cached_crops``: image embeddings kept."""

    def __init__(self, segmenter, *, max_undo: int = 16, cached_crops: int = 2):
        self.seg = segmenter
        self.encoder = segmenter.crop_encoder()
        self.decoder = segmenter.lesion_decoder()
        self.max_undo = int(max_undo)
        self.cached_crops = int(cached_crops)
        self.case: "Case | None" = None
        self.ref: "ImageRef | None" = None
        self.mask: "np.ndarray | None" = None
        self.state = ObjectState()
        # per interaction: the state before it, and the mask patches (box, old values) it made since
        self._undo: list[tuple[ObjectState, list[tuple[list[list[int]], np.ndarray]]]] = []
        self._emb: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self._thr = threshold_logit(segmenter.threshold)

    # ------------------------------------------------------------------ image
    @property
    def shape(self) -> "tuple[int, int, int] | None":
        return None if self.mask is None else tuple(self.mask.shape)

    def set_image(self, image: np.ndarray, spacing: "Sequence[float] | None" = None,
                  origin: "Sequence[float] | None" = None, direction=None) -> list[str]:
        """A new image ``[C, a, b, c]`` (C = 1: PET; 2 for PET+CT checkpoints: PET, then CT on its
        grid), which starts a new object.  Returns notes (e.g. the spacing assumed)."""
        image = np.asarray(image)
        channels = self.seg.preprocess.channels
        if image.ndim != 4 or image.shape[0] != channels or min(image.shape[1:]) < 1:
            raise InputError(None, f"the image must be [{channels}, a, b, c] (the checkpoint's input_mode is "
                                   f"{self.seg.input_mode!r}), got shape {list(image.shape)}")
        if image.dtype.kind not in "biuf":
            raise InputError(None, f"the image must hold numbers, got dtype {image.dtype}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise InputError(None, "the image has NaN or Inf voxels")
        pet, notes = image_from_array(image[0], spacing, origin, direction)
        ct = None
        if channels == 2:
            ct = sitk.GetImageFromArray(np.ascontiguousarray(image[1], dtype=np.float32))
            ct.CopyInformation(pet)
        self.case = Case(case_id="interactive", pet=pet, ct_native=ct)
        self.ref = ImageRef.from_image(pet)
        self.mask = np.zeros(image.shape[1:], dtype=np.uint8)
        self._emb.clear()
        self._forget()
        return notes

    def clear_mask(self) -> None:
        """A fresh, empty mask (a new target buffer); the prompts stay, the undo steps go."""
        self._need_image()
        self.mask[...] = 0
        self._undo.clear()

    def reset(self) -> None:
        """A new object on the same image: no prompts, an empty mask, nothing to undo."""
        self._need_image()
        self.mask[...] = 0
        self._forget()

    def _forget(self) -> None:
        self.state = ObjectState()
        self._undo.clear()

    def _need_image(self) -> None:
        if self.case is None:
            raise StateError(None, "no image yet: call set_image first")

    # ------------------------------------------------------------------ prompts
    def _index(self, coords, what: str = "point") -> np.ndarray:
        idx = np.rint(_finite_numbers(coords, 3, f"a {what}'s coordinates")).astype(np.int64)
        shape = np.asarray(self.shape)
        if (idx < 0).any() or (idx >= shape).any():
            raise InputError(None, f"{what} {idx.tolist()} lies outside the image (shape {shape.tolist()})")
        return idx

    def add_point(self, coords, positive: bool = True, run: bool = True) -> Change:
        """A click at voxel ``coords`` (array order), positive (on the object) or negative."""
        self._need_image()
        idx = self._index(coords)
        if not positive and not self.state.has_positive:
            raise PromptError(None, "a negative click needs a positive click, a box or an initial segmentation "
                                    "first")
        sitk_idx = tuple(float(v) for v in idx[::-1])
        world = self.case.pet.TransformContinuousIndexToPhysicalPoint(sitk_idx)
        pt = PointPrompt(tuple(world), sitk_idx, 1 if positive else 0, "click")
        crop = self.state.crop
        leaves = positive and crop is not None and not crop.contains_index(crop.world_to_index(np.asarray(world)))
        return self._add(replace(self.state, points=self.state.points + (pt,),
                                 replace_crop=self.state.replace_crop or leaves), run)

    def add_box(self, bounds, positive: bool = True, run: bool = True) -> Change:
        """A box over the half-open voxel ranges ``bounds`` (array order).  Weights with box
        embeddings decode it (the newest box replaces an earlier one); for the others it places
        the crop and gives a positive click at its centre, as ``infer`` does."""
        self._need_image()
        if not positive:
            raise PromptError(None, "SAM-Med3D takes no negative box: draw positive boxes, or use negative clicks")
        try:
            b = np.asarray(bounds, dtype=np.float64)
        except (TypeError, ValueError):
            b = np.zeros(0)
        if b.shape != (3, 2) or not np.isfinite(b).all():
            raise InputError(None, f"a box must be three [start, stop] pairs, got {bounds!r}")
        lo, hi = np.rint(b[:, 0]).astype(np.int64), np.rint(b[:, 1]).astype(np.int64)
        shape = np.asarray(self.shape)
        if (lo < 0).any() or (hi > shape).any() or (hi <= lo).any():
            raise InputError(None, f"box {b.astype(int).tolist()} is empty or lies outside the image "
                                   f"(shape {shape.tolist()})")
        box = box_from_index_bounds(self.ref, (lo[::-1] - 0.5), (hi[::-1] - 0.5), kind="drawn")
        if self.seg.uses_boxes:
            new = replace(self.state, boxes=(box,), replace_crop=True)
        else:
            centre = PointPrompt(box.center, tuple(float(v) for v in (lo + hi - 1)[::-1] / 2.0), 1, "box centre")
            new = replace(self.state, points=self.state.points + (centre,), replace_crop=True)
        change = self._add(new, run)
        if not self.seg.uses_boxes:
            change.notes.append(BOX_NOTE)
        return change

    def set_initial_mask(self, mask: np.ndarray, run: bool = False) -> Change:
        """The object's mask so far (``(a, b, c)``, nonzero inside): it replaces the prompts and the
        mask, and becomes the mask prompt of the next prediction (run now with ``run``)."""
        self._need_image()
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise InputError(None, f"the initial segmentation has shape {list(mask.shape)}, the image "
                                   f"{list(self.shape)}")
        if mask.dtype.kind not in "biuf" or (mask.dtype.kind == "f" and not np.isfinite(mask).all()):
            raise InputError(None, "the initial segmentation must hold finite numbers")
        init = (mask != 0).astype(np.uint8)
        self._push(self.state)
        box = _diff_box(self.mask, init)
        if box is not None:
            self._patch(box, init[_slices(box)])
        self.state = ObjectState(initial=init if init.any() else None, replace_crop=True, pending=True)
        return self.predict() if run else Change(ran=False)

    def _add(self, new: ObjectState, run: bool) -> Change:
        self._push(self.state)
        self.state = replace(new, pending=True)
        return self.predict() if run else Change(ran=False)

    def _push(self, state: ObjectState) -> None:
        """A new undo step that returns to ``state`` (the oldest steps beyond ``max_undo`` go)."""
        self._undo.append((state, []))
        del self._undo[:max(0, len(self._undo) - self.max_undo)]

    def _patch(self, box: list[list[int]], values: np.ndarray) -> None:
        """Write ``values`` into the mask at ``box``, remembering the old values for undo."""
        sl = _slices(box)
        if self._undo:
            self._undo[-1][1].append((box, self.mask[sl].copy()))
        self.mask[sl] = values

    # ------------------------------------------------------------------ predict / undo
    def predict(self) -> Change:
        """Decode the prompts so far (those added with ``run=False`` too); ``ran`` is False when
        there is nothing to decode."""
        self._need_image()
        st = self.state
        if not st.has_positive:
            return Change(ran=False)
        rep = InferenceReport(batch_size=1, device=str(self.seg.device))
        lesion = self._lesion(rep)
        new_crop = st.crop is None or st.replace_crop
        geom = self.seg.preprocess.geometry_at(plan_crops([lesion], self.seg.preprocess, self.seg.margin_vox,
                                                          False)[0].center_lps) if new_crop else st.crop
        emb, encoded = self._embedding(geom, rep)
        mask_prompt = self._initial_prompt(geom) if new_crop else st.low
        low, logits, iou, _ = self.decoder.decode_lesion(emb, geom, lesion, mask_prompt, rep)
        change = self._paste(logits, geom)
        self.state = replace(st, crop=geom, low=low, replace_crop=False, pending=False)
        return Change(ran=True, bbox=change, notes=list(lesion.notes), iou=iou, encoded=encoded, report=rep)

    def _paste(self, logits: np.ndarray, geom: CropGeometry) -> "list[list[int]] | None":
        """The crop's thresholded logits replace the mask where the crop covers the image; the box
        that changed (also what the undo step of this prediction restores)."""
        mapped = map_logits(self.case.pet, logits, geom)
        if mapped is None:
            return None
        sl, a = mapped
        new = (a >= self._thr).astype(np.uint8)
        local = _diff_box(self.mask[sl], new)
        if local is None:
            return None
        box = [[s.start + lo, s.start + hi] for s, (lo, hi) in zip(sl, local)]
        self._patch(box, new[_slices(local)])
        return box

    def undo(self) -> Change:
        """Back to the state and mask before the last interaction (``ran`` False: nothing to undo)."""
        self._need_image()
        if not self._undo:
            return Change(ran=False)
        state, patches = self._undo.pop()
        for box, old in reversed(patches):
            self.mask[_slices(box)] = old
        self.state = state
        boxes = [b for b, _ in patches]
        union = [[min(b[ax][0] for b in boxes), max(b[ax][1] for b in boxes)] for ax in range(3)] if boxes else None
        return Change(ran=True, bbox=union)

    # ------------------------------------------------------------------ the steps
    def _lesion(self, rep: InferenceReport) -> PromptedLesion:
        st = self.state
        if st.points or st.boxes:
            prompts = CasePrompts("interactive", self.ref, [LesionPrompts(1, list(st.points), list(st.boxes))])
            return self.seg.resolver.lesions(self.case.pet, prompts, rep)[0]
        # only an initial segmentation: the crop goes to the centre of its bounding box
        box = _diff_box(np.zeros_like(st.initial), st.initial)
        centre_idx = [(lo + hi - 1) / 2.0 for lo, hi in reversed(box)]
        c = np.asarray(self.case.pet.TransformContinuousIndexToPhysicalPoint(centre_idx))
        return PromptedLesion(1, 1, np.zeros((0, 3)), np.zeros((0, 3)), [], c, c)

    def _embedding(self, geom: CropGeometry, rep: InferenceReport) -> "tuple[torch.Tensor, bool]":
        key = tuple(np.round(np.asarray(geom.origin_lps, dtype=np.float64), 4))
        if key in self._emb:
            self._emb.move_to_end(key)
            return self._emb[key], False
        emb = self.encoder.encode(self.case, [geom], rep)
        self._emb[key] = emb
        while len(self._emb) > self.cached_crops:
            self._emb.popitem(last=False)
        return emb, True

    def _initial_prompt(self, geom: CropGeometry) -> "torch.Tensor | None":
        """The initial segmentation as low-resolution mask-prompt logits in ``geom`` (None without one)."""
        init = self.state.initial
        if init is None:
            return None
        img = sitk.GetImageFromArray(init.astype(np.float32))
        img.CopyInformation(self.case.pet)
        occ = torch.from_numpy(np.ascontiguousarray(resample_to_crop(img, geom, "linear", 0.0), dtype=np.float32))
        f = self.seg.preprocess.crop_size // self.decoder.low_res_size
        frac = F.avg_pool3d(occ[None, None], f) if f > 1 else occ[None, None]
        return (INITIAL_MASK_LOGIT * (2.0 * frac - 1.0)).to(self.decoder.device)


__all__ = ["BOX_NOTE", "Change", "INITIAL_MASK_LOGIT", "InteractiveSession", "ObjectState", "StateError", "image_from_array", "parse_geometry"]
