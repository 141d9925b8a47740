"""Exactness against the official SAM-Med3D code (reference outputs in ../shared/reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
GOLDEN = REF / "sam_med3d_tiny_golden.pt"
MANIFEST = REF / "sam_med3d_vit_b_ori.keys.tsv"

needs_golden = pytest.mark.skipif(not GOLDEN.exists(), reason=f"reference file {GOLDEN} not present")
needs_manifest = pytest.mark.skipif(not MANIFEST.exists(), reason=f"reference file {MANIFEST} not present")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the reference's scale (its max |value|)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    cfg = SamMed3DConfig.from_dict(json.loads(GOLDEN.with_suffix(".json").read_text()))
    model = build_sam_med3d(cfg).eval()
    model.load_state_dict(golden["checkpoint"]["model_state_dict"], strict=True)
    return model


@needs_golden
def test_tiny_preset_is_the_golden_config(golden):
    cfg = SamMed3DConfig.from_dict(json.loads(GOLDEN.with_suffix(".json").read_text()))
    assert cfg == SamMed3DConfig.preset("tiny")
    assert SamMed3DConfig.from_dict(golden["config"]) == cfg


@needs_golden
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


@needs_golden
def test_fast_and_faithful_agree_on_one_layer(golden_model):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8, golden_model.config.encoder_embed_dim)
    blk = golden_model.image_encoder.blocks[0]  # windowed: 8³ padded to 14³
    assert blk.window_size == 14
    with torch.no_grad():
        blk.attn_impl = "faithful"
        a = blk(x)
        blk.attn_impl = "fast"
        b = blk(x)
    assert rel_err(b, a) < 1e-5


@needs_golden
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


@needs_golden
def test_vitdet_formula_would_not_match(golden, golden_model):
    """The golden file discriminates the permuted relative-position formula."""
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

    orig = ie._rel_terms, ie._full_bias
    ie._rel_terms, ie._full_bias = vitdet_terms, vitdet_bias
    golden_model.image_encoder.attn_impl = "faithful"
    try:
        with torch.no_grad():
            emb = golden_model.encode(golden["image"][:1].float())
    finally:
        ie._rel_terms, ie._full_bias = orig
        golden_model.image_encoder.attn_impl = "fast"
    assert rel_err(emb, golden["image_embeddings"][:1]) > 1e-5


def _manifest():
    rows = MANIFEST.read_text().strip().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, dtype = row.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


@needs_manifest
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
