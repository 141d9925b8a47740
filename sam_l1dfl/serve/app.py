"""The HTTP face of ``sam-l1dfl serve``: nnInteractive's remote protocol on a shared Segmenter.

:func:`create_app` builds a FastAPI application whose endpoints (:mod:`.endpoints`) are those the
client package ``nninteractive-client`` calls (``nnInteractive.inference.remote``; paths and
headers from its ``_protocol`` module, bodies from its ``serialization`` module).  Each lease holds
an :class:`~sam_l1dfl.inference.interactive.InteractiveSession`; the model is shared, and one
prediction runs at a time (:attr:`ServerState.model_lock`).

Every request other than ``/healthz`` needs the API key when the server has one (``Authorization:
Bearer KEY``, compared in constant time; 401 otherwise): a FastAPI dependency, as is the lease.
Every refusal is a 4xx with a one-line ``detail``, logged as one line (exception handlers); an
unexpected error is a 500 whose detail names only the exception's type (the traceback goes to the
server log), and the server goes on serving.  Status codes: 400 bad input, 401 key, 409 a call out
of order (a click before any image), 410 an unknown or reaped lease, 413 too large, 503 at
capacity.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nnInteractive.inference.remote import _protocol as P
from starlette.concurrency import run_in_threadpool

from sam_l1dfl import __version__
from sam_l1dfl.errors import SamL1dflError
from sam_l1dfl.inference.interactive import InteractiveSession, StateError
from sam_l1dfl.model.standin import weights_license

from . import endpoints as E
from .leases import Lease, LeaseRegistry
from .wire import WireError

log = logging.getLogger("sam_l1dfl.serve")


@dataclass
class ServeSettings:
    """The server's limits and key (the flags of ``sam-l1dfl serve``)."""

    api_key: "str | None" = None
    max_sessions: int = 1
    idle_timeout: float = 600.0
    liveness_timeout: float = 60.0
    max_image_voxels: int = 1 << 28


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
            "boxes": "decoded with the box embeddings" if seg.uses_boxes else
                     "no box embeddings: a box places the crop and gives a positive click at its centre",
            "negative_boxes": False, "autozoom": "accepted, no effect: crops are at the model spacing",
        },
    }


class ServerState:
    """The leases, the key, the model lock and the capabilities of one server."""

    def __init__(self, segmenter, settings: ServeSettings):
        self.seg = segmenter
        self.settings = settings
        self.registry = LeaseRegistry(lambda: InteractiveSession(segmenter), settings.max_sessions,
                                      settings.idle_timeout, settings.liveness_timeout, log=log.info)
        self.model_lock = threading.Lock()
        self._key = None if not settings.api_key else settings.api_key.encode()
        self.capabilities = capabilities(segmenter)

    def require_key(self, request: Request) -> None:
        """The dependency of every endpoint but ``/healthz``."""
        if self._key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise WireError(401, "missing bearer token")
        if not hmac.compare_digest(auth[len("Bearer "):].encode("latin-1", "replace"), self._key):
            raise WireError(401, "invalid bearer token")

    def lease_dependency(self, kind: str) -> Callable[[Request], Lease]:
        """The lease of the request: ``active`` (a user action), ``seen`` (a heartbeat) or ``peek``."""
        def lease(request: Request) -> Lease:
            return self.registry.get(request.headers.get(P.LEASE_HEADER), active=kind == "active",
                                     seen=kind != "peek")

        return lease

    async def in_session(self, lease: Lease, work: Callable[[InteractiveSession], object], *, predict: bool = False):
        """``work(session)`` in a worker thread under the lease's lock (and the model's, to predict)."""
        def run():
            with lease.lock:
                if predict:
                    with self.model_lock:
                        return work(lease.session)
                return work(lease.session)

        return await run_in_threadpool(run)

    @asynccontextmanager
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


def _refusal(status: int, detail: str, request: Request) -> JSONResponse:
    detail = " ".join(str(detail).split())[:300]
    log.warning("%d %s: %s", status, request.url.path, detail)
    return JSONResponse({"detail": detail}, status, headers={"Retry-After": "10"} if status == 503 else None)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as one line: ours with their status, user errors 400/409, the rest 500."""
    app.add_exception_handler(WireError, lambda req, exc: _refusal(exc.status, exc.detail, req))
    app.add_exception_handler(StateError, lambda req, exc: _refusal(409, str(exc), req))
    app.add_exception_handler(SamL1dflError, lambda req, exc: _refusal(400, str(exc), req))
    app.add_exception_handler(RequestValidationError, lambda req, exc: _refusal(400, "malformed request", req))

    def internal(req: Request, exc: Exception) -> JSONResponse:  # the traceback stays in the server log
        log.error("500 %s: %s: %s", req.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, 500)

    app.add_exception_handler(Exception, internal)


def _mount(app: FastAPI, srv: ServerState, path: str, method: str, handler, lease: "str | None") -> None:
    """``handler(srv, request[, lease])`` at ``path``, behind the key (but ``/healthz``)."""
    if lease is None:
        async def endpoint(request: Request):
            return await handler(srv, request)
    else:
        dep = Depends(srv.lease_dependency(lease))

        async def endpoint(request: Request, lease_: Lease = dep):
            return await handler(srv, request, lease_)

    deps = [] if path == P.PATH_HEALTHZ else [Depends(srv.require_key)]
    app.add_api_route(path, endpoint, methods=[method], dependencies=deps)


#: (path, method, handler, lease kind) of every endpoint.
ROUTES = [
    (P.PATH_HEALTHZ, "GET", E.healthz, None),
    (P.PATH_CAPABILITIES, "GET", E.capabilities, None),
    (P.PATH_CLAIM, "POST", E.claim, None),
    (P.PATH_RELEASE, "POST", E.release, None),
    (P.PATH_HEARTBEAT, "POST", E.heartbeat, "seen"),
    (P.PATH_LEASE_STATUS, "GET", E.lease_status, "peek"),
    (P.PATH_SET_IMAGE, "POST", E.set_image, "active"),
    (P.PATH_SET_TARGET_BUFFER, "POST", E.set_target_buffer, "active"),
    (P.PATH_SET_DO_AUTOZOOM, "POST", E.set_do_autozoom, "active"),
    (P.PATH_RESET_INTERACTIONS, "POST", E.reset_interactions, "active"),
    (P.PATH_UNDO, "POST", E.undo, "active"),
    (P.PATH_PREDICT, "POST", E.predict, "active"),
    (P.PATH_ADD_POINT, "POST", E.add_point, "active"),
    (P.PATH_ADD_BBOX, "POST", E.add_bbox, "active"),
    (P.PATH_ADD_INITIAL_SEG, "POST", E.add_initial_seg, "active"),
    (P.PATH_ADD_SCRIBBLE, "POST", E.unsupported("scribble"), "active"),
    (P.PATH_ADD_LASSO, "POST", E.unsupported("lasso"), "active"),
]


def create_app(segmenter, settings: "ServeSettings | None" = None) -> FastAPI:
    """The server application for ``segmenter`` (a :class:`~sam_l1dfl.inference.Segmenter`)."""
    srv = ServerState(segmenter, settings or ServeSettings())
    app = FastAPI(title="sam-l1dfl serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=srv.lifespan)
    _add_error_handlers(app)
    for path, method, handler, lease in ROUTES:
        _mount(app, srv, path, method, handler, lease)
    app.state.server = srv
    return app


__all__ = ["ROUTES", "ServeSettings", "ServerState", "capabilities", "create_app"]
