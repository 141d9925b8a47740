"""``train(cfg)``: decoder fine-tuning with Accelerate (one or many processes, CPU or GPU).

Run directory ``<output_dir>/<name>/``::

    config.yaml         the resolved FinetuneConfig
    states/step_NNNNNNNN/   accelerator.save_state (model, optimizer, scheduler, RNG, progress);
                        written to states/.tmp-… by every process, then renamed; last K kept
    best/  last/        model.safetensors + config.json (sam_l1dfl.model.save_model_dir, with the
                        preprocessing config so inference reproduces it); best = 1-click Dice
    metrics.json        Dice before/after/best, validation history, per-lesion Dice, setup
    train_log.jsonl     one line per logged step (loss parts, lr, throughput) and per validation
    tb/                 TensorBoard scalars

Data order is resumable and independent of the process split: epoch ``e`` visits the crops in
``torch.randperm(n, seed + e)`` order in global batches of ``batch_size × processes``
(accelerate's batch-sampler sharding gives process ``r`` the ``r``-th slice; ``drop_last``), the
clicks are drawn from per-sample seeds (:func:`~sam_l1dfl.training.clickloop.click_uniforms`), and
``--resume`` restores the state and skips the batches already seen (``skip_first_batches``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from sam_l1dfl.errors import ConfigError, InputError
from sam_l1dfl.training.config import FinetuneConfig

STATE_PREFIX = "step_"


# ---------------------------------------------------------------------- small pieces
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


class SeededCrops(torch.utils.data.Dataset):
    """LesionCropDataset items with their index, jitter drawn from a per-(epoch, index) seed."""

    def __init__(self, crops, seed: int):
        self.crops, self.seed, self.epoch = crops, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        from sam_l1dfl.training.clickloop import _seed_of

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_of("jitter", self.seed, self.epoch, int(i)))
            item = self.crops[i]
        return {"image": item["image"], "label": item["label"], "index": i}


def collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {"index": [int(it["index"]) for it in items]}  # stays on the host
    for k in ("embedding", "image", "label"):
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items])
    return out


class TrainState:
    """Progress counters saved with every state (``register_for_checkpointing``)."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_dice1 = -1.0
        self.best_step = -1
        self.dice_before: Optional[dict] = None
        self.val_history: list = []

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_dice1": self.best_dice1, "best_step": self.best_step,
                "dice_before": json.dumps(self.dice_before), "val_history": json.dumps(self.val_history)}

    def load_state_dict(self, d: dict) -> None:
        self.global_step, self.epoch = int(d["global_step"]), int(d["epoch"])
        self.batch_in_epoch = int(d["batch_in_epoch"])
        self.best_dice1, self.best_step = float(d["best_dice1"]), int(d["best_step"])
        self.dice_before = json.loads(d["dice_before"])
        self.val_history = json.loads(d["val_history"])


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def latest_state(states_dir: Path) -> Optional[Path]:
    if not states_dir.is_dir():
        return None
    done = sorted(p for p in states_dir.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX))
    return done[-1] if done else None


def save_run_state(acc, states_dir: Path, step: int, keep_last: int) -> Path:
    """``accelerator.save_state`` by every process (RNG states per process) into
    ``states/.tmp-step_N``, renamed by the main process; keeps the last ``keep_last``."""
    final = states_dir / f"{STATE_PREFIX}{step:08d}"
    tmp = states_dir / f".tmp-{final.name}"
    if acc.is_main_process:
        states_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted(p for p in states_dir.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX))
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def split_cases(cfg: FinetuneConfig) -> tuple[list, list]:
    """(train records, val records) with labels; deterministic."""
    from sam_l1dfl.data.discovery import discover_cases

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


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    dice_before: dict
    dice_after: dict
    best_dice1: float
    best_step: int
    losses: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- train
