"""``sam-l1dfl serve``: a SAM-Med3D server for nnInteractive's remote protocol (docs/serve.md).

3D Slicer (SlicerNNInteractive, Remote mode), napari-nninteractive and MITK drive a server through
the client package ``nninteractive-client``; this package is such a server, with a
:class:`~sam_l1dfl.inference.Segmenter` behind it:

- :mod:`.app`: the application (:func:`create_app`, :class:`ServeSettings`, :func:`capabilities`),
  its key and lease dependencies and error handlers; :mod:`.endpoints`: one function per endpoint;
- :mod:`.bodies`: request bodies read with their limits (a packed header checked first);
- :mod:`.leases`: sessions, lease tokens, idle and liveness reaping;
- :mod:`.wire`: the packed-array bodies and JSON, checked before anything is decompressed;
- :mod:`.server`: uvicorn on a socket we bind (:class:`BackgroundServer` for tests and scripts).

The click logic itself is :class:`sam_l1dfl.inference.interactive.InteractiveSession`, usable
without any server.  Needs the ``serve`` extra: ``pip install 'sam-l1dfl[serve]'``.
"""

from __future__ import annotations

EXTRA_HINT = "the server needs the 'serve' extra: pip install 'sam-l1dfl[serve]'"


def missing_dependency() -> "str | None":
    """None when FastAPI, uvicorn and nninteractive-client import; else the name of the first missing."""
    import importlib.util

    for mod, dist in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                      ("nnInteractive.inference.remote", "nninteractive-client")):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return dist
    return None


__all__ = ["EXTRA_HINT", "missing_dependency"]
