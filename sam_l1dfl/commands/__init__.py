"""The ``sam-l1dfl`` subcommands, one module each.

Subcommand ``x-y`` lives in ``sam_l1dfl/commands/x_y.py`` and exposes ``HELP`` (its one-line
help, the only place it is written), ``add_arguments(parser)`` and ``run(args) -> int``.  A command
parses its arguments, calls the stage's Python API (which does the work and returns a summary),
and prints; it imports heavy modules inside ``run`` so that ``sam-l1dfl --help`` stays fast.
Every command takes ``--quiet`` / ``--verbose`` (:func:`add_output_flags`); a command with config
overrides takes ``KEY=VALUE`` words anywhere among its flags (:func:`parse_args_with_overrides`).
"""

#: The subcommands, in the order ``sam-l1dfl --help`` lists them (the data flow).
NAMES = ("dicom", "synth", "data", "prompts", "weights", "inspect", "finetune", "infer", "infer-auto", "serve", "evaluate",
         "export", "mip")

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


#: The launcher flags that set a job's resources -> the key of sam_l1dfl.cluster.resources.Resources.
RESOURCE_FLAGS = {"gpus": int, "cpus": int, "mem_gb": float, "time_min": int, "partition": str, "account": str}


def add_launcher_arguments(parser, what: str = "job") -> None:
    """The launcher options every sweep command takes (``compare_losses.py``, ``infer --shards``,
    ``infer-auto --shards``): where the jobs run, what each asks for, and ``--dry-run``."""
    g = parser.add_argument_group("launcher (docs/cluster.md)")
    g.add_argument("--launcher", choices=("local", "submitit", "ray"), default="local",
                   help=f"local: one {what} after the other on this machine (default); submitit: SLURM job arrays "
                        "(pip install 'sam-l1dfl[slurm]'); ray: one Ray task per job (pip install 'sam-l1dfl[ray]')")
    g.add_argument("--submitit-cluster", choices=("slurm", "local"), default="slurm",
                   help="submitit: slurm (default) or local (the same submission as local processes, for testing)")
    g.add_argument("--ray-address", default=None,
                   help="ray: the cluster to join (default: $RAY_ADDRESS, else auto = the running cluster; "
                        "local = start one on this machine)")
    g.add_argument("--no-wait", action="store_true",
                   help="submitit: return once the jobs are queued (follow with --status, report with --merge)")
    g.add_argument("--dry-run", action="store_true",
                   help="print what would be submitted (submitit: the sbatch script of each job array) and exit")
    for flag, tp in RESOURCE_FLAGS.items():
        g.add_argument(f"--{flag.replace('_', '-')}", type=tp, default=None, dest=f"res_{flag}",
                       metavar=flag.split("_")[0].upper(),
                       help={"gpus": "GPUs per job (> 1: that many Accelerate processes)", "cpus": "CPU cores per job",
                             "mem_gb": "memory per job, GB", "time_min": "time limit per job, minutes",
                             "partition": "SLURM partition", "account": "SLURM account"}[flag])


def launcher_resources(args) -> dict:
    """The resources given with the launcher flags (``{"gpus": 2, ...}``; absent flags left out)."""
    return {k: getattr(args, f"res_{k}") for k in RESOURCE_FLAGS if getattr(args, f"res_{k}", None) is not None}


def run_args(payload: dict) -> None:
    """Job target of a sharded command: ``payload = {"module": ..., "args": {...}}`` runs
    ``module.run(Namespace(**args))`` (one shard, in the job's process); a non-zero exit status
    fails the job."""
    import argparse
    import importlib

    from sam_l1dfl.errors import InputError

    rc = importlib.import_module(payload["module"]).run(argparse.Namespace(**payload["args"]))
    if rc:
        raise InputError(None, f"{payload['module'].rsplit('.', 1)[-1].replace('_', '-')} exited with status {rc} "
                               "(some cases failed; see the job's log)")


#: The launcher options of a sharded command (not part of a shard's own settings).
_LAUNCH_KEYS = ("launcher", "submitit_cluster", "ray_address", "no_wait", "dry_run", "shards", "force", "_module")


def add_shard_arguments(parser) -> None:
    """``--shard K/N`` (this process does part K of N of the data set) and ``--shards N`` (all N
    parts as jobs, through the launcher options of :func:`add_launcher_arguments`)."""
    g = parser.add_argument_group("shards (with --data)")
    g.add_argument("--shard", metavar="K/N",
                   help="segment part K of N of the cases (sorted by case id; sizes differ by at most one) into "
                        "OUT_DIR/shard-K-of-N/; `sam-l1dfl evaluate --pred-dir OUT_DIR` merges the parts")
    g.add_argument("--shards", type=int, metavar="N",
                   help="run all N parts as jobs with the launcher options below (a finished part is skipped)")
    g.add_argument("--force", action="store_true", help="--shards: redo parts made with other settings")
    add_launcher_arguments(parser, "shard")


