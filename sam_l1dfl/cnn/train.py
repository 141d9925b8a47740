"""``train_cnn(cfg)``: whole-scan CNN training with Accelerate (one or many processes, CPU or GPU).

:class:`CnnTrainer` fills in the hooks of :class:`~sam_l1dfl.training.runtime.Trainer`: the run
directory, the atomic keep-last-K states, ``train_log.jsonl`` + TensorBoard, the train/val split
(:func:`~sam_l1dfl.training.runtime.split_cases`, the same as fine-tuning), the data order
(:class:`~sam_l1dfl.training.runtime.EpochSampler`) and the loop are shared with SAM-Med3D
fine-tuning; the loss is :func:`sam_l1dfl.losses.make_training_loss` in its 2-class softmax mode.
Validation and state saving run every ``val_every`` / ``save_every`` epochs (and after the last).

Run directory ``<output_dir>/<name>/`` (layout of :mod:`sam_l1dfl.training.runtime`): ``best/``
and ``last/`` hold ``model.safetensors`` + ``config.json`` (``"format": "sam-l1dfl-cnn"``); best =
the epoch with the highest validation Dice (sliding window on the network grid);
``metrics.json`` has the validation history, best epoch, wall time and peak memory.

Each training item is one volume → cropped to the body (``CropForegroundd`` on CT > ``body_hu``)
→ ``num_samples`` crops from MONAI ``RandCropByPosNegLabeld`` (``pos``/``neg``; centres where
PET > ``crop_pet_threshold``, so negatives sit in tissue with uptake, as the authors') followed by
``RandAffined`` (reflection padding); the transform's random state is seeded from
``(seed, epoch, volume index)`` so runs are reproducible and resumable (at epoch boundaries)
independently of the process split.

Validation Dice per case on the network grid (:func:`sam_l1dfl.metrics.volume.dice_batch`): a case
without lesions counts 1 when the prediction is empty too and 0 otherwise (model selection only;
the evaluation module reports NaN there).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate.utils import gather_object

from sam_l1dfl.cnn.config import CnnConfig
from sam_l1dfl.cnn.infer import FORMAT, sliding_probability
from sam_l1dfl.cnn.networks import build_network, count_parameters, network_kwargs
from sam_l1dfl.cnn.volumes import body_mask, load_volume
from sam_l1dfl.errors import InputError
from sam_l1dfl.formats import CONFIG_FILE, MODEL_FILE
from sam_l1dfl.io_utils import atomic_dir, write_json_atomic
from sam_l1dfl.losses import make_training_loss
from sam_l1dfl.metrics.volume import dice_batch
from sam_l1dfl.progress import progress as show_progress
from sam_l1dfl.seeding import seed_of
from sam_l1dfl.training.runtime import EpochSampler, Progress, RunResult, Trainer, peak_memory_mb, split_cases


# ---------------------------------------------------------------------- pieces
def train_transform(cfg: CnnConfig):
    """MONAI, arrays in (x, y, z), on ``{"image", "label", "pet", "body"}`` (:meth:`CropDataset.__getitem__`):
    CropForegroundd to the body (``augment.body_hu``), SpatialPadd to the crop size,
    RandCropByPosNegLabeld with crop centres where PET > ``augment.crop_pet_threshold``, RandAffined
    with ``augment.padding_mode`` (the authors' pipeline, ``initialize_train.py``)."""
    from monai.transforms import Compose, CropForegroundd, RandAffined, RandCropByPosNegLabeld, SpatialPadd

    a = cfg.augment
    c = (int(a.crop_size),) * 3
    rot = [0.0, 0.0, 0.0]
    rot[a.rotate_axis] = float(a.rotate_range)
    keys = ("image", "label", "pet")
    pet_thr = a.crop_pet_threshold
    body = [CropForegroundd(keys=keys, source_key="body", allow_smaller=True)] if a.body_hu is not None else []
    return Compose(body + [
        SpatialPadd(keys=keys, spatial_size=c, mode="constant"),
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=c, pos=a.pos, neg=a.neg,
                               num_samples=a.num_samples, image_key="pet" if pet_thr is not None else "image",
                               image_threshold=float(pet_thr) if pet_thr is not None else -1.0),
        RandAffined(keys=("image", "label"), prob=a.affine_prob, rotate_range=rot,
                    scale_range=(a.scale_range,) * 3, translate_range=(a.translate_range,) * 3,
                    mode=("bilinear", "nearest"), padding_mode=a.padding_mode, spatial_size=c, cache_grid=True),
    ])


