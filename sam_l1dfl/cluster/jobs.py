"""Jobs: idempotent, resumable units of work, each in a folder of its own, safe under several launchers.

A :class:`Job` is a function to call (``target``, ``"package.module:function"``, called with the
JSON ``payload``), the folder it alone writes into, the resources it needs and its
**fingerprint**: a hash of its config, of its data split and the code version
(:func:`make_fingerprint`, :func:`code_version`: the package version and a hash of its source).  :func:`run_job` runs one in the current process,
whatever started it (the local launcher, a SLURM job through submitit, a Ray task):

1. take the folder's **lock** (:class:`JobLock`); a folder locked by another process is left
   alone (state ``busy``: a second launcher, or a re-submission, never writes into a running job);
2. a ``fingerprint.json`` of other settings is **refused** with one line (the driver clears the
   folder first when the user passes ``--force``, :func:`clear_job`);
3. a job that **finished** with this fingerprint is **skipped**;
4. otherwise it records the attempt and calls the target, which **resumes** from what it finds in
   the folder (a trainer from its last saved state), then marks the job done.

Job folder::

    fingerprint.json  what the job is: config, data and code hashes (written once, atomically), and
                      the git commit it was made from, for people
    job.json          the last attempt: state (running, done, failed), attempt count, host, pid,
                      launcher, start and end times
    failed.json       the last failure's one-line reason and traceback tail (removed on success)
    .lock             the lock file; it means something only while a process holds it
    job.log           the job's output when a cluster launcher ran it (submitit, Ray)
    ...               what the target writes (a training run: states/, best/, result.json)

**The lock** is ``flock(2)`` on ``.lock``: the kernel releases it when the holding process ends,
however it ends (SIGKILL, out of memory, a node reboot; over NFS the server drops it when the
client's lease expires, about 90 s for NFSv4), so a lock can never be left stale and the file
itself is never removed.  The holder writes its host, pid and launcher into the file for
``--status``.  Where the file system has no ``flock`` (``ENOLCK``/``EOPNOTSUPP``, e.g. Lustre
mounted without ``-o flock``), or with ``SAM_L1DFL_LOCK=excl``, the lock is the file ``.lock.excl``
created with ``O_EXCL``; its holder touches it every :data:`HEARTBEAT_S` seconds, and it counts as
**stale** (and is taken over) when its holder is on this host and no longer alive, or when it has
not been touched for :data:`STALE_S` seconds (a holder killed on another node).  The take-over
renames the stale file away after checking it is still the one judged stale (same inode).

Every file is written to a temporary name and renamed (:mod:`sam_l1dfl.io_utils`), so a job killed
at any moment leaves whole files only.  ``python -m sam_l1dfl.cluster.jobs run JOB.json`` runs a
job in a fresh process (the local launcher does this by default); ``... work JOB.json`` is the
entry of each Accelerate process of a multi-GPU job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sam_l1dfl import __version__
from sam_l1dfl.cluster.resources import Resources, resources_from
from sam_l1dfl.devices import cpu_threads
from sam_l1dfl.errors import ConfigError, InputError, SamL1dflError
from sam_l1dfl.io_utils import output_mode, write_json_atomic

FINGERPRINT_FILE = "fingerprint.json"
JOB_FILE = "job.json"
FAILED_FILE = "failed.json"
LOCK_FILE = ".lock"
EXCL_LOCK_FILE = ".lock.excl"
LOG_FILE = "job.log"
SPEC_FILE = "job-spec.json"
#: Seconds a job waits for its folder's lock before reporting it busy (a status probe holds it briefly).
LOCK_WAIT_S = 10.0
#: ``O_EXCL`` locks: the holder touches the file this often; untouched this long, it is stale.
HEARTBEAT_S = 30.0
STALE_S = 300.0
#: What :func:`job_state` reports.
STATES = ("pending", "running", "done", "failed", "interrupted", "conflict")
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def digest(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- fingerprint
@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``0.1.0+src.1a2b3c4d5e6f``: the package version and a hash of every ``sam_l1dfl/**/*.py``
    file (its path and bytes).  Any change to the code changes it, in a git checkout or an
    installed copy alike, and a compute node needs no git to check it (:func:`git_describe` says
    which commit that was, for people)."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+src.{h.hexdigest()[:12]}"


@functools.lru_cache(maxsize=1)
def git_describe() -> "str | None":
    """The git commit of the checkout the package runs from (``1a2b3c4d5e6f``, ``+dirty`` with
    uncommitted changes to ``sam_l1dfl/``), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != root:
            return None  # installed inside some other repository
        dirty = git("status", "--porcelain", "--", "sam_l1dfl").strip()
        return git("rev-parse", "HEAD").strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def file_sizes(paths) -> list:
    """Sizes of ``paths`` (None for a missing one): cheap evidence that the data did not change."""
    out = []
    for p in paths:
        try:
            out.append(None if p is None else os.path.getsize(p))
        except OSError:
            out.append(None)
    return out


