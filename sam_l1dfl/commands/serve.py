"""``sam-l1dfl serve``: an interactive segmentation server for 3D Slicer, napari and MITK.

::

    sam-l1dfl serve --checkpoint runs/psma_l1dfl [--host 127.0.0.1] [--port 1527] [--device auto]
                    [--api-key KEY | env NN_INTERACTIVE_API_KEY] [--max-sessions 1]
                    [--idle-timeout-seconds 600] [--liveness-timeout-seconds 60] [--max-image-voxels N]

speaks nnInteractive's remote protocol (the flags are nninteractive-server's), with the checkpoint's
SAM-Med3D behind it (docs/serve.md).  ``--checkpoint`` takes what ``infer`` takes, with the same
trust rule (``--trust`` to unpickle).  The server binds 127.0.0.1 by default and refuses another
host without an API key unless ``--insecure``.  One line says which weights it serves, on which
device, at which URL; ``GET /healthz`` answers once the model is loaded.  ``--port 0`` picks a free
port.  This module checks the flags, loads the :class:`~sam_l1dfl.inference.Segmenter` and runs
:func:`sam_l1dfl.serve.app.create_app`.
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import DEVICE_HELP, add_output_flags

HELP = "interactive segmentation server for 3D Slicer, napari and MITK (nnInteractive's remote protocol)"
#: Shown by ``--help``.
EXAMPLES = (
    "sam-l1dfl serve --checkpoint runs/psma_l1dfl",
    "sam-l1dfl serve --checkpoint checkpoints/sam_med3d_turbo.pth --device cuda:0 --port 0",
    "NN_INTERACTIVE_API_KEY=$(openssl rand -hex 32) sam-l1dfl serve --checkpoint runs/psma_l1dfl --host 0.0.0.0 "
    "--max-sessions 4",
)
KEY_ENV = "NN_INTERACTIVE_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="run/model directory, exported file, sam_med3d_turbo.pth, or 'standin'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=1527, help="TCP port (default 1527; 0: a free one)")
    p.add_argument("--device", default="auto", help=f"auto (CUDA when available), or {DEVICE_HELP}")
    p.add_argument("--api-key", default=None,
                   help=f"bearer token every request must carry (default: ${KEY_ENV}; none: no check)")
    p.add_argument("--max-sessions", type=int, default=1, help="concurrent client sessions (default 1)")
    p.add_argument("--idle-timeout-seconds", type=float, default=600.0,
                   help="reap a session after this long without a user action (default 600; 0: never)")
    p.add_argument("--liveness-timeout-seconds", type=float, default=60.0,
                   help="reap a session after this long without any request, heartbeats included (default 60; 0: never)")
    p.add_argument("--max-image-voxels", type=int, default=1 << 28,
                   help=f"largest image accepted, in voxels (default {1 << 28}); checked before decompressing")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--trust", action="store_true", help="allow checkpoints that need full unpickling")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks (default 0.5)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="server log level (default info)")
    add_output_flags(p)


def _check(args) -> "str | None":
    """One-line errors for the flags; the API key in use."""
    import os

    from sam_l1dfl.errors import InputError
    from sam_l1dfl.serve import EXTRA_HINT, missing_dependency
    from sam_l1dfl.serve.server import is_loopback

    missing = missing_dependency()
    if missing:
        raise InputError(None, f"{missing} is not installed: {EXTRA_HINT}")
    for flag, value, low in (("--max-sessions", args.max_sessions, 1), ("--max-image-voxels", args.max_image_voxels, 1),
                             ("--idle-timeout-seconds", args.idle_timeout_seconds, 0),
                             ("--liveness-timeout-seconds", args.liveness_timeout_seconds, 0),
                             ("--port", args.port, 0)):
        if not value >= low:
            raise InputError(None, f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise InputError(None, f"--port must be at most 65535, got {args.port}")
    key = args.api_key if args.api_key is not None else os.environ.get(KEY_ENV) or None
    if not is_loopback(args.host) and not key and not args.insecure:
        raise InputError(None, f"--host {args.host} is reachable from other machines: give an API key (--api-key or "
                               f"${KEY_ENV}), or pass --insecure")
    return key


def run(args) -> int:
    import logging
    import sys

    from sam_l1dfl.devices import parse_device
    from sam_l1dfl.inference import Segmenter
    from sam_l1dfl.model.standin import ORIGIN_WORDS

    key = _check(args)
    device = None if str(args.device).lower() == "auto" else parse_device(args.device)
    from sam_l1dfl.serve.app import ServeSettings, create_app
    from sam_l1dfl.serve.server import bind, is_loopback, serve, url_of

    sock = bind(args.host, args.port)
    seg = Segmenter(args.checkpoint, device=device, batch_size=1, threshold=args.threshold, trust=args.trust)
    app = create_app(seg, ServeSettings(api_key=key, max_sessions=args.max_sessions,
                                        idle_timeout=args.idle_timeout_seconds,
                                        liveness_timeout=args.liveness_timeout_seconds,
                                        max_image_voxels=args.max_image_voxels))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("sam_l1dfl.serve")
    log.addHandler(handler)
    log.setLevel(args.log_level.upper())
    start = (seg.meta.get("training") or {}).get("start_from") and not seg.meta.get("weights_origin")
    words = ("fine-tuned from " if start else "") + ORIGIN_WORDS.get(seg.weights, seg.weights)
    print(f"serving {args.checkpoint} [{words}] on {seg.device} at {url_of(sock)}; "
          f"API key {'required' if key else 'off'}; up to {args.max_sessions} session(s)", flush=True)
    if args.insecure and not key and not is_loopback(args.host):
        print(f"warning: anyone who reaches {args.host}:{sock.getsockname()[1]} can use this server (no API key)",
              file=sys.stderr, flush=True)
    serve(app, sock, args.log_level)
    return 0
