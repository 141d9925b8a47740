"""Every example command line that ``--help`` shows works.

The examples (each command's ``EXAMPLES``, shown as the help epilog, and the ``e.g.`` override
words of argument help) run verbatim in a folder laid out like the paths they name: the cheap
ones run to the end through :func:`sam_l1dfl.cli.main`; the ones that need a real checkpoint are
parsed by the command's parser, their input paths must exist in that folder, and config override
keys are checked against the config (``load_config``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _data_helpers import make_image, write
from sam_l1dfl import cli
from sam_l1dfl.commands import NAMES, parse_args_with_overrides
from sam_l1dfl.prompts import PromptConfig, generate_prompts, prompts_to_markups, save_prompts

REPO = Path(__file__).resolve().parents[1]
#: Examples cheap enough to run to the end on a tiny case.
RUN = {"data", "prompts", "mip", "evaluate"}


def _examples() -> list[tuple[str, str]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name in NAMES:
        epilog = sub.choices[name].epilog or ""
        out += [(name, line.strip()) for line in epilog.splitlines() if line.strip().startswith("sam-l1dfl ")]
    return out


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """The paths the examples name: a tiny autoPET case, a PET and mask, predictions, prompts."""
    a = np.zeros((16, 20, 24), np.uint8)
    a[6:10, 8:12, 8:13] = 1
    pet = (np.random.default_rng(0).gamma(2.0, 0.5, a.shape) + 8.0 * a).astype(np.float32)
    case = tmp_path / "data" / "psma" / "c1"
    case.mkdir(parents=True)
    for d in (case, tmp_path):
        write(make_image(pet, (3.0, 3.0, 4.0)), d / "SUV.nii.gz")
        write(make_image(a, (3.0, 3.0, 4.0)), d / "SEG.nii.gz")
    (tmp_path / "pred").mkdir()
    shutil.copy(case / "SEG.nii.gz", tmp_path / "pred" / "c1.nii.gz")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    cp = generate_prompts(sitk.ReadImage(str(case / "SEG.nii.gz")), sitk.ReadImage(str(case / "SUV.nii.gz")),
                          PromptConfig(n_neg=1, boxes=True), case_id="c1")
    save_prompts(cp, tmp_path / "case.json")
    (tmp_path / "slicer_saved").mkdir()  # as 3D Slicer saves: a file per node, no sam_l1dfl block
    doc = prompts_to_markups(cp)
    for mk in doc["markups"]:
        (tmp_path / "slicer_saved" / f"{mk['name']}.mrk.json").write_text(
            json.dumps({"@schema": doc["@schema"], "markups": [mk]}))
    (tmp_path / "prompts" / "psma").mkdir(parents=True)
    save_prompts(cp, tmp_path / "prompts" / "psma" / "c1.json")
    for d in ("runs/psma_l1dfl", "runs/cnn/unet/best", "checkpoints"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "checkpoints" / "sam_med3d_turbo.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_command_shows_examples():
    shown = {name for name, _ in _examples()}
    missing = [n for n in NAMES if n not in shown]
    assert not missing, f"commands without examples in --help: {missing}"


@pytest.mark.parametrize("name,line", _examples(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_examples())])
def test_example_runs_or_parses(workdir, name, line, capsys):
    argv = shlex.split(line)[1:]
    assert argv[0] == name
    args = parse_args_with_overrides(cli.build_parser(), argv)  # the parser takes it as written
    if name in RUN or "--method threshold" in line:  # the threshold baseline needs no model
        assert cli.main(argv) == 0, capsys.readouterr().err
        return
    # inputs it names exist in the laid-out folder (outputs are the options named --out*)
    for action in ("config", "pet", "ct", "data", "checkpoint", "prompts_dir", "pred_dir", "gt_dir"):
        for v in np.atleast_1d(getattr(args, action, None) or []):
            assert Path(v).exists(), f"{line}: {v} does not exist"
    for v in getattr(args, "prompts", None) or []:
        assert Path(v).exists()
    if name == "finetune":
        from sam_l1dfl.commands.finetune import collect_overrides
        from sam_l1dfl.training import load_config

        cfg = load_config(args.config, collect_overrides(args))  # unknown keys are an error
        assert cfg.optim.lr == pytest.approx(3e-4) or not args.overrides


def test_override_words_in_argument_help_are_real_keys():
    from sam_l1dfl.training import load_config

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = []
    for a in sub.choices["finetune"]._actions:
        for example in re.findall(r"e\.g\. (.*)", a.help or ""):
            words += [w for w in example.split() if "=" in w]
    assert "optim.lr=3e-4" in words and len(words) >= 2
    cfg = load_config(REPO / "configs" / "demo.yaml", words)
    assert cfg.optim.lr == pytest.approx(3e-4)


def test_override_keys_anywhere_among_the_flags():
    parser = cli.build_parser()
    args = parse_args_with_overrides(parser, ["finetune", "--config", "x.yaml", "A=1", "--max-steps", "3", "B=2"])
    assert args.overrides == ["A=1", "B=2"] and args.max_steps == 3
    with pytest.raises(SystemExit):
        parse_args_with_overrides(parser, ["infer", "--checkpoint", "x", "A=1"])  # infer takes no overrides
    assert json.dumps(vars(args), default=str)  # plain values only
