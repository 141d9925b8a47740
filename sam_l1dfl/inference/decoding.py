"""Step 4 of inference: decoding each lesion's prompts, and the refinement clicks.

:class:`LesionDecoder` turns the lesions of one encoder batch into crop-space logits: their points
(positive and negative, cumulative; negative points outside the crop are dropped, with a note) and
their box when the model has box embeddings, in crop voxel indices, and a zero mask prompt, as the
official ``sam_model_infer``.  Lesions with the same number of points and boxes are decoded
together.  With ``clicks`` = N (evaluation mode) it then runs N rounds of the package's one click
loop, :func:`sam_l1dfl.prompts.clicks.simulate_clicks` (also what training validation runs): one
click against the lesion's reference component in the crop (centre of the largest error
component), then the decoder with the previous low-resolution logits as the mask prompt.

The decoder itself is a callable ``decoder(emb, points, labels, boxes, mask_input, crops) ->
(low_res (B,1,s,s,s), logits (B,1,S,S,S) at the crop size, iou (B,))`` (prompts in crop voxel
indices; ``crops``: the :class:`~sam_l1dfl.data.geometry.CropGeometry` of each batch element): the seam that :class:`~sam_l1dfl.inference.Segmenter`
takes as ``decoder=`` (default :meth:`~sam_l1dfl.inference.Segmenter.model_decoder`, which calls
:func:`decode_with_model`: the model's prompt encoder and mask decoder, single-mask output, the
32³ logits upsampled trilinearly to the crop, as the official code).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from sam_l1dfl.data.geometry import CropGeometry, resample_to_crop
from sam_l1dfl.prompts.clicks import simulate_clicks

from .encoding import autocast_context
from .lesions import PromptedLesion
from .planning import CropBatch
from .results import InferenceReport, stage_timer


def decode_with_model(model, crop_size: int, autocast: bool, emb, points, labels, boxes, mask_input):
    """One batched prompt encoder + mask decoder call of ``model`` (single-mask output), the logits
    upsampled trilinearly to ``crop_size``³: ``(low_res, logits, iou)``."""
    with torch.inference_mode(), autocast_context(autocast):
        low, iou = model.decode(emb, points, labels, boxes, mask_input, multimask_output=False)
    low = low.float()
    s = crop_size
    logits = F.interpolate(low, size=(s, s, s), mode="trilinear", align_corners=False)
    return low, logits, iou.float().reshape(-1)


def _crop_instance(inst: "sitk.Image", geom: CropGeometry) -> np.ndarray:
    return resample_to_crop(inst, geom, "nearest", 0)


class LesionDecoder:
    """The lesions of encoder batches through ``decoder`` (see the module docstring); ``sync``
    waits for the device before the logits leave it."""

    def __init__(self, decoder: Callable[..., tuple], crop_size: int, low_res_size: int, device: torch.device,
                 sync: Callable[[], None]):
        self.decoder = decoder
        self.crop_size = crop_size
        self.low_res_size = low_res_size
        self.device = device
        self.sync = sync

    def _prompts(self, les: PromptedLesion, geom: CropGeometry, rep: InferenceReport):
        """``(points, labels, box or None)`` of one lesion in crop voxel indices."""
        s = self.crop_size
        pos = geom.world_to_index(les.pos) if len(les.pos) else np.zeros((0, 3))
        neg = geom.world_to_index(les.neg) if len(les.neg) else np.zeros((0, 3))
        if len(neg):
            keep = geom.contains_index(neg)
            if not keep.all():
                msg = f"{int((~keep).sum())} negative point(s) outside the crop dropped"
                les.notes.append(msg)
                rep.notes.append(f"lesion {les.lesion_id}: {msg}")
            neg = neg[keep]
        pts = np.concatenate([pos, neg]).astype(np.float32)
        lab = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
        box = None
        if les.boxes:
            ci = np.concatenate([geom.world_to_index(b) for b in les.boxes])
            box = np.clip(np.stack([ci.min(0), ci.max(0)]), -0.5, s - 0.5).astype(np.float32)
        return pts, lab, box

    def _run(self, emb, prepared, mask_in, geoms):
        """One decoder call for lesions with the same number of points and box presence:
        ``prepared`` their :meth:`_prompts`, ``mask_in`` (B, 1, s, s, s) their mask prompts.
        Returns ``(points, labels, box, low_res, logits, iou)`` (points None without any)."""
        dev = self.device
        npts, has_box = len(prepared[0][0]), prepared[0][2] is not None
        pts = torch.from_numpy(np.stack([p[0] for p in prepared])).to(dev) if npts else None
        lab = torch.from_numpy(np.stack([p[1] for p in prepared])).to(dev) if npts else None
        box = torch.from_numpy(np.stack([p[2] for p in prepared])).to(dev) if has_box else None
        low, logits, iou = self.decoder(emb, pts, lab, box, mask_in.to(dev), geoms)
        return pts, lab, box, low, logits, iou

    def zero_mask_prompt(self, n: int = 1) -> torch.Tensor:
        """The empty mask prompt of ``n`` lesions (what the first decoder pass of a lesion gets)."""
        s = self.low_res_size
        return torch.zeros((n, 1, s, s, s), device=self.device)

    def decode_lesion(self, emb: torch.Tensor, geom: CropGeometry, lesion: PromptedLesion,
                      mask_prompt: "torch.Tensor | None", rep: InferenceReport):
        """One lesion on one encoded crop (``emb`` (1, C, g, g, g)) with ``mask_prompt`` (the
        previous low-res logits; None: empty, as :meth:`decode`): ``(low_res (1, 1, s, s, s),
        crop logits (X, Y, Z) float32, predicted IoU, number of points used)``.  The interactive
        session's step (:mod:`sam_l1dfl.inference.interactive`); with an empty mask prompt it is
        exactly what :meth:`decode` gives that lesion."""
        with stage_timer(rep, "decoder"):
            prepared = self._prompts(lesion, geom, rep)
            mask_in = self.zero_mask_prompt() if mask_prompt is None else mask_prompt
            pts, _, _, low, logits, iou = self._run(emb, [prepared], mask_in, [geom])
            rep.decoder_passes += 1
        with stage_timer(rep, "map_back", self.sync):
            out = logits[0, 0].detach().float().cpu().numpy()
            iou_c = float(iou.detach().float().cpu().reshape(-1)[0])
        return low, out, iou_c, 0 if pts is None else int(pts.shape[1])

    def decode(self, batch: CropBatch, emb: torch.Tensor, lesions: Sequence[PromptedLesion], comp, n_clicks: int,
               rep: InferenceReport) -> list[tuple[np.ndarray, float, int]]:
        """Decoder (and refinement clicks against ``comp``, the reference's components and each
        lesion's id among them) for the lesions of one encoder batch.  Returns per item of the
        batch ``(crop logits (X, Y, Z) float32, predicted IoU, number of points used)``."""
        items, geoms = batch.items, batch.geometries
        with stage_timer(rep, "decoder"):
            prepared = [self._prompts(lesions[li], geoms[wi], rep) for _gwi, wi, li in items]
        results: list = [None] * len(items)
        groups: dict[tuple[int, bool], list[int]] = {}
        for k, (pts, lab, box) in enumerate(prepared):
            groups.setdefault((len(pts), box is not None), []).append(k)
        for ks in groups.values():
            with stage_timer(rep, "decoder"):
                e = emb[[items[k][1] for k in ks]]
                g = [geoms[items[k][1]] for k in ks]
                pts, lab, box, low, logits, iou = self._run(e, [prepared[k] for k in ks], self.zero_mask_prompt(len(ks)), g)
                rep.decoder_passes += len(ks)
            if n_clicks:
                pts, logits, iou = self._refine(e, g, box, pts, lab, low, logits, [items[k][2] for k in ks],
                                                comp, n_clicks, rep)
            with stage_timer(rep, "map_back", self.sync):
                out = logits[:, 0].detach().float().cpu().numpy()
                iou_c = iou.detach().float().cpu().numpy()
            n_used = 0 if pts is None else int(pts.shape[1])
            for j, k in enumerate(ks):
                results[k] = (out[j], float(iou_c[j]), n_used)
        return results

    def _refine(self, e, g, box, pts, lab, low, logits, lesion_indices, comp, n_clicks, rep):
        """``n_clicks`` rounds of the click loop against each lesion's reference component
        (``comp``; ``lesion_indices``: the group's lesions): ``(points, logits, iou)`` after the last."""
        inst, ids = comp
        with stage_timer(rep, "clicks"):
            gt = torch.from_numpy(np.stack([
                (np.asarray(_crop_instance(inst, gg)) == ids[li]) & (ids[li] > 0)
                for li, gg in zip(lesion_indices, g)])[:, None]).to(self.device)

        def decode(points, labels, mask_prompt):
            return self.decoder(e, points, labels, box, mask_prompt, g)

        for r in simulate_clicks(decode, gt, n_clicks, mask_prompt=low, logits=logits, points=pts,
                                 labels=lab, stage=lambda name: stage_timer(rep, name)):
            rep.decoder_passes += len(g)
        return r.points, r.logits, r.iou


__all__ = ["LesionDecoder", "decode_with_model"]
