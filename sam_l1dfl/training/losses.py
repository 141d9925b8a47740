"""The training loss, built by name from :mod:`sam_l1dfl.losses` with training-safe defaults.

* ``l1dfl`` gets ``sync_histogram=True`` (β from the histogram of the *global* batch, so one
  process with batch 4 and two processes with batch 2 compute the same loss) and
  ``validate=False`` (the value check reads a result back to the host: one sync per click).
* Per-sample Dice (``batch=False``) averaged over the local batch, so DDP's gradient average over
  processes equals the single-process mean over the global batch.
"""

from __future__ import annotations

from typing import Any


def known_losses() -> "set[str] | None":
    from sam_l1dfl.losses import LOSS_NAMES

    return set(LOSS_NAMES)


def build_loss(name: str, params: "dict[str, Any] | None" = None):
    from sam_l1dfl.losses import make_loss

    kw = dict(params or {})
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "l1dfl":
        kw.setdefault("sync_histogram", True)
        kw.setdefault("validate", False)
        kw.setdefault("batch", False)
    return make_loss(key, mode="sigmoid", **kw)
