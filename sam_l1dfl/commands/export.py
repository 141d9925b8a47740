"""``sam-l1dfl export``: write a model as an official ``.pth``, a safetensors model directory, a
delta on top of a base checkpoint, or two ONNX graphs; or rebuild a model from a delta.

::

    sam-l1dfl export --checkpoint runs/x --format sam-med3d   --out model.pth [--drop-boxes]
    sam-l1dfl export --checkpoint runs/x --format safetensors --out model_dir/
    sam-l1dfl export --checkpoint runs/x --format delta       --base base.pth --out delta.safetensors
    sam-l1dfl export --checkpoint runs/x --format onnx        --out onnx_dir/
    sam-l1dfl export --apply-delta delta.safetensors --base base.pth --out model_dir/ [--format ...]
"""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import add_output_flags
from sam_l1dfl.errors import ConfigError
from sam_l1dfl.formats import EXPORT_FORMATS as FORMATS
from sam_l1dfl.formats import ONNX_OPSET

HELP = "export checkpoints (sam-med3d, safetensors, delta, onnx)"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl export --checkpoint runs/psma_l1dfl --format safetensors --out psma_model/",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="a finetune run directory (runs/<name> -> its best/), a model directory, "
                          "or any .pth/.pt/.safetensors file the loader accepts")
    src.add_argument("--apply-delta", metavar="DELTA",
                     help="rebuild the full model from a delta .safetensors and --base, then write it "
                          "with --format (default safetensors)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="sam-med3d: official {'model_state_dict'} .pth; safetensors: model directory "
                             "with config.json and model card; delta: only the tensors that differ from "
                             "--base; onnx: image-encoder and prompt+decoder graphs")
    parser.add_argument("--out", required=True, metavar="PATH", help="output file (.pth, .safetensors) or directory")
    parser.add_argument("--base", metavar="PATH",
                        help="the checkpoint the fine-tune started from (for --format delta and --apply-delta)")
    parser.add_argument("--drop-boxes", action="store_true",
                        help="sam-med3d: leave out the box-prompt embeddings, which the official layout lacks")
    parser.add_argument("--data-description", metavar="TEXT",
                        help="training-data description for the model card (cohort, scanners, tracer, annotation)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument("--no-verify", action="store_true", help="onnx: skip the onnxruntime comparison")
    parser.add_argument("--trust", action="store_true",
                        help="allow arbitrary unpickling of the inputs (only for files from a source you trust)")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    from sam_l1dfl import export as E  # torch: only when the command runs
    from sam_l1dfl.io_utils import check_output_path

    if args.apply_delta:
        if not args.base:
            raise ConfigError(None, "--apply-delta needs --base (the checkpoint the delta was made against)")
        fmt = args.format or "safetensors"
        if fmt == "delta":
            raise ConfigError(None, "--apply-delta writes a full model: --format sam-med3d, safetensors or onnx")
        check_output_path(args.out, folder=fmt in ("safetensors", "onnx"))  # before any work
        source = E.apply_delta(args.apply_delta, args.base, trust=args.trust)
        base = None
    else:
        if args.format is None:
            raise ConfigError(None, f"--format is required: one of {', '.join(FORMATS)}")
        if args.base and args.format != "delta":
            raise ConfigError(None, "--base only applies to --format delta and --apply-delta")
        fmt = args.format
        check_output_path(args.out, folder=fmt in ("safetensors", "onnx"))  # before any work
        source = args.checkpoint
        base = args.base
    result = E.export_checkpoint(
        source, fmt, args.out, base=base, drop_boxes=args.drop_boxes, trust=args.trust,
        data_description=args.data_description, verify=not args.no_verify, opset=args.opset,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0

