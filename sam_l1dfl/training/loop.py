"""``train(cfg)``: SAM-Med3D decoder fine-tuning with Accelerate (one or many processes, CPU or GPU).

:class:`FinetuneTrainer` fills in the hooks of :class:`~sam_l1dfl.training.runtime.Trainer` (run
directory, states, logging and the loop are shared with the CNN trainer); what ``setup`` builds
is :class:`~sam_l1dfl.training.finetune_setup.FinetuneSetup`, what its log lines say
:class:`~sam_l1dfl.training.finetune_records.FinetuneRecords`.  In the run directory
``<output_dir>/<name>/``: ``best/`` and ``last/`` are model directories
(:func:`sam_l1dfl.model.save_model_dir`, with the preprocessing config so inference reproduces
it; best = 1-click validation Dice); ``metrics.json`` holds Dice before/after/best, the validation
history, per-lesion Dice and the setup; ``train_log.jsonl`` one line per logged step (loss parts,
lr, throughput) and per validation.  Validation and state saving run every ``val_every`` /
``save_every`` optimizer steps.

Data order is resumable and independent of the process split: epoch ``e`` visits the crops in
``torch.randperm(n, seed + e)`` order in global batches of ``batch_size × processes``
(accelerate's batch-sampler sharding gives process ``r`` the ``r``-th slice; ``drop_last``), the
clicks are drawn from per-sample seeds (:func:`~sam_l1dfl.prompts.clicks.click_uniforms`), and
``--resume`` restores the state and skips the batches already seen (``skip_first_batches``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from sam_l1dfl.model import save_model_dir
from sam_l1dfl.prompts.clicks import click_uniforms, mask_only_iterations
from sam_l1dfl.training.clickloop import ClickLoop
from sam_l1dfl.training.config import FinetuneConfig
from sam_l1dfl.training.finetune_records import REPORT_AT, FinetuneRecords
from sam_l1dfl.training.finetune_setup import FinetuneSetup, SeededCrops
from sam_l1dfl.training.runtime import EpochSampler, Progress, RunResult, Trainer


# ---------------------------------------------------------------------- small pieces
def collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {"index": [int(it["index"]) for it in items]}  # stays on the host
    for k in ("embedding", "image", "label"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items])
    return out


class TrainState(Progress):
    """Progress counters saved with every state (``run_state.json``)."""

    defaults = {**Progress.defaults, "batch_in_epoch": 0, "best_dice1": -1.0, "best_step": -1, "dice_before": None}


@dataclass(kw_only=True)
class TrainResult(RunResult):
    """The run directory, the step count and Dice before/after (1, 3, 5 clicks) and at the best step."""

    dice_before: dict
    dice_after: dict
    best_dice1: float
    best_step: int


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _summary(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "per_lesion"}


# ---------------------------------------------------------------------- the trainer
class FinetuneTrainer(FinetuneSetup, FinetuneRecords, Trainer):
    """SAM-Med3D fine-tuning: lesion crops (or cached embeddings) through :class:`ClickLoop`."""

    desc = "finetune"
    progress_type = TrainState
    score_key = "dice@1"
    detail_key = "per_lesion"
    log_detail = False
    val_scalars = tuple(f"dice@{k}" for k in REPORT_AT)
    best_fields = ("best_dice1", "best_step", "global_step")

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        self.build_data()
        self.build_model()
        self.build_inputs()
        self.build_losses()
        loop = ClickLoop(self.model, cfg.prompts, self.loss_fn, cfg.trainable.iou_head, cfg.trainable.iou_loss_weight,
                         with_encoder=not self.use_cache,
                         weight_shares=self.loss_fn.weight_shares if cfg.train.log_weight_shares else None)
        self.params = [p for p in loop.parameters() if p.requires_grad]
        groups = [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
                  {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr,
                                           betas=tuple(cfg.optim.betas))
        self.sampler = EpochSampler(len(self.train_ds), cfg.seed)
        nw = cfg.data.num_workers
        train_dl = torch.utils.data.DataLoader(self.train_ds, batch_size=cfg.train.batch_size, sampler=self.sampler,
                                               drop_last=True, collate_fn=collate, num_workers=nw)
        val_dl = torch.utils.data.DataLoader(self.val_ds, batch_size=cfg.train.batch_size, shuffle=False,
                                             collate_fn=collate, num_workers=nw)
        self.batches_per_epoch = len(self.train_ds) // self.gb
        steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / cfg.train.grad_accum))
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.warmup_steps, self.total_steps, cfg.optim.min_lr_ratio))
        self.loop, self.optimizer, self.train_dl, self.val_dl = self.prepare(loop, self.optimizer, train_dl, val_dl)
        self.samples_since = 0

    # -------------------------------------------------------------- loop hooks
    def on_train_start(self) -> None:
        if self.state.dice_before is None:
            self.state.dice_before = _summary(self.run_validation())
        self.loop.train()

    def epoch_batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        self.train_dl.set_epoch(epoch)
        skip = self.state.batch_in_epoch
        return self.acc.skip_first_batches(self.train_dl, skip) if skip else self.train_dl

    def train_step(self, batch, epoch: int) -> dict:
        cfg, acc, st = self.cfg, self.acc, self.state
        n_clicks = cfg.prompts.clicks_per_sample
        mo = mask_only_iterations(cfg.prompts.mask_only, n_clicks, cfg.seed, epoch, st.batch_in_epoch)
        u = click_uniforms(cfg.seed, epoch, batch["index"], n_clicks).to(acc.device, non_blocking=True)
        loss_fn = self.step_loss()
        with acc.accumulate(self.loop):
            out = self.loop(label=batch["label"], u=u, embeddings=batch.get("embedding"),
                            images=batch.get("image"), mask_only=mo, loss_fn=loss_fn)
            acc.backward(out["loss"])
            if acc.sync_gradients and cfg.optim.grad_clip:
                acc.clip_grad_norm_(self.params, cfg.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        st.batch_in_epoch += 1
        self.samples_since += self.gb
        parts = {"loss": out["loss"].detach(), "seg_first": out["seg_per_iter"][0],
                 "seg_last": out["seg_per_iter"][-1], "iou": out.get("iou_mse"), "dice": out["dice_last"]}
        if self.warm_loss is not None:  # the share of the logged steps that used the warm-start loss
            parts["warmup"] = torch.full((), float(loss_fn is self.warm_loss), device=out["loss"].device)
        parts.update({k: v for k, v in out.items() if k.startswith(("beta_", "dgrad_"))})
        return parts

    def on_step_end(self, step: int) -> None:
        t = self.cfg.train
        if t.val_every and step % t.val_every == 0 and step != self.total_steps:
            self.run_validation()
        if t.save_every and step % t.save_every == 0:
            self.save_state()

    def epoch_complete(self) -> bool:
        return self.state.batch_in_epoch >= self.batches_per_epoch

    def on_epoch_end(self, complete: bool) -> None:
        if complete:
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # -------------------------------------------------------------- validation and outputs
    def validate(self) -> dict:
        """Dice after 1, 3 and 5 simulated clicks per validation lesion (mean and per lesion)."""
        acc = self.acc
        net = acc.unwrap_model(self.loop)
        net.eval()
        dices, idxs, deps = [], [], []
        for batch in self.val_dl:
            with acc.autocast():
                d = net.evaluate(batch["label"], embeddings=batch.get("embedding"), images=batch.get("image"),
                                 report_at=REPORT_AT)
                dep = net.image_dependence(batch["label"], batch.get("image"))
            idx = torch.tensor(batch["index"], device=d.device)
            d, idx = acc.gather_for_metrics((d.float(), idx))
            dices.append(d.cpu())
            idxs.append(idx.cpu())
            if dep is not None:
                deps.append(acc.gather_for_metrics(dep.float()).cpu())
        net.train()
        d = torch.cat(dices)
        idx = torch.cat(idxs).tolist()
        res: dict[str, Any] = {f"dice@{k}": float(d[:, j].mean()) for j, k in enumerate(REPORT_AT)}
        if deps:  # the median Dice of the one-click masks to those on zeros / noise (issue 28: <= 0.5)
            dep = torch.cat(deps)
            res["image_dependence"] = {"zeros": float(dep[:, 0].median()), "noise": float(dep[:, 1].median())}
        res["n_lesions"] = len(idx)
        res["per_lesion"] = [{**self.val_meta[i], **{f"dice@{k}": round(float(d[r, j]), 5)
                                                     for j, k in enumerate(REPORT_AT)}} for r, i in enumerate(idx)]
        return res

    def save_model(self, which: str, res: Optional[dict]) -> None:
        cfg, pre = self.cfg, self.cfg.preprocess
        meta = {"input_mode": pre.input_mode, "preprocess": pre.to_dict(),
                "prompt_types": [t for t, on in (("points", cfg.prompts.points), ("boxes", cfg.prompts.boxes)) if on],
                "loss": {"name": cfg.loss.name, **cfg.loss.params,
                         **({"warmup_steps": cfg.loss.warmup_steps, "warmup_name": cfg.loss.warmup_name}
                            if cfg.loss.warmup_steps else {})},
                "training": {"step": self.state.global_step, "val_dice": _summary(res or {}),
                             "best_is_initial": which == "best" and self.best_is_initial,
                             "start_from": self.start_from, "config": cfg.to_dict()}}
        if self.lora is None:
            save_model_dir(self.model, self.run_dir / which, meta)
        else:  # the factors merged in (official keys) + the factors alone
            self.lora.save(self.run_dir / which, meta)

    def summary(self, final: Optional[dict]) -> dict:
        st, cfg = self.state, self.cfg
        return {
            "name": cfg.name, "steps": st.global_step, "epochs_started": st.epoch,
            "processes": self.acc.num_processes, "global_batch": self.gb * cfg.train.grad_accum,
            "dice_before": st.dice_before, "dice_after": _summary(final),
            "best": {"step": st.best_step, "dice@1": st.best_dice1},
            "val_history": st.val_history, "per_lesion_after": final["per_lesion"],
            "trainable": self.trainable, "embedding_cache": self.cache_stats, "resumed_from": self.resumed_from,
            "start_from": self.start_from, "train_seconds_logged": round(self.train_time, 2),
        }

    def result(self, metrics: dict, final: Optional[dict]) -> "TrainResult":
        st = self.state
        return TrainResult(run_dir=self.run_dir, steps=st.global_step, dice_before=st.dice_before,
                           dice_after=metrics["dice_after"], best_dice1=st.best_dice1, best_step=st.best_step,
                           val_history=st.val_history, losses=self.losses, metrics=metrics)


def train(cfg: FinetuneConfig, resume: bool = False, accelerator=None, progress: bool = True,
          trust: bool = False) -> TrainResult:
    """Fine-tune per ``cfg``; returns the run directory and Dice before/after (1, 3, 5 clicks).

    ``trust``: load a starting ``model.checkpoint`` that needs full unpickling and, with
    ``resume``, a saved state whose pickles need more than tensors and plain values
    (:func:`~sam_l1dfl.training.runtime.check_state`); that can run code.  Only this keyword (the
    command line's ``--trust``) grants it: a config's ``*trust*`` key is dropped with a warning.
    """
    return FinetuneTrainer(cfg, resume=resume, accelerator=accelerator, progress=progress, trust=trust).run()


__all__ = ["FinetuneTrainer", "SeededCrops", "TrainResult", "TrainState", "lr_lambda", "train"]
