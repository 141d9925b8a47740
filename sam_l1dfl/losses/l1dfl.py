"""The L1DFL loss module: its constructor and its two forward paths (the general one, and the
fused sigmoid path of training); the histogram, the ROI and the kernels they call live beside it
in :mod:`sam_l1dfl.losses`."""

from __future__ import annotations

import warnings

import torch
from monai.losses.focal_loss import sigmoid_focal_loss, softmax_focal_loss
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss
from torch.profiler import record_function

from sam_l1dfl.losses.cache import TargetContext
from sam_l1dfl.losses.checks import check_arguments, check_reduction, check_shapes, check_values
from sam_l1dfl.losses.histogram import beta_mean_of, check_eps, check_scope, focal_weights, histogram_weights
from sam_l1dfl.losses.kernels import CompiledKernel, SigmoidL1DFSums, WeightedDiceSums, sigmoid_terms, sigmoid_constants
from sam_l1dfl.losses.roi import cached_roi
from sam_l1dfl.losses.shares import l1_weight_shares, weight_regions


class L1DFLoss(_Loss):
    """L1-weighted Dice Focal Loss (L1DFL), with MONAI's argument names and reductions.

    Args:
        include_background: if False, channel 0 is excluded from the Dice, the focal term and the
            histogram (in softmax mode the softmax is still taken over all channels first).
            Ignored, with a warning, for single-channel input (as MONAI does).
        to_onehot_y: convert a ``(B, 1, ...)`` label map to one-hot with ``C`` channels
            (ignored, with a warning, for single-channel input).
        sigmoid: independent channels, ``p = sigmoid(logits)``, MONAI's sigmoid focal loss
            (the mode for SAM-Med3D's single logit).
        softmax: mutually exclusive classes, ``p = softmax(logits, 1)``, softmax focal loss (the
            paper's 2-class CNN form).  Exactly one of ``sigmoid``/``softmax`` must be True: the
            loss takes logits.
        gamma: focal exponent (2).
        alpha: focal alpha as in :class:`monai.losses.FocalLoss` (None: no alpha).
        lambda_dice, lambda_focal: non-negative weights of the two terms (1, 1).
        smooth_nr, smooth_dr: Dice smoothing added to numerator and denominator (1e-8).
        batch: sum the Dice numerator and denominator over the batch before dividing (the
            histogram scope is ``histogram_scope``).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` with :class:`monai.losses.DiceFocalLoss`
            semantics: ``mean`` averages ``1 - D`` over (B, C) and focal over every element;
            ``sum`` sums ``1 - D`` over (B, C) and sums the spatially averaged focal loss over
            (B, C); ``none`` returns ``lambda_dice*(1-D)`` of shape ``(B, C, 1, ...)`` (``(C, 1,
            ...)`` with ``batch=True``) broadcast-added to the element-wise focal loss, i.e. a
            ``(B, C, *spatial)`` tensor.
        eps: histogram bin width in (0, 0.5] (0.05).
        histogram_scope: which voxels share a histogram (the variants of ``docs/l1dfl.md``):
            ``"batch"`` (default, the authors'): one histogram over the whole batch;
            ``"sample"``: one per sample (over its channels), ``N`` = the sample's elements;
            ``"roi"``: one per sample, counted only inside a region of interest — the target
            foreground dilated by ``roi_dilation`` voxels (a cube, chessboard distance), united
            with the predicted foreground (``p > 0.5``) — with ``N`` = the ROI's elements.  Voxels
            outside the ROI (certain background: not near the target, predicted background) get
            ``beta = 0``: the weighted Dice ignores them, the focal term still sees them.
            Foreground: every channel in sigmoid mode, channels 1.. in softmax mode.
        roi_dilation: the ROI's margin around the target in voxels (8; ``histogram_scope="roi"``).
        weight_dice: multiply the Dice sums by ``beta`` (True, the authors'); False gives the
            plain squared-denominator Dice.
        weight_focal: also multiply the focal term element-wise by ``beta / mean(beta)`` (False,
            the authors' loss does not); the mean is per histogram; with ``histogram_scope="roi"``
            the voxels outside the ROI keep focal weight 1.
        sync_histogram: all-reduce the bin counts (and hence ``N``) over ``torch.distributed``
            processes when it is initialised, so ``beta`` does not depend on how the global batch
            is split (``histogram_scope="batch"`` only: the per-sample histograms need no sync).
            Every rank must then call the loss at every step.
        validate: check the values of the inputs (finite logits, binary / one-hot targets).  The
            checks cost one pass over the data and, on CUDA, one host synchronisation per call;
            ``False`` skips them (shape checks always run).

    ``forward(input, target, voxel_weights=None)``: ``input`` are logits ``(B, C, *spatial)``,
    ``target`` is ``(B, C, *spatial)`` binary or, with ``to_onehot_y``, a ``(B, 1, *spatial)``
    label map.  ``voxel_weights`` (optional, broadcastable to the included channels) replaces
    ``beta``, e.g. ``torch.ones_like`` gives a plain squared-denominator Dice Focal loss.

    Sigmoid mode with ``reduction`` ``mean``/``sum`` and no ``voxel_weights`` (the training case)
    runs fused (:class:`SigmoidL1DFSums`): the same sums with an analytic backward, no
    ``logsigmoid``, int32 bins; equal to the general path up to float rounding (tested).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        gamma: float = 2.0,
        alpha: float | None = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        smooth_nr: float = 1e-8,
        smooth_dr: float = 1e-8,
        batch: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        eps: float = 0.05,
        histogram_scope: str = "batch",
        roi_dilation: int = 8,
        weight_dice: bool = True,
        weight_focal: bool = False,
        sync_histogram: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        check_arguments(sigmoid, softmax, lambda_dice, lambda_focal, smooth_nr, smooth_dr, alpha, gamma, roi_dilation)
        self.eps = check_eps(eps)
        self.histogram_scope = check_scope(histogram_scope)
        self.roi_dilation = int(roi_dilation)
        self.include_background = bool(include_background)
        self.to_onehot_y = bool(to_onehot_y)
        self.sigmoid = bool(sigmoid)
        self.softmax = bool(softmax)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = bool(batch)
        self.weight_dice = bool(weight_dice)
        self.weight_focal = bool(weight_focal)
        self.sync_histogram = bool(sync_histogram)
        self.validate = bool(validate)
        self._target_ctx = TargetContext()
        self._kernel = sigmoid_terms

    def compile_kernels(self, backend: str = "inductor") -> "L1DFLoss":
        """``train.compile``: run the sigmoid path's per-voxel arithmetic (the Dice and focal sums
        and their gradient coefficients, ~25 element-wise passes) through ``torch.compile``, which
        fuses it into a few loops (CPU: C++ via Inductor; GPU: Triton).  Falls back to eager, with
        a warning, if compiling fails.  Returns ``self``."""
        self._kernel = CompiledKernel(sigmoid_terms, backend)
        return self

    @property
    def compile_failed(self) -> "str | None":
        """Why ``compile_kernels`` fell back to eager (None: compiled, or not asked)."""
        return getattr(self._kernel, "failed", None)
    def forward(
        self, input: torch.Tensor, target: torch.Tensor, voxel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_shapes(input, target, self.to_onehot_y, self.softmax)
        if self.validate:
            check_values(input, target, self.to_onehot_y, self.softmax)
        if input.dtype in (torch.float16, torch.bfloat16):
            input = input.float()
        n_ch = input.shape[1]
        if self.to_onehot_y:
            if n_ch == 1:
                warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=2)
            else:
                target = one_hot(target, num_classes=n_ch)
        if not self.include_background and n_ch == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
        if self.sigmoid and voxel_weights is None and self.reduction != LossReduction.NONE.value:
            return self._forward_sigmoid(input, target)
        return self._forward_general(input, target, voxel_weights)

    def _forward_general(self, input: torch.Tensor, target: torch.Tensor,
                         voxel_weights: "torch.Tensor | None") -> torch.Tensor:
        """The general path: softmax mode, ``voxel_weights`` or ``reduction="none"``."""
        target = target.to(input.dtype)
        prob = torch.sigmoid(input) if self.sigmoid else torch.softmax(input, 1)
        if self.sigmoid:
            focal = sigmoid_focal_loss(input, target, self.gamma, self.alpha)
        else:
            focal = softmax_focal_loss(input, target, self.gamma, self.alpha)
        roi = self._roi(prob, target)
        if not self.include_background and input.shape[1] > 1:
            prob, target, focal = prob[:, 1:], target[:, 1:], focal[:, 1:]

        beta = beta_mean = None
        if voxel_weights is None and (self.weight_dice or self.weight_focal):
            beta, hist = histogram_weights(prob, target, self.eps, self.sync_histogram, self.histogram_scope, roi)
            beta_mean = beta_mean_of(hist)  # 0-d, or (B,) per sample
        elif voxel_weights is not None:
            beta = torch.broadcast_to(voxel_weights.detach().to(prob.dtype), prob.shape)

        # ---- weighted Dice (squared denominator), per (b, c); with batch=True summed over b
        b, c = prob.shape[:2]
        rows = (b * c, -1)
        dice_w = beta if (beta is not None and (self.weight_dice or voxel_weights is not None)) else torch.ones_like(prob)
        inter, bpp, byy = WeightedDiceSums.apply(
            prob.reshape(rows), dice_w.reshape(rows).detach(), target.reshape(rows).detach()
        )
        dice = self._dice(inter, bpp + byy, b, c)
        if self.weight_focal:
            focal = focal * focal_weights(beta, beta_mean, roi, voxel_weights is not None)
        return self._reduce(dice, focal, input.dim())

    def _reduce(self, dice: torch.Tensor, focal: torch.Tensor, ndim: int) -> torch.Tensor:
        """The general path's ``reduction`` of ``1 - D`` and the element-wise focal loss."""
        spatial = list(range(2, focal.dim()))
        if self.reduction == LossReduction.MEAN.value:
            return self.lambda_dice * dice.mean() + self.lambda_focal * focal.mean()
        if self.reduction == LossReduction.SUM.value:
            return self.lambda_dice * dice.sum() + self.lambda_focal * focal.mean(dim=spatial).sum()
        dice = dice.reshape(list(dice.shape[0:2]) + [1] * (ndim - 2))
        return self.lambda_dice * dice + self.lambda_focal * focal

    def _dice(self, inter: torch.Tensor, den: torch.Tensor, b: int, c: int) -> torch.Tensor:
        inter, den = inter.reshape(b, c), den.reshape(b, c)
        if self.batch:
            inter, den = inter.sum(0), den.sum(0)
        return 1.0 - (2.0 * inter + self.smooth_nr) / (den + self.smooth_dr)

    def _roi(self, prob: torch.Tensor, target: torch.Tensor) -> "torch.Tensor | None":
        """The region of interest of ``histogram_scope="roi"`` (None for the other scopes)."""
        if self.histogram_scope != "roi":
            return None
        return cached_roi(self._target_ctx.get(target), prob, target, self.roi_dilation, 1 if self.softmax else 0)

    def _forward_sigmoid(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The fused sigmoid path (mean/sum reductions, beta from the histogram)."""
        ctx = self._target_ctx.get(target)
        y, ysign, alpha_t = sigmoid_constants(ctx, target, input.dtype, self.alpha, self.include_background)
        n_ch = input.shape[1]
        with torch.no_grad():
            p = torch.sigmoid(input.detach())
            roi = self._roi(p, target)
            if not self.include_background and n_ch > 1:
                input, p = input[:, 1:], p[:, 1:]
            g = (p - y).abs_()
            beta = fw = None
            if self.weight_dice or self.weight_focal:
                beta, hist = histogram_weights(p, y, self.eps, self.sync_histogram, self.histogram_scope, roi, g=g)
                if self.weight_focal:
                    fw = focal_weights(beta, beta_mean_of(hist), roi, False)
        b, c = input.shape[:2]
        rows = (b * c, -1)
        with record_function("l1dfl.terms"):
            inter, bpp, byy, fsum = SigmoidL1DFSums.apply(
                input.reshape(rows), p.reshape(rows), g.reshape(rows), y.reshape(rows), ysign, alpha_t,
                beta.reshape(rows) if (beta is not None and self.weight_dice) else None,
                None if fw is None else fw.reshape(rows), self.gamma, self._kernel)
            dice = self._dice(inter, bpp + byy, b, c)
            per_row = input[0, 0].numel()
            if self.reduction == LossReduction.MEAN.value:
                return self.lambda_dice * dice.mean() + self.lambda_focal * (fsum.sum() / (b * c * per_row))
            return self.lambda_dice * dice.sum() + self.lambda_focal * (fsum / per_row).sum()

    def weight_shares(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """:func:`l1_weight_shares` of logits ``input`` with this loss's bins, scope and Dice
        weighting (the channels that enter the loss; softmax mode: one-hot ``target``).  The
        voxel classes are computed once per target tensor."""
        with torch.no_grad():
            x = input.detach().float()
            if self.to_onehot_y and x.shape[1] > 1:
                target = one_hot(target, num_classes=x.shape[1])
            prob = torch.sigmoid(x) if self.sigmoid else torch.softmax(x, 1)
            t = target.detach().to(prob.dtype)
            if not self.include_background and x.shape[1] > 1:
                prob, t = prob[:, 1:], t[:, 1:]
            ctx = self._target_ctx.get(target)
            if ("regions", t.shape) not in ctx:
                ctx[("regions", t.shape)] = weight_regions(t)
            return l1_weight_shares(prob, t, self.eps, histogram_scope=self.histogram_scope,
                                    roi_dilation=self.roi_dilation, weight_dice=self.weight_dice,
                                    smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr,
                                    regions=ctx[("regions", t.shape)])

    def extra_repr(self) -> str:
        mode = "sigmoid" if self.sigmoid else "softmax"
        return (
            f"mode={mode}, eps={self.eps}, histogram_scope={self.histogram_scope}, "
            f"{f'roi_dilation={self.roi_dilation}, ' if self.histogram_scope == 'roi' else ''}"
            f"include_background={self.include_background}, to_onehot_y={self.to_onehot_y}, "
            f"gamma={self.gamma}, alpha={self.alpha}, lambda_dice={self.lambda_dice}, lambda_focal={self.lambda_focal}, "
            f"batch={self.batch}, reduction={self.reduction}, weight_dice={self.weight_dice}, "
            f"weight_focal={self.weight_focal}, sync_histogram={self.sync_histogram}"
        )
