"""``--format onnx``: two graphs, verified against PyTorch with onnxruntime on the CPU.

``image_encoder.onnx`` (the fast encoder path, 128³ input) and ``prompt_mask_decoder.onnx``
(prompt encoder + mask decoder, dynamic prompt batch and point count), plus ``config.json`` and
the model card, written into a temporary sibling directory that is renamed into place
(:func:`~sam_l1dfl.io_utils.atomic_dir`).  See ``onnx/README.md`` for the call sequence.  onnxruntime is imported only
when verifying.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from sam_l1dfl.errors import CheckpointError, SamL1dflError
from sam_l1dfl.export.card import model_card
from sam_l1dfl.export.source import ExportResult, as_source, provenance
from sam_l1dfl.formats import CARD_FILE, CONFIG_FILE, DECODER_ONNX, ENCODER_ONNX, ONNX_FORMAT, ONNX_OPSET
from sam_l1dfl.io_utils import atomic_dir, refuse_overwrite, sha256_file, write_json_atomic, write_text_atomic
from sam_l1dfl.progress import progress as show_progress

ONNX_TOLERANCE = 1e-3


class _EncoderOnnx(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class _PromptMaskDecoderOnnx(torch.nn.Module):
    """Prompt encoder + mask decoder with plain-tensor inputs (the ONNX graph's signature).

    Inputs: ``image_embeddings`` (1, C, g, g, g); ``point_coords`` (B, N, 3) float voxel indices
    (i, j, k) of the 128³ network input; ``point_labels`` (B, N) float: 1 positive, 0 negative,
    −1 padding ("not a point": append one when there is no box, as the PyTorch model does), 2/3
    box min/max corners (models with box embeddings); ``mask_input`` (B, 1, 4g, 4g, 4g) logits;
    ``has_mask_input`` (1,) 1.0 or 0.0.  Outputs all mask tokens: ``low_res_masks``
    (B, M, 4g, 4g, 4g) and ``iou_predictions`` (B, M); index 0 is the single-mask output,
    1..M-1 the multimask outputs.
    """

    def __init__(self, model) -> None:
        super().__init__()
        pe = model.prompt_encoder
        self.prompt_encoder = pe
        self.mask_decoder = model.mask_decoder
        self.input_size = tuple(pe.input_image_size)
        with torch.no_grad():
            self.register_buffer("image_pe", pe.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe_mod = self.prompt_encoder
        b = point_coords.shape[0]
        coords = point_coords.float() + 0.5
        pe = pe_mod.pe_layer.forward_with_coords(coords, self.input_size)
        lab = point_labels.unsqueeze(-1)
        sparse = torch.where(lab == -1, pe_mod.not_a_point_embed.weight.expand_as(pe), pe)
        for i, emb in enumerate(pe_mod.point_embeddings):
            sparse = sparse + (lab == i).to(sparse.dtype) * emb.weight
        has = has_mask_input.reshape(1, 1, 1, 1, 1)
        dense = has * pe_mod.mask_downscaling(mask_input) + (1 - has) * pe_mod.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)
        src = image_embeddings.expand(b, -1, -1, -1, -1)
        pos = self.image_pe.expand(b, -1, -1, -1, -1)
        return self.mask_decoder.predict_masks(src, pos, sparse, dense)


def _onnx_inputs(cfg, b: int = 2, n: int = 3, seed: int = 0, has_mask: bool = True):
    g = torch.Generator().manual_seed(seed)
    s, lr = cfg.grid_size, cfg.low_res_size
    emb = torch.randn(1, cfg.out_chans, s, s, s, generator=g)
    coords = torch.rand(b, n, 3, generator=g) * (cfg.img_size - 1)
    labels = torch.randint(0, 2, (b, n), generator=g).float()
    labels[:, -1] = -1.0
    mask = torch.randn(b, 1, lr, lr, lr, generator=g) * 4
    return emb, coords, labels, mask, torch.tensor([1.0 if has_mask else 0.0])


def _torch_reference(model, emb, coords, labels, mask, has):
    """The PyTorch model's own decode (not the export wrapper) for the ONNX inputs."""
    pad = labels[:, -1] == -1
    assert bool(pad.all()), "reference inputs end with one padding point"
    with torch.no_grad():
        masks, iou = model.mask_decoder.predict_masks(
            emb, model.prompt_encoder.get_dense_pe(),
            *model.prompt_encoder(points=(coords[:, :-1], labels[:, :-1].long()),
                                  masks=mask if float(has[0]) else None),
        )
    return masks, iou


def export_onnx(
    source,
    out_dir: "str | os.PathLike",
    trust: bool = False,
    opset: int = ONNX_OPSET,
    verify: bool = True,
    data_description: Optional[str] = None,
    progress: bool = True,
) -> ExportResult:
    """Write the two ONNX graphs (+ config.json, README.md) and verify them with onnxruntime.

    Uses the TorchScript-based exporter (``dynamo=False``): torch 2.14's dynamo exporter fails
    to decompose the fast encoder's attention (a strided view inside SDPA's decomposition).
    """
    src = as_source(source, trust)
    out = Path(out_dir)
    refuse_overwrite([out] + [out / f for f in (ENCODER_ONNX, DECODER_ONNX, CONFIG_FILE, CARD_FILE)], src.inputs(),
                     hint="choose another --out", error=CheckpointError)
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, "exists and is not a directory; the onnx format is a directory")
    model = src.model.float().cpu().eval()
    steps = ["image encoder", "prompt + mask decoder"] + (["verify (onnxruntime)"] if verify else [])
    bar = show_progress(total=len(steps), desc="onnx export", enabled=progress, unit="step")
    info: dict = {"opset": opset, "exporter": "torch.onnx.export(dynamo=False)", "torch": torch.__version__}
    with atomic_dir(out) as tmp:  # a new directory appears whole or not at all
        _write_graphs(model, tmp, opset, verify, bar, steps, info)
        _write_meta(src, tmp, info, data_description)
    notes = ["kept: weights as two graphs (fast encoder path), model config, preprocessing, training summary"]
    if verify:
        v = info["verification"]
        notes.append(f"verified with onnxruntime {v['onnxruntime']}: image embeddings max |diff| "
                     f"{v['encoder_max_abs']:.2e}, low-res masks max |diff| {v['masks_max_abs']:.2e} "
                     f"(end to end {v['end_to_end_masks_max_abs']:.2e}; tolerance {ONNX_TOLERANCE})")
    return ExportResult("onnx", [out / ENCODER_ONNX, out / DECODER_ONNX, out / CONFIG_FILE, out / CARD_FILE],
                        src.notes + notes, info=info)


