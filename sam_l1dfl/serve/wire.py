"""The wire format of nnInteractive's remote protocol, read defensively.

Arrays travel as the packed format of ``nninteractive-client``'s ``serialization`` module, which
this module calls to pack replies and to unpack requests (``pack_array`` / ``unpack_array``).
Before anything is decompressed or allocated, :func:`read_packed` checks the header itself: the
magic and version, a dtype from :data:`ALLOWED_DTYPES` (never ``object``: nothing from the wire is
unpickled), the number of axes, the declared shape against what the caller expects and against
the voxel limit, and that the chunk table adds up to exactly the declared array and the body's
length.  A declared 10¹² voxel image is refused from its 30-byte header, not after a 4 TB
allocation.  JSON bodies and the ``X-Meta`` header go through :func:`read_json`.  Every problem is
a :class:`WireError`: one line, the HTTP status to answer with.
"""

from __future__ import annotations

import json
import struct
from typing import Callable, Sequence

import numpy as np
from nnInteractive.inference.remote.serialization import MAGIC, VERSION, unpack_array

#: dtypes an image or a mask may have on the wire; a target buffer takes the integer ones and bool.
MASK_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"})
ALLOWED_DTYPES = MASK_DTYPES | {"float16", "float32", "float64"}
#: Largest JSON body or X-Meta header we read.
MAX_JSON_BYTES = 1 << 16
#: Largest packed-array header (magic .. chunk count) we wait for before refusing.
MAX_HEADER_BYTES = 8 + 255 + 8 * 255 + 4


class WireError(Exception):
    """A request we refuse: ``status`` (4xx) and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail


def read_json(raw: "bytes | str | None", what: str, *, required: bool = True) -> dict:
    """A JSON object from a body or header (``{}`` for an empty optional one)."""
    if raw is None or (isinstance(raw, (bytes, str)) and not raw.strip()):
        if required:
            raise WireError(400, f"{what}: expected a JSON object, got nothing")
        return {}
    if len(raw) > MAX_JSON_BYTES:
        raise WireError(413, f"{what}: larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(400, f"{what}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise WireError(400, f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def flag(payload: dict, key: str, default: "bool | None" = None) -> bool:
    """A boolean field (``default`` when absent; required when ``default`` is None)."""
    if key not in payload:
        if default is None:
            raise WireError(400, f"missing field {key!r}")
        return default
    v = payload[key]
    if not isinstance(v, (bool, int)) or isinstance(v, int) and v not in (0, 1):
        raise WireError(400, f"field {key!r} must be true or false, got {str(v)[:40]}")
    return bool(v)


def header_length(buf) -> "int | None":
    """Bytes of the packed-array header (up to the chunk count), once ``buf`` holds its first 8."""
    if len(buf) < 8:
        return None
    return 8 + buf[7] + 8 * buf[6] + 4


def _header(buf) -> "tuple[np.dtype, tuple[int, ...], int]":
    """``(dtype, shape, offset of the chunk table)`` of a packed array, checked."""
    if len(buf) < 8:
        raise WireError(400, "body: too short for a packed array")
    magic, version, _codec, ndim, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC:
        raise WireError(400, "body: not a packed array (bad magic)")
    if version != VERSION:
        raise WireError(400, f"body: unsupported packed-array version {version}")
    off = 8 + name_len + 8 * ndim + 4
    if len(buf) < off:
        raise WireError(400, "body: truncated packed-array header")
    try:
        name = buf[8:8 + name_len].decode("ascii")
    except UnicodeDecodeError:
        name = "?"
    if name not in ALLOWED_DTYPES:
        raise WireError(400, f"body: dtype {name[:20]!r} is not accepted (one of {', '.join(sorted(ALLOWED_DTYPES))})")
    shape = struct.unpack_from(f"<{ndim}q", buf, 8 + name_len)
    return np.dtype(name), tuple(int(s) for s in shape), off


def _check_chunks(buf: bytes, off: int, nbytes: int) -> None:
    """The chunk table covers exactly ``nbytes`` uncompressed and ends where the body does."""
    (nchunks,) = struct.unpack_from("<I", buf, off - 4)
    total, pos = 0, off
    for _ in range(nchunks):
        if pos + 16 > len(buf):
            raise WireError(400, "body: truncated chunk table")
        ulen, clen = struct.unpack_from("<QQ", buf, pos)
        pos += 16 + clen
        total += ulen
        if total > nbytes or pos > len(buf):
            raise WireError(400, "body: the payload does not hold the declared array (chunks too long)")
    if total != nbytes:
        raise WireError(400, f"body: the payload holds {total} bytes, the declared array {nbytes}")
    if pos != len(buf):
        raise WireError(400, f"body: {len(buf) - pos} bytes after the packed array")


def check_header(buf, *, ndim: int, check_shape: "Callable[[tuple[int, ...]], None]", max_voxels: int) -> int:
    """The declared array of a packed header, checked (module docstring); its size in bytes.
    ``check_shape`` raises :class:`WireError` for a shape the endpoint cannot take; ``max_voxels``
    bounds the product of the last three axes."""
    dtype, shape, _ = _header(buf)
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise WireError(400, f"body: expected a {ndim}-axis array with every axis >= 1, got shape {list(shape)}")
    check_shape(shape)
    voxels = int(np.prod(shape[-3:], dtype=object))
    if voxels > max_voxels:
        raise WireError(413, f"body: {voxels} voxels declared, more than the server's --max-image-voxels "
                             f"{max_voxels}")
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def body_limit(nbytes: int, header: int) -> int:
    """The most bytes a packed body of a ``nbytes`` array may have (compression adds little)."""
    return header + nbytes + nbytes // 16 + (1 << 16)


def read_packed(buf, *, ndim: int, check_shape: "Callable[[tuple[int, ...]], None]", max_voxels: int) -> np.ndarray:
    """The array of a whole packed body after every check of the module docstring."""
    nbytes = check_header(buf, ndim=ndim, check_shape=check_shape, max_voxels=max_voxels)
    _check_chunks(buf, _header(buf)[2], nbytes)
    try:
        return unpack_array(buf)
    except Exception as exc:  # blosc2 / struct errors on corrupt frames
        raise WireError(400, f"body: corrupt packed array ({type(exc).__name__})") from None


def pack(arr: np.ndarray) -> bytes:
    """A mask patch as the client reads it (``pack_array``, no filter: masks compress best so)."""
    import blosc2
    from nnInteractive.inference.remote.serialization import pack_array

    return pack_array(np.ascontiguousarray(arr), filters=[blosc2.Filter.NOFILTER], nthreads=1)


def shape_equal(want: Sequence[int], what: str) -> "Callable[[tuple[int, ...]], None]":
    """A ``check_shape`` that wants exactly ``want``."""
    want = tuple(int(v) for v in want)

    def check(shape):
        if tuple(shape) != want:
            raise WireError(400, f"{what} has shape {list(shape)}, the image {list(want)}")

    return check


__all__ = ["ALLOWED_DTYPES", "MASK_DTYPES", "MAX_HEADER_BYTES", "MAX_JSON_BYTES", "WireError", "body_limit", "check_header", "flag",
           "header_length", "pack", "read_json", "read_packed", "shape_equal"]
