"""compare_losses: the fold split, the majority vote, per-loss parameters, the negative crops and ``--plan``.

Nothing here trains: the cases are tiny NIfTI volumes written by the test, and ``--plan`` only
reads their labels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _script_helpers import load_script
from sam_l1dfl.compare.folds import majority_vote, make_folds, vote_share
from sam_l1dfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("compare_losses")


def tiny_cases(root: Path, n: int, lesion_free: "set[int]" = frozenset()) -> Path:
    """``n`` cases of 12³ voxels (PET, CT, label) and a ``cases.csv`` manifest."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["case_id,pet,ct,label"]
    for i in range(n):
        pet = np.zeros((12, 12, 12), np.float32)
        ct = np.full((12, 12, 12), -1000, np.int16)
        ct[2:10, 2:10, 2:10] = 40
        lab = np.zeros((12, 12, 12), np.uint8)
        if i not in lesion_free:
            lab[5:7, 5:7, 5:7] = 1
            pet[5:7, 5:7, 5:7] = 8.0
        paths = []
        for kind, a in (("pet", pet), ("ct", ct), ("label", lab)):
            img = sitk.GetImageFromArray(a)
            img.SetSpacing((4.0, 4.0, 4.0))
            f = root / f"c{i:02d}_{kind}.nii.gz"
            sitk.WriteImage(img, str(f))
            paths.append(str(f))
        lines.append(f"c{i:02d}," + ",".join(paths))
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


# ---------------------------------------------------------------------- folds
def test_folds_disjoint_complete_deterministic_stratified():
    ids = [f"c{i:02d}" for i in range(23)]
    has = {c: i % 3 != 0 for i, c in enumerate(ids)}  # 15 with lesions, 8 without
    folds = make_folds(ids, has, 5, seed=7)
    flat = [c for f in folds for c in f]
    assert len(flat) == len(set(flat)) == len(ids) and set(flat) == set(ids)  # disjoint and complete
    assert folds == make_folds(list(reversed(ids)), has, 5, seed=7)  # deterministic, order-free
    assert folds != make_folds(ids, has, 5, seed=8)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    n_les = [sum(has[c] for c in f) for f in folds]
    assert n_les == [3] * 5  # stratified: 15 lesion cases spread evenly
    assert all(f == sorted(f) for f in folds)
    with pytest.raises(ConfigError, match="with lesions"):
        make_folds(ids[:6], {c: c == "c00" for c in ids}, 5)
    with pytest.raises(ConfigError, match=">= 2"):
        make_folds(ids, has, 1)


def test_majority_vote_more_than_half():
    shape = (2, 3)
    masks = [np.zeros(shape, np.uint8) for _ in range(5)]
    # voxel (0, j) is marked by j + ... folds: 0, 1, 2 | (1, j): 3, 4, 5
    for k in range(5):
        for j, votes in enumerate((0, 1, 2)):
            masks[k][0, j] = k < votes
        for j, votes in enumerate((3, 4, 5)):
            masks[k][1, j] = k < votes
    out = majority_vote(masks)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 0], [1, 1, 1]]  # > 2 of 5
    np.testing.assert_allclose(vote_share(masks), [[0, 0.2, 0.4], [0.6, 0.8, 1.0]], atol=1e-6)
    # 4 folds: strict majority is 3 of 4
    assert majority_vote([np.array([1]), np.array([1]), np.array([0]), np.array([0])]).tolist() == [0]
    assert majority_vote([np.array([1]), np.array([1]), np.array([1]), np.array([0])]).tolist() == [1]


# ---------------------------------------------------------------------- per-loss parameters
def test_loss_params_reach_the_loss_and_the_run_config(tmp_path):
    from sam_l1dfl.cnn.train import model_meta
    from sam_l1dfl.compare.runner import plan_comparison, run_config
    from sam_l1dfl.losses import make_training_loss

    data = tiny_cases(tmp_path / "d", 6)
    plan = plan_comparison(data, tmp_path / "o", models=["unet", "sam-med3d"], losses=["dice", "dicefocal", "l1dfl"],
                           budget="small", loss_params={"dice-focal": {"lambda_focal": 2.0}}, write=False,
                           cnn_overrides={"augment": {"crop_size": 32}})
    specs = {s["name"]: s for s in plan["specs"]}
    assert not (tmp_path / "o").exists()  # write=False
    cfg = run_config(specs["unet-dicefocal-s0"])
    assert cfg.loss.params == {"lambda_focal": 2.0}
    assert model_meta(cfg)["loss"] == {"name": "dicefocal", "lambda_focal": 2.0}  # what config.json records
    assert make_training_loss(cfg.loss.name, cfg.loss.params, "softmax").lambda_focal == 2.0
    assert run_config(specs["unet-l1dfl-s0"]).loss.params == {}  # other losses untouched
    assert run_config(specs["sam-med3d-dicefocal-s0"]).loss.params == {"lambda_focal": 2.0}
    # small keeps the existing squared_pred=True default; the paper preset the authors' MONAI defaults
    assert specs["unet-dice-s0"]["loss_arguments"]["squared_pred"] is True
    paper = plan_comparison(data, tmp_path / "o", models=["unet"], losses=["dice", "dicefocal", "dicece", "l1dfl"],
                            budget="paper", folds=2, write=False)
    pspecs = {s["name"]: s for s in paper["specs"]}
    assert run_config(pspecs["unet-dicece-f0"]).loss.params == {"squared_pred": False}
    for loss in ("dice", "dicefocal"):
        cfg = run_config(pspecs[f"unet-{loss}-f0"])
        assert cfg.loss.params == {"squared_pred": False}
        built = make_training_loss(loss, cfg.loss.params, "softmax")
        assert (built.dice if loss == "dicefocal" else built).squared_pred is False
    assert run_config(pspecs["unet-l1dfl-f0"]).loss.params == {}
    # a parameter one loss does not have names that loss (no longer a global override)
    with pytest.raises(ConfigError, match="loss l1dfl: unknown option"):
        plan_comparison(data, tmp_path / "o", models=["unet"], losses=["l1dfl"], budget="small", write=False,
                        loss_params={"l1dfl": {"squared_pred": False}})
    with pytest.raises(ConfigError, match="unknown loss"):
        plan_comparison(data, tmp_path / "o", models=["unet"], budget="small", write=False,
                        loss_params={"tversky": {}})


