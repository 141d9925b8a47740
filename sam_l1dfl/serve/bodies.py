"""Request bodies, read with their limits while they arrive.

A JSON body is refused past :data:`~.wire.MAX_JSON_BYTES`.  A packed-array body is read until its
header is in (a few dozen bytes); the header is checked (:func:`~.wire.check_header`: dtype, axes,
the declared shape against the endpoint and ``--max-image-voxels``), and only then is the rest
read, refused as soon as it outgrows what the declared array can compress to.  So an oversized or
mis-shaped upload is refused from its first bytes, before the server holds the body.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from .wire import (MAX_HEADER_BYTES, MAX_JSON_BYTES, WireError, body_limit, check_header, header_length, read_json,
                   read_packed)


async def read_bytes(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WireError(413, f"body: {declared} bytes, more than the {limit} this endpoint takes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise WireError(413, f"body: more than the {limit} bytes this endpoint takes")
    return bytes(buf)


async def json_body(request: Request, *, required: bool = True) -> dict:
    """The JSON object of the body (``{}`` for an empty optional one)."""
    return read_json(await read_bytes(request, MAX_JSON_BYTES), "body", required=required)


async def packed_body(request: Request, *, ndim: int, check_shape: Callable, max_voxels: int) -> np.ndarray:
    """The array of a packed body, its header checked before the rest is read (module docstring)."""
    buf, limit = bytearray(), None
    async for chunk in request.stream():
        buf += chunk
        if limit is None:
            need = header_length(buf)
            if need is not None and len(buf) >= need:
                limit = body_limit(check_header(buf, ndim=ndim, check_shape=check_shape, max_voxels=max_voxels), need)
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise WireError(413, f"body: {declared} bytes, more than the declared array can take")
            elif len(buf) > MAX_HEADER_BYTES:
                raise WireError(400, "body: not a packed array (no header)")
        if limit is not None and len(buf) > limit:
            raise WireError(413, "body: larger than the declared array can take")
    return await run_in_threadpool(read_packed, buf, ndim=ndim, check_shape=check_shape, max_voxels=max_voxels)


__all__ = ["json_body", "packed_body", "read_bytes"]
