"""``sam-l1dfl inspect CHECKPOINT``: format, SHA-256, key summary and config of a checkpoint."""

from __future__ import annotations

import argparse

from sam_l1dfl.commands import add_output_flags

HELP = "load a checkpoint and report its keys and SHA-256"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl inspect checkpoints/sam_med3d_turbo.pth",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pth/.pt/.safetensors file or a model run directory")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow arbitrary unpickling (only for files from a source you trust)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_output_flags(parser, verbose="list every missing, unexpected and mismatched key")


def run(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from sam_l1dfl.model.checkpoint import read_checkpoint
    from sam_l1dfl.model.config import SamMed3DConfig
    from sam_l1dfl.model.weights import BOX_KEYS, fit_state_dict, infer_config, skeleton, summarise_keys

    sd, fmt, stored_cfg, sha = read_checkpoint(args.checkpoint, trust=args.trust)
    cfg = stored_cfg or infer_config(sd, args.checkpoint)
    expected = skeleton(cfg).state_dict()
    _, new, missing, unexpected, mismatched = fit_state_dict(sd, expected)
    groups = Counter(k.split(".", 1)[0] for k in sd)
    per_group = {g: sum(v.numel() for k, v in sd.items() if k.split(".", 1)[0] == g) for g in groups}
    dtypes = Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    official = SamMed3DConfig.preset("vit_b_ori")
    report = {
        "file": str(args.checkpoint),
        "format": fmt,
        "sha256": sha,
        "tensors": len(sd),
        "values": sum(v.numel() for v in sd.values()),
        "dtypes": dict(dtypes),
        "groups": {g: {"tensors": n, "values": per_group[g]} for g, n in groups.items()},
        "config_source": "stored with the weights" if stored_cfg else "inferred from the key shapes",
        "config": cfg.to_dict(),
        "is_official_vit_b_ori": cfg.replace(use_boxes=False) == official and not any(k in sd for k in BOX_KEYS),
        "fits_model": not (missing or unexpected or mismatched),
        "missing": missing,
        "unexpected": unexpected,
        "shape_mismatches": [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in mismatched],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"file:      {report['file']}")
    print(f"format:    {fmt}")
    print(f"sha256:    {sha}")
    print(f"tensors:   {report['tensors']} ({report['values']:,} values; {', '.join(f'{d} x{n}' for d, n in dtypes.items())})")
    for g, info in report["groups"].items():
        print(f"  {g:<16} {info['tensors']:>4} tensors {info['values']:>13,} values")
    print(f"config ({report['config_source']}):")
    for k, v in cfg.to_dict().items():
        print(f"  {k}: {v}")
    print(f"official vit_b_ori layout: {'yes' if report['is_official_vit_b_ori'] else 'no'}")
    if new:
        print("extensions beyond the file: " + "; ".join(new))
    if report["fits_model"]:
        print("keys: all fit the model")
    else:
        if missing:
            print(f"missing: {len(missing)}: {', '.join(missing) if args.verbose else summarise_keys(missing)}")
        if unexpected:
            print(f"unexpected: {len(unexpected)}: "
                  + (", ".join(unexpected) if args.verbose else summarise_keys(unexpected)))
        for line in report["shape_mismatches"] if args.verbose else report["shape_mismatches"][:10]:
            print(f"shape mismatch: {line}")
    return 0