def train(cfg: FinetuneConfig, resume: bool = False, accelerator=None, progress: bool = True) -> TrainResult:
    """Fine-tune per ``cfg``; returns the run directory and Dice before/after (1, 3, 5 clicks)."""
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from sam_l1dfl.data.dataset import LesionCropDataset
    from sam_l1dfl.io_utils import write_json_atomic, write_text_atomic
    from sam_l1dfl.model import build_sam_med3d, load_sam_med3d, save_model_dir
    from sam_l1dfl.training.clickloop import ClickLoop, click_uniforms, configure_trainable, mask_only_iterations
    from sam_l1dfl.training.distributed import make_accelerator
    from sam_l1dfl.training.embedding_cache import build_embedding_cache
    from sam_l1dfl.training.losses import build_loss

    cfg.validate()
    acc = accelerator or make_accelerator(cfg)
    main = acc.is_main_process
    run_dir = cfg.run_dir
    states_dir = run_dir / "states"
    if not resume and latest_state(states_dir) is not None:
        raise ConfigError(run_dir, "already holds a training run; pass --resume to continue it or choose another name")
    set_seed(cfg.seed)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    say = (lambda msg: acc.print(msg)) if progress else (lambda msg: None)

    # ---- data
    icfg = cfg.intensity_config()
    train_recs, val_recs = split_cases(cfg)
    crop_cache = cfg.cache_dir / "crops"
    kw = dict(cluster_mm=cfg.data.cluster_mm, connectivity=cfg.data.connectivity,
              progress=progress and acc.is_local_main_process)
    use_cache = cfg.use_embedding_cache()
    with acc.main_process_first():
        train_crops = LesionCropDataset(train_recs, icfg, cache_dir=crop_cache, train=not use_cache,
                                        jitter_mm=0.0 if use_cache else cfg.augment.jitter_mm, **kw)
        val_crops = LesionCropDataset(val_recs, icfg, cache_dir=crop_cache, train=False, **kw)
    for ds, k in ((train_crops, "max_train_crops"), (val_crops, "max_val_crops")):
        lim = getattr(cfg.data, k)
        if lim is not None:
            ds.specs = ds.specs[:lim]
    gb = cfg.train.batch_size * acc.num_processes
    if len(train_crops) < gb:
        raise InputError(cfg.data.root, f"{len(train_crops)} training lesion crop(s), fewer than the global batch "
                                        f"{gb} (batch_size × processes)")
    if len(val_crops) == 0:
        raise InputError(cfg.data.val_root or cfg.data.root, "no lesion crops in the validation cases")

    # ---- model; freeze BEFORE prepare
    mcfg = cfg.model_config()
    if cfg.model.checkpoint:
        model = load_sam_med3d(cfg.model.checkpoint, cfg=mcfg, trust=cfg.model.trust_checkpoint)
        start_from = {"checkpoint": str(cfg.model.checkpoint), "sha256": model.load_report.sha256,
                      "newly_initialized": list(model.load_report.newly_initialized)}
    else:
        torch.manual_seed(cfg.seed)
        model = build_sam_med3d(mcfg)
        start_from = {"checkpoint": None}
        if main:
            acc.print("WARNING: model.checkpoint is not set: training starts from RANDOM weights "
                      "(results say nothing about SAM-Med3D)")
    trainable = configure_trainable(model, cfg)
    say(f"trainable: {trainable['n_trainable']:,} of {trainable['n_total']:,} parameters; "
        f"frozen as unused: {trainable['frozen_unused']}")

    # ---- embedding cache (frozen encoder) or crops
    cache_stats = None
    if use_cache:
        model.image_encoder.to(acc.device)
        ac_dtype = torch.bfloat16 if (acc.device.type == "cuda" and cfg.train.mixed_precision == "bf16") else None
        train_ds, cache_stats = build_embedding_cache(train_crops, model.image_encoder, cfg.cache_dir, acc,
                                                      autocast_dtype=ac_dtype, desc="embeddings (train)")
        val_ds, vstats = build_embedding_cache(val_crops, model.image_encoder, cfg.cache_dir, acc,
                                               autocast_dtype=ac_dtype, desc="embeddings (val)")
        cache_stats = {"train": cache_stats, "val": vstats}
        model.image_encoder.to("cpu")
        say(f"embedding cache: {cache_stats}")
    else:
        train_ds = SeededCrops(train_crops, cfg.seed)
        val_ds = SeededCrops(val_crops, cfg.seed)
    val_meta = [{"case_id": s.case_id, "lesion_id": s.lesion_id} for s in val_crops.specs]

    loss_fn = build_loss(cfg.loss.name, cfg.loss.params)
    loop = ClickLoop(model, cfg.prompts, loss_fn, cfg.trainable.iou_head, cfg.trainable.iou_loss_weight,
                     with_encoder=not use_cache)
    params = [p for p in loop.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    sampler = EpochSampler(len(train_ds), cfg.seed)
    nw = cfg.data.num_workers
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler,
                                           drop_last=True, collate_fn=collate, num_workers=nw)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=cfg.train.batch_size, shuffle=False,
                                         collate_fn=collate, num_workers=nw)
    batches_per_epoch = len(train_ds) // gb
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum))
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio))
    state = TrainState()
    acc.register_for_checkpointing(scheduler, state)
    loop, optimizer, train_dl, val_dl = acc.prepare(loop, optimizer, train_dl, val_dl)

    resumed_from = None
    if resume:
        latest = latest_state(states_dir)
        if latest is not None:
            acc.load_state(str(latest))
            resumed_from = str(latest)
            acc.print(f"resumed from {latest} (step {state.global_step}, epoch {state.epoch})")
        else:
            say(f"--resume: no saved state in {states_dir}; starting fresh")

    # ---- helpers
    tb = None
    log_path = run_dir / "train_log.jsonl"
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tb"), purge_step=state.global_step if resumed_from else None)
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            tb = None

    def log_line(rec: dict) -> None:
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    report_at = (1, 3, 5)

    def validate() -> dict:
        net = acc.unwrap_model(loop)
        net.eval()
        dices, idxs = [], []
        for batch in val_dl:
            with acc.autocast():
                d = net.evaluate(batch["label"], embeddings=batch.get("embedding"), images=batch.get("image"),
                                 report_at=report_at)
            idx = torch.tensor(batch["index"], device=d.device)
            d, idx = acc.gather_for_metrics((d.float(), idx))
            dices.append(d.cpu())
            idxs.append(idx.cpu())
        net.train()
        d = torch.cat(dices)
        idx = torch.cat(idxs).tolist()
        res = {f"dice@{k}": float(d[:, j].mean()) for j, k in enumerate(report_at)}
        res["n_lesions"] = len(idx)
        res["per_lesion"] = [{**val_meta[i], **{f"dice@{k}": round(float(d[r, j]), 5) for j, k in enumerate(report_at)}}
                             for r, i in enumerate(idx)]
        return res

    def model_meta(step: int, dice: Optional[dict]) -> dict:
        return {"input_mode": icfg.input_mode, "preprocess": icfg.to_dict(),
                "prompt_types": [t for t, on in (("points", cfg.prompts.points), ("boxes", cfg.prompts.boxes)) if on],
                "loss": {"name": cfg.loss.name, **cfg.loss.params},
                "training": {"step": step, "val_dice": {k: v for k, v in (dice or {}).items() if k != "per_lesion"},
                             "start_from": start_from, "config": cfg.to_dict()}}

    def save_weights(which: str, dice: Optional[dict]) -> None:
        if main:
            save_model_dir(model, run_dir / which, model_meta(state.global_step, dice))

    def save_state() -> None:
        save_run_state(acc, states_dir, state.global_step, cfg.train.keep_last)

    def on_validation(res: dict) -> None:
        entry = {"step": state.global_step, **{k: v for k, v in res.items() if k != "per_lesion"}}
        state.val_history.append(entry)
        log_line({"type": "val", **entry})
        if tb is not None:
            for k in report_at:
                tb.add_scalar(f"val/dice@{k}", res[f"dice@{k}"], state.global_step)
        if res["dice@1"] > state.best_dice1:
            state.best_dice1, state.best_step = res["dice@1"], state.global_step
            save_weights("best", res)
        say(f"step {state.global_step}: val Dice@1/3/5 = "
            + " / ".join(f"{res[f'dice@{k}']:.3f}" for k in report_at) + f" ({res['n_lesions']} lesions)")

    # ---- train
    if state.dice_before is None:
        res = validate()
        state.dice_before = {k: v for k, v in res.items() if k != "per_lesion"}
        on_validation(res)
    loop.train()
    bar = tqdm(total=total_steps, initial=state.global_step, desc=f"finetune {cfg.name}", unit="step",
               disable=not (progress and acc.is_local_main_process), dynamic_ncols=True)
    losses: list[float] = []
    run = {"loss": None, "seg_first": None, "seg_last": None, "iou": None, "dice": None, "n": 0}
    t_start = time.perf_counter()
    t_log, samples_since = t_start, 0
    last_saved = state.global_step if resumed_from else -1
    n_clicks = cfg.prompts.clicks_per_sample
    train_time = 0.0
    while state.global_step < total_steps:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        train_dl.set_epoch(epoch)
        dl = acc.skip_first_batches(train_dl, state.batch_in_epoch) if state.batch_in_epoch else train_dl
        finished_epoch = True
        for batch in dl:
            mo = mask_only_iterations(cfg.prompts.mask_only, n_clicks, cfg.seed, epoch, state.batch_in_epoch)
            u = click_uniforms(cfg.seed, epoch, batch["index"], n_clicks).to(acc.device, non_blocking=True)
            with acc.accumulate(loop):
                out = loop(label=batch["label"], u=u, embeddings=batch.get("embedding"),
                           images=batch.get("image"), mask_only=mo)
                acc.backward(out["loss"])
                if acc.sync_gradients and cfg.optim.grad_clip:
                    acc.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            samples_since += gb
            parts = {"loss": out["loss"].detach(), "seg_first": out["seg_per_iter"][0],
                     "seg_last": out["seg_per_iter"][-1], "dice": out["dice_last"],
                     "iou": out.get("iou_mse")}
            for k, v in parts.items():  # device-side running sums: no host sync per step
                if v is not None:
                    run[k] = v if run[k] is None else run[k] + v
            run["n"] += 1
            if not acc.sync_gradients:
                continue
            scheduler.step()
            state.global_step += 1
            bar.update(1)
            step = state.global_step
            if step % cfg.train.log_every == 0 or step == total_steps:
                keys = [k for k in ("loss", "seg_first", "seg_last", "iou", "dice") if run[k] is not None]
                vec = torch.stack([run[k].float() / run["n"] for k in keys])
                vec = acc.reduce(vec, reduction="mean").tolist()  # one sync per log line
                now = time.perf_counter()
                dt = now - t_log
                train_time += dt
                rec = {"type": "train", "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                       **{k: round(v, 6) for k, v in zip(keys, vec)},
                       "samples_per_s": round(samples_since / max(dt, 1e-9), 4)}
                losses.append(rec["loss"])
                log_line(rec)
                if tb is not None:
                    for k in keys:
                        tb.add_scalar(f"train/{k}", rec[k], step)
                    tb.add_scalar("train/lr", rec["lr"], step)
                    tb.add_scalar("train/samples_per_s", rec["samples_per_s"], step)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                run = {k: None for k in run}
                run["n"] = 0
                samples_since = 0
                t_log = time.perf_counter()
            if cfg.train.val_every and step % cfg.train.val_every == 0 and step != total_steps:
                on_validation(validate())
                t_log = time.perf_counter()
            if cfg.train.save_every and step % cfg.train.save_every == 0:
                save_state()
                last_saved = step
                t_log = time.perf_counter()
            if step >= total_steps:
                finished_epoch = state.batch_in_epoch >= batches_per_epoch
                break
        if finished_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()

    # ---- end
    final = validate()
    if not state.val_history or state.val_history[-1]["step"] != state.global_step:
        on_validation(final)
    if last_saved != state.global_step:
        save_state()
    save_weights("last", final)
    dice_after = {k: v for k, v in final.items() if k != "per_lesion"}
    metrics = {
        "name": cfg.name, "steps": state.global_step, "epochs_started": state.epoch,
        "processes": acc.num_processes, "global_batch": gb * cfg.train.grad_accum,
        "dice_before": state.dice_before, "dice_after": dice_after,
        "best": {"step": state.best_step, "dice@1": state.best_dice1},
        "val_history": state.val_history, "per_lesion_after": final["per_lesion"],
        "trainable": trainable, "embedding_cache": cache_stats, "resumed_from": resumed_from,
        "start_from": start_from, "train_seconds_logged": round(train_time, 2),
    }
    if main:
        write_json_atomic(run_dir / "metrics.json", metrics)
        if tb is not None:
            tb.close()
    acc.wait_for_everyone()
    return TrainResult(run_dir=run_dir, steps=state.global_step, dice_before=state.dice_before,
                       dice_after=dice_after, best_dice1=state.best_dice1, best_step=state.best_step,
                       losses=losses, metrics=metrics)


__all__ = ["EpochSampler", "TrainResult", "TrainState", "latest_state", "split_cases", "train"]