def make_fingerprint(config: Any, data: Any, code: "str | None" = None) -> dict:
    """``{"config", "data", "code", "id"}``: hashes of the job's config and data (any JSON-able
    description), the code version, and the hash of the three."""
    fp = {"config": digest(config), "data": digest(data), "code": code or code_version()}
    fp["id"] = digest(fp)
    return fp


def fingerprint_difference(old: dict, new: dict) -> str:
    """``config and code version (0.1.0+ga vs 0.1.0+gb)``: which parts differ."""
    parts = [k for k in ("config", "data", "code") if old.get(k) != new.get(k)]
    if not parts:
        return "fingerprint"
    words = {"config": "config", "data": "data split", "code": "code version"}
    text = " and ".join(words[k] for k in parts)
    if "code" in parts:
        text += f" ({old.get('code')} vs {new.get('code')})"
    return text


# ---------------------------------------------------------------------- the job
@dataclass
class Job:
    """One unit of work: ``target(payload)`` run in ``folder`` with ``resources``."""

    name: str
    folder: str
    target: str
    payload: dict
    fingerprint: dict
    resources: Resources = field(default_factory=Resources)
    outputs: list[str] = field(default_factory=list)
    """Other folders that belong to this job alone (cleared with it by ``--force``)."""
    group: str = ""
    """What the job's resources were chosen by (a model name), for the plan."""
    threads: "int | None" = None
    """torch threads of the job process (None: torch's default)."""

    @property
    def id(self) -> str:
        return self.fingerprint["id"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resources"] = self.resources.to_dict()
        return d

    @classmethod
    def coerce(cls, job: "Job | dict") -> "Job":
        if isinstance(job, Job):
            return job
        d = dict(job)
        d["resources"] = resources_from(d.get("resources") or {})
        return cls(**d)


def _read_json(path: Path) -> "dict | None":
    """The JSON object in ``path``; None when it does not exist; InputError when it is not JSON."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise InputError(path, "is not valid JSON (edited by hand?); remove the job folder or pass --force") from None
    if not isinstance(obj, dict):
        raise InputError(path, "is not a JSON object; remove the job folder or pass --force")
    return obj


def holder_info(launcher: str) -> dict:
    """Who holds a lock: host, pid, launcher, the scheduler's job id, since when."""
    jid = os.environ.get("SLURM_ARRAY_JOB_ID")
    jid = f"{jid}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if jid else os.environ.get("SLURM_JOB_ID")
    return {"host": socket.gethostname(), "pid": os.getpid(), "launcher": launcher,
            "scheduler_job_id": jid or os.environ.get("SUBMITIT_LOCAL_JOB_ID"), "since": now_iso()}


# ---------------------------------------------------------------------- the lock
def _lock_mode() -> str:
    mode = os.environ.get("SAM_L1DFL_LOCK", "flock").strip().lower()
    if mode not in ("flock", "excl"):
        raise ConfigError(None, f"SAM_L1DFL_LOCK must be flock or excl, got {mode!r}")
    return mode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _excl_stale(path: Path, info: dict, mtime: float) -> bool:
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _alive(info["pid"]):
        return True
    return time.time() - mtime > STALE_S


#: The descriptors of the flocks this process holds.  A forked child (a DataLoader worker) shares
#: the open file, and with it the lock, so a job SIGKILLed while its workers live on would hold its
#: folder until they noticed; each child closes its copies at once (the parent's lock stays).
_HELD_FLOCK_FDS: "set[int]" = set()


def _drop_held_locks_in_child() -> None:
    for fd in list(_HELD_FLOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FLOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_locks_in_child)


class JobLock:
    """The exclusive lock of a job folder (see the module docstring): ``flock`` on ``.lock``, or
    an ``O_EXCL`` lock file with heartbeat where ``flock`` is not available."""

    def __init__(self, folder: "str | os.PathLike", wait_s: "float | None" = None):
        self.folder, self.wait_s = Path(folder), float(LOCK_WAIT_S if wait_s is None else wait_s)
        self.mode = _lock_mode()
        self._fd: "int | None" = None
        self._excl: "Path | None" = None
        self._stop = threading.Event()
        self._beat: "threading.Thread | None" = None

    # -- flock
    def _try_flock(self, info: dict) -> "bool | None":
        """True: held; False: busy; None: this file system has no flock."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, output_mode())
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:
                    return None
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        _HELD_FLOCK_FDS.add(fd)
        return True

    # -- O_EXCL
    def _try_excl(self, info: dict) -> bool:
        path = self.folder / EXCL_LOCK_FILE
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, output_mode())
            except FileExistsError:
                if self._take_over_stale(path):
                    continue
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.2)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(info))
            self._excl = path
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return True

    @staticmethod
    def _take_over_stale(path: Path) -> bool:
        try:
            st = path.stat()
            info = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return False
        if not _excl_stale(path, info, st.st_mtime):
            return False
        aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{time.time_ns()}")
        try:
            if path.stat().st_ino != st.st_ino:  # someone else took it over meanwhile
                return False
            os.rename(path, aside)
        except OSError:
            return False
        if aside.stat().st_ino != st.st_ino:  # lost a race: put the fresh lock back
            with contextlib.suppress(OSError):
                os.rename(aside, path)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self._excl)

    # -- public
    def acquire(self, info: dict) -> bool:
        """Take the lock (waiting up to ``wait_s``); False when another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mode == "flock":
            got = self._try_flock(info)
            if got is not None:
                return got
            self.mode = "excl"
        return self._try_excl(info)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            _HELD_FLOCK_FDS.discard(self._fd)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._excl is not None:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
            with contextlib.suppress(FileNotFoundError):
                self._excl.unlink()
            self._excl = None


def lock_holder(folder: "str | os.PathLike") -> "dict | None":
    """Who holds the folder's lock (``{}`` when unknown), or None when nobody does."""
    folder = Path(folder)
    excl = folder / EXCL_LOCK_FILE
    if excl.exists():
        try:
            st = excl.stat()
            info = json.loads(excl.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        if not _excl_stale(excl, info, st.st_mtime):
            return info
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
            except ValueError:
                return {}
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(folder: "str | os.PathLike", launcher: str, wait_s: "float | None" = None) -> Iterator[bool]:
    """``with locked(folder, ...) as held:`` (``held`` False: another process has it)."""
    lock = JobLock(folder, wait_s)
    held = lock.acquire(holder_info(launcher))
    try:
        yield held
    finally:
        if held:
            lock.release()


# ---------------------------------------------------------------------- state
def job_state(job: "Job | dict") -> dict:
    """``{"state": one of STATES, ...}`` of a job, read from its folder (and its lock)."""
    job = Job.coerce(job)
    folder = Path(job.folder)
    if not folder.is_dir():
        return {"state": "pending"}
    try:
        fp = _read_json(folder / FINGERPRINT_FILE)
        rec = _read_json(folder / JOB_FILE) or {}
        failed = _read_json(folder / FAILED_FILE)
    except InputError as exc:
        return {"state": "conflict", "made": "unreadable", "detail": exc.problem}
    holder = lock_holder(folder)
    base = {k: rec[k] for k in ("attempt", "started", "ended", "seconds", "host", "launcher") if k in rec}
    if fp is not None and fp.get("id") != job.id:
        return {**base, "state": "conflict", "running": holder is not None, "made": rec.get("state"),
                "detail": f"made with another {fingerprint_difference(fp, job.fingerprint)}"}
    if holder is not None:
        return {**base, "state": "running", "holder": holder}
    if rec.get("state") == "done" and rec.get("fingerprint") == job.id:
        return {**base, "state": "done"}
    if failed is not None:
        return {**base, "state": "failed", "error": failed.get("error")}
    if rec or fp is not None:
        return {**base, "state": "interrupted"}
    return {"state": "pending"}


def check_not_conflicting(jobs) -> None:
    """Refuse (one line) when a job folder holds a job made with other settings."""
    bad = [(j, s) for j in map(Job.coerce, jobs) if (s := job_state(j))["state"] == "conflict"]
    if not bad:
        return
    j, s = bad[0]
    what = {"done": "finished with other settings", "unreadable": "is unusable"}.get(
        s.get("made"), "holds a job started with other settings")
    more = (f" (and {len(bad) - 1} more job folder(s): {', '.join(x.name for x, _ in bad[1:4])}"
            f"{', ...' if len(bad) > 4 else ''})") if len(bad) > 1 else ""
    raise ConfigError(j.folder, f"{what}: {s['detail']}{more}; pass --force to redo it or choose another output folder")


def clear_job(job: "Job | dict", launcher: str = "local") -> None:
    """Empty a job's folder (and its ``outputs``) under its lock, for ``--force``; refuses a job
    that is running now."""
    job = Job.coerce(job)
    folder = Path(job.folder)
    if not folder.exists():
        for d in job.outputs:
            shutil.rmtree(d, ignore_errors=True)
        return
    with locked(folder, launcher, wait_s=0.0) as held:
        if not held:
            h = lock_holder(folder) or {}
            raise ConfigError(folder, f"is running now (host {h.get('host', '?')}, pid {h.get('pid', '?')}); "
                                      "wait for it or stop it before --force")
        for p in folder.iterdir():
            if p.name in (LOCK_FILE, EXCL_LOCK_FILE):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        for d in job.outputs:
            shutil.rmtree(d, ignore_errors=True)


#: How long :func:`mark_failed` waits for a killed job's lock (forked children drop their copies at
#: once, see ``_HELD_FLOCK_FDS``; the wait covers a file system that is slow to let go).
MARK_FAILED_WAIT_S = 5.0


def mark_failed(job: "Job | dict", reason: str, launcher: str) -> None:
    """Record a failure the job could not record itself (killed; seen by the launcher)."""
    job = Job.coerce(job)
    folder = Path(job.folder)
    if not folder.is_dir():
        return
    with locked(folder, launcher, wait_s=MARK_FAILED_WAIT_S) as held:
        if held and (_read_json(folder / JOB_FILE) or {}).get("state") != "done":
            write_json_atomic(folder / FAILED_FILE, {"error": reason, "seen_by": launcher, "time": now_iso()})


# ---------------------------------------------------------------------- running one
def _target(spec: str):
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


@contextlib.contextmanager
def redirect_output(path: Path) -> Iterator[None]:
    """Send this process's standard output and error (and its children's) to ``path`` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, output_mode())
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for x in (fd, *saved):
            os.close(x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate_command(job: Job, spec_path: Path) -> list[str]:
    """``accelerate launch`` of a job's processes on this node: one per GPU (gloo processes on a
    node without CUDA), each running ``python -m sam_l1dfl.cluster.jobs work``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(job.resources.processes), "--num_machines", "1", "--main_process_port", str(_free_port()),
            # the run's own config sets its precision (Accelerator(mixed_precision=...) wins over this)
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sam_l1dfl.cluster.jobs", "work", str(spec_path)]


def _call(job: Job) -> None:
    if job.resources.processes > 1:
        spec_path = Path(job.folder) / SPEC_FILE
        write_json_atomic(spec_path, job.to_dict())
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env["OMP_NUM_THREADS"] = str(max(1, job.resources.cpus // job.resources.processes))
        r = subprocess.run(_accelerate_command(job, spec_path), env=env)
        if r.returncode != 0:
            raise InputError(job.folder, f"{job.resources.processes} Accelerate processes: exit status {r.returncode}")
        return
    with cpu_threads(job.threads):  # an in-process job leaves the caller's thread count as it was
        _target(job.target)(job.payload)


def run_job(job: "Job | dict", launcher: str = "local") -> dict:
    """Run ``job`` in this process under its lock (see the module docstring); returns
    ``{"name", "state": "done" | "skipped" | "busy", ...}``.  A failure is recorded in
    ``failed.json`` and raised again."""
    job = Job.coerce(job)
    folder = Path(job.folder)
    with locked(folder, launcher) as held:
        if not held:
            return {"name": job.name, "state": "busy", "holder": lock_holder(folder) or {}}
        fp = _read_json(folder / FINGERPRINT_FILE)
        if fp is not None and fp.get("id") != job.id:
            raise ConfigError(folder, f"holds a job made with another {fingerprint_difference(fp, job.fingerprint)}; "
                                      "pass --force to redo it or choose another output folder")
        rec = _read_json(folder / JOB_FILE) or {}
        if rec.get("state") == "done" and rec.get("fingerprint") == job.id:
            return {"name": job.name, "state": "skipped"}
        if job.fingerprint.get("code") != code_version():
            raise ConfigError(folder, f"the code changed since the job was planned ({job.fingerprint.get('code')} vs "
                                      f"{code_version()}); plan it again")
        if fp is None:
            write_json_atomic(folder / FINGERPRINT_FILE, {"format": "sam-l1dfl-job-fingerprint", "version": 1,
                                                          "job": job.name, **job.fingerprint, "git": git_describe()})
        info = holder_info(launcher)
        rec = {"format": "sam-l1dfl-job", "version": 1, "name": job.name, "fingerprint": job.id, "state": "running",
               "attempt": int(rec.get("attempt", 0)) + 1, "host": info["host"], "pid": info["pid"],
               "launcher": launcher, "scheduler_job_id": info["scheduler_job_id"], "started": now_iso()}
        write_json_atomic(folder / JOB_FILE, rec)
        t0 = time.perf_counter()
        try:
            _call(job)
        except (KeyboardInterrupt, SystemExit):  # stopped (Ctrl-C, a scheduler's time limit): resumable
            write_json_atomic(folder / JOB_FILE, {**rec, "state": "interrupted", "ended": now_iso()})
            raise
        except BaseException as exc:
            one = str(exc) if isinstance(exc, SamL1dflError) else f"{type(exc).__name__}: {exc}"
            write_json_atomic(folder / FAILED_FILE, {"error": one.splitlines()[0] if one else type(exc).__name__,
                                                     "traceback": traceback.format_exc()[-4000:],
                                                     "attempt": rec["attempt"], "time": now_iso()})
            write_json_atomic(folder / JOB_FILE, {**rec, "state": "failed", "ended": now_iso()})
            raise
        (folder / FAILED_FILE).unlink(missing_ok=True)
        secs = round(time.perf_counter() - t0, 2)
        write_json_atomic(folder / JOB_FILE, {**rec, "state": "done", "ended": now_iso(), "seconds": secs})
        return {"name": job.name, "state": "done", "seconds": secs}


def run_job_logged(job: "Job | dict", launcher: str) -> dict:
    """:func:`run_job` with the output going to the job folder's ``job.log`` (cluster launchers)."""
    job = Job.coerce(job)
    Path(job.folder).mkdir(parents=True, exist_ok=True)
    with redirect_output(Path(job.folder) / LOG_FILE):
        print(f"--- {now_iso()} {job.name} on {socket.gethostname()} (pid {os.getpid()}, {launcher})", flush=True)
        return run_job(job, launcher)


def _main(argv: "list[str]") -> int:
    """``run JOB.json [LAUNCHER]``: :func:`run_job`; ``work JOB.json``: the target only (one
    Accelerate process of a multi-GPU job)."""
    if len(argv) < 2 or argv[0] not in ("run", "work"):
        print("usage: python -m sam_l1dfl.cluster.jobs run|work JOB.json [LAUNCHER]", file=sys.stderr)
        return 2
    try:
        job = Job.coerce(_read_json(Path(argv[1])) or {})
        if argv[0] == "work":
            _target(job.target)(job.payload)
            return 0
        res = run_job(job, argv[2] if len(argv) > 2 else "local")
        if res["state"] == "busy":
            h = res["holder"]
            print(f"{job.name}: running elsewhere (host {h.get('host', '?')}, pid {h.get('pid', '?')}); left alone")
    except SamL1dflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["FAILED_FILE", "FINGERPRINT_FILE", "HEARTBEAT_S", "JOB_FILE", "Job", "JobLock", "LOCK_FILE", "LOG_FILE",
           "STALE_S", "STATES", "check_not_conflicting", "clear_job", "code_version", "digest", "file_sizes", "git_describe",
           "fingerprint_difference", "job_state", "lock_holder", "locked", "make_fingerprint", "mark_failed",
           "now_iso", "redirect_output", "run_job", "run_job_logged"]
