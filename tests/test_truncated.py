"""Truncated and corrupt image files (issue 13, section 2): every read checks the bytes first.

SimpleITK reads a cut ``.nii``/``.nii.gz`` silently, zero-filling the rest; :mod:`sam_l1dfl.data.integrity`
refuses it with ``<file>: truncated or corrupt (...)`` before SimpleITK sees it, in every format
we read, and data-set commands count such a case as failed and go on.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from _data_helpers import make_image, write
from sam_l1dfl.cli import main
from sam_l1dfl.data.integrity import check_complete, nifti_nonfinite_counts
from sam_l1dfl.data.io import load_case, read_image, read_mask
from sam_l1dfl.errors import InputError

SHAPE = (20, 24, 28)  # (z, y, x): 13,440 voxels, 53,760 bytes of float32


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    pet = rng.uniform(0.5, 5, SHAPE).astype(np.float32)
    pet[:, :2] = 0.0  # zeros, as outside a PET's field of view
    seg = np.zeros(SHAPE, np.uint8)
    seg[5:12, 6:14, 8:18] = 1
    ct = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    sp, org = (2.0, 2.0, 3.0), (-20.0, 10.0, 5.0)
    return make_image(pet, sp, org), make_image(ct, sp, org), make_image(seg, sp, org)


def _case(folder, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    pet, ct, seg = _scene(seed)
    write(pet, folder / "SUV.nii.gz")
    write(ct, folder / "CTres.nii.gz")
    write(seg, folder / "SEG.nii.gz")
    return folder


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _one_line_truncated(exc, path):
    msg = str(exc)
    assert msg.startswith(f"{path}: truncated or corrupt ("), msg
    assert "\n" not in msg and ".cxx" not in msg and len(msg) < 400, msg


# ---------------------------------------------------------------------- library
@pytest.mark.parametrize("which", ["pet", "ct", "label"])
def test_half_a_nii_gz_is_refused_as_pet_ct_and_seg(tmp_path, which):
    d = _case(tmp_path / "c")
    name = {"pet": "SUV", "ct": "CTres", "label": "SEG"}[which]
    _cut(d / f"{name}.nii.gz")
    with pytest.raises(InputError) as e:
        load_case(dict(pet=d / "SUV.nii.gz", ct=d / "CTres.nii.gz", label=d / "SEG.nii.gz"))
    _one_line_truncated(e.value, d / f"{name}.nii.gz")
    assert "gzip stream" in str(e.value)


def test_a_nii_cut_short_is_refused_with_the_sizes(tmp_path):
    pet, _, _ = _scene()
    p = tmp_path / "SUV.nii"
    write(pet, p)
    full = p.stat().st_size
    _cut(p, 0.8)
    with pytest.raises(InputError) as e:
        read_image(p, "PET")
    _one_line_truncated(e.value, p)
    assert f"{full:,}" in str(e.value)  # what the header needs


def test_a_corrupt_byte_in_the_gzip_body_is_refused(tmp_path):
    _, ct, _ = _scene()
    good = tmp_path / "good.nii.gz"
    write(ct, good)
    data = bytearray(good.read_bytes())
    for k, pos in enumerate((len(data) // 2, len(data) - 6)):  # deflate body; the CRC-32 trailer
        bad = tmp_path / f"bad{k}.nii.gz"
        flipped = bytearray(data)
        flipped[pos] ^= 0x55
        bad.write_bytes(bytes(flipped))
        with pytest.raises(InputError) as e:
            read_image(bad, "CT")
        _one_line_truncated(e.value, bad)


def test_valid_files_still_read_identically(tmp_path):
    pet, ct, seg = _scene()
    for img, kind in ((pet, "PET"), (ct, "CT"), (seg, "label")):
        for ext in (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd"):
            for compress in (True, False):
                p = tmp_path / f"{kind}{int(compress)}{ext}"
                sitk.WriteImage(img, str(p), compress)
                got = read_image(p, kind)
                ref = sitk.ReadImage(str(p))
                np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(ref))
                assert got.GetOrigin() == ref.GetOrigin() and got.GetSpacing() == ref.GetSpacing()
    _, fg = read_mask(tmp_path / "label1.nii.gz", "label")
    assert fg.sum() == (sitk.GetArrayViewFromImage(seg) > 0).sum()


@pytest.mark.parametrize("ext,compress", [(".mha", False), (".mha", True), (".nrrd", False), (".nrrd", True),
                                          (".mhd", False), (".mhd", True)])
def test_other_formats_cut_short(tmp_path, ext, compress):
    pet, _, _ = _scene()
    p = tmp_path / f"SUV{ext}"
    sitk.WriteImage(pet, str(p), compress)
    data_file = p.with_suffix(".zraw" if compress else ".raw") if ext == ".mhd" else p
    _cut(data_file, 0.6)
    with pytest.raises(InputError) as e:
        read_image(p, "PET")
    _one_line_truncated(e.value, p)
    if ext == ".mhd":
        data_file.unlink()
        with pytest.raises(InputError, match="is missing"):
            read_image(p, "PET")


def test_corrupt_compressed_metaimage(tmp_path):
    pet, _, _ = _scene()
    p = tmp_path / "SUV.mha"
    sitk.WriteImage(pet, str(p), True)
    data = bytearray(p.read_bytes())
    data[-200] ^= 0x55
    p.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        read_image(p, "PET")
    _one_line_truncated(e.value, p)


@pytest.mark.parametrize("chunk", [1 << 16, (1 << 16) + 3, 1 << 24])
def test_nan_counts_come_with_the_gzip_check(tmp_path, chunk):
    """The completeness pass over a .nii.gz counts NaN/inf at any chunk boundary (ITK reads them as 0)."""
    a = np.ones((40, 30, 50), np.float32)  # 240,000 bytes: several chunks
    a.flat[[0, 16383, 16384, 59_001]] = np.nan
    a.flat[[1, 59_999]] = np.inf
    p = write(make_image(a), tmp_path / "x.nii.gz")
    assert check_complete(p, count_nonfinite=True, chunk_bytes=chunk) == (4, 2)
    assert nifti_nonfinite_counts(p, chunk_bytes=chunk) == (4, 2)
    q = write(make_image(a), tmp_path / "x.nii")
    assert check_complete(q, count_nonfinite=True) is None  # plain files are only sized, not read
    assert nifti_nonfinite_counts(q, chunk_bytes=chunk) == (4, 2)
    with pytest.raises(InputError, match="4 NaN and 2 infinite"):
        read_image(p, "PET")


def test_itk_messages_carry_no_build_paths(tmp_path):
    p = tmp_path / "x.nii"
    p.write_bytes(b"this is no image" * 40)
    with pytest.raises(InputError) as e:
        read_image(p, "PET")
    msg = str(e.value)
    assert msg.startswith(f"{p}: not a readable PET image (") and ".cxx" not in msg and "0x" not in msg, msg


# ---------------------------------------------------------------------- commands
def _two_cases(root, bad_name):
    _case(root / "good", 0)
    _case(root / "bad", 1)
    _cut(root / "bad" / bad_name)
    return root


def _sizes(d):
    return sorted((os.path.relpath(os.path.join(r, f), d), os.path.getsize(os.path.join(r, f)))
                  for r, _, fs in os.walk(d) for f in fs)


@pytest.mark.parametrize("bad_name", ["SUV.nii.gz", "CTres.nii.gz", "SEG.nii.gz"])
def test_data_check_full_lists_the_bad_case_and_goes_on(tmp_path, capsys, bad_name):
    root = _two_cases(tmp_path / "ds", bad_name)
    before = _sizes(root)
    rc = main(["data", str(root), "--check", "full"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"bad: {root / 'bad' / bad_name}: truncated or corrupt" in out
    assert "1 case(s)" in out and "good/SUV.nii.gz" in out
    assert _sizes(root) == before


@pytest.mark.parametrize("bad_name", ["SUV.nii.gz", "SEG.nii.gz"])
def test_prompts_writes_the_good_case_and_fails_the_bad(tmp_path, capsys, bad_name):
    root = _two_cases(tmp_path / "ds", bad_name)
    out = tmp_path / "p"
    rc = main(["prompts", "--data", str(root), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "good.json").is_file() and not (out / "bad.json").exists()
    assert f"error: bad: {root / 'bad' / bad_name}: truncated or corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--pet", "--mask"])
def test_mip_refuses_a_truncated_image(tmp_path, capsys, flag):
    d = _case(tmp_path / "c")
    bad = d / ("SUV.nii.gz" if flag == "--pet" else "SEG.nii.gz")
    _cut(bad)
    argv = ["mip", "--pet", str(d / "SUV.nii.gz"), "--out", str(tmp_path / "f.png")]
    rc = main(argv + (["--mask", str(d / "SEG.nii.gz")] if flag == "--mask" else []))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad}: truncated or corrupt")
    assert not (tmp_path / "f.png").exists()
