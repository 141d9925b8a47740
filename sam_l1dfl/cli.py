"""The ``sam-l1dfl`` command.

Subcommands are thin: each lives in ``sam_l1dfl/commands/<name>.py`` (listed in
:data:`sam_l1dfl.commands.NAMES`) and exposes ``HELP`` (one line, read from there),
``add_arguments(parser)`` and ``run(args) -> int``, calling the stage's Python API, and may list
``EXAMPLES`` (command lines shown under ``--help``; tests/test_help_examples.py runs them).  Command
modules import their stage only when they run, so ``sam-l1dfl --help`` is fast.  User mistakes
(:class:`~sam_l1dfl.errors.SamL1dflError`) print one line and exit 2; warnings print one line,
``warning: <message>``.  ``KEY=VALUE`` overrides may come anywhere among a command's flags
(:func:`~sam_l1dfl.commands.parse_args_with_overrides`).  ``python -m sam_l1dfl`` is this command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings

from sam_l1dfl import __version__
from sam_l1dfl.commands import NAMES, module_of, parse_args_with_overrides
from sam_l1dfl.errors import SamL1dflError

# name -> module.  Order is the data flow.
COMMANDS: dict[str, str] = {name: module_of(name) for name in NAMES}


def _available() -> dict[str, str]:
    out = {}
    for name, mod in COMMANDS.items():
        try:
            found = mod in sys.modules or importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            out[name] = mod
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-l1dfl",
        description="Fine-tune SAM-Med3D on PSMA PET/CT lesions with the L1-weighted Dice Focal Loss.",
    )
    parser.add_argument("--version", action="version", version=f"sam-l1dfl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, mod in _available().items():
        module = importlib.import_module(mod)
        examples = getattr(module, "EXAMPLES", ())
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=mod)
        module.add_arguments(p)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    args = parse_args_with_overrides(parser, argv)
    warnings.formatwarning = _one_line_warning
    try:
        rc = importlib.import_module(args._module).run(args)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
