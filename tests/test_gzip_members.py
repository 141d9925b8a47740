"""``.nii.gz`` files made of several gzip members (issue 22): read right, or refused in one line.

No multi-member layout was found that SimpleITK or :func:`sam_l1dfl.data.io.read_image` reads
wrong: concatenated members (also split inside the 348-byte NIfTI header, also one member per
few bytes of it), bgzip's BGZF blocks (``BC`` extra field, empty end-of-file block, also in the
middle), empty members, optional header fields (FNAME, FCOMMENT, FHCRC, FEXTRA), zero padding,
pigz-style single members with sync or full flushes (pigz and dcm2niix write those) all read to
the same voxels.  What ITK reads *silently wrong* (a later member truncated or with a bad CRC:
zeros) is refused by the completeness check, and so is data after the last member.  These
tests pin that; the blocks are written with zlib here (no bgzip or pigz needed).
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl.data.integrity import check_complete, nifti_nonfinite_counts
from sam_l1dfl.data.io import read_image
from sam_l1dfl.errors import InputError

BGZF_MAX = 65280  # bgzip's input per block
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def deflate(data: bytes, level: int = 6, flushes: "list[int]" = (), mode: int = zlib.Z_SYNC_FLUSH) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    out, start = [], 0
    for cut in list(flushes) + [len(data)]:
        out.append(c.compress(data[start:cut]))
        out.append(c.flush(mode) if cut < len(data) else c.flush())
        start = cut
    return b"".join(out)


def member(data: bytes, *, extra: "bytes | None" = None, name: "bytes | None" = None,
           comment: "bytes | None" = None, hcrc: bool = False, body: "bytes | None" = None) -> bytes:
    """One gzip member (RFC 1952) holding ``data``."""
    flg = (4 if extra is not None else 0) | (8 if name is not None else 0) | (16 if comment is not None else 0)
    head = b"\x1f\x8b\x08" + bytes([flg | (2 if hcrc else 0)]) + b"\0\0\0\0\0\xff"
    if extra is not None:
        head += struct.pack("<H", len(extra)) + extra
    head += (name + b"\0" if name is not None else b"") + (comment + b"\0" if comment is not None else b"")
    if hcrc:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head + (deflate(data) if body is None else body) + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def bgzf_block(data: bytes) -> bytes:
    """A BGZF block: a gzip member with the ``BC`` extra subfield holding the block size - 1."""
    body = deflate(data)
    bsize = 10 + 2 + 6 + len(body) + 8 - 1
    return member(data, extra=b"BC" + struct.pack("<HH", 2, bsize), body=body)


def pieces(data: bytes, cuts) -> list[bytes]:
    cuts = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def bgzf(data: bytes, first: "list[int]" = ()) -> bytes:
    cuts = sorted(set(first) | set(range(BGZF_MAX, len(data), BGZF_MAX)))
    return b"".join(bgzf_block(p) for p in pieces(data, cuts)) + BGZF_EOF


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    """A float NIfTI-1 (~480 kB): its voxels, its plain bytes, and the bytes of a copy with 3 NaN
    (which ITK 5 reads as 0: only the byte pass over the stream finds them)."""
    d = tmp_path_factory.mktemp("gz")
    arr = (np.random.default_rng(0).random((40, 50, 60)) * 100).astype(np.float32)
    arr[5:10] = 0
    nan = arr.copy()
    nan[20, 20, 20:23] = np.nan
    for a, name in ((arr, "ref.nii"), (nan, "nan.nii")):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((2.0, 2.0, 3.0))
        img.SetOrigin((1.0, -2.0, 3.0))
        sitk.WriteImage(img, str(d / name))
    return arr, (d / "ref.nii").read_bytes(), (d / "nan.nii").read_bytes()


def layouts(raw: bytes) -> dict[str, bytes]:
    half = len(raw) // 2
    return {
        "one member": member(raw),
        "three members, split inside the header": b"".join(member(p) for p in pieces(raw, [100, half])),
        "a member every 7 bytes of the header": b"".join(member(p) for p in pieces(raw, range(1, 360, 7))),
        "BGZF with its EOF block": bgzf(raw),
        "BGZF without the EOF block": bgzf(raw)[:-len(BGZF_EOF)],
        "BGZF, blocks of 1, 2 and 3 bytes first": bgzf(raw, [1, 3, 6]),
        "BGZF with an EOF block in the middle": bgzf(raw[:30000]) + bgzf(raw[30000:]),
        "empty members first and between": member(b"") * 3 + member(raw[:1000]) + member(b"") + member(raw[1000:]),
        "FNAME, FCOMMENT, FHCRC, FEXTRA": (member(raw[:500], name=b"ref.nii", comment=b"c", hcrc=True)
                                          + member(raw[500:], extra=b"XY\x02\x00ab")),
        "zero padding after the last member": member(raw) + b"\0" * 64,
        "pigz: one member, sync flushes": member(raw, body=deflate(raw, flushes=range(131072, len(raw), 131072))),
        "pigz --independent: full flushes": member(raw, body=deflate(raw, flushes=range(131072, len(raw), 131072),
                                                                     mode=zlib.Z_FULL_FLUSH)),
        "stored blocks (level 0)": b"".join(member(p, body=deflate(p, level=0)) for p in pieces(raw, [300, 70000])),
    }


def test_every_multi_member_layout_reads_the_same_voxels(nifti, tmp_path):
    arr, raw, raw_nan = nifti
    for name, data in layouts(raw).items():
        p = tmp_path / "image.nii.gz"
        p.write_bytes(data)
        assert gzip.decompress(data).rstrip(b"\0") == raw.rstrip(b"\0"), name  # the layout itself is right
        assert check_complete(p) is None, name
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(p))), arr), name
        img = read_image(p)
        assert np.array_equal(sitk.GetArrayFromImage(img), arr), name
        assert img.GetSpacing() == (2.0, 2.0, 3.0) and img.GetOrigin() == (1.0, -2.0, 3.0), name


def test_nan_voxels_are_found_in_every_layout(nifti, tmp_path):
    _, _, raw_nan = nifti
    for name, data in layouts(raw_nan).items():
        p = tmp_path / "nan.nii.gz"
        p.write_bytes(data)
        assert nifti_nonfinite_counts(p) == (3, 0), name
        assert nifti_nonfinite_counts(p, chunk_bytes=4096) == (3, 0), name
        with pytest.raises(InputError, match="contains 3 NaN and 0 infinite"):
            read_image(p)


def broken(raw: bytes) -> dict[str, "tuple[bytes, str]"]:
    half = len(raw) // 2
    return {
        "a later member with a wrong CRC": (member(raw[:1000]) + member(raw[1000:])[:-8]
                                            + struct.pack("<II", 1234, len(raw) - 1000), "CRC check failed"),
        "a later member cut short": (member(raw[:1000]) + member(raw[1000:])[:-500], "ends before the end"),
        "BGZF, last block cut, no EOF block": (bgzf(raw)[:-len(BGZF_EOF) - 100], "ends before the end"),
        "BGZF missing its last blocks": (bgzf(raw[:half]), f"needs {len(raw):,}"),
        "data after the last member": (member(raw) + b"appended", "Not a gzipped file"),
        "tiny header members, payload missing": (b"".join(member(p) for p in pieces(raw[:half], range(1, 360, 7))),
                                                 f"needs {len(raw):,}"),
    }


def test_broken_members_are_refused_in_one_line(nifti, tmp_path):
    """SimpleITK reads the first two with zeros where the data are missing; we refuse them all."""
    _, raw, _ = nifti
    for name, (data, why) in broken(raw).items():
        p = tmp_path / (name.replace(" ", "_").replace(",", "") + ".nii.gz")
        p.write_bytes(data)
        with pytest.raises(InputError) as ei:
            read_image(p)
        msg = str(ei.value)
        assert msg.startswith(f"{p}: truncated or corrupt (") and why in msg and "\n" not in msg, (name, msg)
        assert p.read_bytes() == data


def test_the_header_is_found_whatever_the_reads_return(nifti, tmp_path, monkeypatch):
    """A reader may return short reads (``read(n)`` gives *up to* n bytes, e.g. one member at a
    time): the header is gathered across them, so a truncated payload is still caught."""
    _, raw, _ = nifti
    small = raw[:400] + raw[400:60000]  # header + part of the payload
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(b"".join(member(q) for q in pieces(small, range(1, 360, 7))))
    read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: read(self, min(size, 7) if size > 0 else size))
    with pytest.raises(InputError, match=f"needs {len(raw):,}"):
        check_complete(p)
