"""3D Slicer markups (``.mrk.json``, markups-schema-v1.0.3) export and import.

Export (one file per case, all markups in one ``markups`` array — Slicer loads each as a node):

* positive points -> one ``Fiducial`` markup named ``positive`` (green), negative points -> one
  named ``negative`` (red).  Every control point is labelled ``L<lesion>+<n>`` / ``L<lesion>-<n>``
  and described ``positive; lesion <id>`` / ``negative; lesion <id>``.
* each box -> one ``ROI`` markup named ``lesion <id> box`` with ``roiType`` ``Box``, ``center``,
  ``size`` and ``orientation`` (columns = box axes; the image direction for lesion boxes).
* ``coordinateSystem`` ``LPS``, ``coordinateUnits`` ``mm``: positions are written unchanged.
* the case id, image reference and generator settings ride along under a top-level
  ``"sam_l1dfl"`` key (the schema allows extra properties; Slicer ignores it), so our own
  export comes back identical.  A file saved again by Slicer loses it; pass ``image=`` /
  ``image_path=`` to :func:`sam_l1dfl.prompts.io.load_prompts` for such files.

Import accepts what Slicer writes: any number of ``Fiducial`` and ``ROI`` markups, ``LPS`` or
``RAS`` (converted to LPS), ``mm`` (or ``um``).  A control point is negative when its description
or label says ``negative``/``neg``, or its label has the ``L<id>-<n>`` form, or its markup is
named ``negative``; otherwise positive.  Its lesion is ``L<id>`` in the label, ``lesion <id>`` in
the description or markup name, else lesion 1.  Undefined control points
(``positionStatus`` != ``defined``) are skipped.  An ROI must have positive sizes, as a box of our
JSON (:func:`~sam_l1dfl.prompts.types.placed_box`).  The grid of ``image_path`` is read by
:func:`sam_l1dfl.data.io.read_image_info`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sam_l1dfl.data.io import read_image_info
from sam_l1dfl.errors import InputError, PromptError
from sam_l1dfl.io_utils import dumps_compact, write_text_atomic
from sam_l1dfl.prompts.types import (
    NEGATIVE,
    POSITIVE,
    CasePrompts,
    ImageRef,
    LesionPrompts,
    PointPrompt,
    image_ref_from_dict,
    placed_box,
    relative_path,
)

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
MARKUP_TYPES = ("Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI")
_LPS_POINT_ORIENTATION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]  # identity in RAS, written as LPS
_GREEN, _RED, _YELLOW = [0.2, 0.9, 0.2], [1.0, 0.2, 0.2], [1.0, 0.85, 0.1]


def _display(color) -> dict[str, Any]:
    return {
        "visibility": True,
        "opacity": 1.0,
        "color": list(color),
        "selectedColor": list(color),
        "activeColor": [0.4, 1.0, 0.0],
        "propertiesLabelVisibility": False,
        "pointLabelsVisibility": True,
        "textScale": 3.0,
        "glyphType": "Sphere3D",
        "glyphScale": 1.5,
        "glyphSize": 5.0,
        "useGlyphScale": True,
        "sliceProjection": False,
        "sliceProjectionUseFiducialColor": True,
        "sliceProjectionOutlinedBehindSlicePlane": False,
        "sliceProjectionColor": [1.0, 1.0, 1.0],
        "sliceProjectionOpacity": 0.6,
        "lineThickness": 0.2,
        "lineColorFadingStart": 1.0,
        "lineColorFadingEnd": 10.0,
        "lineColorFadingSaturation": 1.0,
        "lineColorFadingHueOffset": 0.0,
        "handlesInteractive": False,
        "snapMode": "toVisibleSurface",
    }


def _control_point(n: int, label: str, description: str, position) -> dict[str, Any]:
    return {
        "id": str(n),
        "label": label,
        "description": description,
        "associatedNodeID": "",
        "position": [float(v) for v in position],
        "orientation": list(_LPS_POINT_ORIENTATION),
        "selected": True,
        "locked": False,
        "visibility": True,
        "positionStatus": "defined",
    }


def _markup(kind: str, name: str, n_points: int) -> dict[str, Any]:
    """The fields every markup we write starts with."""
    return {
        "type": kind,
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": True,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": n_points,
    }


def _fiducial(name: str, color, points: list[dict]) -> dict[str, Any]:
    return {
        **_markup("Fiducial", name, len(points)),
        "controlPoints": points,
        "measurements": [],
        "display": _display(color),
    }


def prompts_to_markups(prompts: CasePrompts) -> dict[str, Any]:
    """The Slicer markups document (a dict ready for ``json.dump``)."""
    pos: list[dict] = []
    neg: list[dict] = []
    markups: list[dict] = []
    for les in prompts.lesions:
        npos = nneg = 0
        for p in les.points:
            if p.positive:
                npos += 1
                pos.append(_control_point(len(pos) + 1, f"L{les.lesion_id}+{npos}", f"positive; lesion {les.lesion_id}; {p.kind}", p.world))
            else:
                nneg += 1
                neg.append(_control_point(len(neg) + 1, f"L{les.lesion_id}-{nneg}", f"negative; lesion {les.lesion_id}; {p.kind}", p.world))
    if pos:
        markups.append(_fiducial("positive", _GREEN, pos))
    if neg:
        markups.append(_fiducial("negative", _RED, neg))
    for les in prompts.lesions:
        for nb, b in enumerate(les.boxes, start=1):
            name = f"lesion {les.lesion_id} box" + (f" {nb}" if len(les.boxes) > 1 else "")
            markups.append(
                {
                    **_markup("ROI", name, 1),
                    "roiType": "Box",
                    "insideOut": False,
                    "center": [float(v) for v in b.center],
                    "orientation": [float(v) for v in b.orientation],
                    "size": [float(v) for v in b.size],
                    "controlPoints": [
                        _control_point(1, f"L{les.lesion_id} box", f"box; lesion {les.lesion_id}; {b.kind}", b.center)
                    ],
                    "measurements": [],
                    "display": {**_display(_YELLOW), "pointLabelsVisibility": False},
                }
            )
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": markups,
        "sam_l1dfl": {
            "case_id": prompts.case_id,
            "image": prompts.image.to_dict(),
            "generator": prompts.generator,
        },
    }


def save_slicer_markups(prompts: CasePrompts, path: "str | os.PathLike") -> Path:
    """Write ``prompts`` as Slicer markups to ``path`` atomically (image path stored relative)."""
    doc = prompts_to_markups(prompts)
    if prompts.image.path:
        doc["sam_l1dfl"]["image"]["path"] = relative_path(prompts.image.path, Path(path).parent)
    return write_text_atomic(path, dumps_compact(doc))


# ----------------------------------------------------------------------------------------------
# import


def validate_markups(doc: Any, path) -> None:
    """Structural checks from markups-schema-v1.0.3 (required keys, types, enums): one-line errors."""

    def bad(msg):
        raise PromptError(path, f"not a valid Slicer markups file: {msg}")

    def num_array(v, n, what):
        if not (isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)):
            bad(f"{what} must be an array of {n} numbers")

    if not isinstance(doc, dict):
        bad("top level must be an object")
    for key in ("@schema", "markups"):
        if key not in doc:
            bad(f"missing required key {key!r}")
    if not isinstance(doc["@schema"], str):
        bad("'@schema' must be a string")
    if not isinstance(doc["markups"], list):
        bad("'markups' must be an array")
    for m, mk in enumerate(doc["markups"]):
        where = f"markups[{m}]"
        if not isinstance(mk, dict) or "type" not in mk:
            bad(f"{where} must be an object with a 'type'")
        if mk["type"] not in MARKUP_TYPES:
            bad(f"{where}.type {mk['type']!r} is not one of {list(MARKUP_TYPES)}")
        if mk.get("coordinateSystem", "LPS") not in ("LPS", "RAS"):
            bad(f"{where}.coordinateSystem must be 'LPS' or 'RAS'")
        units = mk.get("coordinateUnits", "mm")
        if not (units in ("mm", "um") or (isinstance(units, list) and len(units) == 3)):
            bad(f"{where}.coordinateUnits must be 'mm' or 'um'")
        for key in ("center", "size"):
            if key in mk:
                num_array(mk[key], 3, f"{where}.{key}")
        if "orientation" in mk:
            num_array(mk["orientation"], 9, f"{where}.orientation")
        cps = mk.get("controlPoints", [])
        if not isinstance(cps, list):
            bad(f"{where}.controlPoints must be an array")
        for c, cp in enumerate(cps):
            if not isinstance(cp, dict):
                bad(f"{where}.controlPoints[{c}] must be an object")
            if "position" in cp:
                num_array(cp["position"], 3, f"{where}.controlPoints[{c}].position")
            for key in ("id", "label", "description", "associatedNodeID"):
                if key in cp and not isinstance(cp[key], str):
                    bad(f"{where}.controlPoints[{c}].{key} must be a string")
            if cp.get("positionStatus", "defined") not in ("undefined", "preview", "defined"):
                bad(f"{where}.controlPoints[{c}].positionStatus must be undefined, preview or defined")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _to_lps(v, mk) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if mk.get("coordinateUnits", "mm") == "um":
        v = v / 1000.0
    if mk.get("coordinateSystem", "LPS") == "RAS":
        v = v * np.array([-1.0, -1.0, 1.0])
    return v


_LABEL_RE = re.compile(r"^\s*L(\d+)\s*([+-])\s*\d*\s*$")
_LESION_RE = re.compile(r"lesion[\s_-]*(\d+)", re.IGNORECASE)
_NEG_RE = re.compile(r"\bneg(ative)?\b", re.IGNORECASE)


def _classify(cp: dict, markup_name: str) -> tuple[int, int]:
    label = cp.get("label", "") or ""
    desc = cp.get("description", "") or ""
    m = _LABEL_RE.match(label)
    if _NEG_RE.search(desc) or _NEG_RE.search(label):
        polarity = NEGATIVE
    elif re.search(r"\bpos(itive)?\b", desc, re.IGNORECASE):
        polarity = POSITIVE
    elif m:
        polarity = NEGATIVE if m.group(2) == "-" else POSITIVE
    elif _NEG_RE.search(markup_name):
        polarity = NEGATIVE
    else:
        polarity = POSITIVE
    if m:
        lesion = int(m.group(1))
    else:
        mm = _LESION_RE.search(desc) or _LESION_RE.search(markup_name)
        lesion = int(mm.group(1)) if mm else 1
    return lesion, polarity


def markups_to_prompts(doc: dict, path, image=None, image_path=None) -> CasePrompts:
    """Prompts from a Slicer markups document; the grid comes from ``image``, ``image_path`` or
    the ``sam_l1dfl`` block of our own export (in that order)."""
    validate_markups(doc, path)
    meta = doc.get("sam_l1dfl") if isinstance(doc.get("sam_l1dfl"), dict) else {}
    ref = _grid(meta, path, image, image_path)
    by_lesion: dict[int, LesionPrompts] = {}

    def lesion(lid: int) -> LesionPrompts:
        return by_lesion.setdefault(lid, LesionPrompts(lesion_id=lid))

    for mk in doc["markups"]:
        name = str(mk.get("name", ""))
        if mk["type"] == "Fiducial":
            for cp in mk.get("controlPoints", []):
                if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
                    continue
                lid, pol = _classify(cp, name)
                w = _to_lps(cp["position"], mk)
                lesion(lid).points.append(
                    PointPrompt(
                        world=tuple(float(v) for v in w),
                        index=tuple(float(v) for v in ref.world_to_index(w)),
                        label=pol,
                        kind=_kind(cp, "slicer"),
                    )
                )
        elif mk["type"] == "ROI":
            if mk.get("roiType", "Box") != "Box":
                raise PromptError(path, f"ROI {name!r}: roiType {mk.get('roiType')!r} is not supported (only 'Box')")
            if "center" in mk and "size" in mk:
                center = _to_lps(mk["center"], mk)
            else:
                raise PromptError(path, f"ROI {name!r} needs 'center' and 'size'")
            size = np.asarray(mk["size"], dtype=np.float64) / (1000.0 if mk.get("coordinateUnits") == "um" else 1.0)
            orient = np.asarray(mk.get("orientation", np.eye(3).ravel()), dtype=np.float64).reshape(3, 3)
            if mk.get("coordinateSystem", "LPS") == "RAS":
                orient = np.diag([-1.0, -1.0, 1.0]) @ orient
            cps = mk.get("controlPoints") or [{}]
            mm = _LESION_RE.search(name) or _LESION_RE.search(str(cps[0].get("description", "")))
            lid = int(mm.group(1)) if mm else 1
            try:
                lesion(lid).boxes.append(placed_box(ref, center, size, orient.ravel(), _box_kind(cps[0])))
            except ValueError as exc:
                raise PromptError(path, f"ROI {name!r}: {exc}") from None
    case_id = str(meta.get("case_id") or Path(path).name.split(".")[0])
    lesions = [by_lesion[k] for k in sorted(by_lesion)]
    return CasePrompts(case_id=case_id, image=ref, lesions=lesions, generator=dict(meta.get("generator", {}) or {}))


def _kind(cp, default: str) -> str:
    parts = [s.strip() for s in str(cp.get("description", "")).split(";")]
    return parts[2] if len(parts) >= 3 and parts[0] in ("positive", "negative") and parts[2] else default


def _box_kind(cp) -> str:
    parts = [s.strip() for s in str(cp.get("description", "")).split(";")]
    return parts[2] if len(parts) >= 3 and parts[0] == "box" else "slicer"


def _grid(meta: dict, path, image, image_path) -> ImageRef:
    stored = None
    img = meta.get("image") if isinstance(meta, dict) else None
    if isinstance(img, dict):
        try:
            stored = image_ref_from_dict(img, Path(path).parent)
        except (KeyError, TypeError, ValueError) as exc:
            raise PromptError(path, f"malformed 'sam_l1dfl.image' block ({exc})") from None
    if image is not None:
        return ImageRef.from_image(
            image,
            path=stored.path if stored else (os.fspath(image_path) if image_path else None),
            sha256=stored.sha256 if stored else None,
        )
    if image_path is not None:
        try:
            reader = read_image_info(image_path)
        except InputError as exc:
            raise PromptError(path, f"cannot read the image header of {image_path} ({exc.problem})") from None
        return ImageRef(
            size=reader.GetSize(),
            spacing=reader.GetSpacing(),
            origin=reader.GetOrigin(),
            direction=reader.GetDirection(),
            path=os.fspath(image_path),
            sha256=stored.sha256 if stored else None,
        )
    if stored is not None:
        return stored
    raise PromptError(
        path, "Slicer markups carry no image grid; pass the image (load_prompts(..., image_path=PET)) to place the prompts"
    )


__all__ = ["MARKUPS_SCHEMA", "markups_to_prompts", "prompts_to_markups", "save_slicer_markups", "validate_markups"]
