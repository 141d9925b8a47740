"""Fine-tuning with a DiceFocal warm start (``loss.warmup_steps``), L1DFL's weight shares in the
log (``train.log_weight_shares``), and a resume in the middle of the schedule.

One tiny run of 3 steps (2 warm-up steps), then the same run killed after step 2 and resumed:
the resumed step 3 must use L1DFL again and end on the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def overrides(d: Path, name: str) -> list[str]:
    return [f"data.root={d / 'synth'}", "data.val_cases=[synth_002]", "data.max_train_crops=2",
            "data.max_val_crops=1", f"data.cache_dir={d / 'cache'}", f"output_dir={d / 'runs'}", f"name={name}",
            "prompts.clicks_per_sample=2", "train.batch_size=2", "train.max_steps=3", "train.save_every=1",
            "train.keep_last=3", "train.log_every=1", "train.val_every=0", "optim.lr=3e-3",
            "loss.warmup_steps=2", "loss.warmup_name=dicefocal", "train.log_weight_shares=true",
            "loss.params.histogram_scope=roi", "loss.params.roi_dilation=4"]


def train_in_process(ov, resume=False):
    from accelerate.state import AcceleratorState

    from sam_l1dfl.training import load_config
    from sam_l1dfl.training.loop import train

    try:
        return train(load_config(ROOT / "configs" / "tiny.yaml", ov), resume=resume, progress=False)
    finally:
        AcceleratorState._reset_state(True)


def test_warm_start_schedule_weight_shares_and_resume(tmp_path):
    from safetensors.torch import load_file

    from sam_l1dfl.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "synth", 3, seed=0, progress=False)
    res = train_in_process(overrides(tmp_path, "warm"))
    recs = [json.loads(l) for l in (res.run_dir / "train_log.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if r["type"] == "train"}
    assert [train[s]["warmup"] for s in (1, 2, 3)] == [1.0, 1.0, 0.0]
    for r in train.values():
        for kind in ("beta", "dgrad"):
            parts = [r[f"{kind}_{g}"] for g in ("interior", "boundary", "background")]
            assert all(0.0 <= v <= 1.0 for v in parts) and sum(parts) == pytest.approx(1.0, abs=1e-4)
    meta = json.loads((res.run_dir / "last" / "config.json").read_text())
    assert meta["loss"] == {"name": "l1dfl", "histogram_scope": "roi", "roi_dilation": 4, "warmup_steps": 2,
                            "warmup_name": "dicefocal"}
    straight = load_file(str(res.run_dir / "last" / "model.safetensors"))

    # killed after step 2 (inside the schedule's switch): the resumed step 3 trains with L1DFL
    again_dir = res.run_dir.parent / "warm_resumed"
    shutil.copytree(res.run_dir, again_dir)
    shutil.rmtree(again_dir / "states" / "step_00000003")
    shutil.rmtree(again_dir / "last")
    again = train_in_process(overrides(tmp_path, "warm_resumed"), resume=True)
    assert again.metrics["resumed_from"].endswith("step_00000002")
    recs = [json.loads(l) for l in (again.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["warmup"] for r in recs if r["type"] == "train" and r["step"] == 3] == [0.0]
    resumed = load_file(str(again.run_dir / "last" / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_schedule_options_are_checked():
    from sam_l1dfl.errors import ConfigError
    from sam_l1dfl.training import load_config

    with pytest.raises(ConfigError, match="loss.warmup_steps"):
        load_config(None, ["loss.warmup_steps=-1"])
    with pytest.raises(ConfigError, match="loss.warmup_name"):
        load_config(None, ["loss.warmup_name=tversky"])
    with pytest.raises(ConfigError, match="log_weight_shares"):
        load_config(None, ["loss.name=dicece", "train.log_weight_shares=true"])
    cfg = load_config(None, ["loss.warmup_steps=3", "train.compile=true"])
    assert cfg.loss.warmup_steps == 3 and cfg.loss.warmup_name == "dicefocal" and cfg.train.compile
