"""``sam-l1dfl weights download|check`` without a network: a local Hugging Face cache,
``HF_HUB_OFFLINE=1``, the safe loader, the structure check and the SHA-256 record."""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import subprocess
import sys

import pytest
import torch

from sam_l1dfl.cli import main
from sam_l1dfl.commands.weights import EXAMPLES
from sam_l1dfl.errors import CheckpointError
from sam_l1dfl.formats import WEIGHTS_FILE
from sam_l1dfl.model import SamMed3DConfig
from sam_l1dfl.model.download import check_weights, download_weights
from sam_l1dfl.model.weights import skeleton, torch_load
from _weights_helpers import REVISION, offline_hub, populate_hf_cache, tiny_official_checkpoint


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    return tiny_official_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pth")


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_pth):
    """An offline hub whose cache holds the tiny official-format checkpoint as the turbo file."""
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    populate_hf_cache(cache, tiny_pth)
    return cache


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_from_the_cache_offline(tmp_path, hub, tiny_pth, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    download, check = (shlex.split(e)[1:] for e in EXAMPLES)  # the --help examples, verbatim
    out = tmp_path / "checkpoints"
    assert main(download) == 0
    dest = out / WEIGHTS_FILE
    assert dest.read_bytes() == tiny_pth.read_bytes() and not dest.is_symlink()
    sha = _sha(tiny_pth)
    assert (out / (WEIGHTS_FILE + ".sha256")).read_text() == f"{sha}  {WEIGHTS_FILE}\n"  # sha256sum -c format
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, WEIGHTS_FILE + ".sha256"]  # no temporaries
    text = capsys.readouterr().out
    assert f"revision {REVISION}" in text and f"sha256: {sha}" in text
    assert "warning:" in text and "NOT the official vit_b_ori" in text  # the tiny golden is not vit_b_ori

    # again: the file is kept (same inode), checked and reported as present
    ino = dest.stat().st_ino
    assert main(download + ["--quiet"]) == 0
    assert dest.stat().st_ino == ino and "already present" in capsys.readouterr().out
    assert main(check) == 0 and f"sha256: {sha}" in capsys.readouterr().out


def test_existing_file_that_changed_since_its_record_is_refused(tmp_path, hub, capsys):
    out = tmp_path / "c"
    assert main(["weights", "download", "--out-dir", str(out)]) == 0
    (out / (WEIGHTS_FILE + ".sha256")).write_text("0" * 64 + f"  {WEIGHTS_FILE}\n")
    capsys.readouterr()
    assert main(["weights", "download", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from the" in err and "--force" in err


def test_a_broken_file_in_place_says_that_force_replaces_it(tmp_path, hub, capsys):
    """A git-lfs pointer (or an interrupted download) at the destination: one line, naming it and
    saying that --force replaces it; the file is left as it was."""
    out = tmp_path / "c"
    out.mkdir()
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 123\n"
    (out / WEIGHTS_FILE).write_bytes(pointer)
    assert main(["weights", "download", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out / WEIGHTS_FILE}: ") and "download --force" in err
    assert (out / WEIGHTS_FILE).read_bytes() == pointer and sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE]


def test_force_replaces_only_with_a_file_that_passes(tmp_path, monkeypatch, tiny_pth):
    out = tmp_path / "c"
    out.mkdir()
    dest = out / WEIGHTS_FILE
    dest.write_bytes(b"old bytes")
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    # a cache entry whose content does not match its LFS name: refused, the old file stays
    populate_hf_cache(cache, tiny_pth, blob_name="f" * 64)
    with pytest.raises(CheckpointError, match="corrupt cache entry"):
        download_weights(out, force=True)
    assert dest.read_bytes() == b"old bytes" and sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE]
    # a good entry replaces it
    for p in sorted(cache.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    populate_hf_cache(cache, tiny_pth)
    res = download_weights(out, force=True)
    assert res.downloaded and dest.read_bytes() == tiny_pth.read_bytes() and res.revision == REVISION


def test_cached_file_with_a_missing_key_is_refused(tmp_path, monkeypatch, tiny_pth):
    sd = torch_load(tiny_pth)["model_state_dict"]
    del sd["mask_decoder.iou_token.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    populate_hf_cache(offline_hub(monkeypatch, tmp_path / "hf"), bad)
    with pytest.raises(CheckpointError, match=r"not a complete SAM-Med3D state dict: 1 missing keys: mask_decoder.iou_token"):
        download_weights(tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused_unread(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"model_state_dict": {"x": _Evil()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to unpickle.*posix.system"):
        check_weights(p)


def test_official_vit_b_ori_layout_is_recognised(tmp_path, capsys):
    # every tensor a zero-stride view of one value: the real manifest's shapes in a few kB
    one = torch.zeros(1)
    shapes = {k: v.shape for k, v in skeleton(SamMed3DConfig.preset("vit_b_ori")).state_dict().items()}
    p = tmp_path / "vit_b_ori.pth"
    torch.save({k: one.expand(s) if len(s) else one[0] for k, s in shapes.items()}, p)
    assert p.stat().st_size < 2_000_000
    chk = check_weights(p)
    assert chk.official and chk.tensors == 324 and chk.values == 100_509_616
    assert main(["weights", "check", str(p)]) == 0
    text = capsys.readouterr().out
    assert "the official vit_b_ori key manifest" in text and "warning" not in text
    assert (tmp_path / "vit_b_ori.pth.sha256").read_text().split()[0] == _sha(p)


def test_check_records_a_file_put_in_place_by_hand(tmp_path, tiny_pth, capsys):
    dest = tmp_path / WEIGHTS_FILE
    dest.write_bytes(tiny_pth.read_bytes())
    assert main(["weights", "check", str(dest), "--verbose"]) == 0
    assert (tmp_path / (WEIGHTS_FILE + ".sha256")).read_text() == f"{_sha(dest)}  {WEIGHTS_FILE}\n"
    assert "architecture: img_size=128, patch_size=16, in_chans=1, encoder_embed_dim=64" in capsys.readouterr().out


def test_empty_cache_offline_fails_in_one_line_saying_where_to_put_the_file(tmp_path):
    """A real process with the environment variables only (no patching)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl.cli", "weights", "download", "--out-dir", "ck"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    dest = tmp_path / "ck" / WEIGHTS_FILE
    assert lines[0].startswith(f"error: ck/{WEIGHTS_FILE}: cannot download {WEIGHTS_FILE}")
    assert "offline (HF_HUB_OFFLINE=1)" in lines[0]
    assert f"https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/{WEIGHTS_FILE}" in lines[0]
    assert f"put it at {dest}" in lines[0] and f"sam-l1dfl weights check ck/{WEIGHTS_FILE}" in lines[0]
    assert not (tmp_path / "ck").exists()
