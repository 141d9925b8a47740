"""The interactive click loop as ONE ``nn.Module`` forward (what DDP wraps).

Each training step runs ``clicks_per_sample`` iterations inside :meth:`ClickLoop.forward`, so
DDP sees exactly one forward and one backward per step (one gradient all-reduce):

1. a click from the current errors (iteration 0: the empty prediction, so a positive click in the
   lesion) — :func:`sam_l1dfl.prompts.clicks.sample_clicks`, where every click is simulated;
2. prompt encoder with the newest click (``click_mode: newest``, as official SAM-Med3D trains) or
   all clicks so far (``cumulative``), optionally the lesion's box, and the previous low-res
   logits as the mask prompt (zeros at iteration 0, as the official ``interaction``);
3. mask decoder (single-mask output) → ``(B, 1, 32, 32, 32)`` logits, upsampled trilinearly to
   the 128³ label;
4. segmentation loss at 128³ (+ ``iou_loss_weight`` × MSE between the IoU head and the actual IoU
   of the thresholded mask, as SAM; or a frozen IoU head);
5. the low-res logits become the next mask prompt.  ``detach_mask_prompt: true`` (default) feeds
   them back **detached**, so each iteration's loss trains the decoder for one click given the
   previous mask, and memory stays flat in the number of clicks; ``false`` backpropagates through
   the whole chain (the official ``train.py`` does not detach).

Mask-only iterations (``mask_only: official``: one random iteration in [2, 8] and the last one)
get the mask prompt without a new click, like official SAM-Med3D.  The loss is the **sum** over
iterations.

Randomness is per sample: the click in iteration ``t`` of sample ``i`` is the ``floor(u·n)``-th
voxel (raster order) of its error region, with ``u`` drawn from a generator seeded by
``(seed, epoch, dataset index)`` (:func:`sam_l1dfl.prompts.clicks.click_uniforms`).  So the clicks
do not depend on how the global batch is split over processes, nor on a resume.  The click
sampling is pure tensor code with no host synchronisation, so a GPU never waits in the loop.
Validation (:meth:`ClickLoop.evaluate`) runs the click loop shared with inference,
:func:`sam_l1dfl.prompts.clicks.simulate_clicks`.

Parameters that the loop never uses are frozen deliberately by :func:`configure_trainable` (never
``find_unused_parameters=True``): the three multimask hypernetwork MLPs (training uses the
single-mask output), ``no_mask_embed`` (a mask prompt is always given), ``not_a_point_embed`` when
boxes are given (no padding point), the box embeddings without boxes, and the IoU head when it is
frozen.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from sam_l1dfl.metrics.volume import dice_batch
from sam_l1dfl.prompts.clicks import TrainingClicks, label_boxes, simulate_clicks


# ---------------------------------------------------------------------- upsampling
_MATRICES: dict = {}


def _interp_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` float32 matrix of 1-D linear interpolation with ``align_corners=False``
    (``F.interpolate``'s rule: source ``max((i + 0.5) * n_in / n_out - 0.5, 0)``, edge clamped)."""
    key = (n_in, n_out, str(device))
    m = _MATRICES.get(key)
    if m is None:
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        lam = src - i0
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m.index_put_((rows, i0), 1.0 - lam, accumulate=True)
        m.index_put_((rows, i1), lam, accumulate=True)
        m = _MATRICES[key] = m.to(device=device, dtype=torch.float32)
    return m


