"""Weight files of SAM-Med3D: read, check, fit to a config, write (no model loading here).

* :func:`read_weights`: one full checkpoint -> ``(state_dict, format, config or None, sha256)``:
  an official training checkpoint ``{"model_state_dict": ..., "optimizer_state_dict": ...,
  "args": argparse.Namespace, ...}`` (``sam_med3d_turbo.pth``), a bare state dict,
  ``{"model": ...}`` or ``{"state_dict": ...}``, with or without the ``module.`` (DDP) /
  ``_orig_mod.`` (torch.compile) prefixes, a ``.safetensors`` file, or a model directory
  (``model.safetensors`` + ``config.json``, see docs/architecture.md).
* :func:`resolve_model_path`: a run directory -> its ``best/`` (or ``last/``).
* :func:`infer_config` (architecture from key shapes) and :func:`fit_state_dict` (box
  embeddings, inflated input channels, missing/unexpected/mismatched keys).
* :func:`save_model_dir`, :func:`read_model_meta`, :func:`official_state_dict`: writing;
  :func:`save_safetensors` writes the same bytes for the same tensors and metadata.

Pickles are read by :func:`torch_load`, also used to vet training states
(:mod:`sam_l1dfl.training.runtime`): a file that is not a ``torch.save`` file at all (text, a
Git LFS pointer, a truncated zip) is refused as such first; then ``torch.load(weights_only=True)``
with an allowlist of the harmless types the official files contain (:func:`safe_globals`:
``argparse.Namespace``, ``collections.Counter`` from the LR scheduler, numpy scalars and
arrays).  Anything else is refused with a :class:`CheckpointError` naming the offending globals,
unless ``trust=True``.  :func:`compare_state_dicts` and :func:`describe_fit` check and describe
how any state dict fits a network (the CNN loader uses them too).

Deltas are read by :mod:`sam_l1dfl.model.delta`; :mod:`sam_l1dfl.model.checkpoint` is the
loader that dispatches between the two and builds the model.  File names and format tags come
from :mod:`sam_l1dfl.formats`.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import CONFIG_FILE, DELTA_FORMAT, DIR_FORMAT, META_CONFIG_KEY, MODEL_FILE
from sam_l1dfl.io_utils import atomic_dir, sha256_file, write_json_atomic
from sam_l1dfl.model.config import SamMed3DConfig
from sam_l1dfl.model.sam import SamMed3D
from sam_l1dfl.model.standin import STANDIN_DIR, is_standin_name, standin_available

BOX_KEYS = ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight")
POS_POINT_KEY = "prompt_encoder.point_embeddings.1.weight"
PATCH_KEY = "image_encoder.patch_embed.proj.weight"
_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------- reading
def safe_globals() -> list:
    """The allowlist of :func:`torch_load`: types besides tensors that harmless pickles hold.

    ``argparse.Namespace`` and ``collections.Counter`` (official training checkpoints), numpy
    scalars, dtypes and arrays (``best_loss`` values, Accelerate's RNG states); all inert.
    """
    core = getattr(np, "_core", None) or np.core
    allowed: list = [argparse.Namespace, collections.Counter, codecs.encode, core.multiarray.scalar,
                     core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def summarise_keys(keys, limit: int = 8) -> str:
    """Readable one-line summary of many keys: block indices collapsed, long lists cut."""
    groups: "OrderedDict[str, int]" = OrderedDict()
    for k in keys:
        g = re.sub(r"\.(\d+)\.", ".*.", k)
        groups[g] = groups.get(g, 0) + 1
    items = [g if n == 1 else f"{g} (x{n})" for g, n in groups.items()]
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def not_a_torch_file(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a ``torch.save`` file (None when it may be one), from its first
    bytes and, for a zip archive, its central directory; nothing is unpickled."""
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself (run `git lfs pull`)"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "truncated or corrupt (the zip archive's directory at its end is missing or damaged)"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip archive without the data.pkl of torch.save"
        return None
    if head[:1] == b"\x80":  # a pickle (protocol 2+), also torch.save's legacy format
        return None
    return f"neither a torch.save zip archive nor a pickle (it starts with {head[:16]!r})"


def _refusal(path: Path, exc: Exception) -> str:
    """Why the restricted unpickler refused ``path``: the disallowed globals, or its message."""
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        pass
    if not names:
        m = re.findall(r"GLOBAL ([\w\.]+ ?[\w\.]*)", str(exc))
        names = [n.replace(" ", ".") for n in m]
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
    names = [n for n in names if n not in allowed] or names
    if names:
        return (f"the file needs {', '.join(sorted(set(names)))}, which is not a tensor or a known-harmless type "
                "and could run arbitrary code")
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
    return (f"the safe unpickler cannot read it ({m.group(1).strip() if m else _first_line(exc)}), and a full "
            "unpickle could run arbitrary code")


def torch_load(path: "str | os.PathLike", trust: bool = False, what: str = "PyTorch checkpoint",
               check_only: bool = False) -> Any:
    """``torch.load`` that never runs code unless ``trust``; every failure is one CheckpointError.

    A file that is not a ``torch.save`` file (:func:`not_a_torch_file`) is refused as such, with
    or without ``trust``.  Then ``torch.load(weights_only=True)`` with :func:`safe_globals`;
    anything else is refused naming the offending globals, unless ``trust`` (then the full
    unpickler).  ``check_only``: the restricted load only (tensors memory-mapped, nothing
    returned), to vet a file that another library loads next; with ``trust`` it does nothing more
    than the first check.  ``what`` names the file in messages.
    """
    path = Path(path)
    why = not_a_torch_file(path)
    if why:
        raise CheckpointError(path, f"not a {what}: {why}")
    if check_only and trust:
        return None
    mmap = check_only and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return None if check_only else obj
    except pickle.UnpicklingError as exc:
        if not trust:
            raise CheckpointError(
                path,
                f"refusing to unpickle: {_refusal(path, exc)}; "
                "pass --trust (trust=True) only if you trust where this file came from",
            ) from None
    except EOFError:
        raise CheckpointError(path, f"not a {what}: truncated (the pickle ends early)") from None
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, AttributeError, ImportError) as exc:
        raise CheckpointError(path, f"not a readable {what} ({_first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # anything may fail in an arbitrary pickle
        raise CheckpointError(path, f"not a readable {what} ({type(exc).__name__}: {_first_line(exc)})") from None


def _unwrap(obj: Any, path: Path) -> tuple[dict, str]:
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict of tensors, found a {type(obj).__name__}")
    fmt = "bare state dict"
    for key, name in (
        ("model_state_dict", "official training checkpoint {'model_state_dict': ...}"),
        ("model", "{'model': state dict}"),
        ("state_dict", "{'state_dict': state dict}"),
    ):
        if key in obj and isinstance(obj[key], dict):
            obj, fmt = obj[key], name
            break
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            path,
            f"no state dict found: entries {summarise_keys(map(str, bad), 5)} are not tensors "
            "(expected a state dict, or one under 'model_state_dict', 'model' or 'state_dict')",
        )
    sd = dict(obj)
    stripped = []
    changed = True
    while changed and sd:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped.append(p)
                changed = True
    if stripped:
        fmt += " with prefix " + "".join(stripped)
    return sd, fmt


def read_weights(
    path: "str | os.PathLike", trust: bool = False
) -> tuple[dict[str, torch.Tensor], str, Optional[SamMed3DConfig], str]:
    """Read one full checkpoint: ``(state_dict, format, config or None, sha256)``.

    The config is the one stored with the weights (run directory or safetensors metadata), if
    any.  The SHA-256 is that of the weights file.  A delta is refused here
    (:func:`sam_l1dfl.model.checkpoint.read_checkpoint` applies it to its base).
    """
    path = resolve_model_path(path)
    cfg: Optional[SamMed3DConfig] = None
    if path.is_dir():
        weights = path / MODEL_FILE
        if not weights.is_file():
            raise CheckpointError(path, f"a model directory must contain {MODEL_FILE}")
        meta = read_model_meta(path)
        if "model" in meta:
            cfg = SamMed3DConfig.from_dict(meta["model"], source=str(path / CONFIG_FILE))
        sd, _, cfg2 = _read_safetensors(weights)
        return sd, "sam-l1dfl model directory", cfg or cfg2, sha256_file(weights)
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path):
        if safetensors_format(path) == DELTA_FORMAT:
            raise CheckpointError(path, "is a sam-l1dfl delta, not a full checkpoint")
        sd, fmt, cfg = _read_safetensors(path)
        side = path.parent / CONFIG_FILE
        if cfg is None and path.name == MODEL_FILE and side.is_file():
            meta = read_model_meta(path.parent)
            if "model" in meta:
                cfg = SamMed3DConfig.from_dict(meta["model"], source=str(side))
        return sd, fmt, cfg, sha256_file(path)
    obj = torch_load(path, trust)
    sd, fmt = _unwrap(obj, path)
    return sd, fmt, None, sha256_file(path)


