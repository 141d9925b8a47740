"""``--format safetensors``: a model directory (``model.safetensors`` + ``config.json`` + model card).

The same layout training writes, so ``load_sam_med3d`` and ``sam-l1dfl infer`` take it
directly and reproduce the run's preprocessing.  Written into a temporary sibling directory
that is renamed into place (:func:`~sam_l1dfl.io_utils.atomic_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.export.card import model_card
from sam_l1dfl.export.source import ExportResult, as_source, provenance
from sam_l1dfl.formats import CARD_FILE, CONFIG_FILE, MODEL_FILE
from sam_l1dfl.io_utils import atomic_dir, refuse_overwrite, sha256_file, write_text_atomic
from sam_l1dfl.model.lora import copy_factors
from sam_l1dfl.model.weights import save_model_dir

#: The card names no folder: an export's bytes do not depend on where it is written.
_SAFETENSORS_USAGE = """\
```python
from sam_l1dfl.model import load_sam_med3d, read_model_meta
model = load_sam_med3d("MODEL_DIR")         # this folder; config stored with the weights
meta = read_model_meta("MODEL_DIR")         # input_mode, preprocess, prompt_types, ...
```
or `sam-l1dfl infer --checkpoint MODEL_DIR ...`.  The weights use the official SAM-Med3D key names
(`safetensors.torch.load_file("MODEL_DIR/model.safetensors")`)."""


def export_safetensors(
    source,
    out_dir: "str | os.PathLike",
    trust: bool = False,
    data_description: Optional[str] = None,
) -> ExportResult:
    """Write a model directory: ``model.safetensors``, ``config.json``, ``README.md``."""
    src = as_source(source, trust)
    out = Path(out_dir)
    refuse_overwrite([out] + [out / f for f in (MODEL_FILE, CONFIG_FILE, CARD_FILE)], src.inputs(),
                     hint="choose another --out", error=CheckpointError)
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, "exists and is not a directory; the safetensors format is a directory")
    meta = dict(src.meta)
    meta["export"] = provenance(src, "safetensors")
    if src.metrics is not None:
        meta["metrics_summary"] = {
            k: src.metrics[k] for k in ("steps", "dice_before", "dice_after", "best") if k in src.metrics
        }
    if data_description:
        meta["data_description"] = data_description
    with atomic_dir(out) as tmp:  # a new directory appears whole or not at all
        save_model_dir(src.model, tmp, meta)
        files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE), CONFIG_FILE: sha256_file(tmp / CONFIG_FILE),
                 **copy_factors(src.weights, tmp)}  # a LoRA run's factors, for a later delta
        card = model_card(meta, src.config, src.metrics, files, data_description or src.meta.get("data_description"),
                          usage=_SAFETENSORS_USAGE)
        write_text_atomic(tmp / CARD_FILE, card)
    notes = ["kept: all weights, model config, input mode, preprocessing, prompt types, loss, training summary"]
    if src.metrics_path:
        notes.append(f"model card metrics from {src.metrics_path}")
    return ExportResult("safetensors", [out], src.notes + notes)
