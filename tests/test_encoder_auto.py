"""The encoder's ``attn_impl="auto"``: the fast or the faithful path per device and batch size,
the same function either way (the paths are compared with the official code in
tests/test_model_golden.py)."""

from __future__ import annotations

import pytest
import torch

from sam_l1dfl.model import build_sam_med3d
from sam_l1dfl.model import image_encoder as ie


def test_the_rule():
    assert ie.choose_attn_impl("cpu", 1) == "fast" and ie.choose_attn_impl("cpu", 8) == "fast"
    assert ie.choose_attn_impl("cuda", 1) == "faithful"  # H200, bf16: 0.016 s faithful vs 0.021 s fast
    assert ie.choose_attn_impl("cuda", 2) == "fast" and ie.choose_attn_impl("cuda", 8) == "fast"
    assert ie.choose_attn_impl("mps", 1) == "fast"
    assert build_sam_med3d("tiny").image_encoder.attn_impl == "auto"  # the default


def test_auto_runs_the_chosen_path_per_call_and_both_agree(monkeypatch):
    torch.manual_seed(0)
    model = build_sam_med3d("tiny").eval()
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))  # non-zero relative-position tables
    enc = model.image_encoder
    x = torch.randn(2, 1, 128, 128, 128)
    out = {}
    with torch.no_grad():
        for impl in ("fast", "faithful"):
            enc.attn_impl = impl
            out[impl] = (enc(x[:1]), enc(x))
        enc.attn_impl = "auto"
        monkeypatch.setitem(ie.FAST_MIN_BATCH, "cpu", 2)  # as on a GPU: faithful at batch 1
        one, two = enc(x[:1]), enc(x)
    assert torch.equal(one, out["faithful"][0]) and torch.equal(two, out["fast"][1])
    scale = out["faithful"][1].abs().max()
    assert (out["fast"][1] - out["faithful"][1]).abs().max() / scale < 1e-5
    with pytest.raises(ValueError, match="attn_impl"):
        enc.attn_impl = "fastest"
