#!/usr/bin/env python
"""Benchmark the SAM-Med3D image encoder: fast (virtual-key) vs faithful (padded) attention.

Reports, for batch 1 and 4, the median seconds per volume and the peak memory of a forward
pass (no grad), fp32 on the CPU and, where CUDA exists, bf16 autocast on the GPU, with both
attention paths side by side and their ratio.  Also checks that both paths agree.

CPU peak memory is the peak resident set (sampled every 2 ms) of a fresh child process per
measurement, minus its resident set before the first forward pass; GPU peak memory is ``torch.cuda.max_memory_allocated``
above the memory held before the forward passes.

    python scripts/bench_encoder.py                      # vit_b_ori, batch 1 and 4
    python scripts/bench_encoder.py --config tiny --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time


def _build(config: str, device: str):
    import torch

    from sam_l1dfl.model import SamMed3DConfig
    from sam_l1dfl.model.sam import SamMed3D

    torch.manual_seed(0)
    with torch.device("meta"):
        model = SamMed3D(SamMed3DConfig.preset(config))
    model = model.to_empty(device=device)
    with torch.no_grad():  # non-trivial weights, rel-pos tables included
        for p in model.parameters():
            p.normal_(0, 0.02)
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm,)) or type(m).__name__ == "LayerNorm3d":
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model.eval()


def _timings(model, x, impls, repeats: int, warmup: int, cuda: bool) -> dict:
    """Median s/volume per attention path; the paths alternate run by run, so that load
    changes on a shared machine hit both alike."""
    import torch

    enc = model.image_encoder
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else torch.no_grad
    times = {impl: [] for impl in impls}
    with torch.no_grad():
        for rep in range(warmup + repeats):
            for impl in impls:
                enc.attn_impl = impl
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with ctx():
                    enc(x)
                if cuda:
                    torch.cuda.synchronize()
                if rep >= warmup:
                    times[impl].append((time.perf_counter() - t0) / x.shape[0])
    return {impl: statistics.median(t) for impl, t in times.items()}


def _peak_memory(config: str, impl: str, batch: int, device: str, threads: int = 0) -> float:
    """Peak extra memory (MiB) of one forward pass: CUDA allocator peak, or sampled CPU RSS."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = _build(config, device)
    model.image_encoder.attn_impl = impl
    s = model.config.img_size
    x = torch.randn(batch, model.config.in_chans, s, s, s, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_now()
        sampler = _RssSampler()
    with torch.no_grad(), (torch.autocast("cuda", dtype=torch.bfloat16) if cuda else _nullctx()):
        model.image_encoder(x)
    if cuda:
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return (sampler.stop() - base) / 2**20


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _RssSampler:
    """Peak resident set size, sampled every 2 ms in a background thread."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_now()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_now())
            self._stop.wait(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss_now())


def _child_memory(config: str, impl: str, batch: int) -> float:
    """CPU peak memory in a fresh process, so that earlier runs' allocations do not count."""
    import torch

    spec = dict(config=config, impl=impl, batch=batch, device="cpu", threads=torch.get_num_threads())
    cmd = [sys.executable, __file__, "--_child", json.dumps(spec)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _agreement(config: str, device: str) -> float:
    import torch

    model = _build(config, device)
    x = torch.randn(1, model.config.in_chans, model.config.img_size, model.config.img_size, model.config.img_size,
                    device=device)
    with torch.no_grad():
        model.image_encoder.attn_impl = "faithful"
        a = model.image_encoder(x)
        model.image_encoder.attn_impl = "fast"
        b = model.image_encoder(x)
    return ((a - b).abs().max() / a.abs().max()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--config", default="vit_b_ori", help="model preset (vit_b_ori, tiny)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU measurements")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(_peak_memory(**json.loads(args._child)))
        return 0

    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# SAM-Med3D encoder benchmark ({args.config}); torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"max |fast - faithful| / max|faithful| (fp32 cpu, batch 1): {_agreement(args.config, 'cpu'):.2e}")
    setups = [] if args.no_cpu else [("cpu", "fp32")]
    if torch.cuda.is_available():
        setups.append(("cuda", "bf16 autocast"))
    impls = ("faithful", "fast")
    rows = []
    jobs = [(dev, prec, b) for dev, prec in setups for b in args.batches]
    for dev, prec, b in tqdm(jobs, desc="measuring", unit="setting"):
        model = _build(args.config, dev)
        s = model.config.img_size
        x = torch.randn(b, model.config.in_chans, s, s, s, device=dev)
        t = _timings(model, x, impls, args.repeats, args.warmup, dev == "cuda")
        del model, x
        if dev == "cpu":
            mem = {impl: _child_memory(args.config, impl, b) for impl in impls}
            name = platform.processor() or platform.machine()
        else:
            mem = {impl: _peak_memory(args.config, impl, b, "cuda") for impl in impls}
            name = torch.cuda.get_device_name()
        rows.append(dict(device=f"{dev} ({name})", precision=prec, batch=b, time=t, mem=mem))
    print()
    print("| device | precision | batch | faithful s/vol | fast s/vol | speed-up | faithful peak MiB | fast peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, m = r["time"], r["mem"]
        print(f"| {r['device']} | {r['precision']} | {r['batch']} | {t['faithful']:.3f} | {t['fast']:.3f} | "
              f"{t['faithful'] / t['fast']:.2f}x | {m['faithful']:.0f} | {m['fast']:.0f} | "
              f"{m['faithful'] / max(m['fast'], 1e-9):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
