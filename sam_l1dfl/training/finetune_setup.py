"""What :meth:`FinetuneTrainer.setup <sam_l1dfl.training.loop.FinetuneTrainer.setup>` builds before
the optimizer: the lesion crops, the model (frozen per ``trainable``), the inputs (cached
embeddings or the crops) and the losses (with the warm start)."""

from __future__ import annotations

import torch

from sam_l1dfl.data.dataset import LesionCropDataset
from sam_l1dfl.errors import InputError
from sam_l1dfl.losses import make_training_loss
from sam_l1dfl.model import build_sam_med3d, load_sam_med3d, read_model_meta
from sam_l1dfl.model.lora import attach_lora
from sam_l1dfl.model.standin import weights_origin
from sam_l1dfl.model.weights import resolve_model_path
from sam_l1dfl.seeding import seed_of
from sam_l1dfl.training.clickloop import configure_trainable
from sam_l1dfl.training.embedding_cache import build_embedding_cache
from sam_l1dfl.training.runtime import split_cases


class SeededCrops(torch.utils.data.Dataset):
    """LesionCropDataset items with their index, jitter drawn from a per-(epoch, index) seed."""

    def __init__(self, crops, seed: int):
        self.crops, self.seed, self.epoch = crops, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of("jitter", self.seed, self.epoch, int(i)))
            item = self.crops[i]
        return {"image": item["image"], "label": item["label"], "index": i}


class FinetuneSetup:
    """The build steps of :class:`~sam_l1dfl.training.loop.FinetuneTrainer` (a mixin: ``self`` is the
    trainer)."""

    def build_losses(self) -> None:
        """The loss, and the warm-start loss of the first ``loss.warmup_steps`` optimizer steps;
        ``train.compile`` compiles L1DFL's per-voxel kernel (eager fallback, with a warning)."""
        lo = self.cfg.loss
        self.loss_fn = make_training_loss(lo.name, lo.params, mode="sigmoid")
        self.warm_loss = make_training_loss(lo.warmup_name, lo.warmup_params, mode="sigmoid") \
            if lo.warmup_steps > 0 else None
        if self.cfg.train.compile:
            compiled = [f for f in (self.loss_fn, self.warm_loss) if hasattr(f, "compile_kernels")]
            for f in compiled:
                f.compile_kernels()
            self.say("train.compile: " + ("L1DFL's per-voxel kernel goes through torch.compile" if compiled
                                          else f"nothing to compile for loss {lo.name} (only L1DFL has a kernel)"))
        if self.warm_loss is not None:
            self.say(f"loss: {lo.warmup_name} for the first {lo.warmup_steps} optimizer steps, then {lo.name}")

    def step_loss(self):
        """The loss of the optimizer step being computed (the warm start's for steps 1..N; a resumed
        run's step counter restores the schedule)."""
        if self.warm_loss is not None and self.state.global_step < self.cfg.loss.warmup_steps:
            return self.warm_loss
        return self.loss_fn

    def build_data(self) -> None:
        """Lesion crops of the training and validation cases (cached on disk)."""
        cfg, acc = self.cfg, self.acc
        self.train_recs, self.val_recs = split_cases(cfg)
        self.use_cache = cfg.use_embedding_cache()
        kw = dict(cluster_mm=cfg.data.cluster_mm, connectivity=cfg.data.connectivity,
                  progress=self.progress and acc.is_local_main_process)
        crop_cache = cfg.cache_dir / "crops"
        with acc.main_process_first():
            self.train_crops = LesionCropDataset(self.train_recs, cfg.preprocess, cache_dir=crop_cache,
                                                 train=not self.use_cache,
                                                 jitter_mm=0.0 if self.use_cache else cfg.augment.jitter_mm, **kw)
            self.val_crops = LesionCropDataset(self.val_recs, cfg.preprocess, cache_dir=crop_cache, train=False, **kw)
        for ds, lim in ((self.train_crops, cfg.data.max_train_crops), (self.val_crops, cfg.data.max_val_crops)):
            if lim is not None:
                ds.specs = ds.specs[:lim]
        self.gb = cfg.train.batch_size * acc.num_processes
        if len(self.train_crops) < self.gb:
            raise InputError(cfg.data.root, f"{len(self.train_crops)} training lesion crop(s), fewer than the global "
                                            f"batch {self.gb} (batch_size × processes)")
        if len(self.val_crops) == 0:
            raise InputError(cfg.data.val_root or cfg.data.root, "no lesion crops in the validation cases")
        self.val_meta = [{"case_id": s.case_id, "lesion_id": s.lesion_id} for s in self.val_crops.specs]

    def build_model(self) -> None:
        """SAM-Med3D from the checkpoint (or random), frozen per ``trainable`` BEFORE ``prepare``."""
        cfg = self.cfg
        mcfg = cfg.model_config()
        if cfg.model.checkpoint:
            self.model = load_sam_med3d(cfg.model.checkpoint, cfg=mcfg, trust=self.trust)
            rep = self.model.load_report
            path = resolve_model_path(cfg.model.checkpoint)
            meta = read_model_meta(path) if path.is_dir() else {}
            self.start_from = {"checkpoint": str(cfg.model.checkpoint), "sha256": rep.sha256,
                               "weights_origin": weights_origin(meta, path),
                               "newly_initialized": list(rep.newly_initialized)}
        else:
            torch.manual_seed(cfg.seed)
            self.model = build_sam_med3d(mcfg)
            self.start_from = {"checkpoint": None, "weights_origin": "random"}
            if self.main:
                self.acc.print("WARNING: model.checkpoint is not set: training starts from RANDOM weights "
                               "(results say nothing about SAM-Med3D)")
        self.trainable = configure_trainable(self.model, cfg)
        self.lora = attach_lora(self.model, cfg, self.trainable, self.say)  # None without trainable.lora
        self.say(f"trainable: {self.trainable['n_trainable']:,} of {self.trainable['n_total']:,} parameters; "
                 f"frozen as unused: {', '.join(self.trainable['frozen_unused']) or 'none'}")

    def build_inputs(self) -> None:
        """Cached image embeddings (frozen encoder) or the crops themselves."""
        cfg, acc = self.cfg, self.acc
        self.cache_stats = None
        if not self.use_cache:
            self.train_ds = SeededCrops(self.train_crops, cfg.seed)
            self.val_ds = SeededCrops(self.val_crops, cfg.seed)
            return
        enc = self.model.image_encoder.to(acc.device)
        ac_dtype = torch.bfloat16 if (acc.device.type == "cuda" and cfg.train.mixed_precision == "bf16") else None
        self.train_ds, tstats = build_embedding_cache(self.train_crops, enc, cfg.cache_dir, acc,
                                                      autocast_dtype=ac_dtype, desc="embeddings (train)",
                                                      progress=self.progress)
        self.val_ds, vstats = build_embedding_cache(self.val_crops, enc, cfg.cache_dir, acc,
                                                    autocast_dtype=ac_dtype, desc="embeddings (val)",
                                                    progress=self.progress)
        self.cache_stats = {"train": tstats, "val": vstats}
        enc.to("cpu")
        self.say("embedding cache (" + str(cfg.cache_dir) + "): " + "; ".join(
            f"{k} {s['crops']} crops ({s['computed']} encoded, {s['from_cache']} from the cache)"
            for k, s in self.cache_stats.items()))
