"""sync_histogram across two gloo CPU processes: the per-voxel weights of each rank's half of the
batch equal the single-process weights of the concatenated batch (and differ without sync)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sam_l1dfl.losses import L1DFLoss, l1_histogram, l1_voxel_weights

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]

WORLD = 2


def _batch():
    """A global batch of 4 whose halves differ (rank 0 sharp, rank 1 blurry) so local
    histograms are not the global one."""
    g = torch.Generator().manual_seed(7)
    labels = (torch.rand(4, 1, 10, 10, 10, generator=g) < 0.1).long()
    onehot = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double()
    sharp = torch.tensor([8.0, 8.0, 0.7, 0.7], dtype=torch.float64).view(4, 1, 1, 1, 1)
    logits = sharp * (onehot - 0.5 + 0.8 * torch.randn(onehot.shape, generator=g, dtype=torch.float64))
    return logits, labels, onehot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        logits, labels, onehot = _batch()
        part = slice(2 * rank, 2 * rank + 2)
        x, lab, y = logits[part], labels[part], onehot[part]
        p = torch.softmax(x, 1)
        res = {
            "beta_sync": l1_voxel_weights(p, y, sync_histogram=True),
            "beta_local": l1_voxel_weights(p, y),
            "counts_sync": l1_histogram(p, y, sync_histogram=True).counts,
            # per-sample Dice terms with the synchronised weights (reduction="none", no focal)
            "dice_sync": L1DFLoss(softmax=True, to_onehot_y=True, lambda_focal=0.0, reduction="none",
                                  sync_histogram=True)(x, lab).flatten(1)[:, 0],
        }
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_histogram_two_processes_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    logits, labels, onehot = _batch()
    p = torch.softmax(logits, 1)
    beta_full = l1_voxel_weights(p, onehot)
    counts_full = l1_histogram(p, onehot).counts
    dice_full = L1DFLoss(softmax=True, to_onehot_y=True, lambda_focal=0.0, reduction="none")(logits, labels)

    beta_sync = torch.cat([r["beta_sync"] for r in res])
    assert torch.equal(beta_sync, beta_full)  # exactly the same weights
    for r in res:
        assert torch.equal(r["counts_sync"], counts_full)
    torch.testing.assert_close(torch.cat([r["dice_sync"] for r in res]), dice_full.flatten(1)[:, 0], rtol=1e-12, atol=0)
    # without sync, each rank's weights come from its own half and are different
    beta_local = torch.cat([r["beta_local"] for r in res])
    assert not torch.allclose(beta_local, beta_full)
