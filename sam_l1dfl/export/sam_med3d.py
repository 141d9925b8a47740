"""``--format sam-med3d``: ``{"model_state_dict": ...}`` in the official SAM-Med3D layout.

Plain tensors only, so ``torch.load(weights_only=True)`` reads it (the official code, MedIM).
Box embeddings and multi-channel patch embeddings have no place in that layout and are refused
(``drop_boxes`` leaves the box embeddings out).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.export.source import ExportResult, as_source
from sam_l1dfl.io_utils import atomic_path, refuse_overwrite
from sam_l1dfl.model.weights import official_state_dict


def export_sam_med3d(
    source, out: "str | os.PathLike", drop_boxes: bool = False, trust: bool = False
) -> ExportResult:
    """Write ``{"model_state_dict": ...}`` in the official layout (plain tensors only)."""
    src = as_source(source, trust)
    out = Path(out)
    refuse_overwrite([out], src.inputs(), hint="choose another --out", error=CheckpointError)
    if out.is_dir():
        raise CheckpointError(out, "is a directory; the sam-med3d format is a single .pth file")
    try:
        sd = official_state_dict(src.model, drop_boxes=drop_boxes)
    except CheckpointError as exc:
        raise CheckpointError(src.given, exc.problem) from None
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    # into an open file: torch.save names the archive's top folder after a path it is given (the
    # temporary name would make every export's bytes differ); a file object gets "archive"
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        torch.save({"model_state_dict": sd}, f)
    notes = [f"tensors: {len(sd)} in the official SAM-Med3D layout (torch.load(weights_only=True) reads it)"]
    if drop_boxes and src.config.use_boxes:
        notes.append("dropped: prompt_encoder.point_embeddings.2/3 (box corners)")
    notes.append("not kept: preprocessing config, training summary (the official format has no place for them)")
    return ExportResult("sam-med3d", [out], src.notes + notes)
