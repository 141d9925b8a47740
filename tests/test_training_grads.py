"""Gradients reach exactly the trainable parameters; frozen ones stay bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam_l1dfl.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overrides", [
    [],                                                             # default: mask decoder, IoU head MSE
    ["prompts.boxes=true", "trainable.prompt_encoder=true", "trainable.iou_head=frozen",
     "prompts.click_mode=cumulative", "prompts.detach_mask_prompt=false"],
])
def test_gradients_reach_exactly_the_trainable_params(overrides):
    from sam_l1dfl.model import build_sam_med3d
    from sam_l1dfl.prompts.clicks import click_uniforms
    from sam_l1dfl.training.clickloop import ClickLoop, configure_trainable
    from sam_l1dfl.losses import make_training_loss

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["prompts.clicks_per_sample=2", *overrides])
    torch.manual_seed(0)
    model = build_sam_med3d(cfg.model_config())
    report = configure_trainable(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop = ClickLoop(model, cfg.prompts, make_training_loss("l1dfl"), cfg.trainable.iou_head,
                     cfg.trainable.iou_loss_weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(report["trainable"]) and trainable
    assert all(n.startswith(("mask_decoder.", "prompt_encoder.")) for n in trainable)
    assert not any(n.startswith("image_encoder.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    emb = torch.randn(2, cfg.model_config().out_chans, 8, 8, 8)
    # 64^3 labels: the click loop upsamples the 32^3 logits to the label's size, so the gradient
    # paths are the same as at 128^3 at an eighth of the cost
    label = torch.zeros(2, 1, 64, 64, 64, dtype=torch.uint8)
    label[0, 0, 30:35, 30:36, 29:33] = 1
    label[1, 0, 10:13, 15:17, 20:25] = 1
    for step in range(2):
        out = loop(label, click_uniforms(0, 0, [0, 1], 2), embeddings=emb, mask_only=(1,) if step else ())
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got == trainable, (sorted(trainable - got), sorted(got - trainable))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    for n, p in model.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), n
    changed = [n for n in trainable if not torch.equal(model.get_parameter(n), before[n])]
    assert len(changed) == len(trainable)
    if "prompts.boxes=true" in overrides:
        assert {"prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight"} <= trainable
        assert not any(n.startswith("mask_decoder.iou_prediction_head") for n in trainable)
