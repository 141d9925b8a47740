"""The ``sam-l1dfl`` subcommands, one module each.

Subcommand ``x-y`` lives in ``sam_l1dfl/commands/x_y.py`` and exposes ``HELP`` (its one-line
help, the only place it is written), ``add_arguments(parser)`` and ``run(args) -> int``.  A command
parses its arguments, calls the stage's Python API (which does the work and returns a summary),
and prints; it imports heavy modules inside ``run`` so that ``sam-l1dfl --help`` stays fast.
Every command takes ``--quiet`` / ``--verbose`` (:func:`add_output_flags`); a command with config
overrides takes ``KEY=VALUE`` words anywhere among its flags (:func:`parse_args_with_overrides`).
"""

#: The subcommands, in the order ``sam-l1dfl --help`` lists them (the data flow).
NAMES = ("dicom", "synth", "data", "prompts", "weights", "inspect", "finetune", "infer", "infer-auto", "evaluate", "export", "mip")

#: Argument help shared by several commands (written once).
PET_HELP = "PET (SUV) image; its grid is the output grid"
DATA_HELP = "data folder (autoPET, nnU-Net) or a .csv/.json manifest"
DEVICE_HELP = "cpu, cuda, cuda:N, gpu (= cuda) or mps (default: cuda when available)"


def image_output(path) -> tuple:
    """``(path, stem, suffix)`` of an output image name; one-line error, before any work, for a
    name SimpleITK cannot write (``pred.txt``)."""
    from pathlib import Path

    from sam_l1dfl.data.io import IMAGE_SUFFIXES, image_suffix, strip_suffix
    from sam_l1dfl.errors import InputError

    p = Path(path)
    suf = image_suffix(p.name)
    if suf is None:
        raise InputError(p, f"not an image file name; use one of {', '.join(IMAGE_SUFFIXES)}")
    return p, strip_suffix(p.name), suf


def case_inputs(cases, data) -> list:
    """Every file a data-set command reads: each case's PET, CT and label, and the manifest."""
    import os

    return [p for c in cases for p in (c.pet, c.ct, c.label)] + ([data] if os.path.isfile(data) else [])


def add_output_flags(parser, verbose: "str | None" = None) -> None:
    """The one pair of output flags every command takes: ``--quiet`` (no progress display) and
    ``--verbose`` (``verbose``: what it adds; None: the command has nothing to add, and the flag
    is accepted but not listed).  Progress is on by default: a bar on a terminal, plain lines in a
    log (:func:`sam_l1dfl.progress.progress`).  ``--no-progress`` is kept as a hidden, deprecated
    spelling of ``--quiet``."""
    import argparse

    g = parser.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress display (by default: a bar on a terminal, a plain line every 30 s in a log)")
    g.add_argument("--verbose", "-v", action="store_true", help=verbose or argparse.SUPPRESS)
    g.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def parse_args_with_overrides(parser, argv=None, dest: str = "overrides"):
    """``parser.parse_args(argv)``, but ``KEY=VALUE`` words are taken anywhere among the flags
    (argparse alone takes them only as one run: ``A=1 --max-steps 3 B=2`` would fail on ``B=2``).
    They are appended, in order, to ``args.<dest>`` (of the chosen subcommand, when it has one);
    any other unknown word is the usual argparse error."""
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, dest):
        words = [w for w in extra if "=" in w and not w.startswith("-")]
        extra = [w for w in extra if w not in words]
        setattr(args, dest, list(getattr(args, dest) or []) + words)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def module_of(name: str) -> str:
    """The module of subcommand ``name``: ``infer-auto`` -> ``sam_l1dfl.commands.infer_auto``."""
    return f"{__name__}.{name.replace('-', '_')}"


__all__ = ["DATA_HELP", "DEVICE_HELP", "NAMES", "PET_HELP", "add_output_flags", "case_inputs", "image_output", "module_of",
           "parse_args_with_overrides"]
