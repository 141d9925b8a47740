"""L1DFL's documented variants (``loss.params``) and the fused sigmoid path.

* the fused sigmoid path (training) equals the general path (MONAI's focal, beta given as
  ``voxel_weights``) in value and gradient, for every option it takes;
* ``histogram_scope``: ``sample`` = the batch formula run on each sample alone; ``roi`` = the
  histogram of the region of interest only, beta 0 outside, and it moves weight onto the lesion
  (the mechanism the variant is for);
* ``weight_dice`` / ``weight_focal``: "Dice", "focal", "both" and "none" (``weight_dice=False`` is
  the plain squared Dice);
* :func:`l1_weight_shares` against a brute-force autograd gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceFocalLoss, DiceLoss

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.losses import (L1DFLoss, dilate, l1_histogram, l1_voxel_weights, l1_weight_shares, make_loss,
                              weight_regions)


def case(seed=0, b=2, c=1, s=(9, 10, 11), dtype=torch.float64, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros((b, c) + s, dtype=dtype)
    y[:, :, 2:6, 3:7, 4:8] = 1.0
    if b > 1:
        y[1, :, 5:8, 1:4, 2:5] = 1.0
    z = sharp * (y - 0.5 + 0.6 * torch.randn(y.shape, generator=g, dtype=dtype))
    return z, y


def general(loss: L1DFLoss, z, y):
    """The loss by the general path: MONAI's focal, beta computed separately and given."""
    p = torch.sigmoid(z.detach())
    if not loss.include_background:
        p, yy = p[:, 1:], y[:, 1:]
    else:
        yy = y
    beta = l1_voxel_weights(p, yy, loss.eps, histogram_scope=loss.histogram_scope, roi_dilation=loss.roi_dilation)
    dice_w = beta if loss.weight_dice else torch.ones_like(beta)
    dice_only = L1DFLoss(sigmoid=True, lambda_focal=0.0, batch=loss.batch, include_background=loss.include_background,
                         reduction=loss.reduction, lambda_dice=loss.lambda_dice)
    d = dice_only(z, y, voxel_weights=dice_w)
    focal_kw = dict(sigmoid=True, lambda_dice=0.0, gamma=loss.gamma, alpha=loss.alpha, reduction=loss.reduction,
                    include_background=loss.include_background, lambda_focal=loss.lambda_focal)
    if not loss.weight_focal:
        return d + L1DFLoss(**focal_kw)(z, y, voxel_weights=torch.ones(()))
    hist = l1_histogram(p, yy, loss.eps, histogram_scope=loss.histogram_scope, roi_dilation=loss.roi_dilation)
    mean = (hist.weights * hist.counts.double()).sum(-1) / hist.n.double()
    fw = beta / (mean.view(-1, *[1] * (beta.dim() - 1)) if mean.dim() else mean)
    if loss.histogram_scope == "roi":
        roi = dilate(yy.amax(1, keepdim=True), loss.roi_dilation) | (p.amax(1, keepdim=True) > 0.5)
        fw = torch.where(roi, fw, torch.ones_like(fw))
    # the focal weights enter MONAI's element-wise focal term: reduction "none", then reduce
    f = L1DFLoss(**{**focal_kw, "reduction": "none"})(z, y, voxel_weights=torch.ones(())) * fw
    spatial = list(range(2, f.dim()))
    return d + (f.mean() if loss.reduction == "mean" else f.mean(dim=spatial).sum())


FUSED = [
    {},
    {"gamma": 0.0}, {"gamma": 1.0}, {"gamma": 3.5}, {"alpha": 0.25},
    {"batch": True}, {"reduction": "sum"}, {"lambda_dice": 0.3, "lambda_focal": 2.0},
    {"eps": 0.1}, {"histogram_scope": "sample"}, {"histogram_scope": "roi", "roi_dilation": 1},
    {"weight_dice": False}, {"weight_focal": True}, {"weight_dice": False, "weight_focal": True},
    {"histogram_scope": "roi", "roi_dilation": 2, "weight_focal": True},
]


