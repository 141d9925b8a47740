"""The ``sam-l1dfl`` subcommands, one module each.

Subcommand ``x-y`` lives in ``sam_l1dfl/commands/x_y.py`` and exposes ``HELP`` (its one-line
help, the only place it is written), ``add_arguments(parser)`` and ``run(args) -> int``.  A command
parses its arguments, calls the stage's Python API (which does the work and returns a summary),
and prints; it imports heavy modules inside ``run`` so that ``sam-l1dfl --help`` stays fast.
"""

#: The subcommands, in the order ``sam-l1dfl --help`` lists them (the data flow).
NAMES = ("synth", "data", "prompts", "inspect", "finetune", "infer", "infer-auto", "evaluate", "export", "mip")

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


def module_of(name: str) -> str:
    """The module of subcommand ``name``: ``infer-auto`` -> ``sam_l1dfl.commands.infer_auto``."""
    return f"{__name__}.{name.replace('-', '_')}"


__all__ = ["DATA_HELP", "DEVICE_HELP", "NAMES", "PET_HELP", "case_inputs", "image_output", "module_of"]
