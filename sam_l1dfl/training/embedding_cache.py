"""On-disk cache of image embeddings of the training/validation crops (frozen encoder only).

Each lesion crop of a :class:`~sam_l1dfl.data.dataset.LesionCropDataset` (no jitter) is encoded
once, with the fast encoder path under ``torch.inference_mode``, and stored as
``<cache>/embeddings/<model key>/<crop key>.safetensors`` holding

* ``embedding``: float16 ``(C, 8, 8, 8)``;
* ``label``: the crop's target mask, bit-packed uint8 (``np.packbits``) with its ``shape``.

The **crop key** is the SHA-256 of the PET/CT/label file contents, the
:class:`~sam_l1dfl.data.preprocess.IntensityConfig`, the lesion connectivity/clustering and the crop
(case, lesion ids, centre); the **model key** is the SHA-256 of the image encoder's weights and
configuration.  Change any of them and the entry is recomputed; entries are written atomically.

Building is split across processes (process ``r`` of ``N`` encodes the missing crops ``r, r+N, …``)
and ends with ``wait_for_everyone``; epochs then read embeddings instead of running the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam_l1dfl.io_utils import atomic_path, sha256_file
from sam_l1dfl.progress import progress as show_progress

CACHE_VERSION = 1


def model_key(image_encoder: torch.nn.Module, extra: "dict | None" = None) -> str:
    """SHA-256 of the encoder's state dict (names, shapes, dtypes, bytes) and ``extra``."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, **(extra or {})}, sort_keys=True).encode())
    for name, t in sorted(image_encoder.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _FileHashes:
    def __init__(self):
        self.memo: dict[str, str] = {}

    def __call__(self, path) -> str:
        key = os.fspath(path)
        if key not in self.memo:
            self.memo[key] = sha256_file(key)
        return self.memo[key]


def crop_keys(dataset) -> list[str]:
    """The content key of every crop of a LesionCropDataset."""
    fh = _FileHashes()
    cfg = dataset.cfg
    keys = []
    for spec in dataset.specs:
        rec = dataset.records[spec.case_id]
        files = {"pet": fh(rec.pet), "label": fh(rec.label)}
        if cfg.needs_ct:
            files["ct"] = fh(rec.ct)
        payload = {"v": CACHE_VERSION, "files": files, "cfg": cfg.to_dict(),
                   "connectivity": dataset.connectivity, "cluster_mm": dataset.cluster_mm, "crop": spec.to_dict()}
        keys.append(hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest())
    return keys


class EmbeddingDataset(torch.utils.data.Dataset):
    """Reads cached ``(embedding, label)`` pairs; items ``{"embedding", "label", "index"}``."""

    def __init__(self, paths: list[Path], meta: "list[dict] | None" = None):
        self.paths = list(paths)
        self.meta = meta or [{} for _ in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors.numpy import load_file

        d = load_file(str(self.paths[i]))
        shape = tuple(int(v) for v in d["shape"])
        lab = np.unpackbits(d["label"], count=int(np.prod(shape))).reshape(shape)
        return {"embedding": torch.from_numpy(d["embedding"].copy()), "label": torch.from_numpy(lab),
                "index": i}


def build_embedding_cache(dataset, image_encoder: torch.nn.Module, cache_root: Path, accelerator,
                          batch_size: int = 2, autocast_dtype: "torch.dtype | None" = None,
                          desc: str = "caching embeddings", progress: bool = True) -> tuple[EmbeddingDataset, dict]:
    """Encode every crop of ``dataset`` missing from the cache (split over processes) → dataset.
    ``progress``: show progress (:func:`sam_l1dfl.progress.progress`, local main process only)."""
    from safetensors.numpy import save_file

    device = accelerator.device
    mkey = model_key(image_encoder, {"autocast": str(autocast_dtype)})
    root = Path(cache_root) / "embeddings" / mkey[:24]
    keys = crop_keys(dataset)
    paths = [root / k[:2] / f"{k[:40]}.safetensors" for k in keys]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    mine = missing[accelerator.process_index::accelerator.num_processes]
    stats = {"crops": len(paths), "computed": len(missing), "from_cache": len(paths) - len(missing),
             "model_key": mkey[:24]}
    if mine:
        was_training = image_encoder.training
        image_encoder.eval()
        bar = show_progress(total=len(mine), desc=desc, unit="crop",
                            enabled=progress and accelerator.is_local_main_process)
        for s in range(0, len(mine), batch_size):
            chunk = mine[s:s + batch_size]
            items = [dataset[i] for i in chunk]
            x = torch.stack([it["image"] for it in items]).to(device)
            with torch.inference_mode():
                if autocast_dtype is not None:
                    with torch.autocast(device.type, dtype=autocast_dtype):
                        emb = image_encoder(x)
                else:
                    emb = image_encoder(x)
            emb = emb.to(torch.float16).cpu().numpy()
            for j, i in enumerate(chunk):
                lab = items[j]["label"].numpy().astype(bool)
                arrays = {"embedding": np.ascontiguousarray(emb[j]),
                          "label": np.packbits(lab.ravel()),
                          "shape": np.asarray(lab.shape, dtype=np.int64)}
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(paths[i], suffix=".safetensors") as tmp:
                    save_file(arrays, str(tmp), metadata={"case_id": items[j]["case_id"],
                                                          "lesion_id": items[j]["lesion_id"]})
            bar.update(len(chunk))
        bar.close()
        image_encoder.train(was_training)
    accelerator.wait_for_everyone()
    meta = [{"case_id": s.case_id, "lesion_id": s.lesion_id} for s in dataset.specs]
    return EmbeddingDataset(paths, meta), stats


__all__ = ["EmbeddingDataset", "build_embedding_cache", "crop_keys", "model_key"]
