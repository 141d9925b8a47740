"""The training step's math is pinned: per-click losses of a few steps equal the values recorded
from the implementation before the step was made fast (main at ada33bb, 2026-12-04).

``python tests/test_step_pinned.py > tests/data/step_pinned.json`` records the values of the
current code (done once, on main's code, before the step changed).

The clicks are replayed.  A click is the ``floor(u * n)``-th voxel of the error region, so it
jumps when one voxel's logit crosses 0, and the recorded run has logits within 1e-9 of 0
(``min_abs_logit`` in the JSON): any change of float rounding (another CPU's SIMD width, a sum in
another order) may move a later click and with it every later loss.  So the test gives the loop
the recorded clicks (the click sampler itself is pinned in ``tests/test_clicks.py``) and compares
what the math makes of them.

Tolerance ``RTOL = 1e-4``.  The fast step sums the same terms in another order, so float32
rounding differs by about 1e-7 relative per reduction; three AdamW steps carry a gradient's
relative error into the weights (``lr * m / sqrt(v)``), and an L1DFL voxel whose ``|p - y|`` sits on
a bin edge may change bins (1e-6 relative on the loss).  Perturbing every weight by 1e-5
(relative, after each step) moves the per-click losses by at most 5e-6 relative and the IoU MSE
by 3e-7 (measured), so 1e-4 leaves a margin of 20; a change of the formula moves the losses by
1e-3 or more (``test_a_changed_formula_breaks_the_pin``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # pragma: no cover - when run as a script
    sys.path.insert(0, str(ROOT))

from sam_l1dfl.losses import make_training_loss  # noqa: E402
from sam_l1dfl.model import build_sam_med3d  # noqa: E402
from sam_l1dfl.prompts.clicks import click_uniforms, mask_only_iterations  # noqa: E402
from sam_l1dfl.training import clickloop  # noqa: E402
from sam_l1dfl.training.clickloop import ClickLoop, configure_trainable  # noqa: E402
from sam_l1dfl.training.config import load_config  # noqa: E402

PINNED = ROOT / "tests" / "data" / "step_pinned.json"
RTOL = 1e-4
SIZE = 64  # labels 64^3: the 32^3 logits are upsampled 2x, the same code path as 128^3
STEPS = 3
CASES = {
    # name: (loss, overrides)
    "l1dfl": ("l1dfl", []),
    "dicece": ("dicece", []),
    "dicefocal": ("dicefocal", []),
    "l1dfl_cumulative_boxes_chain": ("l1dfl", ["prompts.click_mode=cumulative", "prompts.boxes=true",
                                               "prompts.detach_mask_prompt=false", "trainable.iou_head=frozen"]),
}


def _labels(b: int, s: int) -> torch.Tensor:
    lab = torch.zeros(b, 1, s, s, s, dtype=torch.uint8)
    lab[0, 0, 20:31, 24:33, 18:26] = 1
    lab[0, 0, 40:44, 40:45, 41:44] = 1  # a second, small lesion
    if b > 1:
        lab[1, 0, 10:16, 30:40, 28:34] = 1
    return lab


def run_steps(loss_name: str, overrides: list[str], steps: int = STEPS, size: int = SIZE, clicks: int = 11,
              replay: "list | None" = None, loss_params: "dict | None" = None) -> dict:
    """``steps`` training steps of the tiny model (seed 0, batch 2, ``clicks`` clicks, AdamW):
    per-click losses, IoU MSE, the clicks, and a checksum of the trained weights.

    ``replay``: the clicks of a recorded run, given to the loop instead of the sampled ones."""
    cfg = load_config(None, ["model.preset=tiny", f"prompts.clicks_per_sample={clicks}",
                             "prompts.mask_only=official", f"loss.name={loss_name}", *overrides])
    torch.manual_seed(0)
    model = build_sam_med3d(cfg.model_config())
    configure_trainable(model, cfg)
    loss = make_training_loss(cfg.loss.name, {**cfg.loss.params, **(loss_params or {})})
    loop = ClickLoop(model, cfg.prompts, loss, cfg.trainable.iou_head, cfg.trainable.iou_loss_weight)
    params = [p for p in loop.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, cfg.model_config().out_chans, 8, 8, 8, generator=g)
    label = _labels(2, size)
    rec: dict = {"seg": [], "iou": [], "clicks": [], "min_abs_logit": float("inf")}
    queue = list(replay or [])

    def next_click(sample):  # the recorded click (replay) or the sampled one (record)
        if replay is not None:
            pts, lab = queue.pop(0)
            p, l = torch.tensor(pts, dtype=torch.float32), torch.tensor(lab, dtype=torch.int64)
        else:
            p, l = sample()
        rec["clicks"].append([p.tolist(), l.tolist()])
        return p, l

    # where the loop takes its clicks: TrainingClicks.click (since the step was made fast), or
    # sample_clicks (when the values were recorded)
    if hasattr(clickloop, "TrainingClicks"):
        click_owner, click_name = clickloop.TrainingClicks, "click"
        real_click = clickloop.TrainingClicks.click

        def clicks_fn(self, counts, u):
            return next_click(lambda: real_click(self, counts, u))
    else:  # pragma: no cover - the code the values were recorded from
        click_owner, click_name = clickloop, "sample_clicks"
        real_click = clickloop.sample_clicks

        def clicks_fn(pred, gt, u):
            return next_click(lambda: real_click(pred, gt, u))

    # the upsampling (F.interpolate when the values were recorded, upsample_logits since)
    up_owner, up_name = (clickloop, "upsample_logits") if hasattr(clickloop, "upsample_logits") else (clickloop.F, "interpolate")
    real_upsample = getattr(up_owner, up_name)

    def upsample(*a, **k):  # how close a logit that decides the next click came to 0
        z = real_upsample(*a, **k)
        rec["min_abs_logit"] = min(rec["min_abs_logit"], float(z.detach().abs().min()))
        return z

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(click_owner, click_name, clicks_fn)
        mp.setattr(up_owner, up_name, upsample)
        for step in range(steps):
            mo = mask_only_iterations("official", clicks, 0, 0, step)
            u = click_uniforms(0, 0, [2 * step, 2 * step + 1], clicks)
            out = loop(label, u, embeddings=emb, mask_only=mo)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec["seg"].append(out["seg_per_iter"].tolist())
            rec["iou"].append(float(out["iou_mse"]) if "iou_mse" in out else None)
    rec["weights_abs_sum"] = float(sum(p.detach().double().abs().sum() for p in params))
    return rec


def _pinned() -> dict:
    return json.loads(PINNED.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_per_click_losses_equal_the_recorded_ones(name):
    ref = _pinned()[name]
    got = run_steps(*CASES[name], replay=ref["clicks"])
    assert len(got["seg"]) == STEPS and all(len(s) == 11 for s in got["seg"])
    for s, (a, b) in enumerate(zip(got["seg"], ref["seg"])):
        assert a == pytest.approx(b, rel=RTOL), f"step {s}"
    for a, b in zip(got["iou"], ref["iou"]):
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=RTOL, abs=1e-5))
    assert got["weights_abs_sum"] == pytest.approx(ref["weights_abs_sum"], rel=RTOL)


def test_a_changed_formula_breaks_the_pin():
    ref = _pinned()["l1dfl"]
    got = run_steps("l1dfl", [], steps=1, replay=ref["clicks"], loss_params={"eps": 0.1})
    worst = max(abs(a - b) / abs(b) for a, b in zip(got["seg"][0], ref["seg"][0]))
    assert worst > 10 * RTOL


if __name__ == "__main__":  # pragma: no cover - records the values
    out = {name: run_steps(*case) for name, case in CASES.items()}
    print(json.dumps(out))
