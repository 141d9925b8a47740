"""L1DFL, the L1-weighted Dice Focal Loss (Dzikunu et al., arXiv 2502.02756), and baselines.

Public API
----------
* :class:`L1DFLoss` -- a ``monai``-style ``_Loss`` with the argument names and ``reduction``
  semantics of :class:`monai.losses.DiceFocalLoss`.
* :func:`l1_voxel_weights` -- the per-voxel weights ``beta`` (for inspection and plots).
* :func:`l1_histogram` -- the histogram behind ``beta`` (counts, bin edges, widths, weights).
* :func:`make_loss` -- build ``l1dfl`` or a MONAI baseline (``dice``, ``dicefocal``, ``dicece``,
  ``focal``) by name.
* :func:`make_training_loss` -- the same with the training-safe defaults both trainers use
  (``mode="sigmoid"`` for SAM-Med3D's single logit, ``"softmax"`` for the 2-class CNNs);
  :func:`loss_arguments` and :func:`training_loss_params` say which constructor arguments
  those two pass (the comparison's ``--plan`` prints them).
* :func:`normalize_loss_name` -- ``"Dice-Focal"`` → ``"dicefocal"``; the one spelling rule of the
  configs, the comparison and the factories.

Formulation (softmax form, as in the authors' released code)
-----------------------------------------------------------
``p = softmax(logits)``, ``y = one_hot(labels)``, difficulty ``g = |p - y|`` (not
differentiated).  One histogram of ``g`` over the whole batch (all samples and all channels
that enter the loss) with bins of width ``eps`` centred on ``c_k = k*eps``,
``k = 0 .. K`` with ``K = floor(1/eps)`` (``1/eps`` is rounded when it is within 1e-9 of an
integer).  Bin ``k`` is ``[c_k - eps/2, c_k + eps/2)`` clipped to ``[0, 1]``; the first bin is
``[0, eps/2)`` and the last one is ``[c_K - eps/2, 1]`` (so 1.0 lies in it, and when ``1/eps`` is
not an integer it is wider than ``eps/2``).

**Edge rule.**  The bin of ``g`` is ``min(floor(g * (1/eps) + 0.5), K)`` computed in ``g``'s
floating-point dtype, i.e. a value on an edge ``(k - 1/2)*eps`` goes to the bin on its right
(bins are found by their left edge), up to the one rounding of ``g * (1/eps) + 0.5``.  The test
reference uses the same expression.

``density_k = count_k / width_k`` and ``beta = N / density_{bin(g)} = N * width_k / count_k``
with ``N`` the number of elements of ``g``; ``sum(beta)`` over a bin is ``N * width_k``
whatever the bin's population (GHM-style harmonisation without momentum).  Then, per sample
``b`` and channel ``c``::

    D_bc  = (2 sum(beta p y) + smooth_nr) / (sum(beta (p^2 + y^2)) + smooth_dr)
    focal = mean over B x C x voxels of  -(1 - p)^gamma * y * log(p)       (not weighted)
    loss  = lambda_dice * (1 - mean_bc D_bc) + lambda_focal * focal

Sigmoid mode (SAM-Med3D's single logit)
---------------------------------------
With ``sigmoid=True`` every channel is an independent binary problem: ``p = sigmoid(z)``,
``g = |p - y|`` pooled over all channels as above, Dice over the given channels and MONAI's
sigmoid focal loss.  For one logit ``z`` and binary ``y``, ``sigmoid(z)`` is the foreground
probability of the 2-class softmax of ``(0, z)`` and ``g`` is the same in both channels of the
softmax form, so (exactly, up to float rounding of the bin coordinate):

* ``beta`` is identical: the softmax histogram is twice the sigmoid one, and so is ``N``;
* the sigmoid Dice term equals the softmax foreground Dice ``D_fg``;
* the sigmoid focal term equals **twice** the softmax focal term (softmax focal averages the
  one non-zero class term over 2 channels; sigmoid focal has it once per voxel).

Hence ``L_sigmoid(z) = l_d (1 - D_fg) + l_f F`` while
``L_softmax((0, z)) = l_d (1 - (D_fg + D_bg)/2) + l_f F/2``; and ``L1DFLoss(sigmoid=True)`` on the
two channels ``(-z, z)`` has exactly the softmax Dice term and the focal term ``F``.  The tests
check these relations.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from typing import Any, NamedTuple

import torch
from monai.losses.focal_loss import sigmoid_focal_loss, softmax_focal_loss
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss
from torch.profiler import record_function

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.lossnames import LOSS_NAMES, normalize_loss_name  # re-exported: the light names module

__all__ = ["HISTOGRAM_SCOPES", "L1DFLoss", "L1Histogram", "LOSS_NAMES", "WEIGHT_REGIONS", "dilate", "l1_bin_layout",
           "l1_histogram", "l1_voxel_weights", "l1_weight_shares", "loss_arguments", "make_loss", "make_training_loss",
           "normalize_loss_name", "training_loss_params", "weight_regions"]


# ----------------------------------------------------------------------------------------------
# histogram and weights
# ----------------------------------------------------------------------------------------------
def _check_eps(eps: float) -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps (the L1DFL bin width) must be a number in (0, 0.5], got {eps!r}") from None
    if not (0.0 < eps <= 0.5):
        raise ValueError(f"eps (the L1DFL bin width) must be in (0, 0.5], got {eps}")
    return eps


def _last_bin_index(eps: float) -> int:
    r = 1.0 / eps
    k = round(r)
    return int(k) if abs(r - k) <= 1e-9 * r else int(math.floor(r))


def l1_bin_layout(eps: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(centres, left_edges, widths)`` of the L1DFL bins as float64 CPU tensors.

    ``centres[k] = k*eps`` for ``k = 0..K``; bin ``k`` is ``[left_edges[k], left_edges[k+1])``
    and the last bin is ``[left_edges[K], 1]``.
    """
    eps = _check_eps(eps)
    k_last = _last_bin_index(eps)
    k = torch.arange(k_last + 1, dtype=torch.float64)
    centres = k * eps
    left = ((k - 0.5) * eps).clamp(min=0.0)
    right = torch.cat([left[1:], torch.ones(1, dtype=torch.float64)])
    return centres, left, right - left