def test_script_settings_from_command_line_and_yaml(tmp_path):
    mod = _script()
    y = tmp_path / "s.yaml"
    y.write_text("cnn:\n  train:\n    epochs: 7\nloss_params:\n  dice:\n    squared_pred: true\n")
    st = mod.settings(str(y), ["cnn.optim.lr=0.001", "loss_params.dice.smooth_nr=0"])
    assert st == {"cnn": {"train": {"epochs": 7}, "optim": {"lr": 1e-3}},
                  "loss_params": {"dice": {"squared_pred": True, "smooth_nr": 0}}}
    with pytest.raises(ConfigError, match="unknown setting"):
        mod.settings(None, ["train.epochs=3"])


# ---------------------------------------------------------------------- negative crops
def test_crops_come_from_the_body_with_pet_uptake():
    import torch

    from sam_l1dfl.cnn.config import cnn_config_from_dict
    from sam_l1dfl.cnn.train import CropDataset, train_transform

    cfg = cnn_config_from_dict({"network": {"name": "segresnet", "width": 0.125}, "augment": {"crop_size": 8, "num_samples": 16,
                                                                        "pos": 0, "neg": 1, "affine_prob": 0}})
    names = [type(t).__name__ for t in train_transform(cfg).transforms]
    assert names == ["CropForegroundd", "SpatialPadd", "RandCropByPosNegLabeld", "RandAffined"]
    assert set(train_transform(cfg).transforms[-1].padding_mode) == {"reflection"}
    img = np.zeros((2, 40, 40, 40), np.float32)  # CT scaled from [-1024, 1000] HU: air 0
    img[0, 4:36, 4:36, 4:36] = (40 + 1024) / 2024  # body 40 HU
    img[1, 20:24, 20:24, 20:24] = 3.0  # uptake in one small region of the body
    lab = np.zeros((1, 40, 40, 40), np.uint8)
    vol = {"image": img, "label": lab, "ct_range": (-1024.0, 1000.0), "case_id": "x"}
    out = CropDataset([vol], cfg, 0)[0]
    # every negative crop is centred where PET > 0: each 8³ crop holds some uptake
    assert all(float(x[1].max()) == 3.0 for x in out["image"])
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (16, 2, 8, 8, 8)
    old = cnn_config_from_dict({"network": {"name": "segresnet", "width": 0.125}, "augment": {
        "crop_size": 8, "num_samples": 16, "pos": 0, "neg": 1, "affine_prob": 0, "body_hu": None,
        "crop_pet_threshold": None}})
    assert [type(t).__name__ for t in train_transform(old).transforms][0] == "SpatialPadd"
    crops = CropDataset([vol], old, 0)[0]["image"]
    assert any(float(x[1].max()) == 0.0 for x in crops)  # anywhere, air included


