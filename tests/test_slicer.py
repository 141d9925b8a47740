"""3D Slicer markups: structure of markups-schema-v1.0.3, round trips, import of Slicer-made files."""

from __future__ import annotations

import json
import warnings

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk

from sam_l1dfl.errors import PromptError
from sam_l1dfl.prompts import PromptConfig, generate_prompts, load_prompts, save_prompts
from sam_l1dfl.prompts.slicer import MARKUPS_SCHEMA, prompts_to_markups

# The subset of markups-schema-v1.0.3 (Slicer, Modules/Loadable/Markups/Resources/Schema) that
# our files use: required keys, types, enums and array lengths, transcribed from the published schema.
_NUM3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_NUM9 = {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9}
_RGB = {"type": "array", "items": {"type": "number", "minimum": 0.0, "maximum": 1.0}, "minItems": 3, "maxItems": 3}
MARKUPS_V103_SUBSET = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string"},
        "markups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "name": {"type": "string"},
                    "coordinateSystem": {"type": "string", "enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"anyOf": [{"type": "string", "enum": ["mm", "um"]},
                                                  {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "roiType": {"type": "string"},
                    "center": _NUM3,
                    "size": _NUM3,
                    "orientation": _NUM9,
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "associatedNodeID": {"type": "string"},
                                "position": _NUM3,
                                "orientation": _NUM9,
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {"type": "string", "enum": ["undefined", "preview", "defined"]},
                            },
                        },
                    },
                    "display": {
                        "type": "object",
                        "properties": {
                            "visibility": {"type": "boolean"},
                            "opacity": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                            "color": _RGB,
                            "selectedColor": _RGB,
                            "activeColor": _RGB,
                            "propertiesLabelVisibility": {"type": "boolean"},
                            "pointLabelsVisibility": {"type": "boolean"},
                            "textScale": {"type": "number", "minimum": 0.0},
                            "glyphType": {"type": "string", "enum": [
                                "Vertex2D", "Dash2D", "Cross2D", "ThickCross2D", "Triangle2D", "Square2D", "Circle2D",
                                "Diamond2D", "Arrow2D", "ThickArrow2D", "HookedArrow2D", "StarBurst2D", "Sphere3D",
                                "Diamond3D"]},
                            "glyphScale": {"type": "number", "minimum": 0.0},
                            "glyphSize": {"type": "number", "minimum": 0.0},
                            "useGlyphScale": {"type": "boolean"},
                            "sliceProjection": {"type": "boolean"},
                            "sliceProjectionColor": _RGB,
                        },
                    },
                },
            },
        },
    },
}


def _case(direction=None, tmp_path=None):
    a = np.zeros((10, 12, 14), np.uint8)
    a[2:5, 3:7, 4:9] = 1
    a[7:9, 9:11, 10:13] = 1
    lab = sitk.GetImageFromArray(a)
    lab.SetSpacing((2.0, 2.5, 3.0))
    lab.SetOrigin((-40.0, 12.0, 100.0))
    if direction is not None:
        lab.SetDirection(direction)
    pet = sitk.GetImageFromArray((a * 8.0 + 1.0).astype(np.float32))
    pet.CopyInformation(lab)
    cfg = PromptConfig(n_pos=2, n_neg=2, boxes=True, box_jitter_mm=2.0, seed=3)
    return generate_prompts(lab, pet, cfg, case_id="c1"), pet


def test_export_matches_schema_structure():
    cp, _ = _case()
    doc = prompts_to_markups(cp)
    jsonschema.validate(doc, MARKUPS_V103_SUBSET)
    assert doc["@schema"] == MARKUPS_SCHEMA and "markups-schema-v1.0.3" in doc["@schema"]
    types = [m["type"] for m in doc["markups"]]
    assert types == ["Fiducial", "Fiducial", "ROI", "ROI"]
    fid = doc["markups"][0]
    assert fid["coordinateSystem"] == "LPS" and fid["coordinateUnits"] == "mm"
    assert [c["label"] for c in fid["controlPoints"]] == ["L1+1", "L1+2", "L2+1", "L2+2"]
    assert all(c["description"].startswith("positive") for c in fid["controlPoints"])
    assert all(c["description"].startswith("negative") for c in doc["markups"][1]["controlPoints"])
    roi = doc["markups"][2]
    assert roi["roiType"] == "Box" and len(roi["center"]) == 3 and len(roi["size"]) == 3 and len(roi["orientation"]) == 9
    np.testing.assert_allclose(roi["center"], cp.lesions[0].boxes[0].center)
    # a broken document fails the same checks
    broken = json.loads(json.dumps(doc))
    broken["markups"][0]["controlPoints"][0]["positionStatus"] = "somewhere"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, MARKUPS_V103_SUBSET)


