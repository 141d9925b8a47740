"""Typed fine-tuning configuration: YAML file + ``key=value`` overrides, validated up front.

A :class:`FinetuneConfig` is a tree of dataclasses.  :func:`load_config` reads a YAML file,
applies dotted overrides (``train.lr=3e-4``, ``prompts.boxes=true``; values are parsed as YAML),
checks every key and type, and raises :class:`~sam_l1dfl.errors.ConfigError` with a one-line
message naming the file and the key.  The resolved config is saved as ``config.yaml`` in the run
directory and in every ``best/`` / ``last/`` model directory (``config.json`` → ``"training"``).

Embedding cache and augmentation
--------------------------------
With the image encoder frozen (the default: only the mask decoder trains) each training crop's
image embedding is computed once and cached (``cache.embeddings``).  Anything that changes the
encoder's input from epoch to epoch is incompatible with that cache and refused when the cache
is on:

* ``augment.jitter_mm > 0`` (random crop shifts): every epoch sees another crop.
* trainable ``patch_embed`` or ``full`` fine-tuning: the embeddings change as training goes.

With the cache you get: fixed lesion-centred crops, prompt randomness (clicks are sampled from
the current errors each step) and the mask-prompt feedback loop.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sam_l1dfl.errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
CLICK_MODES = ("newest", "cumulative")
MASK_ONLY = ("official", "last", "none")
IOU_HEAD = ("mse", "frozen")
CACHE_MODES = ("auto", "on", "off")


@dataclass
class DataConfig:
    root: str = "data"
    """Training cases: autoPET folder, nnU-Net dataset folder or .csv/.json manifest."""
    val_root: Optional[str] = None
    """Separate validation cases (same layouts); if null, ``val_fraction`` of ``root`` is held out."""
    val_fraction: float = 0.2
    val_cases: list[str] = field(default_factory=list)
    """Explicit validation case ids taken from ``root`` (overrides ``val_fraction``)."""
    cache_dir: Optional[str] = None
    """Crop and embedding caches; default ``<output_dir>/cache`` (shared by runs)."""
    cluster_mm: Optional[float] = None
    connectivity: int = 18
    max_train_crops: Optional[int] = None
    max_val_crops: Optional[int] = None
    num_workers: int = 0


@dataclass
class PreprocessConfig:
    """Fields of :class:`sam_l1dfl.data.preprocess.IntensityConfig`."""

    input_mode: str = "pet"
    spacing: float = 1.5
    crop_size: int = 128
    pet_normalization: str = "zscore_positive"
    pet_suv_clip: Optional[float] = None
    pet_suv_scale: float = 10.0
    ct_clip: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    interpolation: str = "linear"


@dataclass
class ModelConfig:
    preset: str = "vit_b_ori"
    checkpoint: Optional[str] = None
    """Official ``.pth``, ``.safetensors`` or a model directory; null = random init (loud warning)."""
    trust_checkpoint: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`SamMed3DConfig` fields (``in_chans`` / ``use_boxes`` are set automatically)."""


@dataclass
class PromptConfig:
    points: bool = True
    boxes: bool = False
    """Add the lesion's bounding box (from the label) as a prompt at every point iteration."""
    clicks_per_sample: int = 11
    click_mode: str = "newest"
    """``newest``: only the newest click (+ the previous mask), as official SAM-Med3D trains;
    ``cumulative``: all clicks so far."""
    mask_only: str = "official"
    """Iterations that get the mask prompt alone (no new click): ``official`` = one random
    iteration in [2, 8] plus the last one; ``last``; ``none``."""
    detach_mask_prompt: bool = True
    """Feed the previous low-res logits back detached (no backprop through earlier iterations)."""


@dataclass
class TrainableConfig:
    mask_decoder: bool = True
    prompt_encoder: bool = False
    box_embeddings: bool = True
    """The two box-corner embeddings (only when ``prompts.boxes``; new in this model, so they train)."""
    patch_embed: bool = False
    """The image encoder's patch embedding (useful for ``pet+ct``); disables the embedding cache."""
    full: bool = False
    """Everything, including the encoder blocks (explicit full fine-tuning)."""
    iou_head: str = "mse"
    """``mse``: the IoU head learns the actual IoU of its mask (MSE, as SAM); ``frozen``."""
    iou_loss_weight: float = 1.0


@dataclass
class LossConfig:
    name: str = "l1dfl"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    grad_clip: Optional[float] = 1.0


