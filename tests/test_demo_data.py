"""`make demo`'s data stage (issue 22): ``--cases 4`` reaches fine-tuning (validation is its own set
of cases, not a split of the training cases that may hold no lesion), and a set with fewer than 2
lesions stops with one line that says which option to raise.

Fine-tuning itself is replaced by a sentinel: the whole demo is `make demo`'s job, not the suite's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _script_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


class ReachedFineTuning(Exception):
    pass


def test_four_training_cases_reach_fine_tuning(tmp_path, monkeypatch, capsys):
    import sam_l1dfl.training as training

    def stop(cfg, *a, **k):
        raise ReachedFineTuning(cfg)

    monkeypatch.setattr(training, "train", stop)
    demo = load_script("demo")
    with pytest.raises(ReachedFineTuning) as got:
        demo.main(["--out", str(tmp_path / "out"), "--cases", "4", "--val-cases", "2", "--test-cases", "2",
                   "--init", "standin"])
    cfg = got.value.args[0]
    assert cfg.loss.name == "dicefocal"  # the benchmark's pick at this budget
    assert Path(cfg.data.val_root) == tmp_path / "out" / "val"
    out = capsys.readouterr().out
    assert "training: 4 cases" in out and "validation: 2 cases" in out
    assert (tmp_path / "out" / "prompts").is_dir()


def test_too_few_lesions_is_one_line(tmp_path):
    # training case 0 of seed 0 (phantom seed 100) is lesion-free
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path / "out"),
                        "--cases", "1", "--val-cases", "2", "--test-cases", "1", "--init", "standin"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert lines[0].endswith("only 0 lesion(s) in the training cases: use more cases (--cases/--val-cases)")
    assert "Traceback" not in r.stderr