def _bin_index(g: torch.Tensor, eps: float, k_last: int, inplace: bool = True) -> torch.Tensor:
    # The documented edge rule: floor(g * (1/eps) + 0.5) in g's dtype, clamped to [0, K].
    # g >= 0, so truncation towards zero (the float -> int conversion) is the floor.  int32: the
    # conversion, the clamp, the count and the gather are 3-10x cheaper than with int64 on a CPU.
    t = g.mul_(1.0 / eps) if inplace else g.mul(1.0 / eps)
    return t.add_(0.5).to(torch.int32).clamp_(0, k_last)


_PARTITIONS = 512  # CUDA: counts are privatised over this many slots, so atomics rarely collide


def _count(keys: torch.Tensor, nbins: int, privatised: "bool | None" = None) -> torch.Tensor:
    """int64 counts of the int32 ``keys`` in ``[0, nbins)``: a bincount, host-sync free on CUDA
    (``privatised``: the CUDA way, the default there; the tests run it on a CPU too)."""
    flat = keys.reshape(-1)
    if flat.is_cuda if privatised is None else privatised:
        # bincount syncs with the host on CUDA (it reads the max); a scatter_add onto 21 slots
        # serialises millions of atomics on one address.  Element i adds to slot
        # (i mod P) * nbins + key: neighbouring threads hit different addresses.  Integer adds:
        # the result is exact and deterministic.
        n = flat.numel()
        key = (n, nbins, str(flat.device))
        if _PARTITION_OFFSETS.get("key") != key:  # the same shape at every click: made once
            _PARTITION_OFFSETS.clear()
            _PARTITION_OFFSETS["key"] = key
            _PARTITION_OFFSETS["offsets"] = torch.arange(n, device=flat.device).remainder_(_PARTITIONS).mul_(nbins)
        slots = _PARTITION_OFFSETS["offsets"] + flat
        out = torch.zeros(_PARTITIONS * nbins, dtype=torch.int64, device=flat.device)
        out.scatter_add_(0, slots, torch.ones(1, dtype=torch.int64, device=flat.device).expand(n))
        return out.view(_PARTITIONS, nbins).sum(0)
    return torch.bincount(flat, minlength=nbins)


_PARTITION_OFFSETS: dict = {}


def _maybe_all_reduce(counts: torch.Tensor, sync: bool) -> torch.Tensor:
    if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
    return counts


HISTOGRAM_SCOPES = ("batch", "sample", "roi")


class L1Histogram(NamedTuple):
    """The histogram behind the L1DFL weights (all float64/int64, on the input's device).

    With ``scope="batch"`` (the authors') ``counts``/``weights`` are ``(K+1,)`` and ``n`` is 0-d;
    with ``"sample"``/``"roi"`` they are ``(B, K+1)`` and ``(B,)``: one histogram per sample."""

    counts: torch.Tensor  #: int64 population of each bin (all-reduced when synchronised)
    left_edges: torch.Tensor  #: float64 left edge of each bin
    widths: torch.Tensor  #: float64 width of each bin
    centres: torch.Tensor  #: float64 centre ``k*eps`` of each bin
    weights: torch.Tensor  #: float64 ``beta`` of a voxel in each bin (0 for empty bins)
    n: torch.Tensor  #: int64 number of elements ``N`` (sum of ``counts``)


def _check_scope(scope: str) -> str:
    if scope not in HISTOGRAM_SCOPES:
        raise ValueError(f"histogram_scope must be one of {list(HISTOGRAM_SCOPES)}, got {scope!r}")
    return scope


def dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation of a ``(B, C, *spatial)`` mask by ``k`` voxels (chessboard distance: a cube
    of side ``2k+1``), per sample and channel; the border counts as background.  Separable max
    pools, one per spatial axis: ``3 (2k+1)`` taps per voxel where MONAI's
    ``utils_morphological_ops.dilate`` convolves with the whole cube, ``(2k+1)³`` (~100× the work at
    the default k = 8 on a 128³ crop).  Returns a bool tensor."""
    x = mask.to(torch.float32) if mask.dtype == torch.bool or not mask.is_floating_point() else mask
    if k <= 0:
        return x > 0
    for d in range(2, x.dim()):
        moved = x.movedim(d, -1)
        shape = moved.shape
        pooled = torch.nn.functional.max_pool1d(moved.reshape(-1, 1, shape[-1]), 2 * k + 1, stride=1, padding=k)
        x = pooled.reshape(shape).movedim(-1, d)
    return x > 0


def _dilated_target(target: torch.Tensor, dilation: int, fg_from: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool: the target foreground (any channel from ``fg_from`` on) dilated
    by ``dilation`` voxels."""
    with torch.no_grad():
        y = target[:, fg_from:].amax(1, keepdim=True) if target.shape[1] > fg_from else torch.zeros_like(target[:, :1])
        return dilate(y, dilation)


