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
