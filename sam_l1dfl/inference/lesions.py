"""Step 1 of inference: the checked images and the prompts, resolved into lesions.

:class:`PromptResolver` checks the PET, CT and reference images against the checkpoint's
preprocessing, reads or generates the prompts (:func:`~sam_l1dfl.prompts.load_prompts`,
:func:`~sam_l1dfl.prompts.generate_prompts`) and turns each lesion prompt into a
:class:`PromptedLesion`: its label, positive and negative points and boxes in LPS mm, and the
extent that places its crop.  For refinement clicks it also labels the reference mask's
components and finds each lesion's (:meth:`PromptResolver.reference_components`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.data.geometry import Grid, grid_differences, image_world_to_index, images_overlap
from sam_l1dfl.data.io import mask_foreground
from sam_l1dfl.data.lesions import label_components
from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.errors import InputError, PromptError
from sam_l1dfl.prompts import CasePrompts, generate_prompts, load_prompts

from .results import InferenceReport


@dataclass
class PromptedLesion:
    """One lesion prompt, resolved: ``lo``/``hi`` bound its positive points and box corners (the
    extent its crop is centred on); ``notes`` say what was changed or dropped."""

    lesion_id: int
    label: int
    pos: np.ndarray  # (P, 3) LPS
    neg: np.ndarray  # (Q, 3) LPS
    boxes: list[np.ndarray]  # (8, 3) LPS corners each
    lo: np.ndarray
    hi: np.ndarray
    notes: list[str] = field(default_factory=list)


def _fmt(v, nd=1) -> str:
    return "[" + ", ".join(f"{float(x):.{nd}f}" for x in v) + "]"


def _world_bounds_check(image: "sitk.Image", world: np.ndarray) -> np.ndarray:
    """Bool per point: inside the image's voxel extent (half a voxel past the outer centres, +1e-6)."""
    return Grid.from_image(image).contains_world(np.atleast_2d(world), margin=-1e-6)


