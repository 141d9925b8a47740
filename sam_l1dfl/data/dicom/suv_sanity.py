"""Does a "SUV" image look like SUV?  One warning line when it does not (a PET left in Bq/mL).

A PET exported in activity concentration (Bq/mL, about SUV x 1,000-5,000 for PSMA and FDG
doses) or in counts reads like any other float image, and SUV thresholds, SUVmax and TLU are
then off by that factor.  :func:`suv_warning` flags an image whose body median is above
:data:`MAX_BODY_MEDIAN` (50) or whose maximum is above :data:`MAX_VALUE` (10^4): SUVbw is about
0.2-3 in soft tissue and rarely above a few hundred (bladder, kidneys), while a Bq/mL image's
body median is in the thousands.

The body is, unless a mask is given, the voxels at or above the image's mean, the mean taken
with the hottest 1 % clipped (so a bladder cannot lift it above the rest of the body): air holds
almost nothing, so that mean is about (body fraction) x (body mean), below typical body values.
The rule does not depend on the image's units, so a Bq/mL image's body median is the SUV one
times the conversion factor.  On the synthetic phantom it gives 0.5-0.95 x the true body median
(which is 0.58-0.72 SUV), far inside the factor of 50 the threshold leaves.  Every 2nd voxel
along each axis is enough for these statistics.

:func:`warn_if_not_suv` issues the line as a ``UserWarning`` (``sam-l1dfl`` prints it as
``warning: <file>: ...``); ``data --check full``, ``infer`` and ``evaluate`` call it where they
read the PET, and ``sam-l1dfl dicom`` on each PET it converts (where it points to the dose and
weight in the header instead: a dose in MBq or a weight in grams gives such an image).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np

#: Above these, an image called SUV is not SUV.
MAX_BODY_MEDIAN = 50.0
MAX_VALUE = 1e4
#: What the warning suggests, by default: the image was never converted to SUV.
CONVERT_HINT = "a PET in Bq/mL or counts? Convert the DICOM PET to SUV with `sam-l1dfl dicom`"


def suv_warning(pet: np.ndarray, body: Optional[np.ndarray] = None,
                source: "str | os.PathLike | None" = None, hint: str = CONVERT_HINT) -> Optional[str]:
    """One line (``"<source>: does not look like SUV ...: <hint>"``) when ``pet`` does not look like
    SUV, else None.  ``body``: a boolean mask of the body (default: see the module docstring)."""
    a = np.asarray(pet)
    if body is not None:
        inside = a[np.asarray(body, dtype=bool) & np.isfinite(a)]
    else:
        sub = a[tuple(slice(None, None, 2) for _ in range(a.ndim))]
        finite = sub[np.isfinite(sub)]
        if not finite.size:
            return None
        level = np.minimum(finite, np.percentile(finite, 99)).mean()  # blind to the hottest 1 %
        inside = finite[finite >= level] if level > 0 else finite[finite > 0]
    if not inside.size:
        return None
    median, top = float(np.median(inside)), float(np.nanmax(a))
    if median <= MAX_BODY_MEDIAN and top <= MAX_VALUE:
        return None
    where = f"{source}: " if source is not None else ""
    return (f"{where}does not look like SUV (body median {median:.4g}, maximum {top:.4g}; SUV is about 0.2-3 in "
            f"the body and rarely above a few hundred): {hint}")


def warn_if_not_suv(pet: np.ndarray, source: "str | os.PathLike | None" = None,
                    body: Optional[np.ndarray] = None, hint: str = CONVERT_HINT) -> Optional[str]:
    """:func:`suv_warning` issued as a ``UserWarning``; returns the line (None when it looks like SUV)."""
    line = suv_warning(pet, body, source, hint)
    if line:
        warnings.warn(line, UserWarning, stacklevel=2)
    return line


__all__ = ["CONVERT_HINT", "MAX_BODY_MEDIAN", "MAX_VALUE", "suv_warning", "warn_if_not_suv"]
