"""The prompt file: one JSON document per case (schema: ``prompts/schema.json``).

``save_prompts`` writes it atomically; ``load_prompts`` reads it (or a 3D Slicer ``.mrk.json``,
detected by name or content) and validates it:

* wrong ``format``/``version`` or malformed content -> :class:`PromptError`;
* an empty lesion list (or a lesion without any prompt) -> :class:`PromptError`;
* a point, or a box centre, outside the image -> :class:`PromptError`;
* the image's SHA-256 differs from the recorded one -> :class:`PromptError`, or only a
  ``UserWarning`` with ``allow_checksum_mismatch=True`` (``verify_sha=False`` skips hashing).

The image path is stored relative to the prompt file's folder when it can be, and resolved
relative to it on load.  Voxel indices in the file are recomputed from the world positions and
the grid (of the ``image`` given, else the one recorded in the file); a file whose indices
disagree with its world positions by more than 0.01 voxel is rejected.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sam_l1dfl.errors import PromptError
from sam_l1dfl.prompts.types import (
    FORMAT,
    VERSION,
    BoxPrompt,
    CasePrompts,
    ImageRef,
    LesionPrompts,
    PointPrompt,
    box_index_envelope,
)


def is_slicer_file(path: "str | os.PathLike") -> bool:
    return str(path).lower().endswith(".mrk.json")


def save_prompts(prompts: CasePrompts, path: "str | os.PathLike") -> Path:
    """Write ``prompts`` to ``path`` atomically (``.mrk.json`` -> 3D Slicer markups)."""
    from sam_l1dfl.io_utils import write_text_atomic

    path = Path(path)
    if is_slicer_file(path):
        from sam_l1dfl.prompts.slicer import save_slicer_markups

        return save_slicer_markups(prompts, path)
    return write_text_atomic(path, dumps_compact(to_document(prompts, relative_to=path.parent)))


_NUM_LIST = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")


def dumps_compact(doc: Any) -> str:
    """``json.dumps(indent=2)`` with short numeric arrays kept on one line (readable diffs)."""
    text = json.dumps(doc, indent=2)
    return _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def to_document(prompts: CasePrompts, relative_to: "str | os.PathLike | None" = None) -> dict[str, Any]:
    doc = prompts.to_dict()
    if relative_to is not None and prompts.image.path:
        doc["image"]["path"] = _relative(prompts.image.path, relative_to)
    return doc


def _relative(image_path: str, folder) -> str:
    try:
        return Path(os.path.relpath(Path(image_path).resolve(), Path(folder).resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(image_path)


def load_prompts(
    path: "str | os.PathLike",
    image=None,
    image_path: "str | os.PathLike | None" = None,
    verify_sha: bool = True,
    allow_checksum_mismatch: bool = False,
) -> CasePrompts:
    """Read and validate a prompt file (our JSON or a Slicer ``.mrk.json``).

    ``image`` (a SimpleITK image) supplies the grid to check against; ``image_path`` names the
    image file to checksum (default: the path recorded in the file, if it exists).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PromptError(path, f"cannot read prompt file ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise PromptError(path, "expected a JSON object at the top level")

    if is_slicer_file(path) or "markups" in doc:
        from sam_l1dfl.prompts.slicer import markups_to_prompts

        prompts = markups_to_prompts(doc, path, image=image, image_path=image_path)
    else:
        prompts = from_document(doc, path, image=image)
    _check_checksum(prompts, path, image_path, verify_sha, allow_checksum_mismatch)
    validate_prompts(prompts, path)
    return prompts


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
        img = doc["image"]
        stored = ImageRef(
            size=img["size"],
            spacing=img["spacing"],
            origin=img["origin"],
            direction=img["direction"],
            path=_resolve(img.get("path"), Path(path).parent),
            sha256=img.get("sha256"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        bad(f"malformed 'image' entry ({type(exc).__name__}: {exc})")
    ref = stored
    if image is not None:
        ref = ImageRef.from_image(image, path=stored.path, sha256=stored.sha256)
        if not ref.same_grid(stored):
            bad(
                f"the image grid (size {ref.size}, spacing {ref.spacing}) differs from the grid recorded in the "
                f"prompt file (size {stored.size}, spacing {stored.spacing})"
            )
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
                if "index" in p and p["index"] is not None and image is None:
                    if not np.allclose(idx, [float(v) for v in p["index"]], atol=0.01, rtol=0):
                        bad(f"lesion {lid}: point index {p['index']} disagrees with its world position {list(world)}")
                points.append(PointPrompt(world=world, index=idx, label=label, kind=str(p.get("kind", ""))))
            boxes = []
            for b in les.get("boxes", []):
                box = BoxPrompt(
                    center=tuple(float(v) for v in b["center"]),
                    size=tuple(float(v) for v in b["size"]),
                    orientation=tuple(float(v) for v in b.get("orientation", ref.direction)),
                    index_min=(0.0, 0.0, 0.0),
                    index_max=(0.0, 0.0, 0.0),
                    kind=str(b.get("kind", "")),
                )
                if len(box.center) != 3 or len(box.size) != 3 or len(box.orientation) != 9:
                    bad(f"lesion {lid}: a box needs center[3], size[3], orientation[9]")
                if min(box.size) <= 0:
                    bad(f"lesion {lid}: box size must be positive, got {list(box.size)}")
                lo, hi = box_index_envelope(ref, box)
                boxes.append(BoxPrompt(box.center, box.size, box.orientation, lo, hi, box.kind))
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


def _resolve(p: str | None, folder: Path) -> str | None:
    if not p:
        return None
    pp = Path(p)
    return str(pp if pp.is_absolute() else (folder / pp))


def validate_prompts(prompts: CasePrompts, path) -> None:
    if not prompts.lesions:
        raise PromptError(path, "the prompt file has no lesion (empty 'lesions' list)")
    ids = [les.lesion_id for les in prompts.lesions]
    if len(set(ids)) != len(ids):
        raise PromptError(path, f"duplicate lesion ids {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    ref = prompts.image
    for les in prompts.lesions:
        if not les.points and not les.boxes:
            raise PromptError(path, f"lesion {les.lesion_id} has no point and no box")
        for p in les.points:
            if not ref.contains_index(p.index):
                raise PromptError(
                    path,
                    f"lesion {les.lesion_id}: point at {_fmt(p.world)} mm (voxel {_fmt(p.index, 1)}) lies outside "
                    f"the image (size {list(ref.size)})",
                )
        for b in les.boxes:
            c = ref.world_to_index(b.center)
            if not ref.contains_index(c):
                raise PromptError(
                    path,
                    f"lesion {les.lesion_id}: box centred at {_fmt(b.center)} mm (voxel {_fmt(c, 1)}) lies outside "
                    f"the image (size {list(ref.size)})",
                )


def _fmt(v, nd=2) -> str:
    return "[" + ", ".join(f"{float(x):.{nd}f}" for x in v) + "]"


def _check_checksum(prompts: CasePrompts, path, image_path, verify_sha: bool, allow_mismatch: bool) -> None:
    from sam_l1dfl.io_utils import sha256_file

    target = Path(image_path) if image_path is not None else (Path(prompts.image.path) if prompts.image.path else None)
    if image_path is not None and not Path(image_path).is_file():
        raise PromptError(path, f"image {image_path} does not exist")
    if not verify_sha or target is None or not target.is_file() or not prompts.image.sha256:
        return
    actual = sha256_file(target)
    if actual != prompts.image.sha256:
        msg = (
            f"image {target} has SHA-256 {actual[:12]}..., the prompts were made for {prompts.image.sha256[:12]}... "
            "(different or modified image)"
        )
        if not allow_mismatch:
            raise PromptError(path, msg + "; pass allow_checksum_mismatch=True / --allow-checksum-mismatch to use them anyway")
        warnings.warn(f"{path}: {msg}", UserWarning, stacklevel=3)


__all__ = ["from_document", "is_slicer_file", "load_prompts", "save_prompts", "to_document", "validate_prompts"]
