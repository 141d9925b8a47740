"""Click simulation: right region, right label, interior point, batched == per sample, backends agree,
the training click is host-sync free and seeded exactly as before, and the one click loop."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from sam_l1dfl.prompts.clicks import (
    accumulate_clicks,
    click_uniforms,
    error_regions,
    label_boxes,
    largest_component,
    mask_only_iterations,
    next_click,
    propagate_labels,
    sample_clicks,
    simulate_clicks,
)

S = 24


def _at(mask, pts):
    """mask values at (B, 1, 3) points."""
    b = torch.arange(mask.shape[0])
    i, j, k = pts[:, 0].long().unbind(1)
    return mask[b, 0, i, j, k]


def _batch():
    gt = torch.zeros(4, 1, S, S, S, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    # 0: nothing predicted -> positive click in the lesion (2 components: the bigger one wins)
    gt[0, 0, 2:10, 2:10, 2:10] = True
    gt[0, 0, 15:18, 15:18, 15:18] = True
    # 1: over-segmentation -> negative click in the false positive
    gt[1, 0, 5:8, 5:8, 5:8] = True
    pred[1, 0, 3:20, 3:12, 3:12] = True
    # 2: partial prediction -> positive in the missed part
    gt[2, 0, 4:20, 4:10, 4:10] = True
    pred[2, 0, 4:8, 4:10, 4:10] = True
    # 3: perfect -> positive click inside the lesion
    gt[3, 0, 10:13, 10:13, 10:13] = True
    pred[3] = gt[3]
    return pred, gt


@pytest.mark.parametrize("backend", ["cc3d", "torch"])
@pytest.mark.parametrize("mode", ["center", "random"])
def test_click_lands_in_the_right_region_with_the_right_label(backend, mode):
    pred, gt = _batch()
    g = torch.Generator().manual_seed(0)
    pts, labels = next_click(pred, gt, mode=mode, backend=backend, generator=g)
    assert pts.shape == (4, 1, 3) and pts.dtype == torch.float32
    assert labels.shape == (4, 1) and labels.dtype == torch.int64
    assert labels[:, 0].tolist() == [1, 0, 1, 1]
    fn, fp = gt & ~pred, pred & ~gt
    assert _at(fn, pts)[[0, 2]].all() and _at(fp, pts)[1] and _at(gt, pts)[3]
    big = torch.zeros_like(gt[0])
    big[0, 2:10, 2:10, 2:10] = True
    assert _at(big[None], pts[:1]).all()  # the largest component of sample 0


def test_center_is_deep_inside_and_inside_a_c_shape():
    gt = torch.zeros(2, 1, S, S, S, dtype=torch.bool)
    gt[0, 0, 3:12, 4:20, 5:14] = True  # 9 x 16 x 9 block
    gt[1, 0, 4:16, 4:16, 8:11] = True  # C shape: a ring with an opening
    gt[1, 0, 8:12, 8:16, 8:11] = False
    pts, labels = next_click(torch.zeros_like(gt), gt)
    p0 = pts[0, 0].tolist()
    assert p0[0] == 7 and p0[2] == 9 and 7 <= p0[1] <= 15  # the mid-plane, depth 5 from every face
    assert _at(gt, pts).all() and labels.eq(1).all()


def test_batched_equals_per_sample():
    pred, gt = _batch()
    pts, labels = next_click(pred, gt, mode="center")
    for b in range(4):
        p1, l1 = next_click(pred[b : b + 1], gt[b : b + 1], mode="center")
        assert torch.equal(p1, pts[b : b + 1]) and torch.equal(l1, labels[b : b + 1])


def test_backends_agree_and_propagation_labels_components():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 1, 12, 13, 14, generator=g) > 0.6
    a = largest_component(mask, backend="cc3d")
    b = largest_component(mask, backend="torch")
    assert torch.equal(a, b) and a.any()
    lab = propagate_labels(mask)
    import cc3d

    for s in range(3):
        ref = cc3d.connected_components(mask[s, 0].numpy().astype("uint8"), connectivity=26)
        assert len(torch.unique(lab[s][mask[s]])) == int(ref.max())


def test_probabilities_thresholded_and_fp_vs_fn_choice():
    gt = torch.zeros(1, 1, 8, 8, 8)
    gt[0, 0, 1:4, 1:4, 1:4] = 1.0  # 27 voxels
    prob = torch.zeros_like(gt)
    prob[0, 0, 1:4, 1:4, 1:3] = 0.9  # 18 found, 9 missed
    prob[0, 0, 5:8, 5:8, 5:7] = 0.7  # 18 false positive: FP (18) > FN (9) -> negative click
    _, labels = next_click(prob, gt)
    assert labels.item() == 0
    _, labels = next_click(prob, gt, threshold=0.8)  # the FP drops out
    assert labels.item() == 1


def test_error_region_of_a_perfect_prediction():
    gt = torch.zeros(2, 1, 6, 6, 6, dtype=torch.bool)
    gt[0, 0, 1:3, 1:3, 1:3] = True
    region, is_pos = error_regions(gt.clone(), gt)
    assert is_pos.tolist() == [True, False]
    assert torch.equal(region[0], gt[0])  # lesion: click inside it
    assert region[1].all()  # nothing anywhere: a negative click in the background


# ------------------------------------------------------------------------------ the training click
class _NoHostSync(TorchFunctionMode):
    """Fails on anything that makes the host wait for the device."""

    BAD = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
           torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
           torch.Tensor.numpy, torch.Tensor.cpu, torch.equal}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.BAD:
            raise AssertionError(f"host synchronisation: {func}")
        if func in (torch.tensor, torch.as_tensor) and (kwargs or {}).get("device") is not None:
            raise AssertionError("host synchronisation: host data copied to a device")
        if func is torch.Tensor.__getitem__:
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx):
                raise AssertionError("host synchronisation: boolean mask indexing")
        return func(*args, **(kwargs or {}))


def test_the_sync_guard_catches_a_sync():
    pred, gt = _batch()
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        next_click(pred, gt, mode="center")  # reads the batch's bounding box: not for the training step


def test_training_click_is_host_sync_free_and_equals_the_random_click():
    pred, gt = _batch()
    u = torch.tensor([0.0, 0.3, 0.5, 0.999999], dtype=torch.float64)
    with _NoHostSync():
        pts, labels = sample_clicks(pred, gt, u)
        error_regions(pred, gt)
        label_boxes(gt)
    ref = next_click(pred, gt, mode="random", component="any", u=u)
    assert torch.equal(pts, ref[0]) and torch.equal(labels, ref[1])
    # raster order: the same voxel whether or not the work is cut to the batch's bounding box
    # (sample 2's error is one component, so "largest" and "any" are the same region)
    for v in (0.0, 0.4, 0.999):
        w = torch.tensor([v], dtype=torch.float64)
        boxed = next_click(pred[2:3], gt[2:3], mode="random", component="largest", u=w)[0]
        assert torch.equal(boxed, next_click(pred[2:3], gt[2:3], mode="random", component="any", u=w)[0])


def test_the_sync_guard_catches_a_host_to_device_copy():
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        torch.tensor([1, 2, 3], device="cpu")


def test_training_clicks_and_boxes_are_pinned():
    """Values from the implementation before the click code moved to prompts.clicks (HEAD of 2026-11-27)."""
    pred, gt = _batch()
    for u, pts, labels in (
        ([0.0, 0.3, 0.5, 0.999999], [[2, 2, 2], [8, 6, 3], [14, 4, 4], [12, 12, 12]], [1, 0, 1, 1]),
        ([0.7, 0.123, 0.9, 0.01], [[7, 9, 3], [5, 3, 7], [18, 8, 8], [10, 10, 10]], [1, 0, 1, 1]),
    ):
        p, l = sample_clicks(pred, gt, torch.tensor(u, dtype=torch.float64))
        assert p[:, 0].tolist() == [[float(v) for v in q] for q in pts] and l[:, 0].tolist() == labels
    g2 = gt.clone()
    g2[1] = False  # an empty label: the whole crop
    assert label_boxes(g2).tolist() == [[[2, 2, 2], [17, 17, 17]], [[0, 0, 0], [23, 23, 23]],
                                        [[4, 4, 4], [19, 9, 9]], [[10, 10, 10], [12, 12, 12]]]


def test_training_click_randomness_is_pinned():
    """Resumed runs compare weights bit for bit: the click seeds must never drift."""
    u = click_uniforms(7, 3, [0], 5)
    assert u.dtype == torch.float64 and u.shape == (1, 5)
    expected = [0.5635738655927498, 0.09172572777785548, 0.6943003827496147, 0.14551249414537903,
                0.6859093825031319]
    assert u[0].tolist() == expected
    assert mask_only_iterations("official", 11, 0, 0, 3) == (8, 10)
    # per dataset index, whatever the batch split
    a = click_uniforms(0, 1, [5, 9, 2, 7], 4)
    assert torch.equal(a, torch.cat([click_uniforms(0, 1, [5, 9], 4), click_uniforms(0, 1, [2, 7], 4)]))
    pred, gt = _batch()
    p1, _ = sample_clicks(pred, gt, torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert p1[0, 0].tolist() == [2, 2, 2]  # u = 0: the first voxel of the region in raster order


# ------------------------------------------------------------------------------ the click loop
def _cube_decoder(gt, calls):
    """A "model" that segments a 3-voxel cube at every positive click (and records its inputs)."""

    def decode(points, labels, mask_prompt):
        calls.append((None if points is None else points.clone(), mask_prompt.clone()))
        out = torch.zeros_like(gt)
        for b in range(points.shape[0] if points is not None else 0):
            for q, lab in zip(points[b].long(), labels[b]):
                if lab == 1:
                    i, j, k = q.tolist()
                    out[b, 0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2] = True
        out &= gt
        logits = torch.where(out, 5.0, -5.0)
        return mask_prompt + 1, logits, out.flatten(1).float().mean(1)

    return decode


def test_accumulate_keeps_the_latest():
    p = torch.arange(12.0).view(2, 2, 3)
    l = torch.tensor([[1, 0], [0, 1]])
    q, m = accumulate_clicks(p, l, p[:, :1] + 100, l[:, :1], max_clicks=2)
    assert q.shape == (2, 2, 3) and torch.equal(q[:, 0], p[:, 1]) and torch.equal(q[:, 1], p[:, 0] + 100)
    assert torch.equal(m, torch.stack([l[:, 1], l[:, 0]], 1))


def test_simulate_clicks_is_the_loop():
    pred, gt = _batch()
    calls, stages = [], []
    given = torch.full((4, 1, 3), 1.0)
    rounds = list(simulate_clicks(_cube_decoder(gt, calls), gt, 5, mask_prompt=torch.zeros(4, 1, 2, 2, 2),
                                  points=given, labels=torch.zeros(4, 1, dtype=torch.int64),
                                  stage=lambda name: stages.append(name) or torch.no_grad()))
    assert [r.clicks for r in rounds] == [1, 2, 3, 4, 5]
    assert rounds[-1].points.shape == (4, 6, 3) and rounds[-1].labels.shape == (4, 6)
    assert torch.equal(rounds[-1].points[:, :1], given)  # the prompt's own points stay first
    assert stages == ["clicks", "decoder"] * 5
    # the mask prompt returned by one round is the input of the next
    assert [float(c[1].mean()) for c in calls] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # clicking on the error reduces it
    err = [((r.logits > 0) ^ gt).sum().item() for r in rounds]
    assert err[-1] < err[0]
    # the first click was on the empty prediction: inside the lesion (positive)
    assert rounds[0].labels[:, 1].tolist() == [1, 1, 1, 1]
    # without points: decoding only
    calls.clear()
    rounds = list(simulate_clicks(_cube_decoder(gt, calls), gt, 2, mask_prompt=torch.zeros(4, 1), add_points=False))
    assert len(rounds) == 2 and all(c[0] is None for c in calls)


def test_bad_inputs():
    gt = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        next_click(gt[:, 0], gt[:, 0])
    with pytest.raises(ValueError):
        next_click(gt, gt, mode="middle")
    with pytest.raises(ValueError):
        next_click(gt, gt, component="biggest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_training_click_never_syncs():
    pred, gt = _batch()
    a = next_click(pred, gt)
    b = next_click(pred.cuda(), gt.cuda())
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    u = torch.rand(4, dtype=torch.float64)
    ref = sample_clicks(pred, gt, u)
    pc, gc, uc = pred.cuda(), gt.cuda(), u.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample_clicks(pc, gc, uc)
        label_boxes(gc)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])


def test_training_clicks_equal_the_random_click_and_the_counts_are_exact():
    """TrainingClicks (the step's clicks, region never materialised) = next_click(random, any), bit
    for bit, on random masks with perfect, empty-truth and all-wrong samples; IoU and Dice from its
    counts = the direct ones."""
    from sam_l1dfl.metrics.volume import dice_batch
    from sam_l1dfl.prompts.clicks import TrainingClicks

    g = torch.Generator().manual_seed(5)
    for trial in range(6):
        gt = torch.rand(5, 1, 7, 9, 11, generator=g) < 0.15 * (trial % 3)  # trial 0, 3: empty truth
        pred = torch.rand(5, 1, 7, 9, 11, generator=g) < 0.1
        pred[1] = gt[1]  # perfect
        pred[2] = ~gt[2]  # everything wrong
        gt[3] = False
        pred[3] = False  # perfect and empty: the click goes to the background
        u = torch.rand(5, generator=g, dtype=torch.float64)
        u[0] = 0.0
        u[4] = 1.0 - 1e-12
        tc = TrainingClicks(gt)
        counts = tc.errors(pred)
        got = tc.click(counts, u)
        ref = next_click(pred, gt, mode="random", component="any", u=u)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), trial
        inter = (pred & gt).flatten(1).sum(1).float()
        union = (pred | gt).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        assert torch.equal(tc.iou(counts), iou)
        assert torch.equal(tc.dice(counts), dice_batch(pred, gt))
    empty = tc.empty_prediction()
    assert torch.equal(tc.click(empty, u)[0], next_click(torch.zeros_like(gt), gt, mode="random", component="any", u=u)[0])
    with pytest.raises(ValueError, match="bool"):
        TrainingClicks(gt.float())


# ------------------------------------------------------------------------------ the whole training step
def _step_setup(device, scope="batch", clicks=3):
    from sam_l1dfl.losses import make_training_loss
    from sam_l1dfl.model import build_sam_med3d
    from sam_l1dfl.training.clickloop import ClickLoop, configure_trainable
    from sam_l1dfl.training.config import load_config

    cfg = load_config(None, ["model.preset=tiny", f"prompts.clicks_per_sample={clicks}", "prompts.mask_only=last",
                             "prompts.boxes=true"])
    torch.manual_seed(0)
    model = build_sam_med3d(cfg.model_config())
    configure_trainable(model, cfg)
    loss = make_training_loss("l1dfl", {"histogram_scope": scope, "roi_dilation": 2})
    loop = ClickLoop(model, cfg.prompts, loss, weight_shares=loss.weight_shares).to(device)
    label = torch.zeros(2, 1, 32, 32, 32, dtype=torch.uint8)
    label[0, 0, 10:18, 9:15, 12:20] = 1
    label[1, 0, 3:7, 20:26, 4:9] = 1
    emb = torch.randn(2, cfg.model_config().out_chans, 8, 8, 8)
    u = click_uniforms(0, 0, [0, 1], clicks)
    params = [p for p in loop.parameters() if p.requires_grad]
    return loop, label.to(device), emb.to(device), u.to(device), params


@pytest.mark.parametrize("scope", ["batch", "sample", "roi"])
def test_the_training_forward_and_backward_ask_the_host_nothing(scope):
    """The whole click loop with L1DFL (and its weight shares), forward and backward, under the guard."""
    loop, label, emb, u, params = _step_setup("cpu", scope)
    loop(label, u, embeddings=emb, mask_only=(2,))  # warm-up: per-device tables are built once
    with _NoHostSync():
        out = loop(label, u, embeddings=emb, mask_only=(2,))
        out["loss"].backward()
    assert all(p.grad is not None for p in params) and "beta_interior" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scope", ["batch", "roi"])
def test_the_whole_training_step_never_syncs_on_cuda(scope):
    """Forward (11 clicks, L1DFL), backward, gradient clipping and AdamW: no host sync at all."""
    loop, label, emb, u, params = _step_setup("cuda", scope, clicks=11)
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = loop(label, u, embeddings=emb, mask_only=(4, 10))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    step()  # warm-up: optimizer state, interpolation matrices, bin tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out["loss"]).item()
