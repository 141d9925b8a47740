"""Launchers: run a list of :class:`~sam_l1dfl.cluster.jobs.Job` here, on SLURM through submitit,
or as Ray tasks; the progress of the whole list on the terminal and in a JSON status file.

    launch(jobs, "local" | "submitit" | "ray", work_dir=OUT / "launch", status_file=OUT / "status.json")
    describe_submission(jobs, launcher, work_dir)        # what would be submitted (--dry-run)

* ``local`` (the default): one job after the other, each in a fresh Python process
  (``python -m sam_l1dfl.cluster.jobs run``; ``isolate=False``: in this process).
* ``submitit``: ``submitit.AutoExecutor``; the jobs of one stage with the same resources are
  **one SLURM job array** (``executor.batch()``).  Each job is a checkpointable callable: at its
  time limit (or on pre-emption) submitit requeues it (up to :data:`MAX_REQUEUES` times) and it
  resumes from its last saved state, so a job may be longer than the partition's time limit.
  ``submitit_cluster="local"`` runs the same submission as local processes (submitit's
  ``LocalExecutor``; what the tests use), ``"slurm"`` (the default) needs ``srun`` on the PATH.
* ``ray``: one Ray task per job (``num_cpus``, ``num_gpus``, ``memory`` from the job's
  resources; ``max_calls=1``: a fresh worker process per job; a task lost with its node is retried
  and resumes) on the cluster at ``ray_address`` (default ``auto``: the running cluster;
  ``local``: start one on this machine), or on the one this process already joined with
  ``ray.init``.

Nothing here queues, schedules or pools: the launchers hand the jobs to SLURM or Ray and only
watch.  Every job is idempotent (:func:`~sam_l1dfl.cluster.jobs.run_job`), so launching a list
again skips what finished, resumes what was interrupted and retries what failed; a job that runs
elsewhere right now (another launcher, an earlier submission) is not submitted again.

The status (:class:`SweepMonitor`) is read from the job folders (the source of truth, whatever
launcher ran them) plus what the launcher saw (queued, or failed without a word, e.g. killed): on a
terminal a bar ``jobs: 3/12 | done 3, running 2, failed 0, pending 7``, in a log plain lines, and
``status.json`` rewritten atomically at each change.  A missing optional extra is one line: which
extra to install.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from sam_l1dfl.cluster.jobs import (Job, job_state, mark_failed, now_iso, run_job, run_job_logged)
from sam_l1dfl.cluster.resources import Resources, ray_options, submitit_parameters
from sam_l1dfl.errors import ConfigError, SamL1dflError
from sam_l1dfl.io_utils import write_json_atomic
from sam_l1dfl.progress import progress as show_progress

LAUNCHERS = ("local", "submitit", "ray")
#: launcher -> (module it needs, the optional extra of sam-l1dfl that installs it)
EXTRAS = {"submitit": ("submitit", "slurm"), "ray": ("ray", "ray")}
SUBMITIT_CLUSTERS = ("slurm", "local")
#: Seconds between two looks at the jobs while waiting (per launcher).
POLL_S = {"local": 1.0, "submitit": 15.0, "ray": 2.0}
SUBMITTED_FILE = "submitted.json"
#: How often SLURM may requeue a job that reached its time limit (it resumes each time).
MAX_REQUEUES = 20


def require(launcher: str):
    """The module a launcher needs; a missing one is one line naming the extra to install."""
    if launcher not in LAUNCHERS:
        raise ConfigError(None, f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "local":
        return None
    mod, extra = EXTRAS[launcher]
    try:
        return importlib.import_module(mod)
    except ImportError:
        raise ConfigError(None, f"--launcher {launcher} needs the optional extra [{extra}]: "
                                f"pip install 'sam-l1dfl[{extra}]'") from None


def check_launcher(launcher: str, submitit_cluster: str = "slurm", wait: bool = True) -> None:
    """Everything about the launcher options that can be refused before any work: a missing extra,
    no SLURM here, ``--no-wait`` with a launcher whose jobs end with this process."""
    require(launcher)
    if launcher == "submitit":
        _check_submitit_cluster(submitit_cluster)
    if not wait and launcher != "submitit":
        raise ConfigError(None, f"--no-wait is for --launcher submitit (SLURM keeps the jobs); {launcher} jobs end "
                                "with this process")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    errs = [ln for ln in lines if ln.startswith("error: ") or "Error:" in ln]
    return (errs[-1] if errs else lines[-1])[:500]


# ---------------------------------------------------------------------- progress and status
class SweepMonitor:
    """The state of every job (folder + what the launcher saw), shown and written to ``status.json``."""

    def __init__(self, jobs: Sequence[Job], status_file: "str | os.PathLike | None", launcher: str, *,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.jobs, self.launcher, self.log = list(jobs), launcher, log
        self.status_file = None if status_file is None else Path(status_file)
        self.seen: dict[str, dict] = {}
        self.states: dict[str, dict] = {}
        self.bar = show_progress(total=len(self.jobs), desc="jobs", unit="job", enabled=progress)

    def note(self, name: str, **info) -> None:
        """What the launcher knows of a job (``state="queued"``, ``state="failed", error=...``, ids)."""
        self.seen.setdefault(name, {}).update(info)

    def update(self) -> dict[str, dict]:
        states = {}
        for j in self.jobs:
            s = job_state(j)
            seen = self.seen.get(j.name, {})
            if (seen.get("state") == "queued" and s["state"] in ("pending", "interrupted", "failed")
                    and s.get("started", "") < seen.get("since", "")):  # not started since it was queued
                s = {**s, "state": "queued"}
            if seen.get("state") == "failed" and s["state"] not in ("done", "running", "failed"):
                s = {**s, "state": "failed", "error": seen.get("error")}
            s.update({k: v for k, v in seen.items() if k not in ("state", "error", "since")})
            states[j.name] = s
        for name, s in states.items():
            old = self.states.get(name, {}).get("state")
            if old is not None and old != s["state"] and s["state"] in ("running", "done", "failed"):
                extra = f": {s.get('error')}" if s["state"] == "failed" else \
                    (f" ({s['seconds']:.0f} s)" if s["state"] == "done" and s.get("seconds") else "")
                self.log(f"{name}: {s['state']}{extra}")
        self.states = states
        counts = Counter(s["state"] for s in states.values())
        if self.status_file is not None:
            write_json_atomic(self.status_file, {
                "format": "sam-l1dfl-sweep-status", "version": 1, "updated": now_iso(), "launcher": self.launcher,
                "total": len(self.jobs), "counts": {k: counts.get(k, 0) for k in (
                    "done", "running", "queued", "failed", "interrupted", "pending", "conflict")},
                "complete": counts.get("done", 0) == len(self.jobs), "jobs": states})
        self.bar.n = counts.get("done", 0) + counts.get("failed", 0)
        self.bar.set_postfix_str(self.summary(counts), refresh=False)
        self.bar.refresh()
        return states

    @staticmethod
    def summary(counts: Counter) -> str:
        return ", ".join(f"{k} {counts.get(k, 0)}" for k in ("done", "running", "queued", "failed", "pending")
                         if k in ("done", "running", "failed") or counts.get(k))

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------- local
def _job_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _local_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "sam_l1dfl.cluster.jobs", "run", str(spec), "local"]


def _run_local(jobs: list[Job], mon: SweepMonitor, work_dir: Path, isolate: bool, log) -> None:
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.name}: running ...")
        t0 = time.perf_counter()
        if isolate:
            spec = work_dir / "local" / f"{job.name}.json"
            write_json_atomic(spec, job.to_dict())
            r = subprocess.run(_local_command(spec), env=_job_env())
            if r.returncode != 0:
                mon.note(job.name, state="failed", error=f"exit status {r.returncode}; see the output above")
        else:
            try:
                run_job(job, "local")
            except Exception as exc:  # recorded in the job folder; the other jobs go on
                mon.note(job.name, state="failed", error=_one_line(exc))
        st = mon.update()[job.name]
        log(f"[{i}/{len(jobs)}] {job.name}: {st['state']} in {time.perf_counter() - t0:.0f} s"
            + (f": {st.get('error')}" if st["state"] == "failed" else ""))


# ---------------------------------------------------------------------- submitit
class SubmititCall:
    """The callable submitit pickles for one job; checkpointable: at the time limit submitit
    requeues it with the same job, which resumes (``checkpoint`` is what submitit looks for)."""

    def __init__(self, job: dict):
        self.job = job

    def __call__(self) -> dict:
        return run_job_logged(self.job, "submitit")

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititCall(self.job))


def _groups(jobs: Sequence[Job]) -> list[tuple[Resources, list[Job]]]:
    """Jobs with identical resources, in order of first appearance (one job array each)."""
    out: dict = {}
    for j in jobs:
        key = repr(sorted(j.resources.to_dict().items()))
        out.setdefault(key, (j.resources, []))[1].append(j)
    return list(out.values())


def _array_name(group: list[Job]) -> str:
    names = sorted({j.group for j in group if j.group})
    return "sam-l1dfl" + (f"-{'-'.join(names)}" if names and len(names) <= 2 else "")


def _check_submitit_cluster(cluster: str) -> None:
    if cluster not in SUBMITIT_CLUSTERS:
        raise ConfigError(None, f"--submitit-cluster must be one of {', '.join(SUBMITIT_CLUSTERS)}, got {cluster!r}")
    if cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError(None, "--launcher submitit: no SLURM here (no srun on the PATH); run from a SLURM login node, "
                                "or pass --submitit-cluster local to run the jobs as local processes through submitit")


def _submit_submitit(jobs: list[Job], mon: SweepMonitor, work_dir: Path, cluster: str, log) -> dict:
    submitit = require("submitit")
    _check_submitit_cluster(cluster)
    ex = submitit.AutoExecutor(folder=work_dir / "submitit" / "%j", cluster=cluster,
                               slurm_max_num_timeout=MAX_REQUEUES)
    handles = {}
    for res, group in _groups(jobs):
        ex.update_parameters(**submitit_parameters(res, _array_name(group), len(group)))
        with ex.batch():
            hs = [ex.submit(SubmititCall(j.to_dict())) for j in group]
        for j, h in zip(group, hs):
            handles[j.name] = h
            mon.note(j.name, state="queued", since=now_iso(), scheduler_job_id=str(h.job_id))
        what = f"SLURM array {str(hs[0].job_id).split('_')[0]}" if cluster == "slurm" else "local processes"
        log(f"submitted {len(group)} job(s) ({res.describe()}) as {what}: {', '.join(j.name for j in group)}")
    # what was queued, for --status after this process has gone (SLURM keeps the jobs)
    book = work_dir / SUBMITTED_FILE
    old = _read_submitted(work_dir)
    write_json_atomic(book, {**old, **{n: mon.seen[n] for n in handles}})
    return handles


def _read_submitted(work_dir: Path) -> dict:
    try:
        d = json.loads((Path(work_dir) / SUBMITTED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def note_submitted(mon: "SweepMonitor", work_dir: "str | os.PathLike") -> None:
    """Tell a monitor what an earlier launcher queued (``--status`` of a ``--no-wait`` sweep)."""
    for name, info in _read_submitted(Path(work_dir)).items():
        if isinstance(info, dict) and any(j.name == name for j in mon.jobs):
            mon.note(name, **info)


def _wait_submitit(jobs: list[Job], handles: dict, mon: SweepMonitor, poll_s: float) -> None:
    by_name = {j.name: j for j in jobs}
    pending = dict(handles)
    while pending:
        for name, h in list(pending.items()):
            if not h.done():
                continue
            del pending[name]
            try:
                exc = h.exception()
            except Exception as e:  # submitit could not even read the outcome (no result file)
                exc = e
            if exc is not None:
                reason = f"{_one_line(exc)} (submitit job {h.job_id}; log: {h.paths.stderr})"
                mon.note(name, state="failed", error=reason)
                mark_failed(by_name[name], reason, "submitit")
        mon.update()
        if pending:
            time.sleep(poll_s)


# ---------------------------------------------------------------------- ray
def _ray_init(ray, address: "str | None", log) -> bool:
    """Join (or start) a Ray cluster unless this process already did; True when we did."""
    if ray.is_initialized():
        return False
    addr = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        if addr == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=addr, log_to_driver=False)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all one line
        raise ConfigError(None, f"--launcher ray: cannot join the Ray cluster at {addr!r} ({_one_line(exc)}); start one "
                                "with `ray start --head`, set RAY_ADDRESS, or pass --ray-address local") from None
    log(f"Ray: {'started a local cluster' if addr == 'local' else 'joined ' + addr}: {ray.cluster_resources()}")
    return True


def _run_ray(jobs: list[Job], mon: SweepMonitor, address: "str | None", poll_s: float, log) -> None:
    ray = require("ray")
    started = _ray_init(ray, address, log)
    try:
        total = ray.cluster_resources()
        for j in jobs:
            o = ray_options(j.resources, j.name)
            short = [f"{k} {o[k]:g} of {total.get(r, 0):g}" for k, r in (("num_cpus", "CPU"), ("num_gpus", "GPU"),
                                                                       ("memory", "memory")) if o[k] > total.get(r, 0)]
            if short:
                log(f"warning: {j.name} asks for more than this Ray cluster has now ({', '.join(short)}); it waits for "
                    "the cluster to grow")
        task = ray.remote(max_calls=1, max_retries=2, retry_exceptions=False)(run_job_logged)
        refs = {}
        for j in jobs:
            refs[task.options(**ray_options(j.resources, j.name)).remote(j.to_dict(), "ray")] = j
            mon.note(j.name, state="queued", since=now_iso())
        log(f"submitted {len(refs)} Ray task(s)")
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
                for ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as exc:  # RayTaskError wraps the job's own exception
                        cause = getattr(exc, "cause", None) or exc
                        reason = _one_line(cause) if isinstance(cause, SamL1dflError) else _one_line(exc)
                        mon.note(refs[ref].name, state="failed", error=reason)
                        mark_failed(refs[ref], reason, "ray")
                mon.update()
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------- entry points
def launch(jobs: Sequence["Job | dict"], launcher: str = "local", *, work_dir: "str | os.PathLike",
           status_file: "str | os.PathLike | None" = None, isolate: bool = True, submitit_cluster: str = "slurm",
           ray_address: "str | None" = None, wait: bool = True, progress: bool = True,
           poll_s: "float | None" = None, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run (or submit) every job that has not finished; returns each job's state at the end
    (``{"state": "done" | "failed" | "queued" | ...}``).  ``wait=False`` (submitit only): return
    once submitted.  Conflicting job folders must have been refused (or cleared) before."""
    check_launcher(launcher, submitit_cluster, wait)
    jobs = [Job.coerce(j) for j in jobs]
    if launcher != "local":  # torch threads = the CPUs the job asked for (not every core of the node)
        jobs = [j if j.threads else dataclasses.replace(j, threads=j.resources.cpus) for j in jobs]
    work_dir = Path(work_dir)
    poll = (1.0 if launcher == "submitit" and submitit_cluster == "local" else POLL_S[launcher]) if poll_s is None \
        else float(poll_s)
    # local: the launcher's own lines say what each job did; elsewhere the monitor reports changes
    mon = SweepMonitor(jobs, status_file, launcher, progress=progress and launcher != "local",
                       log=log if launcher != "local" else (lambda m: None))
    try:
        states = mon.update()
        todo = []
        for i, j in enumerate(jobs, 1):
            st = states[j.name]["state"]
            if st == "done":
                log(f"[{i}/{len(jobs)}] {j.name}: finished earlier, skipped")
            elif st == "running":
                h = states[j.name].get("holder") or {}
                log(f"[{i}/{len(jobs)}] {j.name}: running elsewhere (host {h.get('host', '?')}, pid {h.get('pid', '?')}, "
                    f"{h.get('launcher', '?')}); not submitted again")
            else:
                todo.append(j)
        if not todo:
            return states
        if launcher == "local":
            _run_local(todo, mon, work_dir, isolate, log)
        elif launcher == "submitit":
            handles = _submit_submitit(todo, mon, work_dir, submitit_cluster, log)
            mon.update()
            if wait:
                try:
                    _wait_submitit(todo, handles, mon, poll)
                except KeyboardInterrupt:
                    log("stopped watching; the jobs keep running on the cluster (--status to follow, --merge when done)")
                    raise
        else:
            _run_ray(todo, mon, ray_address, poll, log)
        return mon.update()
    finally:
        mon.close()


