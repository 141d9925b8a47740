"""Build ``l1dfl`` or a MONAI baseline by name (:func:`make_loss`), with the trainers'
defaults (:func:`make_training_loss`)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.losses.l1dfl import L1DFLoss
from sam_l1dfl.lossnames import normalize_loss_name

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
