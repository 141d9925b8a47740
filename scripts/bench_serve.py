"""Latency of ``sam-l1dfl serve`` through the real ``nninteractive-client`` (issue 27, section 5).

For each model (the stand-in; ``vit_b_ori`` with random weights, the turbo architecture) and each
image (a phantom case at its native size; a 200 x 200 x 300 float32 PET cut from the full-size
phantom), a real server on a loopback port and the real client measure:

- ``set_image``: the round trip of the whole volume (the client's compression, upload, unpack,
  checks); the client's compression alone beside it;
- the **first click** on a lesion: a new crop, so the encoder runs;
- the **next click** in the same crop: the decoder only (the embedding is cached);
- **memory per session**: what each session holds (image, mask, cached embeddings), and the
  resident-set growth of this process per session over 3 sessions (which includes the client's
  own target buffer: the client runs in this process).

Baselines in the same process: the same clicks on an :class:`InteractiveSession` without HTTP
(the server's overhead is the ratio), and ``Segmenter.segment`` for the first click (what ``infer``
takes for one lesion).  Medians over the lesions (and ``--repeats`` rounds), p90 beside.

    .venv/bin/python scripts/bench_serve.py [--models standin vit_b_ori] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import SimpleITK as sitk
import torch


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _images():
    from sam_l1dfl.data.synthetic import generate_case
    from sam_l1dfl.inference.array_input import first_clicks
    from sam_l1dfl.prompts import generate_prompts

    out = {}
    native = generate_case(11, n_lesions=6)
    full = generate_case(3, full_size=True, n_lesions=8)
    for name, case, cut in (("phantom native", native, None), ("200x200x300 PET", full, 300)):
        arr = sitk.GetArrayFromImage(case.pet).astype(np.float32)
        seeds = first_clicks(generate_prompts(case.seg, case.pet))
        if cut is not None:
            arr = arr[:cut]
            seeds = [s for s in seeds if s[0] < cut]
        out[name] = (arr, list(case.pet.GetSpacing())[::-1], seeds)
    return out


def _segmenter(name: str):
    from sam_l1dfl.data.preprocess import IntensityConfig
    from sam_l1dfl.inference import Segmenter
    from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d

    if name == "standin":
        return Segmenter("standin", device="cpu", batch_size=1)
    torch.manual_seed(0)
    return Segmenter(None, device="cpu", batch_size=1, model=build_sam_med3d(SamMed3DConfig.preset(name)),
                     preprocess=IntensityConfig())


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _client_run(url, arr, spacing, seeds, repeats):
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
    from nnInteractive.inference.remote.serialization import pack_array

    t_pack = _timed(lambda: pack_array(arr[None]))  # the client's own share of set_image
    s = nnInteractiveRemoteInferenceSession(url)
    t_img = [_timed(lambda: s.set_image(arr[None], {"spacing": spacing})) for _ in range(repeats)]
    s.set_target_buffer(np.zeros(arr.shape, np.uint8))
    first, nxt = [], []
    for _ in range(repeats):
        s.set_image(arr[None], {"spacing": spacing})  # a fresh embedding cache each round
        s.set_target_buffer(np.zeros(arr.shape, np.uint8))
        for seed in seeds:
            s.reset_interactions()
            first.append(_timed(lambda: s.add_point_interaction(seed, include_interaction=True)))
            for k in range(3):
                p = (seed[0], seed[1] + (1 if k % 2 == 0 else -1), seed[2])
                nxt.append(_timed(lambda: s.add_point_interaction(p, include_interaction=True)))
    s.close()
    return t_img, t_pack, first, nxt


def _direct_run(seg, arr, spacing, seeds, repeats):
    from sam_l1dfl.inference.interactive import InteractiveSession

    first, nxt = [], []
    for _ in range(repeats):
        s = InteractiveSession(seg)
        s.set_image(arr[None], spacing)
        for seed in seeds:
            s.reset()
            first.append(_timed(lambda: s.add_point(seed, True)))
            for k in range(3):
                p = (seed[0], seed[1] + (1 if k % 2 == 0 else -1), seed[2])
                nxt.append(_timed(lambda: s.add_point(p, True)))
    return first, nxt


def _infer_run(seg, arr, spacing, seeds):
    from sam_l1dfl.prompts.types import CasePrompts, ImageRef, LesionPrompts, PointPrompt

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(v) for v in spacing[::-1]))
    ref, out = ImageRef.from_image(img), []
    for seed in seeds:
        idx = tuple(float(v) for v in seed[::-1])
        cp = CasePrompts("b", ref, [LesionPrompts(1, [PointPrompt(img.TransformContinuousIndexToPhysicalPoint(idx),
                                                                  idx, 1, "click")])])
        out.append(_timed(lambda: seg.segment(img, prompts=cp)))
    return out


def _memory(url, registry, arr, spacing, seed, n=3) -> "tuple[float, float]":
    """``(RSS growth, bytes the server's sessions hold)`` per session; the RSS growth includes the
    client's own target buffer (the client runs in this process too)."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    from sam_l1dfl.inference.interactive import held_bytes

    sessions, base = [], _rss()
    for _ in range(n):
        s = nnInteractiveRemoteInferenceSession(url)
        s.set_image(arr[None], {"spacing": spacing})
        s.set_target_buffer(np.zeros(arr.shape, np.uint8))
        s.add_point_interaction(seed, include_interaction=True)
        sessions.append(s)
    grown = (_rss() - base) / n
    held = sum(held_bytes(lease.session) for lease in registry.leases()) / n
    for s in sessions:
        s.close()
    return grown, held


def _q(v, p):
    return float(np.percentile(np.asarray(v), p))


def main() -> None:
    from sam_l1dfl.serve.app import ServeSettings, create_app
    from sam_l1dfl.serve.server import BackgroundServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["standin", "vit_b_ori"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_serve: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {time.strftime('%Y-%m-%d')}")
    images = _images()
    print("| model | image | set_image s (client pack) | first click s (p90) | next click s (p90) | MB per session held (RSS) | "
          "first: direct / infer s | next: direct s | HTTP overhead next |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        seg = _segmenter(name)
        app = create_app(seg, ServeSettings(max_sessions=4))
        with BackgroundServer(app) as url:
            for iname, (arr, spacing, seeds) in images.items():
                _client_run(url, arr, spacing, seeds[:1], 1)  # warm-up
                t_img, t_pack, first, nxt = _client_run(url, arr, spacing, seeds, args.repeats)
                d_first, d_next = _direct_run(seg, arr, spacing, seeds, args.repeats)
                inf = _infer_run(seg, arr, spacing, seeds)
                rss, held = (v / 2**20 for v in _memory(url, app.state.server.registry, arr, spacing, seeds[0]))
                print(f"| {name} | {iname} {list(arr.shape)} | {np.median(t_img):.3f} ({t_pack:.3f}) | {np.median(first):.3f} "
                      f"({_q(first, 90):.3f}) | {np.median(nxt):.3f} ({_q(nxt, 90):.3f}) | {held:.0f} ({rss:.0f}) | "
                      f"{np.median(d_first):.3f} / {np.median(inf):.3f} | {np.median(d_next):.3f} | "
                      f"{np.median(nxt) / np.median(d_next):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
