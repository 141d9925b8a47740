"""The HTTP face of ``sam-l1dfl serve``: nnInteractive's remote protocol on a shared Segmenter.

:func:`create_app` builds a FastAPI application whose endpoints are those the client package
``nninteractive-client`` calls (``nnInteractive.inference.remote``; paths, headers and bodies from
its ``_protocol`` and ``serialization`` modules).  Each lease holds an
:class:`~sam_l1dfl.inference.interactive.InteractiveSession`; the model is shared, and one
prediction runs at a time (:attr:`ServerState.model_lock`).

Every request other than ``/healthz`` needs the API key when the server has one (``Authorization:
Bearer KEY``, compared in constant time; 401 otherwise).  Every refusal is a 4xx with a one-line
``detail`` and is logged as one line; an unexpected error is a 500 whose detail names only the
exception's type (the traceback goes to the server log with ``--verbose``), and the server goes
on serving.  Status codes: 400 bad input, 401 key, 409 a call out of order (a click before any
image), 410 an unknown or reaped lease, 413 too large, 503 at capacity.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from nnInteractive.inference.remote import _protocol as P
from starlette.concurrency import run_in_threadpool

from sam_l1dfl import __version__
from sam_l1dfl.errors import SamL1dflError
from sam_l1dfl.inference.interactive import BOX_NOTE, Change, InteractiveSession, StateError, parse_geometry
from sam_l1dfl.model.standin import weights_license

from .leases import Lease, LeaseRegistry
from .wire import ALLOWED_DTYPES, MAX_JSON_BYTES, WireError, flag, pack, read_json, read_packed, shape_equal

log = logging.getLogger("sam_l1dfl.serve")

#: What SAM-Med3D cannot take, as the 400 of a scribble or lasso says it.
NO_SCRIBBLES = ("SAM-Med3D takes points, boxes and an initial segmentation; {kind}s are not supported "
                "(see /capabilities)")


@dataclass
class ServeSettings:
    """The server's limits and key (the flags of ``sam-l1dfl serve``)."""

    api_key: "str | None" = None
    max_sessions: int = 1
    idle_timeout: float = 600.0
    liveness_timeout: float = 60.0
    max_image_voxels: int = 1 << 28
    verbose: bool = False


