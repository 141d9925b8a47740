"""Click simulation, the one place: training clicks, validation, inference refinement, evaluation.

Every simulated click in the package comes from this module, on torch tensors, batched.  Given a
prediction and the ground truth in the network crop (``(B, 1, D, H, W)``; bool, integer, or float
probabilities thresholded at ``threshold``):

* **The error region** (:func:`error_regions`, the one rule): the larger of the false-negative
  region (``gt & ~pred`` -> a **positive** click, label 1) and the false-positive region
  (``pred & ~gt`` -> a **negative** click, label 0); ties go to the positive click.  A perfect
  prediction clicks in the ground truth (or, when that is empty too, in the background), so the
  click count stays fixed.  Pure tensor code, no host synchronisation.
* **The point** (:func:`next_click`):

  - ``mode="center"`` (validation, inference refinement, ``sam-l1dfl infer --clicks N``): in the
    **largest connected component** of the region (26-connectivity; ``component="any"``: the whole
    region), at the voxel of the deepest non-empty layer of an iterative 3x3x3 erosion (the
    chessboard-distance argmax, a fast approximation of the Euclidean distance-transform argmax
    that stays inside the component) nearest the layer's mean position;
  - ``mode="random"``: the ``floor(u * n)``-th of the region's ``n`` voxels in raster order, for a
    uniform ``u`` per sample (given, or drawn from ``generator``): uniform over the region.

  The training step's click, :func:`sample_clicks` (``mode="random"`` over the whole region, with
  the uniforms of :func:`click_uniforms`), is host-sync free (no ``.item()``, ``nonzero`` or
  Python branch on tensor values), so a GPU never waits in the training loop.  The centre click
  reads the batch's bounding box once (it works inside it), and its erosion and component
  labelling run until they converge: it is for validation and inference.
* **The loop** (:func:`simulate_clicks`): N rounds of "click on the current error, decode with all
  clicks so far and the previous low-resolution logits as the mask prompt", for any decoder.
  ``ClickLoop.evaluate`` (training validation) and ``Segmenter`` (inference refinement clicks,
  ``sam-l1dfl infer --prompts-from-mask --clicks N``) both run it.  The training step itself
  (``sam_l1dfl.training.clickloop.ClickLoop.forward``) keeps its own loop, since it adds the loss,
  mask-only iterations (:func:`mask_only_iterations`) and the newest-click mode, but takes its
  clicks from :func:`sample_clicks` and its boxes from :func:`label_boxes`.

Points come back as ``(B, 1, 3)`` float voxel indices in tensor-dimension order (dims 2, 3, 4:
what ``torch.argwhere`` gives, the SAM-Med3D convention), labels as ``(B, 1)`` int64.

**Training randomness** is per sample: the uniforms of iteration ``t`` of dataset item ``i`` come
from a generator seeded by ``(seed, epoch, i)`` (:func:`click_uniforms`, via
:func:`sam_l1dfl.seeding.seed_of`), so the clicks depend neither on how the global batch is split
over processes nor on a resume.

Connected components and erosion run as whole-batch tensor ops (no Python loop over samples or
voxels):

* ``backend="torch"``: label propagation — every voxel of the region starts with its own linear
  index and takes the maximum over its 3x3x3 neighbourhood inside the region until nothing
  changes.  Cost: one max over the batch per iteration, and as many iterations as the longest
  geodesic path in a component (about its diameter in voxels: 10-40 for PSMA lesions, up to a few
  hundred for a snake-shaped error); convergence is checked every 4 iterations.  Component sizes
  come from one ``scatter_add``.  ``max_iters`` caps the work (a component not fully labelled by
  then may be split; the click still lands in an error voxel).
* ``backend="cc3d"``: cc3d per sample on the CPU (a loop over B, exact, fastest on a CPU).
* ``backend="auto"`` (default): cc3d for CPU tensors, torch propagation on an accelerator.

``scripts/bench_clicks.py`` prints timings of both.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, NamedTuple, Sequence

import torch

from sam_l1dfl.seeding import seed_of

MODES = ("center", "random")
COMPONENTS = ("largest", "any")
BACKENDS = ("auto", "torch", "cc3d")
_MASK_ONLY_RANGE = (2, 9)  # official SAM-Med3D: np.random.randint(2, 9)


def _binary(x: torch.Tensor, threshold: float) -> torch.Tensor:
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point():
        return x > threshold
    return x > 0


def _check(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.dim() != 5 or pred.shape[1] != 1:
        raise ValueError(f"pred must be (B, 1, D, H, W), got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {tuple(gt.shape)} differs from pred shape {tuple(pred.shape)}")


# ---------------------------------------------------------------------------------- error region
def error_regions(pred: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(region (B, 1, D, H, W) bool, is_positive (B,) bool)``: where each sample's next click goes.

    The larger of false negatives (positive click) and false positives (negative click), ties
    positive; a perfect prediction: the ground truth (positive), or the background (negative) when
    the ground truth is empty.  Sync-free.
    """
    _check(pred, gt)
    p, g = _binary(pred, threshold), _binary(gt, threshold)
    b = g.shape[0]
    fn, fp = g & ~p, p & ~g
    # int32 sums: a bool sum into int64 converts every element first (~20x slower on a CPU)
    nfn, nfp = fn.flatten(1).sum(1, dtype=torch.int32), fp.flatten(1).sum(1, dtype=torch.int32)
    is_pos = nfn >= nfp
    region = torch.where(is_pos.view(b, 1, 1, 1, 1), fn, fp)
    perfect = (nfn + nfp) == 0
    g_any = g.flatten(1).any(1)
    fallback = torch.where(g_any.view(b, 1, 1, 1, 1), g, ~g)
    region = torch.where(perfect.view(b, 1, 1, 1, 1), fallback, region)
    is_pos = torch.where(perfect, g_any, is_pos)
    return region, is_pos


