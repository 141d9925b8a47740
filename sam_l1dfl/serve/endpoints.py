"""The endpoints of the remote protocol, one function each: ``handler(server, request[, lease])``.

:func:`sam_l1dfl.serve.app.create_app` mounts them at the client's paths, with the key and lease
checks as FastAPI dependencies.  Session work runs in a worker thread under the lease's lock
(:meth:`~sam_l1dfl.serve.app.ServerState.in_session`), and under the model lock when it predicts.
A prediction's reply (:func:`prediction_reply`) carries the ``X-Meta`` header the client reads
(``ran_prediction``, ``bbox``, ``dtype``, ``shape``, and our ``sam_l1dfl`` block) and the changed
box of the target buffer, packed.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from nnInteractive.inference.remote import _protocol as P

from sam_l1dfl.inference.interactive import Change, StateError, held_bytes, parse_geometry

from .bodies import json_body, packed_body
from .leases import Lease
from .wire import MASK_DTYPES, WireError, flag, pack, read_json, shape_equal

log = logging.getLogger("sam_l1dfl.serve")

#: Said (reply and log) when a mask changed but the session has no target buffer to carry it.
NO_TARGET = "no target buffer: the mask changed but the reply carries none (call set_target_buffer after set_image)"
#: What SAM-Med3D cannot take, as the 400 of a scribble or lasso says it.
NO_SCRIBBLES = ("SAM-Med3D takes points, boxes and an initial segmentation; {kind}s are not supported "
                "(see /capabilities)")


def prediction_reply(lease: Lease, change: Change) -> Response:
    """The reply of a prediction or undo: X-Meta, and the changed box of the target buffer packed."""
    meta: dict = {"ran_prediction": bool(change.ran), "bbox": None}
    body = b""
    if change.ran and change.bbox is not None and lease.target is not None:
        sub = lease.session.mask[tuple(slice(lo, hi) for lo, hi in change.bbox)].astype(lease.target[1])
        meta.update(bbox=change.bbox, dtype=str(sub.dtype), shape=list(sub.shape))
        body = pack(sub)
    notes = list(change.notes)
    if change.ran and change.bbox is not None and lease.target is None:
        notes.append(NO_TARGET)
        log.warning("session %s: %s", lease.token[:8], NO_TARGET)
    ext = {"notes": notes} if notes else {}
    if change.iou is not None:
        ext.update(iou_pred=round(change.iou, 4), encoded=change.encoded)
    if change.report is not None:
        ext["seconds"] = round(change.report.total_seconds, 4)
    meta["sam_l1dfl"] = ext
    return Response(body, media_type=P.CONTENT_TYPE_OCTET_STREAM,
                    headers={P.META_HEADER: json.dumps(meta, separators=(",", ":"))})


# ---------------------------------------------------------------------------------- leases
async def healthz(srv, request: Request):
    return {"ok": True}


async def capabilities(srv, request: Request):
    return srv.capabilities


async def claim(srv, request: Request):
    lease = srv.registry.claim()
    reg = srv.registry
    return {"lease_token": lease.token, "idle_timeout_seconds": reg.idle_timeout,
            "liveness_timeout_seconds": reg.liveness_timeout, "max_sessions": reg.max_sessions}


async def release(srv, request: Request):
    return {"released": srv.registry.release(request.headers.get(P.LEASE_HEADER))}


async def heartbeat(srv, request: Request, lease: Lease):
    return {"remaining_seconds": srv.registry.remaining(lease)}


async def lease_status(srv, request: Request, lease: Lease):
    return {"remaining_seconds": srv.registry.remaining(lease), "idle_timeout_seconds": srv.registry.idle_timeout}


# ---------------------------------------------------------------------------------- image and buffer
async def set_image(srv, request: Request, lease: Lease):
    meta = read_json(request.headers.get(P.META_HEADER), P.META_HEADER, required=False)
    props = meta.get("image_properties") or {}
    if not isinstance(props, dict):
        raise WireError(400, "image_properties must be a JSON object")
    geometry = (props.get("spacing"), props.get("origin"), props.get("direction"))
    notes = parse_geometry(*geometry)[3]  # checked before the body is read
    channels = srv.seg.preprocess.channels

    def check(shape):
        if shape[0] != channels:
            raise WireError(400, f"the image has {shape[0]} channel(s); these weights take {channels}")

    image = await packed_body(request, ndim=4, check_shape=check, max_voxels=srv.settings.max_image_voxels)
    await srv.in_session(lease, lambda s: s.set_image(image, *geometry))
    lease.target = None
    for note in notes:
        log.info("session %s: %s", lease.token[:8], note)
    log.info("session %s: image %s, %.0f MB held", lease.token[:8], list(image.shape), held_bytes(lease.session) / 2**20)
    return {"original_image_shape": list(image.shape), "sam_l1dfl": {"notes": notes}}


async def set_target_buffer(srv, request: Request, lease: Lease):
    payload = await json_body(request)
    shape, dtype = payload.get("shape"), payload.get("dtype")
    if dtype not in MASK_DTYPES:
        raise WireError(400, f"target buffer dtype {str(dtype)[:20]!r} is not accepted (one of "
                             f"{', '.join(sorted(MASK_DTYPES))})")
    if not isinstance(shape, list) or not all(type(v) is int and v > 0 for v in shape) or len(shape) != 3:
        raise WireError(400, f"target buffer shape must be 3 positive integers, got {str(shape)[:60]}")
    want = lease.session.shape
    if want is None:  # as nninteractive-server: accepted, and dropped by the next set_image
        log.warning("session %s: target buffer before any image: set_image will drop it", lease.token[:8])
        return {}
    if list(shape) != list(want):
        raise WireError(400, f"target buffer shape {shape} differs from the image's {list(want)}")
    await srv.in_session(lease, lambda s: s.clear_mask())
    lease.target = (tuple(want), dtype)
    return {}


async def set_do_autozoom(srv, request: Request, lease: Lease):
    flag(await json_body(request), "do_autozoom")  # accepted; crops are always at the model spacing
    return {}


async def reset_interactions(srv, request: Request, lease: Lease):
    await srv.in_session(lease, lambda s: s.reset() if s.shape is not None else None)
    return {}


# ---------------------------------------------------------------------------------- interactions
async def undo(srv, request: Request, lease: Lease):
    return await srv.in_session(lease, lambda s: prediction_reply(lease, s.undo()))


async def predict(srv, request: Request, lease: Lease):
    await json_body(request, required=False)
    return await srv.in_session(lease, lambda s: prediction_reply(lease, s.predict()), predict=True)


async def _prompt(srv, request: Request, lease: Lease, field: str, method: str):
    """A point or box: ``field`` of the body to ``session.<method>(value, include, run)``."""
    p = await json_body(request)
    include, run = flag(p, "include_interaction"), flag(p, "run_prediction", True)
    value = p.get(field)
    return await srv.in_session(
        lease, lambda s: prediction_reply(lease, getattr(s, method)(value, include, run)), predict=run)


async def add_point(srv, request: Request, lease: Lease):
    return await _prompt(srv, request, lease, "coordinates", "add_point")


async def add_bbox(srv, request: Request, lease: Lease):
    return await _prompt(srv, request, lease, "bbox_coords", "add_box")


async def add_initial_seg(srv, request: Request, lease: Lease):
    meta = read_json(request.headers.get(P.META_HEADER), P.META_HEADER, required=False)
    run = flag(meta, "run_prediction", False)
    shape = lease.session.shape
    if shape is None:
        raise StateError(None, "no image yet: call set_image before an initial segmentation")
    mask = await packed_body(request, ndim=3, check_shape=shape_equal(shape, "the initial segmentation"),
                             max_voxels=int(np.prod(shape)))
    return await srv.in_session(lease, lambda s: prediction_reply(lease, s.set_initial_mask(mask, run)),
                                predict=run)


def unsupported(kind: str):
    async def handler(srv, request: Request, lease: Lease):
        raise WireError(400, NO_SCRIBBLES.format(kind=kind))

    return handler


__all__ = ["NO_SCRIBBLES", "NO_TARGET", "prediction_reply"]