@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_gives_the_same_prompts(tmp_path, oblique):
    c, s = np.cos(0.4), np.sin(0.4)
    d = (c, 0.0, s, 0.0, -1.0, 0.0, s, 0.0, -c) if oblique else None
    cp, pet = _case(d)
    path = tmp_path / "c1.mrk.json"
    save_prompts(cp, path)
    back = load_prompts(path)
    assert back.equivalent(cp, tol_mm=1e-6)
    assert [p.kind for l in back.lesions for p in l.points] == [p.kind for l in cp.lesions for p in l.points]
    assert back.lesions[0].boxes[0].kind == "jittered"
    np.testing.assert_allclose(back.lesions[1].boxes[0].index_min, cp.lesions[1].boxes[0].index_min, atol=1e-6)
    # via our JSON and back again
    save_prompts(back, tmp_path / "c1.json")
    assert load_prompts(tmp_path / "c1.json").equivalent(cp, tol_mm=1e-5)


def test_import_of_a_slicer_saved_file_needs_the_image_and_reads_ras(tmp_path):
    cp, pet = _case()
    pet_path = tmp_path / "SUV.nii.gz"
    sitk.WriteImage(pet, str(pet_path))
    p = cp.lesions[0].points[0].world
    doc = {  # what a user clicks in Slicer: default labels, RAS file, no sam_l1dfl block
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
                {"label": "F-1", "position": [-p[0], -p[1], p[2]], "positionStatus": "defined"},
                {"label": "F-2", "description": "negative", "position": [-p[0], -p[1], p[2] + 3.0]},
                {"label": "F-3", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
            ]},
        ],
    }
    path = tmp_path / "user.mrk.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PromptError, match="no image grid"):
        load_prompts(path)
    got = load_prompts(path, image_path=pet_path)
    (les,) = got.lesions
    assert [q.label for q in les.points] == [1, 0]
    np.testing.assert_allclose(les.points[0].world, p, atol=1e-9)
    np.testing.assert_allclose(les.points[0].index, cp.lesions[0].points[0].index, atol=1e-9)
    assert load_prompts(path, image=pet).equivalent(got)


def test_bad_markups_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.mrk.json"
    bad.write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [{"type": "Banana"}]}))
    with pytest.raises(PromptError, match="not one of") as e:
        load_prompts(bad)
    assert "bad.mrk.json" in str(e.value) and "\n" not in str(e.value)
    bad.write_text(json.dumps({"markups": []}))
    with pytest.raises(PromptError, match="@schema"):
        load_prompts(bad)
    cp, pet = _case()
    doc = prompts_to_markups(cp)
    doc["markups"][0]["controlPoints"][0]["position"] = [1e4, 0.0, 0.0]
    bad.write_text(json.dumps(doc))
    with pytest.raises(PromptError, match="outside the image"):
        load_prompts(bad)
    doc = prompts_to_markups(cp)
    doc["markups"] = []
    bad.write_text(json.dumps(doc))
    with pytest.raises(PromptError, match="no lesion"):
        load_prompts(bad)


@pytest.mark.parametrize("size", [[-4.0, 6.0, 6.0], [6.0, 0.0, 6.0]])
def test_roi_with_a_non_positive_size_is_refused_like_the_json_path(tmp_path, size):
    cp, pet = _case()
    doc = prompts_to_markups(cp)
    roi = next(m for m in doc["markups"] if m["type"] == "ROI")
    roi["size"] = size
    bad = tmp_path / "bad.mrk.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(PromptError, match="box size must be positive") as e:
        load_prompts(bad, image=pet)
    assert "bad.mrk.json" in str(e.value) and roi["name"] in str(e.value) and "\n" not in str(e.value)


