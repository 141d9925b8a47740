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

The run directory and its states live in :mod:`sam_l1dfl.training.states` (with
:class:`~sam_l1dfl.training.states.Resumable`, the trainer's checkpoint and resume steps), the
log and its running means in :mod:`sam_l1dfl.training.runlog` (with
:class:`~sam_l1dfl.training.runlog.Records`, the trainer's logging steps); this module re-exports
their public names and keeps the data order and the loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from accelerate.utils import set_seed

from sam_l1dfl.data.discovery import discover_cases
from sam_l1dfl.errors import ConfigError, InputError
from sam_l1dfl.formats import METRICS_FILE
from sam_l1dfl.io_utils import write_json_atomic
from sam_l1dfl.progress import progress as show_progress
from sam_l1dfl.seeding import seed_of
from sam_l1dfl.training.distributed import make_accelerator
from sam_l1dfl.training.runlog import Records, RunLog, RunningMeans
from sam_l1dfl.training.states import (STATE_PREFIX, Progress, Resumable, check_state, latest_state, open_run,
                                       save_run_state)

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
class Trainer(Resumable, Records):
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

    # -------------------------------------------------------------- shared steps
    def prepare(self, *objs):
        """``accelerator.prepare(*objs)``; the scheduler and progress are saved by :meth:`save_state`."""
        return self.acc.prepare(*objs)

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

