"""The loader: any accepted checkpoint -> a fitted :class:`SamMed3D` with a :class:`LoadReport`.

:func:`read_checkpoint` dispatches on the file: a delta (:mod:`sam_l1dfl.model.delta`, applied
to its base) or a full checkpoint (:mod:`sam_l1dfl.model.weights`, which lists the accepted
inputs and the safe-unpickling rules).  :func:`load_sam_med3d` picks the config (given, stored
with the weights, or inferred from the key shapes), fits the state dict to it and builds the
model.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.model.config import SamMed3DConfig
from sam_l1dfl.model.delta import is_delta_file, read_delta_checkpoint
from sam_l1dfl.model.sam import SamMed3D
from sam_l1dfl.model.weights import (
    fit_error,
    fit_state_dict,
    infer_config,
    read_weights,
    resolve_model_path,
    skeleton,
    summarise_keys,
)


@dataclass
class LoadReport:
    """What :func:`load_sam_med3d` read and how it fitted the model."""

    path: str
    format: str
    sha256: str
    config: dict
    num_tensors: int
    num_values: int
    newly_initialized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"file:     {self.path}",
            f"format:   {self.format}",
            f"sha256:   {self.sha256}",
            f"tensors:  {self.num_tensors} ({self.num_values:,} values)",
        ]
        if self.newly_initialized:
            lines.append("newly initialised: " + ", ".join(self.newly_initialized))
        if self.missing:
            lines.append("missing (left at their initial values): " + summarise_keys(self.missing))
        if self.unexpected:
            lines.append("ignored (not in the model): " + summarise_keys(self.unexpected))
        lines += self.notes
        return "\n".join(lines)


def read_checkpoint(
    path: "str | os.PathLike", trust: bool = False, base: "str | os.PathLike | None" = None
) -> tuple[dict[str, torch.Tensor], str, Optional[SamMed3DConfig], str]:
    """Read any accepted checkpoint: ``(state_dict, format, config or None, sha256)``.

    A delta is applied to ``base`` (None: the base named in the delta, next to it); anything
    else is read by :func:`sam_l1dfl.model.weights.read_weights` (``base`` must be None).
    """
    path = resolve_model_path(path)
    if path.is_file() and is_delta_file(path):
        return read_delta_checkpoint(path, base=base, trust=trust)
    if base is not None:
        raise CheckpointError(path, "is not a sam-l1dfl delta; a base applies only to a delta")
    return read_weights(path, trust=trust)


def load_sam_med3d(
    path: "str | os.PathLike",
    cfg: "SamMed3DConfig | str | None" = None,
    map_location: "str | torch.device" = "cpu",
    trust: bool = False,
    strict: bool = True,
    attn_impl: str = "auto",
    base: "str | os.PathLike | None" = None,
) -> SamMed3D:
    """Load a SAM-Med3D model from any accepted checkpoint (see the module docstring).

    ``cfg`` None: the config stored with the weights, else inferred from the key shapes.
    ``strict``: every model key must come from the file (except the documented extensions:
    box embeddings copied from the positive point, zero-inflated extra input channels) and
    every file key must be used.  Shape mismatches are always an error.  The returned model is
    in eval mode, float32, on ``map_location``, with ``model.load_report`` (:class:`LoadReport`).
    ``base``: for a delta file, the checkpoint it applies to (None: the one named in the delta,
    next to it).
    """
    path = resolve_model_path(path)
    sd, fmt, stored_cfg, sha = read_checkpoint(path, trust=trust, base=base)
    if isinstance(cfg, str):
        cfg = SamMed3DConfig.preset(cfg)
    if cfg is not None:
        cfg_source = "given by the caller"
    elif stored_cfg is not None:
        cfg, cfg_source = stored_cfg, "stored with the weights"
    else:
        cfg, cfg_source = infer_config(sd, path), "inferred from the key shapes"
    empty = skeleton(cfg, attn_impl=attn_impl)
    expected = empty.state_dict()
    sd, new, missing, unexpected, mismatched = fit_state_dict(sd, expected)
    if mismatched or (strict and (missing or unexpected)):
        raise fit_error(path, missing, unexpected, mismatched)
    sd = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in sd.items() if k in expected}
    if missing:  # non-strict: start the missing tensors from a real initialisation
        model = SamMed3D(cfg, attn_impl=attn_impl)
        model.load_state_dict(sd, strict=False)
    else:
        model = empty
        model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(map_location).eval()
    notes = [f"config: {cfg_source}"]
    model.load_report = LoadReport(
        path=str(path),
        format=fmt,
        sha256=sha,
        config=cfg.to_dict(),
        num_tensors=len(sd),
        num_values=sum(v.numel() for v in sd.values()),
        newly_initialized=new,
        missing=missing,
        unexpected=unexpected,
        notes=notes,
    )
    return model
