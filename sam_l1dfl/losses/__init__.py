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

Modules
-------
:mod:`~sam_l1dfl.losses.histogram` (the bins, the histogram and ``beta``),
:mod:`~sam_l1dfl.losses.roi` (the region of interest of ``histogram_scope="roi"``),
:mod:`~sam_l1dfl.losses.shares` (where the weight falls: :func:`l1_weight_shares`),
:mod:`~sam_l1dfl.losses.kernels` (the fused sums and their backward passes),
:mod:`~sam_l1dfl.losses.checks` (argument and input checks), :mod:`~sam_l1dfl.losses.cache` (the
per-target cache), :mod:`~sam_l1dfl.losses.l1dfl` (the loss class) and
:mod:`~sam_l1dfl.losses.factory` (the losses by name).  Every public name is importable from
``sam_l1dfl.losses``.
"""

from __future__ import annotations

from sam_l1dfl.lossnames import LOSS_NAMES, normalize_loss_name  # re-exported: the light names module
from sam_l1dfl.losses.cache import TargetContext as _TargetContext  # noqa: F401 - its old name (pickled losses)
from sam_l1dfl.losses.factory import loss_arguments, make_loss, make_training_loss, training_loss_params
from sam_l1dfl.losses.histogram import HISTOGRAM_SCOPES, L1Histogram, l1_bin_layout, l1_histogram, l1_voxel_weights
from sam_l1dfl.losses.histogram import count_keys as _count  # noqa: F401 - its old name (the tests use it)
from sam_l1dfl.losses.kernels import sigmoid_terms as _sigmoid_terms  # noqa: F401 - its old name (pickled losses)
from sam_l1dfl.losses.l1dfl import L1DFLoss
from sam_l1dfl.losses.roi import dilate
from sam_l1dfl.losses.shares import WEIGHT_REGIONS, l1_weight_shares, weight_regions

__all__ = ["HISTOGRAM_SCOPES", "L1DFLoss", "L1Histogram", "LOSS_NAMES", "WEIGHT_REGIONS", "dilate", "l1_bin_layout",
           "l1_histogram", "l1_voxel_weights", "l1_weight_shares", "loss_arguments", "make_loss", "make_training_loss",
           "normalize_loss_name", "training_loss_params", "weight_regions"]
