"""The fused per-row sums of the L1DFL forward paths, with their analytic backward passes, and
the ``torch.compile`` wrapper of ``train.compile``."""

from __future__ import annotations

import warnings

import torch

def _rowdots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products of two ``(R, V)`` tensors (one BLAS dot per row; rows are ``B*C``)."""
    return torch.stack([torch.dot(a[r], b[r]) for r in range(a.shape[0])])


class WeightedDiceSums(torch.autograd.Function):
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


def sigmoid_terms(z, p, g, y, ysign, alpha_t, beta, fw, gamma: float):
    """The sums of :class:`SigmoidL1DFSums` and the three per-voxel gradient coefficients, for
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


class SigmoidL1DFSums(torch.autograd.Function):
    """The sigmoid-mode loss in one pass: per row ``(R, V)`` of logits ``z``, the weighted Dice sums
    ``sum(beta p y)``, ``sum(beta p^2)``, ``sum(beta y^2)`` and the focal sum, with ``p = sigmoid(z)``.

    The inputs ``p`` (``torch.sigmoid(z)``, computed by the caller for the histogram), ``g = |p - y|``,
    ``y``, ``1 - 2y``, the Dice weights and the focal weights are constants.  The focal term is
    MONAI's ``sigmoid_focal_loss`` written with ``g = 1 - p_t``: ``alpha_t g^gamma softplus(-s)`` with
    ``s = z (2y - 1)``, whose derivative is ``alpha_t (1 - 2y) g^gamma (gamma (1 - g) bce + g)``;
    the Dice terms' derivative goes through ``dp/dz = p (1 - p)``.  Forward saves the three
    per-voxel coefficients of the gradient, so backward is one short pass (and no
    ``log``/``exp`` is taken twice, as autograd through ``logsigmoid`` would).  ``kernel``: the
    function computing them (:func:`sigmoid_terms`, or its compiled twin).
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


class CompiledKernel:
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




def sigmoid_constants(ctx: dict, target: torch.Tensor, dtype: torch.dtype, alpha: "float | None",
                      include_background: bool):
    """The constants of :class:`SigmoidL1DFSums` that depend on the target only: ``y``, ``1 - 2y``
    and ``alpha_t`` as rows, kept in ``ctx`` (a loss's per-target cache: the click loop reuses its
    target)."""
    key = ("sigmoid", dtype, alpha, include_background)
    if key not in ctx:
        y = target.detach().to(dtype)
        if not include_background and y.shape[1] > 1:
            y = y[:, 1:]
        rows = (y.shape[0] * y.shape[1], -1)
        alpha_t = None if alpha is None else (y * (2.0 * alpha - 1.0)).add_(1.0 - alpha).reshape(rows)
        ctx[key] = (y, torch.mul(y, -2.0).add_(1.0).reshape(rows), alpha_t)
    return ctx[key]
