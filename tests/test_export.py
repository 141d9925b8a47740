"""Export formats (sam-med3d .pth, safetensors model dir, delta, ONNX): round trips and refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_l1dfl import export as E
from sam_l1dfl.cli import main as cli_main
from sam_l1dfl.errors import CheckpointError, ConfigError
from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, load_sam_med3d, official_state_dict, read_model_meta

MANIFEST = Path(__file__).resolve().parent / "data" / "golden" / "sam_med3d_vit_b_ori.keys.tsv"  # the official keys

PREPROCESS = {  # deliberately not the defaults, so a lost config would show
    "input_mode": "pet", "spacing": 2.0, "crop_size": 128, "pet_normalization": "zscore_positive",
    "pet_suv_clip": 30.0, "pet_suv_scale": 10.0, "ct_clip": [-1000.0, 1000.0], "interpolation": "linear",
}
METRICS = {"name": "demo", "steps": 12, "dice_before": {"dice@1": 0.4123, "dice@3": 0.5, "n_lesions": 3},
           "dice_after": {"dice@1": 0.6789, "dice@3": 0.7, "n_lesions": 3}, "best": {"step": 8, "dice@1": 0.7012},
           "per_lesion_after": [{"case": "a"}, {"case": "b"}, {"case": "c"}]}


def _meta(base: Path) -> dict:
    return {
        "input_mode": "pet", "preprocess": PREPROCESS, "prompt_types": ["points"],
        "loss": {"name": "l1dfl", "gamma": 2.0},
        "training": {"step": 8, "val_dice": {"dice@1": 0.7012}, "start_from": {"checkpoint": str(base), "sha256": "x"},
                     "config": {"data": {"root": "data/synth", "val_fraction": 0.2},
                                "trainable": {"mask_decoder": True}, "optim": {"lr": 1e-4, "weight_decay": 0.01},
                                "train": {"batch_size": 2, "epochs": 3}}},
    }


def _perturb(model, prefix: str = "", scale: float = 0.05, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k.startswith(prefix):
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finetune-like run: base.pth (official layout), runs/demo/{best,last}, metrics.json."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    base = build_sam_med3d("tiny")
    _perturb(base, seed=1)
    base_path = root / "base.pth"
    torch.save({"model_state_dict": base.state_dict()}, base_path)
    tuned = load_sam_med3d(base_path)
    _perturb(tuned, "mask_decoder.", seed=2)  # decoder-only fine-tune
    from sam_l1dfl.model import save_model_dir

    run_dir = root / "runs" / "demo"
    save_model_dir(tuned, run_dir / "best", _meta(base_path))
    save_model_dir(base, run_dir / "last", _meta(base_path))
    (run_dir / "metrics.json").write_text(json.dumps(METRICS))
    (run_dir / "config.yaml").write_text("name: demo\n")
    # what inference gets from the run directory: the reference for every export
    ref = load_sam_med3d(run_dir / "best")
    return {"root": root, "base": base_path, "run": run_dir, "tuned": ref, "ref_outputs": _outputs(ref)}


def _inputs(cfg, seed=3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(1, cfg.in_chans, 128, 128, 128, generator=g)
    pts = torch.tensor([[[64.0, 40.0, 90.0], [30.0, 70.0, 10.0]]])
    lab = torch.tensor([[1, 0]])
    return img, pts, lab


def _outputs(model):
    img, pts, lab = _inputs(model.config)
    with torch.no_grad():
        emb = model.encode(img)
        return (emb, *model.decode(emb, pts, lab), *model.decode(emb, pts, lab, multimask_output=True))


def _assert_identical(a, run, outputs=True, exact=False):
    """Bit-identical weights, and the run directory's outputs.

    ``exact``: bitwise-equal outputs.  Otherwise within 1e-5: the same weights loaded from a
    pickle and from safetensors sit at differently aligned addresses, and CPU kernels may then
    round differently (observed: 1 ulp, ~1e-7).
    """
    sa, sb = a.state_dict(), run["tuned"].state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if outputs:
        for x, y in zip(_outputs(a), run["ref_outputs"]):
            assert torch.equal(x, y) if exact else torch.allclose(x, y, rtol=0, atol=1e-5)


def _cli(args, capsys):
    rc = cli_main(["export", "--no-progress", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ----------------------------------------------------------------------------- sources
def test_resolve_checkpoint(run, tmp_path):
    assert E.resolve_checkpoint(run["run"]) == run["run"] / "best"
    assert E.resolve_checkpoint(run["run"] / "last") == run["run"] / "last"
    assert E.resolve_checkpoint(run["base"]) == run["base"]
    only_last = tmp_path / "r"
    shutil.copytree(run["run"] / "last", only_last / "last")
    assert E.resolve_checkpoint(only_last) == only_last / "last"
    with pytest.raises(CheckpointError, match="no such file"):
        E.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model directory"):
        E.resolve_checkpoint(tmp_path / "empty")
    # the model loader (and so `sam-l1dfl infer`) takes a run directory too
    assert load_sam_med3d(run["run"]).load_report.path.endswith("best")
    src = E.load_source(run["run"])
    assert src.metrics == METRICS and src.metrics_path == run["run"] / "metrics.json"
    assert src.meta["preprocess"] == PREPROCESS


# ----------------------------------------------------------------------------- sam-med3d
def test_sam_med3d_pth_roundtrip(run, tmp_path, capsys):
    out = tmp_path / "model.pth"
    rc, stdout, _ = _cli(["--checkpoint", run["run"], "--format", "sam-med3d", "--out", out], capsys)
    assert rc == 0 and "sam-med3d" in stdout
    obj = torch.load(out, weights_only=True)  # plain tensors: no allowlist needed
    assert list(obj) == ["model_state_dict"]
    sd = obj["model_state_dict"]
    ref = official_state_dict(run["tuned"])
    assert list(sd) == list(ref)
    assert all(torch.is_tensor(v) and v.shape == ref[k].shape for k, v in sd.items())
    _assert_identical(load_sam_med3d(out), run)


def test_sam_med3d_key_set_is_official_for_vit_b_ori():
    manifest = {}
    for row in MANIFEST.read_text().strip().splitlines()[1:]:
        key, shape, _ = row.split("\t")
        manifest[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    with torch.device("meta"):
        model = build_sam_med3d(SamMed3DConfig.preset("vit_b_ori", use_boxes=True))
    model = model.to_empty(device="cpu")  # uninitialised storage: no init cost
    sd = official_state_dict(model, drop_boxes=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == manifest


def test_sam_med3d_refuses_boxes_and_two_channels(run, tmp_path, capsys):
    from sam_l1dfl.model import save_model_dir

    boxes = load_sam_med3d(run["run"] / "best", cfg=SamMed3DConfig.preset("tiny", use_boxes=True))
    _perturb(boxes, "prompt_encoder.point_embeddings.2", seed=5)
    save_model_dir(boxes, tmp_path / "boxes", _meta(run["base"]))
    out = tmp_path / "b.pth"
    rc, _, err = _cli(["--checkpoint", tmp_path / "boxes", "--format", "sam-med3d", "--out", out], capsys)
    assert rc == 2 and err.count("\n") == 1 and "box" in err and "--drop-boxes" in err
    assert str(tmp_path / "boxes") in err and not out.exists()
    rc, _, _ = _cli(["--checkpoint", tmp_path / "boxes", "--format", "sam-med3d", "--out", out, "--drop-boxes"], capsys)
    assert rc == 0
    back = load_sam_med3d(out)
    assert back.config == SamMed3DConfig.preset("tiny")
    assert "prompt_encoder.point_embeddings.2.weight" not in torch.load(out, weights_only=True)["model_state_dict"]
    _assert_identical(back, run)  # only the box embeddings were extra

    two = load_sam_med3d(run["run"] / "best", cfg=SamMed3DConfig.preset("tiny", in_chans=2))
    save_model_dir(two, tmp_path / "two", {**_meta(run["base"]), "input_mode": "pet+ct"})
    rc, _, err = _cli(["--checkpoint", tmp_path / "two", "--format", "sam-med3d", "--out", out, "--drop-boxes"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "2 input channels" in err


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_dir_keeps_preprocessing_and_has_model_card(run, tmp_path, capsys):
    out = tmp_path / "hf"
    rc, _, _ = _cli(["--checkpoint", run["run"], "--format", "safetensors", "--out", out,
                     "--data-description", "Synthetic PSMA phantoms from sam-l1dfl synth."], capsys)
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = load_sam_med3d(out)
    _assert_identical(model, run, exact=True)  # inference gives exactly the run directory's results
    # the same tensors and metadata as the run's weights (not the same bytes: safetensors
    # writes its __metadata__ in a per-process order, so a checksum comparison is flaky)
    from safetensors import safe_open

    def _tensors_and_metadata(path):
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    got, got_md = _tensors_and_metadata(out / "model.safetensors")
    want, want_md = _tensors_and_metadata(run["run"] / "best" / "model.safetensors")
    assert got_md == want_md and list(got) == list(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    meta, src_meta = read_model_meta(out), read_model_meta(run["run"] / "best")
    for k in ("input_mode", "preprocess", "prompt_types", "loss", "training", "model"):
        assert meta[k] == src_meta[k], k
    from sam_l1dfl.data.preprocess import IntensityConfig

    assert IntensityConfig.from_dict(meta["preprocess"]) == IntensityConfig.from_dict(PREPROCESS)
    assert meta["export"]["weights_sha256"] == model.load_report.sha256 or meta["export"]["weights"].endswith("best")
    assert meta["metrics_summary"]["best"] == METRICS["best"]
    card = (out / "README.md").read_text()
    for needle in ("Not for clinical use", "## Intended use", "## Training data", "Synthetic PSMA phantoms",
                   "0.6789", "0.4123", "0.7012", "2.0 mm", "SUV clip 30.0", "l1dfl", "data/synth",
                   "validation lesions: 3"):
        assert needle in card, needle
    # a bare official checkpoint gets the default preprocessing recorded, and says so
    out2 = tmp_path / "hf2"
    E.export_safetensors(run["base"], out2)
    m2 = read_model_meta(out2)
    assert m2["preprocess"]["spacing"] == 1.5 and "defaults" in m2["meta_source"]
    assert "No metrics were recorded" in (out2 / "README.md").read_text()


def test_exports_get_the_umask_mode_and_appear_whole(run, tmp_path, monkeypatch):
    """model.safetensors is written 0600 by safetensors: exports get 0666 & ~umask like any file;
    a directory export that fails half-way leaves nothing under its final name."""
    old = os.umask(0o002)
    try:
        E.export_safetensors(run["run"], tmp_path / "hf")
        E.export_checkpoint(run["run"], "onnx", tmp_path / "onnx", verify=False, progress=False)
    finally:
        os.umask(old)
    for d in (tmp_path / "hf", tmp_path / "onnx"):
        assert d.stat().st_mode & 0o777 == 0o775, d
        for f in d.iterdir():
            assert f.stat().st_mode & 0o777 == 0o664, f
    import sam_l1dfl.export.safetensors as S

    def crash(*a, **k):
        raise RuntimeError("killed while writing the model card")

    monkeypatch.setattr(S, "model_card", crash)
    with pytest.raises(RuntimeError):
        E.export_safetensors(run["run"], tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "onnx"]


# ----------------------------------------------------------------------------- delta
def test_delta_roundtrip_is_bit_identical_and_small(run, tmp_path, capsys):
    delta = tmp_path / "delta.safetensors"
    rc, stdout, _ = _cli(["--checkpoint", run["run"], "--format", "delta", "--base", run["base"],
                          "--out", delta], capsys)
    assert rc == 0 and "mask_decoder" in stdout
    from safetensors import safe_open

    with safe_open(str(delta), framework="pt") as f:
        keys, md = list(f.keys()), f.metadata()
    dec = {k: v for k, v in run["tuned"].state_dict().items() if k.startswith("mask_decoder.")}
    assert set(keys) == set(dec)  # exactly the trained tensors
    from sam_l1dfl.io_utils import sha256_file

    assert md["base_sha256"] == sha256_file(run["base"]) and md["format"] == "sam-l1dfl-delta"
    assert json.loads(md["meta"])["preprocess"] == PREPROCESS
    assert SamMed3DConfig.from_dict(json.loads(md["model_config"])) == run["tuned"].config
    # size: the decoder's bytes plus a small header, as a share of the full file
    full = (run["run"] / "best" / "model.safetensors").stat().st_size
    dec_bytes = sum(v.numel() * 4 for v in dec.values())
    assert dec_bytes <= delta.stat().st_size <= dec_bytes + 64 * 1024
    ratio = delta.stat().st_size / full
    dec_share = dec_bytes / sum(v.numel() * 4 for v in run["tuned"].state_dict().values())
    capsys.readouterr()
    with capsys.disabled():
        print(f"\ntiny: delta {delta.stat().st_size} B / full {full} B = {ratio:.3f} (decoder share {dec_share:.3f})")
    assert abs(ratio - dec_share) < 0.02

    rebuilt = E.apply_delta(delta, run["base"])
    _assert_identical(rebuilt.model, run, outputs=False)
    assert rebuilt.meta["preprocess"] == PREPROCESS and rebuilt.metrics["best"] == METRICS["best"]
    # through the CLI into a model directory, and through the loader hook (base next to the delta)
    out = tmp_path / "rebuilt"
    rc, _, _ = _cli(["--apply-delta", delta, "--base", run["base"], "--out", out], capsys)
    assert rc == 0
    _assert_identical(load_sam_med3d(out), run, exact=True)
    assert read_model_meta(out)["preprocess"] == PREPROCESS
    shutil.copy(run["base"], tmp_path / "base.pth")
    sd, fmt, cfg, _ = E.read_delta_checkpoint(delta)
    assert "delta" in fmt and cfg == run["tuned"].config
    assert all(torch.equal(sd[k], v) for k, v in run["tuned"].state_dict().items())
    # the model loader itself rebuilds a delta whose base sits next to it
    _assert_identical(load_sam_med3d(delta), run, outputs=False)
    # but exporting *from* a delta needs an explicit rebuild first
    with pytest.raises(CheckpointError, match="is a sam-l1dfl delta"):
        E.load_source(delta)
    # without its base next to it, the loader says which base it needs
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(delta, lonely / "delta.safetensors")
    with pytest.raises(CheckpointError, match="give that base"):
        load_sam_med3d(lonely / "delta.safetensors")
    # ... or takes the base from the caller; a base only applies to a delta
    _assert_identical(load_sam_med3d(lonely / "delta.safetensors", base=run["base"]), run, outputs=False)
    with pytest.raises(CheckpointError, match="not a sam-l1dfl delta"):
        load_sam_med3d(run["base"], base=run["base"])


def test_delta_share_for_vit_b_ori_from_manifest():
    values = {}
    for row in MANIFEST.read_text().strip().splitlines()[1:]:
        key, shape, _ = row.split("\t")
        values[key] = int(np.prod([int(s) for s in shape.strip("()").split(",") if s.strip()]))
    dec = sum(v for k, v in values.items() if k.startswith("mask_decoder."))
    total = sum(values.values())
    print(f"vit_b_ori: mask_decoder {dec:,} of {total:,} values = {dec / total:.2%}")
    assert 0.01 < dec / total <= 0.10


def test_delta_with_wrong_base_is_refused(run, tmp_path, capsys):
    delta = tmp_path / "delta.safetensors"
    E.export_delta(run["run"], run["base"], delta)
    other = tmp_path / "other.pth"
    sd = torch.load(run["base"], weights_only=True)["model_state_dict"]
    sd["image_encoder.pos_embed"] = sd["image_encoder.pos_embed"] + 1e-3
    torch.save({"model_state_dict": sd}, other)
    out = tmp_path / "x"
    rc, _, err = _cli(["--apply-delta", delta, "--base", other, "--out", out], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "SHA-256" in err and "does not match" in err and str(other) in err
    assert not out.exists()
    rc, _, err = _cli(["--checkpoint", run["run"], "--format", "delta", "--out", out], capsys)
    assert rc == 2 and "--base" in err


# ----------------------------------------------------------------------------- tampering
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo tampered > /dev/null",))


def test_truncated_safetensors_and_evil_pickle_are_refused(run, tmp_path, capsys):
    bad_dir = tmp_path / "trunc"
    shutil.copytree(run["run"] / "best", bad_dir)
    w = bad_dir / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    for fmt in ("safetensors", "sam-med3d"):
        out = tmp_path / f"o-{fmt}"
        rc, _, err = _cli(["--checkpoint", bad_dir, "--format", fmt, "--out", out], capsys)
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert "model.safetensors" in err and not out.exists()
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": run["tuned"].state_dict(), "payload": _Evil()}, evil)
    rc, _, err = _cli(["--checkpoint", evil, "--format", "safetensors", "--out", tmp_path / "e"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "refusing to unpickle" in err and "system" in err
    assert not (tmp_path / "e").exists()
    # a truncated delta
    delta = tmp_path / "d.safetensors"
    E.export_delta(run["run"], run["base"], delta)
    delta.write_bytes(delta.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="d.safetensors"):
        E.apply_delta(delta, run["base"])


def test_outputs_never_overwrite_inputs(run, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(run["run"] / "best", src)
    before = (src / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="would overwrite the input"):
        E.export_safetensors(src, src)
    with pytest.raises(CheckpointError, match="would overwrite the input"):
        E.export_delta(src, run["base"], run["base"])
    assert (src / "model.safetensors").read_bytes() == before
    with pytest.raises(ConfigError, match="unknown export format"):
        E.export_checkpoint(src, "pickle", tmp_path / "x")


# ----------------------------------------------------------------------------- onnx
def test_onnx_two_graphs_match_pytorch(run, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "onnx"
    res = E.export_checkpoint(run["run"], "onnx", out, progress=False)
    v = res.info["verification"]
    assert v["masks_max_abs"] <= 1e-3 and v["end_to_end_masks_max_abs"] <= 1e-3
    meta = json.loads((out / "config.json").read_text())
    assert meta["preprocess"] == PREPROCESS and meta["format"] == "sam-l1dfl-onnx"
    assert "Not for clinical use" in (out / "README.md").read_text()
    # the onnx/README.md call sequence, in plain numpy
    enc = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "prompt_mask_decoder.onnx"), providers=["CPUExecutionProvider"])
    model = E.load_source(run["run"]).model  # what the export read: runs/demo -> best/
    img, _, _ = _inputs(model.config, seed=7)
    (emb,) = enc.run(None, {"image": img.numpy()})
    low = model.config.low_res_size
    for n in (1, 5):  # dynamic point count, two prompt sets
        rng = np.random.default_rng(n)
        coords = rng.uniform(0, 127, (2, n, 3)).astype(np.float32)
        labels = rng.integers(0, 2, (2, n)).astype(np.float32)
        pc = np.concatenate([coords, np.zeros((2, 1, 3), np.float32)], 1)  # + padding point
        pl = np.concatenate([labels, -np.ones((2, 1), np.float32)], 1)
        masks, iou = dec.run(None, {"image_embeddings": emb, "point_coords": pc, "point_labels": pl,
                                    "mask_input": np.zeros((2, 1, low, low, low), np.float32),
                                    "has_mask_input": np.zeros(1, np.float32)})
        with torch.no_grad():
            m_t, i_t = model.decode(model.encode(img), torch.from_numpy(coords), torch.from_numpy(labels).long())
            mm_t, _ = model.decode(model.encode(img), torch.from_numpy(coords), torch.from_numpy(labels).long(),
                                   multimask_output=True)
        assert masks.shape == (2, 4, low, low, low) and iou.shape == (2, 4)
        assert np.abs(masks[:, :1] - m_t.numpy()).max() <= 1e-3
        assert np.abs(masks[:, 1:] - mm_t.numpy()).max() <= 1e-3
        assert np.abs(iou[:, :1] - i_t.numpy()).max() <= 1e-3