def sbatch_script(res: Resources, name: str, n_jobs: int, folder: "str | os.PathLike") -> str:
    """The sbatch script submitit writes for a job array of ``n_jobs`` jobs of ``res`` (rendered by
    submitit's own SLURM executor from the parameters :func:`launch` gives it; nothing is submitted)."""
    require("submitit")
    from submitit.slurm.slurm import SlurmExecutor

    class _Render(SlurmExecutor):  # the real executor without its check that srun exists
        @classmethod
        def affinity(cls) -> int:
            return 2

    params = submitit_parameters(res, name, n_jobs)
    ex = _Render(folder)
    native = ex._convert_parameters({k: v for k, v in params.items() if not k.startswith("slurm_")})
    native.update({k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")})
    ex.update_parameters(**native)
    if n_jobs > 1:
        ex.parameters["map_count"] = n_jobs  # what submitit sets for an array
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def describe_submission(jobs: Sequence["Job | dict"], launcher: str = "local", *, work_dir: "str | os.PathLike",
                        submitit_cluster: str = "slurm", ray_address: "str | None" = None) -> str:
    """What :func:`launch` would submit, without submitting (``--dry-run``): the commands
    (local), the sbatch script of each job array (submitit), the task options (Ray)."""
    require(launcher)
    jobs = [Job.coerce(j) for j in jobs]
    work_dir = Path(work_dir)
    L = [f"DRY RUN (nothing is submitted): {len(jobs)} job(s), launcher {launcher}"]
    if launcher == "local":
        for j in jobs:
            L.append(f"{j.name} ({j.resources.describe()}): "
                     + " ".join(_local_command(work_dir / "local" / f"{j.name}.json")))
    elif launcher == "submitit" and submitit_cluster == "local":
        L.append("submitit LocalExecutor: every job a local process at once (no SLURM):")
        L += [f"  {j.name} ({j.resources.describe()}) -> {j.folder}" for j in jobs]
    elif launcher == "submitit":
        if submitit_cluster not in SUBMITIT_CLUSTERS:
            _check_submitit_cluster(submitit_cluster)
        for k, (res, group) in enumerate(_groups(jobs)):
            L.append("")
            L.append(f"# job array {k + 1}: {len(group)} job(s) ({res.describe()}); array index -> job:")
            L += [f"#   {i}: {j.name} -> {j.folder}" for i, j in enumerate(group)]
            L.append(sbatch_script(res, _array_name(group), len(group), work_dir / "submitit" / "%j"))
    else:
        addr = ray_address or os.environ.get("RAY_ADDRESS") or "auto"
        L.append(f"ray.init(address={addr!r}); one task per job, max_calls=1, max_retries=2:")
        for j in jobs:
            o = ray_options(j.resources, j.name)
            L.append(f"  {j.name}: num_cpus={o['num_cpus']}, num_gpus={o['num_gpus']}, memory={o['memory']} "
                     f"({j.resources.mem_gb:g} GB) -> {j.folder}")
    return "\n".join(L) + "\n"


def status_table(states: dict[str, dict]) -> str:
    """One line per job: name, state, where/when, the error of a failed one."""
    w = max((len(n) for n in states), default=4)
    L = []
    for name, s in states.items():
        extra = ""
        if s["state"] == "running":
            h = s.get("holder") or {}
            extra = f"host {h.get('host', '?')}, pid {h.get('pid', '?')}, since {h.get('since', '?')}"
        elif s["state"] == "done" and s.get("seconds"):
            extra = f"{s['seconds']:.0f} s, attempt {s.get('attempt', 1)}"
        elif s["state"] in ("failed", "conflict"):
            extra = s.get("error") or s.get("detail") or ""
        L.append(f"  {name.ljust(w)}  {s['state']:<11} {extra}".rstrip())
    counts = Counter(s["state"] for s in states.values())
    return f"jobs: {sum(counts.values())}: " + SweepMonitor.summary(counts) + "\n" + "\n".join(L) + "\n"


__all__ = ["EXTRAS", "LAUNCHERS", "MAX_REQUEUES", "POLL_S", "SUBMITIT_CLUSTERS", "SubmititCall", "SweepMonitor", "check_launcher",
           "describe_submission", "launch", "note_submitted", "require", "sbatch_script", "status_table"]
