"""The synthetic-pretrained stand-in SAM-Med3D shipped with the package.

``sam_l1dfl/resources/sam_med3d_standin/`` is an ordinary model directory (``model.safetensors``
+ ``config.json``, :func:`~sam_l1dfl.model.weights.save_model_dir`'s format) plus
``MODEL_CARD.md``.  It is the ``tiny`` architecture (the geometry of the real model at small
width: 128³ input, 16³ patches, 8³ token grid), pretrained from random weights by
``scripts/pretrain_standin.py`` on a broad synthetic cohort (:mod:`sam_l1dfl.data.cohort`), the
way the official SAM-Med3D trains.  It lets the whole path (zero-shot → fine-tune → better) run
and be measured offline; it is **not** a model for real images.

Anywhere a checkpoint is accepted, the word ``standin`` names it (:data:`STANDIN_NAME`,
:func:`is_standin_name`, resolved by :func:`~sam_l1dfl.model.weights.resolve_model_path`), whatever
the current directory holds: a folder called ``standin`` is used only when named as a path
(``./standin``, or a :class:`~pathlib.Path` in Python).  Every ``config.json`` we write
from it carries ``"weights_origin"`` (:func:`weights_origin`), so reports and model cards can say
which weights a result came from: ``turbo``, ``standin``, ``random`` or ``other``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import CONFIG_FILE, MODEL_FILE, WEIGHTS_FILE
from sam_l1dfl.io_utils import atomic_dir, sha256_file

STANDIN_NAME = "standin"
STANDIN_DIR = Path(__file__).resolve().parents[1] / "resources" / "sam_med3d_standin"
CARD_FILE = "MODEL_CARD.md"
MAX_BYTES = 5_000_000
#: What each weights origin means, in reports and model cards.
ORIGIN_WORDS = {
    "turbo": "the published SAM-Med3D-turbo weights",
    "standin": "the synthetic-pretrained STAND-IN model (synthetic images only; not SAM-Med3D's weights)",
    "random": "RANDOM initial weights (the numbers say nothing about SAM-Med3D)",
    "other": "a checkpoint of unrecorded origin",
}

_CARD = """# Stand-in SAM-Med3D (synthetic-only)

**What it is.** A SAM-Med3D model of the `tiny` architecture (our own classes; 128³ input,
16³ patches, encoder width 64, depth 4, decoder width 48; {n_params:,} parameters), **pretrained
from random weights on synthetic images only**, the way the official SAM-Med3D trains: the whole
model, {clicks} simulated clicks per sample, DiceCE loss, AdamW lr {lr:g}, {steps} steps of batch
{batch} ({samples:,} samples).  The weights are the best validated ones, from step {best_step}.

**Not for real images.** It has never seen a real scan. It exists so that the whole path of this
toolkit (zero-shot → fine-tune with L1DFL → better masks) runs, and can be measured, on any
machine without downloading the published SAM-Med3D-turbo weights. Numbers obtained with it say
how the *pipeline* behaves, not how SAM-Med3D behaves on patients.

**License of the weights:** {license}.

**Training data.** {cases} cases of the broad synthetic cohort (`sam_l1dfl.data.cohort` version
{cohort_version}, seed {seed}): {cohort}
It deliberately contains no PSMA PET phantom, so PSMA lesions are a domain shift for it, as they
are for the turbo weights (mostly CT and MRI organs).

**Validation** (held-out cohort crops, Dice after N simulated clicks): {val}.

**Size calibration** (zero-shot, one click per object, held-out cohort cases; median
predicted/reference volume per size bin, goal 0.5–2): {calibration}

**Rebuild.** `python scripts/pretrain_standin.py --cases {cases} --seed {seed} --install`
(seeded; resumable with `--resume`; `accelerate launch` for a GPU). Recipe: {recipe}.
Pretraining took {seconds:.0f} s on {machine}.