def resolve_model_path(path: "str | os.PathLike") -> Path:
    """The weights behind ``path``: a ``finetune.py`` run directory (``runs/<name>``, holding
    ``best/`` and/or ``last/``) gives its ``best/`` (``last/`` if there is no ``best/``); a model
    directory or a file is returned as is.  The word ``standin`` names the packaged stand-in
    (:data:`~sam_l1dfl.model.standin.STANDIN_DIR`), even when the current directory holds a
    ``standin`` folder (that one is named ``./standin``; :func:`~sam_l1dfl.model.standin.is_standin_name`)."""
    if is_standin_name(path):
        if not standin_available():
            raise CheckpointError(STANDIN_DIR, "the stand-in model is not installed; build it with "
                                               "scripts/pretrain_standin.py --install")
        return STANDIN_DIR
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file or directory")
    if p.is_dir() and not (p / MODEL_FILE).is_file():
        for sub in ("best", "last"):
            if (p / sub / MODEL_FILE).is_file():
                return p / sub
        raise CheckpointError(
            p, f"is neither a model directory ({MODEL_FILE} + {CONFIG_FILE}) nor a run directory with best/ or last/"
        )
    return p


def safetensors_format(path: Path) -> Optional[str]:
    """The ``format`` entry of a safetensors file's metadata (None when unreadable or absent)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return None


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    if len(head) < 9 or head[:2] == b"PK" or head[:1] == b"\x80":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8 and head[8:9] == b"{"


def read_safetensors(path: "str | os.PathLike", keys_only: bool = False) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file (``keys_only``: the tensor names mapped to
    None, header only); an unreadable file is a one-line :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: None if keys_only else f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({_first_line(exc)})") from None


def _read_safetensors(path: Path) -> tuple[dict, str, Optional[SamMed3DConfig]]:
    sd, meta = read_safetensors(path)
    cfg = None
    if META_CONFIG_KEY in meta:
        try:
            cfg = SamMed3DConfig.from_dict(json.loads(meta[META_CONFIG_KEY]), source=str(path))
        except json.JSONDecodeError:
            raise CheckpointError(path, f"metadata {META_CONFIG_KEY} is not valid JSON") from None
    sd, fmt = _unwrap(sd, path)
    return sd, "safetensors" + fmt.replace("bare state dict", ""), cfg


# ---------------------------------------------------------------------------------- config
_REQUIRED = (
    "image_encoder.pos_embed",
    PATCH_KEY,
    "image_encoder.blocks.0.attn.qkv.weight",
    "image_encoder.neck.0.weight",
    "prompt_encoder.mask_downscaling.3.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.iou_prediction_head.layers.0.weight",
)


def _attention_layout(sd: dict[str, torch.Tensor], depth: int, grid: int) -> tuple[int, int, list[int], bool]:
    """``(head_dim, window_size, global_attn_indexes, use_rel_pos)`` from the encoder's relative
    position tables (a table as long as the grid is a global block; SAM's defaults without them)."""
    rel = [sd.get(f"image_encoder.blocks.{i}.attn.rel_pos_d") for i in range(depth)]
    if rel[0] is not None:
        head_dim = int(rel[0].shape[1])
        lengths = [int(r.shape[0]) for r in rel]
        global_len = 2 * grid - 1
        window_lengths = {n for n in lengths if n != global_len}
        window = (max(window_lengths) + 1) // 2 if window_lengths else grid
        global_idx = [i for i, n in enumerate(lengths) if n == global_len] if window != grid else []
        use_rel_pos = True
    else:
        head_dim, window, global_idx, use_rel_pos = 64, 14, [], False
    return head_dim, window, global_idx, use_rel_pos


def infer_config(sd: dict[str, torch.Tensor], source: "str | os.PathLike | None" = None) -> SamMed3DConfig:
    """Infer the architecture from key names and shapes.

    Not recoverable from shapes and taken from the official builder: the MLP ratio (checked),
    ``decoder_num_heads`` (8).  Recognises other widths, depths, window sizes, ``in_chans`` and
    box embeddings.
    """
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(
            source, "does not look like a SAM-Med3D state dict: missing " + summarise_keys(missing)
        )
    pos = sd["image_encoder.pos_embed"]
    if pos.dim() != 5:
        raise CheckpointError(source, f"image_encoder.pos_embed has shape {tuple(pos.shape)}, expected 5-D")
    grid, embed = int(pos.shape[1]), int(pos.shape[-1])
    pw = sd[PATCH_KEY]
    patch, in_chans = int(pw.shape[-1]), int(pw.shape[1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
    head_dim, window, global_idx, use_rel_pos = _attention_layout(sd, depth, grid)
    if embed % head_dim:
        raise CheckpointError(source, f"relative-position width {head_dim} does not divide embed dim {embed}")
    mlp_dim = int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
    n_iou = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k)))
    dec_layers = [int(m.group(1)) for k in sd if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))]
    dec_mlp = sd.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")
    d = dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        encoder_embed_dim=embed,
        encoder_depth=depth,
        encoder_num_heads=embed // head_dim,
        encoder_global_attn_indexes=global_idx,
        window_size=window,
        out_chans=int(sd["image_encoder.neck.0.weight"].shape[0]),
        mask_in_chans=int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        num_multimask_outputs=int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=n_iou,
        iou_head_hidden_dim=int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        decoder_transformer_depth=1 + max(dec_layers) if dec_layers else 2,
        decoder_mlp_dim=int(dec_mlp.shape[0]) if dec_mlp is not None else 2048,
        decoder_num_heads=8,
        use_boxes=all(k in sd for k in BOX_KEYS),
        mlp_ratio=mlp_dim / embed,
        use_rel_pos=use_rel_pos,
    )
    try:
        return SamMed3DConfig(**d)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(source, f"cannot infer a model config from the key shapes ({exc})") from None


