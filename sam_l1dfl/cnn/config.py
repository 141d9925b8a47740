"""Typed configuration of automatic (non-prompted) CNN segmentation: YAML + ``key=value`` overrides.

The loader, the override syntax and the shared sections (``name``, ``output_dir``, ``seed``,
the ``data`` split, ``loss``, ``train``) are those of :mod:`sam_l1dfl.training.runconfig`, as for
the SAM fine-tuning config; only the tree below differs::

    name, output_dir, seed
    data:       root, val_root, val_fraction, val_cases, cache_dir
    preprocess: spacing (2 mm), ct_normalization (minmax), pet (suv)
    network:    name (unet | segresnet | attentionunet | unetr), width, overrides
    augment:    crop_size (128), pos (4), neg (1), num_samples, affine_prob (0.5),
                rotate_range (pi/15), rotate_axis (2 = z), scale_range (0.1), translate_range (10),
                padding_mode (reflection), body_hu (0: crop to CT > 0 HU first),
                crop_pet_threshold (0: crop centres where PET > 0)
    loss:       name (l1dfl | dice | dicefocal | dicece | focal; "dice-focal" too), params
    optim:      lr (2e-4), weight_decay (1e-5), min_lr (0: cosine to zero)
    train:      epochs, max_steps, batch_size, grad_accum, mixed_precision, val_every, save_every,
                keep_last, log_every
    infer:      overlap (0.25), sw_batch_size, threshold (0.5), mode (gaussian | constant)

Every default is the paper's setting (Dzikunu et al., arXiv 2502.02756) or the authors' released
code (``ObedDzik/pca_segment``) where one is known; ``configs/cnn_*.yaml`` document them and
docs/reproducing-the-paper.md lists them side by side with the comparison's presets.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from sam_l1dfl.cnn.networks import network_kwargs
from sam_l1dfl.training.runconfig import RunConfig, config_from_mapping, load_yaml

NETWORKS = ("unet", "segresnet", "attentionunet", "unetr")
CT_NORMALIZATIONS = ("minmax", "none")
SW_MODES = ("gaussian", "constant")
PADDING_MODES = ("reflection", "zeros", "border")


@dataclass
class CnnPreprocessConfig:
    spacing: float = 2.0
    """Isotropic network spacing in mm (the paper: 2 mm)."""
    ct_normalization: str = "minmax"
    """``minmax``: CT scaled to [0, 1] per image (the paper); ``none``: HU."""
    ct_pad_hu: float = -1024.0
    """CT value outside the scan (before normalisation)."""


@dataclass
class NetworkConfig:
    name: str = "unet"
    width: float = 1.0
    """Multiplies every channel count (tests use tiny widths, e.g. 0.125); 1 = the paper."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the MONAI constructor (win over the preset)."""


@dataclass
class CnnAugmentConfig:
    crop_size: int = 128
    pos: float = 4.0
    neg: float = 1.0
    num_samples: int = 2
    """Crops per volume per step (not stated in the paper; the global batch is
    ``batch_size × num_samples × processes``)."""
    affine_prob: float = 0.5
    rotate_range: float = math.pi / 15
    rotate_axis: int = 2
    """Array axis (x, y, z) = (0, 1, 2) the rotation is about; 2 = axial rotation."""
    scale_range: float = 0.1
    translate_range: float = 10.0
    """Voxels (MONAI convention)."""
    padding_mode: str = "reflection"
    """``RandAffined`` padding (``reflection``, MONAI's default and the authors'; ``zeros``; ``border``)."""
    body_hu: Optional[float] = 0.0
    """Crop each volume to the bounding box of CT > this (HU) before sampling crops (the authors'
    ``CropForegroundd`` on the CT: > 0 HU); null = no body crop."""
    crop_pet_threshold: Optional[float] = 0.0
    """Crop centres only where PET > this (SUV), positives and negatives (the authors'
    ``image_key`` PET, ``image_threshold`` 0: negatives sit in tissue with uptake, not in air);
    null = anywhere in the volume."""


@dataclass
class CnnOptimConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-5
    min_lr: float = 0.0
    """Cosine annealing from ``lr`` to this value over the run (the paper: 0)."""


@dataclass
class CnnInferConfig:
    overlap: float = 0.25
    sw_batch_size: int = 2
    threshold: float = 0.5
    """Foreground probability threshold on the original grid (0.5 = argmax of 2 classes)."""
    mode: str = "gaussian"


