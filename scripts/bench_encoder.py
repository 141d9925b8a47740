#!/usr/bin/env python
"""Benchmark the SAM-Med3D image encoder: fast (virtual-key) vs faithful (padded) attention.

Reports, for batch 1 and 4, the median seconds per volume and the peak memory of a forward
pass (no grad), fp32 on the CPU and, where CUDA exists, bf16 autocast on the GPU, with both
attention paths side by side and their ratio, and ``auto`` (the default: the path
``choose_attn_impl`` picks for the device and batch) with what it picked.  On CUDA,
``--cuda-graphs`` adds the fast path replayed from a captured CUDA graph (no per-kernel launch
cost: what the fast path does at batch 1 once the host is out of the way).  Also checks that
both paths agree.  ``--json`` writes the rows.

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
    ap.add_argument("--cuda-graphs", action="store_true", help="also time the fast path replayed from a CUDA graph")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(_peak_memory(**json.loads(args._child)))
        return 0

    import torch
    from tqdm import tqdm

    from sam_l1dfl.model.image_encoder import choose_attn_impl

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# SAM-Med3D encoder benchmark ({args.config}); torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"max |fast - faithful| / max|faithful| (fp32 cpu, batch 1): {_agreement(args.config, 'cpu'):.2e}")
    setups = [] if args.no_cpu else [("cpu", "fp32")]
    if torch.cuda.is_available():
        setups.append(("cuda", "bf16 autocast"))
    impls = ("faithful", "fast", "auto")
    rows = []
    jobs = [(dev, prec, b) for dev, prec in setups for b in args.batches]
    for dev, prec, b in tqdm(jobs, desc="measuring", unit="setting"):
        model = _build(args.config, dev)
        s = model.config.img_size
        x = torch.randn(b, model.config.in_chans, s, s, s, device=dev)
        t = _timings(model, x, impls, args.repeats, args.warmup, dev == "cuda")
        graph = _graph_timing(model, x, args.repeats) if (dev == "cuda" and args.cuda_graphs) else None
        del model, x
        if dev == "cpu":
            mem = {impl: _child_memory(args.config, impl, b) for impl in impls[:2]}
            name = platform.processor() or platform.machine()
        else:
            mem = {impl: _peak_memory(args.config, impl, b, "cuda") for impl in impls[:2]}
            name = torch.cuda.get_device_name()
        rows.append(dict(device=f"{dev} ({name})", precision=prec, batch=b, time=t, mem=mem, graph=graph,
                         auto=choose_attn_impl(dev, b)))
    print()
    print("| device | precision | batch | faithful s/vol | fast s/vol | speed-up | auto s/vol (path) | "
          "fast + CUDA graph s/vol | faithful peak MiB | fast peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, m = r["time"], r["mem"]
        g = "—" if r["graph"] is None else f"{r['graph']:.4f}"
        print(f"| {r['device']} | {r['precision']} | {r['batch']} | {t['faithful']:.4f} | {t['fast']:.4f} | "
              f"{t['faithful'] / t['fast']:.2f}x | {t['auto']:.4f} ({r['auto']}) | {g} | {m['faithful']:.0f} | "
              f"{m['fast']:.0f} | {m['faithful'] / max(m['fast'], 1e-9):.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _graph_timing(model, x, repeats: int) -> "float | None":
    """Median s/volume of the fast path replayed from a CUDA graph (None if capture fails)."""
    import torch

    enc = model.image_encoder
    enc.attn_impl = "fast"
    static = x.clone()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                enc(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            enc(static)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        print(f"CUDA graph capture failed: {type(exc).__name__}: {exc}")
        return None
    times = []
    for _ in range(max(repeats, 3)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / x.shape[0])
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
