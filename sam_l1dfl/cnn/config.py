"""Typed configuration of automatic (non-prompted) CNN segmentation: YAML + ``key=value`` overrides.

The file format and the override syntax are those of the SAM fine-tuning config
(:mod:`sam_l1dfl.training.config`, whose parser is reused here); only the tree differs::

    name, output_dir, seed
    data:       root, val_root, val_fraction, val_cases, cache_dir
    preprocess: spacing (2 mm), ct_normalization (minmax), pet (suv)
    network:    name (unet | segresnet | attentionunet | unetr), width, overrides
    augment:    crop_size (128), pos (4), neg (1), num_samples, affine_prob (0.5),
                rotate_range (pi/15), rotate_axis (2 = z), scale_range (0.1), translate_range (10)
    loss:       name (l1dfl | dice | dicefocal | dicece | focal), params
    optim:      lr (2e-4), weight_decay (1e-5), min_lr (0: cosine to zero)
    train:      epochs, max_steps, batch_size, grad_accum, mixed_precision, val_every, save_every,
                keep_last, log_every
    infer:      overlap (0.25), sw_batch_size, threshold (0.5), mode (gaussian | constant)

Every default is the paper's setting (Dzikunu et al., arXiv 2502.02756) where the issue states
one; ``configs/cnn_*.yaml`` document them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sam_l1dfl.errors import ConfigError

NETWORKS = ("unet", "segresnet", "attentionunet", "unetr")
CT_NORMALIZATIONS = ("minmax", "none")
SW_MODES = ("gaussian", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class CnnDataConfig:
    root: str = "data"
    """Training cases: autoPET folder, nnU-Net dataset folder or .csv/.json manifest (labels needed)."""
    val_root: Optional[str] = None
    val_fraction: float = 0.2
    val_cases: list[str] = field(default_factory=list)
    """Explicit validation case ids taken from ``root`` (overrides ``val_fraction``)."""
    cache_dir: Optional[str] = None
    """Resampled volumes (npz, keyed by file identity + preprocessing); default ``<output_dir>/cache``."""
    num_workers: int = 0


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


@dataclass
class CnnLossConfig:
    name: str = "l1dfl"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class CnnOptimConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-5
    min_lr: float = 0.0
    """Cosine annealing from ``lr`` to this value over the run (the paper: 0)."""


@dataclass
class CnnTrainConfig:
    epochs: int = 300
    """One epoch = every training volume once (``num_samples`` crops each)."""
    max_steps: Optional[int] = None
    batch_size: int = 2
    """Volumes per step and process."""
    grad_accum: int = 1
    mixed_precision: str = "no"
    val_every: int = 5
    """Validate every N epochs (and after the last); the best epoch by validation Dice is kept."""
    save_every: int = 1
    """``accelerator.save_state`` every N epochs (and after the last)."""
    keep_last: int = 2
    log_every: int = 10


@dataclass
class CnnInferConfig:
    overlap: float = 0.25
    sw_batch_size: int = 2
    threshold: float = 0.5
    """Foreground probability threshold on the original grid (0.5 = argmax of 2 classes)."""
    mode: str = "gaussian"


@dataclass
class CnnConfig:
    name: str = "cnn"
    output_dir: str = "runs/cnn"
    seed: int = 0
    data: CnnDataConfig = field(default_factory=CnnDataConfig)
    preprocess: CnnPreprocessConfig = field(default_factory=CnnPreprocessConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    augment: CnnAugmentConfig = field(default_factory=CnnAugmentConfig)
    loss: CnnLossConfig = field(default_factory=CnnLossConfig)
    optim: CnnOptimConfig = field(default_factory=CnnOptimConfig)
    train: CnnTrainConfig = field(default_factory=CnnTrainConfig)
    infer: CnnInferConfig = field(default_factory=CnnInferConfig)

    source: Optional[str] = field(default=None, metadata={"internal": True})

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(self.output_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "CnnConfig":
        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(self.source, f"{key}: {problem}")

        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise bad("name", f"must be a plain folder name, got {self.name!r}")
        if not self.preprocess.spacing > 0:
            raise bad("preprocess.spacing", f"must be > 0 mm, got {self.preprocess.spacing}")
        _choice(bad, "preprocess.ct_normalization", self.preprocess.ct_normalization, CT_NORMALIZATIONS)
        n = self.network
        n.name = n.name.lower().replace("-", "").replace("_", "")
        _choice(bad, "network.name", n.name, NETWORKS)
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
        from sam_l1dfl.losses import LOSS_NAMES

        key = self.loss.name.strip().lower().replace("-", "").replace("_", "")
        if key not in LOSS_NAMES:
            raise bad("loss.name", f"unknown loss {self.loss.name!r}; known: {list(LOSS_NAMES)}")
        o = self.optim
        if not o.lr > 0 or o.weight_decay < 0 or not 0 <= o.min_lr <= o.lr:
            raise bad("optim", f"need lr > 0, weight_decay >= 0, 0 <= min_lr <= lr; got {o}")
        t = self.train
        for k in ("epochs", "batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(t, k) < 1:
                raise bad(f"train.{k}", f"must be >= 1, got {getattr(t, k)}")
        for k in ("val_every", "save_every"):
            if getattr(t, k) < 0:
                raise bad(f"train.{k}", f"must be >= 0, got {getattr(t, k)}")
        if t.max_steps is not None and t.max_steps < 1:
            raise bad("train.max_steps", "must be >= 1 or null")
        _choice(bad, "train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
        i = self.infer
        if not 0 <= i.overlap < 1:
            raise bad("infer.overlap", f"must be in [0, 1), got {i.overlap}")
        if not 0 < i.threshold < 1:
            raise bad("infer.threshold", f"must be in (0, 1), got {i.threshold}")
        if i.sw_batch_size < 1:
            raise bad("infer.sw_batch_size", "must be >= 1")
        _choice(bad, "infer.mode", i.mode, SW_MODES)
        if not 0 <= self.data.val_fraction < 1:
            raise bad("data.val_fraction", f"must be in [0, 1), got {self.data.val_fraction}")
        # the network must build (catches bad overrides up front, before any data is read)
        from sam_l1dfl.cnn.networks import network_kwargs

        try:
            network_kwargs(n.name, n.width, a.crop_size, n.overrides)
        except (TypeError, ValueError) as exc:
            raise bad("network", str(exc)) from None
        return self


def _choice(bad, key: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise bad(key, f"must be one of {list(choices)}, got {value!r}")


def cnn_config_from_dict(data: dict, source: "str | None" = None, validate: bool = True) -> CnnConfig:
    # Reuses the fine-tuning config's typed mapping parser (see the report on sharing it).
    from sam_l1dfl.training.config import _from_mapping

    tr = data.get("train") if isinstance(data, dict) else None
    if isinstance(tr, dict) and tr.get("mixed_precision") is False:  # YAML 1.1 reads `no` as false
        data = {**data, "train": {**tr, "mixed_precision": "no"}}
    cfg = _from_mapping(CnnConfig, data, "", source)
    cfg.source = source
    return cfg.validate() if validate else cfg


def load_cnn_config(path: "str | os.PathLike | None", overrides: "list[str] | None" = None) -> CnnConfig:
    """Read a YAML config (or the defaults if ``path`` is None), apply ``key=value`` overrides, validate."""
    import yaml

    from sam_l1dfl.training.config import merge, parse_overrides

    data: dict = {}
    src = None
    if path is not None:
        src = os.fspath(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(src, "config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
            raise ConfigError(src, f"invalid YAML: {first}") from None
        if not isinstance(data, dict):
            raise ConfigError(src, "top level must be a mapping")
    data = merge(data, parse_overrides(overrides))
    return cnn_config_from_dict(data, source=src)


__all__ = ["CnnConfig", "NETWORKS", "cnn_config_from_dict", "load_cnn_config"]
