"""Is an image file complete?  Byte-level checks made before SimpleITK reads a file.

SimpleITK reads a truncated NIfTI (plain or gzip) silently, filling the missing voxels with
zeros, and reports a cut MetaImage as "No such file or directory".  :func:`check_complete` is
called by :func:`sam_l1dfl.data.io.read_image` on every file it reads and raises
:class:`~sam_l1dfl.errors.InputError` ``"<file>: truncated or corrupt (<why>)"``:

* **gzip** (``.nii.gz``, gzip-encoded NRRD): the whole stream is decompressed, in chunks of
  ``chunk_bytes`` (nothing is kept), so its CRC-32 and length trailer are checked.  A stream of
  several members (``cat a.gz b.gz``, bgzip's BGZF blocks with their ``BC`` extra field and empty
  end-of-file block, members split inside the NIfTI header) is read member after member, each
  one checked, as zlib's ``gzread`` in ITK reads it; zero padding after the last member is
  allowed (gzip's own rule), anything else after it is refused (ITK would ignore it, and a
  damaged member cannot be told from it).  A member over 4 GiB stores its length modulo 2³²
  (RFC 1952), which is how Python and zlib check it; the byte counts here are exact;
* **NIfTI-1/2** (``.nii``, ``.nii.gz``): ``vox_offset + prod(dim) * bitpix / 8`` bytes must be
  present (the file size of a ``.nii``, the decompressed size of a ``.nii.gz``);
* **MetaImage** (``.mha``, ``.mhd`` with its ``ElementDataFile``): the raw payload
  (``prod(DimSize) * channels * element size``) must be present; compressed data
  (``CompressedData = True``) must hold ``CompressedDataSize`` bytes and inflate completely
  (Adler-32 checked) to the raw size;
* **NRRD** (``.nrrd``, ``.nhdr`` with its ``data file``): raw data must hold
  ``prod(sizes) * type size`` bytes (after ``byte skip``); gzip data as above.

Headers we do not understand are left to SimpleITK.  The pass over a ``.nii.gz`` also counts the
NaN/inf voxels of float data (:func:`nifti_nonfinite_counts` reads them from a plain ``.nii``):
ITK < 6 silently reads NaN/inf in NIfTI as 0.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from sam_l1dfl.errors import InputError

CHUNK_BYTES = 1 << 24  # decompressed bytes handled at a time
_GZIP_MAGIC = b"\x1f\x8b"


class _Truncated(Exception):
    """Internal: the reason a file is incomplete (turned into an InputError naming the file)."""


def _truncated(path: Path, why: str) -> InputError:
    return InputError(path, f"truncated or corrupt ({why})")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _gzip_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES, skip: int = 0) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file (after ``skip`` raw bytes), ``chunk_bytes`` at a
    time; reading to the end checks every member's CRC-32 and length."""
    with open(path, "rb") as raw:
        raw.seek(skip)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                while True:
                    buf = f.read(chunk_bytes)
                    if not buf:
                        return
                    yield buf
        except EOFError:
            raise _Truncated("the compressed data ends before the end of its gzip stream") from None
        except (OSError, zlib.error) as exc:  # BadGzipFile (CRC, length, magic) is an OSError
            raise _Truncated(f"gzip: {' '.join(str(exc).split())[:120]}") from None


