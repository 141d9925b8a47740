"""Typed fine-tuning configuration (:class:`FinetuneConfig`): YAML file + ``key=value`` overrides.

The loader, the override syntax and the sections shared with the CNN trainer (``name``,
``output_dir``, ``seed``, ``data`` split, ``loss``, ``train``) live in
:mod:`sam_l1dfl.training.runconfig`; this module adds the SAM-Med3D sections and their checks.
:func:`load_config` reads a YAML file, applies dotted overrides (``optim.lr=3e-4``,
``prompts.boxes=true``; values are parsed as YAML), checks every key and type, and raises
:class:`~sam_l1dfl.errors.ConfigError` with a one-line message naming the file and the key.
``preprocess:`` is a :class:`~sam_l1dfl.data.preprocess.IntensityConfig`, the type inference reads
back from a model directory.  The resolved config is saved as ``config.yaml`` in the run
directory and in every ``best/`` / ``last/`` model directory (``config.json`` → ``"training"``).

Embedding cache and augmentation
--------------------------------
With the image encoder frozen (the default: only the mask decoder trains) each training crop's
image embedding is computed once and cached (``cache.embeddings``).  Anything that changes the
encoder's input from epoch to epoch is incompatible with that cache and refused when the cache
is on:

* ``augment.jitter_mm > 0`` (random crop shifts): every epoch sees another crop.
* trainable ``patch_embed``, ``lora`` or ``full`` fine-tuning: the embeddings change as training
  goes (with ``cache.embeddings: auto`` the cache turns itself off; the LoRA line says so).

With the cache you get: fixed lesion-centred crops, prompt randomness (clicks are sampled from
the current errors each step) and the mask-prompt feedback loop.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sam_l1dfl.data.preprocess import IntensityConfig
from sam_l1dfl.errors import ConfigError
from sam_l1dfl.model.config import LORA_EXTRA, LORA_TARGETS, SamMed3DConfig
from sam_l1dfl.lossnames import normalize_loss_name
from sam_l1dfl.model.standin import is_standin_name, standin_available
from sam_l1dfl.training.runconfig import (DataSplitConfig, LossConfig, RunConfig, TrainConfig, config_from_mapping,
                                          load_yaml, merge, parse_overrides)

CLICK_MODES = ("newest", "cumulative")
MASK_ONLY = ("official", "last", "none")
IOU_HEAD = ("mse", "frozen")
CACHE_MODES = ("auto", "on", "off")


@dataclass
class DataConfig(DataSplitConfig):
    cluster_mm: Optional[float] = None
    connectivity: int = 18
    max_train_crops: Optional[int] = None
    max_val_crops: Optional[int] = None


@dataclass
class ModelConfig:
    preset: str = "vit_b_ori"
    checkpoint: Optional[str] = None
    """Official ``.pth``, ``.safetensors`` or a model directory; null = random init (loud warning).
    A checkpoint that needs full unpickling loads only with ``--trust`` (never from the config)."""
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
class LoraSettings:
    """``trainable.lora``: low-rank adapters on the image encoder through HF peft (docs/lora.md)."""

    r: int = 8
    """Rank of each adapter."""
    alpha: float = 16.0
    """Scale numerator: the update is ``alpha / r * B @ A``."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj"])
    """Linear layers of every encoder block: ``qkv``, ``proj`` (attention), ``lin1``, ``lin2`` (MLP)."""


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
    lora: Optional[LoraSettings] = None
    """LoRA on the image encoder (``{r, alpha, dropout, targets}``; ``{}``: the defaults) beside
    what else trains; needs the ``lora`` extra (peft); disables the embedding cache."""
    iou_head: str = "mse"
    """``mse``: the IoU head learns the actual IoU of its mask (MSE, as SAM); ``frozen``."""
    iou_loss_weight: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    grad_clip: Optional[float] = 1.0


@dataclass
class CacheConfig:
    embeddings: Any = "auto"
    """``auto``: cache when the encoder is frozen; ``on``: require it; ``off``."""


@dataclass
class AugmentConfig:
    jitter_mm: float = 0.0
    """Random crop shift per epoch; incompatible with the embedding cache."""