# ---------------------------------------------------------------------- --plan
def test_plan_paper_preset_shows_the_authors_settings(tmp_path, capsys):
    data = tiny_cases(tmp_path / "d", 9, lesion_free={3, 7})
    out = tmp_path / "o"
    rc = _script().main(["--data", str(data), "--out", str(out), "--budget", "paper", "--models",
                         "unet,attentionunet", "--plan"])
    text = capsys.readouterr().out
    assert rc == 0 and not out.exists()  # nothing written, nothing trained
    assert "PLAN (nothing is trained): budget paper" in text
    assert "5 folds over the train/validation pool" in text and "stratified by lesion presence" in text
    fold_lines = re.findall(r"^  fold \d: \d+ validation cases \((\d+) with lesions\)", text, re.M)
    assert len(fold_lines) == 5 and all(int(n) >= 1 for n in fold_lines)
    assert "majority vote" in text and "more than 2 of 5" in text and "> 2 of 5" in text
    assert "primary detection criterion: C3" in text
    assert "Dice 0 with any false-positive voxel, 1 without" in text
    runs = re.findall(r"^  ((?:unet|attentionunet)-\w+-f\d): ", text, re.M)
    assert len(runs) == 2 * 3 * 5
    for loss in ("dice", "dicefocal"):
        for line in re.findall(rf"^  unet-{loss}-f\d: .*$", text, re.M):
            assert "squared_pred=False" in line and "softmax=True" in line and "to_onehot_y=True" in line
    assert "squared_pred" not in " ".join(re.findall(r"^  unet-l1dfl-f\d: .*$", text, re.M))
    unet = next(l for l in text.splitlines() if l.startswith("- unet: "))
    for s in ("1000 epochs", "validation every 2 epochs", "lr 0.0002", "cosine-annealed to 0", "mixed precision fp16",
              "128³", "constant blending", "reflection padding", "body CT > 0.0 HU", "PET > 0.0"):
        assert s in unet, s
    att = next(l for l in text.splitlines() if l.startswith("- attentionunet: "))
    assert "192³" in att and "batch 2 volumes" in att
    assert "epochs: 1000" in text and "val_every: 2" in text and "min_lr: 0.0" in text  # the full configs
    assert "Wilcoxon" in text and "Bonferroni" in text
    # a key=value override reaches every run's config
    assert _script().main(["--data", str(data), "--out", str(out), "--budget", "paper", "--models", "unet",
                           "--plan", "cnn.train.epochs=3"]) == 0
    assert "- unet: 3 epochs" in capsys.readouterr().out


def test_plan_errors(tmp_path, capsys):
    data = tiny_cases(tmp_path / "d", 6)
    mod = _script()
    assert mod.main(["--data", str(data), "--out", str(tmp_path / "o"), "--folds", "3", "--seeds", "2",
                     "--plan"]) == 2
    assert "choose folds" in capsys.readouterr().err
    assert mod.main(["--data", str(data), "--out", str(tmp_path / "o"), "--plan", "cnn.train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    # the documented seed command still works with the paper preset: --seeds means one split
    assert mod.main(["--data", str(data), "--out", str(tmp_path / "o"), "--budget", "paper", "--models", "unet",
                     "--seeds", "3", "--plan"]) == 0
    assert "3 seed(s) per (model, loss)" in capsys.readouterr().out


# ---------------------------------------------------------------------- folds end to end
@pytest.mark.slow
def test_out_holding_an_input_is_refused_before_any_work(tmp_path, capsys):
    data = tiny_cases(tmp_path / "d", 4)
    out = tmp_path / "out"
    out.mkdir()
    cfg = out / "settings.yaml"
    cfg.write_text("cnn:\n  train:\n    epochs: 1\n")
    before = cfg.read_bytes()
    rc = _script().main(["--data", str(data), "--out", str(out), "--config", str(cfg), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "would overwrite the input" in err[0] and str(cfg) in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["settings.yaml"] and cfg.read_bytes() == before


def test_folds_and_ensemble_end_to_end(tmp_path):
    import json

    from sam_l1dfl.compare.sweep import run_comparison
    from sam_l1dfl.data.io import read_mask
    from sam_l1dfl.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "synth", 5, seed=1, progress=False)
    tiny = {"preprocess": {"spacing": 8.0}, "network": {"width": 0.125}, "augment": {"crop_size": 32},
            "train": {"epochs": 1, "batch_size": 1, "val_every": 1, "save_every": 1}}
    out = tmp_path / "o"
    s = run_comparison(tmp_path / "synth", out, models=["unet"], losses=["dice", "l1dfl"], budget="small", folds=2,
                       isolate=False, cnn_overrides=tiny, loss_params={"dice": {"squared_pred": False}},
                       progress=False, log=lambda m: None)
    sp = json.loads((out / "splits.json").read_text())
    assert len(sp["folds"]) == 2 and sorted(sum(sp["folds"], [])) == sp["train"] and not sp["val"]
    for loss in ("dice", "l1dfl"):
        base = out / "pred" / "unet" / loss
        for cid in sp["test"]:
            folds = [read_mask(base / f"fold{k}" / f"{cid}.nii.gz")[1] for k in range(2)]
            ens = read_mask(base / "ensemble" / f"{cid}.nii.gz")[1]
            np.testing.assert_array_equal(ens, folds[0] & folds[1])  # > 1 of 2: both
        res = json.loads((base / "ensemble" / "result.json").read_text())
        assert res["fold"] == "ensemble" and [r["case"] for r in res["cases"]] == sp["test"]
        for k in range(2):
            rk = json.loads((out / "runs" / f"unet-{loss}-f{k}" / "result.json").read_text())
            assert rk["fold"] == k
            cfg = json.loads((out / "runs" / f"unet-{loss}-f{k}" / "best" / "config.json").read_text())
            assert cfg["training"]["config"]["data"]["val_cases"] == sp["folds"][k]
            assert cfg["loss"] == ({"name": "dice", "squared_pred": False} if loss == "dice" else {"name": "l1dfl"})
    assert (out / "table.md").is_file() and (out / "folds" / "table.md").is_file()
    assert s["folds"] == 2 and s["lesion_free_dice"] == "nan" and s["primary_criterion"] == "c1"
