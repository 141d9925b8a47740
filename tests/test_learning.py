"""Fine-tuning the packaged stand-in visibly works, with the recommended L1DFL and with DiceFocal (issue #20).

The tests fine-tune the decoder of ``sam_l1dfl/resources/sam_med3d_standin`` with the demo's config
(cached embeddings, 1 click per sample) on the learning benchmark's seed-0 training cases (8 phantom
cases, seed 100) and validate on the first 4 cases of its validation set (seed 4000), which the
decoder never trains on.  ``dice_before`` is the stand-in zero-shot on those held-out lesions,
``dice_after`` the fine-tuned decoder on the same lesions and clicks (deterministic).

The margins: see ``MARGINS`` (half the measured gain, +0.074 and +0.072 on 10 held-out lesions).  A
decoder that learns nothing (lr 1e-9) gains exactly 0 (0.286 -> 0.286) and fails.
The stand-in's size calibration is pinned too (``test_standin_size_calibration``), and the goal it
does not meet yet is an expected failure that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam_l1dfl.compare.benchmark import VAL_SEED
from sam_l1dfl.compare.learning import SIZE_CALIBRATION_RANGE, parse_variant, run_name, size_calibration
from sam_l1dfl.data.cohort import HELDOUT_SEED, generate_cohort
from sam_l1dfl.data.synthetic import generate_dataset
from sam_l1dfl.devices import cpu_threads
from sam_l1dfl.model.standin import STANDIN_DIR, standin_available
from sam_l1dfl.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]

#: Held-out 1-click Dice gain required per variant (see the module docstring); MEASURED holds what
#: this budget gave on this split (2-core CPU, 2026-12-04).  The margin is half the measured gain,
#: leaving room for platform noise; a decoder that does not learn gains 0.
#: The authors' L1DFL (batch histogram) falls on this split at this budget (0.286 -> 0.142, measured
#: with this test's setup; BENCHMARKS.md "L1DFL on decoder crops" shows why), which is why the
#: ROI-histogram variant is the one tested.  Two torch threads, as measured (the thread count
#: changes float rounding, which 100 steps can grow).
MEASURED = {"l1dfl[histogram_scope=roi]": (0.286, 0.360), "dicefocal": (0.286, 0.358)}
MARGINS = {k: 0.5 * (after - before) for k, (before, after) in MEASURED.items()}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    generate_dataset(root / "train", 8, seed=100, n_oblique=1, progress=False)  # bench_learning's seed-0 data
    generate_dataset(root / "val", 4, seed=VAL_SEED, progress=False)
    return root


def _finetune(split, variant: str, *extra: str):
    loss, over = parse_variant(variant)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.root={split / 'train'}", f"data.val_root={split / 'val'}", "data.max_val_crops=null",
        f"output_dir={split / 'runs'}", f"name={run_name(variant + ''.join(extra))}",
        "model.checkpoint=standin", f"loss.name={loss}", "train.max_steps=100", "train.val_every=0",
        "train.save_every=0", *over, *extra])
    with cpu_threads(2):
        return train(cfg, progress=False)


@pytest.mark.parametrize("variant", list(MARGINS))
def test_finetuning_the_standin_beats_zero_shot(split, variant):
    res = _finetune(split, variant)
    before, after = res.dice_before["dice@1"], res.dice_after["dice@1"]
    assert res.dice_before["n_lesions"] >= 8
    assert after - before >= MARGINS[variant], f"{variant}: held-out 1-click Dice {before:.3f} -> {after:.3f}"


def test_standin_is_packaged_and_small():
    assert standin_available(), "sam_l1dfl/resources/sam_med3d_standin is missing (scripts/pretrain_standin.py)"
    size = sum(f.stat().st_size for f in STANDIN_DIR.iterdir())
    assert size <= 8_000_000
    card = (STANDIN_DIR / "MODEL_CARD.md").read_text()
    assert "synthetic" in card.lower() and "not for real images" in card.lower()


def test_outputs_say_they_came_from_the_standin(tmp_path):
    from sam_l1dfl.data.discovery import discover_cases
    from sam_l1dfl.inference import Segmenter
    from sam_l1dfl.metrics.dataset import evaluate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 1, seed=5000, progress=False)  # one case, 5 lesions
    seg = Segmenter("standin", device="cpu")
    assert seg.weights == "standin"
    summary = seg.segment_dataset(discover_cases(data).cases, tmp_path / "pred", from_mask=True, progress=False)
    assert summary.to_dict()["weights"] == "standin"
    assert json.loads((tmp_path / "pred" / f"{summary.segmented[0]}.json").read_text())["weights"] == "standin"
    res = evaluate_dataset(tmp_path / "pred", data, out_dir=tmp_path / "report", mips=False, n_resamples=10,
                           progress=False)
    said = res.summary["inputs"]["masks_from"]["all"]
    assert "STAND-IN" in said and "standin" in said
    assert "STAND-IN" in (tmp_path / "report" / "report.html").read_text()


def test_exported_standin_card_says_what_it_is(tmp_path):
    from sam_l1dfl.cli import main

    assert main(["export", "--checkpoint", "standin", "--format", "safetensors", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 0
    card = (tmp_path / "x" / "README.md").read_text()
    assert card.startswith("# Stand-in SAM-Med3D (synthetic-only)")
    assert "STAND-IN" in card and "RANDOM" not in card


def test_standin_needs_the_tiny_preset(tmp_path):
    from sam_l1dfl.errors import ConfigError

    with pytest.raises(ConfigError, match="model.preset"):
        load_config(ROOT / "configs" / "psma.yaml", ["model.checkpoint=standin"])


def test_cohort_folder_holds_one_cohort(tmp_path):
    generate_cohort(tmp_path, 2, seed=0)
    first = (tmp_path / "pre_000" / "SUV.nii.gz").read_bytes()
    generate_cohort(tmp_path, 1, seed=1)  # another cohort in the same folder: nothing of the old one is left
    assert sorted(p.name for p in tmp_path.glob("pre_*")) == ["pre_000"]
    assert (tmp_path / "pre_000" / "SUV.nii.gz").read_bytes() != first
    assert json.loads((tmp_path / "dataset.json").read_text())["seed"] == 1


#: The packaged stand-in's zero-shot size calibration (median predicted/reference volume per size
#: bin) on the first 4 held-out cohort cases, as measured when it was installed (2026-12-04).
CALIBRATION = {"<0.5 mL": (10, 17.78), "0.5-2 mL": (3, 1.352), "2-10 mL": (3, 0.395), ">=10 mL": (7, 0.093)}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    generate_cohort(root / "held", 4, seed=HELDOUT_SEED)
    return size_calibration("standin", root / "held", root / "out")


def test_standin_size_calibration(calibration):
    """Pinned: the shipped stand-in's calibration, within a factor 1.25 of what was measured."""
    for name, want in CALIBRATION.items():
        got = calibration["bins"][name]
        assert got["n"] == want[0], name
        assert want[1] / 1.25 <= got["median_ratio"] <= want[1] * 1.25, (name, got)


@pytest.mark.xfail(strict=True, reason="issue #20 §1: the stand-in's one-click masks are the same small blob "
                                       "whatever the object's size (BENCHMARKS.md, 'Stand-in v2'); a stand-in "
                                       "that meets the goal makes this pass, and the strict xfail then fails")
def test_standin_size_calibration_goal(calibration):
    lo, hi = SIZE_CALIBRATION_RANGE
    assert all(lo <= b["median_ratio"] <= hi for b in calibration["bins"].values() if b["n"]), calibration["bins"]
