"""What every export writer starts from: the loaded model and where it came from.

* :class:`ExportSource` (model, config.json fields, SHA-256, the run's metrics) and
  :func:`load_source` (a run directory, a model directory, or any file the loader accepts);
  :func:`apply_delta` rebuilds one from a delta and its base (the reading is
  :mod:`sam_l1dfl.model.delta`).
* :class:`ExportResult`, what each writer returns.
* :func:`provenance`, shared by the writers; :meth:`ExportSource.inputs` lists what the writers
  must not overwrite (checked with :func:`sam_l1dfl.io_utils.refuse_overwrite`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sam_l1dfl import __version__
from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import CONFIG_FILE, METRICS_FILE, MODEL_FILE
from sam_l1dfl.model.checkpoint import load_sam_med3d
from sam_l1dfl.model.delta import delta_meta, is_delta_file, read_delta_header
from sam_l1dfl.model.weights import read_model_meta, read_safetensors, resolve_model_path


# ---------------------------------------------------------------------------------- sources
@dataclass
class ExportSource:
    """A loaded model and everything known about where it came from."""

    model: Any  # SamMed3D
    meta: dict  # config.json fields other than format/version/model
    given: str  # what the user passed
    weights: Path  # the weights file (or model directory) actually read
    sha256: str  # of the weights file
    metrics: Optional[dict] = None  # runs/<name>/metrics.json, if found
    metrics_path: Optional[Path] = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config

    def inputs(self) -> list[Path]:
        """Paths that must never be overwritten by an export."""
        out = [self.weights]
        if self.weights.is_dir():
            out += [self.weights / MODEL_FILE, self.weights / CONFIG_FILE]
        return out


@dataclass
class ExportResult:
    format: str
    outputs: list[Path]
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"format: {self.format}"]
        for p in self.outputs:
            size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            lines.append(f"wrote:  {p} ({human_size(size)})")
        lines += self.notes
        return "\n".join(lines)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def find_metrics(weights: Path) -> Optional[Path]:
    """``metrics.json`` of the run: next to the weights, or one level up (``runs/<name>/``)."""
    d = weights if weights.is_dir() else weights.parent
    for cand in (d / METRICS_FILE, d.parent / METRICS_FILE):
        if cand.is_file():
            return cand
    return None


def default_meta(cfg) -> dict:
    """Preprocessing metadata for a checkpoint that carries none (e.g. an official ``.pth``)."""
    mode = "pet+ct" if cfg.in_chans == 2 else "pet"
    return {
        "input_mode": mode,
        "preprocess": IntensityConfig(input_mode=mode).to_dict(),
        "prompt_types": ["points"] + (["boxes"] if cfg.use_boxes else []),
        "loss": None,
        "training": None,
        "meta_source": "defaults: the checkpoint carried no preprocessing config",
    }


def load_source(checkpoint: "str | os.PathLike", trust: bool = False) -> ExportSource:
    """Load ``checkpoint`` (run dir, model dir, or any file ``load_sam_med3d`` accepts)."""
    weights = resolve_model_path(checkpoint)
    notes = []
    if weights != Path(checkpoint):
        notes.append(f"checkpoint: {checkpoint} -> {weights}")
    if weights.is_file() and is_delta_file(weights):
        raise CheckpointError(
            weights, "is a sam-l1dfl delta, not a full model; rebuild it first with --apply-delta DELTA --base BASE"
        )
    model = load_sam_med3d(weights, trust=trust)
    meta: dict = {}
    if weights.is_dir() or (weights.name == MODEL_FILE and (weights.parent / CONFIG_FILE).is_file()):
        meta = {k: v for k, v in read_model_meta(weights).items() if k not in ("format", "version", "model")}
    if not meta.get("preprocess"):
        meta = {**default_meta(model.config), **meta}
        notes.append("note: no preprocessing config stored with the weights; recorded the defaults")
    if (meta.get("training") or {}).get("best_is_initial"):
        notes.insert(0, f"WARNING: {weights} holds the STARTING weights, not a fine-tuned model (validation never "
                        "beat the model before training); export the run's last/ or train again")
    metrics_path = find_metrics(weights)
    metrics = None
    if metrics_path is not None:
        try:
            metrics = json.loads(metrics_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(metrics_path, f"not valid JSON ({exc})") from None
    return ExportSource(
        model=model,
        meta=meta,
        given=str(checkpoint),
        weights=weights,
        sha256=model.load_report.sha256,
        metrics=metrics,
        metrics_path=metrics_path,
        notes=notes,
    )


def as_source(source, trust: bool) -> ExportSource:
    return source if isinstance(source, ExportSource) else load_source(source, trust=trust)


def provenance(src: ExportSource, fmt: str) -> dict:
    """Where an export came from.  No date: the same model exports to the same bytes (the
    weights' SHA-256 and the toolkit version say which model and which writer)."""
    return {
        "format": fmt,
        "from": src.given,
        "weights": str(src.weights),
        "weights_sha256": src.sha256,
        "sam_l1dfl_version": __version__,
    }


def apply_delta(
    delta: "str | os.PathLike", base: "str | os.PathLike", trust: bool = False
) -> ExportSource:
    """Rebuild the full model from ``delta`` and its ``base``; refuses a base with another SHA-256."""
    delta = Path(delta)
    meta, metrics = delta_meta(delta, read_delta_header(delta))
    base = resolve_model_path(base)
    model = load_sam_med3d(delta, base=base, trust=trust)
    n = len(read_safetensors(delta, keys_only=True)[0])
    model.load_report.notes.append(f"delta applied: {delta} ({n} tensors)")
    return ExportSource(
        model=model,
        meta=meta,
        given=str(delta),
        weights=delta,
        sha256=model.load_report.sha256,
        metrics=metrics,
        notes=[f"delta: {n} tensors from {delta} on top of {base} (SHA-256 verified)"],
    )