@pytest.mark.parametrize("kw", FUSED, ids=[str(k) for k in FUSED])
def test_fused_sigmoid_path_equals_the_general_one(kw):
    z, y = case(1)
    loss = L1DFLoss(sigmoid=True, **kw)
    x1 = z.clone().requires_grad_(True)
    x2 = z.clone().requires_grad_(True)
    a = loss(x1, y)
    b = general(loss, x2, y)
    assert a.item() == pytest.approx(b.item(), rel=1e-10, abs=1e-12)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)


def test_fused_path_two_channels_without_background_and_float32():
    z, y = case(2, c=2)
    y[:, 0] = 1.0 - y[:, 1]
    for kw in ({"include_background": False}, {"histogram_scope": "roi", "include_background": False}):
        loss = L1DFLoss(sigmoid=True, **kw)
        assert loss(z, y).item() == pytest.approx(general(loss, z, y).item(), rel=1e-10)
    z32, y32 = z.float(), y.float()
    loss = L1DFLoss(sigmoid=True)
    assert loss(z32, y32).item() == pytest.approx(general(loss, z32.double(), y32.double()).item(), rel=1e-5)
    big = torch.full((1, 1, 4, 4, 4), 80.0, requires_grad=True)  # exp/log extremes: finite value and grad
    out = loss(big, torch.zeros(1, 1, 4, 4, 4))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(big.grad).all()


def test_defaults_are_the_authors_formula():
    z, y = case(3)
    explicit = L1DFLoss(sigmoid=True, eps=0.05, histogram_scope="batch", weight_dice=True, weight_focal=False)
    assert torch.equal(L1DFLoss(sigmoid=True)(z, y), explicit(z, y))
    assert "histogram_scope=batch" in repr(explicit) and "roi_dilation" not in repr(explicit)
    # the authors' beta: one histogram over the batch (tests/test_losses.py checks it against numpy)
    p = torch.sigmoid(z)
    torch.testing.assert_close(l1_voxel_weights(p, y), l1_voxel_weights(p, y, histogram_scope="batch"))


def test_sample_scope_is_the_batch_formula_per_sample():
    z, y = case(4, b=3)
    per_sample = L1DFLoss(sigmoid=True, histogram_scope="sample")(z, y)
    alone = torch.stack([L1DFLoss(sigmoid=True)(z[i:i + 1], y[i:i + 1]) for i in range(3)]).mean()
    assert per_sample.item() == pytest.approx(alone.item(), rel=1e-12)
    assert per_sample.item() != pytest.approx(L1DFLoss(sigmoid=True)(z, y).item(), rel=1e-4)
    hist = l1_histogram(torch.sigmoid(z), y, histogram_scope="sample")
    assert hist.counts.shape == (3, 21) and hist.n.tolist() == [9 * 10 * 11] * 3
    for i in range(3):  # the offset bincount = a bincount per sample
        assert torch.equal(hist.counts[i], l1_histogram(torch.sigmoid(z[i:i + 1]), y[i:i + 1]).counts)


def test_roi_scope_counts_only_the_region_and_gives_it_the_weight():
    z, y = case(5, s=(16, 16, 16))
    p = torch.sigmoid(z)
    beta = l1_voxel_weights(p, y, histogram_scope="roi", roi_dilation=2)
    # numpy reference: per sample, the histogram of g over the ROI only; beta = N_roi w_k / count_k
    yn, pn = y.numpy(), p.numpy()
    for i in range(2):
        roi = dilate(y[i:i + 1], 2)[0, 0].numpy() | (pn[i, 0] > 0.5)
        g = np.abs(pn[i, 0] - yn[i, 0])
        k = np.minimum(np.floor(g * 20.0 + 0.5), 20).astype(int)
        counts = np.bincount(k[roi], minlength=21).astype(float)
        width = np.array([0.025] + [0.05] * 19 + [0.025])
        ref = np.where(roi, roi.sum() * width[k] / np.maximum(counts[k], 1), 0.0)
        np.testing.assert_allclose(beta[i, 0].numpy(), ref, rtol=1e-12)
    assert (beta[~(dilate(y, 2) | (p > 0.5))] == 0).all()
    # the mechanism: correct lesion voxels share the first bin with far fewer easy background voxels
    shares = {s: l1_weight_shares(p, y, histogram_scope=s, roi_dilation=2)["beta"] for s in ("batch", "roi")}
    assert shares["roi"]["interior"] > 1.5 * shares["batch"]["interior"]
    assert shares["roi"]["background"] < shares["batch"]["background"]


