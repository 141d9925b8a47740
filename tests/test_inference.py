"""Prompted inference: exact geometry back onto the PET grid, crop sharing, labels, bad input, CLI.

The geometry tests inject a decoder (``Segmenter(decoder=...)``): an oracle that outputs the
reference lesion (cut into the crop by a nearest-neighbour resample) as crop-space logits: whatever
the crop placement, the output must reproduce the reference SEG on the original (lps, flipped,
oblique) grid.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sam_l1dfl.data.geometry import resample_to_crop
from sam_l1dfl.data.lesions import label_components
from sam_l1dfl.data.synthetic import generate_case, write_case
from sam_l1dfl.errors import CheckpointError, InputError, PromptError
from sam_l1dfl import inference
from sam_l1dfl.inference import Segmenter, plan_windows
from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir
from sam_l1dfl.prompts import generate_prompts

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "best"
    save_model_dir(build_sam_med3d(SamMed3DConfig.preset("tiny")), d, {"input_mode": "pet"})
    return d


@pytest.fixture(scope="module")
def cases():
    return {k: generate_case(11, direction=k, n_lesions=5) for k in ("lps", "flipped", "oblique")}


def _components(seg: sitk.Image) -> sitk.Image:
    comps, _ = label_components(sitk.GetArrayViewFromImage(seg) > 0, 18)
    img = sitk.GetImageFromArray(comps.astype(np.uint32))
    img.CopyInformation(seg)
    return img


def _oracle(comp_img: sitk.Image):
    """A ``Segmenter`` decoder that returns +-8 logits of the reference lesion under the first point."""

    def decode(emb, points, labels, boxes, mask_input, crops):
        out = []
        for b, g in enumerate(crops):
            inst = resample_to_crop(comp_img, g, "nearest", 0)
            i, j, k = np.clip(np.rint(points[b, 0].cpu().numpy()).astype(int), 0, np.asarray(g.size) - 1)
            lid = inst[i, j, k]
            out.append(np.where((inst == lid) & (lid > 0), 8.0, -8.0).astype(np.float32))
        logits = torch.from_numpy(np.stack(out))[:, None]
        return torch.zeros_like(mask_input), logits, torch.ones(len(crops))

    return decode


def _fast_encoder(seg: Segmenter, monkeypatch):
    c, g = seg.model.config.out_chans, seg.model.config.grid_size
    monkeypatch.setattr(seg.model, "encode", lambda x: torch.zeros(x.shape[0], c, g, g, g))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)  # NIfTI stores float32


# ------------------------------------------------------------------------------ planning
def test_plan_windows_every_lesion_fits_with_margin():
    rng = np.random.default_rng(0)
    c = rng.uniform(-150, 150, size=(30, 3))
    lo, hi = c - rng.uniform(0, 10, (30, 3)), c + rng.uniform(0, 10, (30, 3))
    size, sp, margin = 128, 1.5, 16
    shared = plan_windows(lo, hi, size, sp, margin, share=True)
    alone = plan_windows(lo, hi, size, sp, margin, share=False)
    assert len(alone) == 30 and sorted(m for w in alone for m in w.members) == list(range(30))
    assert sorted(m for w in shared for m in w.members) == list(range(30))  # each lesion exactly once
    assert len(shared) < 30
    half = (size - 1) / 2 * sp - margin * sp
    for w in shared:
        for m in w.members:
            assert np.all(lo[m] >= np.asarray(w.center_lps) - half - 1e-6)
            assert np.all(hi[m] <= np.asarray(w.center_lps) + half + 1e-6)
    # a single lesion's window is centred on its own extent (where an unshared crop goes)
    one = plan_windows(lo[:1], hi[:1], size, sp, margin)
    np.testing.assert_allclose(one[0].center_lps, (lo[0] + hi[0]) / 2)


# ------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("direction", ["lps", "flipped", "oblique"])
def test_crop_space_mask_maps_back_onto_the_lesion(model_dir, cases, direction, monkeypatch):
    case = cases[direction]
    comp = _components(case.seg)
    prompts = generate_prompts(case.seg, case.pet)
    seg = Segmenter(model_dir, device="cpu", batch_size=2, decoder=_oracle(comp))
    _fast_encoder(seg, monkeypatch)
    res = {}
    for share in (True, False):
        res[share] = seg.segment(case.pet, prompts=prompts, share_crops=share)
    for r in res.values():
        _same_grid(r.labels, case.pet)
        _same_grid(r.mask, case.pet)
    ref = sitk.GetArrayFromImage(case.seg)
    lab = sitk.GetArrayFromImage(res[True].labels)
    assert _dice(lab, ref) > 0.95
    comps = sitk.GetArrayFromImage(comp)
    ids = [l.lesion_id for l in prompts.lesions]
    assert sorted(d["label"] for d in res[True].lesions) == ids  # one label per prompt
    for lid in ids:  # each label sits on its own lesion
        assert _dice(lab == lid, comps == lid) > 0.9
    # crop sharing: fewer encoder passes, the same masks
    n = len(ids)
    assert res[False].report.encoder_passes == n
    assert res[True].report.encoder_passes < n
    assert _dice(sitk.GetArrayFromImage(res[False].labels), lab) > 0.99


def test_overlapping_lesions_highest_probability_wins(model_dir, cases, monkeypatch):
    case = cases["lps"]
    prompts = generate_prompts(case.seg, case.pet)
    prompts.lesions = prompts.lesions[:2]

    def decode(emb, points, labels, boxes, mask_input, crops):  # whole-crop masks, distinct confidence
        s, b = crops[0].size[0], len(crops)
        logits = (1.0 + torch.arange(b, dtype=torch.float32))[:, None, None, None, None].expand(-1, 1, s, s, s)
        return torch.zeros_like(mask_input), logits.clone(), torch.ones(b)

    seg = Segmenter(model_dir, device="cpu", decoder=decode)
    _fast_encoder(seg, monkeypatch)
    res = seg.segment(case.pet, prompts=prompts, probabilities=True)
    lab = sitk.GetArrayFromImage(res.labels)
    p1 = sitk.GetArrayFromImage(res.probabilities[1])
    p2 = sitk.GetArrayFromImage(res.probabilities[2])
    both = (p1 >= 0.5) & (p2 >= 0.5)
    assert both.any()
    np.testing.assert_array_equal(lab[both], np.where(p2[both] > p1[both], 2, 1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res.mask), (lab > 0).astype(np.uint8))


def test_the_steps_compose_to_segment(model_dir, cases, monkeypatch):
    """``Segmenter.segment`` is its five steps, each a module of ``sam_l1dfl.inference``: run by
    hand (shared crops, one refinement click, through the decoder seam) they give its labels."""
    from sam_l1dfl.data.io import Case
    from sam_l1dfl.inference.decoding import LesionDecoder
    from sam_l1dfl.inference.encoding import CropEncoder
    from sam_l1dfl.inference.lesions import PromptResolver
    from sam_l1dfl.inference.mapping import LabelCanvas
    from sam_l1dfl.inference.planning import crop_batches, plan_crops
    from sam_l1dfl.inference.results import InferenceReport

    case = cases["oblique"]
    oracle = _oracle(_components(case.seg))
    seg = Segmenter(model_dir, device="cpu", decoder=oracle, share_crops=True)
    _fast_encoder(seg, monkeypatch)
    want = seg.segment(case.pet, reference=case.seg, clicks=1)
    cfg, rep = seg.preprocess, InferenceReport()
    resolver = PromptResolver(cfg, seg.uses_boxes)  # 1. lesions
    pet, _, ref = resolver.check_images(case.pet, None, case.seg)
    lesions = resolver.lesions(pet, resolver.prompts(pet, None, ref, False), rep)
    comp = resolver.reference_components(ref, lesions, rep)
    encoder = CropEncoder(seg.model, cfg, seg.device)  # 3. encoder
    decoder = LesionDecoder(oracle, cfg.crop_size, seg.model.config.low_res_size, seg.device, encoder.sync)  # 4.
    canvas = LabelCanvas(pet, seg.threshold)  # 5. back onto the PET grid
    for batch in crop_batches(plan_crops(lesions, cfg, seg.margin_vox, True), seg.batch_size, cfg):  # 2. crops
        emb = encoder.encode(Case("c", pet), batch.geometries, rep)
        for (_, wi, li), (logits, _, _) in zip(batch.items, decoder.decode(batch, emb, lesions, comp, 1, rep)):
            canvas.add(logits, batch.geometries[wi], lesions[li].label, lesions[li].lesion_id)
    assert (rep.encoder_passes, rep.decoder_passes) == (want.report.encoder_passes, want.report.decoder_passes)
    assert rep.encoder_passes < len(lesions)  # crops were shared
    assert np.array_equal(canvas.labels, sitk.GetArrayFromImage(want.labels))
    assert _dice(canvas.labels, sitk.GetArrayFromImage(case.seg)) > 0.95


# ------------------------------------------------------------------------------ real model
def test_tiny_model_end_to_end_with_clicks(model_dir, cases):
    case = generate_case(5, n_lesions=2, direction="oblique")
    seg = Segmenter(model_dir, device="cpu")
    res = seg.segment(case.pet, reference=case.seg, clicks=1)
    _same_grid(res.labels, case.pet)
    n = len(_components_ids(case.seg))
    r = res.report
    assert r.n_lesions == n and r.decoder_passes == 2 * n and r.encoder_passes <= n
    assert set(np.unique(sitk.GetArrayFromImage(res.labels))) <= set(range(n + 1))
    assert all(d["n_points"] == 2 for d in res.lesions)  # initial point + one refinement click
    assert "encoder passes" in r.summary() and r.total_seconds > 0


def _components_ids(seg):
    comps, n = label_components(sitk.GetArrayViewFromImage(seg) > 0, 18)
    return list(range(1, n + 1))


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_one_line_errors(model_dir, cases, tmp_path):
    case = cases["lps"]
    seg = Segmenter(model_dir, device="cpu")
    prompts = generate_prompts(case.seg, case.pet)
    # a point outside the image
    from dataclasses import replace

    p0 = prompts.lesions[0].points[0]
    prompts.lesions[0].points[0] = replace(p0, world=tuple(np.asarray(p0.world) + [0, 0, 2000.0]))
    with pytest.raises(PromptError, match="outside the PET image"):
        seg.segment(case.pet, prompts=prompts)
    # CT given to a PET-only checkpoint; clicks without a reference
    with pytest.raises(InputError, match="PET only"):
        seg.segment(case.pet, case.ct, prompts=generate_prompts(case.seg, case.pet))
    with pytest.raises(InputError, match="reference"):
        seg.segment(case.pet, prompts=generate_prompts(case.seg, case.pet), clicks=2)
    # pet+ct checkpoint: missing CT; input mode that does not fit the model's channels
    d2 = tmp_path / "petct"
    save_model_dir(build_sam_med3d(SamMed3DConfig.preset("tiny", in_chans=2)), d2, {"input_mode": "pet+ct"})
    with pytest.raises(InputError, match="needs a CT"):
        Segmenter(d2, device="cpu").segment(case.pet, prompts=generate_prompts(case.seg, case.pet))
    d3 = tmp_path / "bad"
    save_model_dir(build_sam_med3d(SamMed3DConfig.preset("tiny")), d3, {"input_mode": "pet+ct"})
    with pytest.raises(CheckpointError, match="channel"):
        Segmenter(d3, device="cpu")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        Segmenter(tmp_path / "nope", device="cpu")
    for e in (PromptError, InputError, CheckpointError):
        assert issubclass(e, ValueError)


# ------------------------------------------------------------------------------ CLI
def test_cli_single_and_dataset(model_dir, cases, tmp_path, monkeypatch, capsys):
    from sam_l1dfl.cli import main
    from sam_l1dfl.model.sam import SamMed3D

    data = tmp_path / "data"
    for k in ("flipped", "oblique"):
        c = cases[k]
        c.case_id = f"case_{k}"
        write_case(c, data)
    monkeypatch.setattr(SamMed3D, "encode", lambda self, x: torch.zeros(x.shape[0], 48, 8, 8, 8))

    comp_of = {}

    def decode(*args):
        return _oracle(comp_of["img"])(*args)

    # the command builds its Segmenter from sam_l1dfl.inference: give it the oracle decoder
    monkeypatch.setattr(inference, "Segmenter", functools.partial(Segmenter, decoder=decode))
    case_dir = data / "case_oblique"
    comp_of["img"] = _components(sitk.ReadImage(str(case_dir / "SEG.nii.gz")))
    out = tmp_path / "one" / "pred.nii.gz"
    rc = main(["infer", "--pet", str(case_dir / "SUV.nii.gz"), "--prompts-from-mask", str(case_dir / "SEG.nii.gz"),
               "--checkpoint", str(model_dir), "--out", str(out), "--verbose", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "encoder passes" in text and "seconds" in text
    pred, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(case_dir / "SEG.nii.gz"))
    _same_grid(pred, ref)
    assert _dice(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref)) > 0.95
    assert (tmp_path / "one" / "pred_lesions.nii.gz").is_file()
    rep = json.loads((tmp_path / "one" / "pred.json").read_text())
    assert rep["report"]["encoder_passes"] >= 1 and len(rep["lesions"]) == rep["report"]["n_lesions"]
    assert rep["weights"] == "other" and rep["method"] == "sam"  # the weights' origin, as summary.json says it
    assert not list((tmp_path / "one").glob(".*part*"))  # atomic writes left nothing behind

    # a whole data set (one case per run keeps the oracle unambiguous)
    seg_imgs = {k: _components(sitk.ReadImage(str(data / f"case_{k}" / "SEG.nii.gz"))) for k in ("flipped", "oblique")}
    for k in ("flipped", "oblique"):  # one case per run keeps the oracle unambiguous
        sub = tmp_path / f"data_{k}"
        write_case(cases[k], sub, organs=False)
        comp_of["img"] = seg_imgs[k]
        od = tmp_path / "out"
        assert main(["infer", "--data", str(sub), "--prompts-from-mask", "--checkpoint", str(model_dir),
                     "--out-dir", str(od), "--no-progress"]) == 0
        p = sitk.ReadImage(str(od / f"case_{k}.nii.gz"))
        r = sitk.ReadImage(str(data / f"case_{k}" / "SEG.nii.gz"))
        _same_grid(p, r)
        assert _dice(sitk.GetArrayFromImage(p), sitk.GetArrayFromImage(r)) > 0.95
        assert (od / "lesions" / f"case_{k}.nii.gz").is_file()
    summ = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summ["failed"] == [] and summ["lesions"] >= 1

    # one-line errors, exit 2
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    rc = main(["infer", "--pet", str(bad), "--prompts-from-mask", str(case_dir / "SEG.nii.gz"),
               "--checkpoint", str(model_dir), "--out", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "bad.nii.gz" in err and "\n" not in err
    rc = main(["infer", "--pet", str(case_dir / "SUV.nii.gz"), "--checkpoint", str(model_dir),
               "--out", str(tmp_path / "x.nii.gz")])
    assert rc == 2 and "--prompts" in capsys.readouterr().err


def test_run_directory_is_accepted_as_checkpoint(model_dir):
    from sam_l1dfl.inference import Segmenter, checkpoint_preprocess

    run_dir = model_dir.parent  # runs/<name>/ holding best/
    cfg_run, meta_run, _ = checkpoint_preprocess(run_dir)
    cfg_best, meta_best, _ = checkpoint_preprocess(model_dir)
    assert cfg_run == cfg_best and meta_run == meta_best
    seg = Segmenter(run_dir)
    assert seg.input_mode == "pet"


# ------------------------------------------------------------------------------ library: data sets, clicks
def test_segment_dataset_writes_every_case_and_returns_a_summary(model_dir, cases, tmp_path, monkeypatch):
    from sam_l1dfl.data.discovery import discover_cases

    data = tmp_path / "data"
    case = cases["lps"]
    case.case_id = "case_a"
    write_case(case, data, organs=False)
    none = generate_case(3, case_id="case_b", n_lesions=0)
    write_case(none, data, organs=False)
    seg = Segmenter(model_dir, device="cpu", decoder=_oracle(_components(case.seg)))
    _fast_encoder(seg, monkeypatch)
    seen = []
    out = tmp_path / "out"
    summary = seg.segment_dataset(discover_cases(data).cases, out, from_mask=True, data=data, progress=False,
                                  on_case=lambda cid, res: seen.append((cid, res.report.n_lesions)))
    n = len(_components_ids(case.seg))
    assert summary.segmented == ["case_a"] and seen == [("case_a", n)]
    assert summary.empty == ["case_b: no lesion in the reference mask"] and summary.failed == []
    assert summary.lesions == n and summary.encoder_passes >= 1 and summary.cases == 2
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary.to_dict()))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_a.nii.gz")))
    assert _dice(pred, sitk.GetArrayFromImage(case.seg)) > 0.95
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lesions" / "case_b.nii.gz"))).any()
    assert json.loads((out / "case_b.json").read_text())["lesions"] == []
    # every per-case JSON names the weights' origin with summary.json's field and words
    assert seg.weights == "other"
    for name in ("case_a.json", "case_b.json"):
        doc = json.loads((out / name).read_text())
        assert {k: doc[k] for k in ("method", "checkpoint", "weights")} == \
            {k: summary.to_dict()[k] for k in ("method", "checkpoint", "weights")}, name
    with pytest.raises(InputError, match="no case found"):
        seg.segment_dataset([], out, from_mask=True, data=data)


def test_refinement_clicks_run_the_click_loop_through_the_injected_decoder(model_dir, cases, monkeypatch):
    case = generate_case(5, n_lesions=1)
    oracle = _oracle(_components(case.seg))
    calls = []

    def decoder(emb, points, labels, boxes, mask_input, crops):
        calls.append((points.shape[1], float(mask_input.mean())))
        low, logits, iou = oracle(emb, points, labels, boxes, mask_input, crops)
        return mask_input + 1.0, logits, iou  # the next mask prompt: must come back in the next call

    seg = Segmenter(model_dir, device="cpu", decoder=decoder)
    _fast_encoder(seg, monkeypatch)
    res = seg.segment(case.pet, reference=case.seg, clicks=3)
    assert calls == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 3.0)]  # one point more per click, mask prompt fed back
    assert res.report.decoder_passes == 4 and res.lesions[0]["n_points"] == 4
    assert res.report.seconds["clicks"] > 0
