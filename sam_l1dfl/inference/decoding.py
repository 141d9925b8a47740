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
(low_res, logits at the crop size, iou)``: the seam that :class:`~sam_l1dfl.inference.Segmenter`
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

    def decode(self, batch: CropBatch, emb: torch.Tensor, lesions: Sequence[PromptedLesion], comp, n_clicks: int,
               rep: InferenceReport) -> list[tuple[np.ndarray, float, int]]:
        """Decoder (and refinement clicks against ``comp``, the reference's components and each
        lesion's id among them) for the lesions of one encoder batch.  Returns per item of the
        batch ``(crop logits (X, Y, Z) float32, predicted IoU, number of points used)``."""
        items, geoms = batch.items, batch.geometries
        low_s = self.low_res_size
        with stage_timer(rep, "decoder"):
            prepared = [self._prompts(lesions[li], geoms[wi], rep) for _gwi, wi, li in items]
        results: list = [None] * len(items)
        groups: dict[tuple[int, bool], list[int]] = {}
        for k, (pts, lab, box) in enumerate(prepared):
            groups.setdefault((len(pts), box is not None), []).append(k)
        for (npts, has_box), ks in groups.items():
            with stage_timer(rep, "decoder"):
                dev = self.device
                e = emb[[items[k][1] for k in ks]]
                pts = torch.from_numpy(np.stack([prepared[k][0] for k in ks])).to(dev) if npts else None
                lab = torch.from_numpy(np.stack([prepared[k][1] for k in ks])).to(dev) if npts else None
                box = torch.from_numpy(np.stack([prepared[k][2] for k in ks])).to(dev) if has_box else None
                mask_in = torch.zeros((len(ks), 1, low_s, low_s, low_s), device=dev)
                g = [geoms[items[k][1]] for k in ks]
                low, logits, iou = self.decoder(e, pts, lab, box, mask_in, g)
                rep.decoder_passes += len(ks)
            if n_clicks:
                inst, ids = comp
                with stage_timer(rep, "clicks"):
                    gt = torch.from_numpy(np.stack([
                        (np.asarray(_crop_instance(inst, gg)) == ids[items[k][2]]) & (ids[items[k][2]] > 0)
                        for k, gg in zip(ks, g)])[:, None]).to(dev)

                def decode(points, labels, mask_prompt, e=e, box=box, g=g):
                    return self.decoder(e, points, labels, box, mask_prompt, g)

                for r in simulate_clicks(decode, gt, n_clicks, mask_prompt=low, logits=logits, points=pts,
                                         labels=lab, stage=lambda name: stage_timer(rep, name)):
                    rep.decoder_passes += len(ks)
                pts, logits, iou = r.points, r.logits, r.iou
            with stage_timer(rep, "map_back", self.sync):
                out = logits[:, 0].detach().float().cpu().numpy()
                iou_c = iou.detach().float().cpu().numpy()
            n_used = 0 if pts is None else int(pts.shape[1])
            for j, k in enumerate(ks):
                results[k] = (out[j], float(iou_c[j]), n_used)
        return results


__all__ = ["LesionDecoder", "decode_with_model"]
