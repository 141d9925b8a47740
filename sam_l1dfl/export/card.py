"""The model card (``README.md``) written next to a safetensors model directory or ONNX graphs."""

from __future__ import annotations

import json
from typing import Any, Optional

from sam_l1dfl.formats import METRICS_FILE
from sam_l1dfl.model.standin import ORIGIN_WORDS, STANDIN_NAME, weights_license, weights_origin

NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use.** This model is a research artefact. It has not been validated for "
    "diagnosis, treatment planning or any other clinical decision, and it is not a medical device."
)


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
    start = training.get("start_from") or {}
    lines = _intro(meta, start)
    lines += _training_data(tcfg, metrics, data_description)
    lines += _input_block(meta, cfg)
    lines += _training_block(meta, training, tcfg, start)
    lines += _metrics_block(metrics, training)
    lines += _architecture_block(cfg)
    lines += _closing_blocks(usage, files)
    return "\n".join(lines)


def _intro(meta: dict, start: dict) -> list[str]:
    """The title, the weights' origin, what the model is, the warning and the intended use."""
    origin = weights_origin(meta)
    is_standin = meta.get("weights_origin") == STANDIN_NAME and not start
    lines = ["# Stand-in SAM-Med3D (synthetic-only)" if is_standin else "# SAM-Med3D fine-tuned with sam-l1dfl", ""]
    if origin in (STANDIN_NAME, "random"):
        lines += [f"**Weights: {ORIGIN_WORDS[origin]}.**" + ("" if is_standin else " This model started from them."),
                  ""]
    lines += [
        ("A SAM-Med3D model (3D promptable segmentation) pretrained by the sam-l1dfl toolkit on synthetic "
         "images only, to stand in for the published weights offline (sam_l1dfl/resources/sam_med3d_standin/"
         "MODEL_CARD.md); not for real images." if is_standin else
         "A SAM-Med3D model (3D promptable segmentation) fine-tuned with the sam-l1dfl toolkit "
         "(L1-weighted Dice Focal Loss, Dzikunu et al., arXiv 2502.02756) for lesion segmentation "
         "in PSMA PET/CT."),
        "",
        NOT_FOR_CLINICAL_USE,
        "",
        f"**License of the weights:** {weights_license(origin)}.",
        "",
        "## Intended use",
        "",
        "Research on promptable 3D segmentation of PSMA-avid lesions: given a PET (and CT) volume "
        "and one or more point prompts (voxel indices of a 128³ crop at the model spacing), the "
        "model predicts the lesion mask.  Outputs must be reviewed by a qualified reader.  Out of "
        "scope: unsupervised or automated clinical use, other tracers or modalities than those "
        "listed below without re-validation, images whose preprocessing differs from the one below.",
        "",
    ]
    return lines


def _training_data(tcfg: dict, metrics: Optional[dict], data_description: Optional[str]) -> list[str]:
    """## Training data"""
    data = tcfg.get("data") or {}
    lines = ["## Training data", ""]
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
    return lines


def _input_block(meta: dict, cfg) -> list[str]:
    """## Input and preprocessing"""
    pre = meta.get("preprocess") or {}
    lines = []
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
    return lines


def _lora_line(lora: dict) -> str:
    """The LoRA settings a run's config.json records (``"lora"``, :meth:`sam_l1dfl.model.lora.EncoderLora.describe`)."""
    return (f"- LoRA on the image encoder (HF peft, merged into these weights): r {lora.get('r')}, "
            f"alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, targets {', '.join(lora.get('targets') or [])} "
            f"({lora.get('modules')} layers, {lora.get('parameters'):,} LoRA parameters"
            + (f"; {lora['trainable_in_all']:,} trainable in all)" if lora.get("trainable_in_all") else ")"))


def _training_block(meta: dict, training: dict, tcfg: dict, start: dict) -> list[str]:
    """## Training"""
    lines = []
    lines += ["## Training", ""]
    if start:
        lines.append(f"- started from: `{start.get('checkpoint')}`"
                     + (f" (SHA-256 `{start['sha256']}`)" if start.get("sha256") else "")
                     + (f"; weights: {ORIGIN_WORDS.get(start['weights_origin'], start['weights_origin'])}"
                        if start.get("weights_origin") else ""))
    loss = meta.get("loss")
    if loss:
        params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "name")
        lines.append(f"- loss: `{loss.get('name', '?')}`" + (f" ({params})" if params else ""))
    if tcfg:
        tr = tcfg.get("trainable") or {}
        parts = [k for k in ("mask_decoder", "prompt_encoder", "patch_embed", "full", "lora") if tr.get(k)]
        lines.append(f"- trained parts: {', '.join(parts) or '?'}")
        if meta.get("lora"):
            lines.append(_lora_line(meta["lora"]))
        opt, trn = tcfg.get("optim") or {}, tcfg.get("train") or {}
        lines.append(f"- optimiser: AdamW, lr {opt.get('lr')}, weight decay {opt.get('weight_decay')}; "
                     f"batch {trn.get('batch_size')} per process, {trn.get('epochs')} epochs"
                     + (f", at most {trn['max_steps']} steps" if trn.get("max_steps") else ""))
    if training.get("step") is not None:
        lines.append(f"- weights from optimizer step {training['step']}")
    if training.get("best_is_initial"):
        lines.append("- **WARNING: these are the starting weights.** No validation during training beat the "
                     "one before training, so `best/` was never replaced: this model is not fine-tuned.")
    if not (start or loss or tcfg):
        lines.append("- not recorded with the weights")
    lines.append("")
    return lines


def _metrics_block(metrics: Optional[dict], training: dict) -> list[str]:
    """## Metrics: validation Dice before, after and at the best step"""
    lines = []
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
    return lines


def _architecture_block(cfg) -> list[str]:
    """## Architecture"""
    lines = []
    lines += ["## Architecture", ""]
    lines.append("SAM-Med3D (`vit_b_ori` layout)" if cfg.matches_official_layout() and cfg.encoder_embed_dim == 768
                 else "SAM-Med3D variant")
    lines.append("")
    lines.append("```json")
    lines.append(json.dumps(cfg.to_dict(), indent=None))
    lines.append("```")
    lines.append("")
    return lines


def _closing_blocks(usage: Optional[str], files: Optional[dict]) -> list[str]:
    """## How to use, ## Files and ## References"""
    lines = []
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
    return lines
