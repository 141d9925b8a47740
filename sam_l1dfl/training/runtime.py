"""The training runtime both trainers share: run directory, states, logs, data order, loop skeleton.

SAM-Med3D fine-tuning (:mod:`sam_l1dfl.training.loop`) and the CNNs (:mod:`sam_l1dfl.cnn.train`)
are two :class:`Trainer` subclasses.  The run directory ``<output_dir>/<name>/`` is the same::

    config.yaml            the resolved config (written when the run starts)
    states/step_NNNNNNNN/  accelerator.save_state (model.safetensors, optimizer.bin, RNG states)
                           + run_state.json (LR scheduler, progress counters); written to
                           states/.tmp-… by every process, then renamed; last K kept
    best/  last/           the trainer's model directory (weights + config.json; best/'s says
                           best_is_initial when no validation beat the one before training)
    metrics.json           the run's summary (with best_is_initial)
    train_log.jsonl        one line per logged step (lr: the rate that step used) and per
                           validation; on resume cut back to the resumed step
    tb/                    TensorBoard scalars (Accelerate's ``logging_dir``)

:class:`Trainer` runs ``setup`` → ``on_train_start`` → the loop (``train_step`` per batch; every
optimizer step: scheduler, progress bar, ``log_every`` logging; ``on_step_end`` /
``on_epoch_end`` schedule ``validate`` and state saving) → ``finish`` (final validation, last
state, ``last/``, ``metrics.json``).  The hooks are the light cousin of nnU-Net's
``on_train_start`` / ``train_step`` / ``validation_step``.

Accelerate's ``ProjectConfiguration`` (:func:`~sam_l1dfl.training.distributed.make_accelerator`)
names the run directory and ``tb/``; its ``automatic_checkpoint_naming`` + ``total_limit`` would
keep the last K states as ``checkpoints/checkpoint_<i>`` written in place, so
:func:`save_run_state` keeps ``states/step_<N>`` (named by optimizer step) and writes it
atomically instead.  :func:`~sam_l1dfl.seeding.seed_of` (re-exported here) seeds everything
that must not depend on the process split or a resume.

**Resuming runs no code from the run directory.**  Run directories get shared like
checkpoints, and Accelerate unpickles registered objects with ``weights_only=False``; so
nothing is registered with it: the scheduler and progress go to ``run_state.json``, and before
``accelerator.load_state`` touches a state, :func:`check_state` vets every file in it
(``torch.load(weights_only=True)`` of each pickle, the safetensors header, the JSON).  A state
that needs more is refused in one line unless ``trust`` (``--trust``).  States written before
``run_state.json`` (scheduler and progress as ``custom_checkpoint_{0,1}.pkl``) still resume:
vetted the same way, then loaded as the registered objects they were.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from accelerate.utils import set_seed

from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.errors import CheckpointError, ConfigError, InputError
from sam_l1dfl.formats import METRICS_FILE, RUN_STATE_FILE
from sam_l1dfl.io_utils import set_output_modes, write_json_atomic, write_text_atomic
from sam_l1dfl.model.weights import read_safetensors, torch_load
from sam_l1dfl.progress import progress as show_progress
from sam_l1dfl.seeding import seed_of
from sam_l1dfl.training.distributed import make_accelerator

STATE_PREFIX = "step_"


# ---------------------------------------------------------------------- determinism
@contextlib.contextmanager
def deterministic_kernels(on: bool):
    """``train.deterministic``: while the run lasts, cuDNN picks deterministic algorithms and no
    benchmark, and ``torch.use_deterministic_algorithms(True, warn_only=True)`` makes every op
    that has only a nondeterministic CUDA kernel say so (a warning naming it).  Sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (cuBLAS reads it when its handle is made, i.e.
    before the process's first CUDA matrix product).  The previous settings come back at the end."""
    if not on:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


# ---------------------------------------------------------------------- data order
class EpochSampler(torch.utils.data.Sampler):
    """A permutation per epoch from ``(seed, epoch)``; ``set_epoch`` like DistributedSampler."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def split_cases(cfg) -> tuple[list, list]:
    """(train records, val records) with labels from ``cfg.data`` and ``cfg.seed``; deterministic."""

    def labelled(root: str):
        rep = discover_cases(root, check_headers=False)
        recs = [c for c in rep.cases if c.label is not None]
        if not recs:
            raise InputError(root, "no cases with a label found (see `sam-l1dfl data` for the report)")
        return sorted(recs, key=lambda r: r.case_id)

    recs = labelled(cfg.data.root)
    if cfg.data.val_root:
        return recs, labelled(cfg.data.val_root)
    if cfg.data.val_cases:
        ids = set(cfg.data.val_cases)
        unknown = ids - {r.case_id for r in recs}
        if unknown:
            raise ConfigError(cfg.source, f"data.val_cases: unknown case id(s) {sorted(unknown)} in {cfg.data.root}")
        return [r for r in recs if r.case_id not in ids], [r for r in recs if r.case_id in ids]
    n_val = int(round(cfg.data.val_fraction * len(recs)))
    if cfg.data.val_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= len(recs):
        raise InputError(cfg.data.root, f"only {len(recs)} labelled case(s): too few to hold out {n_val} for validation")
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(recs), generator=g).tolist()
    val_idx = set(perm[:n_val])
    return ([r for i, r in enumerate(recs) if i not in val_idx], [r for i, r in enumerate(recs) if i in val_idx])


# ---------------------------------------------------------------------- run directory and states
def open_run(cfg, acc, resume: bool) -> Path:
    """Refuse a run directory that holds states (unless ``resume``), create it, write ``config.yaml``."""
    run_dir = cfg.run_dir
    if not resume and latest_state(run_dir / "states") is not None:
        raise ConfigError(run_dir, "already holds a training run; pass --resume to continue it or choose another name")
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    return run_dir


def _states(states_dir: Path) -> list[Path]:
    return sorted(p for p in states_dir.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX))


def latest_state(states_dir: Path) -> Optional[Path]:
    """The newest complete ``states/step_N`` (None when there is none)."""
    if not states_dir.is_dir():
        return None
    done = _states(states_dir)
    return done[-1] if done else None


def save_run_state(acc, states_dir: Path, step: int, keep_last: int, run_state: dict) -> Path:
    """``accelerator.save_state`` by every process (RNG states per process) into
    ``states/.tmp-step_N``, plus ``run_state`` as ``run_state.json``, renamed by the main
    process; keeps the last ``keep_last``."""
    final = states_dir / f"{STATE_PREFIX}{step:08d}"
    tmp = states_dir / f".tmp-{final.name}"
    if acc.is_main_process:
        states_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json_atomic(tmp / RUN_STATE_FILE, run_state)
        set_output_modes(tmp)  # safetensors writes model.safetensors 0600
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _states(states_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


_PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")
LEGACY_STATE = "custom_checkpoint_*.pkl"  # scheduler and progress before run_state.json


def check_state(state_dir: Path, trust: bool = False) -> None:
    """Vet every file of a saved state that Accelerate or :meth:`Trainer.restore` would read,
    before anything is unpickled: pickles must load with ``torch.load(weights_only=True)`` and
    the allowlist of :func:`sam_l1dfl.model.weights.safe_globals` (with ``trust``: only be
    ``torch.save`` files), safetensors files must have a readable header, JSON must parse.
    Raises a one-line :class:`CheckpointError` naming the file."""
    if not (state_dir / RUN_STATE_FILE).is_file() and not any(state_dir.glob(LEGACY_STATE)):
        raise CheckpointError(state_dir, f"incomplete training state: no {RUN_STATE_FILE}")
    for f in sorted(state_dir.iterdir()):
        if not f.is_file():
            # FSDP/DeepSpeed sub-folders hold torch.distributed checkpoints, whose metadata is
            # read with plain pickle: nothing we can vet, so only with --trust
            if trust:
                continue
            raise CheckpointError(f, "not a plain file of a training state (a sharded FSDP/DeepSpeed "
                                     "state cannot be vetted; pass --trust only for a run you trust)")
        if f.suffix == ".safetensors":
            read_safetensors(f, keys_only=True)
        elif f.suffix == ".json":
            _read_json(f)
        elif f.suffix in _PICKLE_SUFFIXES:
            if not f.is_file():
                raise CheckpointError(f, "not a regular file")
            torch_load(f, trust=trust, what="training state file", check_only=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from None


def _same_layout(a: Any, b: Any) -> bool:
    """``a`` has the structure of ``b``: the same keys, list lengths, and kinds of leaves."""
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same_layout(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(map(_same_layout, a, b))
    if isinstance(b, bool) or b is None or isinstance(a, bool):
        return type(a) is type(b)
    if isinstance(b, (int, float)):
        return isinstance(a, (int, float))
    return type(a) is type(b)


class Progress:
    """Counters saved with every state (in ``run_state.json``); subclasses extend
    ``defaults``.  Numbers are stored as they are, anything else as JSON text."""

    defaults: dict[str, Any] = {"global_step": 0, "epoch": 0, "val_history": []}

    def __init__(self):
        for k, v in self.defaults.items():
            setattr(self, k, copy.deepcopy(v))

    def _number(self, k: str) -> bool:
        return isinstance(self.defaults[k], (int, float))

    def state_dict(self) -> dict:
        return {k: getattr(self, k) if self._number(k) else json.dumps(getattr(self, k)) for k in self.defaults}

    def load_state_dict(self, d: dict) -> None:
        for k, v in self.defaults.items():
            setattr(self, k, type(v)(d[k]) if self._number(k) else json.loads(d[k]))


# ---------------------------------------------------------------------- logging
def _logged_step(line: str) -> Optional[int]:
    """The step of a ``train_log.jsonl`` line (0 without one); None for a blank line or one cut short
    by a kill."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


class RunLog:
    """``train_log.jsonl`` lines and TensorBoard scalars, written by the main process only.

    ``resumed_at``: the step of the state a resumed run starts from.  What the interrupted run
    logged after it is dropped, as the resumed run logs those steps again: ``train_log.jsonl`` keeps
    its lines up to that step (rewritten atomically), and TensorBoard purges from the next step on
    (``purge_step = resumed_at + 1``, the first step logged again; the step itself stays)."""

    def __init__(self, acc, run_dir: Path, resumed_at: Optional[int] = None):
        self.main = acc.is_main_process
        self.path = run_dir / "train_log.jsonl"
        self.tb = None
        if self.main:
            if resumed_at is not None and self.path.is_file():
                steps = [(_logged_step(l), l) for l in self.path.read_text().splitlines()]
                write_text_atomic(self.path, "".join(l + "\n" for k, l in steps if k is not None and k <= resumed_at))
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                return
            self.tb = SummaryWriter(str(getattr(acc, "logging_dir", None) or run_dir / "tb"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)

    def line(self, rec: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class RunningMeans:
    """Device-side running sums of the logged training quantities: one host sync per log line."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, parts: dict) -> None:
        for k, v in parts.items():
            if v is not None:
                self.sums[k] = v if k not in self.sums else self.sums[k] + v
        self.n += 1

    def reduce(self, acc) -> dict[str, float]:
        """Means over the steps since the last call, averaged over processes; resets."""
        keys = list(self.sums)
        vec = torch.stack([self.sums[k].float() / self.n for k in keys])
        vec = acc.reduce(vec, reduction="mean").tolist()
        self.sums, self.n = {}, 0
        return dict(zip(keys, vec))


def peak_memory_mb(device) -> dict:
    """Peak resident memory of this process (and peak CUDA allocation on a GPU), in MB."""
    import resource

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if getattr(device, "type", str(device)) == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


@dataclass
class RunResult:
    """What a training run returns; each trainer adds its own fields (keyword-only)."""

    run_dir: Path
    steps: int
    val_history: list = field(default_factory=list)
    """One entry per validation (the ``"val"`` lines of ``train_log.jsonl`` without the detail)."""
    losses: list = field(default_factory=list)
    """The logged training losses (one per ``log_every`` steps)."""
    metrics: dict = field(default_factory=dict)
    """The content of ``metrics.json``."""
    main_process: bool = True
    """Whether this process is the main one (only it prints a summary)."""


# ---------------------------------------------------------------------- the loop skeleton
class Trainer:
    """One training run; subclasses fill in the hooks below.

    ``setup`` builds data, model, optimizer and scheduler (calling :meth:`prepare`) and sets
    ``total_steps``, ``n_epochs``; ``epoch_batches(epoch)`` yields the batches of an epoch;
    ``train_step(batch, epoch)`` does forward/backward/optimizer step inside
    ``accelerator.accumulate`` and returns the detached quantities to log; ``validate()`` returns
    a result dict with ``score_key`` (model selection, higher is better) and ``detail_key``;
    ``save_model(which, res)`` writes ``best/`` or ``last/``; ``summary(final)`` the metrics;
    ``result(metrics, final)`` what ``run()`` returns.
    """

    desc = "train"
    progress_type = Progress
    score_key = "dice"
    detail_key = "per_case"
    log_detail = True  # write the per-case/lesion detail into train_log.jsonl
    val_scalars: tuple[str, ...] = ("dice",)
    best_fields = ("best_dice", "best_epoch", "epoch")  # (score, where, counter it is taken from)

    def __init__(self, cfg, resume: bool = False, accelerator=None, progress: bool = True, trust: bool = False):
        cfg.validate()
        self.cfg, self.resume, self.progress, self.trust = cfg, bool(resume), progress, bool(trust)
        self.acc = accelerator or make_accelerator(cfg)
        self.main = self.acc.is_main_process
        self.states_dir = cfg.run_dir / "states"
        self.to_restore = self.state_to_resume()  # before anything is written or built
        self.run_dir = open_run(cfg, self.acc, self.resume)
        set_seed(cfg.seed)
        self.t_start = time.perf_counter()
        self.state = self.progress_type()
        self.total_steps, self.n_epochs = 0, math.inf
        self.resumed_from: Optional[str] = None
        self.last_saved = -1
        self.last_res: Optional[dict] = None
        self.losses: list[float] = []
        self.running = RunningMeans()
        self.train_time = 0.0
        self.t_log = time.perf_counter()
        self.log: Optional[RunLog] = None
        self.optimizer = self.scheduler = None
        self.step_lr = math.nan  # learning rate of the latest optimizer step (read before scheduler.step())

    def say(self, msg: str) -> None:
        if self.progress:
            self.acc.print(msg)

    # -------------------------------------------------------------- hooks
    def setup(self) -> None:
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> Iterable:
        raise NotImplementedError

    def train_step(self, batch, epoch: int) -> dict:
        raise NotImplementedError

    def validate(self) -> dict:
        raise NotImplementedError

    def save_model(self, which: str, res: Optional[dict]) -> None:
        raise NotImplementedError

    def summary(self, final: Optional[dict]) -> dict:
        raise NotImplementedError

    def result(self, metrics: dict, final: Optional[dict]):
        raise NotImplementedError

    def on_train_start(self) -> None:
        pass

    def on_step_end(self, step: int) -> None:
        pass

    def on_epoch_end(self, complete: bool) -> None:
        """``complete``: the epoch's batches all ran (not cut by ``max_steps``)."""
        self.state.epoch += 1

    def epoch_complete(self) -> bool:
        return True

    def throughput(self, seconds: float) -> dict:
        return {"seconds": round(seconds, 3)}

    def describe(self, res: dict) -> str:
        return f"step {self.state.global_step}: val Dice {res[self.score_key]:.4f}"

    def position(self) -> dict:
        return {"step": self.state.global_step}

    # -------------------------------------------------------------- shared steps
    def prepare(self, *objs):
        """``accelerator.prepare(*objs)``; the scheduler and progress are saved by :meth:`save_state`."""
        return self.acc.prepare(*objs)

    def state_to_resume(self) -> Optional[Path]:
        """With ``resume``: the newest state, vetted by :func:`check_state` (None: start fresh)."""
        if not self.resume:
            return None
        latest = latest_state(self.states_dir)
        if latest is None:
            self.say(f"--resume: no saved state in {self.states_dir}; starting fresh")
            return None
        check_state(latest, self.trust)
        return latest

    def restore(self, latest: Optional[Path]) -> None:
        """Load the state ``latest`` (from :meth:`state_to_resume`) into the prepared objects."""
        if latest is None:
            return
        if any(latest.glob(LEGACY_STATE)):  # vetted above: tensors and plain values only
            self.acc.register_for_checkpointing(self.scheduler, self.state)
        self.acc.load_state(str(latest), **({"load_kwargs": {"weights_only": False}} if self.trust else {}))
        if (latest / RUN_STATE_FILE).is_file():
            self.load_run_state(latest / RUN_STATE_FILE)
        self.resumed_from = str(latest)
        self.last_saved = self.state.global_step
        self.acc.print(f"resumed from {latest} (step {self.state.global_step}, epoch {self.state.epoch})")

    def run_state(self) -> dict:
        """What ``run_state.json`` holds: the LR scheduler's and the progress counters' state dicts."""
        return {"scheduler": self.scheduler.state_dict(), "progress": self.state.state_dict()}

    def load_run_state(self, path: Path) -> None:
        doc = _read_json(path)
        problem = "does not hold this run's scheduler and progress state (another run or another sam-l1dfl version?)"
        if not _same_layout(doc, self.run_state()):
            raise CheckpointError(path, problem)
        try:
            self.scheduler.load_state_dict(doc["scheduler"])
            self.state.load_state_dict(doc["progress"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"{problem}: {exc}") from None

    def save_state(self) -> None:
        save_run_state(self.acc, self.states_dir, self.state.global_step, self.cfg.train.keep_last, self.run_state())
        self.last_saved = self.state.global_step
        self.t_log = time.perf_counter()

    def run_validation(self) -> dict:
        """Validate and record it: history, log line, TensorBoard, ``best/`` when it improves."""
        res = self.last_res = self.validate()
        st = self.state
        entry = {**self.position(), **{k: v for k, v in res.items() if k != self.detail_key}}
        st.val_history.append(entry)
        self.log.line({"type": "val", **entry, **({self.detail_key: res[self.detail_key]} if self.log_detail else {})})
        self.log.scalars("val", {k: res[k] for k in self.val_scalars}, st.global_step)
        score, where, counter = self.best_fields
        if res[self.score_key] > getattr(st, score):
            setattr(st, score, res[self.score_key])
            setattr(st, where, getattr(st, counter))
            if self.main:
                self.save_model("best", res)
        self.say(self.describe(res))
        self.t_log = time.perf_counter()
        return res

    def log_train(self, epoch: int, bar) -> None:
        means = self.running.reduce(self.acc)
        now = time.perf_counter()
        dt = now - self.t_log
        self.train_time += dt
        step = self.state.global_step
        rec = {"type": "train", "step": step, "epoch": epoch, "lr": self.step_lr,
               **{k: round(v, 6) for k, v in means.items()}, **self.throughput(dt)}
        self.losses.append(rec["loss"])
        self.log.line(rec)
        self.log.scalars("train", {k: rec[k] for k in rec if k not in ("type", "step", "epoch")}, step)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
        self.t_log = time.perf_counter()

    @property
    def best_is_initial(self) -> bool:
        """Whether ``best/`` holds the starting weights: the best validation was the one before any
        training step (position 0).  Recorded in ``metrics.json`` and the trainers' ``best/config.json``."""
        return getattr(self.state, self.best_fields[1]) == 0

    def done(self) -> bool:
        return self.state.global_step >= self.total_steps or self.state.epoch >= self.n_epochs

    def fit(self) -> None:
        """The loop: batches until ``total_steps`` optimizer steps (or ``n_epochs``)."""
        st, acc = self.state, self.acc
        bar = show_progress(total=self.total_steps, initial=st.global_step, desc=f"{self.desc} {self.cfg.name}",
                            unit="step", enabled=self.progress and acc.is_local_main_process)
        self.t_log = time.perf_counter()
        while not self.done():
            epoch = st.epoch
            complete = True
            for batch in self.epoch_batches(epoch):
                self.running.add(self.train_step(batch, epoch))
                if not acc.sync_gradients:
                    continue
                self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this optimizer step used
                self.scheduler.step()
                st.global_step += 1
                bar.update(1)
                step = st.global_step
                if step % self.cfg.train.log_every == 0 or step == self.total_steps:
                    self.log_train(epoch, bar)
                self.on_step_end(step)
                if step >= self.total_steps:
                    complete = self.epoch_complete()
                    break
            self.on_epoch_end(complete)
        bar.close()

    def finish(self):
        """Final validation (unless this step was just validated), last state, ``last/``, metrics."""
        st = self.state
        final = self.last_res
        validated = bool(st.val_history) and st.val_history[-1]["step"] == st.global_step
        if not validated:
            final = self.run_validation()
        elif final is None:  # resumed after the last validation: evaluate again, already recorded
            final = self.validate()
        if self.last_saved != st.global_step:
            self.save_state()
        if self.main:
            self.save_model("last", final)
        metrics = {**self.summary(final), "best_is_initial": self.best_is_initial}
        if self.main:
            write_json_atomic(self.run_dir / METRICS_FILE, metrics)
        self.log.close()
        if self.best_is_initial:
            self.acc.print(f"WARNING: validation {self.score_key} never beat the starting weights: "
                           f"{self.run_dir / 'best'} holds the model as it was BEFORE training (step 0); "
                           "use last/, or check the learning rate and train longer")
        self.acc.wait_for_everyone()
        res = self.result(metrics, final)
        res.main_process = self.main
        return res

    def run(self):
        """setup → restore (the state vetted when the trainer was made) → on_train_start → fit → finish,
        with deterministic kernels when ``train.deterministic``."""
        with deterministic_kernels(self.cfg.train.deterministic):
            self.setup()
            self.restore(self.to_restore)
            self.log = RunLog(self.acc, self.run_dir, resumed_at=self.state.global_step if self.resumed_from else None)
            self.on_train_start()
            self.fit()
            return self.finish()


__all__ = ["EpochSampler", "Progress", "RunLog", "RunResult", "RunningMeans", "STATE_PREFIX", "Trainer", "check_state",
           "deterministic_kernels", "latest_state", "open_run", "peak_memory_mb", "save_run_state", "seed_of", "split_cases"]
