"""Issue 28: every validation says whether the one-click masks depend on the image.

``ClickLoop.image_dependence`` is the Dice between the one-click mask on a crop and the masks, for
the same click, on a crop of zeros and on a crop of noise: 1.0 for a model that paints the same
blob whatever it sees, lower for one whose masks follow the image.  The stand-in's masks were
shown (BENCHMARKS.md) not to depend on the image; the figure makes that visible while a run trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sam_l1dfl.data.geometry import CropGeometry
from sam_l1dfl.data.io import Case
from sam_l1dfl.data.preprocess import make_network_input
from sam_l1dfl.data.synthetic import generate_case
from sam_l1dfl.losses import make_training_loss
from sam_l1dfl.model import load_sam_med3d
from sam_l1dfl.model.standin import STANDIN_DIR
from sam_l1dfl.prompts import generate_prompts
from sam_l1dfl.training.clickloop import ClickLoop
from sam_l1dfl.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _crops():
    """Two real 128^3 PET crops of phantom lesions, and their lesion masks."""
    from sam_l1dfl.data.preprocess import crop_mask

    case = generate_case(11, n_lesions=5)
    x, y = [], []
    for lp in generate_prompts(case.seg, case.pet).lesions[:2]:
        geom = CropGeometry.centered_at(lp.points[0].world, 1.5, 128)
        x.append(make_network_input(Case("c", case.pet), geom))
        y.append(torch.from_numpy(crop_mask(case.seg, geom).astype(np.uint8)))
    return torch.stack(x), torch.stack(y)[:, None]


def test_image_dependence_is_one_for_a_blob_painter_and_lower_when_the_image_matters():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [])
    model = load_sam_med3d(STANDIN_DIR).eval()
    loop = ClickLoop(model, cfg.prompts, make_training_loss("dicece"), with_encoder=True)
    images, labels = _crops()
    real = loop.image_dependence(labels, images)
    assert real.shape == (2, 2) and ((real >= 0) & (real <= 1)).all()
    # a blob painter: an encoder whose output does not depend on its input
    with torch.no_grad():
        fixed = loop.image_encoder(images[:1])
    loop.image_encoder = _Encoder(lambda x: fixed.expand(x.shape[0], -1, -1, -1, -1))
    assert torch.equal(loop.image_dependence(labels, images), torch.ones(2, 2))
    # an encoder that passes the image through (pooled to the embedding grid, on every channel)
    c, g = fixed.shape[1], fixed.shape[-1]
    loop.image_encoder = _Encoder(lambda x: 20.0 * torch.nn.functional.adaptive_avg_pool3d(x, g).expand(-1, c, -1, -1, -1))
    assert (loop.image_dependence(labels, images) < 0.9).all()
    assert loop.image_dependence(labels, None) is None


class _Encoder(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