@dataclass
class PromptResolver:
    """Checks and prompt reading for a segmenter: ``preprocess`` (input mode, crop), whether box
    prompts reach the model (``uses_boxes``; else they only place the crop) and the checkpoint that
    errors name (``where``)."""

    preprocess: IntensityConfig
    uses_boxes: bool
    where: "str | None" = None

    def check_images(self, pet, ct, reference):
        """``(pet as float32, ct, binary reference on the PET grid)`` after the checks of the module docstring."""
        where = self.where
        if not isinstance(pet, sitk.Image) or pet.GetDimension() != 3:
            raise InputError(None, "pet must be a 3D SimpleITK image")
        if pet.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(None, "pet must be a scalar image")
        if pet.GetPixelID() != sitk.sitkFloat32:
            pet = sitk.Cast(pet, sitk.sitkFloat32)
        mode = self.preprocess.input_mode
        if self.preprocess.needs_ct and ct is None:
            raise InputError(where, f"the checkpoint's input_mode is {mode!r}: it needs a CT (give --ct / ct=...)")
        if not self.preprocess.needs_ct and ct is not None:
            raise InputError(where, f"the checkpoint's input_mode is {mode!r} (PET only) but a CT was given; "
                                    "use a PET+CT checkpoint or leave the CT out")
        if ct is not None:
            if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
                raise InputError(None, "ct must be a 3D SimpleITK image")
            if not images_overlap(pet, ct):
                raise InputError(None, "the CT does not overlap the PET in world space (check the headers)")
        if reference is not None:
            diffs = grid_differences(pet, reference)
            if diffs:
                raise InputError(None, "reference mask grid differs from the PET grid (mask vs PET: "
                                       + "; ".join(diffs) + ")")
            reference = sitk.GetImageFromArray(mask_foreground(reference, None, "reference mask").astype(np.uint8))
            reference.CopyInformation(pet)
        return pet, ct, reference

    def prompts(self, pet, prompts, reference, allow_mismatch) -> CasePrompts:
        """The case's prompts: given, read from a file / files / folder, or generated from ``reference``."""
        if prompts is None:
            if reference is None:
                raise PromptError(None, "no prompts: give a prompt file, CasePrompts, or a reference mask")
            return generate_prompts(reference, pet)
        if isinstance(prompts, (str, os.PathLike, list, tuple)):  # a file, several, or a folder of markups
            for p in [prompts] if isinstance(prompts, (str, os.PathLike)) else prompts:
                if not Path(p).exists():
                    raise PromptError(p, "prompt file not found")
            return load_prompts(prompts, image=pet, allow_checksum_mismatch=allow_mismatch,
                                crop_mm=(self.preprocess.crop_size - 1) * self.preprocess.spacing)
        if not isinstance(prompts, CasePrompts):
            raise PromptError(None, f"prompts must be CasePrompts or a file path, got {type(prompts).__name__}")
        if not prompts.lesions:
            raise PromptError(None, "no lesion prompt (empty 'lesions' list)")
        return prompts

    def lesions(self, pet, prompts, rep: InferenceReport) -> list[PromptedLesion]:
        """Each lesion prompt resolved (labels, points inside the PET, a box's centre as the point of a
        model without box embeddings); notes go into ``rep``."""
        where = prompts.image.path if prompts.image is not None and prompts.image.path else prompts.case_id
        ids = [l.lesion_id for l in prompts.lesions]
        if len(set(ids)) != len(ids):
            raise PromptError(where, "duplicate lesion ids in the prompts")
        use_ids = all(isinstance(i, (int, np.integer)) and 1 <= int(i) <= 65535 for i in ids)
        if not use_ids:
            rep.notes.append("lesion ids are not all in 1..65535: labels are 1..n in prompt order")
        out = []
        for n, lp in enumerate(prompts.lesions):
            pos = np.array([p.world for p in lp.points if p.positive], dtype=np.float64).reshape(-1, 3)
            neg = np.array([p.world for p in lp.points if not p.positive], dtype=np.float64).reshape(-1, 3)
            boxes = [np.asarray(b.corners_world(), dtype=np.float64) for b in lp.boxes]
            pts = np.concatenate([pos, neg])
            for b in lp.boxes:
                if not _world_bounds_check(pet, np.asarray(b.center)[None])[0]:
                    raise PromptError(where, f"lesion {lp.lesion_id}: box centred at {_fmt(b.center)} mm lies "
                                             f"outside the PET image (size {list(pet.GetSize())})")
            if len(pts):
                inside = _world_bounds_check(pet, pts)
                if not inside.all():
                    bad = pts[int(np.flatnonzero(~inside)[0])]
                    raise PromptError(where, f"lesion {lp.lesion_id}: point at {_fmt(bad)} mm lies outside the "
                                             f"PET image (size {list(pet.GetSize())})")
            notes = []
            if len(pos) == 0 and not boxes:
                raise PromptError(where, f"lesion {lp.lesion_id} has no positive point and no box")
            if len(pos) == 0 and not self.uses_boxes:
                c = np.mean([b.mean(0) for b in boxes], axis=0)
                pos = c[None]
                notes.append("model has no box embeddings: box centre used as a positive point")
                rep.notes.append(f"lesion {lp.lesion_id}: " + notes[-1])
            ext = np.concatenate([pos] + boxes)
            out.append(PromptedLesion(int(lp.lesion_id), int(lp.lesion_id) if use_ids else n + 1, pos, neg,
                                      boxes if self.uses_boxes else [], ext.min(0), ext.max(0), notes))
        return out

    @staticmethod
    def reference_components(reference, lesions: list[PromptedLesion], rep: InferenceReport):
        """Instance image of the reference (18-connected components) and each lesion's component id
        (the component under most of its positive points; 0 = none)."""
        comps, _ = label_components(sitk.GetArrayViewFromImage(reference) > 0, 18)
        inst = sitk.GetImageFromArray(comps.astype(np.uint32))
        inst.CopyInformation(reference)
        size = np.asarray(reference.GetSize())
        ids = []
        for les in lesions:
            idx = np.rint(image_world_to_index(reference, les.pos)).astype(np.int64)
            idx = np.clip(idx, 0, size - 1)
            vals = comps[idx[:, 2], idx[:, 1], idx[:, 0]]
            vals = vals[vals > 0]
            cid = int(np.bincount(vals).argmax()) if len(vals) else 0
            if cid == 0:
                les.notes.append("no reference lesion under its positive points: clicks see an empty reference")
                rep.notes.append(f"lesion {les.lesion_id}: " + les.notes[-1])
            ids.append(cid)
        return inst, ids


__all__ = ["PromptResolver", "PromptedLesion"]
