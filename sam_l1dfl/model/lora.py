"""LoRA on SAM-Med3D's image encoder, through Hugging Face ``peft`` (``trainable.lora``).

The idea is SAMed's and micro-sam's (low-rank adapters on the ViT's attention, the decoder trained
beside them); the layers, the merge and the adapter state dicts are peft's:

* :class:`EncoderLora` puts ``peft.LoraModel`` adapters (rank ``r``, scale ``alpha / r``, dropout)
  on the encoder blocks' Linear layers named in ``targets`` (default ``qkv`` and ``proj`` of every
  attention block; :data:`~sam_l1dfl.model.config.LORA_TARGETS`), in place, so the model keeps its
  module tree and the training loop, Accelerate and DDP see one model whose only new trainable
  parameters are the factors.  peft leaves only its adapters trainable; the flags set before
  (the decoder, ...) are put back.
* :meth:`EncoderLora.merged` is a copy with the factors merged into the weights
  (``merge_and_unload``): the official SAM-Med3D key set again, so every full-model writer and the
  official code read it.  :meth:`EncoderLora.save` writes a model directory with those merged
  weights plus :data:`~sam_l1dfl.formats.LORA_FILE`, the factors alone
  (``get_peft_model_state_dict``), which the delta export stores instead of the merged encoder
  weights.
* :func:`merge_factors` rebuilds the merged weights from a base state dict and factors
  (``set_peft_model_state_dict``, then ``merge_and_unload``): how a delta with LoRA is applied.

``peft`` pulls in ``transformers``, so it is the optional extra ``lora``
(:data:`~sam_l1dfl.model.config.LORA_EXTRA`): imported here on first use, and a LoRA config
without it stops with one line (:func:`require_peft`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from sam_l1dfl.errors import CheckpointError, ConfigError
from sam_l1dfl.formats import LORA_FILE, LORA_FORMAT, MODEL_FILE
from sam_l1dfl.io_utils import atomic_dir, sha256_file
from sam_l1dfl.model.config import LORA_EXTRA, LORA_TARGETS, SamMed3DConfig
from sam_l1dfl.model.sam import SamMed3D
from sam_l1dfl.model.weights import read_safetensors, save_model_dir, save_safetensors

ADAPTER = "default"
#: largest difference allowed between a delta's rebuilt encoder weights and the run's merged ones
#: (both are merged on the CPU by the same peft code, so they agree exactly on the right base)
MATCH_ATOL = 1e-6
SETTINGS = ("r", "alpha", "dropout", "targets")


def peft_available() -> bool:
    """Whether ``peft`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("peft") is not None


def require_peft(source: "str | os.PathLike | None" = None, what: str = "LoRA"):
    """The ``peft`` module, or a one-line :class:`ConfigError` naming the extra that installs it."""
    if not peft_available():
        raise ConfigError(source, f"{what} needs Hugging Face peft, which is not installed: {LORA_EXTRA}")
    import peft

    return peft


def settings_of(lora_cfg: Any) -> dict:
    """``{r, alpha, dropout, targets}`` from a ``trainable.lora`` section (dataclass or mapping)."""
    get = lora_cfg.get if isinstance(lora_cfg, dict) else lambda k: getattr(lora_cfg, k)
    return {"r": int(get("r")), "alpha": float(get("alpha")), "dropout": float(get("dropout")),
            "targets": [str(t) for t in get("targets")]}


def target_pattern(targets: "list[str]") -> str:
    """peft's ``target_modules`` regex (full match on module names) for the encoder blocks' layers."""
    paths = "|".join(re.escape(LORA_TARGETS[t]) for t in targets)
    return rf"image_encoder\.blocks\.\d+\.(?:{paths})"


class EncoderLora:
    """peft LoRA adapters injected into ``model``'s image encoder (see the module docstring)."""

    def __init__(self, model: SamMed3D, settings: dict):
        peft = require_peft()
        self.settings = settings_of(settings)
        s = self.settings
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        config = peft.LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                                 target_modules=target_pattern(s["targets"]), bias="none")
        self.tuner = peft.LoraModel(model, config, ADAPTER)  # injects in place; not a submodule of model
        self.model = model
        adapters = {n for n, p in model.named_parameters() if p.requires_grad}  # peft: only its adapters
        for n, p in model.named_parameters():
            p.requires_grad_(n in adapters or flags.get(n.replace(".base_layer.", "."), False))
        self.n_parameters = sum(p.numel() for n, p in model.named_parameters() if n in adapters)
        self.n_modules = len(self.tuner.targeted_module_names)
        self.trainable_in_all: Optional[int] = None  # with the rest that trains (attach_lora)

    def describe(self) -> dict:
        """What the run's config.json and model card record (``"lora"``)."""
        out = {**self.settings, "modules": self.n_modules, "parameters": int(self.n_parameters)}
        return out if self.trainable_in_all is None else {**out, "trainable_in_all": self.trainable_in_all}

    def summary(self) -> str:
        s = self.settings
        return (f"LoRA (peft) on the image encoder: r={s['r']}, alpha={s['alpha']:g}, dropout={s['dropout']:g}, "
                f"targets {'/'.join(s['targets'])} in {self.n_modules} layers, {self.n_parameters:,} parameters; "
                "embedding cache off (the image embeddings change as the encoder adapts)")

    def factors(self) -> dict[str, torch.Tensor]:
        """The LoRA factors (peft's adapter state dict, keys without the adapter name), on the CPU."""
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model, adapter_name=ADAPTER)
        return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}

    def merged(self) -> SamMed3D:
        """A copy of the model on the CPU with the factors merged in (official keys); the model is untouched."""
        merged = copy.deepcopy(self.tuner).cpu().merge_and_unload()  # on the CPU: as merge_factors does
        merged.__dict__.pop("peft_config", None)
        return merged

    def save(self, out_dir: "str | os.PathLike", meta: Optional[dict] = None) -> Path:
        """A model directory: the merged weights (:func:`save_model_dir`, ``"lora"`` in config.json)
        and :data:`LORA_FILE` with the factors; written whole or not at all."""
        meta = {**(meta or {}), "lora": self.describe()}
        with atomic_dir(out_dir) as tmp:
            save_model_dir(self.merged(), tmp, meta)
            save_safetensors(self.factors(), tmp / LORA_FILE, factor_metadata(self.settings))
        return Path(out_dir)


def attach_lora(model: SamMed3D, cfg, report: dict, say=None) -> Optional[EncoderLora]:
    """``cfg.trainable.lora`` on ``model`` (after :func:`~sam_l1dfl.training.clickloop.configure_trainable`,
    whose ``report`` gets the new counts and ``"lora"``); None without it."""
    if cfg.trainable.lora is None:
        return None
    lora = EncoderLora(model, settings_of(cfg.trainable.lora))
    lora.trainable_in_all = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    report.update(trainable=[n for n, p in model.named_parameters() if p.requires_grad],
                  n_trainable=lora.trainable_in_all,
                  n_total=int(sum(p.numel() for p in model.parameters())), lora=lora.describe())
    if say is not None:
        say(lora.summary())
    return lora


# ---------------------------------------------------------------------- factors on disk
def factor_metadata(settings: dict) -> dict:
    return {"format": LORA_FORMAT, "lora": json.dumps(settings_of(settings))}


def is_factor_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def merged_keys(factors: dict) -> list[str]:
    """The model weights that the factors change (``<layer>.weight`` of each adapted layer)."""
    return sorted({re.sub(r"\.lora_[AB]\.weight$", ".weight", k) for k in factors})


def read_factors(model_dir: "str | os.PathLike") -> Optional[tuple[dict, dict]]:
    """``(factors, settings)`` from a LoRA run's model directory (None when it has no :data:`LORA_FILE`)."""
    d = Path(model_dir)
    d = d.parent if d.name == MODEL_FILE else d
    path = d / LORA_FILE
    if not path.is_file():
        return None
    tensors, md = read_safetensors(path)
    if md.get("format") != LORA_FORMAT or "lora" not in md:
        raise CheckpointError(path, f"is not a sam-l1dfl LoRA file (no \"format\": \"{LORA_FORMAT}\" in its metadata)")
    return tensors, parse_settings(md["lora"], path)


def copy_factors(model_dir: "str | os.PathLike", dest: Path) -> dict[str, str]:
    """Copy a LoRA run's :data:`LORA_FILE` (checked) from ``model_dir`` into the directory ``dest``;
    ``{name: SHA-256}`` of what was copied (``{}`` without one)."""
    found = read_factors(model_dir) if Path(model_dir).is_dir() else None
    if found is None:
        return {}
    save_safetensors(found[0], dest / LORA_FILE, factor_metadata(found[1]))
    return {LORA_FILE: sha256_file(dest / LORA_FILE)}


def parse_settings(text: str, source) -> dict:
    try:
        s = settings_of(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(source, f"LoRA settings in the metadata are not readable ({exc})") from None
    unknown = [t for t in s["targets"] if t not in LORA_TARGETS]
    if unknown:
        raise CheckpointError(source, f"unknown LoRA targets {unknown}")
    return s


def merge_factors(sd: dict, cfg: SamMed3DConfig, settings: dict, factors: dict, source) -> dict:
    """``sd`` (a full state dict fitted to ``cfg``) with ``factors`` merged into the adapted weights,
    by peft: adapters injected, loaded (every adapter needs its factors, no factor may be left
    over, shapes must fit), ``merge_and_unload``.  The caller's RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = SamMed3D(cfg)
        model.load_state_dict(sd, strict=True)
        lora = EncoderLora(model, settings)
    from peft import set_peft_model_state_dict

    expected = set(lora.factors())
    missing, extra = sorted(expected - set(factors)), sorted(set(factors) - expected)
    if missing or extra:
        raise CheckpointError(source, f"the LoRA factors do not fit the model: {len(missing)} missing "
                                      f"{missing[:2]}, {len(extra)} unexpected {extra[:2]}")
    bad = [k for k, v in lora.factors().items() if tuple(v.shape) != tuple(factors[k].shape)]
    if bad:
        raise CheckpointError(source, f"LoRA factor shapes do not fit the model: {bad[:3]}")
    set_peft_model_state_dict(model, factors, adapter_name=ADAPTER)
    return {k: v.detach() for k, v in lora.tuner.merge_and_unload().state_dict().items()}


# ---------------------------------------------------------------------- deltas
def lora_delta(weights: "str | os.PathLike", base_sd: dict, model_sd: dict, cfg: SamMed3DConfig,
               base) -> tuple[dict, set, dict]:
    """For ``export --format delta``: ``(factors, keys they rebuild, delta metadata)`` of the LoRA run
    whose model directory is ``weights`` (``({}, set(), {})`` for any other model).  The factors
    are merged into ``base_sd`` as :func:`apply_lora_delta` will, and must give the run's merged
    weights ``model_sd`` (else ``base`` is not the checkpoint the run started from: refused)."""
    found = read_factors(weights) if Path(weights).is_dir() or Path(weights).name == MODEL_FILE else None
    if found is None:
        return {}, set(), {}
    factors, settings = found
    require_peft(weights, "a delta of a LoRA run")
    rebuilt = merge_factors(dict(base_sd), cfg, settings, factors, weights)
    keys = merged_keys(factors)
    off = max(float((rebuilt[k].float() - model_sd[k].detach().cpu().float()).abs().max()) for k in keys)
    if off > MATCH_ATOL:
        raise CheckpointError(base, f"is not the checkpoint this LoRA run started from: its encoder weights plus the "
                                    f"run's LoRA factors miss the run's merged weights by {off:.2g}")
    return factors, set(keys), {"lora": json.dumps(settings)}


def apply_lora_delta(sd: dict, upd: dict, cfg: SamMed3DConfig, settings_text: str, source) -> tuple[dict, dict]:
    """For the delta loader: ``(sd with the delta's LoRA factors merged in, the delta's other tensors)``."""
    settings = parse_settings(settings_text, source)
    require_peft(source, "a delta with LoRA factors")
    factors = {k: v for k, v in upd.items() if is_factor_key(k)}
    rest = {k: v for k, v in upd.items() if not is_factor_key(k)}
    return merge_factors(sd, cfg, settings, factors, source), rest


__all__ = ["ADAPTER", "EncoderLora", "MATCH_ATOL", "apply_lora_delta", "attach_lora", "copy_factors", "lora_delta", "factor_metadata", "is_factor_key", "merge_factors",
           "merged_keys", "peft_available", "read_factors", "require_peft", "settings_of", "target_pattern"]