@dataclass
class CnnConfig(RunConfig):
    """The paper's CNNs; ``data`` (the cache holds resampled volumes, npz keyed by file identity +
    preprocessing), ``loss`` (softmax mode) and ``train`` come from
    :class:`~sam_l1dfl.training.runconfig.RunConfig`."""

    name: str = "cnn"
    output_dir: str = "runs/cnn"
    preprocess: CnnPreprocessConfig = field(default_factory=CnnPreprocessConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    augment: CnnAugmentConfig = field(default_factory=CnnAugmentConfig)
    optim: CnnOptimConfig = field(default_factory=CnnOptimConfig)
    infer: CnnInferConfig = field(default_factory=CnnInferConfig)

    train_defaults: ClassVar[dict] = dict(epochs=300, batch_size=2, val_every=5, save_every=1, keep_last=2)
    """Epoch-based: one epoch = every training volume once (``num_samples`` crops each);
    ``batch_size`` volumes per step and process; validate every 5 epochs (and after the last; the
    best epoch by validation Dice is kept); save the state every epoch (and after the last)."""

    def validate(self) -> "CnnConfig":
        bad, choice = self.error, self.check_choice
        self.validate_run()
        if not self.preprocess.spacing > 0:
            raise bad("preprocess.spacing", f"must be > 0 mm, got {self.preprocess.spacing}")
        choice("preprocess.ct_normalization", self.preprocess.ct_normalization, CT_NORMALIZATIONS)
        n = self.network
        n.name = n.name.lower().replace("-", "").replace("_", "")
        choice("network.name", n.name, NETWORKS)
        if not n.width > 0:
            raise bad("network.width", f"must be > 0, got {n.width}")
        a = self.augment
        if a.crop_size < 8:
            raise bad("augment.crop_size", f"must be >= 8, got {a.crop_size}")
        if n.name == "unetr" and a.crop_size % 16:
            raise bad("augment.crop_size", f"UNETR's 16³ patches need a multiple of 16, got {a.crop_size}")
        if n.name in ("unet", "attentionunet"):
            strides = n.overrides.get("strides", (2,) * 5)
            div = int(np.prod(strides))
            if a.crop_size % div:
                raise bad("augment.crop_size", f"{n.name} with strides {list(strides)} needs a multiple of {div}, "
                                               f"got {a.crop_size}")
        if n.name == "segresnet" and a.crop_size % 8:
            raise bad("augment.crop_size", f"SegResNet needs a multiple of 8, got {a.crop_size}")
        if a.pos < 0 or a.neg < 0 or a.pos + a.neg == 0:
            raise bad("augment.pos/neg", "must be >= 0 and not both 0")
        if a.num_samples < 1:
            raise bad("augment.num_samples", "must be >= 1")
        if not 0 <= a.affine_prob <= 1:
            raise bad("augment.affine_prob", "must be in [0, 1]")
        if a.rotate_axis not in (0, 1, 2):
            raise bad("augment.rotate_axis", f"must be 0, 1 or 2, got {a.rotate_axis}")
        choice("augment.padding_mode", a.padding_mode, PADDING_MODES)
        o = self.optim
        if not o.lr > 0 or o.weight_decay < 0 or not 0 <= o.min_lr <= o.lr:
            raise bad("optim", f"need lr > 0, weight_decay >= 0, 0 <= min_lr <= lr; got {o}")
        i = self.infer
        if not 0 <= i.overlap < 1:
            raise bad("infer.overlap", f"must be in [0, 1), got {i.overlap}")
        if not 0 < i.threshold < 1:
            raise bad("infer.threshold", f"must be in (0, 1), got {i.threshold}")
        if i.sw_batch_size < 1:
            raise bad("infer.sw_batch_size", "must be >= 1")
        choice("infer.mode", i.mode, SW_MODES)
        # the network must build (catches bad overrides up front, before any data is read)
        try:
            network_kwargs(n.name, n.width, a.crop_size, n.overrides)
        except (TypeError, ValueError) as exc:
            raise bad("network", str(exc)) from None
        return self


def cnn_config_from_dict(data: dict, source: "str | None" = None, validate: bool = True) -> CnnConfig:
    """A :class:`CnnConfig` from a mapping (e.g. the ``"training"`` config of a CNN model directory)."""
    return config_from_mapping(CnnConfig, data, source, validate)


def load_cnn_config(path: "str | os.PathLike | None", overrides: "list[str] | None" = None) -> CnnConfig:
    """Read a YAML config (or the defaults if ``path`` is None), apply ``key=value`` overrides, validate."""
    return load_yaml(CnnConfig, path, overrides)


__all__ = ["CnnConfig", "NETWORKS", "cnn_config_from_dict", "load_cnn_config"]