def capabilities(seg) -> dict:
    """``/capabilities``: what the viewers read (nnInteractive's keys), plus our ``sam_l1dfl`` block."""
    cfg = seg.preprocess
    name = None if seg.checkpoint is None else Path(seg.checkpoint).name  # no server path leaves the server
    return {
        "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": False, "lasso": False},
        "channel_mapping": {}, "num_interaction_channels": 0,
        "supports_initial_label": True, "supports_zero_shot_label_refinement": True,
        "preferred_scribble_thickness": None, "interaction_decay": None,
        "patch_size": [cfg.crop_size] * 3, "do_autozoom": False,
        "inference_session_version": f"sam-l1dfl {__version__}",
        "license": weights_license(seg.weights), "supports_undo": True,
        "sam_l1dfl": {
            "model": "SAM-Med3D", "weights": seg.weights, "checkpoint": name, "input_mode": cfg.input_mode,
            "channels": cfg.channels, "crop_size": cfg.crop_size, "spacing_mm": cfg.spacing,
            "box_embeddings": seg.uses_boxes,
            "boxes": "decoded with the box embeddings" if seg.uses_boxes else BOX_NOTE,
            "negative_boxes": False, "autozoom": "accepted, no effect: crops are at the model spacing",
        },
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WireError(413, f"body: {declared} bytes, more than the {limit} this endpoint takes")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise WireError(413, f"body: more than the {limit} bytes this endpoint takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _prediction_reply(lease: Lease, change: Change) -> Response:
    """The reply of a prediction or undo: X-Meta, and the changed box of the target buffer packed."""
    meta: dict = {"ran_prediction": bool(change.ran), "bbox": None}
    body = b""
    if change.ran and change.bbox is not None and lease.target is not None:
        sub = lease.session.mask[tuple(slice(lo, hi) for lo, hi in change.bbox)].astype(lease.target[1])
        meta.update(bbox=change.bbox, dtype=str(sub.dtype), shape=list(sub.shape))
        body = pack(sub)
    ext = {"notes": change.notes} if change.notes else {}
    if change.iou is not None:
        ext.update(iou_pred=round(change.iou, 4), encoded=change.encoded)
    if change.report is not None:
        ext["seconds"] = round(change.report.total_seconds, 4)
    meta["sam_l1dfl"] = ext
    return Response(body, media_type=P.CONTENT_TYPE_OCTET_STREAM,
                    headers={P.META_HEADER: json.dumps(meta, separators=(",", ":"))})


class ServerState:
    """The leases, the key, the model lock, and the endpoint handlers of one server."""

    def __init__(self, segmenter, settings: ServeSettings):
        self.seg = segmenter
        self.settings = settings
        self.registry = LeaseRegistry(lambda: InteractiveSession(segmenter), settings.max_sessions,
                                      settings.idle_timeout, settings.liveness_timeout, log=log.info)
        self.model_lock = threading.Lock()
        self._key = None if not settings.api_key else settings.api_key.encode()
        self.capabilities = capabilities(segmenter)

    # ------------------------------------------------------------------ plumbing
    def check_key(self, request: Request) -> None:
        if self._key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise WireError(401, "missing bearer token")
        if not hmac.compare_digest(auth[len("Bearer "):].encode("latin-1", "replace"), self._key):
            raise WireError(401, "invalid bearer token")

    async def in_session(self, lease: Lease, work: Callable[[InteractiveSession], object], *, predict: bool = False):
        """``work(session)`` in a worker thread under the lease's lock (and the model's, to predict)."""
        def run():
            with lease.lock:
                if predict:
                    with self.model_lock:
                        return work(lease.session)
                return work(lease.session)

        return await run_in_threadpool(run)

    def route(self, handler: Callable[..., Awaitable], *, auth: bool = True, lease: "str | None" = "active"):
        """``handler(request[, lease])`` as an endpoint: key and lease checks first (``lease``:
        None, ``"active"`` (a user action), ``"seen"`` (a heartbeat) or ``"peek"``), every error one line."""
        async def endpoint(request: Request):
            try:
                if auth:
                    self.check_key(request)
                args = []
                if lease is not None:
                    args.append(self.registry.get(request.headers.get(P.LEASE_HEADER), active=lease == "active",
                                                  seen=lease != "peek"))
                out = await handler(request, *args)
            except WireError as exc:
                return self.refuse(request, exc.status, exc.detail)
            except StateError as exc:
                return self.refuse(request, 409, str(exc))
            except SamL1dflError as exc:
                return self.refuse(request, 400, str(exc))
            except Exception as exc:  # never a traceback on the wire
                log.error("500 %s: %s: %s", request.url.path, type(exc).__name__, exc)
                if self.settings.verbose:
                    log.error("%s", traceback.format_exc())
                return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, 500)
            return out if isinstance(out, Response) else JSONResponse(out)

        return endpoint

    @staticmethod
    def refuse(request: Request, status: int, detail: str) -> JSONResponse:
        detail = " ".join(str(detail).split())[:300]
        log.warning("%d %s: %s", status, request.url.path, detail)
        headers = {"Retry-After": "10"} if status == 503 else None
        return JSONResponse({"detail": detail}, status, headers=headers)

    # ------------------------------------------------------------------ leases
    async def claim(self, request: Request):
        lease = self.registry.claim()
        return {"lease_token": lease.token, "idle_timeout_seconds": self.registry.idle_timeout,
                "liveness_timeout_seconds": self.registry.liveness_timeout,
                "max_sessions": self.registry.max_sessions}

    async def release(self, request: Request):
        return {"released": self.registry.release(request.headers.get(P.LEASE_HEADER))}

    async def heartbeat(self, request: Request, lease: Lease):
        return {"remaining_seconds": self.registry.remaining(lease)}

    async def lease_status(self, request: Request, lease: Lease):
        return {"remaining_seconds": self.registry.remaining(lease), "idle_timeout_seconds": self.registry.idle_timeout}

    async def healthz(self, request: Request):
        return {"ok": True}

    async def get_capabilities(self, request: Request):
        return self.capabilities

    async def lifespan(self, app):
        """Reap expired leases in the background too (not only when a request comes)."""
        timeouts = [t for t in (self.registry.idle_timeout, self.registry.liveness_timeout) if t > 0]
        interval = min([5.0] + [max(0.2, t / 4) for t in timeouts])

        async def reaper():
            while True:
                await asyncio.sleep(interval)
                self.registry.reap()

        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()