class CropDataset(torch.utils.data.Dataset):
    """Volume ``i`` → its ``num_samples`` augmented crops; randomness from ``(seed, epoch, i)``."""

    def __init__(self, volumes: list[dict], cfg: CnnConfig, seed: int):
        self.volumes, self.seed, self.epoch = volumes, int(seed), 0
        self.transform = train_transform(cfg)
        self.body_hu, self.pre = cfg.augment.body_hu, cfg.preprocess

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        v = self.volumes[i]
        self.transform.set_random_state(seed=seed_of("crops", self.seed, self.epoch, i))
        with warnings.catch_warnings():  # lesion-free volumes: MONAI warns that it falls back to negatives
            warnings.simplefilter("ignore")
            item = {"image": torch.from_numpy(v["image"]), "label": torch.from_numpy(v["label"].astype(np.uint8)),
                    "pet": torch.from_numpy(v["image"][1:2])}
            if self.body_hu is not None:
                item["body"] = torch.from_numpy(body_mask(v, self.body_hu, self.pre))
            out = self.transform(item)
        img = torch.stack([torch.as_tensor(o["image"]).as_subclass(torch.Tensor) for o in out]).float()
        lab = torch.stack([torch.as_tensor(o["label"]).as_subclass(torch.Tensor) for o in out])
        return {"image": img, "label": (lab > 0.5).to(torch.uint8)}


def collate(items: list[dict]) -> dict:
    return {"image": torch.cat([it["image"] for it in items]), "label": torch.cat([it["label"] for it in items])}


class CnnState(Progress):
    """Progress counters saved with every state (``run_state.json``)."""

    defaults = {**Progress.defaults, "best_dice": -1.0, "best_epoch": -1}


@dataclass(kw_only=True)
class CnnTrainResult(RunResult):
    """The run directory, steps and epochs done, the best epoch and its validation Dice."""

    epochs: int
    best_epoch: int
    best_val_dice: float