def _first_chunk_at_least(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    """``chunks`` with the first ones joined until the first holds ``n`` bytes (or all there is):
    a reader may return short reads, e.g. at the end of each gzip member."""
    head = b""
    for buf in chunks:
        head += buf
        if len(head) >= n:
            break
    if head:
        yield head
    yield from chunks


def _zlib_size(path: Path, offset: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Decompressed size of the zlib (or gzip) stream at ``offset`` of ``path``; raises
    :class:`_Truncated` unless the stream is complete and its checksum right."""
    d = zlib.decompressobj(47)  # zlib or gzip header, detected
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            while not d.eof:
                data = f.read(1 << 20)
                if not data:
                    raise _Truncated("the compressed data ends before the end of its zlib stream")
                while data and not d.eof:
                    total += len(d.decompress(data, chunk_bytes))
                    data = d.unconsumed_tail
        except zlib.error as exc:
            raise _Truncated(f"zlib: {' '.join(str(exc).split())[:120]}") from None
    return total


# ---------------------------------------------------------------------- NIfTI
class _NiftiHeader:
    """The fields of a NIfTI-1/2 header that say how many bytes the file must hold."""

    def __init__(self, head: bytes):
        self.ok = False
        if len(head) < 348:
            return
        for endian in ("<", ">"):
            sizeof_hdr = int(np.frombuffer(head[:4], dtype=endian + "i4")[0])
            if sizeof_hdr in (348, 540):
                break
        else:
            return
        if sizeof_hdr == 348:
            if head[344:347] != b"n+1":  # "ni1" is a .hdr/.img pair; anything else: not NIfTI-1
                return
            dims = np.frombuffer(head[40:56], dtype=endian + "i2").astype(np.int64)
            self.datatype = int(np.frombuffer(head[70:72], dtype=endian + "i2")[0])
            bitpix = int(np.frombuffer(head[72:74], dtype=endian + "i2")[0])
            self.vox_offset = int(np.frombuffer(head[108:112], dtype=endian + "f4")[0])
            minimum = 352
        else:
            if len(head) < 540 or head[4:7] != b"n+2":
                return
            self.datatype = int(np.frombuffer(head[12:14], dtype=endian + "i2")[0])
            bitpix = int(np.frombuffer(head[14:16], dtype=endian + "i2")[0])
            dims = np.frombuffer(head[16:80], dtype=endian + "i8")
            self.vox_offset = int(np.frombuffer(head[168:176], dtype=endian + "i8")[0])
            minimum = 544
        ndim = int(dims[0])
        if not 1 <= ndim <= 7 or bitpix <= 0 or np.any(dims[1:ndim + 1] < 0):
            return
        self.endian = endian
        self.vox_offset = max(self.vox_offset, minimum)
        nvox = math.prod(max(int(d), 1) for d in dims[1:ndim + 1])
        self.payload_end = self.vox_offset + (nvox * bitpix + 7) // 8
        self.ok = True

    @property
    def float_dtype(self) -> "np.dtype | None":
        code = {16: "f4", 64: "f8"}.get(self.datatype) if self.ok else None
        return None if code is None else np.dtype(self.endian + code)


class _NonfiniteCounter:
    """Counts NaN and inf in the float payload of a byte stream fed chunk by chunk."""

    def __init__(self, dtype: np.dtype, start: int, end: int):
        self.dtype, self.start, self.end = dtype, start, end
        self.pos = 0
        self.pending = b""
        self.n_nan = self.n_inf = 0

    def feed(self, buf: bytes) -> None:
        lo, hi = self.pos, self.pos + len(buf)
        self.pos = hi
        a, b = max(lo, self.start), min(hi, self.end)
        if a >= b:
            return
        part = buf[a - lo:b - lo]
        if self.pending:
            part, self.pending = self.pending + part, b""
        cut = len(part) - len(part) % self.dtype.itemsize
        if cut < len(part):
            self.pending = part[cut:]
        arr = np.frombuffer(part, dtype=self.dtype, count=cut // self.dtype.itemsize)
        bad = ~np.isfinite(arr)
        if bad.any():
            nan = int(np.isnan(arr).sum())
            self.n_nan += nan
            self.n_inf += int(bad.sum()) - nan


def _check_nifti(path: Path, count_nonfinite: bool, chunk_bytes: int = CHUNK_BYTES) -> "tuple[int, int] | None":
    """Raise :class:`_Truncated` for an incomplete NIfTI file; ``(NaN, inf)`` counts of float
    data when ``count_nonfinite`` (None when they were not counted)."""
    if _is_gzip(path):
        hdr = counter = None
        total = 0
        for buf in _first_chunk_at_least(_gzip_chunks(path, chunk_bytes), 540):  # the first holds the header
            if hdr is None:
                hdr = _NiftiHeader(buf[:540])
                dt = hdr.float_dtype if count_nonfinite else None
                counter = None if dt is None else _NonfiniteCounter(dt, hdr.vox_offset, hdr.payload_end)
            if counter is not None:
                counter.feed(buf)
            total += len(buf)
        if hdr is not None and hdr.ok and total < hdr.payload_end:
            raise _Truncated(f"it decompresses to {total:,} bytes but its NIfTI header needs {hdr.payload_end:,}")
        if counter is not None:
            return counter.n_nan, counter.n_inf
        return (0, 0) if count_nonfinite else None
    with open(path, "rb") as f:
        hdr = _NiftiHeader(f.read(540))
        if not hdr.ok:
            return (0, 0) if count_nonfinite else None
        size = os.fstat(f.fileno()).st_size
        if size < hdr.payload_end:
            raise _Truncated(f"the file has {size:,} bytes but its NIfTI header needs {hdr.payload_end:,}")
        dt = hdr.float_dtype
        if not count_nonfinite or dt is None:
            return (0, 0) if count_nonfinite else None
        counter = _NonfiniteCounter(dt, hdr.vox_offset, hdr.payload_end)
        f.seek(hdr.vox_offset)
        counter.pos = hdr.vox_offset
        while counter.pos < hdr.payload_end:
            buf = f.read(min(chunk_bytes, hdr.payload_end - counter.pos))
            if not buf:
                break
            counter.feed(buf)
    return counter.n_nan, counter.n_inf


def nifti_nonfinite_counts(path: "str | os.PathLike", chunk_bytes: int = CHUNK_BYTES) -> tuple[int, int]:
    """(NaN count, inf count) of a float NIfTI-1/2 file, read from its bytes (streamed, gz or not).

    Returns (0, 0) for non-float data or a header we do not understand; raises
    :class:`InputError` for an incomplete file.
    """
    p = Path(path)
    try:
        return _check_nifti(p, True, chunk_bytes)
    except _Truncated as exc:
        raise _truncated(p, str(exc)) from None


# ---------------------------------------------------------------------- MetaImage
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


_HEADER_LIMIT = 1 << 16  # text headers longer than this are left to SimpleITK


def _text_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_HEADER_LIMIT)


def _payload(path: Path, offset: int, need: int, compressed: bool, declared: "int | None") -> None:
    """Check the data block at ``offset`` of ``path``: ``need`` raw bytes, or a complete zlib/gzip
    stream of ``need`` bytes (``declared``: its compressed size, when the header gives it)."""
    if not path.is_file():
        raise _Truncated(f"its data file {path} is missing")
    size = path.stat().st_size - offset
    if not compressed:
        if size < need:
            raise _Truncated(f"{path.name} holds {max(size, 0):,} data bytes but the header needs {need:,}")
        return
    if declared is not None and size < declared:
        raise _Truncated(f"{path.name} holds {max(size, 0):,} compressed bytes but the header declares {declared:,}")
    got = _zlib_size(path, offset)
    if got < need:
        raise _Truncated(f"{path.name} decompresses to {got:,} bytes but the header needs {need:,}")


def _check_metaimage(path: Path) -> None:
    head = _text_header(path)
    fields: dict[str, str] = {}
    end = None
    pos = 0
    for line in head.split(b"\n"):
        nxt = pos + len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if sep:
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                end = nxt
                break
        pos = nxt
    if end is None:
        return  # not a header we understand (or no data line): SimpleITK decides
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        elem = _MET_SIZES[fields["ElementType"]]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    need = math.prod(dims) * elem * channels
    compressed = fields.get("CompressedData", "False").lower() == "true"
    declared = int(fields["CompressedDataSize"]) if fields.get("CompressedDataSize", "").isdigit() else None
    data = fields["ElementDataFile"]
    if data == "LOCAL":
        _payload(path, end, need, compressed, declared)
        return
    if data.startswith("LIST") or "%" in data or " " in data:
        return  # one slice per file: left to SimpleITK
    target = Path(data) if Path(data).is_absolute() else path.parent / data
    skip = int(fields.get("HeaderSize", "0")) if fields.get("HeaderSize", "0").lstrip("-").isdigit() else 0
    if skip < 0 and not compressed:  # -1: the data are the last bytes of the file
        skip = max(target.stat().st_size - need, 0) if target.is_file() else 0
    _payload(target, max(skip, 0), need, compressed, declared)


# ---------------------------------------------------------------------- NRRD
def _nrrd_type_size(name: str) -> "int | None":
    n = name.lower()
    for keys, size in ((("float",), 4), (("double",), 8), (("64", "long"), 8), (("16", "short"), 2),
                       (("8", "char"), 1), (("32", "int"), 4)):
        if any(k in n for k in keys):
            return size
    return None


def _check_nrrd(path: Path) -> None:
    head = _text_header(path)
    if not head.startswith(b"NRRD"):
        return
    sep = min((i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0), default=-1)
    if sep < 0 and not path.name.lower().endswith(".nhdr"):
        if len(head) < _HEADER_LIMIT:
            raise _Truncated("the NRRD header has no end (no blank line before the data)")
        return
    end = sep + (2 if head[sep:sep + 2] == b"\n\n" else 4) if sep >= 0 else len(head)
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        elem = _nrrd_type_size(fields["type"])
        skip = int(fields.get("byte skip", "0"))
        line_skip = int(fields.get("line skip", "0"))
    except (KeyError, ValueError):
        return
    enc = fields.get("encoding", "raw").lower()
    if elem is None or line_skip or enc not in ("raw", "gzip", "gz"):
        return  # ascii/hex/bzip2 data, line skips: left to SimpleITK
    need = math.prod(sizes) * elem
    data = fields.get("data file", fields.get("datafile"))
    if data is None:
        target, offset = path, end
    elif data.startswith("LIST") or "%" in data or " " in data:
        return
    else:
        target, offset = (Path(data) if Path(data).is_absolute() else path.parent / data), 0
    if enc == "raw":
        if skip < 0:  # -1: the data are the last bytes of the file
            return
        _payload(target, offset + skip, need, False, None)
        return
    if not target.is_file():
        raise _Truncated(f"its data file {target} is missing")
    total = sum(len(buf) for buf in _gzip_chunks(target, skip=offset))
    if total < need + max(skip, 0):
        raise _Truncated(f"{target.name} decompresses to {total:,} bytes but the header needs {need + max(skip, 0):,}")


# ---------------------------------------------------------------------- entry point
def check_complete(path: "str | os.PathLike", count_nonfinite: bool = False,
                   chunk_bytes: int = CHUNK_BYTES) -> "tuple[int, int] | None":
    """Raise ``InputError("<file>: truncated or corrupt (<why>)")`` unless ``path`` holds all the
    data its header declares (see the module docstring).

    Returns the ``(NaN, inf)`` counts of a float ``.nii.gz`` when ``count_nonfinite`` (they come
    free with the pass over its bytes), else None.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _check_nifti(p, count_nonfinite and _is_gzip(p), chunk_bytes)
        if name.endswith((".mha", ".mhd")):
            _check_metaimage(p)
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(p)
        elif name.endswith(".gz") and _is_gzip(p):
            for _ in _gzip_chunks(p, chunk_bytes):
                pass
    except _Truncated as exc:
        raise _truncated(p, str(exc)) from None
    except OSError as exc:  # a data file that cannot be opened, a read error
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        raise InputError(p, f"cannot read{name} ({exc.strerror or exc})") from None
    return None


__all__ = ["CHUNK_BYTES", "check_complete", "nifti_nonfinite_counts"]
