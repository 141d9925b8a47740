"""Fine-tuning config, click sampling and launch guards (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.training.config import load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["psma.yaml", "demo.yaml", "tiny.yaml"])
def test_shipped_configs_parse(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # psma's checkpoint does not exist here: drop it
    cfg = load_config(ROOT / "configs" / name, ["model.checkpoint=null"])
    assert cfg.prompts.clicks_per_sample >= 1
    assert cfg.loss.name == "l1dfl"
    assert cfg.use_embedding_cache()


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      ["optim.lr=3e-4", "prompts.boxes=true", "loss.params.eps=0.1", "train.batch_size=3"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.prompts.boxes is True
    assert cfg.loss.params == {"eps": 0.1} and cfg.train.batch_size == 3
    assert parse_overrides(["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize("override, needle", [
    (["train.lr=1e-3"], "train.lr"),  # lr lives in optim
    (["optim.lr=-1"], "optim.lr"),
    (["train.batch_size=two"], "train.batch_size"),
    (["prompts.click_mode=sometimes"], "prompts.click_mode"),
    (["train.mixed_precision=fp8"], "train.mixed_precision"),
    (["loss.name=nope"], "loss.name"),
    (["preprocess.input_mode=mri"], "preprocess"),
    (["cache.embeddings=on", "augment.jitter_mm=3"], "augment.jitter_mm"),
    (["cache.embeddings=on", "trainable.full=true"], "cache.embeddings"),
    (["trainable.patch_embed=true"], "trainable.patch_embed"),
    (["model.checkpoint=/does/not/exist.pth"], "model.checkpoint"),
    (["bogus"], "key=value"),
])
def test_bad_config_one_line_error(override, needle):
    path = ROOT / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(path, override)
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["dice-focal", "Dice_Focal", "dicefocal", "L1DFL"])
def test_loss_names_are_normalised_like_the_cnn_config(name):
    from sam_l1dfl.cnn.config import load_cnn_config
    from sam_l1dfl.losses import make_training_loss, normalize_loss_name

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"loss.name={name}"])
    assert cfg.loss.name == name and load_cnn_config(None, [f"loss.name={name}"]).loss.name == name
    key = normalize_loss_name(name)
    assert key in ("dicefocal", "l1dfl") and type(make_training_loss(name)) is type(make_training_loss(key))


def test_preprocess_is_the_intensity_config_of_inference(tmp_path):
    from sam_l1dfl.data.preprocess import IntensityConfig

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["preprocess.ct_clip=[-500, 500]", "preprocess.spacing=2"])
    assert isinstance(cfg.preprocess, IntensityConfig)
    assert cfg.preprocess.ct_clip == (-500.0, 500.0) and cfg.preprocess.spacing == 2.0
    assert cfg.to_dict()["preprocess"]["ct_clip"] == [-500.0, 500.0]
    y = tmp_path / "round.yaml"
    y.write_text(cfg.to_yaml())
    assert load_config(y).to_dict() == cfg.to_dict()  # config.yaml reads back the same
    assert IntensityConfig.from_dict(cfg.preprocess.to_dict()) == cfg.preprocess


def test_jitter_turns_the_cache_off_in_auto_mode():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["augment.jitter_mm=3"])
    assert not cfg.use_embedding_cache()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["trainable.patch_embed=true", "preprocess.input_mode=pet+ct"])
    assert not cfg.use_embedding_cache() and cfg.model_config().in_chans == 2


def test_bad_yaml_names_the_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="x.yaml: invalid YAML"):
        load_config(p)
    p.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown key\(s\) 'trian'; known: augment, cache, data, "):
        load_config(p)


def test_cli_reports_config_errors(tmp_path, capsys):
    from sam_l1dfl.cli import main

    rc = main(["finetune", "--config", str(ROOT / "configs" / "tiny.yaml"), "optim.lr=0"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "optim.lr" in err and "\n" not in err


# ---------------------------------------------------------------------- click loop pieces
def test_sample_clicks_land_in_the_error_region():
    from sam_l1dfl.prompts.clicks import sample_clicks

    gt = torch.zeros(3, 1, 16, 16, 16, dtype=torch.bool)
    gt[:, :, 4:8, 4:8, 4:8] = True
    pred = torch.zeros_like(gt)
    pred[1, :, 4:8, 4:8, 4:8] = True
    pred[1, :, 10:14, 10:14, 10:14] = True  # only false positives -> negative click
    pred[2] = gt[2]  # perfect -> positive click in the ground truth
    torch.manual_seed(0)
    for _ in range(20):
        u = torch.rand(3, dtype=torch.float64)
        pts, labels = sample_clicks(pred, gt, u)
        assert pts.shape == (3, 1, 3) and labels.tolist() == [[1], [0], [1]]
        i, j, k = pts[0, 0].long().tolist()
        assert gt[0, 0, i, j, k]
        i, j, k = pts[1, 0].long().tolist()
        assert pred[1, 0, i, j, k] and not gt[1, 0, i, j, k]
        i, j, k = pts[2, 0].long().tolist()
        assert gt[2, 0, i, j, k]
    # u spans the region in raster order: u=0 -> first voxel, u->1 -> last voxel
    pts, _ = sample_clicks(pred[:1], gt[:1], torch.tensor([0.0], dtype=torch.float64))
    assert pts[0, 0].tolist() == [4, 4, 4]
    pts, _ = sample_clicks(pred[:1], gt[:1], torch.tensor([0.999999], dtype=torch.float64))
    assert pts[0, 0].tolist() == [7, 7, 7]


def test_click_randomness_is_per_sample():
    from sam_l1dfl.prompts.clicks import click_uniforms, mask_only_iterations

    a = click_uniforms(0, 1, [5, 9, 2, 7], 4)
    b = torch.cat([click_uniforms(0, 1, [5, 9], 4), click_uniforms(0, 1, [2, 7], 4)])
    assert torch.equal(a, b)
    assert not torch.equal(click_uniforms(0, 2, [5], 4), click_uniforms(0, 1, [5], 4))
    mo = mask_only_iterations("official", 11, 0, 0, 3)
    assert 10 in mo and len(mo) in (1, 2) and all(2 <= i <= 10 for i in mo)
    assert mask_only_iterations("official", 11, 0, 0, 3) == mo
    assert mask_only_iterations("none", 11, 0, 0, 3) == ()
    assert mask_only_iterations("last", 4, 0, 0, 3) == (3,)


def test_label_boxes():
    from sam_l1dfl.prompts.clicks import label_boxes

    gt = torch.zeros(2, 1, 10, 12, 14, dtype=torch.bool)
    gt[0, 0, 2:5, 3:9, 1:2] = True
    b = label_boxes(gt)
    assert b[0].tolist() == [[2, 3, 1], [4, 8, 1]]
    assert b[1].tolist() == [[0, 0, 0], [9, 11, 13]]  # empty: the whole crop


# ---------------------------------------------------------------------- launch guards
class _FakeAcc:
    def __init__(self, n):
        self.num_processes = n


def test_several_processes_without_distributed_is_refused(monkeypatch):
    from sam_l1dfl.training.distributed import check_distributed, launched_world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    check_distributed(_FakeAcc(1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="started as 2 processes"):
        check_distributed(_FakeAcc(1))


def test_bare_no_in_yaml_means_no_mixed_precision(tmp_path):
    from sam_l1dfl.training.config import load_config

    y = tmp_path / "c.yaml"
    y.write_text("name: x\ndata:\n  root: d\ntrain:\n  mixed_precision: no\n")
    assert load_config(y).train.mixed_precision == "no"
