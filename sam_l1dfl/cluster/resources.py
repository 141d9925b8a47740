"""What one job asks of a cluster: GPUs, CPUs, memory, time, partition, account.

:class:`Resources` is read from a config mapping (``resources:`` in ``compare_losses.py
--config``, ``resources.gpus=1`` on its command line, the launcher flags ``--gpus`` ... of every
command): an unknown key or a wrong type is one ``error:`` line.  (This module and
:mod:`sam_l1dfl.cluster.jobs` import no torch: ``--status`` and a job's lock are quick.)  Each launcher translates it (:func:`submitit_parameters`
for SLURM through submitit, :func:`ray_options` for a Ray task); docs/cluster.md has the table of
what each key becomes, and tests/test_cluster_sweep.py checks the sbatch script against it.

A job with ``gpus > 1`` trains as that many Accelerate processes on one node
(:attr:`Resources.processes`); jobs never span nodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional

from sam_l1dfl.errors import ConfigError


@dataclass(frozen=True)
class Resources:
    """The resources of one job (one node)."""

    gpus: int = 0
    """GPUs on the job's node; > 1: that many Accelerate processes (``accelerate launch --multi_gpu``)."""
    cpus: int = 1
    """CPU cores of the job (also its torch threads when the launcher is not ``local``)."""
    mem_gb: float = 4.0
    """Memory of the job, GB."""
    time_min: int = 60
    """Wall-time limit, minutes (SLURM ``--time``; a job that reaches it is requeued and resumes)."""
    partition: Optional[str] = None
    """SLURM partition (default: the cluster's)."""
    account: Optional[str] = None
    """SLURM account to charge (default: the user's)."""
    slurm: dict[str, Any] = field(default_factory=dict)
    """More ``#SBATCH`` options, e.g. ``{qos: high, constraint: a100}`` (submitit's ``additional_parameters``)."""

    def __post_init__(self):
        for k in ("gpus", "cpus", "time_min"):
            v = getattr(self, k)
            if v < (0 if k == "gpus" else 1):
                raise ConfigError(None, f"resources.{k} must be >= {0 if k == 'gpus' else 1}, got {v}")
        if not self.mem_gb > 0:
            raise ConfigError(None, f"resources.mem_gb must be > 0, got {self.mem_gb}")

    @property
    def processes(self) -> int:
        """Training processes of the job: one per GPU (at least one)."""
        return max(1, self.gpus)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``1 GPU, 8 CPUs, 32 GB, 12:00 h, partition gpu``."""
        t = f"{self.time_min // 60}:{self.time_min % 60:02d} h"
        parts = [f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}", f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}",
                 f"{self.mem_gb:g} GB", t]
        parts += [f"{k} {v}" for k, v in (("partition", self.partition), ("account", self.account)) if v]
        parts += [f"{k}={v}" for k, v in sorted(self.slurm.items())]
        return ", ".join(parts)


#: Keys of a ``resources`` mapping besides :class:`Resources`' own: per-model values.
PER_MODEL_KEY = "models"


_TYPES = {"gpus": int, "cpus": int, "mem_gb": float, "time_min": int, "partition": str, "account": str, "slurm": dict}


def _merged(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resources_from(mapping: "dict | None", source: "str | None" = None, prefix: str = "resources",
                   default: "Resources | None" = None) -> Resources:
    """:class:`Resources` from a mapping (unknown keys, wrong types: one-line ConfigError)."""
    mapping = mapping or {}
    if not isinstance(mapping, dict):
        raise ConfigError(source, f"{prefix}: expected a mapping of {', '.join(_TYPES)}, got {mapping!r}")
    unknown = sorted(set(mapping) - {f.name for f in fields(Resources)})
    if unknown:
        raise ConfigError(source, f"unknown key(s) {', '.join(repr(f'{prefix}.{k}') for k in unknown)}; known: "
                                  + ", ".join(f"{prefix}.{k}" for k in _TYPES))
    kw = {}
    for k, v in mapping.items():
        tp = _TYPES[k]
        ok = v is None and k in ("partition", "account") or (
            isinstance(v, tp) if tp is not float else isinstance(v, (int, float))) and not isinstance(v, bool)
        if tp is int and isinstance(v, float) and v == int(v):
            v, ok = int(v), True
        if not ok:
            raise ConfigError(source, f"{prefix}.{k}: expected {tp.__name__.replace('dict', 'a mapping')}, got {v!r}")
        kw[k] = float(v) if tp is float else v
    try:
        return replace(default or Resources(), **kw)
    except ConfigError as exc:
        raise ConfigError(source, exc.problem) from None


def job_resources(mapping: "dict | None", group: "str | None" = None, source: "str | None" = None) -> Resources:
    """The resources of a job of ``group`` (a model name): ``mapping`` without its ``models:``
    section, then ``models.<group>`` over it."""
    mapping = dict(mapping or {})
    per = mapping.pop(PER_MODEL_KEY, None) or {}
    if not isinstance(per, dict):
        raise ConfigError(source, f"resources.{PER_MODEL_KEY}: expected a mapping of model -> resources")
    if group is not None and group in per:
        mapping = _merged(mapping, per[group] or {})
    return resources_from(mapping, source, f"resources.{PER_MODEL_KEY}.{group}" if group in per else "resources")


def check_resources_mapping(mapping: "dict | None", groups, source: "str | None" = None) -> None:
    """Every per-model section names a known group, and each group's resources are valid."""
    per = (mapping or {}).get(PER_MODEL_KEY) or {}
    unknown = sorted(set(per) - set(groups)) if isinstance(per, dict) else []
    if unknown:
        raise ConfigError(source, f"resources.{PER_MODEL_KEY}: unknown model(s) {unknown}; known: {sorted(groups)}")
    for g in groups:
        job_resources(mapping, g, source)


def submitit_parameters(res: Resources, name: str, array_size: int = 1) -> dict:
    """``submitit.AutoExecutor.update_parameters`` keywords for jobs of ``res``: one node, one
    task (the job starts its own Accelerate processes), the rest from ``res``."""
    p: dict[str, Any] = {"name": name, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": res.cpus,
                         "gpus_per_node": res.gpus, "mem_gb": res.mem_gb, "timeout_min": res.time_min,
                         "slurm_array_parallelism": max(1, array_size)}
    if res.partition:
        p["slurm_partition"] = res.partition
    if res.account:
        p["slurm_account"] = res.account
    if res.slurm:
        p["slurm_additional_parameters"] = dict(res.slurm)
    return p


def ray_options(res: Resources, name: str) -> dict:
    """``ray.remote(...).options`` keywords of one task of ``res``."""
    return {"num_cpus": res.cpus, "num_gpus": res.gpus, "memory": int(res.mem_gb * 2**30), "name": name}


__all__ = ["PER_MODEL_KEY", "Resources", "check_resources_mapping", "job_resources", "ray_options",
           "resources_from", "submitit_parameters"]
