"""The trust boundary (issue 13): every bad input or output path stops with one line naming it.

Each row of :data:`CASES` runs ``sam-l1dfl`` in-process (``sam_l1dfl.cli.main``) on a fresh copy
of tiny synthetic inputs and asserts

* the exit status (non-zero; 2 for a user mistake),
* exactly one ``error:`` line on stderr, naming the file (or the option) at fault,
* no output left under its final name (and no new file at all, temporary files included),
* every input unchanged, by SHA-256.

Rows are ``Case(id, argv, names, outputs)``: ``argv(P)`` builds the command line from the paths
``P`` of the copied tree (:class:`Tree`), ``names(P)`` is the text the error line must contain and
``outputs(P)`` the paths that must not exist afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from sam_l1dfl.cli import main
from sam_l1dfl.data.synthetic import CT_NAME, PET_NAME, SEG_NAME, generate_dataset

pytestmark = pytest.mark.timeout(120)

CASE = "synth_000"


# ---------------------------------------------------------------------------------- the inputs
def _build(root: Path) -> None:
    """One tiny synthetic case, a flat manifest copy of it, prompts, a tiny SAM and a tiny CNN."""
    from sam_l1dfl.cnn.config import load_cnn_config
    from sam_l1dfl.cnn.networks import build_network
    from sam_l1dfl.cnn.train import model_meta, save_cnn_dir
    from sam_l1dfl.data.io import read_image
    from sam_l1dfl.model import SamMed3DConfig, build_sam_med3d, save_model_dir
    from sam_l1dfl.prompts import generate_prompts, save_prompts

    data = root / "data"
    generate_dataset(data, 1, seed=3, progress=False)
    case = data / CASE
    # a flat folder + manifest: the PETs are <case>.nii.gz, what `infer --out-dir` would write
    flat = root / "flat"
    flat.mkdir()
    for src, dst in ((PET_NAME, f"{CASE}.nii.gz"), (CT_NAME, f"{CASE}_ct.nii.gz"), (SEG_NAME, f"{CASE}_seg.nii.gz")):
        shutil.copy(case / src, flat / dst)
    with open(flat / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "pet", "ct", "label"])
        w.writerow([CASE, f"{CASE}.nii.gz", f"{CASE}_ct.nii.gz", f"{CASE}_seg.nii.gz"])
    pr = root / "prompts"
    pr.mkdir()
    save_prompts(generate_prompts(read_image(case / SEG_NAME), read_image(case / PET_NAME),
                                  image_path=case / PET_NAME, case_id=CASE), pr / f"{CASE}.json")
    torch.manual_seed(0)
    save_model_dir(build_sam_med3d(SamMed3DConfig.preset("tiny")), root / "sam", {"input_mode": "pet"})
    cfg = load_cnn_config(None, ["network.name=unet", "network.width=0.125", "augment.crop_size=32",
                                 "preprocess.spacing=8.0"])
    save_cnn_dir(build_network(cfg.network.name, cfg.network.width, cfg.augment.crop_size, cfg.network.overrides),
                 root / "cnn", model_meta(cfg))
    (root / "text.nii.gz").write_text("this is not an image\n")
    (root / "afile").write_text("a file, not a folder\n")
    (root / "tiny.yaml").write_text(Path("configs/tiny.yaml").read_text().replace("root: data/synth", f"root: {data}"))


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust") / "tree"
    root.mkdir()
    _build(root)
    return root


#: the paths of the input tree, relative to its root (``Tree(root).pet`` ...)
PATHS = {
    "data": "data", "case": f"data/{CASE}", "pet": f"data/{CASE}/{PET_NAME}", "ct": f"data/{CASE}/{CT_NAME}",
    "seg": f"data/{CASE}/{SEG_NAME}", "flat": "flat", "manifest": "flat/manifest.csv",
    "prompts": f"prompts/{CASE}.json", "sam": "sam", "cnn": "cnn", "text": "text.nii.gz", "afile": "afile",
    "yaml": "tiny.yaml", "w": "work",  # w: an empty work folder
}


@dataclass
class Tree:
    """Paths of one case's copy of the inputs: ``P.pet``, ``P.manifest``, ... (see :data:`PATHS`)."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        if name not in PATHS:
            raise AttributeError(name)
        return self.root / PATHS[name]