# ---------------------------------------------------------------------------------- fitting
def skeleton(cfg: SamMed3DConfig, attn_impl: str = "auto") -> SamMed3D:
    """The model for ``cfg`` on the meta device (no memory, no initialisation): its
    ``state_dict()`` is what :func:`fit_state_dict` fits a file to."""
    with torch.device("meta"):
        return SamMed3D(cfg, attn_impl=attn_impl)


def fit_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    """Adapt ``sd`` to the model's keys: box embeddings and patch-embedding inflation.

    Returns ``(sd, newly_initialized, missing, unexpected, mismatched)``.
    """
    sd = dict(sd)
    new: list[str] = []
    if all(k in expected for k in BOX_KEYS) and POS_POINT_KEY in sd:
        for k in BOX_KEYS:
            if k not in sd:
                sd[k] = sd[POS_POINT_KEY].clone()
                new.append(f"{k} (box corner, copied from the positive-point embedding)")
    if PATCH_KEY in sd and PATCH_KEY in expected:
        w, e = sd[PATCH_KEY], expected[PATCH_KEY]
        if w.dim() == 5 and w.shape[0] == e.shape[0] and w.shape[2:] == e.shape[2:] and w.shape[1] < e.shape[1]:
            inflated = torch.zeros(e.shape, dtype=w.dtype)
            inflated[:, : w.shape[1]] = w
            sd[PATCH_KEY] = inflated
            new.append(f"{PATCH_KEY} input channels {w.shape[1]}..{e.shape[1] - 1} (zeros)")
    return (sd, new, *compare_state_dicts(sd, expected))