@dataclass
class FinetuneLossConfig(LossConfig):
    """``name`` and ``params`` (L1DFL's variants: ``eps``, ``histogram_scope``, ``roi_dilation``,
    ``weight_dice``, ``weight_focal``; see ``docs/l1dfl.md``), plus a warm start."""

    warmup_steps: int = 0
    """The first N optimizer steps train with ``warmup_name`` instead (0: none); a resumed run
    picks the loss of its step."""
    warmup_name: str = "dicefocal"
    """The warm-start loss (any loss ``name`` accepts)."""
    warmup_params: dict[str, Any] = field(default_factory=dict)
    """Its keyword arguments, as ``params``."""


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The shared loop settings plus the fine-tuning step's own."""

    compile: bool = False
    """``torch.compile`` the loss (one fused kernel per click; Inductor needs a C++ compiler on a
    CPU, Triton on a GPU).  If compiling fails the step runs eagerly, with a warning."""
    log_weight_shares: bool = False
    """With ``loss.name: l1dfl``: log the share of L1DFL's weight and of its Dice gradient on the
    lesion interior, boundary and background (:func:`sam_l1dfl.losses.l1_weight_shares`, mean over
    the clicks) in ``train_log.jsonl`` (``beta_interior`` ... ``dgrad_background``)."""