def test_unreadable_image_path_is_one_line(tmp_path):
    cp, pet = _case()
    doc = prompts_to_markups(cp)
    del doc["sam_l1dfl"]
    path = tmp_path / "user.mrk.json"
    path.write_text(json.dumps(doc))
    text = tmp_path / "SUV.nii"
    text.write_text("not an image")
    with pytest.raises(PromptError, match="cannot read the image header") as e:
        load_prompts(path, image_path=text)
    assert ".cxx" not in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- a 3D Slicer round trip (#16 §5)
def _two_lesions(boxes=True):
    """A 120 mm cube at 2 mm with lesion 1 near (40, 40, 40) mm and lesion 2 near (80, 80, 40) mm."""
    a = np.zeros((60, 60, 60), np.uint8)
    a[18:23, 18:23, 18:23] = 1
    a[18:23, 38:43, 38:43] = 1
    lab = sitk.GetImageFromArray(a)
    lab.SetSpacing((2.0, 2.0, 2.0))
    pet = sitk.GetImageFromArray((a * 8.0 + 1.0).astype(np.float32))
    pet.CopyInformation(lab)
    cfg = PromptConfig(n_pos=1, n_neg=1, boxes=boxes, seed=0)
    return generate_prompts(lab, pet, cfg, case_id="c1"), pet


def _slicer_saves(cp, folder):
    """What Slicer writes on "Save": one file per node, named after it, without our ``sam_l1dfl`` block."""
    folder.mkdir()
    doc = prompts_to_markups(cp)
    for mk in doc["markups"]:
        (folder / f"{mk['name']}.mrk.json").write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [mk]}))
    return doc


def _click(folder, node, world, label):
    """A control point added in Slicer: default label, no description."""
    path = folder / f"{node}.mrk.json"
    doc = json.loads(path.read_text())
    doc["markups"][0]["controlPoints"].append({"id": "9", "label": label, "description": "",
                                               "position": list(world), "positionStatus": "defined"})
    path.write_text(json.dumps(doc))


def test_export_names_nodes_per_case_and_leaves_them_unlocked():
    cp, _ = _two_lesions()
    doc = prompts_to_markups(cp)
    jsonschema.validate(doc, MARKUPS_V103_SUBSET)
    assert [m["name"] for m in doc["markups"]] == ["c1 positive", "c1 negative", "c1 lesion 1 box", "c1 lesion 2 box"]
    assert not any(m["locked"] for m in doc["markups"])
    assert not any(c["locked"] for m in doc["markups"] for c in m["controlPoints"])


def test_files_written_before_the_case_prefix_still_load(tmp_path):
    cp, pet = _two_lesions()
    doc = prompts_to_markups(cp)
    for mk in doc["markups"]:  # the names and locks of the earlier export
        mk["name"] = mk["name"].removeprefix("c1 ")
        mk["locked"] = True
    path = tmp_path / "old.mrk.json"
    path.write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about a complete file
        back = load_prompts(path, image=pet)
    assert back.equivalent(cp, tol_mm=1e-6) and back.case_id == "c1"


def test_a_new_click_far_from_every_box_is_a_new_lesion_and_one_in_a_box_joins_it(tmp_path):
    cp, pet = _two_lesions()
    c1 = np.asarray(cp.lesions[0].positive_points[0].world)
    box2 = cp.lesions[1].boxes[0]
    far = c1 + np.array([0.0, 0.0, 50.0])  # 50 mm from lesion 1, outside both boxes
    assert not any(_inside(b, far) for les in cp.lesions for b in les.boxes)
    near2 = np.asarray(box2.center) + np.asarray(box2.size) * 0.3  # inside lesion 2's box, off its click
    folder = tmp_path / "saved"
    _slicer_saves(cp, folder)
    _click(folder, "c1 positive", far, "c1 positive-3")
    _click(folder, "c1 positive", near2, "c1 positive-4")
    with pytest.warns(UserWarning) as rec:
        got = load_prompts(folder, image=pet)
    notes = [str(w.message) for w in rec]
    assert [l.lesion_id for l in got.lesions] == [1, 2, 3]
    np.testing.assert_allclose(got.lesions[2].points[0].world, far)
    assert [len(l.positive_points) for l in got.lesions] == [1, 2, 1]
    np.testing.assert_allclose(got.lesions[1].positive_points[1].world, near2)
    assert got.case_id == "c1" and [len(l.boxes) for l in got.lesions] == [1, 1, 0]
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    assert "c1 positive-3" in notes[0] and "new lesion 3" in notes[0]
    assert "c1 positive-4" in notes[1] and "joined lesion 2 (inside its box" in notes[1]