@dataclass
class TrainConfig:
    epochs: int = 50
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (also sets the schedule length)."""
    batch_size: int = 4
    """Per process; the global batch is ``batch_size × processes × grad_accum``."""
    grad_accum: int = 1
    mixed_precision: str = "no"
    val_every: int = 200
    """Validate every N optimizer steps (and at the start and the end); 0 = only at the end."""
    save_every: int = 200
    """``accelerator.save_state`` every N optimizer steps (and at the end)."""
    keep_last: int = 3
    log_every: int = 10


@dataclass
class CacheConfig:
    embeddings: Any = "auto"
    """``auto``: cache when the encoder is frozen; ``on``: require it; ``off``."""


@dataclass
class AugmentConfig:
    jitter_mm: float = 0.0
    """Random crop shift per epoch; incompatible with the embedding cache."""


@dataclass
class FinetuneConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    source: Optional[str] = field(default=None, metadata={"internal": True})
    """The YAML file it came from (messages name it); not saved."""

    # -------------------------------------------------------------- derived
    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(self.output_dir) / "cache"

    def intensity_config(self):
        from sam_l1dfl.data.preprocess import IntensityConfig

        d = dataclasses.asdict(self.preprocess)
        d["ct_clip"] = tuple(d["ct_clip"])
        return IntensityConfig(**d)

    def encoder_frozen(self) -> bool:
        return not (self.trainable.full or self.trainable.patch_embed)

    def use_embedding_cache(self) -> bool:
        if self.cache.embeddings == "off":
            return False
        return self.encoder_frozen() and self.augment.jitter_mm == 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -------------------------------------------------------------- validation
    def validate(self) -> "FinetuneConfig":
        src = self.source

        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(src, f"{key}: {problem}")

        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise bad("name", f"must be a plain folder name, got {self.name!r}")
        try:
            self.intensity_config()
        except ConfigError as exc:
            raise bad("preprocess", exc.problem) from None
        if self.preprocess.crop_size != 128:
            raise bad("preprocess.crop_size", f"SAM-Med3D's input is 128³; got {self.preprocess.crop_size}")
        from sam_l1dfl.model.config import SamMed3DConfig

        if self.model.preset not in SamMed3DConfig.presets():
            raise bad("model.preset", f"unknown preset {self.model.preset!r}; choose one of {SamMed3DConfig.presets()}")
        for k in ("in_chans", "use_boxes"):
            if k in self.model.overrides:
                raise bad(f"model.overrides.{k}", "is set from preprocess.input_mode / prompts.boxes")
        try:
            self.model_config()
        except ConfigError as exc:
            raise bad("model.overrides", exc.problem) from None
        if self.model.checkpoint is not None and not Path(self.model.checkpoint).exists():
            raise bad("model.checkpoint", f"{self.model.checkpoint} does not exist")
        p = self.prompts
        if not (p.points or p.boxes):
            raise bad("prompts", "enable points and/or boxes")
        if p.clicks_per_sample < 1:
            raise bad("prompts.clicks_per_sample", f"must be >= 1, got {p.clicks_per_sample}")
        _choice(bad, "prompts.click_mode", p.click_mode, CLICK_MODES)
        _choice(bad, "prompts.mask_only", p.mask_only, MASK_ONLY)
        t = self.trainable
        _choice(bad, "trainable.iou_head", t.iou_head, IOU_HEAD)
        if t.iou_loss_weight < 0:
            raise bad("trainable.iou_loss_weight", "must be >= 0")
        if not (t.mask_decoder or t.prompt_encoder or t.patch_embed or t.full or (p.boxes and t.box_embeddings)):
            raise bad("trainable", "nothing would train")
        if t.patch_embed and self.preprocess.input_mode != "pet+ct" and not t.full:
            raise bad("trainable.patch_embed", "only meaningful with preprocess.input_mode: pet+ct")
        if isinstance(self.cache.embeddings, bool):  # YAML reads on/off as booleans
            self.cache.embeddings = "on" if self.cache.embeddings else "off"
        _choice(bad, "cache.embeddings", self.cache.embeddings, CACHE_MODES)
        if self.augment.jitter_mm < 0:
            raise bad("augment.jitter_mm", "must be >= 0")
        if self.cache.embeddings == "on":
            if not self.encoder_frozen():
                raise bad("cache.embeddings", "'on' needs a frozen image encoder (trainable.patch_embed/full are set)")
            if self.augment.jitter_mm > 0:
                raise bad("augment.jitter_mm", "crop jitter is incompatible with the embedding cache "
                                               "(set cache.embeddings: off or jitter_mm: 0)")
        d = self.data
        if not 0 <= d.val_fraction < 1:
            raise bad("data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
        if d.connectivity not in (6, 18, 26):
            raise bad("data.connectivity", f"must be 6, 18 or 26, got {d.connectivity}")
        for k in ("max_train_crops", "max_val_crops"):
            v = getattr(d, k)
            if v is not None and v < 1:
                raise bad(f"data.{k}", f"must be >= 1 or null, got {v}")
        o = self.optim
        if not o.lr > 0:
            raise bad("optim.lr", f"must be > 0, got {o.lr}")
        if o.weight_decay < 0:
            raise bad("optim.weight_decay", "must be >= 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise bad("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
        if o.warmup_steps < 0:
            raise bad("optim.warmup_steps", "must be >= 0")
        if not 0 <= o.min_lr_ratio <= 1:
            raise bad("optim.min_lr_ratio", "must be in [0, 1]")
        if o.grad_clip is not None and not o.grad_clip > 0:
            raise bad("optim.grad_clip", "must be > 0 or null")
        tr = self.train
        for k in ("epochs", "batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(tr, k) < 1:
                raise bad(f"train.{k}", f"must be >= 1, got {getattr(tr, k)}")
        for k in ("val_every", "save_every"):
            if getattr(tr, k) < 0:
                raise bad(f"train.{k}", f"must be >= 0, got {getattr(tr, k)}")
        if tr.max_steps is not None and tr.max_steps < 1:
            raise bad("train.max_steps", "must be >= 1 or null")
        _choice(bad, "train.mixed_precision", tr.mixed_precision, MIXED_PRECISION)
        from sam_l1dfl.training.losses import known_losses

        names = known_losses()
        if names is not None and self.loss.name.lower() not in names:
            raise bad("loss.name", f"unknown loss {self.loss.name!r}; known: {sorted(names)}")
        return self

    def model_config(self):
        from sam_l1dfl.model.config import SamMed3DConfig

        in_chans = 2 if self.preprocess.input_mode == "pet+ct" else 1
        return SamMed3DConfig.preset(self.model.preset, in_chans=in_chans, use_boxes=bool(self.prompts.boxes),
                                     **self.model.overrides)


def _choice(bad, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise bad(key, f"must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------- (de)serialisation
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, src: "str | None") -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (the small subset our configs use)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, src)
    if dataclasses.is_dataclass(tp):
        return _from_mapping(tp, value, key, src)
    if tp is str and value is False and key.endswith("mixed_precision"):
        return "no"  # YAML 1.1 reads a bare `no` as false
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(src, f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(src, f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(src, f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(src, f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(src, f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", src) for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(src, f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value  # Any


def _from_mapping(cls, data: Any, prefix: str, src: "str | None"):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(src, f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    flds = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(flds))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(src, f"unknown key(s) {[where + k for k in unknown]}; known: {sorted(flds)}")
    kw = {}
    for name, value in data.items():
        kw[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name, src)
    return cls(**kw)


def config_from_dict(data: dict, source: "str | None" = None, validate: bool = True) -> FinetuneConfig:
    cfg = _from_mapping(FinetuneConfig, data, "", source)
    cfg.source = source
    return cfg.validate() if validate else cfg


def parse_overrides(overrides: "list[str] | None", source: str = "command line") -> dict:
    """``["train.lr=3e-4", "prompts.boxes=true"]`` → nested dict (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(source, f"override {item!r} is not key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(source, f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(source, f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("params", "overrides"):
            out[k] = merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_config(path: "str | os.PathLike | None", overrides: "list[str] | None" = None,
                resolve_paths: bool = True) -> FinetuneConfig:
    """Read a YAML config (or defaults if ``path`` is None), apply overrides, validate.

    Relative data/checkpoint paths in the file are resolved against the current directory (the
    way ``accelerate launch`` users run it from the repository root).
    """
    import yaml

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
    cfg = config_from_dict(data, source=src)
    return cfg


__all__ = ["AugmentConfig", "CacheConfig", "DataConfig", "FinetuneConfig", "LossConfig", "ModelConfig",
           "OptimConfig", "PreprocessConfig", "PromptConfig", "TrainConfig", "TrainableConfig",
           "config_from_dict", "load_config", "merge", "parse_overrides"]
