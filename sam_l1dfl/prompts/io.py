"""Reading and writing prompt files, by kind: our JSON document or a 3D Slicer ``.mrk.json``.

``save_prompts`` writes atomically, choosing the kind from the name (``.mrk.json`` -> Slicer
markups, :mod:`sam_l1dfl.prompts.slicer`; anything else -> our JSON,
:mod:`sam_l1dfl.prompts.fileformat`, schema ``prompts/schema.json``).  ``load_prompts`` reads
either (a Slicer file is detected by name or content), or several Slicer files or a folder of them
for one case (:func:`prompt_files`; Slicer saves each markups node to its own file), and
validates the result:

* wrong ``format``/``version`` or malformed content -> :class:`PromptError`;
* an empty lesion list (or a lesion without any prompt) -> :class:`PromptError`;
* a point, or a box centre, outside the image -> :class:`PromptError`;
* the image's SHA-256 differs from the recorded one -> :class:`PromptError`, or only a
  ``UserWarning`` with ``allow_checksum_mismatch=True`` (``verify_sha=False`` skips hashing).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

from sam_l1dfl.errors import PromptError
from sam_l1dfl.io_utils import dumps_compact, sha256_file, write_text_atomic
from sam_l1dfl.prompts.fileformat import from_document, to_document
from sam_l1dfl.prompts.slicer import CROP_MM, merge_markups, save_slicer_markups
from sam_l1dfl.prompts.types import CasePrompts


def is_slicer_file(path: "str | os.PathLike") -> bool:
    return str(path).lower().endswith(".mrk.json")


def save_prompts(prompts: CasePrompts, path: "str | os.PathLike") -> Path:
    """Write ``prompts`` to ``path`` atomically (``.mrk.json`` -> 3D Slicer markups)."""
    path = Path(path)
    if is_slicer_file(path):
        return save_slicer_markups(prompts, path)
    return write_text_atomic(path, dumps_compact(to_document(prompts, relative_to=path.parent)))


def prompt_files(paths: "str | os.PathLike | Sequence[str | os.PathLike]") -> list[Path]:
    """The files of one case's prompts: a file, several files, or a folder (its ``*.mrk.json``,
    sorted: the nodes Slicer saves one per file)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise PromptError(None, "no prompt file given")
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_slicer_file(f))
            if not found:
                raise PromptError(p, "folder holds no Slicer markups file (*.mrk.json)")
            out += found
        else:
            out.append(p)
    return out


def _read_json(path: Path) -> dict:
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
    return doc


def load_prompts(
    path: "str | os.PathLike | Sequence[str | os.PathLike]",
    image=None,
    image_path: "str | os.PathLike | None" = None,
    verify_sha: bool = True,
    allow_checksum_mismatch: bool = False,
    crop_mm: float = CROP_MM,
) -> CasePrompts:
    """Read and validate one case's prompts: a prompt file (our JSON or a Slicer ``.mrk.json``),
    or several Slicer markups files, or a folder of them (merged into one prompt set:
    :func:`~sam_l1dfl.prompts.slicer.merge_markups`).

    ``image`` (a SimpleITK image) supplies the grid to check against; ``image_path`` names the
    image file to checksum (default: the path recorded in the file, if it exists).  ``crop_mm``:
    the crop edge that places unlabelled Slicer points.
    """
    files = prompt_files(path)
    docs = [(_read_json(f), f) for f in files]
    where = Path(path) if isinstance(path, (str, os.PathLike)) else files[0]
    if len(docs) == 1 and not (is_slicer_file(files[0]) or "markups" in docs[0][0]):
        prompts = from_document(docs[0][0], files[0], image=image)
    else:
        for doc, f in docs:
            if not (is_slicer_file(f) or "markups" in doc):
                raise PromptError(f, "only Slicer markups files (.mrk.json) can be combined into one case's prompts")
        case_id = where.name if where.is_dir() else None
        prompts = merge_markups(docs, image=image, image_path=image_path, crop_mm=crop_mm, case_id=case_id)
    _check_checksum(prompts, where, image_path, verify_sha, allow_checksum_mismatch)
    validate_prompts(prompts, where)
    return prompts


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
                    f"lesion {les.lesion_id}: point at {_vec(p.world)} mm (voxel {_vec(p.index, 1)}) lies outside "
                    f"the image (size {list(ref.size)})",
                )
        for b in les.boxes:
            c = ref.world_to_index(b.center)
            if not ref.contains_index(c):
                raise PromptError(
                    path,
                    f"lesion {les.lesion_id}: box centred at {_vec(b.center)} mm (voxel {_vec(c, 1)}) lies outside "
                    f"the image (size {list(ref.size)})",
                )


def _vec(v, nd=2) -> str:
    return "[" + ", ".join(f"{float(x):.{nd}f}" for x in v) + "]"


def _check_checksum(prompts: CasePrompts, path, image_path, verify_sha: bool, allow_mismatch: bool) -> None:
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


__all__ = ["is_slicer_file", "load_prompts", "prompt_files", "save_prompts", "validate_prompts"]
