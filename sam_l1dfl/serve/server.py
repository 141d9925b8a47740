"""Running the application: uvicorn on a socket we bind ourselves.

Binding first lets ``--port 0`` pick a free port and the start line name the real URL, and lets
the tests, ``scripts/bench_serve.py`` and the figure script run a real server on a loopback port
in a background thread (:class:`BackgroundServer`), driven by the real client.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from sam_l1dfl.errors import InputError


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); one-line error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it the reply's header and body writes meet Nagle's
    # algorithm and the client's delayed ACK, 40 ms a request on Linux (measured)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise InputError(None, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app, log_level: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug",
                                         lifespan="on", timeout_keep_alive=30))


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl+C / SIGTERM)."""
    _server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` a real server on a free loopback port in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning"):
        self.sock = bind(host, 0)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="sam-l1dfl-serve")

    def __enter__(self) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


__all__ = ["BackgroundServer", "bind", "is_loopback", "serve", "url_of"]