def _roi(prob: torch.Tensor, target: torch.Tensor, dilation: int, fg_from: int,
         dilated: "torch.Tensor | None" = None) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool: the target foreground dilated by ``dilation`` voxels (``dilated``
    when already computed), united with the predicted foreground (``p > 0.5``)."""
    if dilated is None:
        dilated = _dilated_target(target, dilation, fg_from)
    with torch.no_grad():
        if prob.shape[1] > fg_from:
            return dilated | (prob[:, fg_from:].detach().amax(1, keepdim=True) > 0.5)
        return dilated


def _histogram_keys(
    prob: torch.Tensor, target: torch.Tensor, eps: float, sync_histogram: bool, scope: str = "batch",
    roi: "torch.Tensor | None" = None, g: "torch.Tensor | None" = None,
) -> tuple[L1Histogram, torch.Tensor, torch.Tensor]:
    """The histogram, the int32 key of every element into ``table`` and ``table``: ``beta`` of a
    voxel is ``table[key]``.  Scopes ``sample``/``roi`` offset each sample's bins by
    ``b*(K+1)`` (one bincount for all histograms); voxels outside ``roi`` get the last key, whose
    weight is 0.  ``g`` (optional): ``|prob - target|`` already computed (it is not modified)."""
    centres, left, widths = _layout_on(eps, prob.device)
    nb = len(centres)
    with torch.no_grad():
        if g is None:
            key = _bin_index((prob.detach() - target.to(prob.dtype)).abs_(), eps, nb - 1)
        else:
            key = _bin_index(g, eps, nb - 1, inplace=False)
        b = prob.shape[0]
        groups = 1 if scope == "batch" else b
        if groups > 1:
            key.view(b, -1).add_(torch.arange(0, b * nb, nb, device=key.device, dtype=torch.int32).unsqueeze(1))
        if roi is not None:
            key = key.masked_fill_(~roi.expand_as(key), groups * nb)
        counts = _count(key, groups * nb + 1)[: groups * nb].view(groups, nb)
        if scope == "batch":
            counts = _maybe_all_reduce(counts, sync_histogram)  # per-sample histograms need no sync
        n = counts.sum(1)
        table = torch.where(counts > 0, n.to(torch.float64)[:, None] * widths / counts.to(torch.float64).clamp(min=1.0),
                            torch.zeros_like(widths))
        flat = torch.cat([table.reshape(-1), table.new_zeros(1)])
    if scope == "batch":
        counts, table, n = counts[0], table[0], n[0]
    hist = L1Histogram(counts, left, widths, centres, table, n)
    return hist, key, flat


_LAYOUTS: dict = {}


def _layout_on(eps: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`l1_bin_layout` on ``device``, kept: a host-to-device copy per call would make a GPU
    wait (and CUDA's sync debug mode flag it)."""
    eps = _check_eps(eps)
    key = (eps, str(device))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = tuple(t.to(device) for t in l1_bin_layout(eps))
    return _LAYOUTS[key]


def _beta_mean(hist: L1Histogram) -> torch.Tensor:
    """mean(beta) over a histogram's voxels = sum over occupied bins of width_k, per histogram."""
    return (hist.weights * hist.counts.to(torch.float64)).sum(-1) / hist.n.to(torch.float64).clamp(min=1.0)


