"""`make demo`: the whole job, end to end, on built-in synthetic PSMA PET/CT data.

    synth (train + held-out test sets) -> prompts -> fine-tune the decoder (DiceFocal, the benchmark's
       pick at this budget, and L1DFL in its best variant beside it; Accelerate)
    -> prompted inference on the held-out set: zero-shot, fine-tuned, and the 41 %-SUVmax
       threshold grown from the same clicks
    -> evaluation (Dice, FPV/FNV, lesion-wise F1, report.html) and one side-by-side picture
    -> export (4 formats)

Starting weights (``--init``, default ``auto``): ``checkpoints/sam_med3d_turbo.pth`` when it is
there (SAM-Med3D-turbo, vit_b_ori), else the packaged synthetic-pretrained stand-in
(``sam_l1dfl/resources/sam_med3d_standin``: synthetic images only).  ``--init random`` starts
from random weights of the tiny architecture (the numbers then say nothing); ``--init PATH``
from any checkpoint.  The banner says which.

    .venv/bin/python scripts/demo.py [--out demo_out] [--cases 8] [--test-cases 8] [--seed 0] [--init auto]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TURBO = ROOT / "checkpoints" / "sam_med3d_turbo.pth"
#: the loss BENCHMARKS.md "Learning benchmark" picked at the demo's budget (8 cases x 150 steps, best
#: mean lesion Dice over 3 seeds; DiceCE ties)
DEMO_VARIANT = "dicefocal"
#: the L1DFL row printed beside it: L1DFL's best variant on decoder crops ("L1DFL on decoder crops")
DEMO_L1DFL_ROW = "l1dfl[histogram_scope=roi]"


def banner(msg: str) -> None:
    print(f"\n=== {msg} " + "=" * max(3, 76 - len(msg)), flush=True)


def loud(msg: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n!! {msg}\n{line}\n", flush=True)


def cli(*args) -> None:
    from sam_l1dfl.cli import main

    argv = [str(a) for a in args]
    print("$ sam-l1dfl " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"demo: `sam-l1dfl {argv[0]}` failed with exit code {rc}")


def _fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    ap.add_argument("--cases", type=int, default=8, help="synthetic training cases (default 8)")
    ap.add_argument("--test-cases", type=int, default=8,
                    help="held-out synthetic test cases (default 8: the first 8 of the learning benchmark's test set)")
    ap.add_argument("--val-cases", type=int, default=6,
                    help="validation cases that pick best/ (default 6; the benchmark's validation set)")
    ap.add_argument("--loss", default=DEMO_VARIANT,
                    help=f"fine-tuning loss variant, NAME[key=value,...] (default {DEMO_VARIANT}: the benchmark's pick "
                         "at this budget)")
    ap.add_argument("--l1dfl-row", default=DEMO_L1DFL_ROW,
                    help=f"the L1DFL variant also fine-tuned for comparison (default {DEMO_L1DFL_ROW}; 'l1dfl' for the "
                         "authors' formula)")
    ap.add_argument("--no-l1dfl-row", action="store_true",
                    help="do not also fine-tune with L1DFL for comparison (saves about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="auto",
                    help="starting weights: auto (turbo if present, else the stand-in), standin, random, or a checkpoint")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("overrides", nargs="*", help="fine-tuning config overrides, key=value")
    args = ap.parse_args(argv)

    import torch

    from sam_l1dfl.compare.benchmark import VAL_SEED
    from sam_l1dfl.compare.learning import (ROW_LABELS, TEST_SEED, TRAIN_SEED_BASE, Row, parse_variant, picture_case,
                                            run_name, score, table, variant_label)
    from sam_l1dfl.errors import InputError
    from sam_l1dfl.lossnames import normalize_loss_name
    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.data.io import read_image
    from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir
    from sam_l1dfl.model import read_model_meta
    from sam_l1dfl.model.standin import ORIGIN_WORDS, STANDIN_NAME, weights_origin
    from sam_l1dfl.model.weights import resolve_model_path
    from sam_l1dfl.training import load_config, train
    from sam_l1dfl.viz import Panel, save_mip_figure

    # the variants, checked before anything runs: the picked loss, and L1DFL beside it
    variants = [args.loss]
    if not args.no_l1dfl_row:
        if normalize_loss_name(parse_variant(args.l1dfl_row)[0]) != "l1dfl":
            raise InputError(None, f"--l1dfl-row {args.l1dfl_row!r}: not an L1DFL variant (l1dfl[key=value,...])")
        if run_name(args.l1dfl_row, args.seed) != run_name(args.loss, args.seed):
            variants.append(args.l1dfl_row)
    for spec in variants:
        normalize_loss_name(parse_variant(spec)[0])  # one error line for an unknown loss or a bad variant

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    # -- starting weights ------------------------------------------------------------------
    overrides = [f"data.root={out / 'synth'}", f"output_dir={out / 'runs'}"]
    init_kind = args.init
    if init_kind == "auto":
        init_kind = "turbo" if TURBO.is_file() else "standin"
    if init_kind == "turbo":
        init = str(TURBO)
        # demo.yaml's lr suits the stand-in; the published weights want the psma.yaml value
        overrides += [f"model.checkpoint={TURBO}", "model.preset=vit_b_ori", "optim.lr=1e-4"]
        banner(f"starting from the published SAM-Med3D-turbo weights: {TURBO}")
    elif init_kind == "standin":
        init = STANDIN_NAME
        overrides += [f"model.checkpoint={STANDIN_NAME}"]
        loud("starting from the packaged STAND-IN model (synthetic-pretrained, sam_l1dfl/resources/"
             "sam_med3d_standin): checkpoints/sam_med3d_turbo.pth is absent. The path zero-shot -> "
             "fine-tuned is real, but the numbers describe the stand-in, not SAM-Med3D "
             "(`sam-l1dfl weights download` fetches turbo).")
    elif init_kind == "random":
        init = str(out / "init_model")
        loud("starting from RANDOM weights of the tiny architecture (--init random): the pipeline runs end "
             "to end, but the Dice numbers say nothing about SAM-Med3D.")
        torch.manual_seed(args.seed)
        cfg0 = load_config(args.config, overrides + list(args.overrides))
        model0 = build_sam_med3d(SamMed3DConfig.preset(cfg0.model.preset))
        if Path(init).exists():
            shutil.rmtree(init)  # the demo's own file from an earlier run
        save_model_dir(model0, init, {"input_mode": cfg0.preprocess.input_mode, "weights_origin": "random",
                                      "preprocess": {"spacing": cfg0.preprocess.spacing},
                                      "note": "random initial weights written by scripts/demo.py"})
        overrides += [f"model.checkpoint={init}", "optim.lr=5e-3"]  # random weights need a high lr
    else:
        init = str(Path(init_kind).resolve())
        overrides += [f"model.checkpoint={init}"]
        banner(f"starting from {init}")
    origin = weights_origin(read_model_meta(resolve_model_path(init)) if Path(resolve_model_path(init)).is_dir()
                            else {}, resolve_model_path(init))

    # -- 1. data ---------------------------------------------------------------------------
    banner("1/7 synthetic PSMA PET/CT data (autoPET layout): training, validation, held-out test")
    t = time.perf_counter()
    synth, val, test = out / "synth", out / "val", out / "test"
    for own in ("synth", "val", "test", "prompts", "pred", "report"):  # the demo's own outputs of an earlier run
        if (out / own).is_dir():
            shutil.rmtree(out / own)
    # the benchmark's data (BENCHMARKS.md, "Learning benchmark"): training set of seed --seed, its validation set
    # (picks best/) and the first --test-cases cases of its held-out test set
    generate_dataset(synth, args.cases, seed=TRAIN_SEED_BASE + args.seed, n_oblique=1, progress=False)
    generate_dataset(val, args.val_cases, seed=VAL_SEED, progress=False)
    generate_dataset(test, args.test_cases, seed=TEST_SEED, n_oblique=1, progress=False)
    for name, d, option in (("training", synth, "--cases"), ("validation", val, "--val-cases"),
                            ("held-out test", test, "--test-cases")):
        meta = json.loads((d / "dataset.json").read_text())
        n_les = sum(len(c.get("lesions", [])) for c in meta["cases"])
        print(f"{name}: {len(meta['cases'])} cases, {n_les} lesions -> {d}")
        if n_les < 2:
            raise InputError(d, f"only {n_les} lesion(s) in the {name} cases: use more cases ({option})")
    overrides += [f"data.val_root={val}", "data.max_val_crops=null"]
    times["data"] = time.perf_counter() - t

    # -- 2. prompts ------------------------------------------------------------------------
    banner("2/7 one click per lesion from the reference masks (JSON + 3D Slicer markups)")
    t = time.perf_counter()
    cli("prompts", "--data", test, "--out", out / "prompts", "--slicer", "--quiet")
    times["prompts"] = time.perf_counter() - t

    # -- 3. fine-tune ----------------------------------------------------------------------
    banner(f"3/7 fine-tune the mask decoder (Accelerate): {', '.join(variant_label(v) for v in variants)}")
    t = time.perf_counter()
    results = {}
    for spec in variants:
        loss, extra = parse_variant(spec)
        cfg = load_config(args.config, overrides + [f"loss.name={loss}", f"name={run_name(spec, args.seed)}",
                                                    *extra, *args.overrides])
        if cfg.run_dir.is_dir() and (cfg.run_dir / "config.yaml").is_file() and out in cfg.run_dir.resolve().parents:
            # the demo's own run from an earlier `make demo`: start afresh instead of refusing
            print(f"replacing the previous demo run {cfg.run_dir}")
            shutil.rmtree(cfg.run_dir)
        results[spec] = train(cfg)
    result = results[args.loss]
    run_dir = Path(result.run_dir)
    times["fine-tune"] = time.perf_counter() - t

    # -- 4. inference ----------------------------------------------------------------------
    banner("4/7 prompted inference on the held-out cases: zero-shot, fine-tuned, 41% SUVmax threshold")
    t = time.perf_counter()
    sources = {"zero-shot": ["--checkpoint", init]}
    sources.update({spec: ["--checkpoint", results[spec].run_dir] for spec in variants})
    sources["threshold"] = ["--method", "threshold"]
    secs = {}
    for tag, how in sources.items():
        t1 = time.perf_counter()
        cli("infer", "--data", test, "--prompts-dir", out / "prompts", *how, "--out-dir", out / "pred" / run_name(tag),
            "--quiet")
        secs[tag] = time.perf_counter() - t1
    times["inference"] = time.perf_counter() - t

    # -- 5. evaluation ---------------------------------------------------------------------
    banner("5/7 evaluation: lesion Dice, autoPET FPV/FNV, lesion-wise F1 (report.html)")
    t = time.perf_counter()
    rows = [Row(tag, None, score(out / "pred" / run_name(tag), test, out_dir=out / "report" / run_name(tag),
                                 mips=True), secs[tag]) for tag in sources]
    times["evaluation"] = time.perf_counter() - t

    # -- 6. picture ------------------------------------------------------------------------
    banner("6/7 one case side by side: reference | zero-shot | fine-tuned | threshold (coronal PET MIPs)")
    t = time.perf_counter()
    cid, note = picture_case(test, out / "pred" / run_name("threshold"))
    pet = read_image(test / cid / "SUV.nii.gz")
    colours = {"reference": "#1f77b4", "zero-shot": "#ff7f0e", args.loss: "#2ca02c", "threshold": "#d62728"}
    panels = [Panel(pet, {"reference": (read_image(test / cid / "SEG.nii.gz"), colours["reference"])},
                    title=f"{cid}: reference")]
    for tag in ("zero-shot", args.loss, "threshold"):
        label = variant_label(tag) if tag in variants else ROW_LABELS[tag]
        panels.append(Panel(pet, {label: (read_image(out / "pred" / run_name(tag) / f"{cid}.nii.gz"), colours[tag])},
                            title=label))
    figure = save_mip_figure(out / "comparison.png", panels, suptitle=f"held-out case {cid}: {note} (start: {origin})")
    print(f"picture: {figure} ({note})")
    times["picture"] = time.perf_counter() - t

    # -- 7. export -------------------------------------------------------------------------
    banner("7/7 export: official SAM-Med3D .pth, safetensors + model card, delta, ONNX")
    t = time.perf_counter()
    exp = out / "export"
    if exp.is_dir() and out in exp.resolve().parents:
        shutil.rmtree(exp)  # the demo's own exports from an earlier run
    cli("export", "--checkpoint", run_dir, "--format", "safetensors", "--out", exp / "safetensors")
    cli("export", "--checkpoint", run_dir, "--format", "sam-med3d", "--out", exp / "sam_med3d_finetuned.pth")
    cli("export", "--checkpoint", run_dir, "--format", "delta", "--base", init, "--out", exp / "delta.safetensors")
    cli("export", "--checkpoint", run_dir, "--format", "onnx", "--out", exp / "onnx")
    times["export"] = time.perf_counter() - t

    # -- summary ---------------------------------------------------------------------------
    banner("summary")
    print(f"start: {ORIGIN_WORDS[origin]}")
    d0, d1 = result.dice_before or {}, result.dice_after or {}
    print(f"fine-tuning: {result.steps} steps; validation crops, 1-click Dice {_fmt(d0.get('dice@1'))} -> "
          f"{_fmt(d1.get('dice@1'))} (best {_fmt(result.best_dice1)} at step {result.best_step})")
    print(f"held-out test cases ({args.test_cases}), one click per lesion, masks on the original PET grid:")
    print(table(rows))
    by = {r.name: r.metrics for r in rows}
    print()
    for spec in variants:
        print(f"{variant_label(spec)} - zero-shot: {by[spec]['lesion_dice'] - by['zero-shot']['lesion_dice']:+.3f} lesion "
              f"Dice; - threshold: {by[spec]['lesion_dice'] - by['threshold']['lesion_dice']:+.3f} lesion Dice, "
              f"{by[spec]['f1_c3'] - by['threshold']['f1_c3']:+.3f} F1 (C3)")
    gain = by[args.loss]["lesion_dice"] - by["zero-shot"]["lesion_dice"]
    print("\ntimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {time.perf_counter() - t0:.0f} s")
    print(f"picture:        {figure}")
    print(f"run directory:  {run_dir}  (TensorBoard: tensorboard --logdir {run_dir})")
    print(f"reports:        {out / 'report'}/<method>/report.html ({', '.join(run_name(t) for t in sources)})")
    print(f"prompt files:   {out / 'prompts'}  (open the .mrk.json files in 3D Slicer)")
    print(f"exports:        {exp}")
    if origin != "turbo":
        print(f"\nReminder: these numbers come from {ORIGIN_WORDS[origin]}.")
    for spec in variants:
        if results[spec].metrics.get("best_is_initial"):
            print(f"note: no validation during the {variant_label(spec)} fine-tuning beat the starting weights, so "
                  "its best/ IS the starting model and its row equals zero-shot; BENCHMARKS.md, \"Learning "
                  "benchmark\", shows when fine-tuning helps and why")
    if gain <= 0 and not result.metrics.get("best_is_initial"):
        print("note: here fine-tuning did not beat zero-shot on the held-out cases; BENCHMARKS.md, \"Learning "
              "benchmark\", has the numbers over seeds, losses and budgets")
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