def test_weight_dice_false_is_the_plain_squared_dice_and_focal_weighting_changes_only_focal():
    z, y = case(6)
    x = z.float()
    t = y.float()
    plain = L1DFLoss(sigmoid=True, weight_dice=False, lambda_focal=0.0, smooth_nr=1e-5, smooth_dr=1e-5)(x, t)
    assert plain.item() == pytest.approx(DiceLoss(sigmoid=True, squared_pred=True)(x, t).item(), rel=1e-5)
    both_off = L1DFLoss(sigmoid=True, weight_dice=False, smooth_nr=1e-5, smooth_dr=1e-5)(x, t)
    ref = DiceFocalLoss(sigmoid=True, squared_pred=True)(x, t)
    assert both_off.item() == pytest.approx(ref.item(), rel=1e-5)
    dice_w = L1DFLoss(sigmoid=True, lambda_focal=0.0)(z, y)
    assert dice_w.item() != pytest.approx(L1DFLoss(sigmoid=True, lambda_focal=0.0, weight_dice=False)(z, y).item(),
                                          rel=1e-3)
    # weight_focal leaves the Dice term alone and changes the focal one
    f_plain = L1DFLoss(sigmoid=True, lambda_dice=0.0)(z, y)
    f_weighted = L1DFLoss(sigmoid=True, lambda_dice=0.0, weight_focal=True)(z, y)
    assert f_weighted.item() != pytest.approx(f_plain.item(), rel=1e-3)
    assert L1DFLoss(sigmoid=True, lambda_focal=0.0, weight_focal=True)(z, y).item() == pytest.approx(dice_w.item())


def test_softmax_mode_takes_the_variants():
    z, y = case(7, c=1)
    labels = y.long()
    two = torch.cat([torch.zeros_like(z), z], 1)
    for kw in ({"histogram_scope": "sample"}, {"histogram_scope": "roi"}, {"weight_dice": False},
               {"weight_focal": True, "histogram_scope": "roi"}):
        out = L1DFLoss(softmax=True, to_onehot_y=True, **kw)(two, labels)
        assert torch.isfinite(out)
    # the per-sample scope is the batch formula per sample in softmax mode too
    a = L1DFLoss(softmax=True, to_onehot_y=True, histogram_scope="sample")(two, labels)
    b = torch.stack([L1DFLoss(softmax=True, to_onehot_y=True)(two[i:i + 1], labels[i:i + 1]) for i in range(2)]).mean()
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_weight_shares_partition_and_dice_gradient_by_autograd():
    z, y = case(8, s=(12, 12, 12))
    p = torch.sigmoid(z)
    regions = weight_regions(y)
    total = sum(regions[r].double() for r in regions)
    assert torch.equal(total, torch.ones_like(total))  # a partition
    assert regions["interior"].sum() > 0 and (regions["interior"] <= (y > 0)).all()
    assert not regions["interior"][..., 0].any()  # the crop border is outside the target
    sh = l1_weight_shares(p, y)
    for what in sh.values():
        assert sum(float(v) for v in what.values()) == pytest.approx(1.0)
    assert float(sh["voxels"]["interior"]) == pytest.approx(float(regions["interior"].double().mean()))
    beta = l1_voxel_weights(p, y)
    assert float(sh["beta"]["boundary"]) == pytest.approx(float(beta[regions["boundary"]].sum() / beta.sum()))
    # |dD/dp| per voxel by autograd: the Dice of each (b, c) with beta constant
    q = p.clone().requires_grad_(True)
    num = 2 * (beta * q * y).sum((2, 3, 4)) + 1e-8
    den = (beta * (q * q + y * y)).sum((2, 3, 4)) + 1e-8
    (num / den).sum().backward()
    g = q.grad.abs()
    for r in regions:
        assert float(sh["dice_grad"][r]) == pytest.approx(float(g[regions[r]].sum() / g.sum()), rel=1e-9)
    # the loss's own view (its bins and scope) agrees
    loss = L1DFLoss(sigmoid=True, histogram_scope="roi", roi_dilation=3)
    own = loss.weight_shares(z, y)
    ref = l1_weight_shares(p, y, histogram_scope="roi", roi_dilation=3)
    assert all(float(own["beta"][r]) == pytest.approx(float(ref["beta"][r])) for r in regions)


