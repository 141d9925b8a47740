"""Tests of sam_l1dfl.losses: L1DFL against a float64 numpy reference written from the formula,
gradients, harmonisation, MONAI reduction semantics, the sigmoid/softmax relation, bad input,
and the make_loss factory."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.losses import L1DFLoss, l1_bin_layout, l1_histogram, l1_voxel_weights, make_loss


# ------------------------------------------------------------------------------------------------
# reference, written directly from the formula (numpy, float64)
# ------------------------------------------------------------------------------------------------
def ref_bins(eps):
    r = 1.0 / eps
    k_last = round(r) if abs(r - round(r)) <= 1e-9 * r else math.floor(r)
    left = [max(0.0, (k - 0.5) * eps) for k in range(k_last + 1)]
    right = left[1:] + [1.0]
    return k_last, np.array(right) - np.array(left)


def ref_beta(p, y, eps):
    """beta = N / density_{bin(g)}, bin(g) = min(floor(g*(1/eps) + 0.5), K) (the documented rule)."""
    g = np.abs(p - y)
    k_last, width = ref_bins(eps)
    k = np.minimum(np.floor(g * (1.0 / eps) + 0.5), k_last).astype(np.int64)
    counts = np.bincount(k.ravel(), minlength=k_last + 1).astype(np.float64)
    density = counts / width
    return g.size / density[k]


def ref_l1dfl(logits, labels, eps=0.05, include_background=True, batch=False, gamma=2.0,
              lambda_dice=1.0, lambda_focal=1.0, smooth=1e-8, beta=None, weight_focal=False):
    """Softmax form: logits (B, C, ...), labels (B, 1, ...) class indices."""
    x = logits.astype(np.float64)
    c = x.shape[1]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    y = (labels == np.arange(c).reshape((1, c) + (1,) * (x.ndim - 2))).astype(np.float64)
    focal = -((1 - p) ** gamma) * y * np.log(p)
    if not include_background:
        p, y, focal = p[:, 1:], y[:, 1:], focal[:, 1:]
    if beta is None:
        beta = ref_beta(p, y, eps)
    axes = tuple(range(2, x.ndim))
    num = (beta * p * y).sum(axis=axes)
    den = (beta * (p ** 2 + y ** 2)).sum(axis=axes)
    if batch:
        num, den = num.sum(0), den.sum(0)
    dice = (2 * num + smooth) / (den + smooth)
    if weight_focal:
        focal = focal * beta / beta.mean()
    return lambda_dice * (1 - dice.mean()) + lambda_focal * focal.mean()


def make_case(seed, shape, c, sharpness, fg_frac, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand((shape[0], 1) + shape[1:], generator=g) < fg_frac).long()
    if c > 2:
        labels = labels * torch.randint(1, c, labels.shape, generator=g)
    onehot = torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).to(dtype)
    # logits correlated with the labels, blurred by noise; sharpness scales confidence
    logits = sharpness * (onehot - 0.5 + 0.8 * torch.randn(onehot.shape, generator=g, dtype=dtype))
    return logits, labels


# ------------------------------------------------------------------------------------------------
# parity with the formula
# ------------------------------------------------------------------------------------------------
PARITY = [
    # seed, (B, *spatial), C, sharpness, foreground fraction, extra loss kwargs
    (0, (2, 10, 9, 8), 2, 1.0, 0.1, {}),
    (1, (1, 12, 12, 12), 2, 6.0, 0.02, {}),
    (2, (3, 16, 16), 2, 0.3, 0.5, {}),  # 2D, blurry, balanced
    (3, (4, 7, 6, 5), 3, 3.0, 0.3, {}),  # 3 classes
    (4, (2, 9, 9, 9), 2, 20.0, 0.05, {}),  # very sharp: most voxels in the first bin
    (5, (2, 8, 8, 8), 2, 2.0, 0.1, {"eps": 0.03}),  # 1/eps not an integer (last bin wider)
    (6, (2, 8, 8, 8), 2, 2.0, 0.1, {"eps": 0.4}),  # 1/eps = 2.5: last bin [0.6, 1]
    (7, (3, 8, 8, 8), 2, 2.0, 0.1, {"batch": True}),
    (8, (2, 8, 8, 8), 3, 2.0, 0.2, {"include_background": False}),
    (9, (2, 8, 8, 8), 2, 2.0, 0.0, {}),  # all-empty foreground
    (10, (2, 8, 8, 8), 2, 2.0, 0.1, {"weight_focal": True, "lambda_dice": 0.5, "lambda_focal": 2.0}),
]


@pytest.mark.parametrize("seed,shape,c,sharp,fg,kw", PARITY)
def test_parity_with_reference(seed, shape, c, sharp, fg, kw):
    logits, labels = make_case(seed, shape, c, sharp, fg)
    loss = L1DFLoss(softmax=True, to_onehot_y=True, **kw)(logits, labels)
    ref = ref_l1dfl(logits.numpy(), labels.numpy(), **kw)
    assert loss.dtype == torch.float64
    assert math.isfinite(ref)
    assert loss.item() == pytest.approx(ref, rel=1e-6)


def test_parity_float32_close_to_reference():
    logits, labels = make_case(11, (2, 12, 12, 12), 2, 2.0, 0.1, dtype=torch.float32)
    loss = L1DFLoss(softmax=True, to_onehot_y=True)(logits, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_l1dfl(logits.numpy(), labels.numpy()), rel=1e-4)


def test_voxel_weights_match_reference_and_are_constant_per_bin():
    logits, labels = make_case(12, (2, 10, 10, 10), 2, 2.0, 0.2)
    p = torch.softmax(logits, 1)
    y = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    beta = l1_voxel_weights(p, y)
    assert beta.shape == p.shape and beta.dtype == p.dtype and not beta.requires_grad
    np.testing.assert_allclose(beta.numpy(), ref_beta(p.numpy(), y.numpy(), 0.05), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# bins, edges, harmonisation
# ------------------------------------------------------------------------------------------------
def test_bin_layout():
    centres, left, widths = l1_bin_layout(0.05)
    assert len(centres) == 21 and centres[-1].item() == pytest.approx(1.0)
    assert widths[0].item() == pytest.approx(0.025) and widths[-1].item() == pytest.approx(0.025)
    assert torch.allclose(widths[1:-1], torch.full((19,), 0.05, dtype=torch.float64))
    assert widths.sum().item() == pytest.approx(1.0)
    c3, l3, w3 = l1_bin_layout(0.03)  # 1/eps = 33.3: centres 0..0.99, last bin [0.975, 1]
    assert len(c3) == 34 and w3[-1].item() == pytest.approx(0.025) and w3.sum().item() == pytest.approx(1.0)
    c4, l4, w4 = l1_bin_layout(0.4)  # centres 0, 0.4, 0.8; bins [0,.2) [.2,.6) [.6,1]
    assert torch.allclose(w4, torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64))


def test_edge_values_go_to_the_bin_on_their_right():
    g = torch.tensor([0.0, 0.0249999, 0.025, 0.075, 0.5, 0.975, 0.9999, 1.0], dtype=torch.float64)
    hist = l1_histogram(g, torch.zeros_like(g))
    expected = {0: 2, 1: 1, 2: 1, 10: 1, 20: 3}
    assert {k: v for k, v in enumerate(hist.counts.tolist()) if v} == expected
    assert hist.n.item() == 8
    # the reference rule gives the same bins
    k = np.minimum(np.floor(g.numpy() * 20.0 + 0.5), 20).astype(int)
    assert np.bincount(k, minlength=21).tolist() == hist.counts.tolist()


def test_harmonisation_total_weight_per_bin_is_n_times_width():
    gen = torch.Generator().manual_seed(13)
    n = 40_000
    y = torch.zeros(2, 1, n // 2, dtype=torch.float64)
    p = torch.rand(2, 1, n // 2, generator=gen, dtype=torch.float64) * 0.0499  # easy: g < 0.05
    hard = torch.rand(2, 1, n // 2, generator=gen) < 0.01
    p[hard] = torch.rand(int(hard.sum()), generator=gen, dtype=torch.float64)  # 1% spread over [0, 1)
    g = (p - y).abs()
    assert (g < 0.05).double().mean().item() > 0.985
    beta = l1_voxel_weights(p, y)
    hist = l1_histogram(p, y)
    k = torch.clamp((g * 20.0 + 0.5).floor().long(), max=20)
    occupied = torch.nonzero(hist.counts).flatten().tolist()
    assert len(occupied) >= 15
    for b in occupied:
        in_bin = beta[k == b]
        assert torch.all(in_bin == in_bin[0])  # one weight per bin, exactly
        expected = n * hist.widths[b].item()
        assert in_bin.sum().item() == pytest.approx(expected, rel=1e-12)
        assert hist.counts[b].item() * in_bin[0].item() == pytest.approx(expected, rel=1e-15)
    # easy voxels are heavily down-weighted relative to hard ones
    assert beta[k == 0].max() < beta[k == 10].min() / 10


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_gradcheck(mode):
    logits, labels = make_case(14, (2, 3, 3, 4), 2, 2.0, 0.3)
    if mode == "softmax":
        loss = L1DFLoss(softmax=True, to_onehot_y=True)
        x, y = logits, labels
    else:
        loss = L1DFLoss(sigmoid=True, batch=True)
        x, y = logits[:, 1:], labels.double()
    x = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_gradient_identical_with_constant_beta():
    logits, labels = make_case(15, (2, 8, 8, 8), 2, 2.0, 0.1)
    loss = L1DFLoss(softmax=True, to_onehot_y=True)
    x1 = logits.clone().requires_grad_(True)
    loss(x1, labels).backward()
    p = torch.softmax(logits, 1)
    y = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    beta = l1_voxel_weights(p, y)
    x2 = logits.clone().requires_grad_(True)
    loss(x2, labels, voxel_weights=beta).backward()
    assert torch.equal(x1.grad, x2.grad)
    assert x1.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# MONAI semantics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [False, True])
def test_reductions_match_monai_dicefocal_with_unit_weights(reduction, batch):
    # sigmoid mode with beta = 1 and MONAI's smoothing is exactly DiceFocalLoss(squared_pred=True)
    logits, labels = make_case(16, (3, 6, 7, 5), 2, 2.0, 0.3, dtype=torch.float32)
    x, y = logits, torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    ours = L1DFLoss(sigmoid=True, reduction=reduction, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5)
    monai = DiceFocalLoss(sigmoid=True, squared_pred=True, reduction=reduction, batch=batch)
    a = ours(x, y, voxel_weights=torch.ones(()))
    b = monai(x, y)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and with the real weights the shapes stay MONAI's
    assert ours(x, y).shape == b.shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_reduction_shapes_match_monai(reduction):
    logits, labels = make_case(17, (2, 5, 5, 5), 3, 2.0, 0.3)
    for batch in (False, True):
        a = L1DFLoss(softmax=True, to_onehot_y=True, reduction=reduction, batch=batch)(logits, labels)
        b = DiceFocalLoss(softmax=True, to_onehot_y=True, reduction=reduction, batch=batch)(logits, labels)
        assert a.shape == b.shape


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_part_with_unit_weights_equals_monai_squared_dice(include_background):
    logits, labels = make_case(18, (2, 7, 7, 7), 3, 3.0, 0.2)
    kw = dict(softmax=True, include_background=include_background, smooth_nr=1e-5, smooth_dr=1e-5)
    ours = L1DFLoss(lambda_focal=0.0, to_onehot_y=True, **kw)(logits, labels, voxel_weights=torch.ones(()))
    # a float64 one-hot target: MONAI's own to_onehot_y makes float32 targets (1e-8-level error)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    ref = DiceLoss(squared_pred=True, **kw)(logits, onehot)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)


def test_focal_part_equals_monai_softmax_focal():
    logits, labels = make_case(19, (2, 7, 7, 7), 2, 3.0, 0.2, dtype=torch.float32)
    ours = L1DFLoss(softmax=True, to_onehot_y=True, lambda_dice=0.0)(logits, labels)
    ref = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)(logits, labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_half_precision_input_is_computed_in_float32():
    logits, labels = make_case(20, (1, 6, 6, 6), 2, 2.0, 0.2, dtype=torch.float32)
    loss = L1DFLoss(softmax=True, to_onehot_y=True)
    out = loss(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(loss(logits.bfloat16().float(), labels).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# sigmoid mode vs the 2-class softmax form
# ------------------------------------------------------------------------------------------------
def test_sigmoid_mode_relation_to_two_class_softmax():
    logits, labels = make_case(21, (2, 9, 9, 9), 2, 2.0, 0.1)
    z = logits[:, 1:] - logits[:, :1]
    y = labels.double()
    two = torch.cat([torch.zeros_like(z), z], 1)  # softmax((0, z))[1] = sigmoid(z)

    def parts(loss_kw, x, t):
        d = L1DFLoss(lambda_focal=0.0, **loss_kw)(x, t).item()
        f = L1DFLoss(lambda_dice=0.0, **loss_kw)(x, t).item()
        return d, f

    d_sig, f_sig = parts(dict(sigmoid=True), z, y)
    d_sm, f_sm = parts(dict(softmax=True, to_onehot_y=True), two, labels)
    d_fg, _ = parts(dict(softmax=True, to_onehot_y=True, include_background=False), two, labels)
    # identical weights
    b_sig = l1_voxel_weights(torch.sigmoid(z), y)
    b_sm = l1_voxel_weights(torch.softmax(two, 1), torch.cat([1 - y, y], 1))
    torch.testing.assert_close(b_sm[:, 1:], b_sig, rtol=1e-12, atol=0)
    torch.testing.assert_close(b_sm[:, :1], b_sig, rtol=1e-12, atol=0)
    # Dice: sigmoid = softmax foreground Dice; focal: sigmoid = 2 x softmax
    assert d_sig == pytest.approx(d_fg, rel=1e-10)
    assert f_sig == pytest.approx(2 * f_sm, rel=1e-10)
    assert d_sm != pytest.approx(d_fg, rel=1e-3)  # the background Dice does enter the softmax form
    # sigmoid on the two channels (-z, z) has exactly the softmax Dice and the focal term F
    d_pair, f_pair = parts(dict(sigmoid=True), torch.cat([-z, z], 1), torch.cat([1 - y, y], 1))
    assert d_pair == pytest.approx(d_sm, rel=1e-10)
    assert f_pair == pytest.approx(f_sig, rel=1e-10)
    # totals
    total_sig = L1DFLoss(sigmoid=True)(z, y).item()
    total_sm = L1DFLoss(softmax=True, to_onehot_y=True)(two, labels).item()
    assert total_sig == pytest.approx(d_fg + f_sig, rel=1e-10)
    assert total_sm == pytest.approx(d_sm + f_sig / 2, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# distributed flag without a process group, and weight_focal normalisation
# ------------------------------------------------------------------------------------------------
def test_sync_histogram_is_a_no_op_without_process_group():
    logits, labels = make_case(22, (2, 6, 6, 6), 2, 2.0, 0.2)
    a = L1DFLoss(softmax=True, to_onehot_y=True, sync_histogram=True)(logits, labels)
    b = L1DFLoss(softmax=True, to_onehot_y=True)(logits, labels)
    assert torch.equal(a, b)


def test_mean_beta_is_sum_of_occupied_widths():
    logits, labels = make_case(23, (2, 6, 6, 6), 2, 4.0, 0.2)
    p = torch.softmax(logits, 1)
    y = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    hist = l1_histogram(p, y)
    assert l1_voxel_weights(p, y).mean().item() == pytest.approx(hist.widths[hist.counts > 0].sum().item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def _x_y():
    return make_case(24, (2, 4, 4, 4), 2, 1.0, 0.3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(softmax=True, eps=0.0), "eps"),
        (dict(softmax=True, eps=0.6), "eps"),
        (dict(softmax=True, eps=-0.1), "eps"),
        (dict(softmax=True, lambda_dice=-1.0), "lambda_dice"),
        (dict(softmax=True, lambda_focal=-0.5), "lambda_focal"),
        (dict(softmax=True, sigmoid=True), "exactly one"),
        (dict(), "exactly one"),
        (dict(softmax=True, reduction="avg"), "reduction"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L1DFLoss(**kwargs)


def test_bad_inputs_raise_value_errors():
    x, labels = _x_y()
    sm = L1DFLoss(softmax=True, to_onehot_y=True)
    with pytest.raises(ValueError, match="label map"):
        sm(x, labels[:, :, :3])  # spatial mismatch
    with pytest.raises(ValueError, match="dimensions"):
        sm(x, labels[:, 0])
    with pytest.raises(ValueError, match="integers in"):
        sm(x, labels + 2)
    with pytest.raises(ValueError, match="integers in"):
        sm(x, labels.double() * 0.5)
    bad = x.clone()
    bad[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        sm(bad, labels)
    bad[0, 0, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        sm(bad, labels)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    sm2 = L1DFLoss(softmax=True)
    with pytest.raises(ValueError, match="one-hot"):
        sm2(x, torch.ones_like(onehot))  # both channels set
    with pytest.raises(ValueError, match="binary"):
        sm2(x, onehot * 0.7)
    with pytest.raises(ValueError, match="same shape"):
        sm2(x, onehot[:, :1])
    sg = L1DFLoss(sigmoid=True)
    with pytest.raises(ValueError, match="binary"):
        sg(x[:, :1], labels.double() * 2)
    with pytest.raises(ValueError, match="single logit"):
        L1DFLoss(softmax=True)(x[:, :1], labels.double())
    with pytest.raises(ValueError, match="floating-point"):
        sg(labels, labels.double())
    # huge but finite logits whose sum overflows are accepted
    big = torch.full((1, 1, 4, 4, 4), 3e38, dtype=torch.float32)
    assert torch.isfinite(sg(big, torch.ones_like(big)))  # no ValueError raised
    # validate=False skips value checks (for speed) but shape checks remain
    L1DFLoss(sigmoid=True, validate=False)(x[:, :1], labels.double())
    with pytest.raises(ValueError):
        L1DFLoss(sigmoid=True, validate=False)(x, labels.double())


def test_single_channel_warnings_like_monai():
    x, labels = _x_y()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = L1DFLoss(sigmoid=True, to_onehot_y=True, include_background=False)(x[:, 1:], labels.double())
    msgs = " ".join(str(m.message) for m in w)
    assert "to_onehot_y=True" in msgs and "include_background=False" in msgs
    assert torch.isfinite(out)


# ------------------------------------------------------------------------------------------------
# make_loss
# ------------------------------------------------------------------------------------------------
def test_make_loss_sigmoid_defaults_run_on_single_logit():
    x = torch.randn(2, 1, 6, 6, 6)
    y = (torch.rand(2, 1, 6, 6, 6) > 0.8).float()
    expected = {"l1dfl": L1DFLoss, "dice": DiceLoss, "dicefocal": DiceFocalLoss, "dicece": DiceCELoss, "focal": FocalLoss}
    for name, cls in expected.items():
        loss = make_loss(name)
        assert type(loss) is cls
        out = loss(x, y)
        assert out.ndim == 0 and torch.isfinite(out)
    assert make_loss("l1dfl").sigmoid and make_loss("dicece").dice.squared_pred


def test_make_loss_softmax_mode_takes_label_maps():
    logits, labels = make_case(25, (2, 6, 6, 6), 2, 2.0, 0.2, dtype=torch.float32)
    for name in ("l1dfl", "dice", "dicefocal", "dicece", "focal"):
        out = make_loss(name, mode="softmax")(logits, labels)
        assert out.ndim == 0 and torch.isfinite(out)
    l1 = make_loss("L1DFL", mode="softmax", eps=0.1, gamma=1.0, reduction="sum")
    assert l1.softmax and l1.to_onehot_y and l1.eps == 0.1 and l1.gamma == 1.0 and l1.reduction == "sum"


def test_make_loss_config_errors():
    with pytest.raises(ConfigError, match="unknown loss 'tversky'"):
        make_loss("tversky")
    with pytest.raises(ConfigError, match="unknown option.*lamda_dice") as exc:
        make_loss("l1dfl", lamda_dice=1.0)
    assert "lambda_dice" in str(exc.value)  # lists the accepted names
    with pytest.raises(ConfigError, match="mode"):
        make_loss("dice", mode="relu")
    with pytest.raises(ConfigError, match="eps"):
        make_loss("l1dfl", eps=2.0)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        make_loss("focal", eps=0.1)
