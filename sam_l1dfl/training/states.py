"""The run directory and its saved states: open a run, save a state atomically, find the newest,
vet one before anything is unpickled, and the :class:`Resumable` part of a trainer that resumes
from it (the layout is described in :mod:`sam_l1dfl.training.runtime`)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from sam_l1dfl.errors import CheckpointError, ConfigError
from sam_l1dfl.formats import RUN_STATE_FILE
from sam_l1dfl.io_utils import set_output_modes, write_json_atomic, write_text_atomic
from sam_l1dfl.model.weights import read_safetensors, torch_load

STATE_PREFIX = "step_"


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



class Resumable:
    """The checkpoint and resume steps of :class:`~sam_l1dfl.training.runtime.Trainer`: which state
    to resume, loading it into the prepared objects, and saving one (``states/step_N``)."""

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
