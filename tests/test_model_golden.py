"""Exactness against the official SAM-Med3D code.

Always: the compact golden case in ``tests/data/golden/`` (about 7 MB, made by running the
official modules at the tiny config; see its README.md): strict load of the official state
dict (stored as fp16, cast to float32), image ``levels.float() / 32 - 4``, and the image
embeddings, dense PE and every case's low-res masks and IoU predictions, on both encoder paths
(``fast`` and ``faithful``).

Always, too: the vit_b_ori key manifest (``tests/data/golden/sam_med3d_vit_b_ori.keys.tsv``, the
keys, shapes and dtypes of the official ``state_dict()``).

When present (a checkout next to ``../shared/reference``), the larger reference file adds the
prompt encoder's sparse/dense outputs and a batch of two images, and the shipped manifest is
checked against the reference's; those tests are marked ``reference`` and deselected on a plain
clone (tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d

DATA = Path(__file__).resolve().parent / "data" / "golden"
COMPACT = DATA / "sam_med3d_tiny_golden_compact.pt"
MANIFEST = DATA / "sam_med3d_vit_b_ori.keys.tsv"
REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
GOLDEN = REF / "sam_med3d_tiny_golden.pt"


# Measured on the compact case (CPU, float32): embeddings ~5e-7 relative (the order of float32
# sums), decoder outputs ~1e-6; the tolerances leave a small margin for other BLAS builds.
EMBED_TOL = 2e-6
DECODE_TOL = 5e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the reference's scale (its max |value|)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


# ----------------------------------------------------------------------------- compact (always)
@pytest.fixture(scope="module")
def compact():
    return torch.load(COMPACT, weights_only=True)  # data only: no allowlist needed


@pytest.fixture(scope="module")
def compact_model(compact):
    model = build_sam_med3d(SamMed3DConfig.from_dict(compact["config"])).eval()
    sd = {k: v.float() if v.is_floating_point() else v for k, v in compact["state_dict_fp16"].items()}
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def compact_image(compact):
    assert compact["image_formula"].replace(" ", "") == "levels/32-4"
    return compact["image_uint8"].float() / 32 - 4


def test_compact_golden_is_the_tiny_preset(compact):
    cfg = SamMed3DConfig.from_dict(compact["config"])
    assert cfg == SamMed3DConfig.preset("tiny")
    assert SamMed3DConfig.from_dict(json.loads(COMPACT.with_suffix(".json").read_text())) == cfg
    assert [c["name"] for c in compact["cases"]] == ["one_click", "three_clicks", "three_clicks_with_mask", "multimask"]


def test_compact_dense_pe_matches_official(compact, compact_model):
    with torch.no_grad():
        pe = compact_model.prompt_encoder.get_dense_pe()
    assert pe.shape == compact["dense_pe"].shape
    assert rel_err(pe, compact["dense_pe"]) < EMBED_TOL


@pytest.mark.parametrize("impl", ["fast", "faithful"])
def test_compact_golden_matches_official(compact, compact_model, compact_image, impl):
    """Embeddings of the image, then every case decoded from the official embeddings and from ours."""
    compact_model.image_encoder.attn_impl = impl
    try:
        with torch.no_grad():
            emb = compact_model.encode(compact_image)
    finally:
        compact_model.image_encoder.attn_impl = "fast"
    assert emb.shape == compact["image_embeddings"].shape
    assert rel_err(emb, compact["image_embeddings"]) < EMBED_TOL
    for case in compact["cases"]:
        mask_input = case["mask_input"].float() if case["mask_input"] is not None else None
        for source, embeddings in (("official embeddings", compact["image_embeddings"]), (f"{impl} embeddings", emb)):
            with torch.no_grad():
                masks, iou = compact_model.decode(
                    embeddings, case["points"], case["labels"],
                    mask_input=mask_input, multimask_output=case["multimask_output"],
                )
            where = f"{case['name']} from {source}"
            assert masks.shape == case["low_res_masks"].shape, where
            assert iou.shape == case["iou_pred"].shape, where
            assert rel_err(masks, case["low_res_masks"]) < DECODE_TOL, where
            assert rel_err(iou, case["iou_pred"]) < DECODE_TOL, where


def test_fast_and_faithful_agree_on_one_layer(compact_model):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8, compact_model.config.encoder_embed_dim)
    blk = compact_model.image_encoder.blocks[0]  # windowed: 8³ padded to 14³
    assert blk.window_size == 14
    with torch.no_grad():
        blk.attn_impl = "faithful"
        a = blk(x)
        blk.attn_impl = "fast"
        b = blk(x)
    assert rel_err(b, a) < 1e-5


def test_vitdet_formula_would_not_match(compact, compact_model, compact_image, monkeypatch):
    """The golden case discriminates the permuted relative-position formula (conventions 6)."""
    import sam_l1dfl.model.image_encoder as ie

    def vitdet_terms(q, Rd, Rh, Rw):
        return (
            torch.einsum("nabcx,adx->nabcd", q, Rd),
            torch.einsum("nabcx,bex->nabce", q, Rh),
            torch.einsum("nabcx,cfx->nabcf", q, Rw),
        )

    def vitdet_bias(Td, Th, Tw):
        n, s0, s1, s2, _ = Td.shape
        return (Td[..., :, None, None] + Th[..., None, :, None] + Tw[..., None, None, :]).reshape(n, s0 * s1 * s2, -1)

    monkeypatch.setattr(ie, "_rel_terms", vitdet_terms)
    monkeypatch.setattr(ie, "_full_bias", vitdet_bias)
    monkeypatch.setattr(compact_model.image_encoder, "attn_impl", "faithful")
    with torch.no_grad():
        emb = compact_model.encode(compact_image)
    assert rel_err(emb, compact["image_embeddings"]) > 1e-5


# ----------------------------------------------------------------------------- ../shared/reference (when present)
@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    cfg = SamMed3DConfig.from_dict(json.loads(GOLDEN.with_suffix(".json").read_text()))
    model = build_sam_med3d(cfg).eval()
    model.load_state_dict(golden["checkpoint"]["model_state_dict"], strict=True)
    return model


@pytest.mark.reference  # the full golden file
def test_tiny_preset_is_the_golden_config(golden):
    cfg = SamMed3DConfig.from_dict(json.loads(GOLDEN.with_suffix(".json").read_text()))
    assert cfg == SamMed3DConfig.preset("tiny")
    assert SamMed3DConfig.from_dict(golden["config"]) == cfg


@pytest.mark.reference  # the full golden file
@pytest.mark.parametrize("impl,tol", [("faithful", 1e-5), ("fast", 1e-5)])
def test_image_embeddings_match_official(golden, golden_model, impl, tol):
    golden_model.image_encoder.attn_impl = impl
    try:
        with torch.no_grad():
            emb = golden_model.encode(golden["image"].float())
    finally:
        golden_model.image_encoder.attn_impl = "fast"
    assert emb.shape == golden["image_embeddings"].shape
    assert rel_err(emb, golden["image_embeddings"]) < tol


@pytest.mark.reference  # the full golden file
def test_prompt_encoder_and_decoder_match_official(golden, golden_model):
    with torch.no_grad():
        pe = golden_model.prompt_encoder.get_dense_pe()
        assert rel_err(pe, golden["dense_pe"]) < 1e-5
        for case in golden["cases"]:
            sparse, dense = golden_model.prompt_encoder(
                points=(case["points"], case["labels"]), boxes=None, masks=case["mask_input"]
            )
            assert sparse.shape == case["sparse"].shape, case["name"]
            assert rel_err(sparse, case["sparse"]) < 1e-5, case["name"]
            assert rel_err(dense, case["dense"]) < 1e-5, case["name"]
            masks, iou = golden_model.mask_decoder(
                image_embeddings=golden["image_embeddings"],
                image_pe=golden["dense_pe"],
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=case["multimask_output"],
            )
            assert masks.shape == case["low_res_masks"].shape, case["name"]
            assert rel_err(masks, case["low_res_masks"]) < 1e-5, case["name"]
            assert rel_err(iou, case["iou_pred"]) < 1e-5, case["name"]
            # The convenience wrapper gives the same answer.
            m2, i2 = golden_model.decode(
                golden["image_embeddings"], case["points"], case["labels"],
                mask_input=case["mask_input"], multimask_output=case["multimask_output"],
            )
            assert torch.equal(m2, masks) and torch.equal(i2, iou)


def _manifest():
    rows = MANIFEST.read_text().strip().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, dtype = row.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


def test_vit_b_ori_state_dict_matches_manifest():
    manifest = _manifest()
    assert len(manifest) == 324
    with torch.device("meta"):
        model = build_sam_med3d(SamMed3DConfig.preset("vit_b_ori"))
    sd = model.state_dict()
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items()}
    assert list(got) == list(manifest)
    assert got == manifest
    assert sum(v.numel() for v in sd.values()) == 100_509_616


@pytest.mark.reference
def test_shipped_manifest_is_the_reference():
    assert MANIFEST.read_bytes() == (REF / MANIFEST.name).read_bytes()
