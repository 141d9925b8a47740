"""3D Slicer markups (``.mrk.json``, markups-schema-v1.0.3) export and import.

Export (one file per case, all markups in one ``markups`` array — Slicer loads each as a node):

* positive points -> one ``Fiducial`` markup named ``<case> positive`` (green), negative points ->
  one named ``<case> negative`` (red): the case id keeps the nodes of two open cases apart.  Every
  control point is labelled ``L<lesion>+<n>`` / ``L<lesion>-<n>`` and described
  ``positive; lesion <id>`` / ``negative; lesion <id>``.
* each box -> one ``ROI`` markup named ``<case> lesion <id> box`` with ``roiType`` ``Box``,
  ``center``, ``size`` and ``orientation`` (columns = box axes; the image direction for lesion boxes).
* markups are written unlocked (``locked: false``), so a user can move points and boxes.
* ``coordinateSystem`` ``LPS``, ``coordinateUnits`` ``mm``: positions are written unchanged.
* the case id, image reference and generator settings ride along under a top-level
  ``"sam_l1dfl"`` key (the schema allows extra properties; Slicer ignores it), so our own
  export comes back identical.  A file saved again by Slicer loses it; pass ``image=`` /
  ``image_path=`` to :func:`sam_l1dfl.prompts.io.load_prompts` for such files.

Import accepts what Slicer writes: any number of ``Fiducial`` and ``ROI`` markups, from one
document or from several (Slicer saves each node to its own file: :func:`merge_markups`
takes a list), ``LPS`` or ``RAS`` (converted to LPS), ``mm`` (or ``um``).  A markup name is read
without its case prefix (``c1 positive`` -> ``positive``; files written before the prefix, named
``positive``, read the same).  A control point is negative when its description or label says
``negative``/``neg``, or its label has the ``L<id>-<n>`` form, or its markup is named
``negative``; otherwise positive.  Its lesion is ``L<id>`` in the label, ``lesion <id>`` in the
description or markup name.  A point with none of these (a click added in Slicer, labelled
``positive-6``) is **unlabelled** and is placed by :func:`assign_unlabelled`: a positive point joins
the lesion whose box contains it (for a lesion without a box: whose network crop, a cube of
``crop_mm`` centred like :class:`sam_l1dfl.inference.Segmenter` centres it, contains it; the
nearest such lesion), else it starts a new lesion; an unlabelled negative point joins the nearest
lesion whose crop contains it, else it is dropped.  Each such decision is one ``UserWarning`` line,
as is a node that refers only to lesions without a positive point (a ``negative`` or box file
loaded without its ``positive`` file).  Undefined control points (``positionStatus`` !=
``defined``) are skipped.  An ROI must have positive sizes, as a box of our JSON
(:func:`~sam_l1dfl.prompts.types.placed_box`).  The grid of ``image_path`` is read by
:func:`sam_l1dfl.data.io.read_image_info`; an ``image`` whose grid differs from the one recorded
in the ``sam_l1dfl`` block is refused, naming what differs.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sam_l1dfl.data.geometry import DEFAULT_SIZE, DEFAULT_SPACING
from sam_l1dfl.data.io import read_image_info
from sam_l1dfl.errors import InputError, PromptError
from sam_l1dfl.io_utils import dumps_compact, write_text_atomic
from sam_l1dfl.prompts.fileformat import check_same_grid
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
        "locked": False,
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
    case = f"{prompts.case_id} " if prompts.case_id else ""
    if pos:
        markups.append(_fiducial(f"{case}positive", _GREEN, pos))
    if neg:
        markups.append(_fiducial(f"{case}negative", _RED, neg))
    for les in prompts.lesions:
        for nb, b in enumerate(les.boxes, start=1):
            name = f"{case}lesion {les.lesion_id} box" + (f" {nb}" if len(les.boxes) > 1 else "")
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
_NODE_RE = re.compile(r"(?:^|\s)(positive|negative|lesion\s+\d+\s+box(?:\s+\d+)?)\s*$", re.IGNORECASE)

#: Edge (mm) of the network crop that places an unlabelled point (voxel centres of the default
#: 128³ crop at 1.5 mm, as :class:`sam_l1dfl.data.geometry.CropGeometry` lays it out).
CROP_MM = (DEFAULT_SIZE - 1) * DEFAULT_SPACING


def node_role(name: str) -> str:
    """A markup name without its case prefix: ``"c1 lesion 2 box"`` -> ``"lesion 2 box"``."""
    m = _NODE_RE.search(name)
    return m.group(1) if m else name


def _classify(cp: dict, role: str) -> tuple[int | None, int]:
    """``(lesion id or None when unlabelled, polarity)`` of a control point in node ``role``."""
    label = cp.get("label", "") or ""
    desc = cp.get("description", "") or ""
    m = _LABEL_RE.match(label)
    if _NEG_RE.search(desc) or _NEG_RE.search(label):
        polarity = NEGATIVE
    elif re.search(r"\bpos(itive)?\b", desc, re.IGNORECASE):
        polarity = POSITIVE
    elif m:
        polarity = NEGATIVE if m.group(2) == "-" else POSITIVE
    elif _NEG_RE.search(role):
        polarity = NEGATIVE
    else:
        polarity = POSITIVE
    if m:
        return int(m.group(1)), polarity
    mm = _LESION_RE.search(desc) or _LESION_RE.search(role)
    return (int(mm.group(1)) if mm else None), polarity


def _in_box(box, w: np.ndarray) -> bool:
    r = np.asarray(box.orientation, dtype=np.float64).reshape(3, 3)
    local = r.T @ (w - np.asarray(box.center))
    return bool(np.all(np.abs(local) <= np.asarray(box.size) / 2.0 + 1e-6))


def _crop_centre(les: LesionPrompts) -> "np.ndarray | None":
    """Centre of a lesion's prompt extent (positive points and box corners), where its crop goes."""
    ext = [np.asarray(p.world, dtype=np.float64)[None] for p in les.positive_points]
    ext += [b.corners_world() for b in les.boxes]
    if not ext:
        return None
    ext = np.concatenate(ext)
    return (ext.min(0) + ext.max(0)) / 2.0


