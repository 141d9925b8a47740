"""The per-target cache of a loss (what the click loop would otherwise recompute at every click)."""

from __future__ import annotations

import weakref

import torch

class TargetContext:
    """What a loss derives from a target that the click loop passes again at every click: kept
    for the same tensor object (and version), recomputed for any other."""

    def __init__(self):
        self.ref, self.version, self.data = None, None, {}

    def get(self, target: torch.Tensor) -> dict:
        if self.ref is None or self.ref() is not target or self.version != target._version:
            self.ref, self.version, self.data = weakref.ref(target), target._version, {}
        return self.data

    def __getstate__(self) -> dict:  # a pickled or copied loss starts with an empty cache
        return {"ref": None, "version": None, "data": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
