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
``[C, a, b, c]``, its ``spacing``, points ``(a, b, c)`` and boxes (half-open voxel ranges; a 2D box
has one range of width 1); :mod:`.array_input` has the conventions and the checks.  Without
``origin``/``direction`` (our extension) array axes ``c, b, a`` run along L, P, S from 0; without
``spacing`` 1 mm is assumed, and :meth:`set_image` says so.

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
   segmentation becomes the mask prompt (:func:`~.object_state.mask_prompt_from`).
4. :func:`~.mapping.map_logits` puts the crop logits on the image grid (one linear resampling,
   thresholded there); the prediction replaces the mask on the part of the grid that the crop
   covers and leaves the rest as it was (nnInteractive pastes its patch the same way).

Undo restores the state and the mask before the last interaction exactly (up to ``max_undo``
steps, :class:`~.object_state.UndoHistory`); :meth:`reset` starts a new object on the same image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.data.io import Case
from sam_l1dfl.errors import InputError, PromptError
from sam_l1dfl.prompts.types import CasePrompts, ImageRef, LesionPrompts, PointPrompt, box_from_index_bounds

from .array_input import check_image, check_mask, image_from_array, parse_geometry, voxel_box, voxel_index
from .lesions import PromptedLesion
from .mapping import map_logits, threshold_logit
from .object_state import (INITIAL_MASK_LOGIT, Change, EmbeddingCache, ObjectState, UndoHistory, diff_box,
                           mask_prompt_from, slices)
from .planning import plan_crops
from .results import InferenceReport

#: What a negative click outside the current crop does.
OUTSIDE_NOTE = "negative click outside the current crop: kept, no effect on this crop's mask"
#: Said when positive prompts lie outside the crop (they span more than one crop).
FAR_NOTE = ("{n} positive point(s) outside the crop: the prompts span more than one crop; for another object, "
            "reset first")
#: What a box does with weights that have no box embeddings (the official ones).
BOX_NOTE = "these weights have no box embeddings: the box placed the crop and gave a positive click at its centre"


class StateError(InputError):
    """A call that does not fit the session's state (a click before any image)."""


def object_lesion(resolver, pet: "sitk.Image", ref: ImageRef, st: ObjectState, rep: InferenceReport) -> PromptedLesion:
    """The prompts so far as one resolved lesion (as ``infer`` resolves a prompt file's, by
    ``resolver``); with an initial segmentation and no positive prompt, its negative points and the
    centre of the segmentation's box as the extent (where a new crop goes)."""
    if any(p.positive for p in st.points) or st.boxes:
        prompts = CasePrompts("interactive", ref, [LesionPrompts(1, list(st.points), list(st.boxes))])
        return resolver.lesions(pet, prompts, rep)[0]
    box = diff_box(np.zeros_like(st.initial), st.initial)
    c = np.asarray(pet.TransformContinuousIndexToPhysicalPoint([(lo + hi - 1) / 2.0 for lo, hi in reversed(box)]))
    neg = np.array([p.world for p in st.points], dtype=np.float64).reshape(-1, 3)
    return PromptedLesion(1, 1, np.zeros((0, 3)), neg, [], c, c)


def paste(mask: np.ndarray, history: UndoHistory, mapped, thr_logit: float) -> "list[list[int]] | None":
    """A prediction's logits on the image grid (:func:`~.mapping.map_logits`: slices and values)
    thresholded into ``mask`` where the crop covers the image, the old values kept in ``history``;
    the box that changed (None: nothing did)."""
    if mapped is None:
        return None
    sl, a = mapped
    new = (a >= thr_logit).astype(np.uint8)
    local = diff_box(mask[sl], new)
    if local is None:
        return None
    box = [[s.start + lo, s.start + hi] for s, (lo, hi) in zip(sl, local)]
    history.patch(mask, box, new[slices(local)])
    return box


