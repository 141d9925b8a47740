"""``sam-l1dfl serve``: a real server on a loopback port, driven by the real ``nninteractive-client``.

The expected masks come from the segmenter's own API, not from the server's code: the first click
on a lesion must give exactly what ``Segmenter.segment`` (``sam-l1dfl infer``) gives for the same
image, spacing and click; a refinement click must give the click loop composed here by hand (the
crop of the first click, the image embedding once, every point so far, the previous low-res logits
as the mask prompt).  The stand-in model (real weights) and a phantom case keep it realistic.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnInteractive.inference.remote import (ServerAtCapacityError,
                                            nnInteractiveRemoteInferenceSession)
from nnInteractive.inference.remote.serialization import pack_array

from sam_l1dfl.data.io import Case
from sam_l1dfl.data.preprocess import make_network_input
from sam_l1dfl.data.synthetic import generate_case
from sam_l1dfl.inference import Segmenter
from sam_l1dfl.inference.array_input import first_clicks
from sam_l1dfl.inference.mapping import LabelCanvas
from sam_l1dfl.prompts import generate_prompts
from sam_l1dfl.prompts.types import CasePrompts, ImageRef, LesionPrompts, PointPrompt, box_from_index_bounds
from sam_l1dfl.serve.app import ServeSettings, create_app
from sam_l1dfl.serve.server import BackgroundServer
from sam_l1dfl.serve.wire import WireError

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def seg():
    return Segmenter("standin", device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def phantom():
    """A phantom case as a viewer sends it: the array, its spacing in array order, and the image
    the expectations are computed on (the same array and spacing, built here with SimpleITK)."""
    case = generate_case(11, n_lesions=5)
    arr = sitk.GetArrayFromImage(case.pet).astype(np.float32)
    spacing = list(case.pet.GetSpacing())[::-1]
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(case.pet.GetSpacing())
    seeds = first_clicks(generate_prompts(case.seg, case.pet))
    return {"array": arr, "spacing": spacing, "image": img, "seeds": seeds, "case": case}


@pytest.fixture(scope="module")
def server(seg):
    with BackgroundServer(create_app(seg, ServeSettings(max_sessions=2))) as url:
        yield url


def _client(url, **kw):
    return nnInteractiveRemoteInferenceSession(url, **kw)


def _opened(url, phantom, **props):
    s = _client(url)
    s.set_image(phantom["array"][None], {"spacing": phantom["spacing"], **props})
    buf = np.zeros(phantom["array"].shape, np.uint8)
    s.set_target_buffer(buf)
    return s, buf


# ------------------------------------------------------------------------------ expectations
def _world(img, idx):
    return img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx[::-1]])


def _infer(seg, img, points=(), box=None):
    """``Segmenter.segment`` (what ``sam-l1dfl infer`` runs) for one lesion prompt."""
    pts = [PointPrompt(tuple(_world(img, i)), tuple(float(v) for v in i[::-1]), int(pos), "t") for i, pos in points]
    ref = ImageRef.from_image(img)
    boxes = [] if box is None else [box_from_index_bounds(ref, [b[0] - 0.5 for b in box[::-1]],
                                                          [b[1] - 0.5 for b in box[::-1]])]
    res = seg.segment(img, prompts=CasePrompts("t", ref, [LesionPrompts(1, pts, boxes)]))
    return sitk.GetArrayFromImage(res.mask) > 0


def _click_loop(seg, img, clicks):
    """The click loop by hand: the crop of the first click, the embedding once, then per click all
    the points so far with the previous low-res logits as the mask prompt."""
    geom = seg.preprocess.geometry_at(_world(img, clicks[0][0]))
    with torch.inference_mode():
        emb = seg.model.encode(make_network_input(Case("t", img), geom, seg.preprocess)[None]).float()
    s = seg.model.config.low_res_size
    low, pts, labels = torch.zeros(1, 1, s, s, s), [], []
    for idx, pos in clicks:
        pts.append(geom.world_to_index(np.asarray(_world(img, idx))))
        labels.append(int(pos))
        low, logits, _ = seg.model_decoder(emb, torch.tensor(np.array(pts), dtype=torch.float32)[None],
                                           torch.tensor(labels)[None], None, low)
    canvas = LabelCanvas(img, seg.threshold)
    canvas.add(logits[0, 0].numpy(), geom, 1, 1)
    return canvas.labels > 0


# ------------------------------------------------------------------------------ clicks
def test_each_lesion_clicked_gives_the_infer_mask(seg, phantom, server):
    s, buf = _opened(server, phantom)
    assert s.supported_interactions["points"] and not s.supported_interactions["scribble"] and s.supports_undo
    assert "Apache-2.0" in s.license
    status = s.lease_status()  # the client's lease probes: they touch no clock but liveness
    assert status["idle_timeout_seconds"] == 600 and 0 < status["remaining_seconds"] <= 600
    assert 0 < s.heartbeat() <= 600 and s.ping()
    for seed in phantom["seeds"]:
        s.reset_interactions()
        bbox = s.add_point_interaction(seed, include_interaction=True)
        want = _infer(seg, phantom["image"], [(seed, 1)])
        assert want.any() and np.array_equal(buf > 0, want), seed
        assert bbox is not None and all(lo <= i < hi for i, (lo, hi) in zip(seed, bbox))
    s.close()


def test_refinement_negative_click_undo_and_reset(seg, phantom, server):
    s, buf = _opened(server, phantom)
    seed = phantom["seeds"][2]
    s.add_point_interaction(seed, include_interaction=True)
    one = buf.copy()
    inside = tuple(int(v) for v in np.argwhere(one > 0).mean(0).round())
    near = (seed[0] + 1, seed[1], seed[2] + 1)
    s.add_point_interaction(near, include_interaction=True)
    two = buf.copy()
    assert np.array_equal(two > 0, _click_loop(seg, phantom["image"], [(seed, 1), (near, 1)]))
    s.add_point_interaction(inside, include_interaction=False)
    want = _click_loop(seg, phantom["image"], [(seed, 1), (near, 1), (inside, 0)])
    assert np.array_equal(buf > 0, want) and not np.array_equal(want, two > 0)
    assert s.undo() and np.array_equal(buf, two)
    assert s.undo() and np.array_equal(buf, one)
    s.reset_interactions()
    assert not buf.any() and not s.undo()  # nothing left to undo after a reset
    s.close()


def test_boxes_place_the_crop_like_infer(seg, phantom, server):
    """The stand-in, like the official weights, has no box embeddings: a 3D box, or a 2D box on
    one slice as Slicer draws it, places the crop and gives a centre click, as ``infer`` does."""
    s, buf = _opened(server, phantom)
    assert s.supported_interactions["bbox3d"] and s.supported_interactions["bbox2d"]
    a, b, c = phantom["seeds"][0]
    for box in ([[a - 3, a + 4], [b - 2, b + 3], [c - 2, c + 3]], [[a, a + 1], [b - 3, b + 4], [c - 3, c + 4]]):
        s.reset_interactions()
        s.add_bbox_interaction(box, include_interaction=True)
        want = _infer(seg, phantom["image"], box=box)
        assert want.any() and np.array_equal(buf > 0, want)
    s.close()


def test_initial_segmentation_is_the_mask_prompt(seg, phantom, server):
    s, buf = _opened(server, phantom)
    seed = phantom["seeds"][1]
    init = np.zeros(buf.shape, np.uint8)
    init[tuple(slice(max(0, v - 12), v + 12) for v in seed)] = 1  # a generous first outline
    s.add_initial_seg_interaction(init, run_prediction=False)
    assert np.array_equal(buf, init)  # the client mirrors it; nothing predicted yet
    s.add_point_interaction(seed, include_interaction=True)
    with_prompt = buf.copy()
    s.reset_interactions()
    s.add_point_interaction(seed, include_interaction=True)
    assert with_prompt.sum() > 1.5 * buf.sum()  # the initial mask, as the mask prompt, grew the prediction
    s.reset_interactions()
    bbox = s.add_initial_seg_interaction(init, run_prediction=True)  # zero-shot refinement of the mask
    assert bbox is not None and buf.any()
    s.close()


def test_origin_and_direction_extension_and_default_spacing(seg, server):
    """An oblique scan sent with ``origin`` and ``direction`` (array-axis columns) is segmented in
    its world geometry; an image without spacing gets 1 mm and the reply says so."""
    case = generate_case(11, n_lesions=5, direction="oblique")
    arr = sitk.GetArrayFromImage(case.pet).astype(np.float32)
    d = np.asarray(case.pet.GetDirection()).reshape(3, 3)[:, ::-1]
    seed = first_clicks(generate_prompts(case.seg, case.pet))[0]
    s = _client(server)
    s.set_image(arr[None], {"spacing": list(case.pet.GetSpacing())[::-1], "origin": list(case.pet.GetOrigin()),
                            "direction": d.tolist()})
    buf = np.zeros(arr.shape, np.uint8)
    s.set_target_buffer(buf)
    s.add_point_interaction(seed, include_interaction=True)
    assert np.array_equal(buf > 0, _infer(seg, case.pet, [(seed, 1)]))
    s.close()
    with _raw(server) as (http, _):
        r = http.post("/set_image", content=pack_array(arr[None]), headers={"X-Meta": "{}"})
        assert r.status_code == 200 and "1 mm assumed" in r.json()["sam_l1dfl"]["notes"][0]


def test_two_sessions_interleaved_get_what_each_gets_alone(seg, phantom, server):
    other = generate_case(7, n_lesions=3)
    arr_b = sitk.GetArrayFromImage(other.pet).astype(np.float32)
    seed_b = first_clicks(generate_prompts(other.seg, other.pet))[0]
    img_b = sitk.GetImageFromArray(arr_b)
    img_b.SetSpacing(other.pet.GetSpacing())
    a, buf_a = _opened(server, phantom)
    b = _client(server)
    b.set_image(arr_b[None], {"spacing": list(other.pet.GetSpacing())[::-1]})
    buf_b = np.zeros(arr_b.shape, np.uint8)
    b.set_target_buffer(buf_b)
    seed_a = phantom["seeds"][3]
    a.add_point_interaction(seed_a, include_interaction=True)
    b.add_point_interaction(seed_b, include_interaction=True)
    near_a = (seed_a[0], seed_a[1] + 1, seed_a[2])
    a.add_point_interaction(near_a, include_interaction=True)
    assert np.array_equal(buf_a > 0, _click_loop(seg, phantom["image"], [(seed_a, 1), (near_a, 1)]))
    assert np.array_equal(buf_b > 0, _infer(seg, img_b, [(seed_b, 1)]))
    a.close()
    b.close()


# ------------------------------------------------------------------------------ leases and key
def test_lease_clocks_with_a_fake_clock():
    """The protocol's two clocks: heartbeats keep a lease alive but do not postpone the idle reap;
    user actions refresh both; a status probe touches neither."""
    from sam_l1dfl.serve.leases import LeaseRegistry

    now = [0.0]
    reg = LeaseRegistry(object, max_sessions=2, idle_timeout=10, liveness_timeout=3, clock=lambda: now[0])
    a, b = reg.claim(), reg.claim()
    for t in (2.0, 4.0, 6.0, 8.0):  # a heartbeats; b does nothing
        now[0] = t
        reg.get(a.token)
        if t == 2.0:
            reg.get(b.token, active=True)
    assert [l.token for l in reg.leases()] == [a.token]  # b: no request for more than 3 s
    now[0] = 9.5
    reg.get(a.token, seen=False)  # a probe
    assert reg.remaining(a) == pytest.approx(0.5)
    now[0] = 10.5
    with pytest.raises(WireError) as err:
        reg.get(a.token, active=True)  # idle since 0, heartbeats notwithstanding
    assert err.value.status == 410


def test_capacity_made_up_lease_and_expiry_on_a_real_server(seg, phantom):
    with BackgroundServer(create_app(seg, ServeSettings(max_sessions=1))) as url:
        a = _client(url)
        with pytest.raises(ServerAtCapacityError):
            _client(url)
        a.close()  # releases its slot at once
        b = _client(url)
        with httpx.Client(base_url=url) as http:
            r = http.post("/heartbeat", headers={"X-Lease-Token": "0" * 32})
            assert r.status_code == 410 and r.json()["detail"] == "lease expired or unknown"
        b.close()
    with BackgroundServer(create_app(seg, ServeSettings(idle_timeout=1.5, liveness_timeout=0))) as url:
        with httpx.Client(base_url=url, timeout=10) as http:
            tok = {"X-Lease-Token": http.post("/claim").json()["lease_token"]}
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:  # heartbeats do not postpone the idle reap
                http.post("/heartbeat", headers=tok)
                time.sleep(0.25)
            assert http.post("/reset_interactions", headers=tok).status_code == 410
            assert http.post("/claim").status_code == 200  # the reaped slot is free again
    with BackgroundServer(create_app(seg, ServeSettings(idle_timeout=0, liveness_timeout=1.0))) as url:
        with httpx.Client(base_url=url, timeout=10) as http:
            quiet = {"X-Lease-Token": http.post("/claim").json()["lease_token"]}
            time.sleep(2.0)  # no request at all: reaped for liveness
            assert http.post("/heartbeat", headers=quiet).status_code == 410


def test_api_key_missing_or_wrong_is_401(seg):
    with BackgroundServer(create_app(seg, ServeSettings(api_key="s3cret-key"))) as url:
        for key in (None, "wrong"):
            with pytest.raises(httpx.HTTPStatusError) as err:
                _client(url, api_key=key) if key else _client(url, api_key="")
            assert err.value.response.status_code == 401
        assert httpx.get(url + "/healthz").json() == {"ok": True}  # the probe needs no key
        assert httpx.get(url + "/capabilities").status_code == 401
        s = _client(url, api_key="s3cret-key")
        assert s.ping() and s.supports_undo
        s.close()


# ------------------------------------------------------------------------------ bad input
class _raw:
    """A claimed lease for hand-made requests: ``with _raw(url) as (http, token)``."""

    def __init__(self, url):
        self.http = httpx.Client(base_url=url, timeout=30)

    def __enter__(self):
        tok = self.http.post("/claim").json()["lease_token"]
        self.http.headers["X-Lease-Token"] = tok
        return self.http, tok

    def __exit__(self, *exc):
        self.http.post("/release")
        self.http.close()


def _with_shape(packed: bytes, shape) -> bytes:
    """``packed`` with its declared shape replaced (same number of axes)."""
    name_len = packed[7]
    return packed[:8 + name_len] + struct.pack(f"<{len(shape)}q", *shape) + packed[8 + name_len + 8 * len(shape):]


def _with_dtype(packed: bytes, name: bytes) -> bytes:
    old = packed[7]
    return packed[:7] + bytes([len(name)]) + name + packed[8 + old:]


def _lying_upload(url: str, token: str, head: bytes, content_length: int) -> "tuple[int, str]":
    """A set_image that declares ``content_length`` bytes and sends only ``head`` (httpx will not)."""
    import socket

    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall((f"POST /set_image HTTP/1.1\r\nHost: {host}\r\nX-Lease-Token: {token}\r\n"
                      f"X-Meta: {META['X-Meta']}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {content_length}\r\n\r\n").encode() + head)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]


def _one_line_4xx(seen: dict) -> None:
    for name, r in seen.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, name


@pytest.fixture(scope="module")
def strict_server(seg):
    with BackgroundServer(create_app(seg, ServeSettings(max_sessions=3, max_image_voxels=2 * 10 ** 6))) as url:
        yield url


SMALL = np.zeros((1, 20, 24, 28), np.float32)
META = {"X-Meta": json.dumps({"image_properties": {"spacing": [2, 2, 2]}})}


def test_bad_images_are_one_line_4xx_and_the_server_goes_on(seg, phantom, strict_server):
    good = pack_array(SMALL)
    nan, inf = SMALL.copy(), SMALL.copy()
    nan[0, 3, 3, 3], inf[0, 1, 1, 1] = np.nan, np.inf
    corrupt = bytearray(good)
    corrupt[-40:-20] = b"\xff" * 20  # the blosc2 frame, not the header
    spacing = lambda sp: {"X-Meta": json.dumps({"image_properties": {"spacing": sp}})}  # noqa: E731
    bad = {
        "X-Meta not JSON": ({"X-Meta": "{spacing"}, good),
        "X-Meta nested 30000 deep": ({"X-Meta": "[" * 30000}, good),
        "body not a packed array": (META, b"not an array at all"),
        "declared shape not held by the payload": (META, _with_shape(good, (1, 20, 24, 29))),
        "dtype object": (META, _with_dtype(good, b"object")),
        "more voxels than --max-image-voxels": (META, _with_shape(good, (1, 10000, 10000, 10000))),
        "truncated body": (META, good[:-3]),
        "corrupt compressed frame": (META, bytes(corrupt)),
        "two channels for a PET model": (META, pack_array(np.zeros((2, 4, 4, 4), np.float32))),
        "NaN voxels": (META, pack_array(nan)),
        "Inf voxels": (META, pack_array(inf)),
        "zero spacing": (spacing([2, 0, 2]), good),
        "negative spacing": (spacing([2, -1, 2]), good),
        "spacing of 2 numbers": (spacing([2, 2]), good),
        "spacing of booleans": (spacing([True, True, True]), good),
    }
    keep, keep_buf = _opened(strict_server, phantom)  # a good session, open all along
    with _raw(strict_server) as (http, _):
        seen = {name: http.post("/set_image", content=body, headers=h) for name, (h, body) in bad.items()}
        status, detail = _lying_upload(strict_server, http.headers["X-Lease-Token"], good[:64], 10 ** 10)
        assert status == 413 and "declared array" in detail  # refused from the header, not after 10 GB
        assert http.post("/set_image", content=good, headers=META).status_code == 200
    _one_line_4xx(seen)
    assert seen["more voxels than --max-image-voxels"].status_code == 413
    keep.add_point_interaction(phantom["seeds"][0], include_interaction=True)  # still served
    assert np.array_equal(keep_buf > 0, _infer(seg, phantom["image"], [(phantom["seeds"][0], 1)]))
    keep.close()


def test_bad_interactions_are_one_line_4xx_and_change_nothing(strict_server):
    good = pack_array(SMALL)
    point = lambda c, inc=True: ("/add_point_interaction", {"coordinates": c, "include_interaction": inc})  # noqa: E731
    box = lambda b, inc=True: ("/add_bbox_interaction", {"bbox_coords": b, "include_interaction": inc})  # noqa: E731
    calls = {
        "target buffer of another shape": ("/set_target_buffer", {"shape": [20, 24, 27], "dtype": "uint8"}),
        "target buffer dtype object": ("/set_target_buffer", {"shape": [20, 24, 28], "dtype": "object"}),
        "target buffer dtype float32": ("/set_target_buffer", {"shape": [20, 24, 28], "dtype": "float32"}),
        "point outside the image": point([5, 5, 28]),
        "point with 2 coordinates": point([5, 5]),
        "point with NaN": point([5, "nan", 5]),
        "point of booleans": point([True, True, True]),
        "point without include_interaction": ("/add_point_interaction", {"coordinates": [5, 5, 5]}),
        "negative click first": point([5, 5, 5], False),
        "box outside the image": box([[0, 5], [0, 5], [20, 30]]),
        "box with 2 ranges": box([[0, 5], [0, 5]]),
        "empty box": box([[3, 3], [0, 5], [0, 5]]),
        "negative box": box([[0, 5], [0, 5], [0, 5]], False),
    }
    with _raw(strict_server) as (http, _):
        seen = {"click before any image": http.post(*point([1, 1, 1])[:1], json=point([1, 1, 1])[1])}
        assert http.post("/set_image", content=good, headers=META).status_code == 200
        assert http.post("/set_target_buffer", json={"shape": [20, 24, 28], "dtype": "uint8"}).status_code == 200
        for name, (path, payload) in calls.items():
            seen[name] = http.post(path, json=payload)
        seen["body a JSON list"] = http.post("/add_point_interaction", json=[1, 2, 3])
        seen["body nested 30000 deep"] = http.post("/add_point_interaction", content=b"[" * 30000)
        seen["body not JSON"] = http.post("/add_point_interaction", content=b"\xff\xfe{")
        seen["JSON body of 100 kB"] = http.post("/add_point_interaction", content=b" " * 100_000 + b"{}")
        seen["scribble"] = http.post("/add_scribble_interaction", content=good)
        seen["lasso"] = http.post("/add_lasso_interaction", content=good)
        seen["initial segmentation of another shape"] = http.post(
            "/add_initial_seg_interaction", content=pack_array(np.zeros((20, 24, 27), np.uint8)), headers={"X-Meta": "{}"})
        undo = http.post("/undo")  # none of the refused calls left an undo step
        assert json.loads(undo.headers["X-Meta"])["ran_prediction"] is False
    _one_line_4xx(seen)
    assert seen["click before any image"].status_code == 409
    assert seen["JSON body of 100 kB"].status_code == 413
    assert "not supported" in seen["scribble"].json()["detail"]


def test_refused_prediction_leaves_no_trace_and_predict_runs_what_is_pending(seg, phantom, server):
    """A prompt the model refuses changes nothing (no hidden point, no undo step); prompts added
    without a prediction are decoded by /predict, once."""
    s, buf = _opened(server, phantom)
    seed = phantom["seeds"][0]
    with pytest.raises(httpx.HTTPStatusError):
        s.add_point_interaction(seed, include_interaction=False)  # nothing positive yet
    assert s.add_point_interaction(seed, include_interaction=True, run_prediction=False) is None and not buf.any()
    s.set_do_autozoom(False)
    assert s._predict() is not None and np.array_equal(buf > 0, _infer(seg, phantom["image"], [(seed, 1)]))
    once = buf.copy()
    assert s._predict() is None and np.array_equal(buf, once)  # nothing new: no second decode
    assert s.undo() and not buf.any() and not s.undo()  # one step: the click (and its prediction)
    s.close()


def test_negative_click_on_a_seeded_segment_and_outside_the_crop(seg, phantom, server):
    """Slicer's edit of an existing segment: the seed, then a negative click; a negative click
    outside the crop is kept and changes nothing."""
    s, buf = _opened(server, phantom)
    seed = phantom["seeds"][1]
    init = np.zeros(buf.shape, np.uint8)
    init[tuple(slice(max(0, v - 8), v + 8) for v in seed)] = 1
    s.add_initial_seg_interaction(init, run_prediction=False)
    corner = tuple(max(0, v - 7) for v in seed)
    s.add_point_interaction(corner, include_interaction=False)
    assert buf.any() and not np.array_equal(buf, init) and buf[corner] == 0
    before = buf.copy()
    far = tuple(0 if v > n // 2 else n - 1 for v, n in zip(seed, buf.shape))
    s.add_point_interaction(far, include_interaction=False)
    assert np.array_equal(buf, before)
    s.close()


def test_concurrent_sessions_get_what_each_gets_alone(seg, phantom, server):
    """Two clients clicking at the same moment from two threads (one prediction at a time inside)."""
    import threading

    seeds = phantom["seeds"][:2]
    clients = [_opened(server, phantom) for _ in seeds]
    errors = []

    def click(k):
        try:
            for _ in range(3):
                clients[k][0].reset_interactions()
                clients[k][0].add_point_interaction(seeds[k], include_interaction=True)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for (s, buf), seed in zip(clients, seeds):
        assert np.array_equal(buf > 0, _infer(seg, phantom["image"], [(seed, 1)]))
        s.close()


# ------------------------------------------------------------------------------ the command
def test_serve_command_start_line_healthz_and_host_rule(tmp_path):
    env = {**os.environ, "NN_INTERACTIVE_API_KEY": ""}
    refused = subprocess.run([sys.executable, "-m", "sam_l1dfl", "serve", "--checkpoint", "standin", "--host",
                              "0.0.0.0"], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "API key" in refused.stderr
    proc = subprocess.Popen([sys.executable, "-m", "sam_l1dfl", "serve", "--checkpoint", "standin", "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving standin [the synthetic-pretrained STAND-IN") and " on cpu at http://127.0.0.1:" in line
        url = line.split(" at ")[1].split(";")[0]
        assert httpx.get(url + "/healthz", timeout=10).json() == {"ok": True}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_first_click_equals_the_infer_command(phantom, server, tmp_path):
    """Through files: the PET written as NIfTI (as a user has it) and ``sam-l1dfl infer`` with a
    prompt file holding the same click give the server's mask, voxel for voxel."""
    from sam_l1dfl import cli
    from sam_l1dfl.prompts import save_prompts

    pet_path = tmp_path / "pet.nii.gz"
    sitk.WriteImage(phantom["image"], str(pet_path))
    pet = sitk.ReadImage(str(pet_path))
    s, buf = _opened(server, phantom)
    for k, seed in enumerate(phantom["seeds"][:2]):
        s.reset_interactions()
        s.add_point_interaction(seed, include_interaction=True)
        idx = tuple(float(v) for v in seed[::-1])
        point = PointPrompt(tuple(pet.TransformContinuousIndexToPhysicalPoint(idx)), idx, 1, "click")
        save_prompts(CasePrompts("pet", ImageRef.from_image(pet, str(pet_path)), [LesionPrompts(1, [point])]),
                     tmp_path / f"click{k}.json")
        out = tmp_path / f"pred{k}.nii.gz"
        assert cli.main(["infer", "--pet", str(pet_path), "--prompts", str(tmp_path / f"click{k}.json"),
                         "--checkpoint", "standin", "--out", str(out), "--quiet"]) == 0
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
        assert want.any() and np.array_equal(buf > 0, want), seed
    s.close()


def test_far_click_without_reset_and_missing_target_buffer_are_said(phantom, server):
    """A positive click on another lesion without a reset: the reply says the prompts span more
    than one crop; a mask change with no target buffer: the reply says it carries no mask."""
    with _raw(server) as (http, _):
        assert http.post("/set_image", content=pack_array(phantom["array"][None]),
                         headers={"X-Meta": json.dumps({"image_properties": {"spacing": phantom["spacing"]}})}).is_success
        first, far = phantom["seeds"][0], phantom["seeds"][-1]
        r = http.post("/add_point_interaction", json={"coordinates": list(first), "include_interaction": True})
        assert "no target buffer" in json.loads(r.headers["X-Meta"])["sam_l1dfl"]["notes"][-1] and not r.content
        r = http.post("/add_point_interaction", json={"coordinates": list(far), "include_interaction": True})
        assert any("outside the crop" in n and "reset" in n for n in json.loads(r.headers["X-Meta"])["sam_l1dfl"]["notes"])
