#!/usr/bin/env python
"""Fine-tuning throughput: training samples/s (N clicks each), per loss, and where the step's time goes.

Runs the real training step (ClickLoop forward + backward + gradient clipping + AdamW) on random
128³ inputs and lesion-like labels, in one process, on the same machine and in one run:

* one row per loss (``--loss l1dfl,dicece``), the losses interleaved step by step so that a change
  of machine load hits them all alike, with the ratio of each to the first;
* ``cached``: embeddings read from memory (what the embedding cache gives), and unless
  ``--no-encoder``, ``encoder``: the frozen image encoder runs every step (first loss only);
* ``--profile``: one more step per loss under ``torch.profiler``, split into click sampling,
  prompt encoder + mask decoder, upsampling, the loss (L1DFL: histogram, gather, Dice, focal),
  the IoU head, the optimizer, and the host syncs (forward and backward; CPU ms, and on CUDA the
  kernel ms too).  Backward time goes to the part whose forward op made the autograd node.

It prints samples/s (best and median step), the median process CPU time per step (on a shared
machine the fairer ratio: other jobs' load inflates wall time, much less CPU time), peak memory (CUDA: max allocated; CPU: peak RSS
growth) and ``--json`` writes everything.  On CUDA it uses bf16 autocast (``--amp no`` for fp32).
The reference: official SAM-Med3D's 11-click decoder step did 34 samples/s at batch 8 on an H200.

    python scripts/bench_finetune.py --preset tiny --batch 2 --clicks 11 --no-encoder --loss l1dfl,dicece --profile
    python scripts/bench_finetune.py --preset vit_b_ori --batch 8 --steps 10 --loss l1dfl,dicece,dicefocal  # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the profile's rows: (key, what), in table order; keys are the ``record_function`` labels
PARTS = (
    ("clickloop.clicks", "click sampling (error region, draw, pred)"),
    ("clickloop.decoder", "prompt encoder + mask decoder"),
    ("clickloop.upsample", "upsampling to the label size"),
    ("l1dfl.histogram", "loss: L1DFL histogram (binning, counts, table)"),
    ("l1dfl.gather", "loss: L1DFL gather (beta per voxel)"),
    ("l1dfl.terms", "loss: L1DFL Dice + focal terms"),
    ("clickloop.loss", "loss: the rest (whole loss for MONAI losses)"),
    ("clickloop.iou", "IoU head MSE"),
    ("step.forward", "forward: the rest"),
    ("step.backward", "backward: the rest (gradient accumulation)"),
    ("step.optimizer", "gradient clipping + AdamW"),
)
#: ops that make the host wait for the device (on CUDA) — counted in the profile
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero",
            "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _label_of(ev, labels: set) -> "str | None":
    e = ev
    while e is not None:
        if e.name in labels:
            return e.name
        e = e.cpu_parent
    return None


def part_table(events, cuda: bool = False) -> dict:
    """Per-part time of one profiled step from ``torch.profiler``'s ``events()``.

    Forward time of a part: its ``record_function`` region minus the nested regions.  Backward
    time: every ``autograd::engine::evaluate_function`` event goes to the part whose forward op
    has the same sequence number (the op that made the autograd node).  Returns ``{key: {"fwd_ms",
    "bwd_ms", "fwd_dev_ms", "bwd_dev_ms"}, "syncs": {op: count}, "total_ms": ...}``.
    """
    keys = [k for k, _ in PARTS]
    labels = set(keys)
    out = {k: {"fwd_ms": 0.0, "bwd_ms": 0.0, "fwd_dev_ms": 0.0, "bwd_dev_ms": 0.0} for k in keys}
    seq_label: dict = {}
    syncs: dict = defaultdict(int)
    total = 0.0

    def dev(e) -> float:
        return (getattr(e, "device_time_total", 0.0) or 0.0) / 1e3 if cuda else 0.0

    for e in events:
        if e.name in SYNC_OPS:
            where = "optimizer" if _label_of(e, {"step.optimizer"}) else "forward/backward"
            syncs[f"{e.name} ({where})"] += 1
        if e.name in labels:
            nested = [c for c in _descendant_labels(e, labels)]
            own = e.cpu_time_total / 1e3 - sum(c.cpu_time_total for c in nested) / 1e3
            own_dev = dev(e) - sum(dev(c) for c in nested)
            if e.name == "step.backward":
                # the autograd nodes inside it are attributed below; what is left is the rest
                evals = [c for c in _walk(e) if c.name.startswith("autograd::engine::evaluate_function")
                         and "AccumulateGrad" not in c.name]
                own -= sum(c.cpu_time_total for c in evals if _top_eval(c)) / 1e3
                own_dev -= sum(dev(c) for c in evals if _top_eval(c))
            which = "fwd" if e.name != "step.backward" else "bwd"
            out[e.name][f"{which}_ms"] += own
            out[e.name][f"{which}_dev_ms"] += own_dev
            if e.name in ("step.forward", "step.backward", "step.optimizer"):
                total += e.cpu_time_total / 1e3
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::") \
                and e.sequence_nr not in seq_label:
            lab = _label_of(e, labels)  # None for the backward thread's ops on CUDA
            if lab is not None and lab != "step.backward":
                seq_label[e.sequence_nr] = lab
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function") and "AccumulateGrad" not in e.name \
                and _top_eval(e):
            lab = seq_label.get(e.sequence_nr, "step.forward")
            out[lab]["bwd_ms"] += e.cpu_time_total / 1e3
            out[lab]["bwd_dev_ms"] += dev(e)
    return {"parts": out, "syncs": dict(syncs), "total_ms": total}


def _walk(e):
    for c in e.cpu_children:
        yield c
        yield from _walk(c)


def _descendant_labels(e, labels):
    """The outermost labelled regions nested in ``e``."""
    for c in e.cpu_children:
        if c.name in labels:
            yield c
        else:
            yield from _descendant_labels(c, labels)


def _top_eval(e) -> bool:
    """An evaluate_function event not nested in another one (a node's time counted once)."""
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith("autograd::engine::evaluate_function"):
            return False
        p = p.cpu_parent
    return True


def format_profile(tables: dict, cuda: bool) -> str:
    """A markdown table: one row per part, one column group per loss (ms per step and share)."""
    names = list(tables)
    head = "| part | " + " | ".join(
        f"{n} fwd ms | {n} bwd ms | {n} %" + (f" | {n} kernel ms" if cuda else "") for n in names) + " |"
    sep = "|---|" + "|".join(["---:"] * (len(names) * (4 if cuda else 3))) + "|"
    lines = [head, sep]
    for key, what in PARTS:
        cells = []
        for n in names:
            p = tables[n]["parts"][key]
            tot = tables[n]["total_ms"] or 1.0
            cells += [f"{p['fwd_ms']:.1f}", f"{p['bwd_ms']:.1f}", f"{100 * (p['fwd_ms'] + p['bwd_ms']) / tot:.1f}"]
            if cuda:
                cells.append(f"{p['fwd_dev_ms'] + p['bwd_dev_ms']:.2f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        cells += [f"{tables[n]['total_ms']:.1f}", "", "100"] + ([""] if cuda else [])
    lines.append("| **step (profiled)** | " + " | ".join(cells) + " |")
    syncs = "; ".join(f"{n}: " + (", ".join(f"{k} x{v}" for k, v in sorted(tables[n]["syncs"].items())) or "none")
                      for n in names)
    lines.append(f"\nhost reads/syncs in the step — {syncs}")
    if not cuda:
        lines.append("(on a CPU nothing waits for a device: these are the reads that would make a GPU wait if "
                     "their tensor lived there; AdamW's step counters live on the host)")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from sam_l1dfl.losses import make_training_loss, normalize_loss_name
    from sam_l1dfl.model import build_sam_med3d
    from sam_l1dfl.prompts.clicks import click_uniforms
    from sam_l1dfl.training.clickloop import ClickLoop, configure_trainable
    from sam_l1dfl.training.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "vit_b_ori"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=11)
    ap.add_argument("--size", type=int, default=128, help="label size (the logits are upsampled to it)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per loss")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--loss", default="l1dfl", help="comma-separated losses, e.g. l1dfl,dicece (ratios to the first)")
    ap.add_argument("--no-encoder", action="store_true", help="only the cached path")
    ap.add_argument("--profile", action="store_true", help="per-part profile of one more step per loss")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "no"], help="auto: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile L1DFL's per-voxel kernel")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)

    losses = [normalize_loss_name(n) for n in a.loss.split(",") if n.strip()]
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda" if cuda else "cpu")
    amp = torch.bfloat16 if (a.amp == "bf16" or (a.amp == "auto" and cuda)) else None
    cfg = load_config(None, [f"model.preset={a.preset}", f"prompts.clicks_per_sample={a.clicks}"])
    torch.manual_seed(0)
    model = build_sam_med3d(cfg.model_config())
    configure_trainable(model, cfg)
    model.to(dev)
    B, S = a.batch, a.size
    label = torch.zeros(B, 1, S, S, S, dtype=torch.uint8)
    for b in range(B):
        c = int(S * (40 + 10 * b) / 128) % max(1, S - 14)
        label[b, 0, c:c + 14, max(0, c - 5):c + 9, c + 3:c + 12] = 1
    label = label.to(dev)
    images = torch.randn(B, 1, 128, 128, 128, device=dev)
    with torch.inference_mode():
        emb = model.image_encoder(images[:1]).expand(B, -1, -1, -1, -1).clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    loops = {}
    for name in losses:
        loss_fn = make_training_loss(name)
        loops[(name, "cached")] = ClickLoop(model, cfg.prompts, loss_fn).to(dev)
        if not a.no_encoder and name == losses[0]:
            loops[(name, "encoder")] = ClickLoop(model, cfg.prompts, loss_fn, with_encoder=True).to(dev)
    if a.compile:
        for lp in loops.values():
            if hasattr(lp.loss_fn, "compile_kernels"):
                lp.loss_fn.compile_kernels()

    counter = [0]

    def step(key) -> dict:
        loop = loops[key]
        s = counter[0]
        counter[0] += 1
        u = click_uniforms(0, 0, range(s * B, (s + 1) * B), a.clicks).to(dev)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            with record_function("step.forward"):
                out = loop(label, u, embeddings=emb if key[1] == "cached" else None,
                           images=images if key[1] == "encoder" else None, mask_only=(a.clicks - 1,))
        with record_function("step.backward"):
            out["loss"].backward()
        with record_function("step.optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return out

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    r0 = rss_mb()
    times: dict = {k: [] for k in loops}
    cpu_times: dict = {k: [] for k in loops}
    for s in range(a.warmup + a.steps):
        for key in loops:
            sync()
            t, c = time.perf_counter(), time.process_time()
            step(key)
            sync()
            if s >= a.warmup:
                times[key].append(time.perf_counter() - t)
                cpu_times[key].append(time.process_time() - c)
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb() - r0

    what = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine() or "cpu")
    print(f"device: {what} ({torch.get_num_threads()} threads), torch {torch.__version__}, preset {a.preset}, "
          f"batch {B}, {a.clicks} clicks, labels {S}³, {'bf16 autocast' if amp else 'fp32'}"
          f"{', compiled loss' if a.compile else ''}")
    res: dict = {"device": what, "torch": torch.__version__, "preset": a.preset, "batch": B, "clicks": a.clicks,
                 "size": S, "amp": "bf16" if amp else "fp32", "compile": a.compile, "rows": [],
                 "peak_mib": round(mem, 1), "peak_what": "CUDA max allocated" if cuda else "RSS growth"}
    first = None
    for key, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        cpu = statistics.median(cpu_times[key])
        row = {"loss": key[0], "path": key[1], "best_s": best, "median_s": med, "samples_per_s": B / best,
               "samples_per_s_median": B / med, "cpu_s_median": cpu}
        if key[1] == "cached":
            first = first or row
            row["ratio_to_first"] = best / first["best_s"]
            row["ratio_to_first_median"] = med / first["median_s"]
            row["cpu_ratio_to_first"] = cpu / first["cpu_s_median"]
        res["rows"].append(row)
        extra = (f"   step {row['ratio_to_first']:.3f}x (median {row['ratio_to_first_median']:.3f}x; "
                 f"process CPU time {row['cpu_ratio_to_first']:.3f}x) the {first['loss']} step"
                 ) if key[1] == "cached" and row is not first else ""
        print(f"  {key[0]:9s} {key[1]:8s} {row['samples_per_s']:8.3f} samples/s (best of {len(ts)}; "
              f"median {row['samples_per_s_median']:.3f}; {cpu:.2f} s CPU/step){extra}")
    print(f"  peak memory: {mem:.1f} MiB ({res['peak_what']}, all rows)")
    enc = [r for r in res["rows"] if r["path"] == "encoder"]
    if enc:
        res["cache_speedup"] = first["samples_per_s"] / enc[0]["samples_per_s"]
        print(f"  cache speed-up ({first['loss']}): {res['cache_speedup']:.2f}x")
    if cuda and a.preset == "vit_b_ori" and a.clicks == 11 and B == 8:
        for r in res["rows"]:
            if r["path"] == "cached":
                print(f"  {r['loss']} vs official decoder step (34 samples/s on an H200, batch 8): "
                      f"{r['samples_per_s'] / 34:.2f}x")

    if a.profile:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        tables = {}
        for name in losses:
            sync()
            with profile(activities=acts) as prof:
                step((name, "cached"))
                sync()
            tables[name] = part_table(prof.events(), cuda)
        res["profile"] = tables
        print("\nper-part profile of one cached step (ms; % of the profiled step's CPU time):")
        print(format_profile(tables, cuda))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    from sam_l1dfl.errors import run_script

    run_script(main)