# ---------------------------------------------------------------------------------- boxes
def _bounds(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample of a bool ``(B, 1, D, H, W)`` mask: ``(lo (B, 3), hi (B, 3), non-empty (B,))``.

    Sync-free; an empty sample gets ``lo = 0`` and ``hi = size - 1`` (the whole crop).
    """
    lo, hi = [], []
    for dims in ((2, 3), (1, 3), (1, 2)):
        prof = mask[:, 0].any(dim=dims)  # (B, L)
        n = prof.shape[1]
        lo.append(prof.to(torch.uint8).argmax(1))
        hi.append(n - 1 - prof.flip(1).to(torch.uint8).argmax(1))
    return torch.stack(lo, 1), torch.stack(hi, 1), mask.flatten(1).any(1)


def label_boxes(gt: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) min/max voxel corners of each sample's foreground (sync-free; empty -> whole crop)."""
    lo, hi, nonempty = _bounds(gt)
    lo = torch.where(nonempty[:, None], lo, torch.zeros_like(lo))
    hi = torch.where(nonempty[:, None], hi, _per_sample(hi, [n - 1 for n in gt.shape[2:]]))
    return torch.stack([lo, hi], 1).to(torch.float32)


def _union_box(region: torch.Tensor) -> tuple[slice, slice, slice]:
    """The bounding box of the region over the whole batch (one host read)."""
    lo, hi, _ = _bounds(region.any(0, keepdim=True))
    v = torch.cat([lo[0], hi[0]]).tolist()
    return tuple(slice(v[d], v[d + 3] + 1) for d in range(3))


# ---------------------------------------------------------------------------------- components
def largest_component(mask: torch.Tensor, backend: str = "auto", max_iters: int | None = None) -> torch.Tensor:
    """The largest 26-connected component of each sample of a bool ``(B, 1, D, H, W)`` mask."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "cc3d" if mask.device.type == "cpu" else "torch"
    if backend == "cc3d":
        return _largest_cc3d(mask)
    return _largest_torch(mask, max_iters)


def _largest_cc3d(mask: torch.Tensor) -> torch.Tensor:
    import cc3d
    import numpy as np

    out = torch.zeros_like(mask)
    arr = mask[:, 0].detach().to("cpu").numpy()
    for b in range(arr.shape[0]):  # cc3d is a CPU library: one call per sample
        if not arr[b].any():
            continue
        lab = cc3d.connected_components(np.ascontiguousarray(arr[b], dtype=np.uint8), connectivity=26)
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        out[b, 0] = torch.from_numpy(lab == int(np.argmax(counts))).to(mask.device)
    return out


def propagate_labels(mask: torch.Tensor, max_iters: int | None = None) -> torch.Tensor:
    """26-connected component labels by max-pool propagation (0 = background).

    A component's label is 1 + the largest linear index of its voxels, unique within a sample.
    Returns a float tensor (float32 up to 2**24 voxels per sample, else float64).
    """
    spatial = mask.shape[2:]
    n = int(torch.tensor(spatial).prod())
    dtype = torch.float32 if n < 2**24 else torch.float64
    ids = torch.arange(1, n + 1, device=mask.device, dtype=dtype).view(1, 1, *spatial)
    m = mask.to(dtype)
    lab = ids * m
    it = 0
    while max_iters is None or it < max_iters:
        prev = lab
        for _ in range(4 if max_iters is None else min(4, max_iters - it)):
            lab = _box_max(lab) * m
            it += 1
        if torch.equal(lab, prev):
            break
    return lab


def _largest_torch(mask: torch.Tensor, max_iters: int | None) -> torch.Tensor:
    lab = propagate_labels(mask, max_iters)
    b = mask.shape[0]
    flat = lab.flatten(1).long()  # (B, N), values 0..N
    counts = torch.zeros(b, flat.shape[1] + 1, device=mask.device, dtype=torch.int32)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    counts[:, 0] = 0
    winner = counts.argmax(1)  # (B,)
    return ((flat == winner[:, None]) & (winner[:, None] > 0)).view_as(mask)


def _box_max(x: torch.Tensor) -> torch.Tensor:
    """Max over the 3x3x3 neighbourhood (values >= 0; outside counts as 0), as three 1D passes.

    Same result as ``max_pool3d(x, 3, 1, 1)`` and about 3x faster on a CPU.
    """
    for d in (2, 3, 4):
        n = x.shape[d]
        if n == 1:
            continue
        o = x.clone()
        a = o.narrow(d, 0, n - 1)
        torch.maximum(a, x.narrow(d, 1, n - 1), out=a)
        b = o.narrow(d, 1, n - 1)
        torch.maximum(b, x.narrow(d, 0, n - 1), out=b)
        x = o
    return x


def _erode(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 binary erosion of a bool tensor; voxels outside the crop count as background."""
    for d in (2, 3, 4):
        n = x.shape[d]
        o = x.clone()
        if n > 1:
            a = o.narrow(d, 0, n - 1)
            a &= x.narrow(d, 1, n - 1)
            b = o.narrow(d, 1, n - 1)
            b &= x.narrow(d, 0, n - 1)
        o.narrow(d, 0, 1).zero_()
        o.narrow(d, n - 1, 1).zero_()
        x = o
    return x


# ---------------------------------------------------------------------------------- points
def _unravel(idx: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    d, h, w = spatial
    return torch.stack((idx // (h * w), (idx // w) % h, idx % w), dim=1)


def _per_sample(like: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """(B, len(values)) of python ints on ``like``'s device, built by fill kernels (no host copy)."""
    return torch.stack([like.new_full((like.shape[0],), int(v)) for v in values], 1)


def _centre_if_empty(region: torch.Tensor, pts: torch.Tensor, empty: "torch.Tensor | None" = None) -> torch.Tensor:
    d, h, w = region.shape[2:]
    if empty is None:
        empty = ~region.flatten(1).any(1)
    return torch.where(empty[:, None], _per_sample(pts, (d // 2, h // 2, w // 2)), pts)


def interior_point(region: torch.Tensor) -> torch.Tensor:
    """One interior voxel per sample of a bool ``(B, 1, D, H, W)`` region: ``(B, 3)`` long.

    The deepest layer of an iterative 3x3x3 erosion, the voxel nearest that layer's mean.  A sample
    with an empty region gets the crop centre.
    """
    b, _, d, h, w = region.shape
    cur = region
    while True:
        er = _erode(cur)
        alive = er.flatten(1).any(1)  # (B,)
        if not bool(alive.any()):
            break
        cur = torch.where(alive.view(b, 1, 1, 1, 1), er, cur)
    cur = cur[:, 0].float()  # (B, D, H, W)
    dev = region.device
    gi = torch.arange(d, device=dev, dtype=torch.float32).view(1, d, 1, 1)
    gj = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
    gk = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
    s = cur.sum((1, 2, 3)).clamp_min(1.0)
    ci = (cur * gi).sum((1, 2, 3)) / s
    cj = (cur * gj).sum((1, 2, 3)) / s
    ck = (cur * gk).sum((1, 2, 3)) / s
    d2 = (gi - ci.view(b, 1, 1, 1)) ** 2 + (gj - cj.view(b, 1, 1, 1)) ** 2 + (gk - ck.view(b, 1, 1, 1)) ** 2
    d2 = torch.where(cur > 0, d2, torch.full_like(d2, float("inf")))
    return _centre_if_empty(region, _unravel(d2.flatten(1).argmin(1), (d, h, w)))


def random_point(region: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The ``floor(u * n)``-th voxel (raster order) of each sample's ``n``-voxel region: ``(B, 3)`` long.

    ``u``: ``(B,)`` uniforms in [0, 1) on the region's device; uniform over the region.  Sync-free.
    A sample with an empty region gets the crop centre.
    """
    b = region.shape[0]
    rows = region.reshape(b, -1, region.shape[-1])
    idx, n = _draw(rows.sum(-1, dtype=torch.int32), u, lambda r: _take_rows(rows, r))
    return _centre_if_empty(region, _unravel(idx, region.shape[2:]), n == 0)


def _take_rows(rows: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Row ``r[b]`` of ``rows[b]`` for each sample: ``(B, L)`` from ``(B, R, L)`` and ``(B, 1)``."""
    return rows.gather(1, r.unsqueeze(-1).expand(-1, 1, rows.shape[-1])).squeeze(1)


def _draw(row_counts: torch.Tensor, u: torch.Tensor, row_of) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat index of the ``floor(u * n)``-th True voxel (raster order) of each sample, from the
    region's per-row counts ``(B, R)`` (int32; rows = the last axis) and ``row_of(r)``, which gives
    the region's row ``r`` ``(B, 1)`` as ``(B, L)`` bool.  Returns ``(index (B,) long, n (B,))``.

    The same voxel as a cumulative sum over the whole region, at the cost of one reduction over
    it: the row is found by a binary search of the row counts' cumulative sum, the voxel by one
    within the row.  Sync-free.
    """
    ccs = row_counts.cumsum(1, dtype=torch.int32)
    n = ccs[:, -1]
    k = (u.to(torch.float64) * n.to(torch.float64)).floor().to(torch.int32)
    k = torch.minimum(k, (n - 1).clamp_min(0)).unsqueeze(1)
    nrows = ccs.shape[1]
    r = torch.searchsorted(ccs, k, right=True).clamp_(max=nrows - 1)  # first row with more than k before its end
    k_in = k - (ccs.gather(1, r) - row_counts.gather(1, r))
    line = row_of(r).cumsum(1, dtype=torch.int32)
    c = torch.searchsorted(line, k_in, right=True).clamp_(max=line.shape[1] - 1)
    return (r * line.shape[1] + c).squeeze(1), n


def next_click(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mode: str = "center",
    component: str = "largest",
    threshold: float = 0.5,
    u: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    max_iters: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click for each sample: ``(points (B, 1, 3) float32, labels (B, 1) int64)``.

    ``mode="random"`` takes the uniforms ``u`` (``(B,)``), or draws them from ``generator`` (which
    must live on the tensors' device).  ``mode="random", component="any"`` is host-sync free.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    with torch.no_grad():
        region, is_pos = error_regions(pred, gt, threshold)
        if mode == "random" and u is None:
            u = torch.rand(region.shape[0], generator=generator, device=region.device, dtype=torch.float64)
        if mode == "random" and component == "any":
            pts = random_point(region, u)
        else:
            # every sample's region lies inside the batch's union box: work there (the morphology,
            # the components and the raster order are the same, since the crop border counts as
            # background anyway)
            box = _union_box(region)
            sub = region[(slice(None), slice(None)) + box]
            if component == "largest":
                sub = largest_component(sub, backend=backend, max_iters=max_iters)
            pts = interior_point(sub) if mode == "center" else random_point(sub, u)
            pts = pts + torch.tensor([sl.start for sl in box], device=pts.device)
    return pts.to(torch.float32).unsqueeze(1), is_pos.to(torch.int64).unsqueeze(1)


def sample_clicks(pred: torch.Tensor, gt: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training click, host-sync free: uniform over each sample's whole error region.

    ``pred``/``gt``: bool ``(B, 1, D, H, W)``; ``u``: ``(B,)`` in [0, 1) (a column of
    :func:`click_uniforms`).  The ``floor(u * n)``-th voxel of the region in raster order.
    (The training loop uses :class:`TrainingClicks`, the same click with the ground truth's work
    done once per step.)
    """
    _check(pred, gt)
    tc = TrainingClicks(_binary(gt, 0.5))
    return tc.click(tc.errors(_binary(pred, 0.5)), u)


class ErrorCounts(NamedTuple):
    """A prediction's errors against the ground truth, per sample (:meth:`TrainingClicks.errors`)."""

    err: torch.Tensor  #: (B, 1, D, H, W) bool: ``pred XOR gt``
    rows_fn: torch.Tensor  #: (B, D*H) int32 false negatives per row (last axis)
    rows_err: torch.Tensor  #: (B, D*H) int32 errors per row
    nfn: torch.Tensor  #: (B,) int32 false negatives
    nerr: torch.Tensor  #: (B,) int32 errors (false negatives + false positives)


class TrainingClicks:
    """The training step's clicks and IoU targets for one batch of ground truth, host-sync free.

    :func:`sample_clicks` split in two so that the click loop does each part once: the ground
    truth's row counts once per step; :meth:`errors` once per iteration (one XOR, one AND and two
    row-count reductions over the crop), shared by the click of the next iteration (:meth:`click`)
    and the IoU head's target of this one (:meth:`iou`).  The click is the one of
    :func:`sample_clicks` (the error region of :func:`error_regions`, the voxel of
    :func:`random_point`), bit for bit; the region is never materialised: its row counts are the
    false negatives', the false positives' (errors minus false negatives) or, for a perfect
    prediction, the ground truth's (or the background's).
    """

    def __init__(self, gt: torch.Tensor):
        if gt.dim() != 5 or gt.shape[1] != 1 or gt.dtype != torch.bool:
            raise ValueError(f"gt must be a bool (B, 1, D, H, W) tensor, got {tuple(gt.shape)} {gt.dtype}")
        self.gt = gt
        self.b, self.width = gt.shape[0], gt.shape[-1]
        self.rows_gt = self._rows(gt).sum(-1, dtype=torch.int32)
        self.ngt = self.rows_gt.sum(1, dtype=torch.int32)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.b, -1, self.width)

    def empty_prediction(self) -> ErrorCounts:
        """The counts of an empty prediction (iteration 0), without a pass over the crop."""
        return ErrorCounts(self.gt, self.rows_gt, self.rows_gt, self.ngt, self.ngt)

    def errors(self, pred: torch.Tensor) -> ErrorCounts:
        """The counts of a bool ``(B, 1, D, H, W)`` prediction."""
        err = pred ^ self.gt
        rows_fn = self._rows(err & self.gt).sum(-1, dtype=torch.int32)
        rows_err = self._rows(err).sum(-1, dtype=torch.int32)
        return ErrorCounts(err, rows_fn, rows_err, rows_fn.sum(1, dtype=torch.int32),
                           rows_err.sum(1, dtype=torch.int32))

    def iou(self, c: ErrorCounts) -> torch.Tensor:
        """(B,) float32 IoU of the prediction with the ground truth (1 when both are empty)."""
        inter = (self.ngt - c.nfn).float()
        union = (self.ngt + c.nerr - c.nfn).float()
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))

    def dice(self, c: ErrorCounts) -> torch.Tensor:
        """(B,) Dice of the prediction (:func:`sam_l1dfl.metrics.volume.dice_from_counts`'s convention)."""
        inter = self.ngt - c.nfn
        tot = 2 * inter + c.nerr  # |pred| + |gt|
        empty = tot == 0
        return (2 * inter + empty) / (tot + empty)

    def click(self, c: ErrorCounts, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next click: ``(points (B, 1, 3) float32, labels (B, 1) int64)``, ``u``: ``(B,)``."""
        nfp = c.nerr - c.nfn
        perfect = c.nerr == 0
        g_any = self.ngt > 0
        is_pos = torch.where(perfect, g_any, c.nfn >= nfp)
        width = self.width
        row_counts = torch.where(perfect[:, None], torch.where(g_any[:, None], self.rows_gt, width - self.rows_gt),
                                 torch.where(is_pos[:, None], c.rows_fn, c.rows_err - c.rows_fn))
        err_rows, gt_rows = self._rows(c.err), self._rows(self.gt)

        def row_of(r: torch.Tensor) -> torch.Tensor:
            e, g = _take_rows(err_rows, r), _take_rows(gt_rows, r)
            return (e | perfect[:, None]) & (g == is_pos[:, None])  # fn, fp, gt or background

        idx, n = _draw(row_counts, u, row_of)
        pts = _centre_if_empty(self.gt, _unravel(idx, self.gt.shape[2:]), n == 0)
        return pts.to(torch.float32).unsqueeze(1), is_pos.to(torch.int64).unsqueeze(1)


# ---------------------------------------------------------------------------------- the loop
def accumulate_clicks(
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    new_points: torch.Tensor,
    new_labels: torch.Tensor,
    max_clicks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append clicks: ``(B, n, 3), (B, n)`` + ``(B, 1, 3), (B, 1)``; keeps the latest ``max_clicks``."""
    if points is None:
        p, l = new_points, new_labels
    else:
        p = torch.cat([points, new_points.to(points.dtype)], 1)
        l = torch.cat([labels, new_labels.to(labels.dtype)], 1)
    if max_clicks is not None and p.shape[1] > max_clicks:
        p, l = p[:, -max_clicks:], l[:, -max_clicks:]
    return p, l


#: ``decode(points, labels, mask_prompt) -> (next mask prompt, logits at the label's size, iou)``
Decode = Callable[[torch.Tensor | None, torch.Tensor | None, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ClickRound:
    """The state after one round of :func:`simulate_clicks`."""

    clicks: int  # simulated clicks so far (1..n)
    points: torch.Tensor | None  # (B, n, 3): the given points, then the simulated ones
    labels: torch.Tensor | None  # (B, n)
    mask_prompt: torch.Tensor  # what ``decode`` returned as the next mask prompt (low-res logits)
    logits: torch.Tensor  # (B, 1, D, H, W) at the label's size; the prediction is ``logits > 0``
    iou: torch.Tensor  # what ``decode`` returned as the predicted IoU


def simulate_clicks(
    decode: Decode,
    gt: torch.Tensor,
    n_clicks: int,
    *,
    mask_prompt: torch.Tensor,
    logits: torch.Tensor | None = None,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    add_points: bool = True,
    stage: Callable[[str], ContextManager] | None = None,
    **click_kwargs,
) -> Iterator[ClickRound]:
    """The click loop: ``n_clicks`` rounds of click on the current error, then decode.

    Each round adds :func:`next_click` (``click_kwargs``; default: centre of the largest error
    component) on ``logits > 0`` against ``gt`` to the clicks so far (``points``/``labels``: the
    prompt's own points, if any) and calls ``decode(points, labels, mask_prompt)``, whose new mask
    prompt and logits feed the next round.  The first round clicks on ``logits`` (default: an
    empty prediction, so the first click is the lesion's interior).  ``add_points=False`` decodes
    without adding clicks (a box-only model refining its mask).  ``stage(name)``, if given, is
    entered around each ``"clicks"`` and ``"decoder"`` step (for timing).  Yields a
    :class:`ClickRound` after every round.
    """
    stage = stage or (lambda name: nullcontext())
    pred = torch.zeros_like(gt, dtype=torch.bool) if logits is None else logits > 0
    for k in range(1, n_clicks + 1):
        if add_points:
            with stage("clicks"):
                p, l = next_click(pred, gt, **click_kwargs)
                points, labels = accumulate_clicks(points, labels, p, l)
        with stage("decoder"):
            mask_prompt, logits, iou = decode(points, labels, mask_prompt)
        pred = logits > 0
        yield ClickRound(k, points, labels, mask_prompt, logits, iou)


# ---------------------------------------------------------------------------------- training randomness
def click_uniforms(seed: int, epoch: int, indices: Sequence[int], n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in [0, 1), one row per dataset index, independent of batch/process split."""
    rows = []
    for i in indices:
        g = torch.Generator().manual_seed(seed_of("clicks", seed, epoch, int(i)))
        rows.append(torch.rand(n, generator=g, dtype=torch.float64))
    return torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.float64)


def mask_only_iterations(policy: str, n_clicks: int, seed: int, epoch: int, step: int) -> tuple[int, ...]:
    """Which training iterations get the mask prompt alone (the same on every process for a step).

    ``none``; ``last``; ``official`` (SAM-Med3D): one random iteration in [2, 8] and the last one.
    """
    if policy == "none" or n_clicks < 2:
        return ()
    last = n_clicks - 1
    if policy == "last":
        return (last,)
    g = torch.Generator().manual_seed(seed_of("mask_only", seed, epoch, step))
    r = int(torch.randint(_MASK_ONLY_RANGE[0], _MASK_ONLY_RANGE[1], (1,), generator=g))
    return tuple(sorted({r, last} & set(range(1, n_clicks))))


__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "MODES",
    "ClickRound",
    "ErrorCounts",
    "TrainingClicks",
    "accumulate_clicks",
    "click_uniforms",
    "error_regions",
    "interior_point",
    "label_boxes",
    "largest_component",
    "mask_only_iterations",
    "next_click",
    "propagate_labels",
    "random_point",
    "sample_clicks",
    "simulate_clicks",
]