# ---------------------------------------------------------------------------------- the harness
def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``sam-l1dfl argv`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


@dataclass
class Case:
    id: str
    argv: Callable[[Tree], list]
    names: Callable[[Tree], "str | Path"]  # what the one error line must contain
    outputs: Callable[[Tree], list] = lambda P: []  # must not exist afterwards (unless they are inputs)
    rc: int = 2
    new_files_ok: bool = False  # data-set commands may write the cases that worked
    setup: "Callable[[Tree], object] | None" = None  # makes the bad inputs (before the inputs are hashed)


INFER = ["infer", "--checkpoint"]
AUTO = ["infer-auto", "--checkpoint"]


# bad inputs made by a row's setup (T2: truncated images, skipped checks)
def _cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _derived(src: Path, dst: Path, fn=None, origin_shift: float = 0.0, spacing=None) -> Path:
    """``dst``: ``src`` with its array mapped by ``fn``, its origin moved, or its spacing changed."""
    import SimpleITK as sitk

    im = sitk.ReadImage(str(src))
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(im))) if fn is not None else sitk.Image(im)
    out.CopyInformation(im)
    out.SetOrigin(tuple(o + origin_shift for o in im.GetOrigin()))
    if spacing is not None:
        out.SetSpacing(spacing)
    sitk.WriteImage(out, str(dst), True)
    return dst


def _pred_dir(P: Tree) -> None:
    (P.w / "pred").mkdir()
    shutil.copy(P.seg, P.w / "pred" / f"{CASE}.nii.gz")


def _ras_prompts(P: Tree) -> None:
    """The prompt file with RAS world values under its "LPS" label, the LPS index kept."""
    import json

    doc = json.loads(P.prompts.read_text())
    pt = doc["lesions"][0]["points"][0]
    pt["world"] = [-pt["world"][0], -pt["world"][1], pt["world"][2]]
    P.prompts.with_name("ras.json").write_text(json.dumps(doc))


def _negative_roi(P: Tree) -> None:
    import json

    from sam_l1dfl.prompts.slicer import MARKUPS_SCHEMA

    w = json.loads(P.prompts.read_text())["lesions"][0]["points"][0]["world"]
    roi = {"type": "ROI", "name": "lesion 1 box", "coordinateSystem": "LPS", "center": w,
           "size": [-8.0, 10.0, 10.0], "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    (P.w / "roi.mrk.json").write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [roi]}))


def _nan_in_lesion(P: Tree) -> None:
    import SimpleITK as sitk

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(P.seg)))

    def f(a):
        a = a.astype("float32")
        a[tuple(int(v[0]) for v in (seg > 0).nonzero())] = float("nan")
        return a

    _derived(P.pet, P.pet, f)
    _pred_dir(P)


# bad inputs made by a row's setup (T1: checkpoints, resume)
def _truncated_pth(P: Tree) -> None:
    torch.save({"w": torch.zeros(64)}, P.w / "m.pth", _use_new_zipfile_serialization=False)
    (P.w / "m.pth").write_bytes((P.w / "m.pth").read_bytes()[:60])


def _widen_cnn(P: Tree) -> None:
    import json

    doc = json.loads((P.cnn / "config.json").read_text())
    doc["training"]["config"]["network"]["width"] = 0.25  # the weights are for width 0.125
    (P.cnn / "config.json").write_text(json.dumps(doc))


class _Payload:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _planted_state(P: Tree) -> None:
    """A run directory (as ``finetune`` names it) whose saved state carries a pickle payload."""
    state = P.w / "tiny" / "states" / "step_00000001"
    state.mkdir(parents=True)
    (state / "run_state.json").write_text("{}")
    torch.save({"state": _Payload(P.w / "MARKER")}, state / "optimizer.bin")


CASES: list[Case] = [
    # --- cases that already passed before issue 13
    Case("infer-missing-pet", lambda P: INFER + [P.sam, "--pet", P.w / "nope.nii.gz", "--prompts", P.prompts,
                                                 "--out", P.w / "pred.nii.gz"],
         lambda P: P.w / "nope.nii.gz", lambda P: [P.w / "pred.nii.gz"]),
    Case("infer-text-as-pet", lambda P: INFER + [P.sam, "--pet", P.text, "--prompts-from-mask", P.seg,
                                                 "--out", P.w / "pred.nii.gz"],
         lambda P: P.text, lambda P: [P.w / "pred.nii.gz"]),
    Case("mip-text-as-pet", lambda P: ["mip", "--pet", P.text, "--out", P.w / "fig.png"],
         lambda P: P.text, lambda P: [P.w / "fig.png"]),
    Case("mip-not-png", lambda P: ["mip", "--pet", P.pet, "--out", P.w / "fig.jpg"],
         lambda P: P.w / "fig.jpg", lambda P: [P.w / "fig.jpg"]),
    Case("infer-auto-text-as-ct", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.text, "--out", P.w / "p.nii.gz"],
         lambda P: P.text, lambda P: [P.w / "p.nii.gz"]),
    Case("infer-missing-checkpoint", lambda P: INFER + [P.w / "nope", "--pet", P.pet, "--prompts", P.prompts,
                                                        "--out", P.w / "pred.nii.gz"],
         lambda P: P.w / "nope", lambda P: [P.w / "pred.nii.gz"]),
    Case("export-onto-its-checkpoint", lambda P: ["export", "--checkpoint", P.sam, "--format", "safetensors",
                                                  "--out", P.sam],
         lambda P: P.sam),
    Case("evaluate-missing-gt", lambda P: ["evaluate", "--pred-dir", P.flat, "--gt-dir", P.w / "nope",
                                           "--out", P.w / "rep"],
         lambda P: P.w / "nope", lambda P: [P.w / "rep" / "metrics.csv"]),
    Case("synth-out-is-a-file", lambda P: ["synth", "--out", P.afile, "--cases", "1"], lambda P: P.afile),

    # --- section 3: never overwrite an input
    Case("infer-out-is-the-pet", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask", P.seg,
                                                    "--out", P.pet],
         lambda P: P.pet),
    Case("infer-report-onto-the-prompts", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                             "--out", P.prompts.with_name(f"{CASE}.nii.gz")],
         lambda P: P.prompts, lambda P: [P.prompts.with_name(f"{CASE}.nii.gz")]),
    Case("infer-out-is-the-reference-mask", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask", P.seg,
                                                               "--out", P.seg],
         lambda P: P.seg),
    Case("infer-out-dir-holds-the-pets", lambda P: INFER + [P.sam, "--data", P.manifest, "--prompts-from-mask",
                                                            "--out-dir", P.flat, "--no-progress"],
         lambda P: P.flat / f"{CASE}.nii.gz", lambda P: [P.flat / "summary.json"]),
    Case("infer-out-dir-holds-the-prompts", lambda P: INFER + [P.sam, "--data", P.data, "--prompts-dir",
                                                               P.prompts.parent, "--out-dir", P.prompts.parent,
                                                               "--no-progress"],
         lambda P: P.prompts, lambda P: [P.prompts.parent / "summary.json"]),
    Case("infer-auto-out-is-the-pet", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.ct, "--out", P.pet],
         lambda P: P.pet),
    Case("infer-auto-out-dir-holds-the-pets", lambda P: AUTO + [P.cnn, "--data", P.manifest, "--out-dir", P.flat,
                                                                "--no-progress"],
         lambda P: P.flat / f"{CASE}.nii.gz", lambda P: [P.flat / "summary.json"]),
    Case("data-json-onto-the-manifest", lambda P: ["data", P.manifest, "--json", P.manifest], lambda P: P.manifest),
    Case("finetune-run-dir-is-the-data", lambda P: ["finetune", "--config", P.yaml, f"output_dir={P.root}",
                                                    "name=data", "--quiet"],
         lambda P: P.data, lambda P: [P.data / "config.yaml"]),

    # --- section 4: a parent that is a file, suffixes, devices, overrides
    Case("mip-parent-is-a-file", lambda P: ["mip", "--pet", P.pet, "--out", P.afile / "fig.png"],
         lambda P: P.afile),
    Case("data-json-parent-is-a-file", lambda P: ["data", P.data, "--json", P.afile / "r.json"], lambda P: P.afile),
    Case("prompts-parent-is-a-file", lambda P: ["prompts", "--data", P.data, "--out", P.afile / "p", "--no-progress"],
         lambda P: P.afile),
    Case("infer-parent-is-a-file", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                      "--out", P.afile / "pred.nii.gz"],
         lambda P: P.afile),
    Case("infer-data-parent-is-a-file", lambda P: INFER + [P.sam, "--data", P.data, "--prompts-from-mask",
                                                           "--out-dir", P.afile / "o", "--no-progress"],
         lambda P: P.afile),
    Case("infer-auto-parent-is-a-file", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.ct,
                                                          "--out", P.afile / "p.nii.gz"],
         lambda P: P.afile),
    Case("infer-auto-data-parent-is-a-file", lambda P: AUTO + [P.cnn, "--data", P.data, "--out-dir", P.afile / "o",
                                                               "--no-progress"],
         lambda P: P.afile),
    Case("evaluate-parent-is-a-file", lambda P: ["evaluate", "--pred-dir", P.flat, "--gt-dir", P.data,
                                                 "--out", P.afile / "rep", "--quiet", "--no-mips"],
         lambda P: P.afile),
    Case("export-parent-is-a-file", lambda P: ["export", "--checkpoint", P.sam, "--format", "sam-med3d",
                                               "--out", P.afile / "m.pth"],
         lambda P: P.afile),
    Case("export-dir-parent-is-a-file", lambda P: ["export", "--checkpoint", P.sam, "--format", "safetensors",
                                                   "--out", P.afile / "m"],
         lambda P: P.afile),
    Case("synth-parent-is-a-file", lambda P: ["synth", "--out", P.afile / "d", "--cases", "1", "--no-progress"],
         lambda P: P.afile),
    Case("finetune-output-dir-parent-is-a-file", lambda P: ["finetune", "--config", P.yaml,
                                                            f"output_dir={P.afile / 'runs'}", "--quiet"],
         lambda P: P.afile),
    Case("infer-out-suffix", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                "--out", P.w / "pred.txt"],
         lambda P: P.w / "pred.txt", lambda P: [P.w / "pred.txt", P.w / "pred.json"]),
    Case("infer-device-nonsense", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                     "--out", P.w / "pred.nii.gz", "--device", "nonsense"],
         lambda P: "--device", lambda P: [P.w / "pred.nii.gz"]),
    Case("infer-auto-device-nonsense", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.ct,
                                                         "--out", P.w / "p.nii.gz", "--device", "nonsense"],
         lambda P: "--device", lambda P: [P.w / "p.nii.gz"]),
    Case("infer-device-cuda-index-out-of-range", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                                    "--out", P.w / "pred.nii.gz",
                                                                    "--device", "cuda:99"],
         lambda P: "--device", lambda P: [P.w / "pred.nii.gz"]),
    Case("finetune-device-nonsense", lambda P: ["finetune", "--config", P.yaml, f"output_dir={P.w}",
                                                "--device", "nonsense", "--quiet"],
         lambda P: "--device", lambda P: [P.w / "tiny"]),
    Case("finetune-bad-override-is-blamed-on-the-command-line",
         lambda P: ["finetune", "--config", P.yaml, f"output_dir={P.w}", "train.batch_size=0", "--quiet"],
         lambda P: "command line: train.batch_size=0", lambda P: [P.w / "tiny"]),
    Case("finetune-unknown-override-key-is-blamed-on-the-command-line",
         lambda P: ["finetune", "--config", P.yaml, f"output_dir={P.w}", "train.bacth_size=2", "--quiet"],
         lambda P: "command line: train.bacth_size=2", lambda P: [P.w / "tiny"]),

    # --- T1 cases (checkpoints, resume)
    # section 4: a file that is not a torch.save file, with or without --trust; a truncated one
    Case("inspect-text-pth", lambda P: ["inspect", P.w / "m.pth"], lambda P: f"{P.w / 'm.pth'}: not a PyTorch checkpoint",
         setup=lambda P: (P.w / "m.pth").write_text("this is not a checkpoint\n")),
    Case("inspect-text-pth-trusted", lambda P: ["inspect", "--trust", P.w / "m.pth"],
         lambda P: f"{P.w / 'm.pth'}: not a PyTorch checkpoint",
         setup=lambda P: (P.w / "m.pth").write_text("this is not a checkpoint\n")),
    Case("inspect-truncated-pth-trusted", lambda P: ["inspect", "--trust", P.w / "m.pth"],
         lambda P: f"{P.w / 'm.pth'}: not a PyTorch checkpoint: truncated", setup=_truncated_pth),
    Case("infer-text-pth", lambda P: INFER + [P.w / "m.pth", "--pet", P.pet, "--prompts", P.prompts,
                                              "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'm.pth'}: not a PyTorch checkpoint", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: (P.w / "m.pth").write_text("this is not a checkpoint\n")),
    Case("export-truncated-pth-trusted", lambda P: ["export", "--checkpoint", P.w / "m.pth", "--trust",
                                                    "--format", "safetensors", "--out", P.w / "m"],
         lambda P: f"{P.w / 'm.pth'}: not a PyTorch checkpoint: truncated", lambda P: [P.w / "m"],
         setup=_truncated_pth),
    # section 4: a CNN model directory whose weights do not fit its config.json
    Case("infer-auto-mismatched-cnn", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.ct, "--out", P.w / "p.nii.gz"],
         lambda P: f"{P.cnn / 'model.safetensors'}: weights do not fit", lambda P: [P.w / "p.nii.gz"],
         setup=_widen_cnn),
    # section 1: a state holding a pickle payload is refused before anything is read or written
    Case("finetune-resume-planted-payload", lambda P: ["finetune", "--config", P.yaml, f"output_dir={P.w}",
                                                       "--resume", "--quiet"],
         lambda P: f"{P.w / 'tiny' / 'states' / 'step_00000001' / 'optimizer.bin'}: refusing to unpickle",
         lambda P: [P.w / "MARKER"], setup=_planted_state),

    # --- T2 cases (truncated images, skipped checks)
    # section 2: half of a .nii.gz as PET, CT or SEG; a data-set command fails the case (exit 1)
    Case("infer-truncated-pet", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts", P.prompts,
                                                   "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.pet}: truncated or corrupt", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _cut_half(P.pet)),
    Case("infer-truncated-seg-as-reference", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask", P.seg,
                                                                "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.seg}: truncated or corrupt", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _cut_half(P.seg)),
    Case("infer-data-truncated-pet", lambda P: INFER + [P.sam, "--data", P.data, "--prompts-from-mask",
                                                        "--out-dir", P.w / "o", "--no-progress"],
         lambda P: f"{CASE}: {P.pet}: truncated or corrupt", lambda P: [P.w / "o" / f"{CASE}.nii.gz"],
         rc=1, new_files_ok=True, setup=lambda P: _cut_half(P.pet)),
    Case("infer-auto-truncated-ct", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.ct, "--out", P.w / "p.nii.gz"],
         lambda P: f"{P.ct}: truncated or corrupt", lambda P: [P.w / "p.nii.gz"], setup=lambda P: _cut_half(P.ct)),
    Case("infer-auto-data-truncated-ct", lambda P: AUTO + [P.cnn, "--data", P.data, "--out-dir", P.w / "o",
                                                           "--no-progress"],
         lambda P: f"{CASE}: {P.ct}: truncated or corrupt", lambda P: [P.w / "o" / f"{CASE}.nii.gz"],
         rc=1, new_files_ok=True, setup=lambda P: _cut_half(P.ct)),
    Case("prompts-truncated-seg", lambda P: ["prompts", "--data", P.data, "--out", P.w / "p", "--no-progress"],
         lambda P: f"{CASE}: {P.seg}: truncated or corrupt", lambda P: [P.w / "p" / f"{CASE}.json"],
         rc=1, setup=lambda P: _cut_half(P.seg)),
    Case("mip-truncated-pet", lambda P: ["mip", "--pet", P.pet, "--out", P.w / "fig.png"],
         lambda P: f"{P.pet}: truncated or corrupt", lambda P: [P.w / "fig.png"], setup=lambda P: _cut_half(P.pet)),
    Case("mip-truncated-mask", lambda P: ["mip", "--pet", P.pet, "--mask", P.seg, "--out", P.w / "fig.png"],
         lambda P: f"{P.seg}: truncated or corrupt", lambda P: [P.w / "fig.png"], setup=lambda P: _cut_half(P.seg)),
    Case("evaluate-truncated-seg", lambda P: ["evaluate", "--pred-dir", P.w / "pred", "--gt-dir", P.data,
                                              "--out", P.w / "rep", "--quiet", "--no-mips"],
         lambda P: f"{P.seg}: truncated or corrupt", lambda P: [P.w / "rep" / "metrics.csv"],
         setup=lambda P: (_pred_dir(P), _cut_half(P.seg))),
    Case("evaluate-truncated-pet", lambda P: ["evaluate", "--pred-dir", P.w / "pred", "--gt-dir", P.data,
                                              "--out", P.w / "rep", "--quiet", "--no-mips"],
         lambda P: f"{P.pet}: truncated or corrupt", lambda P: [P.w / "rep" / "metrics.csv"],
         setup=lambda P: (_pred_dir(P), _cut_half(P.pet))),
    Case("evaluate-truncated-prediction", lambda P: ["evaluate", "--pred-dir", P.w / "pred", "--gt-dir", P.data,
                                                     "--out", P.w / "rep", "--quiet", "--no-mips"],
         lambda P: f"{P.w / 'pred' / f'{CASE}.nii.gz'}: truncated or corrupt", lambda P: [P.w / "rep" / "metrics.csv"],
         setup=lambda P: (_pred_dir(P), _cut_half(P.w / "pred" / f"{CASE}.nii.gz"))),
    # section 5: --prompts-from-mask gets load_case's checks, naming the file
    Case("infer-reference-probability-map", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask",
                                                               P.w / "m.nii.gz", "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'm.nii.gz'}: label has non-integer values", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _derived(P.seg, P.w / "m.nii.gz", lambda a: (a > 0).astype("float32") * 0.5)),
    Case("infer-reference-negative", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask",
                                                        P.w / "m.nii.gz", "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'm.nii.gz'}: label has negative values", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _derived(P.seg, P.w / "m.nii.gz", lambda a: -(a > 0).astype("int16"))),
    Case("infer-reference-all-zero", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask",
                                                        P.w / "m.nii.gz", "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'm.nii.gz'}: the reference mask has no lesion", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _derived(P.seg, P.w / "m.nii.gz", lambda a: a * 0)),
    Case("infer-reference-grid-mismatch", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts-from-mask",
                                                             P.w / "m.nii.gz", "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'm.nii.gz'}: label grid differs from the PET grid", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _derived(P.seg, P.w / "m.nii.gz", origin_shift=7.0)),
    Case("infer-ct-does-not-overlap", lambda P: INFER + [P.sam, "--pet", P.pet, "--ct", P.w / "ct.nii.gz",
                                                         "--prompts-from-mask", P.seg, "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'ct.nii.gz'}: CT does not overlap the PET", lambda P: [P.w / "pred.nii.gz"],
         setup=lambda P: _derived(P.ct, P.w / "ct.nii.gz", origin_shift=5000.0)),
    Case("infer-auto-ct-does-not-overlap", lambda P: AUTO + [P.cnn, "--pet", P.pet, "--ct", P.w / "ct.nii.gz",
                                                             "--out", P.w / "p.nii.gz"],
         lambda P: f"{P.w / 'ct.nii.gz'}: CT does not overlap the PET", lambda P: [P.w / "p.nii.gz"],
         setup=lambda P: _derived(P.ct, P.w / "ct.nii.gz", origin_shift=5000.0)),
    Case("evaluate-nan-in-a-lesion", lambda P: ["evaluate", "--pred-dir", P.w / "pred", "--gt-dir", P.data,
                                                "--out", P.w / "rep", "--quiet", "--no-mips"],
         lambda P: f"{P.pet}: PET contains 1 NaN", lambda P: [P.w / "rep" / "metrics.csv"], setup=_nan_in_lesion),
    Case("evaluate-negative-prediction", lambda P: ["evaluate", "--pred-dir", P.w / "pred", "--gt-dir", P.data,
                                                    "--out", P.w / "rep", "--quiet", "--no-mips"],
         lambda P: f"{P.w / 'pred' / f'{CASE}.nii.gz'}: prediction has negative values",
         lambda P: [P.w / "rep" / "metrics.csv"],
         setup=lambda P: (_pred_dir(P), _derived(P.seg, P.w / "pred" / f"{CASE}.nii.gz",
                                                 lambda a: -(a > 0).astype("int16")))),
    # section 5: prompt files are cross-checked with the image given
    Case("infer-prompts-ras-world-under-lps", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts",
                                                                 P.prompts.with_name("ras.json"),
                                                                 "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.prompts.with_name('ras.json')}: lesion", lambda P: [P.w / "pred.nii.gz"], setup=_ras_prompts),
    Case("infer-slicer-roi-negative-size", lambda P: INFER + [P.sam, "--pet", P.pet, "--prompts",
                                                              P.w / "roi.mrk.json", "--out", P.w / "pred.nii.gz"],
         lambda P: f"{P.w / 'roi.mrk.json'}: ROI 'lesion 1 box': box size must be positive",
         lambda P: [P.w / "pred.nii.gz"], setup=_negative_roi),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_with_one_line(case: Case, pristine_tree, tmp_path, capsys):
    root = tmp_path / "tree"
    shutil.copytree(pristine_tree, root)
    P = Tree(root)
    P.w.mkdir()
    P.yaml.write_text(P.yaml.read_text().replace(str(pristine_tree), str(root)))
    if case.setup is not None:
        case.setup(P)
    before = _files(root)
    rc, out, err = run_cli(case.argv(P), capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == case.rc, (rc, err[-2000:])
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    assert str(case.names(P)) in lines[0], lines[0]
    after = _files(root)
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, f"inputs changed or removed: {changed}"
    if not case.new_files_ok:
        assert sorted(after) == sorted(before), f"new files: {sorted(set(after) - set(before))}"
    for p in case.outputs(P):
        assert str(Path(p).relative_to(root)) in before or not Path(p).exists(), p


def test_the_table_has_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_data_exits_1_when_it_finds_problems(pristine_tree, tmp_path, capsys):
    root = tmp_path / "tree"
    shutil.copytree(pristine_tree / "data", root)
    assert run_cli(["data", root], capsys)[0] == 0
    (root / CASE / SEG_NAME).write_text("not an image")  # an unreadable label is a problem
    rc, out, err = run_cli(["data", root], capsys)
    assert rc == 1, out + err


@pytest.mark.parametrize("spec,expected", [("cpu", "cpu"), (" CPU", "cpu"), (None, None)])
def test_device_parser_accepts_the_documented_names(spec, expected):
    from sam_l1dfl.devices import parse_device

    assert parse_device(spec) == expected  # None: each stage's default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec,expected", [("gpu", "cuda"), ("cuda", "cuda"), ("cuda:0", "cuda:0")])
def test_device_parser_cuda_names(spec, expected):
    from sam_l1dfl.devices import parse_device

    assert parse_device(spec) == expected