def compare_state_dicts(sd: dict, expected: dict) -> tuple[list, list, list]:
    """``(missing, unexpected, mismatched)`` keys of ``sd`` against a model's ``expected`` state
    dict; ``mismatched`` holds ``(key, file shape, model shape)``.  For any network."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        (k, tuple(sd[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, mismatched


def describe_fit(missing, unexpected, mismatched) -> str:
    """One line on what :func:`compare_state_dicts` found (key groups summarised)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {summarise_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {summarise_keys(unexpected)}")
    if mismatched:
        shown = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in mismatched[:4]]
        more = f", ... and {len(mismatched) - 4} more" if len(mismatched) > 4 else ""
        parts.append(f"{len(mismatched)} shape mismatches: " + ", ".join(shown) + more)
    return "; ".join(parts)


def fit_error(path, missing, unexpected, mismatched) -> CheckpointError:
    """The loader's error for a SAM-Med3D state dict that does not fit the model's config."""
    hint = ""
    if any(k in BOX_KEYS for k in unexpected):
        hint = "; the file has box embeddings: use a config with use_boxes=True"
    elif mismatched or missing:
        hint = "; is the model config right? (cfg=None infers it from the file)"
    return CheckpointError(path, "does not fit the model: " + describe_fit(missing, unexpected, mismatched) + hint)


