"""What an interactive session keeps of its object: the prompts, the undo steps, the embeddings.

:class:`ObjectState` is immutable (a new one per interaction), so an undo step is the state before
the interaction plus the mask patches it made (:class:`UndoHistory`).  :class:`EmbeddingCache`
keeps the image embeddings of the last crops, so the encoder runs once per crop.
:func:`mask_prompt_from` turns a mask on the image grid into SAM's low-resolution mask prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from sam_l1dfl.data.geometry import CropGeometry, resample_to_crop
from sam_l1dfl.prompts.types import PointPrompt

from .results import InferenceReport

#: Logit magnitude of a mask given as the mask prompt (sigmoid(4) = 0.982).
INITIAL_MASK_LOGIT = 4.0


@dataclass(frozen=True)
class ObjectState:
    """The prompts (world LPS), the crop they are decoded in, the last low-resolution logits
    there, the initial segmentation, whether the crop must be placed again, unpredicted prompts."""

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


def diff_box(old: np.ndarray, new: np.ndarray) -> "list[list[int]] | None":
    """Half-open box of the voxels where ``old`` and ``new`` differ (None: none do)."""
    d = old != new
    if not d.any():
        return None
    box = []
    for ax in range(d.ndim):
        hit = np.flatnonzero(d.any(axis=tuple(a for a in range(d.ndim) if a != ax)))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def slices(box) -> tuple:
    return tuple(slice(lo, hi) for lo, hi in box)


class UndoHistory:
    """Undo steps: per interaction, the state before it and the mask patches it made since."""

    def __init__(self, max_steps: int = 16):
        self.max_steps = int(max_steps)
        self._steps: list[tuple[ObjectState, list[tuple[list[list[int]], np.ndarray]]]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def clear(self) -> None:
        self._steps.clear()

    def push(self, state: ObjectState) -> None:
        """A new step back to ``state`` (the oldest beyond ``max_steps`` go)."""
        self._steps.append((state, []))
        del self._steps[:max(0, len(self._steps) - self.max_steps)]

    def patch(self, mask: np.ndarray, box: list[list[int]], values: np.ndarray) -> None:
        """Write ``values`` into ``mask`` at ``box``, keeping the old values in the last step."""
        sl = slices(box)
        if self._steps:
            self._steps[-1][1].append((box, mask[sl].copy()))
        mask[sl] = values

    def pop(self, mask: np.ndarray) -> "tuple[ObjectState, list[list[int]] | None] | None":
        """Undo the last step on ``mask``: the state to return to and the box that changed (None:
        no step left)."""
        if not self._steps:
            return None
        state, patches = self._steps.pop()
        for box, old in reversed(patches):
            mask[slices(box)] = old
        boxes = [b for b, _ in patches]
        union = [[min(b[ax][0] for b in boxes), max(b[ax][1] for b in boxes)] for ax in range(3)] if boxes else None
        return state, union


class EmbeddingCache:
    """The image embeddings of the last ``size`` crops of a case, by ``encoder``."""

    def __init__(self, encoder, size: int = 2):
        self.encoder = encoder
        self.size = int(size)
        self._emb: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def clear(self) -> None:
        self._emb.clear()

    def nbytes(self) -> int:
        return sum(e.numel() * e.element_size() for e in self._emb.values())

    def get(self, case, geom: CropGeometry, rep: InferenceReport) -> "tuple[torch.Tensor, bool]":
        """``(embedding, whether the encoder ran)`` of ``case`` cut at ``geom``."""
        key = tuple(np.round(np.asarray(geom.origin_lps, dtype=np.float64), 4))
        if key in self._emb:
            self._emb.move_to_end(key)
            return self._emb[key], False
        emb = self.encoder.encode(case, [geom], rep)
        self._emb[key] = emb
        while len(self._emb) > self.size:
            self._emb.popitem(last=False)
        return emb, True


def mask_prompt_from(mask: np.ndarray, image: "sitk.Image", geom: CropGeometry, crop_size: int, low_res: int,
                     device) -> torch.Tensor:
    """A mask on ``image``'s grid as SAM's mask prompt in ``geom``: its occupancy of each
    low-resolution voxel, as ``+-``:data:`INITIAL_MASK_LOGIT` logits, shape (1, 1, s, s, s)."""
    img = sitk.GetImageFromArray(mask.astype(np.float32))
    img.CopyInformation(image)
    occ = torch.from_numpy(np.ascontiguousarray(resample_to_crop(img, geom, "linear", 0.0), dtype=np.float32))
    f = crop_size // low_res
    frac = F.avg_pool3d(occ[None, None], f) if f > 1 else occ[None, None]
    return (INITIAL_MASK_LOGIT * (2.0 * frac - 1.0)).to(device)


__all__ = ["Change", "EmbeddingCache", "INITIAL_MASK_LOGIT", "ObjectState", "UndoHistory", "diff_box",
           "mask_prompt_from", "slices"]