def model_meta(cfg: CnnConfig, extra: "dict | None" = None) -> dict:
    """The ``config.json`` of a CNN model directory (format, network, preprocessing, training)."""
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
    """``model.safetensors`` + ``config.json`` (:func:`~sam_l1dfl.io_utils.atomic_dir`)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(sd, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        write_json_atomic(tmp / CONFIG_FILE, meta)
    return out_dir


# ---------------------------------------------------------------------- the trainer
class CnnTrainer(Trainer):
    """Whole-volume crops through a MONAI network; validation by sliding window per case."""

    desc = "train"
    progress_type = CnnState

    def setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        self.train_recs, self.val_recs = split_cases(cfg)
        with acc.main_process_first():
            bar_kw = dict(unit="case", enabled=self.progress and acc.is_local_main_process, leave=False)
            train_vols = [load_volume(r, cfg.preprocess, cfg.cache_dir)
                          for r in show_progress(self.train_recs, desc="volumes (train)", **bar_kw)]
            self.val_vols = [load_volume(r, cfg.preprocess, cfg.cache_dir)
                             for r in show_progress(self.val_recs, desc="volumes (val)", **bar_kw)]
        if not self.val_vols:
            raise InputError(cfg.data.val_root or cfg.data.root,
                             "no validation cases (set data.val_fraction or data.val_cases)")
        torch.manual_seed(cfg.seed)
        net = build_network(cfg.network.name, cfg.network.width, cfg.augment.crop_size, cfg.network.overrides)
        self.say(f"{cfg.network.name}: {count_parameters(net):,} parameters; {len(train_vols)} training and "
                 f"{len(self.val_vols)} validation volumes at {cfg.preprocess.spacing} mm")
        self.loss_fn = make_training_loss(cfg.loss.name, cfg.loss.params, mode="softmax")
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.ds = CropDataset(train_vols, cfg, cfg.seed)
        self.sampler = EpochSampler(len(self.ds), cfg.seed)
        dl = torch.utils.data.DataLoader(self.ds, batch_size=cfg.train.batch_size, sampler=self.sampler,
                                         collate_fn=collate, num_workers=cfg.data.num_workers)
        self.gb = cfg.train.batch_size * acc.num_processes
        steps_per_epoch = max(1, math.ceil(math.ceil(len(self.ds) / self.gb) / cfg.train.grad_accum))
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        self.n_epochs = min(cfg.train.epochs, math.ceil(self.total_steps / steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps,
                                                                    eta_min=cfg.optim.min_lr)
        self.net, self.optimizer, self.dl = self.prepare(net, self.optimizer, dl)

    def on_train_start(self) -> None:
        self.net.train()

    def epoch_batches(self, epoch: int):
        for x in (self.sampler, self.ds, self.dl):
            x.set_epoch(epoch)
        return self.dl

    def train_step(self, batch, epoch: int) -> dict:
        acc = self.acc
        with acc.accumulate(self.net):
            with acc.autocast():
                logits = self.net(batch["image"])
            loss = self.loss_fn(logits.float(), batch["label"])
            acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    def on_epoch_end(self, complete: bool) -> None:
        st, t = self.state, self.cfg.train
        st.epoch += 1
        last = self.done()
        if (t.val_every and st.epoch % t.val_every == 0) or last:
            self.run_validation()
        if (t.save_every and st.epoch % t.save_every == 0) or last:
            self.save_state()

    def position(self) -> dict:
        return {"epoch": self.state.epoch, "step": self.state.global_step}

    def validate(self) -> dict:
        """Dice per validation case (sliding window on the network grid), split over processes."""
        acc, cfg = self.acc, self.cfg
        model = acc.unwrap_model(self.net)
        model.eval()
        res = []
        for i in range(acc.process_index, len(self.val_vols), acc.num_processes):
            v = self.val_vols[i]
            with acc.autocast():
                p = sliding_probability(model, v["image"], cfg, acc.device)
            res.append((i, float(dice_batch((p >= cfg.infer.threshold)[None], v["label"][:1].astype(bool))[0])))
        model.train()
        allres = sorted(gather_object(res)) if acc.num_processes > 1 else res
        d = {self.val_vols[i]["case_id"]: round(float(x), 5) for i, x in allres}
        return {"dice": float(np.mean(list(d.values()))), "per_case": d}

    def describe(self, res: dict) -> str:
        st = self.state
        return (f"epoch {st.epoch}: val Dice {res['dice']:.4f} (best {st.best_dice:.4f} "
                f"at epoch {st.best_epoch})")

    def save_model(self, which: str, res: Optional[dict]) -> None:
        st = self.state
        meta = model_meta(self.cfg, {"which": which, "epoch": st.epoch, "step": st.global_step,
                                     "val_dice": None if res is None else res["dice"],
                                     "best_is_initial": which == "best" and self.best_is_initial})
        save_cnn_dir(self.acc.unwrap_model(self.net), self.run_dir / which, meta)

    def summary(self, final: Optional[dict]) -> dict:
        st, cfg = self.state, self.cfg
        return {"name": cfg.name, "network": cfg.network.name, "loss": cfg.loss.name, "steps": st.global_step,
                "epochs": st.epoch, "processes": self.acc.num_processes,
                "global_batch_crops": self.gb * cfg.augment.num_samples * cfg.train.grad_accum,
                "best": {"epoch": st.best_epoch, "val_dice": st.best_dice}, "val_history": st.val_history,
                "train_cases": [r.case_id for r in self.train_recs], "val_cases": [r.case_id for r in self.val_recs],
                "resumed_from": self.resumed_from,
                "wall_seconds": round(time.perf_counter() - self.t_start, 2), **peak_memory_mb(self.acc.device)}

    def result(self, metrics: dict, final: Optional[dict]) -> "CnnTrainResult":
        st = self.state
        return CnnTrainResult(run_dir=self.run_dir, steps=st.global_step, epochs=st.epoch,
                              best_epoch=st.best_epoch, best_val_dice=st.best_dice, val_history=st.val_history,
                              losses=self.losses, metrics=metrics)


def train_cnn(cfg: CnnConfig, resume: bool = False, accelerator=None, progress: bool = True,
              trust: bool = False) -> CnnTrainResult:
    """Train per ``cfg``; writes the run directory and returns the best epoch and validation Dice.

    ``trust``: as for :func:`sam_l1dfl.training.loop.train` (resuming a state whose pickles need
    more than tensors and plain values; that can run code).
    """
    return CnnTrainer(cfg, resume=resume, accelerator=accelerator, progress=progress, trust=trust).run()


__all__ = ["CnnState", "CnnTrainResult", "CnnTrainer", "CropDataset", "model_meta", "save_cnn_dir", "train_cnn",
           "train_transform"]
