"""Export fine-tuned SAM-Med3D models to the formats other tools load (``sam-l1dfl export``).

Formats (docs/export.md has the full table):

``sam-med3d``
    ``{"model_state_dict": <state dict>}`` ``.pth`` with exactly the official key set and shapes,
    plain tensors only (``torch.load(weights_only=True)`` reads it): for the official SAM-Med3D
    code and MedIM.  Box embeddings and multi-channel patch embeddings have no place in that
    layout and are refused (``drop_boxes`` leaves the box embeddings out).
``safetensors``
    A model directory (``model.safetensors`` + ``config.json`` + ``README.md`` model card); the
    same layout training writes, so ``load_sam_med3d`` and ``sam-l1dfl infer`` take it directly
    and reproduce the run's preprocessing.
``delta``
    One ``.safetensors`` file with only the tensors that differ from a base checkpoint (for a
    decoder-only fine-tune: the mask decoder), the base file's SHA-256, the model config and
    the run's config.json in the metadata.  :func:`apply_delta` rebuilds the full model and
    refuses a base whose checksum differs.
``onnx``
    Two graphs: ``image_encoder.onnx`` (the fast encoder path, 128³ input) and
    ``prompt_mask_decoder.onnx`` (prompt encoder + mask decoder, dynamic prompt batch and point
    count), verified against PyTorch with onnxruntime on the CPU.  See ``onnx/README.md``.

Public API::

    resolve_checkpoint(path) -> Path           # run dir -> best/, model dir, or a file
    load_source(checkpoint, trust=False) -> ExportSource
    export_checkpoint(checkpoint, fmt, out, base=None, drop_boxes=False, ...) -> ExportResult
    export_sam_med3d / export_safetensors / export_delta / export_onnx (source, out, ...)
    apply_delta(delta, base, trust=False) -> ExportSource
    read_delta_checkpoint(path, base=None, trust=False) -> (state_dict, format, config, sha256)
    is_delta_file(path) -> bool
    model_card(meta, metrics=None, ...) -> str

Modules: ``source`` (ExportSource, load_source, apply_delta), one writer per format
(``sam_med3d``, ``safetensors`` with ``card``, ``delta``, ``onnx``), and :func:`export_checkpoint`
here.  Reading a delta belongs to the loader (:mod:`sam_l1dfl.model.delta`); file names and
format tags come from :mod:`sam_l1dfl.formats`.

Every output is written atomically (``sam_l1dfl.io_utils``); inputs are never modified, and an
output that would overwrite an input is refused.
"""

from __future__ import annotations

import os
from typing import Optional

from sam_l1dfl.errors import ConfigError
from sam_l1dfl.export.card import NOT_FOR_CLINICAL_USE, model_card
from sam_l1dfl.export.delta import export_delta
from sam_l1dfl.export.onnx import ONNX_TOLERANCE, export_onnx, verify_onnx
from sam_l1dfl.export.safetensors import export_safetensors
from sam_l1dfl.export.sam_med3d import export_sam_med3d
from sam_l1dfl.export.source import ExportResult, ExportSource, apply_delta, as_source, default_meta, load_source
from sam_l1dfl.formats import EXPORT_FORMATS as FORMATS
from sam_l1dfl.formats import ONNX_OPSET
from sam_l1dfl.model.delta import is_delta_file, read_delta_checkpoint
from sam_l1dfl.model.weights import resolve_model_path as resolve_checkpoint


def export_checkpoint(
    checkpoint,
    fmt: str,
    out: "str | os.PathLike",
    base: "str | os.PathLike | None" = None,
    drop_boxes: bool = False,
    trust: bool = False,
    data_description: Optional[str] = None,
    verify: bool = True,
    opset: int = ONNX_OPSET,
    progress: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` (a path or an :class:`ExportSource`) to ``fmt`` at ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(None, f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "delta" and base is None:
        raise ConfigError(None, "--format delta needs --base (the checkpoint the fine-tune started from)")
    if drop_boxes and fmt != "sam-med3d":
        raise ConfigError(None, "--drop-boxes only applies to --format sam-med3d")
    src = as_source(checkpoint, trust)
    if fmt == "sam-med3d":
        return export_sam_med3d(src, out, drop_boxes=drop_boxes)
    if fmt == "safetensors":
        return export_safetensors(src, out, data_description=data_description)
    if fmt == "delta":
        return export_delta(src, base, out)
    return export_onnx(src, out, opset=opset, verify=verify, data_description=data_description, progress=progress)


__all__ = [
    "FORMATS",
    "ExportSource",
    "ExportResult",
    "resolve_checkpoint",
    "load_source",
    "default_meta",
    "export_checkpoint",
    "export_sam_med3d",
    "export_safetensors",
    "export_delta",
    "export_onnx",
    "verify_onnx",
    "apply_delta",
    "read_delta_checkpoint",
    "is_delta_file",
    "model_card",
    "NOT_FOR_CLINICAL_USE",
    "ONNX_TOLERANCE",
]
