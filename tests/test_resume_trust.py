"""``--resume`` runs no code from a run directory (issue 13, section 1).

A one-step tiny fine-tuning run gives a real ``states/step_00000001``; a ``__reduce__`` payload
(one that would create a marker file) is planted in each kind of file there, and in the files
Accelerate reads when it finds them (scheduler, sampler, scaler, registered objects).  Resuming
without ``--trust`` must refuse with one ``error:`` line naming the file, before any work, and
the marker must never appear.  Clean states resume, in the current layout (``run_state.json``)
and in the one before it (scheduler and progress as ``custom_checkpoint_{0,1}.pkl``), to the
same weights.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _payload import Payload

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
STEP = "states/step_00000001"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from accelerate.state import AcceleratorState

    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.training import load_config
    from sam_l1dfl.training.loop import train

    d = tmp_path_factory.mktemp("trust")
    generate_dataset(d / "synth", 3, seed=0, progress=False)
    try:
        res = train(load_config(TINY, overrides(d, "clean")), progress=False)
    finally:
        AcceleratorState._reset_state(True)
    assert sorted(p.name for p in (res.run_dir / STEP).iterdir()) == [
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "run_state.json"]
    return d


def overrides(d: Path, name: str, steps: int = 1) -> list[str]:
    return [f"data.root={d / 'synth'}", "data.val_cases=[synth_002]", "data.max_train_crops=2",
            "data.max_val_crops=1", f"data.cache_dir={d / 'cache'}", f"output_dir={d / 'runs'}", f"name={name}",
            "prompts.clicks_per_sample=1", "train.batch_size=2", f"train.max_steps={steps}", "train.save_every=1",
            "train.log_every=1", "train.val_every=0",
            # bit-identical resumes on a GPU too (cuDNN's fast backward kernels add in varying order)
            "train.deterministic=true"]


def copy_run(d: Path, name: str) -> Path:
    dst = d / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(d / "runs" / "clean", dst)
    shutil.rmtree(dst / "last")
    return dst


def finetune(argv, capsys) -> tuple[int, list[str]]:
    from accelerate.state import AcceleratorState

    from sam_l1dfl.cli import main

    capsys.readouterr()
    try:
        rc = main(["finetune", "--config", str(TINY), "--quiet", *argv])
    finally:
        AcceleratorState._reset_state(True)
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def plant(path: Path, marker: Path, kind: str) -> None:
    if kind == "torch.save":
        torch.save({"state": Payload(marker)}, path)
    else:  # a bare pickle, as torch.save's legacy format would start
        path.write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))


# every file of a state, plus the names Accelerate reads when it finds them
PLANTED = ["optimizer.bin", "random_states_0.pkl", "model.safetensors", "run_state.json", "scheduler.bin",
           "sampler.bin", "scaler.pt", "custom_checkpoint_0.pkl", "random_states_1.pkl"]


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
@pytest.mark.parametrize("name", PLANTED)
def test_resume_refuses_a_planted_payload(run, capsys, name, kind):
    rdir = copy_run(run, f"planted_{name.replace('.', '_')}_{kind.replace('.', '_')}")
    target = rdir / STEP / name
    marker = run / f"MARKER_{rdir.name}"
    plant(target, marker, kind)
    before = {p: p.read_bytes() for p in (rdir / STEP).iterdir()}
    rc, err = finetune([*overrides(run, rdir.name, 2), "--resume"], capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: {target}: "), err
    if name.endswith((".bin", ".pkl", ".pt")):
        assert "--trust" in err[0] and "arbitrary code" in err[0], err
    assert not marker.exists()
    assert {p: p.read_bytes() for p in (rdir / STEP).iterdir()} == before  # nothing touched
    assert not (rdir / "last").exists()


def test_train_cnn_refuses_a_planted_payload(run, capsys):
    """The CNN trainer shares the vetting (before any work); scripts/train_cnn.py has --trust too."""
    from accelerate.state import AcceleratorState

    from _script_helpers import load_script

    script = load_script("train_cnn")
    rdir = copy_run(run, "cnn_planted")
    marker = run / "MARKER_cnn"
    plant(rdir / STEP / "random_states_0.pkl", marker, "torch.save")
    capsys.readouterr()
    try:
        rc = script.main(["--config", str(ROOT / "configs" / "cnn_unet.yaml"), "--resume", "--quiet",
                          f"output_dir={run / 'runs'}", f"name={rdir.name}", f"data.root={run / 'synth'}"])
    finally:
        AcceleratorState._reset_state(True)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {rdir / STEP / 'random_states_0.pkl'}: "), err
    assert not marker.exists()


def test_not_a_state_file(run, capsys):
    """Text, truncated or empty state files: one line saying what they are, with or without --trust."""
    for i, (name, content) in enumerate([("optimizer.bin", b"not a state\n"), ("random_states_0.pkl", b""),
                                         ("optimizer.bin", None)]):
        rdir = copy_run(run, f"broken_{i}")
        target = rdir / STEP / name
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] if content is None else content)
        for trust in ([], ["--trust"]):
            rc, err = finetune([*overrides(run, rdir.name, 2), "--resume", *trust], capsys)
            assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {target}: not a training state file"), err


def test_a_sharded_state_folder_needs_trust(run, capsys):
    """A sub-folder (FSDP/DeepSpeed shards, read with plain pickle) is refused; --trust lets it pass."""
    rdir = copy_run(run, "sharded")
    shard = rdir / STEP / "pytorch_model_fsdp_0"
    shard.mkdir()
    (shard / ".metadata").write_bytes(b"")
    rc, err = finetune([*overrides(run, rdir.name, 2), "--resume"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {shard}: not a plain file"), err
    rc, err = finetune([*overrides(run, rdir.name, 2), "--resume", "--trust"], capsys)
    assert rc == 0, err  # the flag reaches train(): Accelerate ignores the stray folder
    assert json.loads((rdir / "metrics.json").read_text())["steps"] == 2


def test_clean_states_resume_in_both_layouts(run, capsys):
    """run_state.json and the layout before it (custom_checkpoint_{0,1}.pkl) give the same weights."""
    from safetensors.torch import load_file

    new = copy_run(run, "resume_new")
    old = copy_run(run, "resume_old")
    rs = json.loads((old / STEP / "run_state.json").read_text())
    (old / STEP / "run_state.json").unlink()
    torch.save(rs["scheduler"], old / STEP / "custom_checkpoint_0.pkl")
    torch.save(rs["progress"], old / STEP / "custom_checkpoint_1.pkl")
    for rdir in (new, old):
        rc, err = finetune([*overrides(run, rdir.name, 2), "--resume"], capsys)
        assert rc == 0, err
        m = json.loads((rdir / "metrics.json").read_text())
        assert m["steps"] == 2 and m["resumed_from"].endswith("step_00000001")
    a, b = (load_file(str(r / "last" / "model.safetensors")) for r in (new, old))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (new / "states" / "step_00000002" / "run_state.json").is_file()


def test_tampered_run_state_is_refused(run, capsys):
    rdir = copy_run(run, "tampered")
    f = rdir / STEP / "run_state.json"
    doc = json.loads(f.read_text())
    doc["scheduler"]["lr_lambdas"] = [{"__dict__": 1}] * len(doc["scheduler"]["lr_lambdas"])
    f.write_text(json.dumps(doc))
    rc, err = finetune([*overrides(run, rdir.name, 2), "--resume"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {f}: "), err


def test_state_and_model_files_get_the_usual_mode(run):
    """model.safetensors is written 0600 by safetensors; outputs get 0666 & ~umask like any file."""
    umask = os.umask(0)
    os.umask(umask)
    rdir = run / "runs" / "clean"
    for sub in (STEP, "best", "last"):
        for p in (rdir / sub).iterdir():
            assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_the_payload_is_live(tmp_path):
    """The planted pickles do run code when fully unpickled (so the tests above are not vacuous)."""
    marker = tmp_path / "MARKER"
    plant(tmp_path / "x.pkl", marker, "torch.save")
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert marker.is_dir()