**Use.** `--checkpoint standin` in any command, or `sam_l1dfl.model.load_sam_med3d("standin")`.
Files: `model.safetensors` (float32, SHA-256 `{sha}`), `config.json` (architecture and the
preprocessing: PET, SAM-Med3D's z-score over voxels > 0, 1.5 mm, 128³).
"""


def is_standin_name(checkpoint: "str | os.PathLike | None") -> bool:
    """Whether ``checkpoint`` is the word ``standin`` (a ``str``; a ``Path`` is always a path):
    the packaged stand-in, even when the current directory holds a ``standin`` folder."""
    return isinstance(checkpoint, str) and checkpoint == STANDIN_NAME


def standin_available() -> bool:
    return (STANDIN_DIR / MODEL_FILE).is_file() and (STANDIN_DIR / CONFIG_FILE).is_file()


def weights_origin(meta: dict, path: "str | os.PathLike | None" = None) -> str:
    """``turbo``, ``standin``, ``random`` or ``other``: where the weights of a model directory
    (its config.json ``meta``; a fine-tuned model reports the origin it started from) or a file
    ``path`` came from."""
    meta = meta if isinstance(meta, dict) else {}
    start = (meta.get("training") or {}).get("start_from") or {}
    origin = meta.get("weights_origin") or start.get("weights_origin")  # a fine-tune keeps its start's origin
    if origin:
        return str(origin)
    if start and start.get("checkpoint") is None and "checkpoint" in start:
        return "random"
    if path is not None:
        p = Path(path).resolve()
        if p == STANDIN_DIR or STANDIN_DIR in p.parents:
            return "standin"
        if p.name == WEIGHTS_FILE:
            return "turbo"
    return "other"


#: The license of the weights of each origin, as the model card and ``sam-l1dfl serve`` state it.
#: SAM-Med3D (code and turbo weights) is published under Apache-2.0; the stand-in is ours, made
#: from synthetic data only.  Unknown weights get nnInteractive's marker, so viewers flag them.
WEIGHTS_LICENSES = {
    "turbo": "Apache-2.0 (SAM-Med3D-turbo weights, uni-medical/SAM-Med3D)",
    STANDIN_NAME: "Apache-2.0 (sam-l1dfl stand-in, trained on synthetic data only)",
    "random": "none (random initialisation)",
}


def weights_license(origin: str) -> str:
    """The license line of weights of ``origin`` (:func:`weights_origin`); ``!!MISSING!!`` when unknown."""
    return WEIGHTS_LICENSES.get(origin, "!!MISSING!!")


def _relative_paths(value, work: Path):
    """``value`` with every absolute path under ``work`` made relative to it, and any other absolute
    path replaced by None (a shipped config names no folder of the machine that made it)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, work) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return Path(value).resolve().relative_to(work.resolve()).as_posix() or "."
        except ValueError:
            return None
    return value


def install_standin(run_dir: "str | os.PathLike", *, cohort_cases: int, cohort_seed: int,
                    dest: "str | os.PathLike" = STANDIN_DIR, work: "str | os.PathLike | None" = None,
                    cohort: str = "", cohort_version: str = "", calibration: str = "not measured",
                    recipe: str = "") -> Path:
    """Copy ``run_dir/best`` into ``dest`` (atomically) with ``weights_origin: standin`` and the card.

    Paths in the copied config are made relative to ``work`` (the pretraining's work folder;
    default: the run folder's parent's parent), others dropped; ``cohort``, ``calibration`` and
    ``recipe`` are sentences for the model card."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    best = run / "best"
    if not (best / MODEL_FILE).is_file():
        raise CheckpointError(best, "no model.safetensors: the pretraining has not validated yet")
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("best_is_initial"):
        raise CheckpointError(best, "holds the starting (random) weights: no validation beat step 0; not installed")
    meta = json.loads((best / CONFIG_FILE).read_text())
    training = meta.get("training") or {}
    if "start_from" in training:  # the pretraining started from random weights; the stand-in itself is the origin
        training["pretrained_from"] = training.pop("start_from")
    work_dir = Path(work) if work is not None else run.resolve().parent.parent
    meta = _relative_paths(meta, work_dir)
    cfg = json.loads(json.dumps(meta.get("training", {})))
    meta["weights_origin"] = STANDIN_NAME
    meta["note"] = "synthetic-pretrained stand-in SAM-Med3D: not for real images (see MODEL_CARD.md)"
    n_params = sum(int(t.numel()) for t in load_file(str(best / MODEL_FILE)).values())
    size = (best / MODEL_FILE).stat().st_size
    if size > MAX_BYTES:
        raise CheckpointError(best / MODEL_FILE, f"{size} bytes: the stand-in must stay <= {MAX_BYTES}")
    val = metrics.get("best") or {}
    hist = {h["step"]: h for h in metrics.get("val_history", [])}
    at_best = hist.get(val.get("step"), {})
    val_txt = ", ".join(f"{k.replace('dice@', '')} click(s) {at_best[k]:.3f}" for k in ("dice@1", "dice@3", "dice@5")
                        if k in at_best) + f" at step {val.get('step')}"
    run_cfg = cfg.get("config", {}) if isinstance(cfg, dict) else {}
    train_cfg = run_cfg.get("train", {})
    card = _CARD.format(n_params=n_params, license=weights_license(STANDIN_NAME),
                        clicks=run_cfg.get("prompts", {}).get("clicks_per_sample", 11),
                        lr=run_cfg.get("optim", {}).get("lr", 0.0), steps=metrics.get("steps"),
                        batch=metrics.get("global_batch"),
                        samples=int(metrics.get("steps", 0)) * int(metrics.get("global_batch", 0)),
                        cases=cohort_cases, seed=cohort_seed, val=val_txt, best_step=val.get("step"),
                        cohort=cohort, cohort_version=cohort_version or "?", calibration=calibration,
                        recipe=recipe or "CPU, fp32",
                        seconds=float(metrics.get("train_seconds_logged", 0.0)),
                        machine=os.environ.get("SAM_L1DFL_MACHINE", "the machine recorded in BENCHMARKS.md"),
                        sha=sha256_file(best / MODEL_FILE))
    with atomic_dir(Path(dest)) as tmp:
        shutil.copyfile(best / MODEL_FILE, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / CARD_FILE).write_text(card)
    return Path(dest)


__all__ = ["WEIGHTS_LICENSES", "weights_license", "CARD_FILE", "MAX_BYTES", "ORIGIN_WORDS", "STANDIN_DIR", "STANDIN_NAME", "install_standin", "is_standin_name",
           "standin_available", "weights_origin"]
