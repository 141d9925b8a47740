"""Automatic whole-scan segmentation with a trained CNN, on the original PET grid.

    seg = AutoSegmenter("runs/cnn/cnn_unet/best")
    res = seg.segment(pet, ct)        # SimpleITK images in
    res.mask                          # UInt8 mask on the PET grid
    res.probability                   # Float32 lesion probability on the PET grid
    summary = seg.segment_dataset(cases, "out/")   # a data set: <case>.nii.gz + summary.json

Pipeline: the whole scan is resampled by SimpleITK onto a RAS+ grid at the model's spacing
(:func:`~sam_l1dfl.cnn.volumes.whole_image_geometry`, CT min-max / PET SUV as in training),
MONAI ``sliding_window_inference`` (crop size of the model, overlap 0.25, Gaussian blending)
gives the 2-class softmax, and ONE linear ``sitk.Resample`` maps the lesion probability back onto
the PET grid (:func:`~sam_l1dfl.data.geometry.crop_to_image`), thresholded there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from sam_l1dfl.cnn.config import cnn_config_from_dict
from sam_l1dfl.cnn.networks import build_network
from sam_l1dfl.cnn.volumes import network_channels, whole_image_geometry
from sam_l1dfl.data.geometry import crop_to_image, images_overlap
from sam_l1dfl.data.io import Case, CaseRecord, load_case
from sam_l1dfl.errors import CheckpointError, InputError, SamL1dflError
from sam_l1dfl.formats import CONFIG_FILE, MODEL_FILE
from sam_l1dfl.io_utils import write_image_atomic, write_json_atomic
from sam_l1dfl.model.weights import compare_state_dicts, describe_fit, resolve_model_path
from sam_l1dfl.progress import progress as show_progress

FORMAT = "sam-l1dfl-cnn"  # the "format" of a CNN model directory's config.json


def sliding_probability(net, image: np.ndarray, cfg, device) -> np.ndarray:
    """Foreground softmax probability ``(X, Y, Z)`` float32 of a whole ``(2, X, Y, Z)`` volume.

    MONAI ``sliding_window_inference`` with the crop size, overlap, blending and batch of ``cfg``
    (a :class:`~sam_l1dfl.cnn.config.CnnConfig`); used by :class:`AutoSegmenter` and by the
    trainer's validation.
    """
    import torch
    from monai.inferers import sliding_window_inference

    c = int(cfg.augment.crop_size)
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(x, (c, c, c), int(cfg.infer.sw_batch_size), net,
                                          overlap=float(cfg.infer.overlap), mode=cfg.infer.mode, padding_mode="constant",
                                          cval=0.0)
        logits = torch.as_tensor(logits).as_subclass(torch.Tensor)
        prob = torch.softmax(logits.float(), dim=1)[0, 1]
    return prob.cpu().numpy().astype(np.float32, copy=False)


@dataclass
class AutoResult:
    mask: "sitk.Image"
    probability: "sitk.Image"
    seconds: dict = field(default_factory=dict)

    @property
    def lesion_voxels(self) -> int:
        return int(sitk.GetArrayViewFromImage(self.mask).sum())

    def write(self, mask_path: "str | os.PathLike", prob_path: "str | os.PathLike | None" = None) -> None:
        """Write the mask (and, with ``prob_path``, the probability map) atomically."""
        write_image_atomic(self.mask, mask_path)
        if prob_path is not None:
            write_image_atomic(self.probability, prob_path)


@dataclass
class AutoDatasetSummary:
    """What :meth:`AutoSegmenter.segment_dataset` did; :meth:`to_dict` is its ``summary.json``."""

    checkpoint: "str | None"
    config: dict
    out_dir: str
    cases: list[dict] = field(default_factory=list)  # {"case", "lesion_voxels", "seconds"}
    failed: list[dict] = field(default_factory=list)  # {"case", "reason"}

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "cases": self.cases, "failed": self.failed, "config": self.config}


def load_cnn_dir(path: "str | os.PathLike", map_location: str = "cpu") -> tuple[Any, Any]:
    """``(network, CnnConfig)`` from a ``best/``/``last/`` directory written by :func:`train_cnn`,
    or from the run folder holding them (its ``best/``, else ``last/``: what ``infer`` does,
    :func:`~sam_l1dfl.model.weights.resolve_model_path`)."""
    from safetensors.torch import load_file

    p = resolve_model_path(path)
    if not p.is_dir():
        raise CheckpointError(p, "expected a CNN model directory (runs/cnn/<name>/best) with model.safetensors "
                                 "and config.json")
    cj, wf = p / CONFIG_FILE, p / MODEL_FILE
    for f in (cj, wf):
        if not f.is_file():
            raise CheckpointError(f, "missing (a CNN model directory holds model.safetensors and config.json)")
    try:
        meta = json.loads(cj.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(cj, f"unreadable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        hint = " (a SAM-Med3D model: use `sam-l1dfl infer`)" if fmt == "sam-l1dfl-model" else ""
        raise CheckpointError(cj, f"format is {fmt!r}, expected {FORMAT!r}{hint}")
    cfg = cnn_config_from_dict(meta["training"]["config"], source=str(cj))
    net = build_network(cfg.network.name, cfg.network.width, cfg.augment.crop_size, cfg.network.overrides)
    try:
        sd = load_file(str(wf), device=map_location)
    except Exception as exc:  # safetensors raises several types
        raise CheckpointError(wf, f"not a readable safetensors file ({str(exc).splitlines()[0][:150]})") from None
    problems = describe_fit(*compare_state_dicts(sd, net.state_dict()))
    if problems:
        raise CheckpointError(wf, f"weights do not fit the {cfg.network.name} of {CONFIG_FILE} "
                                  f"(width {cfg.network.width}, crop {cfg.augment.crop_size}): {problems}")
    net.load_state_dict(sd)
    return net, cfg


class AutoSegmenter:
    """Sliding-window CNN segmentation; ``checkpoint`` is a CNN model directory (or give ``model`` + ``cfg``)."""

    def __init__(self, checkpoint: "str | os.PathLike | None" = None, device=None, *, model=None, cfg=None,
                 threshold: "float | None" = None, overlap: "float | None" = None, sw_batch_size: "int | None" = None):
        import torch

        if model is None:
            if checkpoint is None:
                raise InputError(None, "give a CNN model directory (runs/cnn/<name>/best)")
            model, cfg = load_cnn_dir(checkpoint)
        elif cfg is None:
            raise InputError(None, "a model given directly needs its CnnConfig (cfg=...)")
        import copy

        cfg = copy.deepcopy(cfg)
        if threshold is not None:
            cfg.infer.threshold = float(threshold)
        if overlap is not None:
            cfg.infer.overlap = float(overlap)
        if sw_batch_size is not None:
            cfg.infer.sw_batch_size = int(sw_batch_size)
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.checkpoint = None if checkpoint is None else str(checkpoint)

    def segment(self, pet: "sitk.Image", ct: "sitk.Image") -> AutoResult:
        if not isinstance(pet, sitk.Image) or pet.GetDimension() != 3:
            raise InputError(None, "pet must be a 3D SimpleITK image")
        if ct is None:
            raise InputError(None, "the CNNs take CT + PET: a CT is required")
        if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
            raise InputError(None, "ct must be a 3D SimpleITK image")
        if not images_overlap(pet, ct):
            raise InputError(None, "the CT does not overlap the PET in world space (check the headers)")
        t0 = time.perf_counter()
        if pet.GetPixelID() != sitk.sitkFloat32:
            pet = sitk.Cast(pet, sitk.sitkFloat32)
        geom = whole_image_geometry(pet, self.cfg.preprocess.spacing)
        x = network_channels(Case(case_id="case", pet=pet, ct_native=ct), geom, self.cfg.preprocess)
        t1 = time.perf_counter()
        prob = sliding_probability(self.model, x, self.cfg, self.device)
        t2 = time.perf_counter()
        pimg = crop_to_image(prob, geom, pet, "linear", 0.0)
        a = sitk.GetArrayViewFromImage(pimg)
        mask = sitk.GetImageFromArray((a >= self.cfg.infer.threshold).astype(np.uint8))
        mask.CopyInformation(pet)
        t3 = time.perf_counter()
        return AutoResult(mask, pimg, {"resample_in": round(t1 - t0, 3), "network": round(t2 - t1, 3),
                                       "map_back": round(t3 - t2, 3)})

    def segment_dataset(self, cases: "Sequence[CaseRecord]", out_dir: "str | os.PathLike", *,
                        probabilities: bool = False, progress: bool = True) -> AutoDatasetSummary:
        """Segment every case (``sam-l1dfl infer-auto --data``) and write, atomically,
        ``<case>.nii.gz`` (and ``prob/<case>.nii.gz``) and ``summary.json`` into ``out_dir``.

        A case whose files are unusable is listed in ``failed`` with its one-line reason.
        """
        out = Path(out_dir)
        summary = AutoDatasetSummary(self.checkpoint, self.cfg.to_dict(), str(out))
        for rec in show_progress(cases, desc="infer-auto", unit="case", enabled=progress):
            try:
                case = load_case(rec, load_label=False)
                res = self.segment(case.pet, case.ct_native)
            except SamL1dflError as exc:
                summary.failed.append({"case": rec.case_id, "reason": str(exc)})
                continue
            res.write(out / f"{rec.case_id}.nii.gz", out / "prob" / f"{rec.case_id}.nii.gz" if probabilities else None)
            summary.cases.append({"case": rec.case_id, "lesion_voxels": res.lesion_voxels, "seconds": res.seconds})
        write_json_atomic(out / "summary.json", summary.to_dict())
        return summary


__all__ = ["FORMAT", "AutoDatasetSummary", "AutoResult", "AutoSegmenter", "load_cnn_dir", "sliding_probability"]
