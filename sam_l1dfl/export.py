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

Every output is written atomically (``sam_l1dfl.io_utils``); inputs are never modified, and an
output that would overwrite an input is refused.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from sam_l1dfl.errors import CheckpointError, ConfigError, SamL1dflError
from sam_l1dfl.io_utils import atomic_path, sha256_file, write_json_atomic, write_text_atomic
from sam_l1dfl.model.checkpoint import DELTA_FORMAT

FORMATS = ("sam-med3d", "safetensors", "delta", "onnx")
DELTA_VERSION = "1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
ENCODER_ONNX = "image_encoder.onnx"
DECODER_ONNX = "prompt_mask_decoder.onnx"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3
NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use.** This model is a research artefact. It has not been validated for "
    "diagnosis, treatment planning or any other clinical decision, and it is not a medical device."
)


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
            lines.append(f"wrote:  {p} ({_human(size)})")
        lines += self.notes
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def resolve_checkpoint(path: "str | os.PathLike") -> Path:
    """The weights to export for ``path``.

    A ``finetune.py`` run directory (``runs/<name>``, holding ``best/`` and/or ``last/``) gives
    its ``best/`` (``last/`` if there is no ``best/``); a model directory or a file is returned
    as is.
    """
    from sam_l1dfl.model.checkpoint import resolve_model_path

    return resolve_model_path(path)


def _find_metrics(weights: Path) -> Optional[Path]:
    """``metrics.json`` of the run: next to the weights, or one level up (``runs/<name>/``)."""
    d = weights if weights.is_dir() else weights.parent
    for cand in (d / METRICS_FILE, d.parent / METRICS_FILE):
        if cand.is_file():
            return cand
    return None


def default_meta(cfg) -> dict:
    """Preprocessing metadata for a checkpoint that carries none (e.g. an official ``.pth``)."""
    from sam_l1dfl.data.preprocess import IntensityConfig

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
    from sam_l1dfl.model import load_sam_med3d, read_model_meta

    weights = resolve_checkpoint(checkpoint)
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
    metrics_path = _find_metrics(weights)
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


def _as_source(source, trust: bool) -> ExportSource:
    return source if isinstance(source, ExportSource) else load_source(source, trust=trust)


def _refuse_overwrite(out: Path, inputs, writes=()) -> None:
    """Refuse an output that is, or would write over, one of the inputs."""
    o = out.resolve()
    targets = {o} | {(o / w) for w in writes}
    for p in inputs:
        if p is not None and Path(p).exists() and Path(p).resolve() in targets:
            raise CheckpointError(out, f"would overwrite the input {p}; choose another --out")