def _gather(flat: torch.Tensor, key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return flat.to(dtype).index_select(0, key.reshape(-1)).view(key.shape)


def l1_histogram(
    prob: torch.Tensor, target: torch.Tensor, eps: float = 0.05, *, sync_histogram: bool = False,
    histogram_scope: str = "batch", roi_dilation: int = 8,
) -> L1Histogram:
    """Histogram of ``g = |prob - target|`` over every element, with the L1DFL per-bin weights.

    ``prob`` are probabilities (after sigmoid/softmax) and ``target`` a binary tensor of the same
    shape.  With ``sync_histogram=True`` and ``torch.distributed`` initialised, the counts are
    summed over all processes (a collective call: every rank must make it).  ``histogram_scope``
    as in :class:`L1DFLoss` (``sample``/``roi``: one histogram per sample, ``prob`` and ``target``
    ``(B, C, *spatial)``; ``roi``: counted inside :func:`weight_roi` only, sigmoid convention:
    every channel is foreground).
    """
    _check_same_shape(prob, target)
    roi = _roi(prob, target, roi_dilation, 0) if _check_scope(histogram_scope) == "roi" else None
    return _histogram_keys(prob, target, eps, sync_histogram, histogram_scope, roi)[0]


def l1_voxel_weights(
    prob: torch.Tensor, target: torch.Tensor, eps: float = 0.05, *, sync_histogram: bool = False,
    histogram_scope: str = "batch", roi_dilation: int = 8,
) -> torch.Tensor:
    """The L1DFL weights ``beta = N * width_k / count_k`` of every element (not differentiable).

    ``prob``: probabilities ``(B, C, *spatial)`` (or any shape with ``scope="batch"``); ``target``:
    binary, same shape.  Returns a tensor of ``prob``'s shape and floating dtype.  See the module
    docstring for the bins and the edge rule; ``sync_histogram``, ``histogram_scope`` and
    ``roi_dilation`` as in :func:`l1_histogram` (``roi``: 0 outside the region of interest).
    """
    _check_same_shape(prob, target)
    roi = _roi(prob, target, roi_dilation, 0) if _check_scope(histogram_scope) == "roi" else None
    _, key, flat = _histogram_keys(prob, target, eps, sync_histogram, histogram_scope, roi)
    dtype = prob.dtype if prob.is_floating_point() else torch.float32
    return _gather(flat, key, dtype)


WEIGHT_REGIONS = ("interior", "boundary", "background")


def weight_regions(target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three voxel classes of :func:`l1_weight_shares`, bool, ``target``'s shape (per sample and
    channel, 26-neighbourhood, the crop border counts as outside the target):

    * ``interior``: target voxels whose whole 3x3x3 neighbourhood is target (the target eroded by
      one voxel);
    * ``boundary``: the rest of the target and the background voxels touching it (the target
      dilated by one voxel minus its interior: a band two voxels thick across the surface);
    * ``background``: everything else (the target dilated by one voxel, complemented).
    """
    y = target.detach() > 0.5 if target.is_floating_point() else target.detach() > 0
    spatial = y.dim() - 2
    outside = torch.nn.functional.pad((~y).to(torch.float32), [1, 1] * spatial, value=1.0)
    interior = ~dilate(outside, 1)[(slice(None), slice(None)) + (slice(1, -1),) * spatial]
    near = dilate(y, 1)
    return {"interior": interior, "boundary": near & ~interior, "background": ~near}


def l1_weight_shares(
    prob: torch.Tensor, target: torch.Tensor, eps: float = 0.05, *, histogram_scope: str = "batch",
    roi_dilation: int = 8, weight_dice: bool = True, smooth_nr: float = 1e-8, smooth_dr: float = 1e-8,
    regions: "dict[str, torch.Tensor] | None" = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Where L1DFL puts its weight: the mechanism of ``docs/l1dfl.md`` ("Variants"), measured.

    ``prob``: probabilities ``(B, C, *spatial)`` (sigmoid convention: every channel a binary
    problem); ``target``: binary, same shape; the other arguments as in :class:`L1DFLoss`.
    Returns, as 0-d float64 tensors (no host sync), per voxel class of :func:`weight_regions`
    (``interior``, ``boundary``, ``background``):

    * ``"beta"``: the share of the total weight ``sum(beta)`` that falls on the class;
    * ``"dice_grad"``: the share of the weighted Dice's gradient magnitude ``sum |dD/dp|``, with
      ``dD_bc/dp = beta (2 y den - 2 p num) / den^2`` (``num = 2 sum beta p y + smooth_nr``,
      ``den = sum beta (p^2 + y^2) + smooth_dr``; ``beta = 1`` when ``weight_dice=False``);
    * ``"voxels"``: the class's share of the voxels.

    ``regions`` (optional): :func:`weight_regions` of ``target``, when already computed.
    """
    _check_same_shape(prob, target)
    with torch.no_grad():
        p = prob.detach().to(torch.float64)
        y = target.detach().to(torch.float64)
        beta = l1_voxel_weights(p, y, eps, histogram_scope=histogram_scope, roi_dilation=roi_dilation)
        w = beta if weight_dice else torch.ones_like(beta)
        b, c = p.shape[:2]
        axes = tuple(range(2, p.dim()))
        num = (2.0 * w * p * y).sum(axes) + smooth_nr
        den = (w * (p * p + y * y)).sum(axes) + smooth_dr
        shape = (b, c) + (1,) * len(axes)
        grad = (w * (2.0 * y * den.view(shape) - 2.0 * p * num.view(shape)) / den.view(shape) ** 2).abs_()
        regions = regions if regions is not None else weight_regions(target)
        out: dict[str, dict[str, torch.Tensor]] = {"beta": {}, "dice_grad": {}, "voxels": {}}
        for name, what in (("beta", beta), ("dice_grad", grad), ("voxels", torch.ones_like(p))):
            total = what.sum().clamp_min(1e-300)
            for r in WEIGHT_REGIONS:
                out[name][r] = (what * regions[r]).sum() / total
    return out


def _check_same_shape(prob: torch.Tensor, target: torch.Tensor) -> None:
    if prob.shape != target.shape:
        raise ValueError(f"prob and target must have the same shape, got {tuple(prob.shape)} and {tuple(target.shape)}")


# ----------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------
def _rowdots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products of two ``(R, V)`` tensors (one BLAS dot per row; rows are ``B*C``)."""
    return torch.stack([torch.dot(a[r], b[r]) for r in range(a.shape[0])])


class _WeightedDiceSums(torch.autograd.Function):
    """Per-row ``sum(beta*p*y)``, ``sum(beta*p*p)``, ``sum(beta*y*y)`` of ``(R, V)`` tensors.

    Only ``p`` is differentiated (``beta`` and ``y`` are constants).  The sums use one BLAS dot
    per row (rows are ``B*C``, a handful), and the backward pass is two fused element-wise
    passes, which keeps the weighted Dice about as cheap as MONAI's.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, beta: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        by = beta * y
        bp = beta * p
        inter, bpp, byy = _rowdots(by, p), _rowdots(bp, p), _rowdots(by, y)
        ctx.save_for_backward(by, bp)
        ctx.mark_non_differentiable(byy)
        return inter, bpp, byy

    @staticmethod
    def backward(ctx, g_inter: torch.Tensor, g_bpp: torch.Tensor, g_byy: torch.Tensor):  # type: ignore[override]
        by, bp = ctx.saved_tensors
        grad = by * g_inter.unsqueeze(1)
        grad.addcmul_(bp, (2.0 * g_bpp).unsqueeze(1))
        return grad, None, None


def _sigmoid_terms(z, p, g, y, ysign, alpha_t, beta, fw, gamma: float):
    """The sums of :class:`_SigmoidL1DFSums` and the three per-voxel gradient coefficients, for
    ``(R, V)`` rows (pure tensor code: ``train.compile`` hands it to ``torch.compile``)."""
    # Few fresh tensors, the rest in place: on a CPU every new 16 MB tensor costs page faults.
    q = torch.sub(1.0, p).mul_(p)  # dp/dz = p (1 - p), as torch's sigmoid backward computes it
    by = y * beta if beta is not None else y
    bp = p * beta if beta is not None else p.clone()
    inter, bpp, byy = _rowdots(by, p), _rowdots(bp, p), _rowdots(by, y)
    u1 = by.mul_(q) if beta is not None else y * q  # d inter / dz
    u2 = bp.mul_(q).mul_(2.0)  # d bpp / dz
    del q
    # focal: bce = -log p_t = softplus(w) with w = z (1 - 2y) (the logit of the wrong class):
    # relu(w) + log(1 + exp(-|w|)), stable for any z; exp2 and log are vectorised on a CPU
    w = z * ysign
    bce = w.abs().mul_(-1.4426950408889634).exp2_().add_(1.0).log_()
    bce += w.relu_()
    del w
    gpow = g.pow(gamma) if gamma != 2.0 else g.square()  # g = 1 - p_t
    fv = bce.mul_(gpow)  # g^gamma bce: the focal value of a voxel
    if alpha_t is not None:
        fv.mul_(alpha_t)
        gpow.mul_(alpha_t)
    if fw is not None:
        fv.mul_(fw)
        gpow.mul_(fw)
    fsum = fv.sum(1)
    # d focal / dz = (1 - 2y) (gamma (1 - g) fv + g^(gamma+1) alpha_t fw), fv first so that a
    # 0 * huge product never meets inf
    u3 = torch.sub(1.0, g).mul_(fv).mul_(gamma).addcmul_(gpow, g).mul_(ysign)
    return inter, bpp, byy, fsum, u1, u2, u3


class _SigmoidL1DFSums(torch.autograd.Function):
    """The sigmoid-mode loss in one pass: per row ``(R, V)`` of logits ``z``, the weighted Dice sums
    ``sum(beta p y)``, ``sum(beta p^2)``, ``sum(beta y^2)`` and the focal sum, with ``p = sigmoid(z)``.

    The inputs ``p`` (``torch.sigmoid(z)``, computed by the caller for the histogram), ``g = |p - y|``,
    ``y``, ``1 - 2y``, the Dice weights and the focal weights are constants.  The focal term is
    MONAI's ``sigmoid_focal_loss`` written with ``g = 1 - p_t``: ``alpha_t g^gamma softplus(-s)`` with
    ``s = z (2y - 1)``, whose derivative is ``alpha_t (1 - 2y) g^gamma (gamma (1 - g) bce + g)``;
    the Dice terms' derivative goes through ``dp/dz = p (1 - p)``.  Forward saves the three
    per-voxel coefficients of the gradient, so backward is one short pass (and no
    ``log``/``exp`` is taken twice, as autograd through ``logsigmoid`` would).  ``kernel``: the
    function computing them (:func:`_sigmoid_terms`, or its compiled twin).
    """

    @staticmethod
    def forward(ctx, z, p, g, y, ysign, alpha_t, beta, fw, gamma: float, kernel):  # type: ignore[override]
        inter, bpp, byy, fsum, u1, u2, u3 = kernel(z, p, g, y, ysign, alpha_t, beta, fw, gamma)
        ctx.save_for_backward(u1, u2, u3)
        ctx.mark_non_differentiable(byy)
        return inter, bpp, byy, fsum

    @staticmethod
    def backward(ctx, g_inter, g_bpp, g_byy, g_f):  # type: ignore[override]
        u1, u2, u3 = ctx.saved_tensors
        grad = u1 * g_inter.unsqueeze(1)
        grad.addcmul_(u2, g_bpp.unsqueeze(1))
        grad.addcmul_(u3, g_f.unsqueeze(1))
        return (grad,) + (None,) * 9


class _Kernel:
    """``torch.compile`` of a pure tensor function, falling back to the eager one (with a warning)
    when compiling or running it fails (no C++ compiler, no Triton, an unsupported op)."""

    def __init__(self, fn, backend: str = "inductor"):
        self.eager, self.backend, self.failed = fn, backend, None
        self.compiled = torch.compile(fn, backend=backend, dynamic=False)

    def __call__(self, *args):
        if self.failed is None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
                self.failed = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                warnings.warn(f"train.compile: torch.compile ({self.backend}) of the L1DFL kernel failed "
                              f"({self.failed}); it runs eagerly", stacklevel=2)
        return self.eager(*args)


class _TargetContext:
    """What a loss derives from a target that the click loop passes again at every click: kept
    for the same tensor object (and version), recomputed for any other."""

    def __init__(self):
        self.ref, self.version, self.data = None, None, {}

    def get(self, target: torch.Tensor) -> dict:
        if self.ref is None or self.ref() is not target or self.version != target._version:
            self.ref, self.version, self.data = weakref.ref(target), target._version, {}
        return self.data

    def __getstate__(self) -> dict:  # a pickled or copied loss starts with an empty cache
        return {"ref": None, "version": None, "data": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


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
    runs fused (:class:`_SigmoidL1DFSums`): the same sums with an analytic backward, no
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
        try:
            red = LossReduction(reduction).value
        except ValueError:
            raise ValueError(f'Unsupported reduction: {reduction!r}, available options are ["mean", "sum", "none"].') from None
        super().__init__(reduction=red)
        if bool(sigmoid) == bool(softmax):
            raise ValueError(
                "L1DFLoss takes logits: set exactly one of sigmoid=True (independent channels, "
                "e.g. SAM-Med3D's single logit) or softmax=True (mutually exclusive classes)"
            )
        if lambda_dice < 0.0:
            raise ValueError(f"lambda_dice should be no less than 0.0, got {lambda_dice}")
        if lambda_focal < 0.0:
            raise ValueError(f"lambda_focal should be no less than 0.0, got {lambda_focal}")
        if smooth_nr < 0.0 or smooth_dr < 0.0:
            raise ValueError(f"smooth_nr and smooth_dr should be no less than 0.0, got {smooth_nr}, {smooth_dr}")
        if alpha is not None and not (0.0 <= float(alpha) <= 1.0):
            raise ValueError(f"alpha should be in [0, 1] or None, got {alpha}")
        if float(gamma) < 0.0:
            raise ValueError(f"gamma should be no less than 0.0, got {gamma}")
        if isinstance(roi_dilation, bool) or not isinstance(roi_dilation, int) or roi_dilation < 0:
            raise ValueError(f"roi_dilation must be an integer >= 0 (voxels), got {roi_dilation!r}")
        self.eps = _check_eps(eps)
        self.histogram_scope = _check_scope(histogram_scope)
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
        self._target_ctx = _TargetContext()
        self._kernel = _sigmoid_terms

    def compile_kernels(self, backend: str = "inductor") -> "L1DFLoss":
        """``train.compile``: run the sigmoid path's per-voxel arithmetic (the Dice and focal sums
        and their gradient coefficients, ~25 element-wise passes) through ``torch.compile``, which
        fuses it into a few loops (CPU: C++ via Inductor; GPU: Triton).  Falls back to eager, with
        a warning, if compiling fails.  Returns ``self``."""
        self._kernel = _Kernel(_sigmoid_terms, backend)
        return self

    @property
    def compile_failed(self) -> "str | None":
        """Why ``compile_kernels`` fell back to eager (None: compiled, or not asked)."""
        return getattr(self._kernel, "failed", None)

    # -- input checks ---------------------------------------------------------------------------
    def _check_shapes(self, input: torch.Tensor, target: torch.Tensor) -> None:
        if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise ValueError("L1DFLoss expects tensors for input and target")
        if not input.is_floating_point():
            raise ValueError(f"input must be floating-point logits, got dtype {input.dtype}")
        if input.dim() < 3:
            raise ValueError(f"input must be (B, C, *spatial) with at least one spatial dim, got shape {tuple(input.shape)}")
        if target.dim() != input.dim():
            raise ValueError(
                f"input and target must have the same number of dimensions, got {tuple(input.shape)} and "
                f"{tuple(target.shape)}; a label map must be (B, 1, *spatial)"
            )
        c = input.shape[1]
        onehot = self.to_onehot_y and c > 1
        want_c = 1 if onehot else c
        if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:] or target.shape[1] != want_c:
            what = "a (B, 1, *spatial) label map (to_onehot_y=True)" if onehot else "the same shape as input"
            raise ValueError(f"target must be {what}: input {tuple(input.shape)}, target {tuple(target.shape)}")
        if self.softmax and c == 1:
            raise ValueError("softmax=True needs at least 2 channels; use sigmoid=True for a single logit")

    def _check_values(self, input: torch.Tensor, target: torch.Tensor) -> None:
        # Cheap single-pass reductions; all results are read back in one host synchronisation.
        c = input.shape[1]
        checks = [torch.isfinite(input.sum())]  # non-finite iff some logit is NaN/inf (or overflow)
        msgs = ["input contains NaN or inf logits"]
        lo, hi = torch.aminmax(target)
        integral = torch.count_nonzero(torch.frac(target)) == 0 if target.is_floating_point() else torch.ones((), dtype=torch.bool, device=target.device)
        if self.to_onehot_y and c > 1:
            checks.append((lo >= 0) & (hi <= c - 1) & integral)
            msgs.append(f"target labels must be integers in [0, {c - 1}] for to_onehot_y=True with {c} channels")
        else:
            checks.append((lo >= 0) & (hi <= 1) & integral)
            msgs.append("target must be binary (0/1); pass a label map with to_onehot_y=True for class indices")
            if self.softmax:
                checks.append((target.sum(1) == 1).all())
                msgs.append("softmax target must be one-hot: exactly one channel set to 1 at every voxel")
        ok = torch.stack(checks).tolist()  # the one host synchronisation
        if not ok[0] and bool(torch.isfinite(input).all()):
            ok[0] = True  # the sum overflowed but every logit is finite
        for good, msg in zip(ok, msgs):
            if not good:
                raise ValueError(msg)

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self, input: torch.Tensor, target: torch.Tensor, voxel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_shapes(input, target)
        if self.validate:
            self._check_values(input, target)
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
        target = target.to(input.dtype)
        prob = torch.sigmoid(input) if self.sigmoid else torch.softmax(input, 1)

        if self.sigmoid:
            focal = sigmoid_focal_loss(input, target, self.gamma, self.alpha)
        else:
            focal = softmax_focal_loss(input, target, self.gamma, self.alpha)

        roi = self._roi(prob, target)
        if not self.include_background and n_ch > 1:
            prob, target, focal = prob[:, 1:], target[:, 1:], focal[:, 1:]

        beta = beta_mean = None
        if voxel_weights is None and (self.weight_dice or self.weight_focal):
            with record_function("l1dfl.histogram"):
                hist, key, flat = _histogram_keys(prob, target, self.eps, self.sync_histogram, self.histogram_scope, roi)
            with record_function("l1dfl.gather"):
                beta = _gather(flat, key, prob.dtype)
            del key
            beta_mean = _beta_mean(hist)  # 0-d, or (B,) per sample
        elif voxel_weights is not None:
            beta = torch.broadcast_to(voxel_weights.detach().to(prob.dtype), prob.shape)

        # ---- weighted Dice (squared denominator), per (b, c); with batch=True summed over b
        b, c = prob.shape[:2]
        rows = (b * c, -1)
        dice_w = beta if (beta is not None and (self.weight_dice or voxel_weights is not None)) else torch.ones_like(prob)
        inter, bpp, byy = _WeightedDiceSums.apply(
            prob.reshape(rows), dice_w.reshape(rows).detach(), target.reshape(rows).detach()
        )
        dice = self._dice(inter, bpp + byy, b, c)

        # ---- focal
        if self.weight_focal:
            focal = focal * self._focal_weights(beta, beta_mean, roi, voxel_weights is not None)

        spatial = list(range(2, focal.dim()))
        if self.reduction == LossReduction.MEAN.value:
            return self.lambda_dice * dice.mean() + self.lambda_focal * focal.mean()
        if self.reduction == LossReduction.SUM.value:
            return self.lambda_dice * dice.sum() + self.lambda_focal * focal.mean(dim=spatial).sum()
        dice = dice.reshape(list(dice.shape[0:2]) + [1] * (input.dim() - 2))
        return self.lambda_dice * dice + self.lambda_focal * focal

    def _dice(self, inter: torch.Tensor, den: torch.Tensor, b: int, c: int) -> torch.Tensor:
        inter, den = inter.reshape(b, c), den.reshape(b, c)
        if self.batch:
            inter, den = inter.sum(0), den.sum(0)
        return 1.0 - (2.0 * inter + self.smooth_nr) / (den + self.smooth_dr)

    def _roi(self, prob: torch.Tensor, target: torch.Tensor) -> "torch.Tensor | None":
        """The region of interest of ``histogram_scope="roi"`` (None for the other scopes); the
        dilated target is computed once per target tensor (the click loop passes it at every click)."""
        if self.histogram_scope != "roi":
            return None
        fg_from = 1 if self.softmax else 0
        ctx = self._target_ctx.get(target)
        key = ("dilated", self.roi_dilation, fg_from)
        if key not in ctx:
            ctx[key] = _dilated_target(target, self.roi_dilation, fg_from)
        return _roi(prob, target, self.roi_dilation, fg_from, dilated=ctx[key])

    def _focal_weights(self, beta, beta_mean, roi, given: bool) -> torch.Tensor:
        """``beta / mean(beta)`` per histogram (1 outside the ROI)."""
        if given or beta_mean is None:
            return beta / beta.mean()
        bm = beta_mean.to(beta.dtype)
        w = beta / (bm.view((-1,) + (1,) * (beta.dim() - 1)) if bm.dim() else bm)
        if roi is not None:
            w = torch.where(roi, w, torch.ones_like(w))
        return w

    def _forward_sigmoid(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The fused sigmoid path (mean/sum reductions, beta from the histogram)."""
        ctx = self._target_ctx.get(target)
        key = ("sigmoid", input.dtype, self.alpha, self.include_background)
        if key not in ctx:  # per target: y, 1 - 2y and alpha_t (the click loop reuses its target)
            y = target.detach().to(input.dtype)
            if not self.include_background and y.shape[1] > 1:
                y = y[:, 1:]
            rows = (y.shape[0] * y.shape[1], -1)
            alpha_t = None if self.alpha is None else (y * (2.0 * self.alpha - 1.0)).add_(1.0 - self.alpha).reshape(rows)
            ctx[key] = (y, torch.mul(y, -2.0).add_(1.0).reshape(rows), alpha_t)
        y, ysign, alpha_t = ctx[key]
        n_ch = input.shape[1]
        with torch.no_grad():
            p = torch.sigmoid(input.detach())
            roi = self._roi(p, target)
            if not self.include_background and n_ch > 1:
                input, p = input[:, 1:], p[:, 1:]
            g = (p - y).abs_()
            beta = fw = None
            if self.weight_dice or self.weight_focal:
                with record_function("l1dfl.histogram"):
                    hist, hkey, flat = _histogram_keys(p, y, self.eps, self.sync_histogram, self.histogram_scope, roi,
                                                       g=g)
                with record_function("l1dfl.gather"):
                    beta = _gather(flat, hkey, p.dtype)
                del hkey
                if self.weight_focal:
                    fw = self._focal_weights(beta, _beta_mean(hist), roi, False)
        b, c = input.shape[:2]
        rows = (b * c, -1)
        with record_function("l1dfl.terms"):
            inter, bpp, byy, fsum = _SigmoidL1DFSums.apply(
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


# ----------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------
def _loss_class(name: str) -> type:
    import monai.losses as ml

    return {
        "l1dfl": L1DFLoss,
        "dice": ml.DiceLoss,
        "dicefocal": ml.DiceFocalLoss,
        "dicece": ml.DiceCELoss,
        "focal": ml.FocalLoss,
    }[name]


def _defaults(name: str, mode: str) -> dict[str, Any]:
    sig = mode == "sigmoid"
    act = {"sigmoid": sig, "softmax": not sig}
    onehot = {"to_onehot_y": not sig}
    if name == "l1dfl":
        return {**act, **onehot}
    if name in ("dice", "dicefocal", "dicece"):
        return {**act, **onehot, "squared_pred": True}
    # focal
    return {"use_softmax": not sig, **onehot}


def loss_arguments(name: str, mode: str = "sigmoid", **kwargs: Any) -> dict[str, Any]:
    """The constructor arguments :func:`make_loss` passes for ``name`` in ``mode``: the mode's
    defaults with ``kwargs`` over them (names checked against the class; values are not)."""
    key = normalize_loss_name(name)
    if mode not in ("sigmoid", "softmax"):
        raise ConfigError(None, f"loss {key}: unknown mode {mode!r}; choose 'sigmoid' or 'softmax'")
    accepted = [p for p in inspect.signature(_loss_class(key).__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            None, f"loss {key}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return {**_defaults(key, mode), **kwargs}


def make_loss(name: str, mode: str = "sigmoid", **kwargs: Any) -> torch.nn.Module:
    """Build a segmentation loss by name, as the fine-tuning configuration selects it.

    ``name``: ``l1dfl`` (:class:`L1DFLoss`), or a MONAI baseline: ``dice``
    (:class:`monai.losses.DiceLoss`), ``dicefocal`` (:class:`monai.losses.DiceFocalLoss`),
    ``dicece`` (:class:`monai.losses.DiceCELoss`, what official SAM-Med3D trains with) or
    ``focal`` (:class:`monai.losses.FocalLoss`).

    ``mode``: ``"sigmoid"`` (default; SAM-Med3D's single logit, binary target of the same shape
    ``(B, 1, ...)``) sets ``sigmoid=True`` (``use_softmax=False`` for focal); ``"softmax"`` (a
    2-class or multi-class CNN with a ``(B, 1, ...)`` label map) sets ``softmax=True``,
    ``to_onehot_y=True`` (``use_softmax=True`` for focal).  ``dice``, ``dicefocal`` and
    ``dicece`` default to ``squared_pred=True`` (as SAM-Med3D's ``DiceCELoss`` and L1DFL's Dice);
    the authors' baselines are MONAI's defaults, ``squared_pred=False``, which the comparison's
    paper preset passes (``loss_params.dice.squared_pred=false``).
    Note that MONAI 1.6's ``DiceFocalLoss`` uses the *sigmoid* focal term even with
    ``softmax=True``.

    ``**kwargs``: any ``__init__`` argument of the selected class (they override the mode's
    defaults), e.g. for ``l1dfl``: ``include_background, to_onehot_y, sigmoid, softmax, gamma,
    alpha, lambda_dice, lambda_focal, smooth_nr, smooth_dr, batch, reduction, eps,
    histogram_scope, roi_dilation, weight_dice, weight_focal, sync_histogram, validate``.  Unknown
    names, an unknown loss or mode, and invalid values raise :class:`sam_l1dfl.errors.ConfigError`
    (a ``ValueError``) naming them.

    L1DFL's variants (``docs/l1dfl.md``, "Variants"; the defaults are the authors' formula):

    * ``eps``: the bin width (0.05; e.g. 0.1, 0.2);
    * ``histogram_scope``: ``"batch"`` (one histogram per batch, the authors'), ``"sample"`` (one
      per sample), ``"roi"`` (one per sample, inside the target dilated by ``roi_dilation``
      voxels (8) united with the predicted foreground; beta 0 outside);
    * where beta applies: ``weight_dice`` (True) and ``weight_focal`` (False): Dice only (the
      authors'), ``weight_dice=False, weight_focal=True`` focal only, both, or neither (the
      plain squared Dice Focal loss).

    In a fine-tuning config they go under ``loss.params``; a DiceFocal warm start is
    ``loss.warmup_steps`` / ``loss.warmup_name`` (:mod:`sam_l1dfl.training.config`).
    """
    key = normalize_loss_name(name)
    args = loss_arguments(key, mode, **kwargs)
    try:
        return _loss_class(key)(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(None, f"loss {key}: invalid option value: {exc}") from exc


def make_training_loss(name: str, params: "dict[str, Any] | None" = None, mode: str = "sigmoid") -> torch.nn.Module:
    """The training loss by name with training-safe defaults (``params`` override them).

    ``mode="sigmoid"``: SAM-Med3D fine-tuning (single logit, binary target); ``"softmax"``: the
    paper's 2-class CNNs (label-map target, one-hot inside).  For ``l1dfl``:

    * ``sync_histogram=True``: β from the histogram of the *global* batch, so one process with
      batch 4 and two processes with batch 2 compute the same loss;
    * ``validate=False``: the value check reads a result back to the host (one sync per call);
    * ``batch=False``: per-sample Dice averaged over the local batch, so DDP's gradient average
      over processes equals the single-process mean over the global batch.
    """
    key = normalize_loss_name(name)
    return make_loss(key, mode=mode, **training_loss_params(key, params))


def training_loss_params(name: str, params: "dict[str, Any] | None" = None) -> dict[str, Any]:
    """``params`` with the training-safe defaults of :func:`make_training_loss` added (``l1dfl``
    only); ``loss_arguments(name, mode, **training_loss_params(name, params))`` is what the
    trainers' loss is built with (the comparison's ``--plan`` prints it)."""
    kw = dict(params or {})
    if normalize_loss_name(name) == "l1dfl":
        kw.setdefault("sync_histogram", True)
        kw.setdefault("validate", False)
        kw.setdefault("batch", False)
    return kw
