#!/usr/bin/env python
"""Decoder-only vs LoRA + decoder vs full fine-tuning: trainable parameters, step time, memory.

Runs the real trainer (:func:`sam_l1dfl.training.loop.train`) on a few synthetic cases, one variant
per fresh interpreter (so each peak RSS is its own), after an untimed pass of every variant that
fills the caches, the stand-in (tiny) model by default:

* ``decoder``: the mask decoder, embeddings from the cache (the default fine-tune);
* ``lora``: LoRA (``trainable.lora``, r 8 on qkv + proj) + the mask decoder, the encoder in every step;
* ``full``: everything (``trainable.full``), the encoder in every step.

Step time: the median wall seconds per optimizer step over the logged steps after the first
(``train_log.jsonl``'s ``samples_per_s``); the run's process CPU time (data, validation and saving
included) is printed beside it, the fairer number on a shared machine.  Peak memory: the process's
peak RSS.

    python scripts/bench_lora.py --steps 8 --json bench_lora.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "decoder": [],
    "lora": ["trainable.lora={r: 8, alpha: 16, targets: [qkv, proj]}"],
    "full": ["trainable.full=true", "cache.embeddings=off"],
}


def run_one(variant: str, work: Path, steps: int, batch: int, clicks: int, checkpoint: str, name: str) -> dict:
    """One variant in this process: the trainer's own numbers plus CPU time and peak RSS."""
    import torch

    from sam_l1dfl.training import load_config
    from sam_l1dfl.training.loop import train

    ov = [f"data.root={work / 'synth'}", "data.val_cases=[synth_002]", "data.max_val_crops=1",
          f"data.cache_dir={work / 'cache'}", f"output_dir={work / 'runs'}", f"name={name}",
          f"model.checkpoint={checkpoint}", "model.preset=tiny", f"prompts.clicks_per_sample={clicks}",
          "prompts.mask_only=none", f"train.batch_size={batch}", f"train.max_steps={steps}", "train.save_every=0",
          "train.val_every=0", "train.log_every=1", "loss.name=dicefocal", *VARIANTS[variant]]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ov)
    c0 = time.process_time()
    res = train(cfg, progress=False)
    cpu = time.process_time() - c0
    recs = [json.loads(l) for l in (res.run_dir / "train_log.jsonl").read_text().splitlines()]
    step_s = [batch / r["samples_per_s"] for r in recs if r["type"] == "train"][1:]  # the first warms up
    t = res.metrics["trainable"]
    return {"variant": variant, "n_trainable": t["n_trainable"], "n_total": t["n_total"],
            "lora_parameters": (t.get("lora") or {}).get("parameters"),
            "embedding_cache": res.metrics["embedding_cache"] is not None,
            "step_s_median": statistics.median(step_s), "run_cpu_s": round(cpu, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per variant")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=2)
    ap.add_argument("--checkpoint", default="standin")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (1: steadiest on a shared machine, where idle threads spin)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a.one, a.work, a.steps, a.batch, a.clicks, a.checkpoint, a.name)))
        return 0

    import torch

    from sam_l1dfl.data.synthetic import generate_dataset
    from sam_l1dfl.io_utils import write_json_atomic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_dataset(work / "synth", 3, seed=0, progress=False)
        # a first untimed pass of every variant fills the crop and embedding caches (a crop is made
        # on first use, which would otherwise land in the first variant's steps)
        for name, steps in (("warm", 2), ("timed", a.steps)):
            for v in a.variants.split(","):
                cmd = [sys.executable, __file__, "--one", v, "--work", str(work), "--steps", str(steps),
                       "--batch", str(a.batch), "--clicks", str(a.clicks), "--checkpoint", a.checkpoint,
                       "--name", f"{v}-{name}"]
                env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                if name == "timed":
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s)"
    print(f"{machine}, torch {torch.__version__}, {a.checkpoint}, batch {a.batch}, {a.clicks} clicks, "
          f"{a.steps} steps, {time.strftime('%Y-%m-%d')}")
    print(f"{'variant':8s} {'trainable':>11s} {'of':>11s} {'LoRA':>7s} {'cache':>5s} {'s/step':>7s} {'run CPU s':>9s} "
          f"{'peak RSS MB':>11s}")
    for r in rows:
        print(f"{r['variant']:8s} {r['n_trainable']:11,d} {r['n_total']:11,d} {r['lora_parameters'] or 0:7,d} "
              f"{'yes' if r['embedding_cache'] else 'no':>5s} {r['step_s_median']:7.2f} {r['run_cpu_s']:9.1f} "
              f"{r['peak_rss_mb']:11.0f}")
    if a.json:
        write_json_atomic(a.json, {"machine": machine, "torch": torch.__version__, "args": vars(a) | {
            "json": str(a.json), "work": None}, "rows": rows})
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