def crop_and_mask_prompt(seg, decoder, pet: "sitk.Image", st: ObjectState, lesion: PromptedLesion):
    """``(crop, mask prompt)`` of the next decode: the current crop and its last low-res logits; or,
    when the crop is placed (again), the crop ``infer`` plans for ``lesion`` (a note on the lesion
    when its positive points do not all fit), with the initial segmentation as the mask prompt."""
    if st.crop is not None and not st.replace_crop:
        return st.crop, st.low
    cfg = seg.preprocess
    geom = cfg.geometry_at(plan_crops([lesion], cfg, seg.margin_vox, False)[0].center_lps)
    far = int((~geom.contains_index(geom.world_to_index(lesion.pos))).sum()) if len(lesion.pos) else 0
    if far:  # the prompts span more than one crop: most likely another object clicked without a reset
        lesion.notes.append(FAR_NOTE.format(n=far))
    if st.initial is None:
        return geom, None
    return geom, mask_prompt_from(st.initial, pet, geom, cfg.crop_size, decoder.low_res_size, decoder.device)


def held_bytes(session: "InteractiveSession") -> int:
    """Memory a session holds: image(s), mask, cached embeddings (undo patches not counted)."""
    if session.case is None:
        return 0
    imgs = [i for i in (session.case.pet, session.case.ct_native) if i is not None]
    return sum(i.GetNumberOfPixels() * 4 for i in imgs) + session.mask.nbytes + session.embeddings.nbytes()


