"""Prompt generation (property tests on random masks), the prompt file format and its validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam_l1dfl.errors import ConfigError, PromptError
from sam_l1dfl.prompts import PromptConfig, generate_prompts, load_prompts, save_prompts
from sam_l1dfl.prompts.fileformat import to_document

SHAPE = (10, 12, 14)  # (z, y, x)


def _img(arr, spacing=(2.0, 2.5, 3.0), direction=None, dtype=None):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=dtype or np.asarray(arr).dtype))
    img.SetSpacing(spacing)
    img.SetOrigin((-40.0, 12.0, 100.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


def _c_shape(a, z0, y0, x0):
    a[z0 : z0 + 2, y0 : y0 + 5, x0 : x0 + 5] = 1
    a[z0 : z0 + 2, y0 + 1 : y0 + 4, x0 + 1 : x0 + 5] = 0  # C opening to +x: centroid is outside


@st.composite
def masks(draw):
    a = np.zeros(SHAPE, np.uint8)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["dot", "pair", "thin", "blob", "c"]))
        z, y, x = (draw(st.integers(0, s - 1)) for s in SHAPE)
        if kind == "dot":
            a[z, y, x] = 1
        elif kind == "pair":
            a[z, y, x : x + 2] = 1
        elif kind == "thin":
            a[z, y : y + 6, x] = 1
        elif kind == "blob":
            a[z : z + 3, y : y + 4, x : x + 3] = 1
        else:
            _c_shape(a, min(z, SHAPE[0] - 2), min(y, SHAPE[1] - 5), min(x, SHAPE[2] - 5))
    if not a.any():
        a[0, 0, 0] = 1
    return a


def _pet(mask, seed=0):
    rng = np.random.default_rng(seed)
    pet = rng.gamma(2.0, 0.5, mask.shape).astype(np.float32)
    pet[mask > 0] += 5.0 + rng.random(int((mask > 0).sum())).astype(np.float32)
    return pet


def _check_points(cp, mask, connectivity):
    from sam_l1dfl.data.lesions import label_components

    labels, _ = label_components(mask, connectivity)
    for les in cp.lesions:
        for p in les.points:
            i, j, k = (int(round(v)) for v in p.index)
            assert np.allclose(p.index, (i, j, k))
            np.testing.assert_allclose(
                p.world, cp.image.index_to_world(np.array([i, j, k], float)), atol=1e-6
            )
            if p.positive:
                assert labels[k, j, i] == les.lesion_id, (les.lesion_id, p)
            else:
                assert labels[k, j, i] == 0, p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mask=masks(),
    strategy=st.sampled_from(["center", "suvmax", "random"]),
    neg=st.sampled_from(["shell", "hotspot"]),
    n_pos=st.integers(1, 3),
    n_neg=st.integers(0, 2),
    connectivity=st.sampled_from([6, 18, 26]),
    seed=st.integers(0, 3),
)
def test_positive_inside_negative_outside(mask, strategy, neg, n_pos, n_neg, connectivity, seed):
    cfg = PromptConfig(strategy=strategy, n_pos=n_pos, n_neg=n_neg, neg_strategy=neg, connectivity=connectivity,
                       seed=seed, boxes=True, shell_inner_mm=0.0, neg_min_dist_mm=0.0)
    cp = generate_prompts(_img(mask), _img(_pet(mask, seed)), cfg)
    _check_points(cp, mask, connectivity)
    for les in cp.lesions:
        n_vox = les.info["voxel_count"]
        assert len(les.positive_points) == min(n_pos, n_vox)
        assert len({p.index for p in les.positive_points}) == len(les.positive_points)  # no duplicates
        (b,) = les.boxes
        lo, hi = les.info["bbox_index"]
        np.testing.assert_allclose(b.index_min, np.array(lo) - 0.5)
        np.testing.assert_allclose(b.index_max, np.array(hi) + 0.5)


def test_center_is_inside_a_c_shaped_lesion_whose_centroid_is_not():
    a = np.zeros((4, 9, 9), np.uint8)
    _c_shape(a, 1, 2, 2)
    cp = generate_prompts(_img(a), None, PromptConfig())
    (les,) = cp.lesions
    ci = np.round(les.info["centroid_world"])  # the centroid voxel is in the opening
    c_idx = np.round(cp.image.world_to_index(les.info["centroid_world"])).astype(int)
    assert a[c_idx[2], c_idx[1], c_idx[0]] == 0 and ci is not None
    (p,) = les.points
    i, j, k = (int(v) for v in p.index)
    assert a[k, j, i] == 1


def test_center_is_the_deepest_voxel_and_suvmax_the_hottest():
    a = np.zeros((9, 9, 15), np.uint8)
    a[1:8, 1:8, 1:14] = 1  # 13 x 7 x 7 block: deepest voxels on the mid line, centre (7, 4, 4)
    pet = np.zeros(a.shape, np.float32)
    pet[2, 3, 11] = 50.0
    cp = generate_prompts(_img(a, spacing=(1, 1, 1)), _img(pet, spacing=(1, 1, 1)), PromptConfig())
    assert cp.lesions[0].points[0].index == (7.0, 4.0, 4.0)
    cp = generate_prompts(_img(a, spacing=(1, 1, 1)), _img(pet, spacing=(1, 1, 1)), PromptConfig(strategy="suvmax"))
    assert cp.lesions[0].points[0].index == (11.0, 3.0, 2.0)


def test_hotspot_negatives_are_hot_and_outside(tmp_path):
    a = np.zeros((12, 12, 12), np.uint8)
    a[2:4, 2:4, 2:4] = 1
    pet = np.random.default_rng(0).random(a.shape).astype(np.float32) + 0.1
    pet[a > 0] = 20.0
    pet[9, 9, 9] = pet[9, 9, 10] = 15.0  # physiological uptake (e.g. a ureter)
    cp = generate_prompts(_img(a), _img(pet), PromptConfig(n_neg=2, neg_strategy="hotspot", hotspot_percentile=99.9))
    negs = cp.lesions[0].negative_points
    assert sorted(p.index for p in negs) == [(9.0, 9.0, 9.0), (10.0, 9.0, 9.0)]


def test_seeded_and_jittered_boxes():
    a = np.zeros(SHAPE, np.uint8)
    a[3:6, 4:8, 5:9] = 1
    cfg = PromptConfig(strategy="random", n_pos=3, n_neg=2, boxes=True, box_jitter_mm=4.0, seed=7)
    one = generate_prompts(_img(a), None, cfg)
    two = generate_prompts(_img(a), None, cfg)
    other = generate_prompts(_img(a), None, PromptConfig(**{**cfg.to_dict(), "seed": 8}))
    assert one.equivalent(two) and not one.equivalent(other)
    b = one.lesions[0].boxes[0]
    assert b.kind == "jittered"
    tight = generate_prompts(_img(a), None, PromptConfig(boxes=True)).lesions[0].boxes[0]
    shift = np.abs(np.concatenate([np.subtract(b.index_min, tight.index_min), np.subtract(b.index_max, tight.index_max)]))
    sp = np.tile(one.image.spacing, 2)
    assert np.all(shift * sp <= 4.0 + 1e-9) and shift.max() > 0


def test_boxes_follow_an_oblique_grid():
    a = np.zeros(SHAPE, np.uint8)
    a[3:6, 4:8, 5:9] = 1
    c, s = np.cos(0.3), np.sin(0.3)
    d = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    cp = generate_prompts(_img(a, direction=d), None, PromptConfig(boxes=True))
    b = cp.lesions[0].boxes[0]
    corners_idx = cp.image.world_to_index(b.corners_world())
    np.testing.assert_allclose(corners_idx.min(0), [4.5, 3.5, 2.5], atol=1e-9)
    np.testing.assert_allclose(corners_idx.max(0), [8.5, 7.5, 5.5], atol=1e-9)
    np.testing.assert_allclose(b.size, [4 * 2.0, 4 * 2.5, 3 * 3.0])


def test_empty_mask_and_bad_config():
    with pytest.raises(PromptError, match="no lesion"):
        generate_prompts(_img(np.zeros(SHAPE, np.uint8)), None, PromptConfig())
    a = np.ones(SHAPE, np.uint8)
    with pytest.raises(ConfigError, match="strategy"):
        generate_prompts(_img(a), None, PromptConfig(strategy="middle"))
    with pytest.raises(ConfigError, match="needs the PET"):
        generate_prompts(_img(a), None, PromptConfig(strategy="suvmax"))


# ---------------------------------------------------------------------------- file format


@pytest.fixture
def case(tmp_path):
    a = np.zeros(SHAPE, np.uint8)
    a[2:5, 3:7, 4:9] = 1
    a[8, 10, 12] = 1
    pet_path = tmp_path / "data" / "p001" / "SUV.nii.gz"
    pet_path.parent.mkdir(parents=True)
    pet = _img(_pet(a))
    sitk.WriteImage(pet, str(pet_path))
    cp = generate_prompts(_img(a), pet, PromptConfig(n_pos=2, n_neg=1, boxes=True, box_jitter_mm=1.0),
                          image_path=pet_path)
    return cp, pet_path, pet


def test_round_trip_and_schema(case, tmp_path):
    import jsonschema
    from pathlib import Path

    cp, pet_path, pet = case
    assert cp.case_id == "p001" and len(cp.image.sha256) == 64
    out = tmp_path / "prompts" / "p001.json"
    save_prompts(cp, out)
    doc = json.loads(out.read_text())
    schema = json.loads((Path(__file__).resolve().parents[1] / "prompts" / "schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["coordinate_system"] == "LPS" and doc["units"] == "mm"
    assert doc["image"]["path"] == "../data/p001/SUV.nii.gz"  # relative to the prompt file
    back = load_prompts(out)
    assert back.equivalent(cp, tol_mm=1e-5)
    assert back.image.sha256 == cp.image.sha256
    for a, b in zip(cp.lesions, back.lesions):
        for p, q in zip(a.points, b.points):
            np.testing.assert_allclose(p.index, q.index, atol=1e-6)
            assert p.kind == q.kind
        np.testing.assert_allclose(a.boxes[0].index_min, b.boxes[0].index_min, atol=1e-5)
    assert load_prompts(out, image=pet).equivalent(cp)
    assert not list(out.parent.glob(".*part*"))  # atomic write left no temporary


def _write(tmp_path, doc, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_validation_errors(case, tmp_path):
    cp, pet_path, pet = case
    doc = to_document(cp, relative_to=tmp_path)
    bad = json.loads(json.dumps(doc))
    bad["version"] = 99
    with pytest.raises(PromptError, match="version 99") as e:
        load_prompts(_write(tmp_path, bad))
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)

    bad = json.loads(json.dumps(doc))
    bad["lesions"] = []
    with pytest.raises(PromptError, match="no lesion"):
        load_prompts(_write(tmp_path, bad))

    bad = json.loads(json.dumps(doc))
    bad["lesions"][0]["points"][0]["world"] = [1000.0, 0.0, 0.0]
    bad["lesions"][0]["points"][0].pop("index")
    with pytest.raises(PromptError, match="outside the image"):
        load_prompts(_write(tmp_path, bad))

    bad = json.loads(json.dumps(doc))
    bad["lesions"][0]["points"][0]["index"] = [0, 0, 0]
    with pytest.raises(PromptError, match="disagrees"):
        load_prompts(_write(tmp_path, bad))

    broken = tmp_path / "t.json"
    broken.write_text("{")
    with pytest.raises(PromptError, match="not valid JSON"):
        load_prompts(broken)
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts(tmp_path / "missing.json")


def test_checksum_mismatch_error_override_and_skip(case, tmp_path):
    cp, pet_path, pet = case
    out = tmp_path / "p.json"
    save_prompts(cp, out)
    other = tmp_path / "other.nii.gz"
    arr = sitk.GetArrayFromImage(pet)
    arr[0, 0, 0] += 1
    changed = sitk.GetImageFromArray(arr)
    changed.CopyInformation(pet)
    sitk.WriteImage(changed, str(other))
    with pytest.raises(PromptError, match="SHA-256"):
        load_prompts(out, image_path=other)
    with pytest.warns(UserWarning, match="SHA-256"):
        got = load_prompts(out, image_path=other, allow_checksum_mismatch=True)
    assert got.equivalent(cp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_prompts(out, image_path=other, verify_sha=False)
        load_prompts(out, image_path=pet_path)


def test_cli_writes_prompt_files_and_lists_skips(tmp_path, capsys):
    from sam_l1dfl.cli import main

    data = tmp_path / "data"
    for cid, has in (("c1", True), ("c2", False)):
        a = np.zeros(SHAPE, np.uint8)
        if has:
            a[2:5, 3:7, 4:9] = 1
        d = data / cid
        d.mkdir(parents=True)
        sitk.WriteImage(_img(_pet(a)), str(d / "SUV.nii.gz"))
        sitk.WriteImage(_img(a), str(d / "SEG.nii.gz"))
        sitk.WriteImage(_img(np.zeros(SHAPE, np.float32)), str(d / "CTres.nii.gz"))
    out = tmp_path / "out"
    rc = main(["prompts", "--data", str(data), "--out", str(out), "--n-neg", "1", "--boxes", "--slicer",
               "--strategy", "suvmax", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["c1.json", "c1.mrk.json"]
    assert "skipped c2: no lesion" in text
    cp = load_prompts(out / "c1.json")
    assert cp.generator["strategy"] == "suvmax" and cp.lesions[0].boxes
    assert load_prompts(out / "c1.mrk.json").equivalent(cp)
    rc = main(["prompts", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert rc == 2 and "error:" in capsys.readouterr().err


def test_index_world_cross_check_runs_with_an_image_too(case, tmp_path):
    """A file whose world values are RAS under the LPS label (LPS index kept) is refused, with
    the image given or not (issue 13)."""
    cp, pet_path, pet = case
    doc = to_document(cp, relative_to=tmp_path)
    w = doc["lesions"][0]["points"][0]["world"]
    doc["lesions"][0]["points"][0]["world"] = [-w[0], -w[1], w[2]]  # RAS values, "index" left as it was
    p = _write(tmp_path, doc)
    for image in (None, pet):
        with pytest.raises(PromptError, match="disagrees with its world position") as e:
            load_prompts(p, image=image, verify_sha=False)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert load_prompts(_write(tmp_path, to_document(cp, relative_to=tmp_path), "ok.json"), image=pet).equivalent(cp)


@pytest.mark.parametrize("size", [[-4.0, 6.0, 6.0], [0.0, 6.0, 6.0]])
def test_box_with_a_non_positive_size_is_refused(case, tmp_path, size):
    cp, pet_path, pet = case
    doc = to_document(cp, relative_to=tmp_path)
    doc["lesions"][0]["boxes"][0]["size"] = size
    with pytest.raises(PromptError, match="box size must be positive"):
        load_prompts(_write(tmp_path, doc), image=pet, verify_sha=False)
