"""Where L1DFL puts its weight: the voxel classes and the shares of ``beta`` and of the Dice
gradient that fall on each."""

from __future__ import annotations

import torch

from sam_l1dfl.losses.histogram import check_same_shape, l1_voxel_weights
from sam_l1dfl.losses.roi import dilate

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
    check_same_shape(prob, target)
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
