#!/usr/bin/env python
"""Fine-tune SAM-Med3D with Accelerate.

    accelerate launch scripts/finetune.py --config configs/psma.yaml [key=value ...] [--resume]
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune.py --config configs/psma.yaml
    python scripts/finetune.py --config configs/demo.yaml        # one process

User mistakes print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    from sam_l1dfl.commands import finetune as cmd
    from sam_l1dfl.commands import parse_args_with_overrides
    from sam_l1dfl.errors import SamL1dflError

    parser = argparse.ArgumentParser(prog="finetune.py", description=__doc__.split("\n\n")[0])
    cmd.add_arguments(parser)
    args = parse_args_with_overrides(parser, argv)  # key=value anywhere among the flags
    try:
        return cmd.run(args)
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
