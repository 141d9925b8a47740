"""Trust comes only from the command line (issue 22): a config cannot allow unpickling.

``model.trust_checkpoint: true`` in a ``config.yaml`` (or any ``*trust*`` key, in a file, a saved
run directory's ``config.yaml`` or a ``key=value`` override) gets one ``warning:`` line naming the
key and the file; the run goes on untrusted, so a ``.pth`` whose ``__reduce__`` payload creates a
marker is refused and the marker never appears.  ``--trust`` on the command line still lets it load
(which shows the payload would run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from _payload import Payload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from sam_l1dfl.data.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("cfgtrust")
    generate_dataset(d / "synth", 3, seed=0, progress=False)
    return d


def write_config(d: Path, name: str, path: Path, **model) -> tuple[Path, Path]:
    """A tiny run's config whose starting checkpoint carries a payload; returns (config, marker)."""
    marker = d / f"MARKER_{name}"
    evil = d / f"{name}.pth"
    torch.save({"model": Payload(marker)}, evil)
    cfg = {"name": name, "output_dir": str(d / "runs"),
           "data": {"root": str(d / "synth"), "val_cases": ["synth_002"], "max_train_crops": 2, "max_val_crops": 1,
                    "cache_dir": str(d / "cache")},
           "model": {"preset": "tiny", "checkpoint": str(evil), **model},
           "prompts": {"clicks_per_sample": 1}, "train": {"batch_size": 2, "max_steps": 1, "val_every": 0}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path, marker


def finetune(argv, capsys) -> tuple[int, list[str]]:
    """``sam-l1dfl finetune --quiet ARGV`` in this process: exit status and the stderr lines
    (warnings as the command prints them)."""
    from accelerate.state import AcceleratorState

    from sam_l1dfl.cli import main

    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(["finetune", "--quiet", *argv])
        finally:
            AcceleratorState._reset_state(True)
    lines = [f"warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    return rc, lines + [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_the_issue_attack_in_a_real_process(work):
    """As the issue tried it: ``sam-l1dfl finetune --config config.yaml`` with the key and a payload."""
    path, marker = write_config(work, "attack", work / "attack" / "config.yaml", trust_checkpoint=True)
    evil = work / "attack.pth"
    before = {p: p.read_bytes() for p in (path, evil)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl", "finetune", "--config", str(path), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert not marker.exists(), "the payload ran"
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0] == (f"warning: {path}: model.trust_checkpoint ignored: trust is never read from a config; the "
                        "run goes on untrusted (pass --trust on the command line for files you trust)")
    assert lines[1].startswith(f"error: {evil}: refusing to unpickle") and "--trust" in lines[1]
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("where", ["config", "run-dir-config-resume", "override", "top-level-key"])
def test_a_config_cannot_grant_trust(work, capsys, where):
    name = where.replace("-", "_")
    if where == "run-dir-config-resume":  # a run directory's saved config.yaml, used to resume
        path, marker = write_config(work, name, work / "runs" / name / "config.yaml", trust_checkpoint=True)
        argv, key = ["--config", str(path), "--resume"], "model.trust_checkpoint"
    elif where == "override":
        path, marker = write_config(work, name, work / f"{name}.yaml")
        argv, key = ["--config", str(path), "model.trust_checkpoint=true"], "model.trust_checkpoint"
    elif where == "top-level-key":
        path, marker = write_config(work, name, work / f"{name}.yaml")
        path.write_text(path.read_text() + "trust: true\n")
        argv, key = ["--config", str(path)], "trust"
    else:
        path, marker = write_config(work, name, work / f"{name}.yaml", trust_checkpoint=True)
        argv, key = ["--config", str(path)], "model.trust_checkpoint"
    evil = work / f"{name}.pth"
    before = {p: p.read_bytes() for p in (path, evil)}
    rc, err = finetune(argv, capsys)
    assert not marker.exists(), "the payload ran"
    assert rc == 2
    warn = [ln for ln in err if ln.startswith("warning:")]
    source = "command line" if where == "override" else str(path)
    assert len(warn) == 1 and warn[0].startswith(f"warning: {source}: {key} ignored"), err
    assert "--trust" in warn[0]
    assert err[-1].startswith("error: ") and len(err) == 2, err
    assert {p: p.read_bytes() for p in before} == before


def test_trust_on_the_command_line_still_loads(work, capsys):
    """The same file with ``--trust``: it is unpickled (the payload runs), so the test above means something."""
    path, marker = write_config(work, "trusted", work / "trusted.yaml")
    rc, err = finetune(["--config", str(path), "--trust"], capsys)
    assert marker.is_dir()
    assert rc == 2 and not any(ln.startswith("warning:") for ln in err), err  # not a state dict: refused after


def test_mappings_drop_trust_keys_with_one_warning():
    """The Python mapping loaders (compare runs, model directories, the CNN config) drop them too."""
    from sam_l1dfl.cnn.config import cnn_config_from_dict
    from sam_l1dfl.training.config import config_from_dict

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cfg = config_from_dict({"model": {"preset": "tiny", "trust_checkpoint": True}}, source="cfg.json")
        cnn = cnn_config_from_dict({"trust_states": "yes"}, source="cnn.yaml")
        quiet = config_from_dict({"model": {"preset": "tiny", "trust_checkpoint": False}}, source="old.json")
    lines = [str(x.message) for x in w]
    assert lines == [lines[0], lines[1]] and len(lines) == 2, lines
    assert lines[0].startswith("cfg.json: model.trust_checkpoint ignored")
    assert lines[1].startswith("cnn.yaml: trust_states ignored")
    assert not hasattr(cfg.model, "trust_checkpoint") and "trust" not in cfg.to_yaml()
    assert cnn.name and quiet.model.preset == "tiny"
