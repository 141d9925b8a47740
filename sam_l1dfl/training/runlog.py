"""What a training run records: ``train_log.jsonl`` and TensorBoard (:class:`RunLog`), the running
means of the logged quantities, and the :class:`Records` part of a trainer that writes a training
line every ``log_every`` steps and records each validation (history, log, ``best/``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from sam_l1dfl.io_utils import write_text_atomic

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



class Records:
    """The logging steps of :class:`~sam_l1dfl.training.runtime.Trainer`: a validation recorded
    (history, log line, TensorBoard, ``best/`` when it improves) and a training log line."""

    def say(self, msg: str) -> None:
        if self.progress:
            self.acc.print(msg)

    # -- hooks: what a log line says ---------------------------------------------------------------
    def throughput(self, seconds: float) -> dict:
        return {"seconds": round(seconds, 3)}

    def describe(self, res: dict) -> str:
        return f"step {self.state.global_step}: val Dice {res[self.score_key]:.4f}"

    def position(self) -> dict:
        return {"step": self.state.global_step}

    def run_validation(self) -> dict:
        """Validate and record it: history, log line, TensorBoard, ``best/`` when it improves."""
        res = self.last_res = self.validate()
        st = self.state
        entry = {**self.position(), **{k: v for k, v in res.items() if k != self.detail_key}}
        st.val_history.append(entry)
        self.log.line({"type": "val", **entry, **({self.detail_key: res[self.detail_key]} if self.log_detail else {})})
        scalars = {k: res[k] for k in self.val_scalars}
        scalars.update({f"image_dependence_{k}": v for k, v in (res.get("image_dependence") or {}).items()})
        self.log.scalars("val", scalars, st.global_step)
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
