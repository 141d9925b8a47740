"""``sam-l1dfl finetune --config FILE [key=value ...]``: fine-tune in one process.

For several GPUs/nodes use ``accelerate launch scripts/finetune.py`` with the same arguments.
``--device`` (cpu, cuda, cuda:N, gpu, mps) chooses the device of one process; under
``accelerate launch`` leave it out and let the launcher place the processes
(``CUDA_VISIBLE_DEVICES`` chooses the GPUs).  Before any work the run directory is checked
(:meth:`~sam_l1dfl.training.runconfig.RunConfig.check_outputs`).
"""

from __future__ import annotations

from sam_l1dfl.commands import DEVICE_HELP, add_output_flags

HELP = "fine-tune the mask decoder (single process)"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl finetune --config configs/demo.yaml --device cpu --max-steps 20 optim.lr=3e-4",
    "sam-l1dfl finetune --config configs/demo.yaml --resume",
)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, metavar="YAML", help="fine-tuning config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, anywhere among the flags, e.g. optim.lr=3e-4 prompts.boxes=true")
    parser.add_argument("--resume", action="store_true", help="continue from the latest saved state of the run")
    parser.add_argument("--trust", action="store_true",
                        help="load a model.checkpoint that needs full unpickling and, with --resume, a saved state "
                             "whose pickles hold more than tensors and plain values (that can run code: only for "
                             "files you trust; a config file cannot grant this)")
    parser.add_argument("--name", default=None, help="run name (runs/<name>/); same as name=...")
    parser.add_argument("--output-dir", default=None, help="parent of the run directory; same as output_dir=...")
    parser.add_argument("--max-steps", type=int, default=None, help="same as train.max_steps=...")
    parser.add_argument("--device", default=None, help=DEVICE_HELP + "; one process only (not with accelerate launch)")
    add_output_flags(parser)


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
    from sam_l1dfl.io_utils import input_files
    from sam_l1dfl.training import load_config

    # the config and the run directory are checked before torch is imported (a mistake there costs 0.3 s)
    cfg = load_config(args.config, collect_overrides(args))
    cfg.check_outputs(input_files(args.config, cfg.model.checkpoint))

    from sam_l1dfl.devices import parse_device
    from sam_l1dfl.training.loop import train

    device = parse_device(args.device)
    res = train(cfg, resume=args.resume, accelerator=device_accelerator(cfg, device), progress=not args.quiet,
                trust=args.trust)
    if not res.main_process:  # one summary, not one per process
        return 0
    b, a = res.dice_before, res.dice_after
    print(f"run: {res.run_dir}  steps: {res.steps}")
    print("validation Dice@1/3/5  before: " + " / ".join(f"{b[f'dice@{k}']:.3f}" for k in (1, 3, 5))
          + "  after: " + " / ".join(f"{a[f'dice@{k}']:.3f}" for k in (1, 3, 5))
          + f"  (best Dice@1 {res.best_dice1:.3f} at step {res.best_step})")
    return 0


def device_accelerator(cfg, device: "str | None"):
    """The ``Accelerator`` for ``--device`` (``None``: the trainer's default).  Accelerate reads
    a forced device from ``ACCELERATE_TORCH_DEVICE``; ``cpu`` is its ``cpu=True``."""
    import os

    from sam_l1dfl.training.distributed import launched_world_size, make_accelerator

    if device is None:
        return None
    if launched_world_size() > 1:
        from sam_l1dfl.errors import InputError

        raise InputError(None, f"--device {device}: several processes were launched; let accelerate place them")
    if device != "cpu":
        os.environ["ACCELERATE_TORCH_DEVICE"] = device
    return make_accelerator(cfg, cpu=device == "cpu")
