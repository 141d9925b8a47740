import argparse
import importlib
import pkgutil
import subprocess
import sys

import sam_l1dfl.commands
from sam_l1dfl import cli


def _command_modules() -> list[str]:
    """Every subcommand module of the commands package (``infer_auto`` -> ``infer-auto``)."""
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(sam_l1dfl.commands.__path__)
                  if not m.name.startswith("_"))


def test_help_lists_every_subcommand_with_its_own_help():
    names = _command_modules()
    assert len(names) >= 10 and "infer-auto" in names
    assert sorted(sam_l1dfl.commands.NAMES) == names  # a new module must be listed, a listed one must exist
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(sam_l1dfl.commands.NAMES)  # data-flow order
    listed = {c.dest: c.help for c in sub._choices_actions}
    text = parser.format_help()
    for name in names:
        help_ = importlib.import_module(sam_l1dfl.commands.module_of(name)).HELP
        assert listed[name] == help_  # the help string is the command module's HELP, written once
        assert f"    {name} " in text or f"    {name}\n" in text
        assert sub.choices[name].description == help_


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "sam_l1dfl.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip().startswith("sam-l1dfl ")


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    from sam_l1dfl.errors import InputError

    class Fake:
        HELP = "fake"

        @staticmethod
        def add_arguments(p):
            p.add_argument("path")

        @staticmethod
        def run(args):
            raise InputError(args.path, "is not a NIfTI file")

    import types

    mod = types.ModuleType("sam_l1dfl.commands._fake")
    mod.HELP, mod.add_arguments, mod.run = Fake.HELP, Fake.add_arguments, Fake.run
    monkeypatch.setitem(sys.modules, "sam_l1dfl.commands._fake", mod)
    monkeypatch.setattr(cli, "COMMANDS", {"fake": "sam_l1dfl.commands._fake"})
    rc = cli.main(["fake", str(tmp_path / "x.txt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert err.startswith("error: ") and "x.txt: is not a NIfTI file" in err


def test_device_option_is_shared_by_every_command_that_has_one():
    from sam_l1dfl.commands import DEVICE_HELP

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    with_device = [name for name, p in sub.choices.items()
                   if any("--device" in a.option_strings and a.help.startswith(DEVICE_HELP) for a in p._actions)]
    assert sorted(with_device) == ["finetune", "infer", "infer-auto"]


# ---------------------------------------------------------------------- one convention (#16 §6)
def test_every_command_takes_quiet_and_verbose_and_the_old_no_progress():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        if name == "weights":  # flags on its sub-subcommands (download, check)
            continue
        opts = {o: a for a in p._actions for o in a.option_strings}
        assert {"--quiet", "-q", "--verbose", "-v", "--no-progress"} <= set(opts), name
        assert opts["--no-progress"].dest == "quiet" and opts["--no-progress"].help == argparse.SUPPRESS, name
        assert "--no-progress" not in p.format_help()  # deprecated: accepted, not shown


def test_python_dash_m_runs_the_command():
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("sam-l1dfl ")
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl", "infer", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "examples:" in r.stdout and "--quiet" in r.stdout


def test_infer_takes_the_files_slicer_saves_or_their_folder(tmp_path, capsys):
    import json

    import numpy as np
    import SimpleITK as sitk

    from sam_l1dfl.prompts import PromptConfig, generate_prompts, prompts_to_markups

    a = np.zeros((16, 20, 24), np.uint8)
    a[6:10, 8:12, 8:13] = 1
    a[2:4, 15:18, 16:20] = 1
    pet = sitk.GetImageFromArray((a * 8.0 + 1.0).astype(np.float32))
    pet.SetSpacing((3.0, 3.0, 4.0))
    lab = sitk.GetImageFromArray(a)
    lab.CopyInformation(pet)
    case = tmp_path / "data" / "c1"
    case.mkdir(parents=True)
    sitk.WriteImage(pet, str(case / "SUV.nii.gz"))
    sitk.WriteImage(lab, str(case / "SEG.nii.gz"))
    doc = prompts_to_markups(generate_prompts(lab, pet, PromptConfig(n_neg=1, boxes=True), case_id="c1"))
    saved = tmp_path / "prompts" / "c1"  # a per-case folder, as --prompts-dir takes it
    saved.mkdir(parents=True)
    for mk in doc["markups"]:  # what Slicer saves: a file per node
        (saved / f"{mk['name']}.mrk.json").write_text(json.dumps({"@schema": doc["@schema"], "markups": [mk]}))
    files = sorted(str(f) for f in saved.iterdir())
    assert len(files) == 4
    for i, prompts in enumerate((files, [str(saved)])):
        out = tmp_path / f"pred{i}.nii.gz"
        assert cli.main(["infer", "--method", "threshold", "--pet", str(case / "SUV.nii.gz"), "--prompts", *prompts,
                         "--out", str(out), "--quiet"]) == 0
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"pred{i}_lesions.nii.gz")))
        assert set(np.unique(labels)) == {0, 1, 2}  # both lesions, each with its own label
    assert cli.main(["infer", "--method", "threshold", "--data", str(tmp_path / "data"), "--prompts-dir",
                     str(tmp_path / "prompts"), "--out-dir", str(tmp_path / "pred_dir"), "--quiet"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred_dir" / "lesions" / "c1.nii.gz")))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert "1 case(s) segmented (2 lesions" in capsys.readouterr().out
    # a click added in Slicer (default label, no description): placed, and said so in one warning line
    pos = saved / "c1 positive.mrk.json"
    d = json.loads(pos.read_text())
    d["markups"][0]["controlPoints"].append({"label": "c1 positive-3", "position": [33.0, 32.0, 34.0]})
    pos.write_text(json.dumps(d))
    r = subprocess.run([sys.executable, "-m", "sam_l1dfl", "infer", "--method", "threshold", "--pet",
                        str(case / "SUV.nii.gz"), "--prompts", str(saved), "--out", str(tmp_path / "p3.nii.gz"),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines == [f"warning: {pos}: point c1 positive-3 at (33.0, 32.0, 34.0) mm names no lesion: joined lesion 2 "
                     "(inside its box, 6 mm from its centre)"], r.stderr