class Endpoints(ServerState):
    """The image and interaction endpoints."""

    async def set_image(self, request: Request, lease: Lease):
        meta = read_json(request.headers.get(P.META_HEADER), P.META_HEADER, required=False)
        props = meta.get("image_properties") or {}
        if not isinstance(props, dict):
            raise WireError(400, "image_properties must be a JSON object")
        geometry = (props.get("spacing"), props.get("origin"), props.get("direction"))
        notes = parse_geometry(*geometry)[3]  # checked before the body is read
        channels, limit = self.seg.preprocess.channels, self.settings.max_image_voxels

        def check(shape):
            if shape[0] != channels:
                raise WireError(400, f"the image has {shape[0]} channel(s); these weights take {channels}")

        body = await _read_body(request, limit * channels * 8 + (1 << 20))
        image = await run_in_threadpool(read_packed, body, ndim=4, check_shape=check, max_voxels=limit)
        del body
        await self.in_session(lease, lambda s: s.set_image(image, *geometry))
        lease.target = None
        for note in notes:
            log.info("session %s: %s", lease.token[:8], note)
        log.info("session %s: image %s, %.0f MB held", lease.token[:8], list(image.shape), lease.session.nbytes() / 2**20)
        return {"original_image_shape": list(image.shape), "sam_l1dfl": {"notes": notes}}

    async def set_target_buffer(self, request: Request, lease: Lease):
        payload = read_json(await _read_body(request, MAX_JSON_BYTES), "body")
        shape, dtype = payload.get("shape"), payload.get("dtype")
        if dtype not in ALLOWED_DTYPES:
            raise WireError(400, f"target buffer dtype {str(dtype)[:20]!r} is not accepted")
        want = lease.session.shape
        if want is None:
            raise StateError(None, "no image yet: call set_image before set_target_buffer")
        if not isinstance(shape, list) or [int(v) if isinstance(v, int) else None for v in shape] != list(want):
            raise WireError(400, f"target buffer shape {str(shape)[:60]} differs from the image's {list(want)}")
        await self.in_session(lease, lambda s: s.clear_mask())
        lease.target = (tuple(want), dtype)
        return {}

    async def set_do_autozoom(self, request: Request, lease: Lease):
        lease.autozoom = flag(read_json(await _read_body(request, MAX_JSON_BYTES), "body"), "do_autozoom")
        return {}

    async def reset_interactions(self, request: Request, lease: Lease):
        await self.in_session(lease, lambda s: s.reset() if s.shape is not None else None)
        return {}

    async def undo(self, request: Request, lease: Lease):
        return await self.in_session(lease, lambda s: _prediction_reply(lease, s.undo()))

    async def predict(self, request: Request, lease: Lease):
        read_json(await _read_body(request, MAX_JSON_BYTES), "body", required=False)
        return await self.in_session(lease, lambda s: _prediction_reply(lease, s.predict()), predict=True)

    async def add_point(self, request: Request, lease: Lease):
        p = read_json(await _read_body(request, MAX_JSON_BYTES), "body")
        include, run = flag(p, "include_interaction"), flag(p, "run_prediction", True)
        coords = p.get("coordinates")
        return await self.in_session(
            lease, lambda s: _prediction_reply(lease, s.add_point(coords, include, run)), predict=run)

    async def add_bbox(self, request: Request, lease: Lease):
        p = read_json(await _read_body(request, MAX_JSON_BYTES), "body")
        include, run = flag(p, "include_interaction"), flag(p, "run_prediction", True)
        bounds = p.get("bbox_coords")
        return await self.in_session(
            lease, lambda s: _prediction_reply(lease, s.add_box(bounds, include, run)), predict=run)

    async def add_initial_seg(self, request: Request, lease: Lease):
        meta = read_json(request.headers.get(P.META_HEADER), P.META_HEADER, required=False)
        run = flag(meta, "run_prediction", False)
        shape = lease.session.shape
        if shape is None:
            raise StateError(None, "no image yet: call set_image before an initial segmentation")
        body = await _read_body(request, int(np.prod(shape)) * 8 + (1 << 20))
        mask = await run_in_threadpool(read_packed, body, ndim=3, check_shape=shape_equal(shape, "the initial segmentation"),
                                       max_voxels=self.settings.max_image_voxels)
        return await self.in_session(
            lease, lambda s: _prediction_reply(lease, s.set_initial_mask(mask, run)), predict=run)

    def unsupported(self, kind: str):
        async def handler(request: Request, lease: Lease):
            raise WireError(400, NO_SCRIBBLES.format(kind=kind))

        return handler


