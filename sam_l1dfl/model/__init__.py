"""SAM-Med3D in PyTorch: exact with the published weights, safe checkpoint loading.

Public API::

    SamMed3DConfig            # dataclass; .preset("vit_b_ori" | "tiny"), .from_dict, .to_dict
    build_sam_med3d(cfg)      # -> SamMed3D with .image_encoder, .prompt_encoder, .mask_decoder
    load_sam_med3d(path, cfg=None, map_location="cpu", trust=False, strict=True, base=None)
    read_checkpoint(path, trust=False, base=None) -> (state_dict, format, config, sha256)
    save_model_dir(model, out_dir, meta), read_model_meta(path)
    official_state_dict(model, drop_boxes=False)

    model.encode(images); model.decode(embeddings, points, labels, boxes, mask_input, multimask_output)
    model.image_encoder.attn_impl = "auto" | "fast" | "faithful"   # auto: per device and batch

Modules: ``config`` (SamMed3DConfig), ``sam`` / ``image_encoder`` / ``prompt_encoder`` /
``mask_decoder`` (the network), ``weights`` (weight files: read, fit, write), ``delta`` (reading
a delta on top of its base), ``checkpoint`` (the loader: dispatch, config choice, LoadReport).

Conventions of the official code (uni-medical/SAM-Med3D), reproduced here and pinned down by
the golden case made with the official code, ``tests/data/golden/`` (tests/test_model_golden.py):

1. **Input and prompt axes.**  The network input is (B, C, X, Y, Z) with the array axes of
   the TorchIO tensor (see docs/architecture.md).  Point and box coordinates are float voxel
   indices ``(i, j, k)`` into dims 2, 3, 4 of that tensor; the prompt encoder adds **+0.5**
   (voxel centre) and divides by the input size (128) per axis before the Fourier features.
2. **Fourier features.**  ``pe(c) = [sin(2πu), cos(2πu), sin(2πu)]`` with
   ``u = (2c − 1) @ G``, G the (3, C/3) Gaussian matrix: the 3D code repeats the sine to reach
   C channels (so C must be divisible by 3).
3. **Dense PE axis order.**  ``get_dense_pe()`` encodes grid cell (i, j, k) of the 8³ embedding
   grid at ``((j + .5)/8, (i + .5)/8, (k + .5)/8)``: the first two axes are **swapped** with
   respect to point prompts (whose first coordinate is i).  We reproduce the swap, since the
   published weights were trained with it.
4. **Padding point.**  When no box is given, one "not a point" token (label −1, embedding
   ``not_a_point_embed``, positional encoding zeroed) is appended to the points, so one click
   gives 2 sparse tokens.  Labels: 1 positive (``point_embeddings[1]``), 0 negative
   (``point_embeddings[0]``), −1 padding.
5. **Window padding.**  The 128³ input gives an 8³ token grid; windowed blocks (all but
   ``encoder_global_attn_indexes`` = 2, 5, 8, 11) zero-pad it to one 14³ window *after*
   ``norm1``, so padded tokens have q, k, v equal to the qkv bias.  Global blocks attend over
   the 8³ grid; their relative-position tables have 2·8−1 = 15 rows, windowed ones 27.
6. **Permuted decomposed relative position.**  The official index expressions
   ``attn.view(B, qd, qh, qw, kd, kh, kw) + rel_d[:, :, :, :, None, None]
   + rel_h[:, :, :, None, :, None] + rel_w[:, :, :, None, None, :]`` append each term's key
   index *last*, so for a query at (a, b, c) and a key at (d, e, f) the bias is
   ``q[a,b,c]·Rd[a,f] + q[a,b,d]·Rh[b,f] + q[a,b,e]·Rw[e,f]``, with
   ``R*[i, j] = rel_pos_*[i − j + S − 1]`` and the *unscaled* query.  This is not the
   ViTDet / 2D-SAM formula ``q[a,b,c]·(Rd[a,d] + Rh[b,e] + Rw[c,f])``: two of the three terms
   read the query vector at another position of the window (padded positions read the q bias),
   and all three index the key's last coordinate f.
7. **Fast encoder.**  Because every term indexes key f and one other key coordinate, the sum
   of exp(logit) over all padded keys factorises per f into small log-sum-exps over d and e.
   The fast path runs ``scaled_dot_product_attention`` over the 512 real keys plus one virtual
   key whose value is the v bias and whose logit is ``scale·q·k_bias + log Σ_padded exp(bias)``
   (the padded queries are discarded anyway).  Exact up to fp32 rounding; ``"faithful"``
   computes the padding literally and is kept for verification.
8. **Decoder.**  The image embedding is flattened in (x, y, z) C order; for a single image
   embedding and a batch of prompts it is repeated (``repeat_interleave``); multimask output
   returns masks 1..3, single-mask output mask 0; no sigmoid on the IoU head.  LayerNorm3d
   (channel LayerNorm, eps 1e-6) in the neck, mask downscaling and upscaling; nn.LayerNorm
   eps 1e-6 in the encoder blocks, default eps in the decoder transformer.
9. **Extensions** (not in the official weights, reported as newly initialised on load): box
   prompts as two corner embeddings ``point_embeddings.2/3`` (initialised from the positive
   point embedding; boxes (B, 2, 3) = min and max corner voxel indices), and ``in_chans`` > 1
   (PET+CT): 1-channel patch-embedding kernels are inflated with zeros for the new channels,
   so the initial outputs equal the PET-only outputs exactly.
"""

from sam_l1dfl.model.config import SamMed3DConfig

#: The rest of the API and the submodule it lives in, imported on first use (PEP 562), so that
#: the config layer (``SamMed3DConfig``, read by every training config) stays free of torch.
LAZY = {
    "LoadReport": "checkpoint", "load_sam_med3d": "checkpoint", "read_checkpoint": "checkpoint",
    "is_delta_file": "delta", "read_delta_checkpoint": "delta",
    "SamMed3D": "sam", "build_sam_med3d": "sam",
    "infer_config": "weights", "official_state_dict": "weights", "read_model_meta": "weights",
    "read_weights": "weights", "resolve_model_path": "weights", "save_model_dir": "weights",
}

__all__ = ["SamMed3DConfig", *LAZY]


def __getattr__(name):
    if name in LAZY:  # the four all need torch: import them together
        from sam_l1dfl.model import checkpoint, delta, sam, weights

        return getattr({"checkpoint": checkpoint, "delta": delta, "sam": sam, "weights": weights}[LAZY[name]], name)
    raise AttributeError(f"module 'sam_l1dfl.model' has no attribute {name!r}")
