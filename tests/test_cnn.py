"""Automatic CNN segmentation: grid, presets, tiny-width training of every network, inference, CLI.

Tiny widths (0.125), an 8 mm grid and 32³ crops keep each training run to a couple of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sam_l1dfl.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from sam_l1dfl.data.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("cnn")
    generate_dataset(d / "synth", 3, seed=1, progress=False, n_oblique=1)  # 3, 6 and 5 lesions; case 0 oblique
    return d


def tiny_overrides(d: Path, name: str, net: str) -> list[str]:
    return [f"name={name}", f"output_dir={d / 'runs'}", f"data.root={d / 'synth'}", "data.val_cases=[synth_000]",
            f"data.cache_dir={d / 'cache'}", "preprocess.spacing=8.0", f"network.name={net}", "network.width=0.125",
            "augment.crop_size=32", "augment.num_samples=2", "train.epochs=1", "train.batch_size=1",
            "train.max_steps=2", "train.log_every=1", "train.save_every=1", "train.mixed_precision=no",
            "infer.sw_batch_size=4", "optim.lr=1e-2"]


# ---------------------------------------------------------------------- geometry and presets
@pytest.mark.parametrize("direction", ["lps", "flipped", "oblique"])
def test_whole_image_geometry_covers_the_scan(direction):
    from sam_l1dfl.cnn.volumes import whole_image_geometry
    from sam_l1dfl.data.geometry import CROP_DIRECTION, image_index_to_world

    dirs = {"lps": np.eye(3), "flipped": np.diag([-1.0, -1.0, 1.0]),
            "oblique": np.array([[0.94, -0.34, 0.0], [0.34, 0.94, 0.0], [0.0, 0.0, 1.0]])}
    d = dirs[direction]
    d = d / np.linalg.norm(d, axis=0, keepdims=True)
    img = sitk.Image([30, 20, 25], sitk.sitkFloat32)
    img.SetSpacing((3.0, 3.0, 4.0))
    img.SetOrigin((10.0, -50.0, 300.0))
    img.SetDirection(tuple(d.ravel()))
    g = whole_image_geometry(img, 2.0)
    assert g.spacing == (2.0, 2.0, 2.0) and np.array_equal(g.direction, CROP_DIRECTION)
    corners = np.array([[a, b, c] for a in (-0.5, 29.5) for b in (-0.5, 19.5) for c in (-0.5, 24.5)])
    idx = g.world_to_index(image_index_to_world(img, corners))
    assert np.all(idx >= -0.5 - 1e-6) and np.all(idx <= np.asarray(g.size) - 0.5 + 1e-6)
    # tight: no more than one voxel of slack per side
    assert np.all(np.asarray(g.size) <= (idx.max(0) - idx.min(0)) + 2)


def test_paper_presets():
    from sam_l1dfl.cnn.networks import network_kwargs

    cls, kw = network_kwargs("unet")
    assert cls == "UNet" and kw["channels"] == (16, 32, 64, 128, 256, 512) and kw["strides"] == (2,) * 5
    assert kw["num_res_units"] == 2 and kw["norm"] == "batch" and kw["in_channels"] == 2 and kw["out_channels"] == 2
    cls, kw = network_kwargs("segresnet")
    assert (kw["blocks_down"], kw["blocks_up"], kw["init_filters"]) == ((1, 2, 2, 4), (1, 1, 1), 16)
    cls, kw = network_kwargs("attentionunet")
    assert cls == "AttentionUnet" and kw["channels"] == (16, 32, 64, 128, 256, 512) and kw["strides"] == (2,) * 5
    cls, kw = network_kwargs("unetr", crop_size=128)
    assert (kw["img_size"], kw["feature_size"], kw["hidden_size"], kw["mlp_dim"], kw["num_heads"], kw["proj_type"]) \
        == ((128,) * 3, 8, 192, 768, 3, "conv")


def test_config_files_and_errors(tmp_path):
    from sam_l1dfl.cnn.config import load_cnn_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for net in ("unet", "segresnet", "attentionunet", "unetr"):
        cfg = load_cnn_config(root / f"cnn_{net}.yaml")
        assert cfg.network.name == net and cfg.preprocess.spacing == 2.0 and cfg.augment.crop_size == 128
        assert (cfg.augment.pos, cfg.augment.neg, cfg.optim.lr, cfg.optim.weight_decay) == (4, 1, 2e-4, 1e-5)
        assert cfg.infer.overlap == 0.25 and cfg.augment.rotate_range == pytest.approx(np.pi / 15)
    with pytest.raises(ConfigError, match="network.name"):
        load_cnn_config(None, ["network.name=vnet"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_cnn_config(None, ["augment.crop_size=48"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'network.widht'; known: network\."):
        load_cnn_config(None, ["network.widht=2"])
    with pytest.raises(ConfigError, match="UNet does not take"):
        load_cnn_config(None, ["network.overrides={foo: 1}"])


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("net", ["unet", "segresnet", "attentionunet", "unetr"])
def test_tiny_training_each_network(synth, net):
    from safetensors.torch import load_file

    from sam_l1dfl.cnn.config import load_cnn_config
    from sam_l1dfl.cnn.networks import build_network
    from sam_l1dfl.cnn.train import train_cnn

    cfg = load_cnn_config(None, tiny_overrides(synth, f"t_{net}", net))
    res = train_cnn(cfg, progress=False)
    run = res.run_dir
    assert res.steps == 2 and len(res.losses) == 2 and all(np.isfinite(res.losses))
    for p in ("config.yaml", "metrics.json", "train_log.jsonl", "best/model.safetensors", "best/config.json",
              "last/model.safetensors", "states/step_00000002"):
        assert (run / p).exists(), p
    m = json.loads((run / "metrics.json").read_text())
    assert m["train_cases"] == ["synth_001", "synth_002"] and m["val_cases"] == ["synth_000"]
    assert 0.0 <= m["best"]["val_dice"] <= 1.0 and m["best"]["epoch"] == 1
    torch.manual_seed(cfg.seed)
    init = build_network(net, 0.125, 32).state_dict()
    trained = load_file(str(run / "last" / "model.safetensors"))
    assert trained.keys() == init.keys()
    changed = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], trained[k])]
    assert len(changed) > len(init) // 3, "training did not update the weights"
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["format"] == "sam-l1dfl-cnn" and meta["network"]["name"] == net
    with pytest.raises(ConfigError, match="already holds a training run"):
        train_cnn(cfg, progress=False)


def test_resume_equals_uninterrupted(synth):
    """Train 2 epochs; then drop the final state (as if killed after epoch 1) and resume: same weights.

    ``train.deterministic``: on a GPU, cuDNN's fastest convolution backward kernels add in a varying
    order, and Adam turns a 1e-7 gradient difference into a visible weight difference; deterministic
    kernels make the resume bit-identical there too (on the CPU it is either way)."""
    import shutil

    from safetensors.torch import load_file

    from sam_l1dfl.cnn.config import load_cnn_config
    from sam_l1dfl.cnn.train import train_cnn

    ov = tiny_overrides(synth, "resume", "unet") + ["train.epochs=2", "train.max_steps=null", "train.batch_size=2",
                                                    "train.val_every=0", "train.deterministic=true"]
    full = train_cnn(load_cnn_config(None, ov), progress=False)
    assert full.steps == 2 and full.epochs == 2
    straight = load_file(str(full.run_dir / "last" / "model.safetensors"))
    shutil.rmtree(full.run_dir / "states" / "step_00000002")
    shutil.rmtree(full.run_dir / "last")
    res = train_cnn(load_cnn_config(None, ov), resume=True, progress=False)
    assert res.steps == 2 and res.metrics["resumed_from"].endswith("step_00000001")
    again = load_file(str(res.run_dir / "last" / "model.safetensors"))
    assert max(float((straight[k].float() - again[k].float()).abs().max()) for k in straight) < 1e-5


# ---------------------------------------------------------------------- inference
def test_auto_segmenter_and_cli(synth, capsys):
    from sam_l1dfl.cli import main
    from sam_l1dfl.cnn.infer import AutoSegmenter
    from sam_l1dfl.data.io import load_case

    best = synth / "runs" / "t_unet" / "best"
    if not best.is_dir():
        pytest.skip("needs the tiny unet run of test_tiny_training_each_network")
    case = load_case({
        "case_id": "synth_000", "pet": synth / "synth" / "synth_000" / "SUV.nii.gz",
        "ct": synth / "synth" / "synth_000" / "CTres.nii.gz"})
    res = AutoSegmenter(best).segment(case.pet, case.ct_native)
    for im in (res.mask, res.probability):  # on the original (oblique) PET grid
        assert im.GetSize() == case.pet.GetSize() and im.GetDirection() == case.pet.GetDirection()
        assert np.allclose(im.GetOrigin(), case.pet.GetOrigin())
    p = sitk.GetArrayFromImage(res.probability)
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert np.array_equal(sitk.GetArrayFromImage(res.mask) > 0, p >= 0.5)
    out = synth / "auto"
    assert main(["infer-auto", "--checkpoint", str(best), "--data", str(synth / "synth"), "--out-dir", str(out),
                 "--no-progress", "--probabilities"]) == 0
    assert sorted(q.name for q in out.glob("*.nii.gz")) == [f"synth_00{i}.nii.gz" for i in range(3)]
    assert (out / "prob" / "synth_001.nii.gz").is_file()
    s = json.loads((out / "summary.json").read_text())
    assert len(s["cases"]) == 3 and not s["failed"]
    # the run folder, as `infer` takes it: its best/ (the same masks)
    assert main(["infer-auto", "--checkpoint", str(best.parent), "--data", str(synth / "synth"),
                 "--out-dir", str(synth / "auto_run"), "--quiet"]) == 0
    for i in range(3):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"synth_00{i}.nii.gz"))) for d in (out, synth / "auto_run"))
        assert np.array_equal(a, b)
    # a folder that is neither: one line
    capsys.readouterr()
    assert main(["infer-auto", "--checkpoint", str(synth / "synth"), "--data", str(synth / "synth"),
                 "--out-dir", str(synth / "auto_bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {synth / 'synth'}: ") and "best/" in err and "\n" not in err
    assert not (synth / "auto_bad").exists()