def create_app(segmenter, settings: "ServeSettings | None" = None) -> FastAPI:
    """The server application for ``segmenter`` (a :class:`~sam_l1dfl.inference.Segmenter`)."""
    s = Endpoints(segmenter, settings or ServeSettings())
    app = FastAPI(title="sam-l1dfl serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=asynccontextmanager(s.lifespan))
    routes = [
        (P.PATH_HEALTHZ, "GET", s.route(s.healthz, auth=False, lease=None)),
        (P.PATH_CAPABILITIES, "GET", s.route(s.get_capabilities, lease=None)),
        (P.PATH_CLAIM, "POST", s.route(s.claim, lease=None)),
        (P.PATH_RELEASE, "POST", s.route(s.release, lease=None)),
        (P.PATH_HEARTBEAT, "POST", s.route(s.heartbeat, lease="seen")),
        (P.PATH_LEASE_STATUS, "GET", s.route(s.lease_status, lease="peek")),
        (P.PATH_SET_IMAGE, "POST", s.route(s.set_image)),
        (P.PATH_SET_TARGET_BUFFER, "POST", s.route(s.set_target_buffer)),
        (P.PATH_SET_DO_AUTOZOOM, "POST", s.route(s.set_do_autozoom)),
        (P.PATH_RESET_INTERACTIONS, "POST", s.route(s.reset_interactions)),
        (P.PATH_UNDO, "POST", s.route(s.undo)),
        (P.PATH_PREDICT, "POST", s.route(s.predict)),
        (P.PATH_ADD_POINT, "POST", s.route(s.add_point)),
        (P.PATH_ADD_BBOX, "POST", s.route(s.add_bbox)),
        (P.PATH_ADD_INITIAL_SEG, "POST", s.route(s.add_initial_seg)),
        (P.PATH_ADD_SCRIBBLE, "POST", s.route(s.unsupported("scribble"))),
        (P.PATH_ADD_LASSO, "POST", s.route(s.unsupported("lasso"))),
    ]
    for path, method, endpoint in routes:
        app.add_api_route(path, endpoint, methods=[method])
    app.state.server = s
    return app


__all__ = ["NO_SCRIBBLES", "ServeSettings", "ServerState", "capabilities", "create_app"]
