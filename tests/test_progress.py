"""Progress display: bars on a terminal, whole lines (no ``\\r``) in a log, nothing with ``--quiet``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from tqdm import tqdm

from _data_helpers import make_image, write
from sam_l1dfl.progress import PlainProgress, progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_and_a_terminal_gets_a_bar():
    log = io.StringIO()
    bar = progress(total=4, desc="stage", unit="case", file=log, interval=3600)
    assert isinstance(bar, PlainProgress)
    for _ in range(4):
        bar.update(1)
        tqdm.write("a message", file=log)  # what commands print between steps
    bar.set_postfix(loss="0.5")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # a line when the stage starts and one when it ends (none in between: the interval is an hour)
    assert lines[0] == "stage: 0/4 case [00:00<?]"
    assert lines[-1].startswith("stage: 4/4 case") and lines[-1].endswith("loss=0.5]")
    assert lines.count("a message") == 4 and len(lines) == 6
    tty = _Tty()
    bar = progress(range(3), desc="stage", file=tty)
    assert not isinstance(bar, PlainProgress)
    list(bar)
    assert "\r" in tty.getvalue()  # a redrawn bar


def test_plain_lines_come_at_most_once_per_interval(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("sam_l1dfl.progress.time.monotonic", lambda: now[0])
    log = io.StringIO()
    bar = progress(total=100, desc="steps", file=log, interval=30, mininterval=0, miniters=1)
    for _ in range(100):
        now[0] += 1.0  # a step a second: a line every 30 of them
        bar.update(1)
    bar.close()
    n = [int(ln.split()[1].split("/")[0]) for ln in log.getvalue().splitlines()]
    assert n == [0, 30, 60, 90, 100]


def test_quiet_writes_nothing():
    log = io.StringIO()
    bar = progress(range(5), desc="x", file=log, enabled=False)
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.update(1)
    bar.close()
    assert log.getvalue() == ""


@pytest.fixture()
def cases(tmp_path):
    a = np.zeros((20, 20, 20), np.uint8)
    a[8:12, 8:12, 8:12] = 1
    for i in range(2):
        d = tmp_path / "data" / f"c{i}"
        d.mkdir(parents=True)
        pet = (np.random.default_rng(i).gamma(2.0, 0.5, a.shape) + 8.0 * a).astype(np.float32)
        write(make_image(pet, (4.0, 4.0, 4.0)), d / "SUV.nii.gz")
        write(make_image(a, (4.0, 4.0, 4.0)), d / "SEG.nii.gz")
    return tmp_path


def _finetune(cases, name, *flags):
    from accelerate.state import AcceleratorState

    from sam_l1dfl.cli import main

    try:
        return main(["finetune", "--config", "configs/tiny.yaml", f"data.root={cases / 'data'}", *flags,
                     "data.val_cases=[c1]", f"data.cache_dir={cases / name}", f"output_dir={cases / 'runs'}",
                     f"name={name}", "prompts.clicks_per_sample=1", "train.max_steps=1", "train.batch_size=1", "--device", "cpu"])
    finally:
        AcceleratorState._reset_state(True)


def test_finetune_in_a_log_writes_lines_and_quiet_writes_no_bars(cases, capfd):
    assert _finetune(cases, "loud") == 0
    out, err = capfd.readouterr()
    assert "\r" not in err
    assert any(ln.startswith("embeddings (train): 0/1 crop") for ln in err.splitlines())
    # plain words, no Python dict or list
    cache = next(ln for ln in out.splitlines() if ln.startswith("embedding cache ("))
    assert cache.endswith("train 1 crops (1 encoded, 0 from the cache); val 1 crops (1 encoded, 0 from the cache)")
    assert not any(c in out for c in "{}[]"), out
    assert _finetune(cases, "quiet", "--quiet") == 0
    err = capfd.readouterr().err
    assert "embeddings (" not in err and "caching crops" not in err and "step" not in err, err
