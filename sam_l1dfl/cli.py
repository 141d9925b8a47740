"""The ``sam-l1dfl`` command.

Subcommands are thin: each lives in ``sam_l1dfl/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, calling the stage's
Python API.  Modules are imported only when their subcommand runs, so ``sam-l1dfl --help``
is fast.  User mistakes (:class:`~sam_l1dfl.errors.SamL1dflError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help).  Order is the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sam_l1dfl.commands.synth", "generate the synthetic PSMA PET/CT data set"),
    "data": ("sam_l1dfl.commands.data", "discover cases in a data folder and report problems"),
    "prompts": ("sam_l1dfl.commands.prompts", "generate point/box prompts from lesion masks"),
    "inspect": ("sam_l1dfl.commands.inspect", "load a checkpoint and report its keys and SHA-256"),
    "finetune": ("sam_l1dfl.commands.finetune", "fine-tune the mask decoder (single process)"),
    "infer": ("sam_l1dfl.commands.infer", "prompted inference on PET (and CT) volumes"),
    "infer-auto": ("sam_l1dfl.commands.infer_auto", "automatic whole-scan segmentation with a trained CNN"),
    "evaluate": ("sam_l1dfl.commands.evaluate", "Dice, FPV/FNV and lesion-wise detection metrics"),
    "export": ("sam_l1dfl.commands.export", "export checkpoints (sam-med3d, safetensors, delta, onnx)"),
    "mip": ("sam_l1dfl.commands.mip", "render PET maximum-intensity projections with masks"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        try:
            found = mod in sys.modules or importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            out[name] = (mod, help_)
    return out


def build_parser() -> argparse.ArgumentParser:
    from sam_l1dfl import __version__

    parser = argparse.ArgumentParser(
        prog="sam-l1dfl",
        description="Fine-tune SAM-Med3D on PSMA PET/CT lesions with the L1-weighted Dice Focal Loss.",
    )
    parser.add_argument("--version", action="version", version=f"sam-l1dfl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (mod, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=mod)
        importlib.import_module(mod).add_arguments(p)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    from sam_l1dfl.errors import SamL1dflError

    parser = build_parser()
    args = parser.parse_args(argv)
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