# ---------------------------------------------------------------------------------- writing
def official_state_dict(model: SamMed3D, drop_boxes: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The model's weights in the official SAM-Med3D layout (loadable by the official code).

    Refuses multi-channel patch embeddings (the official model takes one channel) and box
    embeddings (unless ``drop_boxes``: the official model has only the two point embeddings).
    """
    cfg: SamMed3DConfig = model.config
    if cfg.in_chans != 1:
        raise CheckpointError(
            None,
            f"the model takes {cfg.in_chans} input channels but the official SAM-Med3D layout takes 1; "
            "export it as a sam-l1dfl model directory or safetensors instead",
        )
    sd = model.state_dict()
    has_boxes = any(k in sd for k in BOX_KEYS)
    if has_boxes and not drop_boxes:
        raise CheckpointError(
            None,
            "the model has box-prompt embeddings (prompt_encoder.point_embeddings.2/3) that the official "
            "layout lacks; export with drop_boxes=True (--drop-boxes) to leave them out",
        )
    return OrderedDict(
        (k, v.detach() if v.is_meta else v.detach().cpu()) for k, v in sd.items() if k not in BOX_KEYS
    )


def save_safetensors(tensors: dict, path: "str | os.PathLike", metadata: dict) -> None:
    """``safetensors.torch.save_file`` whose bytes depend only on the tensors and ``metadata``.

    safetensors (0.8) writes ``__metadata__`` in the random order of a Rust ``HashMap``
    (safetensors issue #584), so two saves of one model differ.  The header is written again with
    the metadata keys sorted (the tensors' entries keep the writer's deterministic order), padded
    with spaces to its length, as the format allows.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted((header.get("__metadata__") or {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:  # always, for our ASCII metadata: the same JSON in another order
            f.seek(8)
            f.write(text + b" " * (n - len(text)))
            return
        data = f.read()  # a longer re-encoding: the data moves (its offsets are relative to it)
        text += b" " * (-len(text) % 8)
        f.seek(0)
        f.write(len(text).to_bytes(8, "little") + text + data)
        f.truncate()


def save_model_dir(model: SamMed3D, out_dir: "str | os.PathLike", meta: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``
    (:func:`~sam_l1dfl.io_utils.atomic_dir`: a new directory appears whole or not at all).

    ``meta`` holds the run's other config.json fields (``input_mode``, ``preprocess``,
    ``prompt_types``, ``loss``, ``training``...); ``format``, ``version`` and ``model`` are set
    here.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(out, "exists and is not a directory")
    cfg: SamMed3DConfig = model.config
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {"format": DIR_FORMAT, "version": 1}
    doc.update({k: v for k, v in (meta or {}).items() if k not in ("format", "version", "model")})
    doc["model"] = cfg.to_dict()
    with atomic_dir(out) as tmp:
        save_safetensors(sd, tmp / MODEL_FILE, {"format": DIR_FORMAT, META_CONFIG_KEY: json.dumps(cfg.to_dict())})
        write_json_atomic(tmp / CONFIG_FILE, doc)
    return out


def read_model_meta(path: "str | os.PathLike") -> dict:
    """The config.json of a model directory (``path``: the directory or its model.safetensors).

    For a standalone ``.safetensors`` written by us, the model config from its metadata.
    """
    path = Path(path)
    d = path if path.is_dir() else path.parent
    cj = d / CONFIG_FILE
    if cj.is_file() and (path.is_dir() or path.name == MODEL_FILE):
        try:
            meta = json.loads(cj.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(cj, f"not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != DIR_FORMAT:
            raise CheckpointError(cj, f"not a {DIR_FORMAT} config (missing \"format\": \"{DIR_FORMAT}\")")
        return meta
    if path.is_dir():
        raise CheckpointError(path, f"no {CONFIG_FILE} in this model directory")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            m = f.metadata() or {}
        if META_CONFIG_KEY in m:
            return {"format": DIR_FORMAT, "version": 1, "model": json.loads(m[META_CONFIG_KEY])}
    raise CheckpointError(path, "has no sam-l1dfl model metadata (expected a model directory with config.json)")
