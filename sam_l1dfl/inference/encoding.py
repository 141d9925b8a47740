"""Step 3 of inference: cutting the crops and running the image encoder on them.

:class:`CropEncoder` fills each crop of a batch with the checkpoint's preprocessing
(:func:`~sam_l1dfl.data.preprocess.make_network_input`: one SimpleITK resampling per crop) and
runs the model's image encoder (fast attention path) on the batch, in bf16 autocast when asked
(CUDA only).  :func:`resolve_device` picks the device, :func:`autocast_context` and :func:`sync`
are shared with the decoder.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch

from sam_l1dfl.data.geometry import CropGeometry
from sam_l1dfl.data.io import Case
from sam_l1dfl.data.preprocess import IntensityConfig, make_network_input
from sam_l1dfl.errors import InputError

from .results import InferenceReport, stage_timer


def resolve_device(device) -> torch.device:
    """``device`` as a torch device; None or ``"auto"``: CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} requested but CUDA is not available")
    return dev


def autocast_context(enabled: bool):
    """bf16 CUDA autocast when ``enabled``, else nothing."""
    if enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that stage timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CropEncoder:
    """Crops of a case, encoded ``len(geometries)`` at a time by ``model`` on ``device``."""

    def __init__(self, model, preprocess: IntensityConfig, device: torch.device, autocast: bool = False):
        self.model = model
        self.preprocess = preprocess
        self.device = device
        self.autocast = autocast

    def sync(self) -> None:
        sync(self.device)

    def encode(self, case: Case, geometries: Sequence[CropGeometry], rep: InferenceReport) -> torch.Tensor:
        """Image embeddings (float32) of the crops of ``case`` at ``geometries``; times the ``crop``
        and ``encoder`` stages and counts the encoder passes in ``rep``."""
        with stage_timer(rep, "crop"):
            x = torch.stack([make_network_input(case, g, self.preprocess) for g in geometries]).to(self.device)
        with stage_timer(rep, "encoder", self.sync):
            with torch.inference_mode(), autocast_context(self.autocast):
                emb = self.model.encode(x).float()
        rep.encoder_passes += len(geometries)
        return emb


__all__ = ["CropEncoder", "autocast_context", "resolve_device", "sync"]