def test_without_boxes_the_crop_places_the_click_and_says_so(tmp_path):
    cp, pet = _two_lesions(boxes=False)
    c1 = np.asarray(cp.lesions[0].positive_points[0].world)
    folder = tmp_path / "saved"
    _slicer_saves(cp, folder)
    _click(folder, "c1 positive", c1 + [0.0, 0.0, 30.0], "c1 positive-3")
    with pytest.warns(UserWarning, match="joined lesion 1 .inside its 190.5 mm crop"):
        got = load_prompts(folder, image=pet)
    assert len(got.lesions) == 2 and len(got.lesions[0].positive_points) == 2
    with pytest.warns(UserWarning, match="new lesion 3"):  # a 48 mm crop does not reach 30 mm off its centre
        got = load_prompts(folder, image=pet, crop_mm=48.0)
    assert len(got.lesions) == 3


def test_several_files_or_a_folder_make_one_case_and_a_lonely_node_is_named(tmp_path):
    cp, pet = _two_lesions()
    folder = tmp_path / "saved"
    _slicer_saves(cp, folder)
    files = sorted(folder.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = load_prompts(folder, image=pet)
        listed = load_prompts(files, image=pet)
    assert whole.equivalent(cp, tol_mm=1e-6) and listed.equivalent(cp, tol_mm=1e-6)
    # the negatives alone: every lesion they name lacks a positive point
    with pytest.warns(UserWarning, match=r"node 'c1 negative' refers to lesion\(s\) 1, 2 with no positive point"):
        load_prompts(folder / "c1 negative.mrk.json", image=pet)
    # a prompt file of ours cannot be merged with markups
    save_prompts(cp, tmp_path / "c1.json")
    with pytest.raises(PromptError, match="only Slicer markups files"):
        load_prompts([tmp_path / "c1.json", files[0]], image=pet)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PromptError, match="no Slicer markups file"):
        load_prompts(empty, image=pet)


def test_markups_of_two_cases_are_not_merged(tmp_path):
    cp, pet = _two_lesions()
    save_prompts(cp, tmp_path / "a.mrk.json")
    cp.case_id = "c2"
    save_prompts(cp, tmp_path / "b.mrk.json")
    with pytest.raises(PromptError, match="case 'c2'"):
        load_prompts([tmp_path / "a.mrk.json", tmp_path / "b.mrk.json"], image=pet)


@pytest.mark.parametrize("what", ["origin", "direction"])
def test_grid_mismatch_names_what_differs_and_the_image(tmp_path, what):
    cp, pet = _two_lesions()
    pet_path = tmp_path / "SUV.nii.gz"
    sitk.WriteImage(pet, str(pet_path))
    cp.image = type(cp.image).from_image(pet, path=str(pet_path))
    other = sitk.Image(pet)
    if what == "origin":
        other.SetOrigin((0.0, 0.0, 5.0))
    else:
        other.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0))
    for name in ("c1.json", "c1.mrk.json"):
        save_prompts(cp, tmp_path / name)
        with pytest.raises(PromptError) as e:
            load_prompts(tmp_path / name, image=other, verify_sha=False)
        msg = str(e.value)
        assert what in msg and "SUV.nii.gz" in msg and "size" not in msg and "spacing" not in msg, msg


def _inside(box, w):
    r = np.asarray(box.orientation).reshape(3, 3)
    return bool(np.all(np.abs(r.T @ (np.asarray(w) - box.center)) <= np.asarray(box.size) / 2))
