"""Reading a delta: a ``.safetensors`` file with only the tensors that differ from a base.

Written by :func:`sam_l1dfl.export.export_delta`; its metadata holds ``"format":
"sam-l1dfl-delta"``, the version, the base file's SHA-256 and name, the model config and the
run's config.json fields.  The loader (:func:`sam_l1dfl.model.checkpoint.read_checkpoint`,
and so :func:`~sam_l1dfl.model.checkpoint.load_sam_med3d`) calls :func:`read_delta_checkpoint`
when it meets one: the base is checked by checksum before anything is unpickled, fitted to the
delta's model config exactly as the loader fits a full checkpoint, and the delta's tensors
replace the base's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import DELTA_FORMAT, DELTA_VERSION, MODEL_FILE
from sam_l1dfl.io_utils import sha256_file
from sam_l1dfl.model.config import SamMed3DConfig
from sam_l1dfl.model.lora import apply_lora_delta
from sam_l1dfl.model.weights import (
    fit_error,
    fit_state_dict,
    read_safetensors,
    read_weights,
    resolve_model_path,
    skeleton,
)


def weights_file(path: Path) -> Path:
    """The file a checkpoint path stands for (a model directory's ``model.safetensors``)."""
    return path / MODEL_FILE if path.is_dir() else path


def is_delta_file(path: "str | os.PathLike") -> bool:
    """True for a ``.safetensors`` file written by ``export_delta`` (cheap: header only)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == DELTA_FORMAT
    except Exception:
        return False


def read_delta_header(path: "str | os.PathLike") -> dict:
    """The delta's metadata (all strings), checked for format, version and required keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file" if not path.exists() else "not a regular file")
    md = read_safetensors(path, keys_only=True)[1]
    if md.get("format") != DELTA_FORMAT:
        raise CheckpointError(path, f"is not a sam-l1dfl delta (no \"format\": \"{DELTA_FORMAT}\" in its metadata)")
    if md.get("version") != DELTA_VERSION:
        raise CheckpointError(path, f"delta format version {md.get('version')!r} is not supported (expected {DELTA_VERSION})")
    for k in ("base_sha256", "model_config", "meta"):
        if k not in md:
            raise CheckpointError(path, f"delta metadata lacks {k!r}")
    return md


def delta_config(path: "str | os.PathLike", md: dict) -> SamMed3DConfig:
    """The model config stored in a delta's metadata ``md``."""
    try:
        return SamMed3DConfig.from_dict(json.loads(md["model_config"]), source=str(path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"delta metadata is not valid JSON ({exc})") from None


def _base_path(path: Path, md: dict, base: "str | os.PathLike | None") -> Path:
    if base is not None:
        return resolve_model_path(base)
    cand = path.parent / md.get("base_file", "")
    if not md.get("base_file") or not cand.exists():
        raise CheckpointError(
            path, f"is a sam-l1dfl delta on top of {md.get('base_file', '?')} (SHA-256 "
            f"{md['base_sha256'][:16]}...); give that base (sam-l1dfl export --apply-delta DELTA --base BASE)"
        )
    return resolve_model_path(cand)


def read_delta_checkpoint(
    path: "str | os.PathLike", base: "str | os.PathLike | None" = None, trust: bool = False
) -> tuple[dict[str, torch.Tensor], str, SamMed3DConfig, str]:
    """``(state_dict, format, config, sha256)`` of a delta applied to its base.

    ``base`` None: the file named in the delta's metadata, looked up next to the delta.  A base
    whose SHA-256 differs from the one recorded is refused before it is read.  The SHA-256
    returned is the delta's.  Shaped like :func:`sam_l1dfl.model.weights.read_weights`.
    """
    path = Path(path)
    md = read_delta_header(path)
    cfg = delta_config(path, md)
    base = _base_path(path, md, base)
    bfile = weights_file(base)
    if not bfile.is_file():
        raise CheckpointError(base, f"no {MODEL_FILE} in this directory")
    sha = sha256_file(bfile)  # checked before anything is unpickled
    if sha != md["base_sha256"]:
        raise CheckpointError(
            base,
            f"SHA-256 {sha[:16]}... does not match the delta's base {md['base_sha256'][:16]}... "
            f"({md.get('base_file', '?')}); the delta applies only on top of that exact file",
        )
    if is_delta_file(bfile):
        raise CheckpointError(base, "is itself a delta; give the full base checkpoint")
    base_sd = read_weights(base, trust=trust)[0]
    expected = skeleton(cfg).state_dict()
    sd, _, missing, unexpected, mismatched = fit_state_dict(base_sd, expected)
    if missing or unexpected or mismatched:
        raise fit_error(base, missing, unexpected, mismatched)
    upd = read_safetensors(path)[0]
    if "lora" in md:  # a LoRA run: its factors merged into the base's encoder weights first (peft)
        sd, upd = apply_lora_delta(sd, upd, cfg, md["lora"], path)
    unknown = [k for k in upd if k not in expected]
    bad = [k for k in upd if k in expected and upd[k].shape != expected[k].shape]
    if unknown or bad:
        what = (f"unknown keys {unknown[:4]}" if unknown else "") + (
            f"{'; ' if unknown else ''}shape mismatches {bad[:4]}" if bad else "")
        raise CheckpointError(path, f"does not fit its model config: {what}")
    sd.update(upd)
    sd = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd, f"sam-l1dfl delta on {base.name}", cfg, sha256_file(path)


def delta_meta(path: "str | os.PathLike", md: Optional[dict] = None) -> tuple[dict, Optional[dict]]:
    """``(meta, metrics summary or None)``: the run's config.json fields stored in a delta."""
    md = md if md is not None else read_delta_header(path)
    try:
        return json.loads(md["meta"]), (json.loads(md["metrics"]) if "metrics" in md else None)
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"delta metadata is not valid JSON ({exc})") from None