def _write_graphs(model, out: Path, opset: int, verify: bool, bar, steps: list, info: dict) -> None:
    """Export (and verify) the two graphs into ``out``; fills ``info["verification"]``."""
    cfg = model.config
    old_impl = model.image_encoder.attn_impl
    model.image_encoder.attn_impl = "fast"
    try:
        bar.set_postfix_str(steps[0])
        image = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size,
                            generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: the grid size is fixed by design
            torch.onnx.export(
                _EncoderOnnx(model), (image,), str(out / ENCODER_ONNX), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=["image_embeddings"],
                dynamic_axes={"image": {0: "batch"}, "image_embeddings": {0: "batch"}},
            )
            bar.update()
            bar.set_postfix_str(steps[1])
            dec_in = _onnx_inputs(cfg)
            torch.onnx.export(
                _PromptMaskDecoderOnnx(model), dec_in, str(out / DECODER_ONNX), dynamo=False, opset_version=opset,
                input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
                output_names=["low_res_masks", "iou_predictions"],
                dynamic_axes={
                    "point_coords": {0: "num_prompts", 1: "num_points"},
                    "point_labels": {0: "num_prompts", 1: "num_points"},
                    "mask_input": {0: "num_prompts"},
                    "low_res_masks": {0: "num_prompts"},
                    "iou_predictions": {0: "num_prompts"},
                },
            )
            bar.update()
        if verify:
            bar.set_postfix_str(steps[2])
            info["verification"] = verify_onnx(out, model)
            bar.update()
    finally:
        model.image_encoder.attn_impl = old_impl
        bar.close()