def check_lora(lo: "LoraSettings", full: bool, bad) -> None:
    """``trainable.lora``'s settings: rank, alpha, dropout, target names, not beside
    ``trainable.full``, and peft installed; ``bad(key, problem)`` makes the error."""
    if full:
        raise bad("trainable.lora", "trainable.full already trains the whole encoder; drop one of them")
    if lo.r < 1:
        raise bad("trainable.lora.r", f"must be >= 1, got {lo.r}")
    if not lo.alpha > 0:
        raise bad("trainable.lora.alpha", f"must be > 0, got {lo.alpha}")
    if not 0 <= lo.dropout < 1:
        raise bad("trainable.lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    unknown = [x for x in lo.targets if x not in LORA_TARGETS]
    if unknown or not lo.targets or len(set(lo.targets)) != len(lo.targets):
        raise bad("trainable.lora.targets", f"a list of distinct names from {', '.join(LORA_TARGETS)}; "
                                            f"got {lo.targets}")
    if importlib.util.find_spec("peft") is None:
        raise bad("trainable.lora", f"needs Hugging Face peft, which is not installed: {LORA_EXTRA}")


@dataclass
class FinetuneConfig(RunConfig):
    """SAM-Med3D fine-tuning; ``name``, ``output_dir``, ``seed``, ``loss`` (sigmoid mode: the
    single logit), ``train`` (``val_every``/``save_every`` in optimizer steps) and the checks shared
    with the CNN config come from :class:`~sam_l1dfl.training.runconfig.RunConfig`."""

    data: DataConfig = field(default_factory=DataConfig)
    """Cases, validation split, caches, lesion clustering, crop limits."""
    preprocess: IntensityConfig = field(default_factory=IntensityConfig)
    """Network input (the type inference reads back from ``config.json``); crop_size must be 128."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Preset and starting checkpoint."""
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """Simulated clicks (and boxes) per training sample."""
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    """What trains; the rest is frozen."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW with warm-up and cosine decay."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Image-embedding cache."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Crop jitter."""
    loss: FinetuneLossConfig = field(default_factory=FinetuneLossConfig)
    """The loss (sigmoid mode), its parameters and an optional warm start."""
    train: FinetuneTrainConfig = None  # type: ignore[assignment]  # FinetuneTrainConfig() after __init__
    """The loop settings."""

    def __post_init__(self):
        if self.train is None:
            self.train = FinetuneTrainConfig(**self.train_defaults)

    # -------------------------------------------------------------- derived
    def encoder_frozen(self) -> bool:
        return not (self.trainable.full or self.trainable.patch_embed or self.trainable.lora is not None)

    def use_embedding_cache(self) -> bool:
        if self.cache.embeddings == "off":
            return False
        return self.encoder_frozen() and self.augment.jitter_mm == 0

    # -------------------------------------------------------------- validation
    def validate(self) -> "FinetuneConfig":
        self.validate_run()
        self._validate_model()
        self._validate_loss()
        self._validate_prompts_and_trainable()
        self._validate_inputs()
        self._validate_data_and_optim()
        return self

    def _validate_model(self) -> None:
        """preprocess.crop_size, model.preset, model.overrides and model.checkpoint."""
        bad = self.error
        if self.preprocess.crop_size != 128:
            raise bad("preprocess.crop_size", f"SAM-Med3D's input is 128³; got {self.preprocess.crop_size}")
        if self.model.preset not in SamMed3DConfig.presets():
            raise bad("model.preset", f"unknown preset {self.model.preset!r}; choose one of {SamMed3DConfig.presets()}")
        for k in ("in_chans", "use_boxes"):
            if k in self.model.overrides:
                raise bad(f"model.overrides.{k}", "is set from preprocess.input_mode / prompts.boxes")
        try:
            self.model_config()
        except ConfigError as exc:
            raise bad("model.overrides", exc.problem) from None
        ck = self.model.checkpoint
        if is_standin_name(ck):  # the packaged stand-in, even beside a ./standin folder
            if not standin_available():
                raise bad("model.checkpoint", "the stand-in model is not installed (scripts/pretrain_standin.py --install)")
            if self.model.preset != "tiny":
                raise bad("model.preset", f"the stand-in is the tiny architecture; set model.preset=tiny "
                                          f"(got {self.model.preset})")
        elif ck is not None and not Path(ck).exists():
            raise bad("model.checkpoint", f"{ck} does not exist")

    def _validate_loss(self) -> None:
        bad = self.error
        lo = self.loss
        if lo.warmup_steps < 0:
            raise bad("loss.warmup_steps", f"must be >= 0, got {lo.warmup_steps}")
        try:
            normalize_loss_name(lo.warmup_name)
        except ConfigError as exc:
            raise bad("loss.warmup_name", exc.problem) from None
        if self.train.log_weight_shares and normalize_loss_name(lo.name) != "l1dfl":
            raise bad("train.log_weight_shares", f"measures L1DFL's weights; loss.name is {lo.name!r}")

    def _validate_prompts_and_trainable(self) -> None:
        bad, choice = self.error, self.check_choice
        p = self.prompts
        if not (p.points or p.boxes):
            raise bad("prompts", "enable points and/or boxes")
        if p.clicks_per_sample < 1:
            raise bad("prompts.clicks_per_sample", f"must be >= 1, got {p.clicks_per_sample}")
        choice("prompts.click_mode", p.click_mode, CLICK_MODES)
        choice("prompts.mask_only", p.mask_only, MASK_ONLY)
        t = self.trainable
        choice("trainable.iou_head", t.iou_head, IOU_HEAD)
        if t.iou_loss_weight < 0:
            raise bad("trainable.iou_loss_weight", "must be >= 0")
        if not (t.mask_decoder or t.prompt_encoder or t.patch_embed or t.full or t.lora is not None
                or (p.boxes and t.box_embeddings)):
            raise bad("trainable", "nothing would train")
        if t.lora is not None:
            check_lora(t.lora, t.full, self.error)
        if t.patch_embed and self.preprocess.input_mode != "pet+ct" and not t.full:
            raise bad("trainable.patch_embed", "only meaningful with preprocess.input_mode: pet+ct")

    def _validate_inputs(self) -> None:
        """cache.embeddings and augment.jitter_mm (the embedding cache needs unjittered crops)."""
        bad, choice = self.error, self.check_choice
        if isinstance(self.cache.embeddings, bool):  # YAML reads on/off as booleans
            self.cache.embeddings = "on" if self.cache.embeddings else "off"
        choice("cache.embeddings", self.cache.embeddings, CACHE_MODES)
        if self.augment.jitter_mm < 0:
            raise bad("augment.jitter_mm", "must be >= 0")
        if self.cache.embeddings == "on":
            if not self.encoder_frozen():
                raise bad("cache.embeddings", "'on' needs a frozen image encoder (trainable.patch_embed/lora/full "
                                              "is set)")
            if self.augment.jitter_mm > 0:
                raise bad("augment.jitter_mm", "crop jitter is incompatible with the embedding cache "
                                               "(set cache.embeddings: off or jitter_mm: 0)")

    def _validate_data_and_optim(self) -> None:
        bad = self.error
        d = self.data
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

    def model_config(self) -> SamMed3DConfig:
        in_chans = 2 if self.preprocess.input_mode == "pet+ct" else 1
        return SamMed3DConfig.preset(self.model.preset, in_chans=in_chans, use_boxes=bool(self.prompts.boxes),
                                     **self.model.overrides)


def config_from_dict(data: dict, source: "str | None" = None, validate: bool = True) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from a mapping (e.g. the ``"training"`` config of a model directory)."""
    return config_from_mapping(FinetuneConfig, data, source, validate)


def load_config(path: "str | os.PathLike | None", overrides: "list[str] | None" = None) -> FinetuneConfig:
    """Read a YAML config (or the defaults if ``path`` is None), apply ``key=value`` overrides, validate.

    Relative paths in the file are used as they are, i.e. relative to the current directory (the
    way ``accelerate launch`` users run it from the repository root).
    """
    return load_yaml(FinetuneConfig, path, overrides)


__all__ = ["AugmentConfig", "CacheConfig", "DataConfig", "FinetuneConfig", "FinetuneLossConfig", "FinetuneTrainConfig",
           "IntensityConfig", "LoraSettings", "LossConfig", "ModelConfig", "OptimConfig", "PromptConfig", "TrainConfig",
           "TrainableConfig", "config_from_dict", "load_config", "merge", "parse_overrides"]
