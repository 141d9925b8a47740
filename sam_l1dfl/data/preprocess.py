"""Network inputs: intensity normalisation and crops on the RAS+ network grid.

:class:`IntensityConfig` is recorded in the model directory's ``config.json`` (``"preprocess"``)
so inference normalises exactly like training.

* PET default (``pet_normalization="zscore_positive"``) is what SAM-Med3D was trained with
  (TorchIO ``ZNormalization(masking_method=x > 0)`` after ``CropOrPad``): the crop is zero-padded
  outside the image, then mean and standard deviation are taken over the crop voxels > 0 and
  applied to every voxel.  ``pet_suv_clip`` optionally clips SUV to ``[0, pet_suv_clip]`` first;
  ``"suv_scale"`` divides by ``pet_suv_scale`` instead of z-scoring; ``"zscore"`` uses all voxels.
* CT: clamp to ``ct_clip`` (default [-1000, 1000] HU; padding is -1024 so it lands on -1000), then
  z-score over the crop.
* ``input_mode``: ``pet`` (1 channel), ``ct`` (1), ``pet+ct`` (2: PET then CT).

Each channel is ONE ``sitk.Resample`` from the native image onto the crop grid (linear); the CT is
not first resampled onto the PET grid, so it is interpolated once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from sam_l1dfl.data.geometry import (DEFAULT_SIZE, DEFAULT_SPACING, CropGeometry, image_index_to_world,
                                     resample_to_crop)
from sam_l1dfl.data.io import Case
from sam_l1dfl.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk
    import torch

INPUT_MODES = ("pet", "ct", "pet+ct")
PET_NORMALIZATIONS = ("zscore_positive", "zscore", "suv_scale")
PET_PAD = 0.0
CT_PAD = -1024.0


@dataclass(frozen=True)
class IntensityConfig:
    input_mode: str = "pet"
    spacing: float = DEFAULT_SPACING
    crop_size: int = DEFAULT_SIZE
    pet_normalization: str = "zscore_positive"
    pet_suv_clip: float | None = None
    pet_suv_scale: float = 10.0
    ct_clip: tuple[float, float] = (-1000.0, 1000.0)
    interpolation: str = "linear"

    def __post_init__(self):
        if self.input_mode not in INPUT_MODES:
            raise ConfigError(None, f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.pet_normalization not in PET_NORMALIZATIONS:
            raise ConfigError(None, f"pet_normalization must be one of {PET_NORMALIZATIONS}, "
                                    f"got {self.pet_normalization!r}")
        if not float(self.spacing) > 0:
            raise ConfigError(None, f"spacing must be > 0 mm, got {self.spacing!r}")
        if int(self.crop_size) < 1 or int(self.crop_size) != self.crop_size:
            raise ConfigError(None, f"crop_size must be a positive integer, got {self.crop_size!r}")
        if self.pet_suv_clip is not None and not float(self.pet_suv_clip) > 0:
            raise ConfigError(None, f"pet_suv_clip must be > 0 or null, got {self.pet_suv_clip!r}")
        if not float(self.pet_suv_scale) > 0:
            raise ConfigError(None, f"pet_suv_scale must be > 0, got {self.pet_suv_scale!r}")
        lo, hi = (float(v) for v in self.ct_clip)
        if not lo < hi:
            raise ConfigError(None, f"ct_clip must be (low, high) with low < high, got {self.ct_clip!r}")
        if self.interpolation not in ("linear", "bspline"):
            raise ConfigError(None, f"interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")
        object.__setattr__(self, "spacing", float(self.spacing))
        object.__setattr__(self, "crop_size", int(self.crop_size))
        object.__setattr__(self, "ct_clip", (lo, hi))

    @property
    def channels(self) -> int:
        return 2 if self.input_mode == "pet+ct" else 1

    @property
    def needs_ct(self) -> bool:
        return self.input_mode in ("ct", "pet+ct")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ct_clip"] = list(self.ct_clip)
        return d

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any] | None") -> "IntensityConfig":
        if d is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(None, f"unknown preprocess setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kw = dict(d)
        if "ct_clip" in kw:
            kw["ct_clip"] = tuple(kw["ct_clip"])
        return cls(**kw)

    def key(self) -> str:
        """Stable hash of the settings (cache keys)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def geometry_at(self, world_lps) -> CropGeometry:
        return CropGeometry.centered_at(world_lps, self.spacing, self.crop_size)


# ---------------------------------------------------------------------- normalisation
def _zscore(x: np.ndarray, mask: "np.ndarray | None") -> np.ndarray:
    vals = x if mask is None else x[mask]
    if vals.size == 0:
        return np.zeros_like(x, dtype=np.float32)
    mean = float(vals.mean(dtype=np.float64))
    std = float(vals.std(dtype=np.float64, ddof=1)) if vals.size > 1 else 0.0
    out = x.astype(np.float32) - np.float32(mean)
    if std > 1e-8:
        out /= np.float32(std)
    return out


