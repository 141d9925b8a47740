"""The light paths stay light (issue 22): the config layer, ``--help`` and config mistakes import
neither torch nor MONAI (about 4 s on 2 cores), checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "segment_anything", "accelerate")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh ``python -c CODE`` has imported when it ends."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["sam_l1dfl.training.config", "sam_l1dfl.training.runconfig",
                                    "sam_l1dfl.training", "sam_l1dfl.cnn.config", "sam_l1dfl.lossnames",
                                    "sam_l1dfl.model.config", "sam_l1dfl.cluster.jobs", "sam_l1dfl.devices"])
def test_the_config_layer_imports_without_torch(module):
    assert heavy_modules_after(f"import {module}") == []


def test_a_config_is_loaded_and_checked_without_torch():
    code = ("from sam_l1dfl.training.config import load_config\n"
            f"cfg = load_config({str(ROOT / 'configs' / 'tiny.yaml')!r}, ['loss.name=Dice-Focal'])\n"
            "assert cfg.loss.name == 'Dice-Focal'")
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["finetune", "--help"], ["evaluate", "--help"]])
def test_help_imports_no_torch(argv):
    code = f"from sam_l1dfl.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


def test_a_finetune_config_mistake_is_reported_before_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 0\n")
    code = (f"from sam_l1dfl.cli import main\nrc = main(['finetune', '--config', {str(bad)!r}])\n"
            "assert rc == 2, rc")
    assert heavy_modules_after(code) == []


def test_the_loss_names_are_one_object_re_exported_by_losses():
    from sam_l1dfl import lossnames, losses

    assert losses.normalize_loss_name is lossnames.normalize_loss_name
    assert losses.LOSS_NAMES is lossnames.LOSS_NAMES
