"""``sam-l1dfl finetune --config FILE [key=value ...]``: fine-tune in one process.

For several GPUs/nodes use ``accelerate launch scripts/finetune.py`` with the same arguments.
"""

from __future__ import annotations

HELP = "fine-tune the mask decoder (single process)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, metavar="YAML", help="fine-tuning config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=3e-4 prompts.boxes=true")
    parser.add_argument("--resume", action="store_true", help="continue from the latest saved state of the run")
    parser.add_argument("--name", default=None, help="run name (runs/<name>/); same as name=...")
    parser.add_argument("--output-dir", default=None, help="parent of the run directory; same as output_dir=...")
    parser.add_argument("--max-steps", type=int, default=None, help="same as train.max_steps=...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def collect_overrides(args) -> list[str]:
    ov = list(args.overrides or [])
    if args.name is not None:
        ov.append(f"name={args.name}")
    if args.output_dir is not None:
        ov.append(f"output_dir={args.output_dir}")
    if args.max_steps is not None:
        ov.append(f"train.max_steps={args.max_steps}")
    return ov


def run(args) -> int:
    from sam_l1dfl.training import load_config
    from sam_l1dfl.training.loop import train

    cfg = load_config(args.config, collect_overrides(args))
    res = train(cfg, resume=args.resume, progress=not args.quiet)
    b, a = res.dice_before, res.dice_after
    print(f"run: {res.run_dir}  steps: {res.steps}")
    print("validation Dice@1/3/5  before: " + " / ".join(f"{b[f'dice@{k}']:.3f}" for k in (1, 3, 5))
          + "  after: " + " / ".join(f"{a[f'dice@{k}']:.3f}" for k in (1, 3, 5))
          + f"  (best Dice@1 {res.best_dice1:.3f} at step {res.best_step})")
    return 0
