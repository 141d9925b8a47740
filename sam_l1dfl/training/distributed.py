"""Creating the ``Accelerator``, with the guards that keep multi-process training honest.

* CUDA absent → ``Accelerator(cpu=True)``: ``accelerate launch --multi_gpu --num_processes 2`` on a
  CPU machine then trains as 2 gloo processes (accelerate reports ``MULTI_CPU``).
* Started as several processes (``WORLD_SIZE``, MPI/PMI sizes > 1) but not initialised as a
  distributed job → :class:`~sam_l1dfl.errors.ConfigError`: otherwise every process would
  silently train its own copy.
* ``find_unused_parameters`` is explicitly ``False``: unused parameters are frozen deliberately
  (:func:`sam_l1dfl.training.clickloop.configure_trainable`).
* ``ProjectConfiguration``: the run directory and its ``tb/`` as Accelerate's project and logging
  directories (states are named and pruned by :mod:`sam_l1dfl.training.runtime`).
"""

from __future__ import annotations

import os

from sam_l1dfl.errors import ConfigError

_WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The number of processes the launcher says it started (1 when none says so)."""
    for var in _WORLD_VARS:
        v = os.environ.get(var)
        if v:
            try:
                n = int(v)
            except ValueError:
                continue
            if n > 1:
                return n
    return 1


def check_distributed(accelerator) -> None:
    n = launched_world_size()
    if n > 1 and accelerator.num_processes != n:
        raise ConfigError(None, f"started as {n} processes but accelerate initialised "
                                f"{accelerator.num_processes} (not distributed): every process would train "
                                "its own copy; use `accelerate launch --multi_gpu --num_processes N` "
                                "(or --cpu/--num_processes on a CPU machine)")
    import torch.distributed as dist

    if accelerator.num_processes > 1 and not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(None, f"{accelerator.num_processes} processes but torch.distributed is not initialised")


def make_accelerator(cfg, cpu: "bool | None" = None):
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    if cpu is None:
        cpu = not torch.cuda.is_available()
    mp = cfg.train.mixed_precision
    if mp == "fp16" and cpu:
        raise ConfigError(cfg.source, "train.mixed_precision: fp16 needs CUDA; use bf16 or no on the CPU")
    acc = Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        gradient_accumulation_steps=cfg.train.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        step_scheduler_with_optimizer=False,
        project_config=ProjectConfiguration(project_dir=str(cfg.run_dir), logging_dir=str(cfg.run_dir / "tb")),
    )
    check_distributed(acc)
    return acc


__all__ = ["check_distributed", "launched_world_size", "make_accelerator"]
