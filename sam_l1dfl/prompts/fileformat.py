"""Our prompt file: one JSON document per case (schema: ``prompts/schema.json``).

``to_document`` / ``from_document`` convert between :class:`CasePrompts` and the document;
reading and writing files (of either kind, with validation) is :mod:`sam_l1dfl.prompts.io`.

The image path is stored relative to the prompt file's folder when it can be, and resolved
relative to it on load.  Voxel indices in the file are recomputed from the world positions and
the grid (of the ``image`` given, else the one recorded in the file); a file whose indices
disagree with its world positions (on its recorded grid) by more than 0.01 voxel is rejected,
with or without an image (e.g. RAS world values under the ``LPS`` label).  An image whose grid is
not the recorded one is refused (:func:`check_same_grid`: the message names the image the prompts
were made for and what differs, origin or direction included).  A box must have
positive sizes (:func:`~sam_l1dfl.prompts.types.placed_box`, shared with Slicer ROIs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sam_l1dfl.data.geometry import grid_differences
from sam_l1dfl.errors import PromptError
from sam_l1dfl.prompts.types import (
    FORMAT,
    VERSION,
    CasePrompts,
    ImageRef,
    LesionPrompts,
    PointPrompt,
    image_ref_from_dict,
    placed_box,
    relative_path,
)


def to_document(prompts: CasePrompts, relative_to: "str | os.PathLike | None" = None) -> dict[str, Any]:
    doc = prompts.to_dict()
    if relative_to is not None and prompts.image.path:
        doc["image"]["path"] = relative_path(prompts.image.path, relative_to)
    return doc


def check_same_grid(image: ImageRef, stored: ImageRef, path) -> None:
    """Refuse prompts whose recorded grid is not the image's (:meth:`ImageRef.same_grid`), naming
    the image they were made for and each of size, spacing, origin, direction that differs."""
    if image.same_grid(stored):
        return
    diffs = grid_differences(stored, image, coord_tol=1e-3, dir_tol=1e-3)
    made_for = f" ({stored.path})" if stored.path else ""
    raise PromptError(path, f"the image is not the one the prompts were made for{made_for}: "
                            + "; ".join(diffs) + " (image vs prompts)")


def from_document(doc: dict[str, Any], path, image=None) -> CasePrompts:
    def bad(msg):
        raise PromptError(path, msg)

    if doc.get("format") != FORMAT:
        bad(f"not a sam-l1dfl prompt file (format {doc.get('format')!r}, expected {FORMAT!r})")
    if doc.get("version") != VERSION:
        bad(f"unsupported prompt file version {doc.get('version')!r} (this sam-l1dfl reads version {VERSION})")
    if doc.get("coordinate_system", "LPS") != "LPS":
        bad(f"coordinate_system must be 'LPS', got {doc.get('coordinate_system')!r}")
    if doc.get("units", "mm") != "mm":
        bad(f"units must be 'mm', got {doc.get('units')!r}")
    try:
        stored = image_ref_from_dict(doc["image"], Path(path).parent)
    except (KeyError, TypeError, ValueError) as exc:
        bad(f"malformed 'image' entry ({type(exc).__name__}: {exc})")
    ref = stored
    if image is not None:
        ref = ImageRef.from_image(image, path=stored.path, sha256=stored.sha256)
        check_same_grid(ref, stored, path)
    lesions_doc = doc.get("lesions")
    if not isinstance(lesions_doc, list):
        bad("'lesions' must be a list")
    lesions = []
    for n, les in enumerate(lesions_doc):
        try:
            lid = int(les["id"])
            points = []
            for p in les.get("points", []):
                label = int(p["label"])
                if label not in (0, 1):
                    bad(f"lesion {lid}: point label must be 1 (positive) or 0 (negative), got {label}")
                world = tuple(float(v) for v in p["world"])
                if len(world) != 3:
                    bad(f"lesion {lid}: a point needs 3 world coordinates")
                idx = tuple(float(v) for v in ref.world_to_index(world))
                if "index" in p and p["index"] is not None:  # the file's index is on the grid it records
                    if not np.allclose(stored.world_to_index(world), [float(v) for v in p["index"]], atol=0.01, rtol=0):
                        bad(f"lesion {lid}: point index {p['index']} disagrees with its world position {list(world)} "
                            "(check the coordinate system: world positions are LPS mm)")
                points.append(PointPrompt(world=world, index=idx, label=label, kind=str(p.get("kind", ""))))
            boxes = []
            for b in les.get("boxes", []):
                try:
                    boxes.append(placed_box(ref, b["center"], b["size"], b.get("orientation", ref.direction),
                                            str(b.get("kind", ""))))
                except ValueError as exc:
                    bad(f"lesion {lid}: {exc}")
        except PromptError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            bad(f"malformed lesion entry #{n} ({type(exc).__name__}: {exc})")
        lesions.append(LesionPrompts(lesion_id=lid, points=points, boxes=boxes, info=dict(les.get("info", {}))))
    return CasePrompts(
        case_id=str(doc.get("case_id", Path(path).name.split(".")[0])),
        image=ref,
        lesions=lesions,
        generator=dict(doc.get("generator", {})),
    )


__all__ = ["check_same_grid", "from_document", "to_document"]
