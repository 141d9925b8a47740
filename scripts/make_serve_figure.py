"""docs/img/serve_session.png: a real client session against ``sam-l1dfl serve``, as a PET MIP.

A server with the given checkpoint (default: the stand-in) on a loopback port; the real
``nninteractive-client`` sends a phantom case with its spacing, as 3D Slicer does, and clicks each
lesion once (``reset_interactions`` between lesions: one object per session).  The lesions whose
first mask overlaps the reference least get a second, negative click just outside their reference
lesion.  Left: the clicks and the server's masks; right: the reference lesions.  The title says
which weights made the masks.

    .venv/bin/python scripts/make_serve_figure.py [--checkpoint standin] [--seed 11] [--out docs/img/serve_session.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk


def _session_masks(url, case, seeds):
    """Per lesion: the clicks sent ``[(index, positive)]`` and the mask the server returned."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    arr = sitk.GetArrayFromImage(case.pet).astype(np.float32)
    ref = sitk.GetArrayFromImage(case.seg) > 0
    out = []
    with nnInteractiveRemoteInferenceSession(url) as s:
        s.set_image(arr[None], {"spacing": list(case.pet.GetSpacing())[::-1]})
        buf = np.zeros(arr.shape, np.uint8)
        s.set_target_buffer(buf)
        for seed in seeds:
            s.reset_interactions()
            s.add_point_interaction(seed, include_interaction=True)
            clicks = [(seed, 1)]
            leak = (buf > 0) & ~ref
            if leak.sum() > (buf > 0).sum() / 2:  # mostly outside the lesion: one negative click on the leak
                far = np.argwhere(leak)
                neg = tuple(int(v) for v in far[np.argmax(((far - np.asarray(seed)) ** 2).sum(1))])
                s.add_point_interaction(neg, include_interaction=False)
                clicks.append((neg, 0))
            out.append((clicks, buf.copy()))
    return out


def main() -> None:
    from sam_l1dfl.data.synthetic import generate_case
    from sam_l1dfl.inference import Segmenter
    from sam_l1dfl.inference.array_input import first_clicks
    from sam_l1dfl.prompts import generate_prompts
    from sam_l1dfl.serve.app import create_app
    from sam_l1dfl.serve.server import BackgroundServer
    from sam_l1dfl.viz import Panel, save_mip_figure

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="standin")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default="docs/img/serve_session.png")
    args = ap.parse_args()
    case = generate_case(args.seed, n_lesions=6)
    seeds = first_clicks(generate_prompts(case.seg, case.pet))
    seg = Segmenter(args.checkpoint, device="cpu", batch_size=1)
    with BackgroundServer(create_app(seg)) as url:
        results = _session_masks(url, case, seeds)
    labels = np.zeros(results[0][1].shape, np.uint16)
    points, point_labels = [], []
    for k, (clicks, mask) in enumerate(results, start=1):
        labels[(mask > 0) & (labels == 0)] = k
        for idx, pos in clicks:
            points.append(case.pet.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx[::-1]]))
            point_labels.append(pos)
    pred = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
    pred.CopyInformation(case.pet)
    n_neg = sum(1 for p in point_labels if p == 0)
    panels = [
        Panel(pet=case.pet, masks={"server masks": (pred, "#1f77b4")}, points_world=np.asarray(points),
              point_labels=np.asarray(point_labels),
              title=f"{len(points)} clicks ({n_neg} negative): server masks"),
        Panel(pet=case.pet, masks={"reference lesions": (case.seg, "#d62728")}, title="reference (phantom SEG)"),
    ]
    path = save_mip_figure(args.out, panels, suptitle=f"sam-l1dfl serve, {seg.weights} weights ({args.checkpoint}); "
                                                     f"phantom seed {args.seed}")
    print(f"{path}: {len(seeds)} lesions, {len(points)} clicks ({n_neg} negative)")


if __name__ == "__main__":
    main()
