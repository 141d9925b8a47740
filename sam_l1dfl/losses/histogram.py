"""The L1DFL histogram of ``g = |p - y|`` and the per-voxel weights ``beta`` it gives.

The bins, the edge rule and the weights are described in :mod:`sam_l1dfl.losses`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.profiler import record_function

from sam_l1dfl.losses.roi import region_of_interest

def check_eps(eps: float) -> float:
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
    eps = check_eps(eps)
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


def count_keys(keys: torch.Tensor, nbins: int, privatised: "bool | None" = None) -> torch.Tensor:
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


def check_scope(scope: str) -> str:
    if scope not in HISTOGRAM_SCOPES:
        raise ValueError(f"histogram_scope must be one of {list(HISTOGRAM_SCOPES)}, got {scope!r}")
    return scope



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
        counts = count_keys(key, groups * nb + 1)[: groups * nb].view(groups, nb)
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
    eps = check_eps(eps)
    key = (eps, str(device))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = tuple(t.to(device) for t in l1_bin_layout(eps))
    return _LAYOUTS[key]


def beta_mean_of(hist: L1Histogram) -> torch.Tensor:
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
    check_same_shape(prob, target)
    roi = region_of_interest(prob, target, roi_dilation, 0) if check_scope(histogram_scope) == "roi" else None
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
    check_same_shape(prob, target)
    roi = region_of_interest(prob, target, roi_dilation, 0) if check_scope(histogram_scope) == "roi" else None
    _, key, flat = _histogram_keys(prob, target, eps, sync_histogram, histogram_scope, roi)
    dtype = prob.dtype if prob.is_floating_point() else torch.float32
    return _gather(flat, key, dtype)



def check_same_shape(prob: torch.Tensor, target: torch.Tensor) -> None:
    if prob.shape != target.shape:
        raise ValueError(f"prob and target must have the same shape, got {tuple(prob.shape)} and {tuple(target.shape)}")



def histogram_weights(prob: torch.Tensor, target: torch.Tensor, eps: float, sync_histogram: bool, scope: str,
                      roi: "torch.Tensor | None", g: "torch.Tensor | None" = None) -> tuple[torch.Tensor, L1Histogram]:
    """``beta`` of every element of ``prob`` (its dtype) and the histogram it comes from: what a
    forward path of :class:`~sam_l1dfl.losses.L1DFLoss` weights with (arguments as in
    :func:`_histogram_keys`)."""
    with record_function("l1dfl.histogram"):
        hist, key, flat = _histogram_keys(prob, target, eps, sync_histogram, scope, roi, g=g)
    with record_function("l1dfl.gather"):
        beta = _gather(flat, key, prob.dtype)
    return beta, hist


def focal_weights(beta: torch.Tensor, beta_mean: "torch.Tensor | None", roi: "torch.Tensor | None",
                  given: bool) -> torch.Tensor:
    """``beta / mean(beta)`` per histogram (1 outside the ROI); ``given``: ``beta`` are the
    caller's ``voxel_weights`` (one mean over all of them)."""
    if given or beta_mean is None:
        return beta / beta.mean()
    bm = beta_mean.to(beta.dtype)
    w = beta / (bm.view((-1,) + (1,) * (beta.dim() - 1)) if bm.dim() else bm)
    if roi is not None:
        w = torch.where(roi, w, torch.ones_like(w))
    return w
