import json

import pytest

from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import atomic_dir, atomic_path, dumps_compact, sha256_file, write_json_atomic


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    target = tmp_path / "out" / "pred.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz")  # writers that pick the format by suffix still work
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    write_json_atomic(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_sha256_known_value(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_input_error_names_file_and_problem():
    err = InputError("/data/SUV.nii.gz", "contains NaN")
    assert str(err) == "/data/SUV.nii.gz: contains NaN"
    assert isinstance(err, ValueError)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        p = write_json_atomic(tmp_path / "x.json", {})
    finally:
        os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_safetensors_outputs_get_the_umask_mode(tmp_path, umask):
    """safetensors.save_file writes 0600 files (its own temporary + rename): atomic_path and
    atomic_dir give them 0666 & ~umask like any other file, and folders 0777 & ~umask."""
    import os

    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        with atomic_dir(tmp_path / "d") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp / "model.safetensors"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2")
        assert not target.exists()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["a", "sub", "sub/b"]
    (target / "mine.txt").write_text("the user's")  # an existing folder: files replaced one by one
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new" and (target / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_dir_survives_sigkill(tmp_path):
    """SIGKILL while the folder is being written: the final name never exists half-written."""
    import subprocess
    import sys

    code = ("import os, signal, sys\n"
            "from sam_l1dfl.io_utils import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "export")], capture_output=True)
    assert out.returncode == -9
    assert not (tmp_path / "export").exists()


def test_dumps_compact_keeps_numeric_arrays_on_one_line():
    doc = {"world": [1.5, -2.0, 3e-05], "name": "x", "nested": [{"index": [1, 2, 3]}], "tags": ["a", "b"]}
    text = dumps_compact(doc)
    assert json.loads(text) == doc and text.endswith("\n")
    assert '"world": [1.5, -2.0, 3e-05]' in text and '"index": [1, 2, 3]' in text
    assert '"tags": [\n' in text  # only numeric arrays are folded


# ---------------------------------------------------------------------- output preflight (issue 13)
def test_writers_refuse_a_parent_that_is_a_file_in_one_line(tmp_path):
    from sam_l1dfl.io_utils import write_text_atomic

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(InputError, match="afile is a file, not a folder") as e:
        write_json_atomic(f / "sub" / "r.json", {})
    assert str(f / "sub" / "r.json") in str(e.value)
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_text_atomic(d, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_refuse_overwrite_sees_the_same_file_through_links(tmp_path):
    from sam_l1dfl.io_utils import check_outputs, refuse_overwrite

    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"data")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    hard = tmp_path / "hard.nii.gz"
    hard.hardlink_to(src)
    with pytest.raises(InputError, match="would overwrite the input; choose another --out"):
        refuse_overwrite([src], [src], hint="choose another --out")
    for other in (link, hard):
        with pytest.raises(InputError, match=f"would overwrite the input {src}"):
            refuse_overwrite([other], [src])
    refuse_overwrite([tmp_path / "new.nii.gz", None], [src, None])  # not an input: fine
    (tmp_path / "probs").mkdir()
    inside = tmp_path / "probs" / "lesion_1.nii.gz"
    inside.write_bytes(b"p")
    with pytest.raises(InputError, match="probs"):
        check_outputs([], [tmp_path / "probs"], [inside], within=[tmp_path / "probs"])
    assert src.read_bytes() == b"data"