def assign_unlabelled(lesions: dict[int, LesionPrompts], points: "list[tuple[str, PointPrompt]]",
                      crop_mm: float = CROP_MM) -> list[str]:
    """Place points that name no lesion (``(label, point)`` pairs, in file order) into ``lesions``
    (changed in place); returns one note per point saying where it went.

    A positive point joins the lesion whose box contains it; for lesions without a box, the one
    whose crop (a cube of edge ``crop_mm`` around its prompt extent) contains it; the nearest
    (crop centre) when several do.  Otherwise it starts a new lesion (id: one above the largest).
    A negative point joins the nearest lesion whose crop contains it, else it is dropped.
    """
    notes = []
    for label, pt in points:
        w = np.asarray(pt.world, dtype=np.float64)
        where = f"point {label or '(no label)'} at {_vec(w)} mm names no lesion"
        found = []
        for lid, les in lesions.items():
            c = _crop_centre(les)
            if c is None:
                continue
            if pt.positive and les.boxes:
                inside, how = any(_in_box(b, w) for b in les.boxes), "inside its box"
            else:
                inside, how = bool(np.all(np.abs(w - c) <= crop_mm / 2.0)), f"inside its {crop_mm:g} mm crop"
            if inside:
                found.append((float(np.linalg.norm(w - c)), lid, how))
        if found:
            dist, lid, how = min(found)
            lesions[lid].points.append(pt)
            notes.append(f"{where}: joined lesion {lid} ({how}, {dist:.0f} mm from its centre)")
        elif pt.positive:
            lid = max(lesions, default=0) + 1
            lesions[lid] = LesionPrompts(lesion_id=lid, points=[pt])
            notes.append(f"{where}: made it new lesion {lid} (inside no lesion's box or crop)")
        else:
            notes.append(f"{where}: dropped (a negative point inside no lesion's crop)")
    return notes


def _vec(v) -> str:
    return "(" + ", ".join(f"{float(x):.1f}" for x in v) + ")"


def markups_to_prompts(doc: dict, path, image=None, image_path=None, crop_mm: float = CROP_MM) -> CasePrompts:
    """Prompts from a Slicer markups document; the grid comes from ``image``, ``image_path`` or
    the ``sam_l1dfl`` block of our own export (in that order)."""
    return merge_markups([(doc, path)], image=image, image_path=image_path, crop_mm=crop_mm)


def merge_markups(docs: "Sequence[tuple[dict, Any]]", image=None, image_path=None, crop_mm: float = CROP_MM,
                  case_id: "str | None" = None) -> CasePrompts:
    """One case's prompts from several markups documents (``(doc, path)`` pairs: the files Slicer
    saves, one per node).  Each is validated and every error names its file; the ``sam_l1dfl``
    blocks present must name the same case.  Unlabelled points are placed by
    :func:`assign_unlabelled`; its notes, and nodes that refer only to lesions without a positive
    point, are one ``UserWarning`` line each.  The case id is the one recorded in a ``sam_l1dfl``
    block, else the case prefix of the node names, else ``case_id``, else the first file's name."""
    meta, meta_path = _case_meta(docs)
    first = docs[0][1]
    ref = _grid(meta, meta_path if meta_path is not None else first, image, image_path)
    by_lesion: dict[int, LesionPrompts] = {}
    unlabelled: list[tuple[str, PointPrompt]] = []
    unlabelled_in: list[Any] = []  # the file of each unlabelled point
    loose_boxes: list[tuple[Any, str, Any, set]] = []
    nodes: list[tuple[Any, str, set]] = []  # (file, node name, lesion ids it names)
    prefixes = set()

    def lesion(lid: int) -> LesionPrompts:
        return by_lesion.setdefault(lid, LesionPrompts(lesion_id=lid))

    for doc, path in docs:
        for mk in doc["markups"]:
            name = str(mk.get("name", ""))
            role = node_role(name)
            if role != name:
                prefixes.add(name[: len(name) - len(role)].strip())
            named: set = set()
            nodes.append((path, name, named))
            if mk["type"] == "Fiducial":
                for lid, text, pt in _fiducial_points(mk, role, ref):
                    if lid is None:
                        unlabelled.append((text, pt))
                        unlabelled_in.append(path)
                    else:
                        lesion(lid).points.append(pt)
                        named.add(lid)
            elif mk["type"] == "ROI":
                lid, box = _roi_box(mk, name, role, path, ref)
                if lid is not None:
                    lesion(lid).boxes.append(box)
                    named.add(lid)
                else:
                    loose_boxes.append((path, name, box, named))
    for path, name, box, named in loose_boxes:  # after every labelled lesion, so that ids do not clash
        lid = max(by_lesion, default=0) + 1
        lesion(lid).boxes.append(box)
        named.add(lid)
        warnings.warn(f"{path}: ROI {name!r} names no lesion: made it new lesion {lid}", UserWarning, stacklevel=2)
    for path, note in zip(unlabelled_in, assign_unlabelled(by_lesion, unlabelled, crop_mm)):
        warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)
    for path, name, named in nodes:
        lonely = sorted(lid for lid in named if not by_lesion[lid].positive_points)
        if lonely:
            warnings.warn(f"{path}: node {name!r} refers to lesion(s) {', '.join(map(str, lonely))} with no positive "
                          "point (give all the case's markups files, or their folder)", UserWarning, stacklevel=2)
    case_id = str(meta.get("case_id") or (prefixes.pop() if len(prefixes) == 1 else None) or case_id
                  or Path(first).name.split(".")[0])
    return CasePrompts(case_id=case_id, image=ref, lesions=_sorted_lesions(by_lesion),
                       generator=dict(meta.get("generator", {}) or {}))


