"""A pickle payload for the trust tests: unpickling it creates a folder (the stand-in for arbitrary code)."""

from __future__ import annotations

import os
from pathlib import Path


class Payload:
    """Unpickling this creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))