def check_shard_arguments(args) -> None:
    """One-line errors for shard options that do not fit the rest of the command line."""
    from sam_l1dfl.errors import InputError

    sharded = args.shard is not None or args.shards is not None
    if sharded and args.data is None:
        raise InputError(None, "--shard/--shards need --data (a data set)")
    if args.shard is not None and args.shards is not None:
        raise InputError(None, "give --shard K/N (one part, here) or --shards N (all parts as jobs), not both")
    if args.shards is not None and args.shards < 1:
        raise InputError(None, f"--shards must be >= 1, got {args.shards}")
    if args.shards is None and (args.launcher != "local" or args.dry_run or args.no_wait or launcher_resources(args)):
        raise InputError(None, "the launcher options (--launcher, --gpus, --dry-run, ...) run the parts of --shards N")


def shard_cases(args, cases: list) -> list:
    """With ``--shard K/N``: part K of N of ``cases``, and ``args.out_dir`` becomes
    ``OUT_DIR/shard-K-of-N`` (call once); without it: ``cases``."""
    from pathlib import Path

    from sam_l1dfl.data.discovery import parse_shard, select_shard, shard_dir_name

    if getattr(args, "shard", None) is None:
        return cases
    k, n = parse_shard(args.shard)
    args.out_dir = str(Path(args.out_dir) / shard_dir_name(k, n))
    return select_shard(cases, k, n)


def launch_shards(args, module: str) -> int:
    """``--shards N``: every part of the data set a job (this command with ``--shard K/N``), run
    by ``--launcher``; a job's folder is its part's output folder ``OUT_DIR/shard-K-of-N``."""
    import os
    from pathlib import Path

    from sam_l1dfl.cluster.jobs import Job, check_not_conflicting, clear_job, file_sizes, make_fingerprint
    from sam_l1dfl.cluster.launch import check_launcher, describe_submission, launch, status_table
    from sam_l1dfl.cluster.resources import resources_from
    from sam_l1dfl.data.discovery import discover_cases, select_shard, shard_dir_name

    if not args.dry_run:
        check_launcher(args.launcher, args.submitit_cluster, not args.no_wait)
    n = args.shards
    cases = discover_cases(args.data).cases
    out = Path(args.out_dir).resolve()
    res = resources_from({"cpus": 4, "mem_gb": 16, "time_min": 120, **launcher_resources(args)}, "command line")
    if res.gpus > 1:
        from sam_l1dfl.errors import InputError

        raise InputError(None, f"--gpus {res.gpus}: one inference process uses one GPU; use more --shards instead")
    base = {k: v for k, v in vars(args).items() if k not in _LAUNCH_KEYS and not k.startswith("res_")}
    for key in ("data", "out_dir", "checkpoint", "prompts_dir"):  # jobs may start in another folder
        if base.get(key) and os.path.exists(base[key]):
            base[key] = str(Path(base[key]).resolve())
    jobs = []
    for k in range(1, n + 1):
        part = select_shard(cases, k, n)
        a = {**base, "shard": f"{k}/{n}", "shards": None, "launcher": "local", "dry_run": False, "no_wait": False,
             **{f"res_{x}": None for x in RESOURCE_FLAGS}}
        setting = {x: v for x, v in a.items() if x not in ("quiet", "verbose", "device", "shard")}
        data = {"cases": [c.case_id for c in part],
                "sizes": [file_sizes([c.pet, c.ct, c.label]) for c in part]}
        jobs.append(Job(name=shard_dir_name(k, n), folder=str(out / shard_dir_name(k, n)),
                        target="sam_l1dfl.commands:run_args", payload={"module": module, "args": a},
                        fingerprint=make_fingerprint(setting, data), resources=res, group="shard"))
    if args.dry_run:
        print(describe_submission(jobs, args.launcher, work_dir=out / ".launch", submitit_cluster=args.submitit_cluster,
                                  ray_address=args.ray_address), end="")
        return 0
    if args.force:
        for j in jobs:
            clear_job(j)
    else:
        check_not_conflicting(jobs)
    states = launch(jobs, args.launcher, work_dir=out / ".launch", status_file=out / "status.json", isolate=False,
                    submitit_cluster=args.submitit_cluster, ray_address=args.ray_address, wait=not args.no_wait,
                    progress=not args.quiet)
    print(status_table(states), end="")
    if args.no_wait:
        print(f"queued; `sam-l1dfl evaluate --pred-dir {out}` merges the parts once all have finished")
        return 0
    ok = all(s["state"] == "done" for s in states.values())
    print(f"{out}: {'all' if ok else 'not all'} {n} part(s) finished; `sam-l1dfl evaluate --pred-dir {out}` merges them")
    return 0 if ok else 1


def module_of(name: str) -> str:
    """The module of subcommand ``name``: ``infer-auto`` -> ``sam_l1dfl.commands.infer_auto``."""
    return f"{__name__}.{name.replace('-', '_')}"


__all__ = ["DATA_HELP", "DEVICE_HELP", "NAMES", "PET_HELP", "RESOURCE_FLAGS", "add_launcher_arguments",
           "add_output_flags", "add_shard_arguments", "check_shard_arguments", "launch_shards", "shard_cases", "case_inputs", "image_output", "launcher_resources", "module_of",
           "parse_args_with_overrides", "run_args"]
