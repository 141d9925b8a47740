"""``--format delta``: one ``.safetensors`` with only the tensors that differ from a base.

For a decoder-only fine-tune: the mask decoder.  The metadata holds the base file's SHA-256 and
name, the model config and the run's config.json fields (format: :mod:`sam_l1dfl.formats`).
Reading a delta is the loader's job (:mod:`sam_l1dfl.model.delta`; ``load_sam_med3d`` applies
it to its base, :func:`sam_l1dfl.export.apply_delta` rebuilds an export source).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.export.source import ExportResult, as_source, provenance
from sam_l1dfl.formats import DELTA_FORMAT, DELTA_VERSION, MODEL_FILE
from sam_l1dfl.io_utils import atomic_path, refuse_overwrite
from sam_l1dfl.model.checkpoint import load_sam_med3d
from sam_l1dfl.model.delta import is_delta_file, weights_file
from sam_l1dfl.model.lora import lora_delta
from sam_l1dfl.model.weights import resolve_model_path, save_safetensors


def _changed(state: dict, base_sd: dict, skip) -> dict:
    """The tensors of ``state`` that the base lacks or holds otherwise (``skip``: leave out)."""
    out = {}
    for k, v in state.items():
        b = base_sd.get(k)
        if k in skip:
            continue
        if b is None or b.shape != v.shape or b.dtype != v.dtype or not torch.equal(b, v):
            out[k] = v.detach().cpu().contiguous().clone()
    return out


def _delta_metadata(src, base: Path, base_model, n_base: int) -> dict:
    """The delta file's metadata: format, the base (SHA-256, name, format), the model config, the
    source's meta with this export's provenance, and the training summary."""
    meta = dict(src.meta)
    meta["export"] = provenance(src, "delta")
    md = {
        "format": DELTA_FORMAT,
        "version": DELTA_VERSION,
        "base_sha256": base_model.load_report.sha256,
        "base_file": weights_file(base).name if not base.is_dir() else base.name + "/" + MODEL_FILE,
        "base_format": base_model.load_report.format,
        "model_config": json.dumps(src.config.to_dict()),
        "meta": json.dumps(meta),
        "full_tensors": str(n_base),
    }
    if src.metrics is not None:
        md["metrics"] = json.dumps({k: src.metrics[k] for k in ("steps", "dice_before", "dice_after", "best")
                                    if k in src.metrics})
    return md


def export_delta(
    source,
    base: "str | os.PathLike",
    out: "str | os.PathLike",
    trust: bool = False,
    trust_base: bool = False,
) -> ExportResult:
    """Write only the tensors that differ from ``base`` (+ base SHA-256 and config) to ``out``."""
    src = as_source(source, trust)
    out = Path(out)
    base = resolve_model_path(base)
    refuse_overwrite([out], src.inputs() + [base, weights_file(base)], hint="choose another --out", error=CheckpointError)
    if out.is_dir():
        raise CheckpointError(out, "is a directory; the delta format is a single .safetensors file")
    if is_delta_file(weights_file(base)):
        raise CheckpointError(base, "is itself a delta; give the full base checkpoint")
    cfg = src.config
    try:
        base_model = load_sam_med3d(base, cfg=cfg, trust=trust_base)
    except CheckpointError as exc:
        raise CheckpointError(base, f"cannot serve as the base of this model: {exc.problem}") from None
    base_sd = base_model.state_dict()
    # a LoRA run: its factors instead of the merged encoder weights they rebuild on this base
    factors, rebuilt, lora_md = lora_delta(src.weights, base_sd, src.model.state_dict(), cfg, base)
    delta = {**factors, **_changed(src.model.state_dict(), base_sd, rebuilt)}
    total = sum(v.numel() * v.element_size() for v in src.model.state_dict().values())  # the full model
    size = sum(v.numel() * v.element_size() for v in delta.values())
    groups = sorted({k.split(".", 1)[0] + (" (LoRA factors)" if k in factors else "") for k in delta})
    md = {**_delta_metadata(src, base, base_model, len(base_sd)), **lora_md}
    with atomic_path(out) as tmp:
        save_safetensors(delta, tmp, md)
    notes = [
        f"delta: {len(delta) - len(factors)} of {len(base_sd)} tensors differ from the base"
        + (f" + {len(factors)} LoRA factors" if factors else "") + f" ({', '.join(groups) or 'none'}); "
        f"{size / max(total, 1):.1%} of the model's bytes",
        f"base:  {base} (SHA-256 {md['base_sha256']})",
        "kept: changed tensors, model config, preprocessing and training summary; needs the exact base file",
    ]
    if not delta:
        notes.append("warning: the model equals its base; the delta holds no tensors")
    return ExportResult("delta", [out], src.notes + notes,
                        info={"tensors": len(delta), "bytes_fraction": size / max(total, 1), "groups": groups})
