"""Checkpoint formats, safe unpickling, key errors, box prompts and PET+CT inflation."""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_l1dfl.errors import CheckpointError, PromptError
from sam_l1dfl.model import (
    SamMed3DConfig,
    build_sam_med3d,
    infer_config,
    load_sam_med3d,
    official_state_dict,
    read_model_meta,
    save_model_dir,
)

MANIFEST = Path(__file__).resolve().parent / "data" / "golden" / "sam_med3d_vit_b_ori.keys.tsv"  # the official keys


def _manifest() -> dict:
    out = {}
    for row in MANIFEST.read_text().strip().splitlines()[1:]:
        key, shape, _dtype = row.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def _official_extras() -> dict:
    """What the official train.py pickles next to the weights."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [120, 180], 0.1)  # pickles a Counter
    return {
        "epoch": 200,
        "optimizer_state_dict": opt.state_dict(),
        "lr_scheduler_state_dict": sched.state_dict(),
        "losses": [0.5, 0.4],
        "dices": [0.0, 0.0],
        "best_loss": np.float64(0.4),
        "best_dice": 0.0,
        "args": argparse.Namespace(task_name="union_train", step_size=[120, 180], lr=8e-4),
        "used_datas": ["data/train/a"],
    }


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(0)
    model = build_sam_med3d("tiny")
    with torch.no_grad():  # non-trivial values everywhere (rel-pos tables start at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_outputs(a, b, boxes=False, tol=1e-6):
    torch.manual_seed(1)
    img = torch.randn(1, a.config.in_chans, 128, 128, 128)
    pts = torch.tensor([[[64.0, 40.0, 90.0]]])
    lab = torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        ea, eb = a.encode(img), b.encode(img)
        ma, ia = a.decode(ea, pts, lab)
        mb, ib = b.decode(eb, pts, lab)
    assert torch.allclose(ea, eb, atol=tol, rtol=0)
    assert torch.allclose(ma, mb, atol=tol * 10, rtol=0) and torch.allclose(ia, ib, atol=tol, rtol=0)


# ------------------------------------------------------------------------- formats (tiny)
FORMATS = ["official", "bare", "module", "model_key", "safetensors", "run_dir"]


def _write(fmt: str, sd: dict, path: Path, cfg: "SamMed3DConfig | None" = None) -> Path:
    if fmt == "official":
        torch.save({"model_state_dict": sd, **_official_extras()}, path / "ckpt.pth")
        return path / "ckpt.pth"
    if fmt == "bare":
        torch.save(sd, path / "bare.pt")
        return path / "bare.pt"
    if fmt == "module":
        torch.save({"model_state_dict": {"module." + k: v for k, v in sd.items()}}, path / "ddp.pth")
        return path / "ddp.pth"
    if fmt == "model_key":
        torch.save({"model": sd, "step": 3}, path / "m.pth")
        return path / "m.pth"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "w.safetensors"))
        return path / "w.safetensors"
    if fmt == "run_dir":
        model = build_sam_med3d(cfg or infer_config(sd))
        model.load_state_dict(sd)
        return save_model_dir(model, path / "run", {"input_mode": "pet"})
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_loads_in_every_format(fmt, tiny_sd, tmp_path):
    p = _write(fmt, tiny_sd, tmp_path)
    model = load_sam_med3d(p)
    assert model.config == SamMed3DConfig.preset("tiny")
    sd = model.state_dict()
    assert set(sd) == set(tiny_sd)
    assert all(torch.equal(sd[k], tiny_sd[k]) for k in tiny_sd)
    rep = model.load_report
    weights = p / "model.safetensors" if p.is_dir() else p
    assert rep.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert rep.newly_initialized == [] and rep.num_tensors == len(tiny_sd)
    assert not model.training


def test_official_format_is_named_and_extras_are_allowed(tiny_sd, tmp_path):
    p = _write("official", tiny_sd, tmp_path)
    rep = load_sam_med3d(p).load_report
    assert "model_state_dict" in rep.format
    p2 = _write("module", tiny_sd, tmp_path)
    assert "module." in load_sam_med3d(p2).load_report.format


# ------------------------------------------------------------------------- unsafe pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo tampered > /dev/null",))


def test_tampered_pickle_is_refused(tiny_sd, tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model_state_dict": tiny_sd, "payload": _Evil()}, p)
    with pytest.raises(CheckpointError) as exc:
        load_sam_med3d(p)
    msg = str(exc.value)
    assert str(p) in msg and "system" in msg and "trust" in msg and "\n" not in msg


def test_unknown_global_needs_trust(tiny_sd, tmp_path):
    p = tmp_path / "dated.pth"
    torch.save({"model_state_dict": tiny_sd, "saved": datetime.date(2026, 11, 26)}, p)
    with pytest.raises(CheckpointError, match="datetime.date"):
        load_sam_med3d(p)
    model = load_sam_med3d(p, trust=True)
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], tiny_sd["image_encoder.pos_embed"])


def test_cli_inspect_refuses_and_reports(tiny_sd, tmp_path, capsys):
    from sam_l1dfl.cli import main

    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": tiny_sd, "payload": _Evil()}, evil)
    assert main(["inspect", str(evil)]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    good = _write("official", tiny_sd, tmp_path)
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(good.read_bytes()).hexdigest() in out and "encoder_embed_dim: 64" in out
    assert main(["inspect", "--json", str(good)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fits_model"] and rep["tensors"] == len(tiny_sd) and not rep["is_official_vit_b_ori"]


# ------------------------------------------------------------------------- key errors
def test_key_errors_are_summarised(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    del sd["mask_decoder.iou_token.weight"]
    sd["extra.thing"] = torch.zeros(1)
    sd["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 4, 64)
    for i in range(4):  # many similar missing keys collapse into one entry
        del sd[f"image_encoder.blocks.{i}.norm1.weight"]
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(CheckpointError) as exc:
        load_sam_med3d(p, cfg="tiny")
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 800
    assert "mask_decoder.iou_token.weight" in msg and "extra.thing" in msg
    assert "image_encoder.blocks.*.norm1.weight (x4)" in msg
    assert "image_encoder.pos_embed (file [1, 4, 4, 4, 64] vs model [1, 8, 8, 8, 64])" in msg


def test_non_strict_reports_missing(tiny_sd, tmp_path):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("mask_decoder.iou_prediction_head")}
    p = tmp_path / "partial.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match="missing"):
        load_sam_med3d(p, cfg="tiny")
    model = load_sam_med3d(p, cfg="tiny", strict=False)
    assert len(model.load_report.missing) == 6
    assert torch.isfinite(model.state_dict()["mask_decoder.iou_prediction_head.layers.0.weight"]).all()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip", b'{"a": 1}\n',
                                     b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"])
@pytest.mark.parametrize("trust", [False, True])
def test_garbage_files(tmp_path, content, trust):
    """Not a torch.save file at all: said so, with or without trust (never 'could run code')."""
    p = tmp_path / "junk.pth"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pth: not a PyTorch checkpoint") as exc:
        load_sam_med3d(p, trust=trust)
    assert "arbitrary code" not in str(exc.value) and "\n" not in str(exc.value)
    if content.startswith(b"version"):
        assert "git lfs pull" in str(exc.value)


@pytest.mark.parametrize("trust", [False, True])
def test_truncated_checkpoints(tiny_sd, tmp_path, trust):
    for legacy in (False, True):
        p = tmp_path / f"cut{legacy}.pth"
        torch.save({"model_state_dict": tiny_sd}, p, _use_new_zipfile_serialization=not legacy)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=f"cut{legacy}.pth: not a (readable )?PyTorch checkpoint") as exc:
            load_sam_med3d(p, trust=trust)
        assert "arbitrary code" not in str(exc.value) and "\n" not in str(exc.value)


def test_missing_path_and_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_sam_med3d(tmp_path / "nope.pth")
    p = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, p)
    with pytest.raises(CheckpointError, match="does not look like a SAM-Med3D"):
        load_sam_med3d(p)


# ------------------------------------------------------------------------- boxes
def test_box_embeddings_are_initialised_from_positive_point(tiny_sd, tmp_path):
    p = _write("official", tiny_sd, tmp_path)
    model = load_sam_med3d(p, cfg=SamMed3DConfig.preset("tiny", use_boxes=True))
    rep = model.load_report
    assert len(rep.newly_initialized) == 2 and all("point_embeddings" in s for s in rep.newly_initialized)
    pos = tiny_sd["prompt_encoder.point_embeddings.1.weight"]
    pe = model.prompt_encoder.point_embeddings
    assert torch.equal(pe[2].weight, pos) and torch.equal(pe[3].weight, pos)
    assert pe[2].weight.data_ptr() != pe[3].weight.data_ptr()  # trained independently

    emb = torch.randn(2, 48, 8, 8, 8)
    boxes = torch.tensor([[[10.0, 20.0, 30.0], [50.0, 60.0, 70.0]]] * 2)
    pts = torch.tensor([[[30.0, 40.0, 50.0]]] * 2)
    lab = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        sparse, _ = model.prompt_encoder(points=(pts, lab), boxes=boxes, masks=None)
        assert sparse.shape == (2, 3, 48)  # no padding token when a box is given
        sb, _ = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        assert sb.shape == (2, 2, 48)
        # corner embedding = Fourier features of (corner + 0.5) + point_embeddings[2/3]
        ref = model.prompt_encoder.pe_layer.forward_with_coords(boxes + 0.5, (128, 128, 128)) + pos
        assert torch.allclose(sb, ref, atol=1e-6)
        masks, iou = model.decode(emb, pts, lab, boxes=boxes, multimask_output=True)
        assert masks.shape == (2, 3, 32, 32, 32) and iou.shape == (2, 3)
        m_box, _ = model.decode(emb, boxes=boxes)
        assert m_box.shape == (2, 1, 32, 32, 32)
    with pytest.raises(PromptError, match=r"\(B, 2, 3\)"):
        model.prompt_encoder(points=None, boxes=torch.zeros(2, 6), masks=None)
    plain = load_sam_med3d(p)
    with pytest.raises(PromptError, match="no box embeddings"):
        plain.decode(emb, boxes=boxes)


def test_box_model_exports_to_official_layout_only_when_asked(tiny_sd, tmp_path):
    p = _write("official", tiny_sd, tmp_path)
    model = load_sam_med3d(p, cfg=SamMed3DConfig.preset("tiny", use_boxes=True))
    with pytest.raises(CheckpointError, match="drop_boxes"):
        official_state_dict(model)
    sd = official_state_dict(model, drop_boxes=True)
    assert list(sd) == list(tiny_sd)
    # ... and the box model round-trips through a run directory with its boxes.
    run = save_model_dir(model, tmp_path / "run", {"prompt_types": ["point", "box"]})
    meta = read_model_meta(run)
    assert meta["format"] == "sam-l1dfl-model" and meta["model"]["use_boxes"] is True
    assert meta["prompt_types"] == ["point", "box"]
    again = load_sam_med3d(run)
    assert again.config.use_boxes and again.load_report.newly_initialized == []
    assert not any(f.name.startswith(".") for f in run.iterdir())  # no temporary files left


# ------------------------------------------------------------------------- PET+CT
def test_two_channel_inflation_equals_pet_only(tiny_sd, tmp_path):
    p = _write("official", tiny_sd, tmp_path)
    pet_only = load_sam_med3d(p)
    petct = load_sam_med3d(p, cfg=SamMed3DConfig.preset("tiny", in_chans=2))
    w = petct.image_encoder.patch_embed.proj.weight
    assert w.shape[1] == 2 and torch.equal(w[:, 1], torch.zeros_like(w[:, 1]))
    assert any("input channels 1..1" in s for s in petct.load_report.newly_initialized)
    torch.manual_seed(2)
    pet = torch.randn(1, 1, 128, 128, 128)
    ct = torch.randn(1, 1, 128, 128, 128) * 100
    with torch.no_grad():
        a = pet_only.encode(pet)
        b = petct.encode(torch.cat([pet, ct], dim=1))
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-6
    with pytest.raises(CheckpointError, match="2 input channels"):
        official_state_dict(petct)
    # A 2-channel run directory reloads as 2 channels without any new initialisation.
    again = load_sam_med3d(save_model_dir(petct, tmp_path / "petct", {"input_mode": "pet+ct"}))
    assert again.config.in_chans == 2 and again.load_report.newly_initialized == []
    # ... but a 2-channel file does not silently load into a 1-channel model.
    with pytest.raises(CheckpointError, match="patch_embed"):
        load_sam_med3d(tmp_path / "petct", cfg="tiny")


# ------------------------------------------------------------------------- full size
@pytest.fixture(scope="module")
def vit_b_files(tmp_path_factory):
    shapes = _manifest()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.rand(s, generator=g) - 0.5 for k, s in shapes.items()}
    d = tmp_path_factory.mktemp("vit_b")
    p = d / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": sd, **_official_extras()}, p)
    return sd, p


def test_infer_config_from_manifest_shapes():
    sd = {k: torch.empty(s, device="meta") for k, s in _manifest().items()}
    assert infer_config(sd) == SamMed3DConfig.preset("vit_b_ori")
    sd["prompt_encoder.point_embeddings.2.weight"] = sd["prompt_encoder.point_embeddings.3.weight"] = torch.empty(1, 384, device="meta")
    sd["image_encoder.patch_embed.proj.weight"] = torch.empty(768, 2, 16, 16, 16, device="meta")
    assert infer_config(sd) == SamMed3DConfig.preset("vit_b_ori", use_boxes=True, in_chans=2)


def test_full_size_official_checkpoint(vit_b_files, tmp_path):
    sd, p = vit_b_files
    model = load_sam_med3d(p, strict=True)
    assert model.config == SamMed3DConfig.preset("vit_b_ori")
    rep = model.load_report
    assert rep.num_tensors == 324 and rep.num_values == 100_509_616
    assert rep.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    msd = model.state_dict()
    for k in ("image_encoder.blocks.11.attn.rel_pos_w", "mask_decoder.iou_prediction_head.layers.2.bias"):
        assert torch.equal(msd[k], sd[k])
    off = official_state_dict(model)
    assert list(off) == list(_manifest()) and all(tuple(v.shape) == _manifest()[k] for k, v in off.items())
    # safetensors export of the full model, reloaded with the config from its metadata.
    run = save_model_dir(model, tmp_path / "run", {})
    again = load_sam_med3d(run / "model.safetensors")
    assert again.config == model.config
    assert torch.equal(again.state_dict()["image_encoder.pos_embed"], sd["image_encoder.pos_embed"])


@pytest.mark.parametrize("fmt", ["bare", "module", "model_key", "safetensors"])
def test_full_size_other_formats(vit_b_files, tmp_path, fmt):
    sd, _ = vit_b_files
    p = _write(fmt, sd, tmp_path)
    try:
        model = load_sam_med3d(p, strict=True)
        assert model.config == SamMed3DConfig.preset("vit_b_ori")
        assert model.load_report.num_tensors == 324
        msd = model.state_dict()
        for k in ("image_encoder.patch_embed.proj.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):
            assert torch.equal(msd[k], sd[k])
    finally:
        p.unlink()
