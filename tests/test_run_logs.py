"""Run logs that tell the truth (issue 14, section 4): a resumed run's ``train_log.jsonl`` and
TensorBoard hold every step once, the logged learning rate is the one the step used, and a run
whose ``best/`` is still the starting model says so (at the end of training, in ``best/config.json``,
``metrics.json`` and ``sam-l1dfl export``).

Tiny model, 3 steps, in-process (like tests/test_training_run.py).  A kill after step 3 was logged
but before its state was saved is reproduced exactly by deleting the states after step 1: the
resumed run starts from step 1 and logs steps 2 and 3 again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sam_l1dfl.training.loop import lr_lambda

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # three tiny training runs (~30 s on 2 cores)
LR, WARMUP = 3e-3, 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from sam_l1dfl.data.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("runlogs")
    generate_dataset(d / "synth", 3, seed=0, progress=False)
    return d


def overrides(d: Path, name: str, lr: float = LR) -> list[str]:
    return [f"data.root={d / 'synth'}", "data.val_cases=[synth_002]", "data.max_train_crops=4",
            "data.max_val_crops=1", f"data.cache_dir={d / 'cache'}", f"output_dir={d / 'runs'}", f"name={name}",
            "prompts.clicks_per_sample=2", "train.batch_size=2", "train.max_steps=3", "train.save_every=1",
            "train.keep_last=3", "train.log_every=1", "train.val_every=0", f"optim.lr={lr}",
            f"optim.warmup_steps={WARMUP}"]


def train_in_process(ov, resume: bool = False):
    from accelerate.state import AcceleratorState

    from sam_l1dfl.training import load_config
    from sam_l1dfl.training.loop import train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ov)
    try:
        return train(cfg, resume=resume, progress=False)
    finally:
        AcceleratorState._reset_state(True)


def log_steps(run: Path, kind: str = "train") -> list[int]:
    recs = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["type"] == kind]


def tb_steps(run: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    return [e.step for e in ea.Scalars(tag)]


def test_resumed_run_logs_every_step_once_with_the_rate_it_used(synth):
    res = train_in_process(overrides(synth, "resumed"))
    run = res.run_dir
    assert log_steps(run) == [1, 2, 3] and tb_steps(run) == [1, 2, 3]
    recs = {r["step"]: r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
            if r["type"] == "train"}
    f = lr_lambda(WARMUP, 3, 0.01)  # the schedule of optim.warmup_steps=2 over 3 steps
    # step s runs with the rate of schedule index s - 1 (warmup: 1/2, then 2/2 of the peak)
    assert recs[1]["lr"] == pytest.approx(LR * f(0)) and recs[1]["lr"] == pytest.approx(LR / 2)
    assert recs[2]["lr"] == pytest.approx(LR * f(1)) and recs[2]["lr"] == pytest.approx(LR)
    # killed after step 3 was logged, before its state (and step 2's) was saved; a cut last line too
    for s in ("step_00000002", "step_00000003"):
        shutil.rmtree(run / "states" / s)
    shutil.rmtree(run / "last")
    with open(run / "train_log.jsonl", "a") as fh:
        fh.write('{"type": "train", "step": 4, "lo')
    res2 = train_in_process(overrides(synth, "resumed"), resume=True)
    assert res2.steps == 3 and res2.metrics["resumed_from"].endswith("step_00000001")
    assert log_steps(run) == [1, 2, 3]  # not [1, 2, 3, 2, 3]
    assert log_steps(run, "val")[0] == 0  # the validation before training is kept
    assert tb_steps(run) == [1, 2, 3]  # not [2, 3]: step 1 stays, 2 and 3 are the resumed run's
    assert tb_steps(run, "train/lr") == [1, 2, 3]
    recs2 = {r["step"]: r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
             if r["type"] == "train"}
    assert recs2[2]["lr"] == pytest.approx(LR) and recs2[2]["loss"] == pytest.approx(recs[2]["loss"], abs=1e-4)
    m = json.loads((run / "metrics.json").read_text())
    assert m["best_is_initial"] == (m["best"]["step"] == 0)


def test_best_that_is_the_starting_model_is_flagged(synth, tmp_path, capsys):
    """lr 1e-20: the weights do not move, so no validation beats the one before training."""
    from sam_l1dfl.cli import main

    res = train_in_process(overrides(synth, "frozen", lr=1e-20))
    out = capsys.readouterr().out
    assert "WARNING: validation dice@1 never beat the starting weights" in out
    assert out.count("WARNING: validation") == 1
    assert res.best_step == 0 and res.metrics["best_is_initial"] is True and res.main_process
    best = json.loads((res.run_dir / "best" / "config.json").read_text())
    assert best["training"]["best_is_initial"] is True and best["training"]["step"] == 0
    last = json.loads((res.run_dir / "last" / "config.json").read_text())
    assert last["training"]["best_is_initial"] is False
    # export of the run (-> best/) warns in one line; of last/ it does not
    assert main(["export", "--checkpoint", str(res.run_dir), "--format", "safetensors",
                 "--out", str(tmp_path / "exported")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "WARNING" in l]
    assert len(lines) == 1 and "STARTING weights" in lines[0] and "best" in lines[0]
    assert main(["export", "--checkpoint", str(res.run_dir / "last"), "--format", "safetensors",
                 "--out", str(tmp_path / "exported_last")]) == 0
    assert "WARNING" not in capsys.readouterr().out