class InteractiveSession:
    """One user's image and object on a shared Segmenter (module docstring); not thread-safe (the
    server locks each session, and the model).  Keeps ``max_undo`` steps, ``cached_crops`` embeddings."""

    def __init__(self, segmenter, *, max_undo: int = 16, cached_crops: int = 2):
        self.seg = segmenter
        self.decoder = segmenter.lesion_decoder()
        self.embeddings = EmbeddingCache(segmenter.crop_encoder(), cached_crops)
        self.history = UndoHistory(max_undo)
        self.case: "Case | None" = None
        self.ref: "ImageRef | None" = None
        self.mask: "np.ndarray | None" = None
        self.state = ObjectState()
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
        check_image(image, channels, self.seg.input_mode)
        pet, notes = image_from_array(image[0], spacing, origin, direction)
        ct = None
        if channels == 2:
            ct = sitk.GetImageFromArray(np.ascontiguousarray(image[1], dtype=np.float32))
            ct.CopyInformation(pet)
        self.case = Case(case_id="interactive", pet=pet, ct_native=ct)
        self.ref = ImageRef.from_image(pet)
        self.mask = np.zeros(image.shape[1:], dtype=np.uint8)
        self.embeddings.clear()
        self.state = ObjectState()
        self.history.clear()
        return notes

    def clear_mask(self, forget_prompts: bool = False) -> None:
        """A fresh, empty mask (a new target buffer) with nothing to undo; with ``forget_prompts``
        (:meth:`reset`) a new object: no prompts either."""
        self._need_image()
        self.mask[...] = 0
        self.history.clear()
        if forget_prompts:
            self.state = ObjectState()

    def reset(self) -> None:
        """A new object on the same image: no prompts, an empty mask, nothing to undo."""
        self.clear_mask(forget_prompts=True)

    def _need_image(self) -> None:
        if self.case is None:
            raise StateError(None, "no image yet: call set_image first")

    # ------------------------------------------------------------------ prompts
    def add_point(self, coords, positive: bool = True, run: bool = True) -> Change:
        """A click at voxel ``coords`` (array order), positive (on the object) or negative."""
        self._need_image()
        idx = voxel_index(coords, self.shape)
        if not positive and not self.state.has_positive:
            raise PromptError(None, "a negative click needs a positive click, a box or an initial segmentation "
                                    "first")
        sitk_idx = tuple(float(v) for v in idx[::-1])
        world = self.case.pet.TransformContinuousIndexToPhysicalPoint(sitk_idx)
        pt = PointPrompt(tuple(world), sitk_idx, 1 if positive else 0, "click")
        crop = self.state.crop
        outside = crop is not None and not crop.contains_index(crop.world_to_index(np.asarray(world)))
        new = replace(self.state, points=self.state.points + (pt,), replace_crop=self.state.replace_crop or
                      (positive and outside))
        if outside and not positive and not new.replace_crop:  # it cannot change this crop's mask
            self.history.push(self.state)
            self.state = replace(new, pending=self.state.pending)
            return Change(ran=True, notes=[OUTSIDE_NOTE])
        return self._add(new, run)

    def add_box(self, bounds, positive: bool = True, run: bool = True) -> Change:
        """A box over the half-open voxel ranges ``bounds`` (array order).  Weights with box
        embeddings decode it (the newest box replaces an earlier one); for the others it places
        the crop and gives a positive click at its centre, as ``infer`` does."""
        self._need_image()
        if not positive:
            raise PromptError(None, "SAM-Med3D takes no negative box: draw positive boxes, or use negative clicks")
        lo, hi = voxel_box(bounds, self.shape)
        box = box_from_index_bounds(self.ref, (lo[::-1] - 0.5), (hi[::-1] - 0.5), kind="drawn")
        if self.seg.uses_boxes:
            return self._add(replace(self.state, boxes=(box,), replace_crop=True), run)
        centre = PointPrompt(box.center, tuple(float(v) for v in (lo + hi - 1)[::-1] / 2.0), 1, "box centre")
        kept = tuple(p for p in self.state.points if p.kind != "box centre")  # the newest box replaces the last
        change = self._add(replace(self.state, points=kept + (centre,), replace_crop=True), run)
        change.notes.append(BOX_NOTE)
        return change

    def set_initial_mask(self, mask: np.ndarray, run: bool = False) -> Change:
        """The object's mask so far (``(a, b, c)``, nonzero inside): it replaces the prompts and the
        mask, and becomes the mask prompt of the next prediction (run now with ``run``)."""
        self._need_image()
        init = check_mask(np.asarray(mask), self.shape)
        before = self.state
        self.history.push(before)
        box = diff_box(self.mask, init)
        if box is not None:
            self.history.patch(self.mask, box, init[slices(box)])
        self.state = ObjectState(initial=init if init.any() else None, replace_crop=True, pending=True)
        return self._predict_or_roll_back(before) if run else Change(ran=False)

    def _add(self, new: ObjectState, run: bool) -> Change:
        before = self.state
        self.history.push(before)
        self.state = replace(new, pending=True)
        return self._predict_or_roll_back(before) if run else Change(ran=False)

    def _predict_or_roll_back(self, before: ObjectState) -> Change:
        """:meth:`predict`; if it fails, the interaction is undone (state, mask and undo step) and
        the error goes on: a refused interaction leaves nothing behind."""
        try:
            return self.predict()
        except Exception:
            self.history.pop(self.mask)
            self.state = before
            raise

    # ------------------------------------------------------------------ predict / undo
    def predict(self) -> Change:
        """Decode the prompts added since the last prediction (with ``run=False``); ``ran`` is False
        when there is none (decoding again would feed the mask back as its own prompt)."""
        self._need_image()
        st = self.state
        if not st.pending or not st.has_positive:
            return Change(ran=False)
        rep = InferenceReport(batch_size=1, device=str(self.seg.device))
        lesion = object_lesion(self.seg.resolver, self.case.pet, self.ref, st, rep)
        geom, mask_prompt = crop_and_mask_prompt(self.seg, self.decoder, self.case.pet, st, lesion)
        emb, encoded = self.embeddings.get(self.case, geom, rep)
        low, logits, iou, _ = self.decoder.decode_lesion(emb, geom, lesion, mask_prompt, rep)
        change = paste(self.mask, self.history, map_logits(self.case.pet, logits, geom), self._thr)
        self.state = replace(st, crop=geom, low=low, replace_crop=False, pending=False)
        return Change(ran=True, bbox=change, notes=list(lesion.notes), iou=iou, encoded=encoded, report=rep)

    def undo(self) -> Change:
        """Back to the state and mask before the last interaction (``ran`` False: nothing to undo)."""
        self._need_image()
        step = self.history.pop(self.mask)
        if step is None:
            return Change(ran=False)
        self.state, box = step
        return Change(ran=True, bbox=box)



__all__ = ["BOX_NOTE", "FAR_NOTE", "OUTSIDE_NOTE", "Change", "INITIAL_MASK_LOGIT", "InteractiveSession", "ObjectState", "StateError",
           "crop_and_mask_prompt", "held_bytes", "image_from_array", "object_lesion", "parse_geometry", "paste"]