def _sorted_lesions(by_lesion: dict[int, LesionPrompts]) -> list[LesionPrompts]:
    """The lesions by id, each with its positive points first, whichever file came first (a stable sort)."""
    lesions = [by_lesion[k] for k in sorted(by_lesion)]
    for les in lesions:
        les.points.sort(key=lambda p: not p.positive)
    return lesions


def _case_meta(docs: "Sequence[tuple[dict, Any]]") -> tuple[dict, Any]:
    """Validate each document; the ``sam_l1dfl`` block of the first that has one, and its file
    (the others must name the same case)."""
    meta, meta_path = {}, None
    for doc, path in docs:
        validate_markups(doc, path)
        m = doc.get("sam_l1dfl")
        if not isinstance(m, dict):
            continue
        if meta_path is None:
            meta, meta_path = m, path
        elif m.get("case_id") != meta.get("case_id"):
            raise PromptError(path, f"markups of case {m.get('case_id')!r}, but {meta_path} is of case "
                                    f"{meta.get('case_id')!r}")
    return meta, meta_path


def _fiducial_points(mk: dict, role: str, ref):
    """``(lesion id or None, label text, PointPrompt)`` of each defined control point of a
    Fiducial node."""
    for cp in mk.get("controlPoints", []):
        if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
            continue
        lid, pol = _classify(cp, role)
        w = _to_lps(cp["position"], mk)
        pt = PointPrompt(world=tuple(float(v) for v in w),
                         index=tuple(float(v) for v in ref.world_to_index(w)),
                         label=pol, kind=_kind(cp, "slicer"))
        yield lid, str(cp.get("label", "")), pt


def _roi_box(mk: dict, name: str, role: str, path, ref) -> tuple:
    """``(lesion id or None, BoxPrompt)`` of an ROI node (a box only)."""
    if mk.get("roiType", "Box") != "Box":
        raise PromptError(path, f"ROI {name!r}: roiType {mk.get('roiType')!r} is not supported (only 'Box')")
    if "center" not in mk or "size" not in mk:
        raise PromptError(path, f"ROI {name!r} needs 'center' and 'size'")
    center = _to_lps(mk["center"], mk)
    size = np.asarray(mk["size"], dtype=np.float64) / (1000.0 if mk.get("coordinateUnits") == "um" else 1.0)
    orient = np.asarray(mk.get("orientation", np.eye(3).ravel()), dtype=np.float64).reshape(3, 3)
    if mk.get("coordinateSystem", "LPS") == "RAS":
        orient = np.diag([-1.0, -1.0, 1.0]) @ orient
    cps = mk.get("controlPoints") or [{}]
    mm = _LESION_RE.search(role) or _LESION_RE.search(str(cps[0].get("description", "")))
    try:
        box = placed_box(ref, center, size, orient.ravel(), _box_kind(cps[0]))
    except ValueError as exc:
        raise PromptError(path, f"ROI {name!r}: {exc}") from None
    return (int(mm.group(1)) if mm else None), box


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
        ref = ImageRef.from_image(
            image,
            path=stored.path if stored else (os.fspath(image_path) if image_path else None),
            sha256=stored.sha256 if stored else None,
        )
        if stored is not None:
            check_same_grid(ref, stored, path)
        return ref
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


__all__ = ["CROP_MM", "MARKUPS_SCHEMA", "assign_unlabelled", "markups_to_prompts", "merge_markups", "node_role",
           "prompts_to_markups", "save_slicer_markups", "validate_markups"]
