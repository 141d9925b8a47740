"""Click simulation: right region, right label, interior point, batched == per sample, backends agree."""

from __future__ import annotations

import pytest
import torch

from sam_l1dfl.prompts.clicks import (
    ClickSimulator,
    accumulate_clicks,
    largest_component,
    next_click,
    propagate_labels,
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


def test_accumulate_and_simulate():
    pred, gt = _batch()
    sim = ClickSimulator(max_clicks=3)
    for n in range(1, 5):
        p, l = sim.step(pred, gt)
        assert p.shape == (4, min(n, 3), 3) and l.shape == (4, min(n, 3))
    p, l = accumulate_clicks(None, None, p[:, :1], l[:, :1])
    p, l = accumulate_clicks(p, l, p, l)
    assert p.shape == (4, 2, 3)

    def predict(points, labels):  # a "model" that segments a 3-voxel cube at every positive click
        out = torch.zeros_like(gt)
        for b in range(points.shape[0]):
            for q, lab in zip(points[b].long(), labels[b]):
                if lab == 1:
                    i, j, k = q.tolist()
                    out[b, 0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2] = True
        return out & gt

    points, labels, preds = simulate_clicks(gt, predict, n_clicks=5)
    assert points.shape == (4, 5, 3) and len(preds) == 5
    err = [(p ^ gt).sum().item() for p in preds]
    assert err[-1] < err[0]  # clicking on the error reduces it


def test_bad_inputs():
    gt = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        next_click(gt[:, 0], gt[:, 0])
    with pytest.raises(ValueError):
        next_click(gt, gt, mode="middle")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pred, gt = _batch()
    a = next_click(pred, gt)
    b = next_click(pred.cuda(), gt.cuda())
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
