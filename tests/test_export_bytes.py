"""The same model exports to the same bytes (issue 22), in every format.

What used to differ: the ``.pth`` zip's top folder (torch.save names it after the temporary file
name), the order of safetensors' ``__metadata__`` (a random-order map in safetensors 0.8), the
export date in ``config.json`` and the model card, and the folder name in the card.  Each format is
exported twice, to differently named outputs (so to different temporary names), and every file's
SHA-256 must match.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from sam_l1dfl.export import export_checkpoint
from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny base model directory and a fine-tuned one (decoder changed)."""
    d = tmp_path_factory.mktemp("bytes")
    torch.manual_seed(0)
    base = build_sam_med3d(SamMed3DConfig.preset("tiny"))
    save_model_dir(base, d / "base", {})
    with torch.no_grad():
        base.mask_decoder.iou_prediction_head.layers[0].weight.add_(0.5)
    save_model_dir(base, d / "ft", {"loss": {"name": "l1dfl"}})
    return d


def digests(path: Path) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path)) if path.is_dir() else "file": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


@pytest.mark.parametrize("fmt,suffix", [("sam-med3d", ".pth"), ("safetensors", ""), ("delta", ".safetensors"),
                                        ("onnx", "")])
def test_the_same_model_exports_to_the_same_bytes(models, tmp_path, fmt, suffix):
    outs = [tmp_path / f"first{suffix}", tmp_path / "again" / f"second_export{suffix}"]
    for out in outs:
        export_checkpoint(str(models / "ft"), fmt, out, base=str(models / "base") if fmt == "delta" else None,
                          progress=False)
    first, second = (digests(o) for o in outs)
    assert len(first) >= 1 and first == second
    if fmt == "sam-med3d":  # torch.load's top folder: the same for any file name
        assert {n.split("/", 1)[0] for n in zipfile.ZipFile(outs[0]).namelist()} == {"archive"}
    if fmt in ("safetensors", "onnx"):
        assert "date" not in json.loads((outs[0] / "config.json").read_text())["export"]


def test_safetensors_metadata_is_written_in_sorted_order(tmp_path):
    """safetensors itself writes ``__metadata__`` in a random order; ours is sorted, so saves agree."""
    from sam_l1dfl.model.weights import save_safetensors

    md = {str(k): f"value {k}" for k in range(16)}
    t = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}
    for name in ("a", "b", "c"):
        save_safetensors(t, tmp_path / f"{name}.safetensors", md)
    raw = [(tmp_path / f"{n}.safetensors").read_bytes() for n in "abc"]
    assert raw[0] == raw[1] == raw[2]
    n = int.from_bytes(raw[0][:8], "little")
    assert list(json.loads(raw[0][8:8 + n])["__metadata__"]) == sorted(md)
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "a.safetensors"))
    assert torch.equal(back["w"], t["w"]) and torch.equal(back["b"], t["b"])
