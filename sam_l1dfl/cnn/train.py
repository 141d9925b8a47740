"""``train_cnn(cfg)``: whole-scan CNN training with Accelerate (one or many processes, CPU or GPU).

Reuses the fine-tuning machinery: :func:`sam_l1dfl.training.distributed.make_accelerator` (launch
guards), :func:`sam_l1dfl.training.loop.split_cases` (the same deterministic train/val split),
:class:`~sam_l1dfl.training.loop.EpochSampler` (data order from ``(seed, epoch)``),
:func:`~sam_l1dfl.training.loop.latest_state`, and :func:`sam_l1dfl.losses.make_loss` in its
2-class softmax mode.

Run directory ``<output_dir>/<name>/``::

    config.yaml           the resolved CnnConfig
    states/step_NNNNNNNN/ accelerator.save_state (model, optimizer, scheduler, RNG, progress) at the
                          end of every ``save_every`` epochs; written to states/.tmp-… then renamed
    best/  last/          model.safetensors + config.json ("format": "sam-l1dfl-cnn"); best = the
                          epoch with the highest validation Dice (sliding window on the network grid)
    metrics.json          validation history, best epoch, wall time, peak memory
    train_log.jsonl, tb/  per-step loss / lr and per-validation Dice

Each training item is one volume → ``num_samples`` crops from MONAI ``RandCropByPosNegLabeld``
(``pos``/``neg``) followed by ``RandAffined``; the transform's random state is seeded from
``(seed, epoch, volume index)`` so runs are reproducible and resumable (at epoch boundaries)
independently of the process split.

Validation Dice per case on the network grid; a case without lesions counts 1 when the prediction
is empty too and 0 otherwise (model selection only; the evaluation module reports NaN there).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sam_l1dfl.cnn.config import CnnConfig
from sam_l1dfl.errors import ConfigError, InputError

FORMAT = "sam-l1dfl-cnn"


# ---------------------------------------------------------------------- pieces
def build_cnn_loss(name: str, params: "dict[str, Any] | None" = None):
    """The training loss in the paper's 2-class softmax form (label map target, one-hot inside).

    Same training-safe L1DFL defaults as :func:`sam_l1dfl.training.losses.build_loss` (histogram
    synchronised over processes, no per-call value check), but ``mode="softmax"``.
    """
    from sam_l1dfl.losses import make_loss

    kw = dict(params or {})
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "l1dfl":
        kw.setdefault("sync_histogram", True)
        kw.setdefault("validate", False)
    return make_loss(key, mode="softmax", **kw)


def train_transform(cfg: CnnConfig):
    """SpatialPadd to the crop size, RandCropByPosNegLabeld, RandAffined (MONAI, arrays in (x, y, z))."""
    from monai.transforms import Compose, RandAffined, RandCropByPosNegLabeld, SpatialPadd

    a = cfg.augment
    c = (int(a.crop_size),) * 3
    rot = [0.0, 0.0, 0.0]
    rot[a.rotate_axis] = float(a.rotate_range)
    return Compose([
        SpatialPadd(keys=("image", "label"), spatial_size=c, mode="constant"),
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=c, pos=a.pos, neg=a.neg,
                               num_samples=a.num_samples, image_key="image", image_threshold=-1.0),
        RandAffined(keys=("image", "label"), prob=a.affine_prob, rotate_range=rot,
                    scale_range=(a.scale_range,) * 3, translate_range=(a.translate_range,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=c, cache_grid=True),
    ])


def _seed_of(*parts: int) -> int:
    import hashlib

    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class CropDataset(torch.utils.data.Dataset):
    """Volume ``i`` → its ``num_samples`` augmented crops; randomness from ``(seed, epoch, i)``."""

    def __init__(self, volumes: list[dict], cfg: CnnConfig, seed: int):
        self.volumes, self.seed, self.epoch = volumes, int(seed), 0
        self.transform = train_transform(cfg)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        import warnings

        v = self.volumes[i]
        self.transform.set_random_state(seed=_seed_of(self.seed, self.epoch, i))
        with warnings.catch_warnings():  # lesion-free volumes: MONAI warns that it falls back to negatives
            warnings.simplefilter("ignore")
            out = self.transform({"image": torch.from_numpy(v["image"]),
                                  "label": torch.from_numpy(v["label"].astype(np.uint8))})
        img = torch.stack([torch.as_tensor(o["image"]).as_subclass(torch.Tensor) for o in out]).float()
        lab = torch.stack([torch.as_tensor(o["label"]).as_subclass(torch.Tensor) for o in out])
        return {"image": img, "label": (lab > 0.5).to(torch.uint8)}


def collate(items: list[dict]) -> dict:
    return {"image": torch.cat([it["image"] for it in items]), "label": torch.cat([it["label"] for it in items])}


class CnnState:
    """Progress counters saved with every state (``register_for_checkpointing``)."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0
        self.best_dice = -1.0
        self.best_epoch = -1
        self.val_history: list = []

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "best_dice": self.best_dice,
                "best_epoch": self.best_epoch, "val_history": json.dumps(self.val_history)}

    def load_state_dict(self, d: dict) -> None:
        self.global_step, self.epoch = int(d["global_step"]), int(d["epoch"])
        self.best_dice, self.best_epoch = float(d["best_dice"]), int(d["best_epoch"])
        self.val_history = json.loads(d["val_history"])


