"""``sam-l1dfl weights download|check``: the published SAM-Med3D-turbo weights.

::

    sam-l1dfl weights download                      # -> checkpoints/sam_med3d_turbo.pth + .sha256
    sam-l1dfl weights download --force              # fetch again and replace (after the check)
    sam-l1dfl weights check checkpoints/sam_med3d_turbo.pth   # a file put there by hand

The work is done by :mod:`sam_l1dfl.model.download`; this module parses and prints.
"""

from __future__ import annotations

import argparse

HELP = "download the published SAM-Med3D-turbo weights from Hugging Face, or check a weights file"
#: Shown by ``--help``; each one parses in tests/test_help_examples.py (tests/test_weights.py runs them).
EXAMPLES = (
    "sam-l1dfl weights download",
    "sam-l1dfl weights check checkpoints/sam_med3d_turbo.pth",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sam_l1dfl.commands import add_output_flags
    from sam_l1dfl.formats import WEIGHTS_DIR, WEIGHTS_FILE, WEIGHTS_REPO

    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    d = sub.add_parser("download", help="fetch the weights through the Hugging Face cache, check them, "
                                        "record their SHA-256",
                       description="Fetch a weights file with huggingface_hub (HF_HOME, HF_HUB_CACHE and "
                                   "HF_HUB_OFFLINE apply), check its keys and shapes, copy it into --out-dir "
                                   "and write <file>.sha256.  An existing file is checked, not replaced, "
                                   "unless --force.")
    d.add_argument("--out-dir", default=WEIGHTS_DIR, help=f"destination folder (default {WEIGHTS_DIR})")
    d.add_argument("--repo", default=WEIGHTS_REPO, help=f"Hugging Face repository (default {WEIGHTS_REPO})")
    d.add_argument("--filename", default=WEIGHTS_FILE, help=f"file in the repository (default {WEIGHTS_FILE})")
    d.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    d.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE or HF_HOME/hub)")
    d.add_argument("--force", action="store_true", help="download again and replace an existing file once the new one passes")
    d.add_argument("--trust", action="store_true", help="allow files that need full unpickling (a source you trust only)")
    add_output_flags(d, verbose="also print the architecture read from the key shapes")
    c = sub.add_parser("check", help="check a weights file (e.g. put in place by hand) and record its SHA-256",
                       description="Check a weights file's keys and shapes with the safe loader, compare it "
                                   "with <file>.sha256 if present, and write that record.")
    c.add_argument("checkpoint", help="a .pth/.pt/.safetensors file")
    c.add_argument("--trust", action="store_true", help="allow files that need full unpickling (a source you trust only)")
    add_output_flags(c, verbose="also print the architecture read from the key shapes")


def run(args: argparse.Namespace) -> int:
    from sam_l1dfl.model.download import download_weights, record_weights

    if args.action == "download":
        res = download_weights(args.out_dir, repo_id=args.repo, filename=args.filename, revision=args.revision,
                               cache_dir=args.cache_dir, force=args.force, trust=args.trust, progress=not args.quiet)
        chk, record = res.check, res.sha256_file
        how = (f"downloaded from {args.repo}" + (f" at revision {res.revision}" if res.revision else "")
               if res.downloaded else "already present (kept; --force downloads again)")
        print(f"{res.path}: {how}")
    else:
        chk, record = record_weights(args.checkpoint, trust=args.trust)
    print(f"{chk.path}: {chk.describe()}")
    print(f"sha256: {chk.sha256} (recorded in {record})")
    if args.verbose:
        print("architecture: " + ", ".join(f"{k}={v}" for k, v in chk.config.to_dict().items()))
    if not chk.official:
        print(f"warning: {chk.path}: keys and shapes differ from the official vit_b_ori manifest; "
              "sam_med3d_turbo.pth has exactly those (324 tensors, 100,509,616 values)")
    return 0
