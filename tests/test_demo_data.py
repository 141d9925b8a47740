"""`make demo`'s data stage (issue 22): ``--cases 4`` reaches fine-tuning (validation is its own set
of cases, not a split of the training cases that may hold no lesion), and a set with fewer than 2
lesions stops with one line that says which option to raise.

Fine-tuning itself is replaced by a sentinel: the whole demo is `make demo`'s job, not the suite's.
"""

from __future__ import annotations

import json
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
    # what fine-tuning would read: its 4 training cases, and validation cases of their own that hold
    # lesions (the old split of 4 training cases left a lesion-free validation case)
    assert Path(cfg.data.root) == tmp_path / "out" / "synth" and Path(cfg.data.val_root) == tmp_path / "out" / "val"
    sets = {k: json.loads((Path(v) / "dataset.json").read_text())["cases"] for k, v in
            (("train", cfg.data.root), ("val", cfg.data.val_root))}
    assert len(sets["train"]) == 4 and len(sets["val"]) == 2
    assert sum(len(c["lesions"]) for c in sets["val"]) >= 2 and all(c["lesions"] for c in sets["val"])
    out = capsys.readouterr().out
    assert "training: 4 cases" in out and "validation: 2 cases" in out
    assert (tmp_path / "out" / "prompts").is_dir()


def test_too_few_lesions_is_one_line(tmp_path):
    from sam_l1dfl.compare.learning import TRAIN_SEED_BASE
    from sam_l1dfl.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "one", 1, seed=TRAIN_SEED_BASE, n_oblique=1, progress=False)
    assert json.loads((tmp_path / "one" / "dataset.json").read_text())["cases"][0]["lesions"] == []  # the premise
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path / "out"),
                        "--cases", "1", "--val-cases", "2", "--test-cases", "1", "--init", "standin"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert lines[0].endswith("only 0 lesion(s) in the training cases: use more cases (--cases)")
    assert "Traceback" not in r.stderr


def test_the_l1dfl_row_must_be_l1dfl(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path / "out"),
                        "--l1dfl-row", "dicece"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip() == ("error: --l1dfl-row 'dicece': not an L1DFL variant "
                                                      "(l1dfl[key=value,...])")
    assert not (tmp_path / "out").exists()  # checked before anything was written
