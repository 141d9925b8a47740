import json

import pytest

from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import atomic_path, dumps_compact, sha256_file, write_json_atomic


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


def test_dumps_compact_keeps_numeric_arrays_on_one_line():
    doc = {"world": [1.5, -2.0, 3e-05], "name": "x", "nested": [{"index": [1, 2, 3]}], "tags": ["a", "b"]}
    text = dumps_compact(doc)
    assert json.loads(text) == doc and text.endswith("\n")
    assert '"world": [1.5, -2.0, 3e-05]' in text and '"index": [1, 2, 3]' in text
    assert '"tags": [\n' in text  # only numeric arrays are folded