def normalize_pet(raw: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """Normalise a zero-padded PET crop (SUV) per ``cfg``; float32, same shape."""
    x = np.asarray(raw, dtype=np.float32)
    if cfg.pet_suv_clip is not None:
        x = np.clip(x, 0.0, cfg.pet_suv_clip)
    if cfg.pet_normalization == "zscore_positive":
        return _zscore(x, x > 0)
    if cfg.pet_normalization == "zscore":
        return _zscore(x, None)
    return (x / np.float32(cfg.pet_suv_scale)).astype(np.float32)


def normalize_ct(raw: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """Clamp a CT crop (HU, padded with -1024) to ``cfg.ct_clip`` and z-score it; float32."""
    x = np.clip(np.asarray(raw, dtype=np.float32), cfg.ct_clip[0], cfg.ct_clip[1])
    return _zscore(x, None)


def normalize_channels(raw: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """(C, ...) raw crop (PET SUV and/or CT HU, in ``cfg.input_mode`` order) -> normalised float32."""
    out = np.empty(raw.shape, dtype=np.float32)
    names = channel_names(cfg)
    for c, name in enumerate(names):
        out[c] = normalize_pet(raw[c], cfg) if name == "pet" else normalize_ct(raw[c], cfg)
    return out


def channel_names(cfg: IntensityConfig) -> list[str]:
    return {"pet": ["pet"], "ct": ["ct"], "pet+ct": ["pet", "ct"]}[cfg.input_mode]


# ---------------------------------------------------------------------- crops
def raw_crop(case: "Case", geom: CropGeometry, cfg: IntensityConfig) -> np.ndarray:
    """Un-normalised (C, X, Y, Z) float32 crop: PET in SUV padded with 0, CT in HU padded with -1024."""
    chans = []
    for name in channel_names(cfg):
        if name == "pet":
            chans.append(resample_to_crop(case.pet, geom, cfg.interpolation, PET_PAD))
        else:
            ct = case.ct_native
            if ct is None:
                raise InputError(getattr(case.record, "pet", None),
                                 f"case {case.case_id} has no CT but input_mode is {cfg.input_mode!r}")
            chans.append(resample_to_crop(ct, geom, cfg.interpolation, CT_PAD))
    return np.stack(chans).astype(np.float32, copy=False)


def make_network_input(case: "Case", geom: CropGeometry, cfg: IntensityConfig | None = None) -> "torch.Tensor":
    """The (C, X, Y, Z) float32 network input for ``case`` on ``geom`` (see module docstring)."""
    import torch

    cfg = cfg or IntensityConfig()
    return torch.from_numpy(np.ascontiguousarray(normalize_channels(raw_crop(case, geom, cfg), cfg)))


def crop_mask(label: "sitk.Image", geom: CropGeometry, keep_small: bool = True) -> np.ndarray:
    """Binary mask (label > 0) on the crop grid, (X, Y, Z) uint8.

    Nearest-neighbour resampling, plus (``keep_small``) the crop voxel containing each original
    foreground voxel centre, so a lesion smaller than a network voxel never vanishes.
    """
    import SimpleITK as sitk

    out = (resample_to_crop(label, geom, "nearest", 0) > 0).astype(np.uint8)
    if keep_small:
        arr = sitk.GetArrayViewFromImage(label)
        zyx = np.argwhere(arr > 0)
        if len(zyx):
            idx = np.rint(geom.world_to_index(image_index_to_world(label, zyx[:, ::-1].astype(float))))
            idx = idx.astype(np.int64)
            ok = np.all((idx >= 0) & (idx < np.asarray(geom.size)), axis=1)
            idx = idx[ok]
            out[idx[:, 0], idx[:, 1], idx[:, 2]] = 1
    return out


def crop_label(case_or_label, geom: CropGeometry, keep_small: bool = True) -> "torch.Tensor":
    """(1, X, Y, Z) uint8 tensor of the case's label (or a label image) on ``geom``."""
    import torch

    label = getattr(case_or_label, "label", case_or_label)
    if label is None:
        raise InputError(getattr(getattr(case_or_label, "record", None), "pet", None), "case has no label")
    return torch.from_numpy(crop_mask(label, geom, keep_small)[None])


def label_bbox_center_world(label: "sitk.Image") -> np.ndarray:
    """LPS centre of the world-aligned bounding box of the label's foreground voxel centres."""
    import SimpleITK as sitk

    zyx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)
    if len(zyx) == 0:
        raise InputError(None, "label is empty: nothing to centre the crop on")
    w = image_index_to_world(label, zyx[:, ::-1].astype(float))
    return (w.min(axis=0) + w.max(axis=0)) / 2.0


def official_style_input(pet_image: "sitk.Image", label_image: "sitk.Image",
                         cfg: IntensityConfig | None = None) -> tuple["torch.Tensor", "torch.Tensor", CropGeometry]:
    """Our network input with the crop centred on the label, as the official inference does.

    Returns ``(image (C, X, Y, Z), label (1, X, Y, Z), geometry)``.  The official pipeline
    (TorchIO Resample 1.5 mm, ToCanonical, CropOrPad centred on the label's bounding box,
    ZNormalization over voxels > 0) gives the same tensor for axis-aligned headers; for oblique
    headers ours is world-aligned (see docs/conventions.md).
    """
    cfg = cfg or IntensityConfig()
    geom = cfg.geometry_at(label_bbox_center_world(label_image))
    case = Case(case_id="official_style", pet=pet_image, label=label_image)
    return make_network_input(case, geom, cfg), crop_label(label_image, geom), geom


__all__ = ["CT_PAD", "INPUT_MODES", "IntensityConfig", "PET_NORMALIZATIONS", "PET_PAD", "channel_names",
           "crop_label", "crop_mask", "label_bbox_center_world", "make_network_input", "normalize_channels",
           "normalize_ct", "normalize_pet", "official_style_input", "raw_crop"]
