"""The checks of :class:`~sam_l1dfl.losses.L1DFLoss`: its constructor arguments, and the shapes and
values of the tensors it is called with."""

from __future__ import annotations

import torch
from monai.utils import LossReduction


def check_reduction(reduction: "LossReduction | str") -> str:
    """The value of ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``)."""
    try:
        return LossReduction(reduction).value
    except ValueError:
        raise ValueError(f'Unsupported reduction: {reduction!r}, available options are ["mean", "sum", "none"].') from None


def check_arguments(sigmoid: bool, softmax: bool, lambda_dice: float, lambda_focal: float, smooth_nr: float,
                    smooth_dr: float, alpha: "float | None", gamma: float, roi_dilation: int) -> None:
    """Raise ``ValueError`` for an invalid L1DFLoss argument (the bin width and the histogram scope
    are checked by :mod:`sam_l1dfl.losses.histogram`)."""
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


def check_shapes(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool, softmax: bool) -> None:
    """The shape checks every call runs: logits ``(B, C, *spatial)`` and a target of the same shape
    (a ``(B, 1, *spatial)`` label map with ``to_onehot_y``)."""
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
    onehot = to_onehot_y and c > 1
    want_c = 1 if onehot else c
    if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:] or target.shape[1] != want_c:
        what = "a (B, 1, *spatial) label map (to_onehot_y=True)" if onehot else "the same shape as input"
        raise ValueError(f"target must be {what}: input {tuple(input.shape)}, target {tuple(target.shape)}")
    if softmax and c == 1:
        raise ValueError("softmax=True needs at least 2 channels; use sigmoid=True for a single logit")


def check_values(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool, softmax: bool) -> None:
    """The value checks of ``validate=True``: finite logits, binary / one-hot targets."""
    # Cheap single-pass reductions; all results are read back in one host synchronisation.
    c = input.shape[1]
    checks = [torch.isfinite(input.sum())]  # non-finite iff some logit is NaN/inf (or overflow)
    msgs = ["input contains NaN or inf logits"]
    lo, hi = torch.aminmax(target)
    integral = torch.count_nonzero(torch.frac(target)) == 0 if target.is_floating_point() else torch.ones((), dtype=torch.bool, device=target.device)
    if to_onehot_y and c > 1:
        checks.append((lo >= 0) & (hi <= c - 1) & integral)
        msgs.append(f"target labels must be integers in [0, {c - 1}] for to_onehot_y=True with {c} channels")
    else:
        checks.append((lo >= 0) & (hi <= 1) & integral)
        msgs.append("target must be binary (0/1); pass a label map with to_onehot_y=True for class indices")
        if softmax:
            checks.append((target.sum(1) == 1).all())
            msgs.append("softmax target must be one-hot: exactly one channel set to 1 at every voxel")
    ok = torch.stack(checks).tolist()  # the one host synchronisation
    if not ok[0] and bool(torch.isfinite(input).all()):
        ok[0] = True  # the sum overflowed but every logit is finite
    for good, msg in zip(ok, msgs):
        if not good:
            raise ValueError(msg)
