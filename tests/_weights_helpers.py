"""A local Hugging Face cache holding SAM-Med3D weights, for tests without a network.

The cache has the layout ``huggingface_hub`` reads (``models--<owner>--<name>/blobs/<sha256>``,
``snapshots/<commit>/<file>`` linking to the blob, ``refs/main`` naming the commit), and
:func:`offline_hub` points ``huggingface_hub`` at it with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from pathlib import Path

import torch

from sam_l1dfl.formats import WEIGHTS_FILE, WEIGHTS_REPO

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "sam_med3d_tiny_golden_compact.pt"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def tiny_official_checkpoint(path: Path) -> Path:
    """The golden case's state dict (made by the official code, tiny config) saved the way the
    official ``train.py`` saves checkpoints: ``{"model_state_dict": ..., "args": Namespace}``."""
    golden = torch.load(GOLDEN, map_location="cpu", weights_only=True)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in golden["state_dict_fp16"].items()}
    torch.save({"model_state_dict": sd, "epoch": 0, "args": argparse.Namespace(model_type="vit_b_ori")}, path)
    return path


def populate_hf_cache(cache_dir: Path, weights: Path, filename: str = WEIGHTS_FILE, repo: str = WEIGHTS_REPO,
                      revision: str = REVISION, blob_name: "str | None" = None) -> Path:
    """Put ``weights`` into a Hugging Face cache as ``repo``'s ``filename`` at ``revision`` (the
    blob named by its SHA-256, like an LFS file, unless ``blob_name``); returns the snapshot file."""
    root = Path(cache_dir) / ("models--" + repo.replace("/", "--"))
    blob = root / "blobs" / (blob_name or hashlib.sha256(weights.read_bytes()).hexdigest())
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, blob)
    snap = root / "snapshots" / revision / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snap


def offline_hub(monkeypatch, hf_home: Path) -> Path:
    """``HF_HOME=hf_home`` and ``HF_HUB_OFFLINE=1`` for this test (also for the already imported
    ``huggingface_hub``, which reads them at import); returns the hub cache ``hf_home/hub``."""
    from huggingface_hub import constants

    cache = Path(hf_home) / "hub"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
