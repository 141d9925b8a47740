"""The word ``standin`` always names the packaged stand-in (issue 22): a ``standin`` folder in the
current directory does not shadow it, and is used only when named as a path (``./standin``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir
from sam_l1dfl.model.standin import STANDIN_DIR, standin_available
from sam_l1dfl.model.weights import resolve_model_path
from sam_l1dfl.training import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not standin_available(), reason="the packaged stand-in is not installed")


@pytest.fixture
def cwd_with_standin_folder(tmp_path, monkeypatch):
    """The current directory holds ``standin/``, another (random, tiny) model directory."""
    torch.manual_seed(1)
    model = build_sam_med3d(SamMed3DConfig.preset("tiny"))
    save_model_dir(model, tmp_path / "standin", {"note": "a user's own folder"})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def inspect(checkpoint: str, capsys) -> dict:
    from sam_l1dfl.cli import main

    capsys.readouterr()
    assert main(["inspect", checkpoint, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_word_names_the_packaged_model_and_a_path_names_the_folder(cwd_with_standin_folder, capsys):
    here = cwd_with_standin_folder
    assert resolve_model_path("standin") == STANDIN_DIR
    assert resolve_model_path("./standin").resolve() == here / "standin"
    assert resolve_model_path(Path("standin")).resolve() == here / "standin"  # a Path is always a path
    packaged, folder = inspect("standin", capsys), inspect("./standin", capsys)
    assert packaged["sha256"] != folder["sha256"]
    assert packaged["sha256"] == inspect(str(STANDIN_DIR), capsys)["sha256"]
    assert folder["sha256"] == inspect(str(here / "standin"), capsys)["sha256"]


def test_an_empty_standin_folder_does_not_break_the_word(tmp_path, monkeypatch):
    (tmp_path / "standin").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("standin") == STANDIN_DIR
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["model.checkpoint=standin"])
    assert cfg.model.checkpoint == "standin"


def test_the_config_checks_the_word_as_the_stand_in(cwd_with_standin_folder):
    """``model.checkpoint: standin`` gets the stand-in's checks (tiny preset) beside a ./standin folder."""
    from sam_l1dfl.errors import ConfigError

    with pytest.raises(ConfigError, match="model.preset"):
        load_config(ROOT / "configs" / "psma.yaml", ["model.checkpoint=standin"])
    cfg = load_config(ROOT / "configs" / "psma.yaml", ["model.checkpoint=./standin"])  # the folder: a path
    assert cfg.model.checkpoint == "./standin"