def _provenance(src: ExportSource, fmt: str) -> dict:
    from sam_l1dfl import __version__

    return {
        "format": fmt,
        "from": src.given,
        "weights": str(src.weights),
        "weights_sha256": src.sha256,
        "sam_l1dfl_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------------------------- sam-med3d
def export_sam_med3d(
    source, out: "str | os.PathLike", drop_boxes: bool = False, trust: bool = False
) -> ExportResult:
    """Write ``{"model_state_dict": ...}`` in the official layout (plain tensors only)."""
    from sam_l1dfl.model import official_state_dict

    src = _as_source(source, trust)
    out = Path(out)
    _refuse_overwrite(out, src.inputs())
    if out.is_dir():
        raise CheckpointError(out, "is a directory; the sam-med3d format is a single .pth file")
    try:
        sd = official_state_dict(src.model, drop_boxes=drop_boxes)
    except CheckpointError as exc:
        raise CheckpointError(src.given, exc.problem) from None
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    with atomic_path(out) as tmp:
        torch.save({"model_state_dict": sd}, tmp)
    notes = [f"tensors: {len(sd)} in the official SAM-Med3D layout (torch.load(weights_only=True) reads it)"]
    if drop_boxes and src.config.use_boxes:
        notes.append("dropped: prompt_encoder.point_embeddings.2/3 (box corners)")
    notes.append("not kept: preprocessing config, training summary (the official format has no place for them)")
    return ExportResult("sam-med3d", [out], src.notes + notes)


# ---------------------------------------------------------------------------------- safetensors
def _fmt(v: Any, nd: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def model_card(
    meta: dict,
    cfg,
    metrics: Optional[dict] = None,
    files: Optional[dict] = None,
    data_description: Optional[str] = None,
    usage: Optional[str] = None,
) -> str:
    """Markdown model card from the run's config.json fields and ``metrics.json``."""
    training = meta.get("training") or {}
    tcfg = training.get("config") or {}
    data = tcfg.get("data") or {}
    pre = meta.get("preprocess") or {}
    start = training.get("start_from") or {}
    lines = ["# SAM-Med3D fine-tuned with sam-l1dfl", ""]
    lines += [
        "A SAM-Med3D model (3D promptable segmentation) fine-tuned with the sam-l1dfl toolkit "
        "(L1-weighted Dice Focal Loss, Dzikunu et al., arXiv 2502.02756) for lesion segmentation "
        "in PSMA PET/CT.",
        "",
        NOT_FOR_CLINICAL_USE,
        "",
        "## Intended use",
        "",
        "Research on promptable 3D segmentation of PSMA-avid lesions: given a PET (and CT) volume "
        "and one or more point prompts (voxel indices of a 128³ crop at the model spacing), the "
        "model predicts the lesion mask.  Outputs must be reviewed by a qualified reader.  Out of "
        "scope: unsupervised or automated clinical use, other tracers or modalities than those "
        "listed below without re-validation, images whose preprocessing differs from the one below.",
        "",
        "## Training data",
        "",
    ]
    if data_description:
        lines += [data_description.strip(), ""]
    if tcfg:
        lines.append(f"- training cases: `{data.get('root', '?')}`"
                     + (f", validation cases: `{data['val_root']}`" if data.get("val_root") else
                        f", validation: {data.get('val_fraction', '?')} of the cases held out"
                        + (f" ({len(data['val_cases'])} listed cases)" if data.get("val_cases") else "")))
        if data.get("cluster_mm") is not None:
            lines.append(f"- lesions closer than {data['cluster_mm']} mm cropped together")
    else:
        lines.append("- not recorded with the weights")
    if not data_description:
        lines.append("- cohort, scanners, tracer and annotation protocol: not recorded by the run; "
                     "describe them here before sharing (`sam-l1dfl export --data-description`).")
    if metrics and metrics.get("per_lesion_after"):
        lines.append(f"- validation lesions: {len(metrics['per_lesion_after'])}")
    lines.append("")
    lines += ["## Input and preprocessing", ""]
    lines.append(f"- input mode: `{meta.get('input_mode', '?')}` ({cfg.in_chans} channel(s))")
    if pre:
        lines.append(f"- crop: {pre.get('crop_size', cfg.img_size)}³ voxels at {pre.get('spacing', '?')} mm "
                     "isotropic, RAS+ world-aligned (docs/architecture.md)")
        lines.append(f"- PET normalisation: `{pre.get('pet_normalization', '?')}`"
                     + (f", SUV clip {pre['pet_suv_clip']}" if pre.get("pet_suv_clip") is not None else "")
                     + f", SUV scale {pre.get('pet_suv_scale', '?')}")
        if meta.get("input_mode") in ("ct", "pet+ct"):
            lines.append(f"- CT clip: {pre.get('ct_clip')} HU")
        lines.append(f"- interpolation: {pre.get('interpolation', '?')}")
    if meta.get("meta_source"):
        lines.append(f"- note: {meta['meta_source']}")
    lines.append(f"- prompt types: {', '.join(meta.get('prompt_types') or ['points'])}")
    lines.append("")
    lines += ["## Training", ""]
    if start:
        lines.append(f"- started from: `{start.get('checkpoint')}`"
                     + (f" (SHA-256 `{start['sha256']}`)" if start.get("sha256") else ""))
    loss = meta.get("loss")
    if loss:
        params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "name")
        lines.append(f"- loss: `{loss.get('name', '?')}`" + (f" ({params})" if params else ""))
    if tcfg:
        tr = tcfg.get("trainable") or {}
        parts = [k for k in ("mask_decoder", "prompt_encoder", "patch_embed", "full") if tr.get(k)]
        lines.append(f"- trained parts: {', '.join(parts) or '?'}")
        opt, trn = tcfg.get("optim") or {}, tcfg.get("train") or {}
        lines.append(f"- optimiser: AdamW, lr {opt.get('lr')}, weight decay {opt.get('weight_decay')}; "
                     f"batch {trn.get('batch_size')} per process, {trn.get('epochs')} epochs"
                     + (f", at most {trn['max_steps']} steps" if trn.get("max_steps") else ""))
    if training.get("step") is not None:
        lines.append(f"- weights from optimizer step {training['step']}")
    if not (start or loss or tcfg):
        lines.append("- not recorded with the weights")
    lines.append("")
    lines += ["## Metrics", ""]
    rows = []
    if metrics:
        for label, key in (("before fine-tuning", "dice_before"), ("after fine-tuning (last)", "dice_after")):
            d = metrics.get(key) or {}
            if d:
                rows.append((label, d))
        best = metrics.get("best") or {}
        if best.get("dice@1") is not None:
            rows.append((f"best (step {best.get('step')})", {"dice@1": best["dice@1"]}))
    elif training.get("val_dice"):
        rows.append((f"at step {training.get('step')}", training["val_dice"]))
    if rows:
        keys = sorted({k for _, d in rows for k in d if k.startswith("dice@")}, key=lambda s: int(s.split("@")[1]))
        lines.append("Validation Dice per lesion crop after n clicks (simulated clicks, `dice@n`):")
        lines.append("")
        lines.append("| checkpoint | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        for label, d in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(d[k]) if k in d else "" for k in keys) + " |")
        if metrics:
            lines.append("")
            lines.append(f"From the run's `{METRICS_FILE}` ({metrics.get('steps', '?')} steps).")
    else:
        lines.append("No metrics were recorded with these weights.")
    lines.append("")
    lines += ["## Architecture", ""]
    lines.append("SAM-Med3D (`vit_b_ori` layout)" if cfg.matches_official_layout() and cfg.encoder_embed_dim == 768
                 else "SAM-Med3D variant")
    lines.append("")
    lines.append("```json")
    lines.append(json.dumps(cfg.to_dict(), indent=None))
    lines.append("```")
    lines.append("")
    if usage:
        lines += ["## How to use", "", usage.strip(), ""]
    if files:
        lines += ["## Files", "", "| file | SHA-256 |", "|---|---|"]
        lines += [f"| `{name}` | `{sha}` |" for name, sha in files.items()]
        lines.append("")
    lines += [
        "## References",
        "",
        "- SAM-Med3D: Wang et al., *SAM-Med3D: Towards General-purpose Segmentation Models for "
        "Volumetric Medical Images*, arXiv 2310.15161.",
        "- L1DFL: Dzikunu et al., arXiv 2502.02756.",
        "",
    ]
    return "\n".join(lines)


_SAFETENSORS_USAGE = """\
```python
from sam_l1dfl.model import load_sam_med3d, read_model_meta
model = load_sam_med3d("THIS_DIR")          # config stored with the weights
meta = read_model_meta("THIS_DIR")          # input_mode, preprocess, prompt_types, ...
```
or `sam-l1dfl infer --checkpoint THIS_DIR ...`.  The weights use the official SAM-Med3D key names
(`safetensors.torch.load_file("THIS_DIR/model.safetensors")`)."""


def export_safetensors(
    source,
    out_dir: "str | os.PathLike",
    trust: bool = False,
    data_description: Optional[str] = None,
) -> ExportResult:
    """Write a model directory: ``model.safetensors``, ``config.json``, ``README.md``."""
    from sam_l1dfl.model import save_model_dir

    src = _as_source(source, trust)
    out = Path(out_dir)
    _refuse_overwrite(out, src.inputs(), (MODEL_FILE, CONFIG_FILE, CARD_FILE))
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, "exists and is not a directory; the safetensors format is a directory")
    meta = dict(src.meta)
    meta["export"] = _provenance(src, "safetensors")
    if src.metrics is not None:
        meta["metrics_summary"] = {
            k: src.metrics[k] for k in ("steps", "dice_before", "dice_after", "best") if k in src.metrics
        }
    if data_description:
        meta["data_description"] = data_description
    save_model_dir(src.model, out, meta)
    files = {MODEL_FILE: sha256_file(out / MODEL_FILE), CONFIG_FILE: sha256_file(out / CONFIG_FILE)}
    card = model_card(meta, src.config, src.metrics, files, data_description or src.meta.get("data_description"),
                      usage=_SAFETENSORS_USAGE.replace("THIS_DIR", out.name))
    write_text_atomic(out / CARD_FILE, card)
    notes = ["kept: all weights, model config, input mode, preprocessing, prompt types, loss, training summary"]
    if src.metrics_path:
        notes.append(f"model card metrics from {src.metrics_path}")
    return ExportResult("safetensors", [out], src.notes + notes)


# ---------------------------------------------------------------------------------- delta
def is_delta_file(path: "str | os.PathLike") -> bool:
    """True for a ``.safetensors`` file written by :func:`export_delta` (cheap: header only)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == DELTA_FORMAT
    except Exception:
        return False


def _weights_file(path: Path) -> Path:
    return path / MODEL_FILE if path.is_dir() else path


def export_delta(
    source,
    base: "str | os.PathLike",
    out: "str | os.PathLike",
    trust: bool = False,
    trust_base: bool = False,
) -> ExportResult:
    """Write only the tensors that differ from ``base`` (+ base SHA-256 and config) to ``out``."""
    from safetensors.torch import save_file

    from sam_l1dfl.model import load_sam_med3d

    src = _as_source(source, trust)
    out = Path(out)
    base = resolve_checkpoint(base)
    _refuse_overwrite(out, src.inputs() + [base, _weights_file(base)])
    if out.is_dir():
        raise CheckpointError(out, "is a directory; the delta format is a single .safetensors file")
    if is_delta_file(_weights_file(base)):
        raise CheckpointError(base, "is itself a delta; give the full base checkpoint")
    cfg = src.config
    try:
        base_model = load_sam_med3d(base, cfg=cfg, trust=trust_base)
    except CheckpointError as exc:
        raise CheckpointError(base, f"cannot serve as the base of this model: {exc.problem}") from None
    base_sd = base_model.state_dict()
    delta = {}
    for k, v in src.model.state_dict().items():
        b = base_sd.get(k)
        if b is None or b.shape != v.shape or b.dtype != v.dtype or not torch.equal(b, v):
            delta[k] = v.detach().cpu().contiguous().clone()
    total = sum(v.numel() * v.element_size() for v in src.model.state_dict().values())
    size = sum(v.numel() * v.element_size() for v in delta.values())
    groups = sorted({k.split(".", 1)[0] for k in delta})
    meta = dict(src.meta)
    meta["export"] = _provenance(src, "delta")
    md = {
        "format": DELTA_FORMAT,
        "version": DELTA_VERSION,
        "base_sha256": base_model.load_report.sha256,
        "base_file": _weights_file(base).name if not base.is_dir() else base.name + "/" + MODEL_FILE,
        "base_format": base_model.load_report.format,
        "model_config": json.dumps(cfg.to_dict()),
        "meta": json.dumps(meta),
        "full_tensors": str(len(base_sd)),
    }
    if src.metrics is not None:
        md["metrics"] = json.dumps({k: src.metrics[k] for k in ("steps", "dice_before", "dice_after", "best")
                                    if k in src.metrics})
    with atomic_path(out) as tmp:
        save_file(delta, str(tmp), metadata=md)
    notes = [
        f"delta: {len(delta)} of {len(base_sd)} tensors differ from the base ({', '.join(groups) or 'none'}); "
        f"{size / max(total, 1):.1%} of the model's bytes",
        f"base:  {base} (SHA-256 {md['base_sha256']})",
        "kept: changed tensors, model config, preprocessing and training summary; needs the exact base file",
    ]
    if not delta:
        notes.append("warning: the model equals its base; the delta holds no tensors")
    return ExportResult("delta", [out], src.notes + notes,
                        info={"tensors": len(delta), "bytes_fraction": size / max(total, 1), "groups": groups})


def _delta_header(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            md = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None
    if md.get("format") != DELTA_FORMAT:
        raise CheckpointError(path, f"is not a sam-l1dfl delta (no \"format\": \"{DELTA_FORMAT}\" in its metadata)")
    if md.get("version") != DELTA_VERSION:
        raise CheckpointError(path, f"delta format version {md.get('version')!r} is not supported (expected {DELTA_VERSION})")
    for k in ("base_sha256", "model_config", "meta"):
        if k not in md:
            raise CheckpointError(path, f"delta metadata lacks {k!r}")
    return md


def apply_delta(
    delta: "str | os.PathLike", base: "str | os.PathLike", trust: bool = False
) -> ExportSource:
    """Rebuild the full model from ``delta`` and its ``base``; refuses a base with another SHA-256."""
    from safetensors import SafetensorError, safe_open

    from sam_l1dfl.model import SamMed3DConfig, load_sam_med3d

    delta = Path(delta)
    if not delta.is_file():
        raise CheckpointError(delta, "no such file" if not delta.exists() else "not a regular file")
    md = _delta_header(delta)
    base = resolve_checkpoint(base)
    try:
        cfg = SamMed3DConfig.from_dict(json.loads(md["model_config"]), source=str(delta))
        meta = json.loads(md["meta"])
        metrics = json.loads(md["metrics"]) if "metrics" in md else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(delta, f"delta metadata is not valid JSON ({exc})") from None
    bfile = _weights_file(base)
    if not bfile.is_file():
        raise CheckpointError(base, f"no {MODEL_FILE} in this directory")
    sha = sha256_file(bfile)  # checked before anything is unpickled
    if sha != md["base_sha256"]:
        raise CheckpointError(
            base,
            f"SHA-256 {sha[:16]}... does not match the delta's base {md['base_sha256'][:16]}... "
            f"({md.get('base_file', '?')}); the delta applies only on top of that exact file",
        )
    model = load_sam_med3d(base, cfg=cfg, trust=trust)
    sd = model.state_dict()
    try:
        with safe_open(str(delta), framework="pt", device="cpu") as f:
            upd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(delta, f"not a readable safetensors file ({exc})") from None
    unknown = [k for k in upd if k not in sd]
    bad = [k for k in upd if k in sd and (upd[k].shape != sd[k].shape)]
    if unknown or bad:
        what = (f"unknown keys {unknown[:4]}" if unknown else "") + (
            f"{'; ' if unknown else ''}shape mismatches {bad[:4]}" if bad else "")
        raise CheckpointError(delta, f"does not fit its model config: {what}")
    sd.update(upd)
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.load_report.notes.append(f"delta applied: {delta} ({len(upd)} tensors)")
    return ExportSource(
        model=model,
        meta=meta,
        given=str(delta),
        weights=delta,
        sha256=sha256_file(delta),
        metrics=metrics,
        notes=[f"delta: {len(upd)} tensors from {delta} on top of {base} (SHA-256 verified)"],
    )


def read_delta_checkpoint(
    path: "str | os.PathLike", base: "str | os.PathLike | None" = None, trust: bool = False
):
    """Loader hook: ``(state_dict, format, config, sha256)`` of a delta applied to its base.

    ``base`` None: the file named in the delta's metadata, looked up next to the delta.  Shaped
    like :func:`sam_l1dfl.model.checkpoint.read_checkpoint` so the loader can call it when it
    meets a delta file.
    """
    path = Path(path)
    md = _delta_header(path)
    if base is None:
        cand = path.parent / md.get("base_file", "")
        if not md.get("base_file") or not cand.exists():
            raise CheckpointError(
                path, f"is a sam-l1dfl delta on top of {md.get('base_file', '?')} (SHA-256 "
                f"{md['base_sha256'][:16]}...); give that base (sam-l1dfl export --apply-delta DELTA --base BASE)"
            )
        base = cand
    src = apply_delta(path, base, trust=trust)
    sd = {k: v.detach() for k, v in src.model.state_dict().items()}
    return sd, f"sam-l1dfl delta on {Path(base).name}", src.config, src.sha256


# ---------------------------------------------------------------------------------- onnx
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
    from tqdm.auto import tqdm

    src = _as_source(source, trust)
    out = Path(out_dir)
    _refuse_overwrite(out, src.inputs(), (ENCODER_ONNX, DECODER_ONNX, CONFIG_FILE, CARD_FILE))
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, "exists and is not a directory; the onnx format is a directory")
    out.mkdir(parents=True, exist_ok=True)
    model = src.model.float().cpu().eval()
    cfg = model.config
    old_impl = model.image_encoder.attn_impl
    model.image_encoder.attn_impl = "fast"
    steps = ["image encoder", "prompt + mask decoder"] + (["verify (onnxruntime)"] if verify else [])
    bar = tqdm(total=len(steps), desc="onnx export", disable=not progress, unit="step")
    info: dict = {"opset": opset, "exporter": "torch.onnx.export(dynamo=False)", "torch": torch.__version__}
    try:
        import warnings

        bar.set_postfix_str(steps[0])
        image = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size,
                            generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings: the grid size is fixed by design
            with atomic_path(out / ENCODER_ONNX) as tmp:
                torch.onnx.export(
                    _EncoderOnnx(model), (image,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=["image"], output_names=["image_embeddings"],
                    dynamic_axes={"image": {0: "batch"}, "image_embeddings": {0: "batch"}},
                )
            bar.update()
            bar.set_postfix_str(steps[1])
            dec_in = _onnx_inputs(cfg)
            with atomic_path(out / DECODER_ONNX) as tmp:
                torch.onnx.export(
                    _PromptMaskDecoderOnnx(model), dec_in, str(tmp), dynamo=False, opset_version=opset,
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
    meta = dict(src.meta)
    meta["export"] = _provenance(src, "onnx")
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
    doc = {"format": "sam-l1dfl-onnx", "version": 1, **meta, "model": cfg.to_dict()}
    write_json_atomic(out / CONFIG_FILE, doc)
    files = {n: sha256_file(out / n) for n in (ENCODER_ONNX, DECODER_ONNX, CONFIG_FILE)}
    usage = ("Two onnxruntime sessions: `image_encoder.onnx` once per crop, then "
             "`prompt_mask_decoder.onnx` per prompt set; see `onnx/README.md` of the sam-l1dfl "
             "repository for the call sequence in plain numpy.  Preprocess exactly as `config.json` "
             "says (`input_mode`, `preprocess`).")
    write_text_atomic(out / CARD_FILE, model_card(meta, cfg, src.metrics, files,
                                                  data_description or src.meta.get("data_description"), usage))
    notes = ["kept: weights as two graphs (fast encoder path), model config, preprocessing, training summary"]
    if verify:
        v = info["verification"]
        notes.append(f"verified with onnxruntime {v['onnxruntime']}: image embeddings max |diff| "
                     f"{v['encoder_max_abs']:.2e}, low-res masks max |diff| {v['masks_max_abs']:.2e} "
                     f"(end to end {v['end_to_end_masks_max_abs']:.2e}; tolerance {ONNX_TOLERANCE})")
    return ExportResult("onnx", [out / ENCODER_ONNX, out / DECODER_ONNX, out / CONFIG_FILE, out / CARD_FILE],
                        src.notes + notes, info=info)


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


# ---------------------------------------------------------------------------------- dispatch
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
    src = _as_source(checkpoint, trust)
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
]