def upsample_logits(low: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling of ``(B, C, d, h, w)`` logits to ``size``, in float32: the same map as
    ``F.interpolate(mode="trilinear", align_corners=False)`` (equal up to float rounding, ~1e-7
    relative) as three 1-D interpolation matrices applied axis by axis (w, then h, then d).

    Why: the backward of ``upsample_trilinear3d`` scatters every output gradient into the input
    (atomics on CUDA: nondeterministic; ~10x the forward's time on a CPU), while the transposed
    matrices make the backward three small matrix products — deterministic and 4-5x faster per
    click on the CPU (``BENCHMARKS.md``).  Runs outside autocast: bf16 logits would lose the
    precision that the loss's bins and the ``logits > 0`` clicks read.
    """
    b, c, d, h, w = low.shape
    dd, hh, ww = (int(v) for v in size)
    dev = low.device
    with torch.autocast(dev.type, enabled=False):
        x = low.float()
        x = (x.reshape(-1, w) @ _interp_matrix(w, ww, dev).t()).view(b * c * d, h, ww)
        x = torch.matmul(_interp_matrix(h, hh, dev), x).view(b * c, d, hh * ww)
        x = torch.matmul(_interp_matrix(d, dd, dev), x)
    return x.view(b, c, dd, hh, ww)


# ---------------------------------------------------------------------- trainable parameters
def configure_trainable(model: nn.Module, cfg) -> dict[str, Any]:
    """Freeze/unfreeze ``model`` per ``cfg.trainable`` / ``cfg.prompts`` BEFORE ``prepare``.

    Returns a report: trainable parameter names and counts, and the deliberately frozen unused ones.
    """
    t, p = cfg.trainable, cfg.prompts
    for prm in model.parameters():
        prm.requires_grad_(False)
    want: list[nn.Module] = []
    if t.full:
        want.append(model)
    if t.mask_decoder:
        want.append(model.mask_decoder)
    if t.prompt_encoder:
        want.append(model.prompt_encoder)
    if p.boxes and t.box_embeddings and len(model.prompt_encoder.point_embeddings) > 2:
        want += [model.prompt_encoder.point_embeddings[2], model.prompt_encoder.point_embeddings[3]]
    if t.patch_embed:
        want.append(model.image_encoder.patch_embed)
    for m in want:
        for prm in m.parameters():
            prm.requires_grad_(True)
    # never used by the training loop: freeze deliberately (DDP needs every trainable param used)
    unused: list[tuple[str, nn.Module]] = []
    md, pe = model.mask_decoder, model.prompt_encoder
    for i, mlp in enumerate(md.output_hypernetworks_mlps):
        if i > 0:
            unused.append((f"mask_decoder.output_hypernetworks_mlps.{i} (multimask outputs)", mlp))
    if t.iou_head == "frozen" or t.iou_loss_weight == 0:
        unused.append(("mask_decoder.iou_prediction_head (iou_head: frozen)", md.iou_prediction_head))
    unused.append(("prompt_encoder.no_mask_embed (a mask prompt is always given)", pe.no_mask_embed))
    if p.boxes or not p.points:
        unused.append(("prompt_encoder.not_a_point_embed (no padding point)", pe.not_a_point_embed))
    if not p.points:
        unused += [("prompt_encoder.point_embeddings.0/1 (no points)", pe.point_embeddings[0]),
                   ("prompt_encoder.point_embeddings.1", pe.point_embeddings[1])]
    if not p.boxes and len(pe.point_embeddings) > 2:
        unused += [("prompt_encoder.point_embeddings.2/3 (no boxes)", pe.point_embeddings[2]),
                   ("prompt_encoder.point_embeddings.3", pe.point_embeddings[3])]
    frozen_unused = []
    for name, m in unused:
        if any(q.requires_grad for q in m.parameters()):
            frozen_unused.append(name)
        for q in m.parameters():
            q.requires_grad_(False)
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
    n_all = sum(q.numel() for q in model.parameters())
    return {"trainable": names, "n_trainable": int(n_train), "n_total": int(n_all),
            "frozen_unused": frozen_unused}


# ---------------------------------------------------------------------- the module
class ClickLoop(nn.Module):
    """Prompt encoder + mask decoder (+ the image encoder when embeddings are not cached).

    ``forward(label, u, embeddings=None, images=None, mask_only=())`` returns a dict with
    ``loss`` (scalar, what backward uses), ``seg_per_iter`` (n,), ``iou_mse`` and ``dice_last``
    (detached, for logging).  ``weight_shares`` (e.g. :meth:`sam_l1dfl.losses.L1DFLoss.weight_shares`)
    adds ``beta_<region>`` and ``dgrad_<region>`` (region: interior, boundary, background), the
    mean over the clicks of L1DFL's weight and Dice-gradient shares (``train.log_weight_shares``).
    """

    def __init__(self, model: nn.Module, prompts, loss_fn: nn.Module, iou_head: str = "mse",
                 iou_loss_weight: float = 1.0, with_encoder: bool = False, weight_shares=None):
        super().__init__()
        self.weight_shares = weight_shares  # (logits, target) -> l1_weight_shares' dict, or None
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.image_encoder = model.image_encoder if with_encoder else None
        self.loss_fn = loss_fn
        self.n_clicks = int(prompts.clicks_per_sample)
        self.click_mode = prompts.click_mode
        self.use_points = bool(prompts.points)
        self.use_boxes = bool(prompts.boxes)
        self.detach_mask_prompt = bool(prompts.detach_mask_prompt)
        self.supervise_iou = iou_head == "mse" and iou_loss_weight > 0
        self.iou_loss_weight = float(iou_loss_weight)

    # -------------------------------------------------------------- pieces
    def embed(self, embeddings: Optional[torch.Tensor], images: Optional[torch.Tensor]) -> torch.Tensor:
        if embeddings is not None:
            return embeddings
        if self.image_encoder is None:
            raise ValueError("ClickLoop built without the image encoder needs embeddings")
        if any(p.requires_grad for p in self.image_encoder.parameters()):
            return self.image_encoder(images)
        with torch.no_grad():
            return self.image_encoder(images)

    def decode(self, emb, points, labels, boxes, mask_prompt):
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points, labels), boxes=boxes, masks=mask_prompt)
        return self.mask_decoder(image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)

    def _low_res_zeros(self, emb: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        s = tuple(4 * d for d in emb.shape[-3:])
        return torch.zeros((gt.shape[0], 1) + s, device=emb.device, dtype=emb.dtype)

    # -------------------------------------------------------------- training forward
    def forward(self, label: torch.Tensor, u: torch.Tensor, embeddings: Optional[torch.Tensor] = None,
                images: Optional[torch.Tensor] = None, mask_only: Sequence[int] = (),
                loss_fn: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        """One training step's click loop; ``loss_fn`` (optional) replaces the module's loss for
        this call (the warm-start schedule of :mod:`sam_l1dfl.training.loop`)."""
        loss_fn = self.loss_fn if loss_fn is None else loss_fn
        emb = self.embed(embeddings, images)
        wdtype = self.mask_decoder.iou_token.weight.dtype
        if emb.dtype != wdtype and not torch.is_autocast_enabled(emb.device.type):
            emb = emb.to(wdtype)
        gt = label > 0
        gtf = gt.to(torch.float32)
        size = gt.shape[-3:]
        boxes = label_boxes(gt) if self.use_boxes else None
        with record_function("clickloop.clicks"):
            clicks = TrainingClicks(gt)
            errors = clicks.empty_prediction()
        low = self._low_res_zeros(emb, gt)
        pts_all = labs_all = None
        mask_only = set(int(i) for i in mask_only)
        seg_terms, iou_terms = [], []
        shares: dict[str, torch.Tensor] = {}
        for it in range(self.n_clicks):
            points = labels = None
            it_boxes = None
            if it not in mask_only:
                if self.use_points:
                    with record_function("clickloop.clicks"):
                        p, lab = clicks.click(errors, u[:, it])
                        if self.click_mode == "cumulative" and pts_all is not None:
                            pts_all, labs_all = torch.cat([pts_all, p], 1), torch.cat([labs_all, lab], 1)
                        else:
                            pts_all, labs_all = p, lab
                    points, labels = pts_all, labs_all
                it_boxes = boxes
            with record_function("clickloop.decoder"):
                low_res, iou_pred = self.decode(emb, points, labels, it_boxes, low)
            with record_function("clickloop.upsample"):
                logits = upsample_logits(low_res, size)
            with record_function("clickloop.loss"):
                seg_terms.append(loss_fn(logits, gtf))
            if self.weight_shares is not None:
                self._add_weight_shares(shares, logits, gtf)
            with record_function("clickloop.clicks"):
                errors = clicks.errors((logits > 0).detach())  # the next click's region, this IoU
            if self.supervise_iou:
                with record_function("clickloop.iou"):
                    iou_terms.append(F.mse_loss(iou_pred[:, 0].float(), clicks.iou(errors)))
            low = low_res.detach() if self.detach_mask_prompt else low_res
        return self._outputs(seg_terms, iou_terms, clicks, errors, shares)

    def _add_weight_shares(self, shares: dict[str, torch.Tensor], logits: torch.Tensor, gtf: torch.Tensor) -> None:
        """Add this click's :attr:`weight_shares` (``beta_*``, ``dgrad_*`` per region) to ``shares``."""
        with record_function("clickloop.shares"), torch.no_grad():
            sh = self.weight_shares(logits.detach(), gtf)
            for kind, short in (("beta", "beta"), ("dice_grad", "dgrad")):
                for region, v in sh[kind].items():
                    k = f"{short}_{region}"
                    shares[k] = v if k not in shares else shares[k] + v

    def _outputs(self, seg_terms: list, iou_terms: list, clicks, errors, shares: dict) -> dict[str, torch.Tensor]:
        """The step's loss (segmentation terms of every click + the weighted IoU term) and what is logged."""
        seg = torch.stack(seg_terms)
        loss = seg.sum()
        out = {"seg_per_iter": seg.detach()}
        if iou_terms:
            iou = torch.stack(iou_terms).sum()
            loss = loss + self.iou_loss_weight * iou
            out["iou_mse"] = iou.detach() / len(iou_terms)
        out["loss"] = loss
        out["dice_last"] = clicks.dice(errors).mean().detach()
        out.update({k: (v / self.n_clicks).float() for k, v in shares.items()})
        return out

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def evaluate(self, label: torch.Tensor, embeddings: Optional[torch.Tensor] = None,
                 images: Optional[torch.Tensor] = None, report_at: Sequence[int] = (1, 3, 5)) -> torch.Tensor:
        """Per-sample Dice after ``report_at`` simulated clicks: ``(B, len(report_at))``.

        The click loop of inference (:func:`sam_l1dfl.prompts.clicks.simulate_clicks`): deterministic
        clicks (centre of the largest error component), cumulative, with the previous low-res
        logits as mask prompt; boxes at every click when ``prompts.boxes``.
        """
        emb = self.embed(embeddings, images)
        wdtype = self.mask_decoder.iou_token.weight.dtype
        if emb.dtype != wdtype and not torch.is_autocast_enabled(emb.device.type):
            emb = emb.to(wdtype)
        gt = label > 0
        rounds = self._click_rounds(emb, gt, max(report_at))
        return torch.stack([dice_batch(r.logits > 0, gt) for r in rounds if r.clicks in report_at], 1)

    def _click_rounds(self, emb: torch.Tensor, gt: torch.Tensor, n: int):
        """The inference click loop's ``n`` rounds on embeddings ``emb`` against ``gt``."""
        boxes = label_boxes(gt) if self.use_boxes else None

        def decode(points, labels, mask_prompt):
            low, iou = self.decode(emb, points, labels, boxes, mask_prompt)
            return low, F.interpolate(low, size=gt.shape[-3:], mode="trilinear", align_corners=False), iou

        return simulate_clicks(decode, gt, n, mask_prompt=self._low_res_zeros(emb, gt), add_points=self.use_points)

    def one_click_mask(self, emb: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """The mask after the first simulated click (the lesion's interior) on embeddings ``emb``."""
        return next(iter(self._click_rounds(emb, gt, 1))).logits > 0

    @torch.no_grad()
    def image_dependence(self, label: torch.Tensor, images: torch.Tensor) -> "torch.Tensor | None":
        """``(B, 2)``: Dice between the one-click mask on each crop and on a crop of zeros, and on a
        crop of seeded Gaussian noise, with the same click.  Near 1: the masks ignore the image (a
        blob painter).  None without the image encoder (cached embeddings)."""
        if self.image_encoder is None or images is None:
            return None
        gt = label > 0
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(images.shape[1:], generator=g).to(images.device, images.dtype).expand_as(images)
        masks = [self.one_click_mask(self.image_encoder(x), gt) for x in (images, torch.zeros_like(images), noise)]
        return torch.stack([dice_batch(masks[0], masks[1]), dice_batch(masks[0], masks[2])], 1)


__all__ = ["ClickLoop", "configure_trainable"]