def save_state(acc, states_dir: Path, step: int, keep_last: int) -> Path:
    """Atomic, keep-last-K ``accelerator.save_state`` (shared with SAM-Med3D fine-tuning)."""
    from sam_l1dfl.training.loop import save_run_state

    return save_run_state(acc, states_dir, step, keep_last)


def case_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice for model selection: 1 when both are empty (a lesion-free scan left clean)."""
    p, r = pred.astype(bool), ref.astype(bool)
    s = int(p.sum()) + int(r.sum())
    return 1.0 if s == 0 else 2.0 * int((p & r).sum()) / s


def sliding_probability(net, image: np.ndarray, cfg: CnnConfig, device) -> np.ndarray:
    """Foreground softmax probability ``(X, Y, Z)`` float32 of a whole ``(2, X, Y, Z)`` volume."""
    from monai.inferers import sliding_window_inference

    c = int(cfg.augment.crop_size)
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(x, (c, c, c), int(cfg.infer.sw_batch_size), net,
                                          overlap=float(cfg.infer.overlap), mode=cfg.infer.mode, padding_mode="constant",
                                          cval=0.0)
        logits = torch.as_tensor(logits).as_subclass(torch.Tensor)
        prob = torch.softmax(logits.float(), dim=1)[0, 1]
    return prob.cpu().numpy().astype(np.float32, copy=False)


def model_meta(cfg: CnnConfig, extra: "dict | None" = None) -> dict:
    from sam_l1dfl.cnn.networks import network_kwargs

    cls, kw = network_kwargs(cfg.network.name, cfg.network.width, cfg.augment.crop_size, cfg.network.overrides)
    return {"format": FORMAT, "version": 1,
            "network": {"name": cfg.network.name, "width": cfg.network.width, "overrides": cfg.network.overrides,
                        "crop_size": cfg.augment.crop_size, "monai_class": cls,
                        "monai_kwargs": json.loads(json.dumps(kw, default=list))},
            "input_channels": ["ct", "pet"], "output": "2-class softmax (background, lesion)",
            "preprocess": dict(vars(cfg.preprocess)), "infer": dict(vars(cfg.infer)),
            "loss": {"name": cfg.loss.name, **cfg.loss.params},
            "training": {**(extra or {}), "config": cfg.to_dict()}}


def save_cnn_dir(net, out_dir: Path, meta: dict) -> Path:
    """``model.safetensors`` + ``config.json`` (atomic writes)."""
    from safetensors.torch import save_file

    from sam_l1dfl.io_utils import atomic_path, write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": FORMAT})
    write_json_atomic(out_dir / "config.json", meta)
    return out_dir


def peak_memory_mb(device) -> dict:
    import resource

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if getattr(device, "type", str(device)) == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


@dataclass
class CnnTrainResult:
    run_dir: Path
    steps: int
    epochs: int
    best_epoch: int
    best_val_dice: float
    val_history: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- train
def train_cnn(cfg: CnnConfig, resume: bool = False, accelerator=None, progress: bool = True) -> CnnTrainResult:
    """Train per ``cfg``; writes the run directory and returns the best epoch and validation Dice."""
    from accelerate.utils import gather_object, set_seed
    from tqdm import tqdm

    from sam_l1dfl.cnn.networks import build_network, count_parameters
    from sam_l1dfl.cnn.volumes import load_volume
    from sam_l1dfl.io_utils import write_json_atomic, write_text_atomic
    from sam_l1dfl.training.distributed import make_accelerator
    from sam_l1dfl.training.loop import EpochSampler, latest_state, split_cases

    cfg.validate()
    acc = accelerator or make_accelerator(cfg)
    main = acc.is_main_process
    run_dir = cfg.run_dir
    states_dir = run_dir / "states"
    if not resume and latest_state(states_dir) is not None:
        raise ConfigError(run_dir, "already holds a training run; pass --resume to continue it or choose another name")
    set_seed(cfg.seed)
    t_start = time.perf_counter()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    say = (lambda msg: acc.print(msg)) if progress else (lambda msg: None)
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)

    # ---- data (the same split as SAM fine-tuning: split_cases reads data.root/val_* and seed)
    train_recs, val_recs = split_cases(cfg)
    with acc.main_process_first():
        bar_kw = dict(unit="case", disable=not (progress and acc.is_local_main_process), leave=False)
        train_vols = [load_volume(r, cfg.preprocess, cfg.cache_dir)
                      for r in tqdm(train_recs, desc="volumes (train)", **bar_kw)]
        val_vols = [load_volume(r, cfg.preprocess, cfg.cache_dir) for r in tqdm(val_recs, desc="volumes (val)", **bar_kw)]
    if not val_vols:
        raise InputError(cfg.data.val_root or cfg.data.root, "no validation cases (set data.val_fraction or data.val_cases)")

    torch.manual_seed(cfg.seed)
    net = build_network(cfg.network.name, cfg.network.width, cfg.augment.crop_size, cfg.network.overrides)
    say(f"{cfg.network.name}: {count_parameters(net):,} parameters; {len(train_vols)} training and "
        f"{len(val_vols)} validation volumes at {cfg.preprocess.spacing} mm")
    loss_fn = build_cnn_loss(cfg.loss.name, cfg.loss.params)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ds = CropDataset(train_vols, cfg, cfg.seed)
    sampler = EpochSampler(len(ds), cfg.seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate,
                                     num_workers=cfg.data.num_workers)
    gb = cfg.train.batch_size * acc.num_processes
    steps_per_epoch = max(1, math.ceil(math.ceil(len(ds) / gb) / cfg.train.grad_accum))
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    n_epochs = min(cfg.train.epochs, math.ceil(total_steps / steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.optim.min_lr)
    state = CnnState()
    acc.register_for_checkpointing(scheduler, state)
    net, optimizer, dl = acc.prepare(net, optimizer, dl)

    resumed_from = None
    if resume:
        latest = latest_state(states_dir)
        if latest is not None:
            acc.load_state(str(latest))
            resumed_from = str(latest)
            say(f"resumed from {latest} (step {state.global_step}, epoch {state.epoch})")
        else:
            say(f"--resume: no saved state in {states_dir}; starting fresh")

    tb = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tb"), purge_step=state.global_step if resumed_from else None)
        except ImportError:  # pragma: no cover
            tb = None
    log_path = run_dir / "train_log.jsonl"

    def log_line(rec: dict) -> None:
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def validate() -> dict:
        model = acc.unwrap_model(net)
        model.eval()
        mine = list(range(acc.process_index, len(val_vols), acc.num_processes))
        res = []
        for i in mine:
            v = val_vols[i]
            with acc.autocast():
                p = sliding_probability(model, v["image"], cfg, acc.device)
            res.append((i, case_dice(p >= cfg.infer.threshold, v["label"][0])))
        model.train()
        allres = sorted(gather_object(res)) if acc.num_processes > 1 else res
        d = {val_vols[i]["case_id"]: round(float(x), 5) for i, x in allres}
        return {"dice": float(np.mean(list(d.values()))), "per_case": d}

    def meta(which: str, res: Optional[dict]) -> dict:
        return model_meta(cfg, {"which": which, "epoch": state.epoch, "step": state.global_step,
                                "val_dice": None if res is None else res["dice"]})

    # ---- train
    net.train()
    bar = tqdm(total=total_steps, initial=state.global_step, desc=f"train {cfg.name}", unit="step",
               disable=not (progress and acc.is_local_main_process), dynamic_ncols=True)
    losses: list[float] = []
    run_loss, run_n = None, 0
    t_log = time.perf_counter()
    last_saved = state.global_step if resumed_from else -1
    last_res = None
    while state.epoch < n_epochs and state.global_step < total_steps:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        dl.set_epoch(epoch)
        for batch in dl:
            with acc.accumulate(net):
                with acc.autocast():
                    logits = net(batch["image"])
                loss = loss_fn(logits.float(), batch["label"])
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            run_loss = loss.detach() if run_loss is None else run_loss + loss.detach()
            run_n += 1
            if not acc.sync_gradients:
                continue
            scheduler.step()
            state.global_step += 1
            bar.update(1)
            step = state.global_step
            if step % cfg.train.log_every == 0 or step == total_steps:
                v = acc.reduce((run_loss / run_n).float(), reduction="mean").item()
                dt = time.perf_counter() - t_log
                rec = {"type": "train", "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                       "loss": round(v, 6), "seconds": round(dt, 3)}
                losses.append(rec["loss"])
                log_line(rec)
                if tb is not None:
                    tb.add_scalar("train/loss", v, step)
                    tb.add_scalar("train/lr", rec["lr"], step)
                bar.set_postfix(loss=f"{v:.4f}", lr=f"{rec['lr']:.2e}")
                run_loss, run_n, t_log = None, 0, time.perf_counter()
            if step >= total_steps:
                break
        state.epoch += 1
        last_epoch = state.epoch >= n_epochs or state.global_step >= total_steps
        if (cfg.train.val_every and state.epoch % cfg.train.val_every == 0) or last_epoch:
            last_res = validate()
            entry = {"epoch": state.epoch, "step": state.global_step, "dice": last_res["dice"]}
            state.val_history.append(entry)
            log_line({"type": "val", **entry, "per_case": last_res["per_case"]})
            if tb is not None:
                tb.add_scalar("val/dice", last_res["dice"], state.global_step)
            if last_res["dice"] > state.best_dice:
                state.best_dice, state.best_epoch = last_res["dice"], state.epoch
                if main:
                    save_cnn_dir(acc.unwrap_model(net), run_dir / "best", meta("best", last_res))
            say(f"epoch {state.epoch}: val Dice {last_res['dice']:.4f} (best {state.best_dice:.4f} "
                f"at epoch {state.best_epoch})")
        if (cfg.train.save_every and state.epoch % cfg.train.save_every == 0) or last_epoch:
            save_state(acc, states_dir, state.global_step, cfg.train.keep_last)
            last_saved = state.global_step
    bar.close()
    if last_saved != state.global_step:
        save_state(acc, states_dir, state.global_step, cfg.train.keep_last)
    if main:
        save_cnn_dir(acc.unwrap_model(net), run_dir / "last", meta("last", last_res))
    seconds = time.perf_counter() - t_start
    metrics = {"name": cfg.name, "network": cfg.network.name, "loss": cfg.loss.name, "steps": state.global_step,
               "epochs": state.epoch, "processes": acc.num_processes,
               "global_batch_crops": gb * cfg.augment.num_samples * cfg.train.grad_accum,
               "best": {"epoch": state.best_epoch, "val_dice": state.best_dice}, "val_history": state.val_history,
               "train_cases": [r.case_id for r in train_recs], "val_cases": [r.case_id for r in val_recs],
               "resumed_from": resumed_from, "wall_seconds": round(seconds, 2), **peak_memory_mb(acc.device)}
    if main:
        write_json_atomic(run_dir / "metrics.json", metrics)
        if tb is not None:
            tb.close()
    acc.wait_for_everyone()
    return CnnTrainResult(run_dir=run_dir, steps=state.global_step, epochs=state.epoch, best_epoch=state.best_epoch,
                          best_val_dice=state.best_dice, val_history=state.val_history, losses=losses, metrics=metrics)


__all__ = ["CnnState", "CnnTrainResult", "CropDataset", "build_cnn_loss", "case_dice", "model_meta",
           "save_cnn_dir", "sliding_probability", "train_cnn", "train_transform"]
