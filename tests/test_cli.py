import subprocess
import sys

from sam_l1dfl import cli


def test_help_lists_subcommands(capsys):
    parser = cli.build_parser()
    text = parser.format_help()
    assert "synth" in text or "COMMAND" in text


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
    monkeypatch.setattr(cli, "COMMANDS", {"fake": ("sam_l1dfl.commands._fake", "fake")})
    rc = cli.main(["fake", str(tmp_path / "x.txt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert err.startswith("error: ") and "x.txt: is not a NIfTI file" in err
