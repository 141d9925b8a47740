"""LoRA on the image encoder (``trainable.lora``, through HF peft): config, merge, exports, learning, resume.

The runs use the tiny stand-in, 3 synthetic cases (synth_002 held out), a few steps, 1-2 clicks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sam_l1dfl.cli import main as cli_main
from sam_l1dfl.errors import CheckpointError, ConfigError
from sam_l1dfl.training import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
MANIFEST = Path(__file__).resolve().parent / "data" / "golden" / "sam_med3d_vit_b_ori.keys.tsv"
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv", "proj"]}
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft (the lora extra) not installed")


# ----------------------------------------------------------------------------- config
def test_lora_config_is_checked_and_turns_the_embedding_cache_off():
    cfg = load_config(TINY, ["trainable.lora={r: 4}"]) if importlib.util.find_spec("peft") else None
    if cfg is not None:
        assert (cfg.trainable.lora.r, cfg.trainable.lora.alpha, cfg.trainable.lora.targets) == (4, 16.0, ["qkv", "proj"])
        assert not cfg.use_embedding_cache() and load_config(TINY).use_embedding_cache()
        assert cfg.to_dict()["trainable"]["lora"] == {"r": 4, "alpha": 16.0, "dropout": 0.0, "targets": ["qkv", "proj"]}
    for ov, msg in ((["trainable.lora={r: 0}"], "trainable.lora.r: must be >= 1"),
                    (["trainable.lora={targets: [qkv, attn]}"], "trainable.lora.targets"),
                    (["trainable.lora={dropout: 1.0}"], "trainable.lora.dropout"),
                    (["trainable.lora={}", "trainable.full=true"], "trainable.full already trains"),
                    (["trainable.lora={}", "cache.embeddings=on"], "needs a frozen image encoder"),
                    (["trainable.lora={rank: 4}"], "unknown key")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TINY, ov)


def test_without_peft_a_lora_config_stops_with_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "peft" else real(name, *a, **k))
    rc = cli_main(["finetune", "--config", str(TINY), f"data.root={tmp_path}", f"output_dir={tmp_path}",
                   "trainable.lora={r: 4}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: command line: ") and "trainable.lora" in err and "pip install 'sam-l1dfl[lora]'" in err
    assert load_config(TINY).trainable.lora is None  # without LoRA nothing needs peft
    from sam_l1dfl.model.lora import require_peft

    with pytest.raises(ConfigError, match=r"sam-l1dfl\[lora\]"):
        require_peft("delta.safetensors", "a delta with LoRA factors")


# ----------------------------------------------------------------------------- merging
def _outputs(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(1, model.config.in_chans, 128, 128, 128, generator=g)
    pts, lab = torch.tensor([[[64.0, 40.0, 90.0], [30.0, 70.0, 10.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        emb = model.encode(img)
        return torch.cat([emb.flatten(), *(t.flatten() for t in model.decode(emb, pts, lab))])


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


@needs_peft
def test_merged_model_equals_the_adapter_model_and_has_the_official_keys():
    from sam_l1dfl.model import build_sam_med3d
    from sam_l1dfl.model.lora import EncoderLora

    torch.manual_seed(0)
    model = build_sam_med3d("tiny").eval()
    plain = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    start = _outputs(model)
    lora = EncoderLora(model, LORA)
    assert _max_diff(_outputs(model), start) == 0  # B = 0: the adapters start as the identity
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    adapted = _outputs(model)
    merged = lora.merged()
    assert {k: tuple(v.shape) for k, v in merged.state_dict().items()} == plain  # official keys again
    assert _max_diff(adapted, start) > 1e-2  # the adapters change the outputs
    diff = _max_diff(_outputs(merged), adapted)
    print(f"merged vs adapter: max |diff| {diff:.2e}")
    assert diff <= 1e-5
    assert any(".lora_A." in k for k in model.state_dict())  # merging works on a copy
    assert lora.n_parameters == 4 * 4 * (64 + 192) + 4 * 4 * (64 + 64)  # 4 blocks, r 4: qkv 64->192, proj 64->64


@needs_peft
def test_vit_b_ori_with_lora_merges_to_the_official_keys_and_its_delta_is_small():
    """The merged vit_b_ori has the key set of the model without LoRA, which tests/test_export.py
    pins to the official manifest (tests/data/golden/sam_med3d_vit_b_ori.keys.tsv)."""
    from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, official_state_dict
    from sam_l1dfl.model.lora import EncoderLora

    with torch.device("meta"):
        model = build_sam_med3d(SamMed3DConfig.preset("vit_b_ori"))
    model = model.to_empty(device="cpu")  # uninitialised storage: no init cost
    manifest = {k: tuple(v.shape) for k, v in official_state_dict(model).items()}
    assert len(manifest) == len(MANIFEST.read_text().strip().splitlines()) - 1
    lora = EncoderLora(model, LORA)
    factors = sum(v.numel() for v in lora.factors().values())
    assert {k: tuple(v.shape) for k, v in official_state_dict(lora.merged()).items()} == manifest
    n = {k: int(torch.tensor(s).prod()) for k, s in manifest.items()}
    total, dec = sum(n.values()), sum(v for k, v in n.items() if k.startswith("mask_decoder."))
    print(f"vit_b_ori, LoRA r 4 on qkv+proj: {factors:,} factor values; delta (decoder + factors) "
          f"{dec + factors:,} of {total:,} values = {(dec + factors) / total:.2%} ({4 * (dec + factors) / 1e6:.1f} MB "
          f"of {4 * total / 1e6:.1f} MB in float32)")
    assert factors == 12 * 4 * ((768 + 2304) + (768 + 768))
    assert (dec + factors) / total < 0.08


# ----------------------------------------------------------------------------- runs
def _overrides(d: Path, name: str, *extra: str) -> list[str]:
    return [f"data.root={d / 'synth'}", "data.val_cases=[synth_002]", "data.max_train_crops=4",
            "data.max_val_crops=1", f"data.cache_dir={d / 'cache'}", f"output_dir={d / 'runs'}", f"name={name}",
            "model.checkpoint=standin", "prompts.clicks_per_sample=1", "prompts.mask_only=none", "train.batch_size=2", "train.max_steps=2",
            "train.save_every=1", "train.log_every=1", "train.val_every=0", "optim.lr=1e-2",
            "trainable.lora={r: 4, alpha: 8}", *extra]


def _train(overrides, resume: bool = False):
    from accelerate.state import AcceleratorState

    from sam_l1dfl.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster on 2 shared cores
    try:
        return train(load_config(TINY, overrides), resume=resume, progress=False)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _train_losses(run_dir: Path) -> dict:
    recs = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["type"] == "train"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    if importlib.util.find_spec("peft") is None:
        pytest.skip("peft (the lora extra) not installed")
    from sam_l1dfl.data.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("lora")
    generate_dataset(d / "synth", 3, seed=0, progress=False)  # 0, 4 and 2 lesions
    return d


@pytest.fixture(scope="module")
def lora_run(synth):
    """LoRA (qkv, proj) + decoder from the stand-in, 2 steps, uninterrupted."""
    res = _train(_overrides(synth, "lora"))
    assert res.steps == 2
    return res


@pytest.mark.slow
def test_resume_after_a_kill_is_exact_with_lora(synth, lora_run, monkeypatch):
    """Killed (an exception, in process) once step 1's state is saved; the resumed run ends with the
    uninterrupted run's weights, factors and losses.  (A real SIGKILL of a subprocess, with the
    half-written state it may leave, is tests/test_training_run.py's; here the imports of a second
    interpreter would cost more than the whole run.)"""
    from sam_l1dfl.training.loop import FinetuneTrainer

    class Killed(Exception):
        pass

    def step_end(self, step):
        FinetuneTrainer.on_step_end.__wrapped__(self, step)
        if step == 1:
            raise Killed

    step_end.__wrapped__ = FinetuneTrainer.on_step_end
    ov = _overrides(synth, "killed")
    monkeypatch.setattr(FinetuneTrainer, "on_step_end", step_end)
    with pytest.raises(Killed):
        _train(ov)
    monkeypatch.undo()
    kdir = synth / "runs" / "killed"
    assert (kdir / "states" / "step_00000001").is_dir() and not (kdir / "last").exists()
    res = _train(ov, resume=True)
    assert res.metrics["resumed_from"].endswith("step_00000001")
    full = lora_run.run_dir / "last"
    for f in ("model.safetensors", "lora.safetensors"):
        a, b = _tensors(kdir / "last" / f), _tensors(full / f)
        assert a.keys() == b.keys()
        assert max(_max_diff(a[k], b[k]) for k in a) < 1e-6, f
    lk, lf = _train_losses(kdir), _train_losses(lora_run.run_dir)
    assert lk.keys() == lf.keys() == {1, 2} and all(abs(lk[s] - lf[s]) < 1e-5 for s in lf)


@pytest.mark.slow
def test_lora_run_exports_merged_and_as_a_small_delta(lora_run, tmp_path):
    from peft import set_peft_model_state_dict

    from sam_l1dfl.export import export_checkpoint
    from sam_l1dfl.model import build_sam_med3d, load_sam_med3d
    from sam_l1dfl.model.lora import ADAPTER, EncoderLora, read_factors
    from sam_l1dfl.model.standin import STANDIN_DIR

    last = lora_run.run_dir / "last"  # (best/ is the start: 2 steps do not beat it)
    meta = json.loads((last / "config.json").read_text())
    assert {k: meta["lora"][k] for k in ("r", "alpha", "targets", "modules", "parameters")} == \
        {"r": 4, "alpha": 8.0, "targets": ["qkv", "proj"], "modules": 8, "parameters": 6144}
    assert lora_run.metrics["trainable"]["lora"]["parameters"] == 6144
    assert lora_run.metrics["embedding_cache"] is None  # turned off: the embeddings change
    # the adapter model (the stand-in + the run's factors) and the merged weights of last/
    factors, settings = read_factors(last)
    adapter = load_sam_med3d(STANDIN_DIR)
    start = _outputs(adapter)
    EncoderLora(adapter, settings)
    set_peft_model_state_dict(adapter, factors, adapter_name=ADAPTER)
    adapter.mask_decoder.load_state_dict({k[len("mask_decoder."):]: v for k, v in _tensors(last / "model.safetensors")
                                          .items() if k.startswith("mask_decoder.")})
    adapted = _outputs(adapter)
    merged = load_sam_med3d(last)  # strict: exactly the model's keys
    assert _max_diff(adapted, start) > 1e-4
    assert _max_diff(_outputs(merged), adapted) <= 1e-5

    # official .pth: exactly the keys and shapes of a model without LoRA, plain tensors, loads strictly
    pth = tmp_path / "model.pth"
    export_checkpoint(last, "sam-med3d", pth, progress=False)
    sd = torch.load(pth, weights_only=True)["model_state_dict"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == \
        {k: tuple(v.shape) for k, v in build_sam_med3d("tiny").state_dict().items()}
    w = load_sam_med3d(pth, strict=True).state_dict()  # the merged weights, so the adapted outputs (above)
    assert all(torch.equal(w[k], v) for k, v in merged.state_dict().items())
    # safetensors model directory: official keys, and the card says LoRA
    st = tmp_path / "st"
    export_checkpoint(last, "safetensors", st, progress=False)
    assert set(_tensors(st / "model.safetensors")) == set(sd)
    card = (st / "README.md").read_text()
    assert "LoRA on the image encoder" in card and "r 4, alpha 8.0" in card and "6,144 LoRA parameters" in card
    kept = read_factors(st)[0]  # kept for a later delta
    assert kept.keys() == factors.keys() and all(torch.equal(v, factors[k]) for k, v in kept.items())

    # delta: the decoder and the factors only; applied to its base it gives the adapted model
    delta = tmp_path / "delta.safetensors"
    res = export_checkpoint(last, "delta", delta, base=STANDIN_DIR, progress=False)
    keys = set(_tensors(delta))
    assert {k for k in keys if not k.startswith("mask_decoder.")} == set(factors)
    full_bytes = (last / "model.safetensors").stat().st_size
    print(f"tiny LoRA delta: {delta.stat().st_size:,} B of {full_bytes:,} B ({delta.stat().st_size / full_bytes:.1%}); "
          f"factors {sum(v.numel() * 4 for v in factors.values()):,} B; {res.notes[-3]}")
    assert delta.stat().st_size < 0.6 * full_bytes
    rebuilt = load_sam_med3d(delta, base=STANDIN_DIR)
    w, ref = rebuilt.state_dict(), merged.state_dict()
    assert max(_max_diff(w[k], ref[k]) for k in ref) <= 1e-6
    assert _max_diff(_outputs(rebuilt), adapted) <= 1e-5
    # on another base the factors cannot rebuild the run's encoder: refused
    other = tmp_path / "other.pth"
    torch.manual_seed(5)
    torch.save({"model_state_dict": build_sam_med3d("tiny").state_dict()}, other)
    with pytest.raises(CheckpointError, match="is not the checkpoint this LoRA run started from"):
        export_checkpoint(last, "delta", tmp_path / "d2.safetensors", base=other, progress=False)


@pytest.mark.slow
def test_lora_alone_learns_on_held_out_crops(synth):
    """The decoder frozen, only LoRA trains: the held-out 1-click Dice rises well above the frozen
    model's (the trainer's step-0 validation: the adapters start as the identity).  Observed on a
    2-core CPU: Dice@1 0.135 -> 0.198, Dice@3 0.176 -> 0.266; asserted: +0.03 each, and that only
    the adapted encoder weights changed (so the gain is LoRA's)."""
    from sam_l1dfl.model.standin import STANDIN_DIR

    res = _train(_overrides(synth, "learn", "trainable.mask_decoder=false", "data.max_val_crops=2",
                            "train.max_steps=8", "train.save_every=0", "optim.lr=2e-2",
                            "optim.warmup_steps=0", "loss.name=dicefocal",
                            "trainable.lora={r: 8, alpha: 16, targets: [qkv, proj, lin1, lin2]}"))
    before, after = res.dice_before, res.dice_after
    print(f"held-out Dice@1/3: frozen {before['dice@1']:.3f}/{before['dice@3']:.3f} -> LoRA "
          f"{after['dice@1']:.3f}/{after['dice@3']:.3f}; losses {res.losses}")
    assert after["n_lesions"] == 2
    # every validation with the encoder in the loop says whether the masks read the image (issue 28)
    assert all(0 <= before["image_dependence"][k] <= 1 and 0 <= after["image_dependence"][k] <= 1
               for k in ("zeros", "noise"))
    assert after["dice@1"] >= before["dice@1"] + 0.03 and after["dice@3"] >= before["dice@3"] + 0.03, (before, after)
    start, tuned = _tensors(STANDIN_DIR / "model.safetensors"), _tensors(res.run_dir / "last" / "model.safetensors")
    changed = {k for k in tuned if not torch.equal(tuned[k], start[k])}
    assert changed and all(k.startswith("image_encoder.blocks.") and k.endswith(
        ("qkv.weight", "proj.weight", "lin1.weight", "lin2.weight")) for k in changed), sorted(changed)[:5]