def test_variant_parameters_are_checked_and_reach_make_loss():
    with pytest.raises(ValueError, match="histogram_scope"):
        L1DFLoss(sigmoid=True, histogram_scope="global")
    with pytest.raises(ValueError, match="roi_dilation"):
        L1DFLoss(sigmoid=True, histogram_scope="roi", roi_dilation=-1)
    with pytest.raises(ValueError, match="roi_dilation"):
        L1DFLoss(sigmoid=True, roi_dilation=2.5)
    with pytest.raises(ConfigError, match="histogram_scope"):
        make_loss("l1dfl", histogram_scope="image")
    loss = make_loss("l1dfl", histogram_scope="roi", roi_dilation=4, weight_dice=False, weight_focal=True)
    assert (loss.histogram_scope, loss.roi_dilation, loss.weight_dice, loss.weight_focal) == ("roi", 4, False, True)


def test_dilate_is_a_cube_and_keeps_the_border_as_background():
    m = torch.zeros(1, 1, 7, 7, 7, dtype=torch.bool)
    m[0, 0, 3, 3, 3] = True
    d = dilate(m, 2)
    assert d.sum() == 125 and d[0, 0, 1:6, 1:6, 1:6].all()
    m2 = torch.zeros(1, 1, 9, 9)
    m2[0, 0, 0, 0] = 1
    assert dilate(m2, 1).sum() == 4  # 2-D, clipped at the border
    assert torch.equal(dilate(m, 0), m)


def test_compiled_kernel_matches_and_a_failing_compiler_falls_back_to_eager():
    z, y = case(9)
    ref = L1DFLoss(sigmoid=True)(z, y)
    traced = L1DFLoss(sigmoid=True).compile_kernels(backend="eager")  # dynamo tracing, no code generation
    assert traced(z, y).item() == pytest.approx(ref.item(), rel=1e-12) and traced.compile_failed is None

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    loss = L1DFLoss(sigmoid=True).compile_kernels(backend=broken)
    with pytest.warns(UserWarning, match="runs eagerly"):
        out = loss(z, y)
    assert out.item() == pytest.approx(ref.item(), rel=1e-12) and "no C++ compiler" in loss.compile_failed
    assert loss(z, y).item() == pytest.approx(ref.item(), rel=1e-12)  # and stays eager, silently


def test_the_privatised_count_of_cuda_equals_bincount():
    from sam_l1dfl.losses import _count

    g = torch.Generator().manual_seed(3)
    for n, nbins in ((1, 5), (1000, 21), (5000, 43)):
        keys = torch.randint(0, nbins, (n,), generator=g, dtype=torch.int32)
        keys[: n // 2] = 0  # a crowded bin, as the easy background makes
        ref = torch.bincount(keys, minlength=nbins)
        assert torch.equal(_count(keys, nbins, privatised=True), ref)
        assert torch.equal(_count(keys.view(-1, 1) if n > 1 else keys, nbins, privatised=True), ref)


def test_the_per_target_cache_is_safe_to_pickle_and_follows_the_target():
    import pickle

    z, y = case(10)
    z[:, :, :3, :3, :3] = -5.0  # a missed corner once the target grows there: the ROI must follow
    loss = L1DFLoss(sigmoid=True, histogram_scope="roi", roi_dilation=1)
    first = loss(z, y)
    clone = pickle.loads(pickle.dumps(loss))  # after a call: the cache holds a weak reference
    assert clone(z, y).item() == pytest.approx(first.item(), rel=1e-12)
    y2 = y.clone()
    y2[:, :, :2, :2, :2] = 1.0
    fresh = L1DFLoss(sigmoid=True, histogram_scope="roi", roi_dilation=1)(z, y2)
    assert fresh.item() != pytest.approx(first.item(), rel=1e-3)
    assert loss(z, y2).item() == pytest.approx(fresh.item(), rel=1e-12)  # another target: recomputed
    loss(z, y)
    y[:, :, :2, :2, :2] = 1.0  # in place: a new version of the same tensor
    assert loss(z, y).item() == pytest.approx(fresh.item(), rel=1e-12)