def _write_meta(src, out: Path, info: dict, data_description: Optional[str]) -> None:
    """``config.json`` and the model card next to the graphs in ``out``."""
    cfg = src.model.config
    meta = dict(src.meta)
    meta["export"] = provenance(src, "onnx")
    meta["onnx"] = {
        **info,
        "graphs": {
            ENCODER_ONNX: {"inputs": {"image": ["batch", cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size]},
                           "outputs": {"image_embeddings": ["batch", cfg.out_chans] + [cfg.grid_size] * 3}},
            DECODER_ONNX: {
                "inputs": {"image_embeddings": [1, cfg.out_chans] + [cfg.grid_size] * 3,
                           "point_coords": ["num_prompts", "num_points", 3],
                           "point_labels": ["num_prompts", "num_points"],
                           "mask_input": ["num_prompts", 1] + [cfg.low_res_size] * 3,
                           "has_mask_input": [1]},
                "outputs": {"low_res_masks": ["num_prompts", cfg.num_multimask_outputs + 1] + [cfg.low_res_size] * 3,
                            "iou_predictions": ["num_prompts", cfg.num_multimask_outputs + 1]},
            },
        },
        "point_labels": {"1": "positive", "0": "negative", "-1": "padding (not a point)",
                         "2": "box min corner", "3": "box max corner"},
        "masks": "index 0: single-mask output; 1..M-1: multimask outputs; logits, threshold 0",
    }
    doc = {"format": ONNX_FORMAT, "version": 1, **meta, "model": cfg.to_dict()}
    write_json_atomic(out / CONFIG_FILE, doc)
    files = {n: sha256_file(out / n) for n in (ENCODER_ONNX, DECODER_ONNX, CONFIG_FILE)}
    usage = ("Two onnxruntime sessions: `image_encoder.onnx` once per crop, then "
             "`prompt_mask_decoder.onnx` per prompt set; see `onnx/README.md` of the sam-l1dfl "
             "repository for the call sequence in plain numpy.  Preprocess exactly as `config.json` "
             "says (`input_mode`, `preprocess`).")
    write_text_atomic(out / CARD_FILE, model_card(meta, cfg, src.metrics, files,
                                                  data_description or src.meta.get("data_description"), usage))


def verify_onnx(out_dir: "str | os.PathLike", model, tolerance: float = ONNX_TOLERANCE, seed: int = 0) -> dict:
    """Run both graphs with onnxruntime (CPU) on random inputs and compare with PyTorch.

    Checks several prompt batches and point counts, with and without a mask prompt.  Raises
    :class:`SamL1dflError` when the low-resolution masks differ by more than ``tolerance``.
    """
    import onnxruntime as ort

    out = Path(out_dir)
    cfg = model.config
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    enc = ort.InferenceSession(str(out / ENCODER_ONNX), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / DECODER_ONNX), opts, providers=["CPUExecutionProvider"])
    image = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size,
                        generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        emb_t = model.encode(image)
    emb_o = enc.run(None, {"image": image.numpy()})[0]
    res = {"onnxruntime": ort.__version__, "encoder_max_abs": float((torch.from_numpy(emb_o) - emb_t).abs().max())}
    worst_m = worst_i = 0.0
    cases = [(1, 2, False), (2, 4, True), (3, 1, False)]  # (prompts, points incl. padding, mask)
    for k, (b, n, has) in enumerate(cases):
        emb, coords, labels, mask, hm = _onnx_inputs(cfg, b, n, seed + 10 + k, has)
        emb = emb_t if k == 0 else emb
        m_t, i_t = _torch_reference(model, emb, coords, labels, mask, hm)
        m_o, i_o = dec.run(None, {"image_embeddings": emb.numpy(), "point_coords": coords.numpy(),
                                  "point_labels": labels.numpy(), "mask_input": mask.numpy(),
                                  "has_mask_input": hm.numpy()})
        worst_m = max(worst_m, float((torch.from_numpy(m_o) - m_t).abs().max()))
        worst_i = max(worst_i, float((torch.from_numpy(i_o) - i_t).abs().max()))
        if k == 0:  # end to end: ONNX embeddings into the ONNX decoder vs PyTorch throughout
            m_e = dec.run(None, {"image_embeddings": emb_o, "point_coords": coords.numpy(),
                                 "point_labels": labels.numpy(), "mask_input": mask.numpy(),
                                 "has_mask_input": hm.numpy()})[0]
            res["end_to_end_masks_max_abs"] = float((torch.from_numpy(m_e) - m_t).abs().max())
    res.update(masks_max_abs=worst_m, iou_max_abs=worst_i, tolerance=tolerance,
               cases=[{"prompts": b, "points": n, "mask_input": h} for b, n, h in cases])
    if max(worst_m, res["end_to_end_masks_max_abs"]) > tolerance:
        raise SamL1dflError(
            f"{out}: ONNX verification failed: low-res masks differ from PyTorch by "
            f"{max(worst_m, res['end_to_end_masks_max_abs']):.3g} > {tolerance}"
        )
    return res
