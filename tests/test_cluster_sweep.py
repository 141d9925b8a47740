"""The comparison as a sweep of jobs (issue 23), on 3 synthetic cases with tiny networks.

* the ``local`` launcher runs a 2 x 2 sweep (unet, segresnet x dice, l1dfl; in this process);
* submitit's ``LocalExecutor`` (real subprocesses) runs it again; one job is SIGKILLed mid-training,
  the merge says INCOMPLETE and writes to ``partial/``, the re-submission resumes that job alone,
  and the merged report and every job's weights equal the local launcher's bit for bit;
* a local Ray cluster (``ray.init(num_cpus=2)``) runs it with the same report;
* a 2-GPU job trains as 2 Accelerate processes (gloo on this CPU machine);
* ``infer-auto --shard K/N`` on one of the trained networks gives the masks of an unsharded run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from _script_helpers import load_script
from sam_l1dfl.cluster.jobs import job_state, lock_holder
from sam_l1dfl.compare.sweep import merge_comparison, run_comparison, sweep_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # several job processes: slow on a loaded machine
ROOT = Path(__file__).resolve().parents[1]

TINY = {"preprocess": {"spacing": 8.0}, "network": {"width": 0.125}, "augment": {"crop_size": 32},
        "train": {"epochs": 6, "batch_size": 1, "val_every": 3, "save_every": 1}}
KW = dict(models=["unet", "segresnet"], losses=["dice", "l1dfl"], seeds=1, budget="small", cnn_overrides=TINY,
          threads=1, progress=False, resources={"cpus": 1, "mem_gb": 2, "time_min": 20})
NAMES = ["unet-dice-s0", "unet-l1dfl-s0", "segresnet-dice-s0", "segresnet-l1dfl-s0"]
TIMING = ("wall_seconds_mean", "peak_rss_mb_max", "cuda_peak_mb_max")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from sam_l1dfl.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("sweep")
    generate_dataset(root / "synth", 3, seed=1, progress=False)
    import torch

    t0, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = run_comparison(root / "synth", root / "local", launcher="local", isolate=False, log=lambda m: None, **KW)
        # the jobs ran on threads=1 in this process, then handed the count back (a later in-process
        # training on another count would round differently from its subprocess twin)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    print(f"local launcher (in process): {time.perf_counter() - t0:.0f} s")
    assert s["complete"] and not s["missing"]
    return root


def report_numbers(out: Path) -> dict:
    """What must agree between launchers: stats.csv, cases.csv, table.csv without time and memory."""
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    return {"stats": (out / "stats.csv").read_text(), "cases": (out / "cases.csv").read_text(),
            "table": [{k: v for k, v in r.items() if k not in TIMING} for r in rows]}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {w: load_file(str(run / w / "model.safetensors")) for w in ("best", "last")}


def same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return all(wa[w].keys() == wb[w].keys() and all(torch.equal(wa[w][k], wb[w][k]) for k in wa[w]) for w in wa)


def _script():
    return load_script("compare_losses")


def test_submitit_local_executor_sigkill_resubmit_and_same_report(sweep, capfd):
    pytest.importorskip("submitit")
    out = sweep / "submitit"
    victim = out / "runs" / "unet-l1dfl-s0"
    killed: dict = {}

    def kill_mid_training():  # after the first saved state, while later epochs still run
        end = time.monotonic() + 600
        while time.monotonic() < end and not killed:
            if any((victim / "states").glob("step_*")) and not (victim / "result.json").exists():
                holder = lock_holder(victim)
                if holder and holder.get("pid"):
                    killed["states"] = sorted(p.name for p in (victim / "states").glob("step_*"))
                    os.kill(holder["pid"], signal.SIGKILL)
                    killed["pid"] = holder["pid"]
            time.sleep(0.02)

    logs: list[str] = []
    th = threading.Thread(target=kill_mid_training, daemon=True)
    th.start()
    t0 = time.perf_counter()
    s1 = run_comparison(sweep / "synth", out, launcher="submitit", submitit_cluster="local", log=logs.append, **KW)
    first = time.perf_counter() - t0
    th.join(timeout=5)
    assert killed, "the job finished before it could be killed"
    assert not s1["complete"] and s1["missing"] == ["unet-l1dfl-s0"] and s1["failed"] == ["unet-l1dfl-s0"]
    assert job_state(json.loads((out / "sweep.json").read_text())["jobs"][1])["state"] == "failed"
    partial = (out / "partial" / "table.md").read_text()
    assert "INCOMPLETE: 1 of 4 jobs did not finish" in partial and "missing: unet-l1dfl-s0" in partial
    assert not (out / "table.md").exists()  # never where the complete report goes
    status = json.loads((out / "status.json").read_text())
    assert status["counts"]["done"] == 3 and status["counts"]["failed"] == 1 and not status["complete"]
    assert not (victim / "result.json").exists()
    # the merge stage alone says so too (exit status 1), and --status names the failed job
    capfd.readouterr()
    assert _script().main(["--merge", str(out), "--quiet"]) == 1
    o, e = capfd.readouterr()
    assert "INCOMPLETE: 1 job(s) did not finish (unet-l1dfl-s0); 1 failed" in e and "partial/table.md" in o
    assert _script().main(["--status", str(out)]) == 0
    o = capfd.readouterr().out
    assert "done 3, running 0, failed 1" in o and re.search(r"unet-l1dfl-s0\s+failed\s+\S", o)
    # re-submitted without waiting (--no-wait): the three finished jobs are skipped, the killed one
    # is queued and resumes from its last state; --status follows it, --merge makes the report
    logs.clear()
    t0 = time.perf_counter()
    s2 = run_comparison(sweep / "synth", out, launcher="submitit", submitit_cluster="local", log=logs.append,
                        wait=False, **{**KW, "progress": True})
    assert s2["submitted"] and s2["states"]["unet-l1dfl-s0"]["state"] in ("queued", "running")
    assert sum("finished earlier, skipped" in ln for ln in logs) == 3
    assert "jobs: 3/4" in capfd.readouterr().err  # the progress over the sweep (plain lines off a terminal)
    while (st := sweep_status(out)["unet-l1dfl-s0"])["state"] in ("queued", "running"):
        assert time.perf_counter() - t0 < 600, st
        time.sleep(0.5)
    assert st["state"] == "done", st
    s3 = merge_comparison(out, progress=False, log=lambda m: None)
    second = time.perf_counter() - t0
    print(f"submitit LocalExecutor: {first:.0f} s, re-submission {second:.0f} s")
    assert s3["complete"] and not (out / "partial").exists() and (out / "table.md").is_file()
    m = json.loads((victim / "metrics.json").read_text())
    assert m["resumed_from"] and 1 <= int(Path(m["resumed_from"]).name.split("_")[1]) < 6  # mid-training
    assert json.loads((victim / "job.json").read_text())["attempt"] == 2
    for name in NAMES:  # the resumed job too: the weights of the uninterrupted local run
        assert same_weights(out / "runs" / name, sweep / "local" / "runs" / name), name
    assert report_numbers(out) == report_numbers(sweep / "local")


def test_ray_local_cluster_same_report(sweep):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'sam-l1dfl[ray]')")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # pragma: no cover - only where Ray cannot start
        pytest.skip(f"Ray cannot start a local cluster here: {type(exc).__name__}: {exc}")
    try:
        t0 = time.perf_counter()
        s = run_comparison(sweep / "synth", sweep / "ray", launcher="ray", log=lambda m: None, **KW)
        print(f"Ray (num_cpus=2): {time.perf_counter() - t0:.0f} s")
    finally:
        ray.shutdown()
    assert s["complete"]
    for name in NAMES:
        assert json.loads((sweep / "ray" / "runs" / name / "job.json").read_text())["launcher"] == "ray"
        assert "ray)" in (sweep / "ray" / "runs" / name / "job.log").read_text().splitlines()[0]
    assert report_numbers(sweep / "ray") == report_numbers(sweep / "local")


def test_two_gpu_job_trains_as_two_accelerate_processes(sweep):
    out = sweep / "mp"
    tiny = {**TINY, "train": {**TINY["train"], "epochs": 1, "val_every": 1}}
    s = run_comparison(sweep / "synth", out, models=["unet"], losses=["dice"], seeds=1, budget="small",
                       cnn_overrides=tiny, progress=False, launcher="local", isolate=False, log=lambda m: None,
                       resources={"gpus": 2, "cpus": 2})
    assert s["complete"]
    run = out / "runs" / "unet-dice-s0"
    assert json.loads((run / "metrics.json").read_text())["processes"] == 2
    assert json.loads((run / "result.json").read_text())["cases"]  # rank 0 tested and wrote
    assert (run / "job-spec.json").is_file()


def test_infer_auto_shards_equal_an_unsharded_run(sweep, capsys):
    import numpy as np

    from sam_l1dfl.cli import main
    from sam_l1dfl.data.io import read_mask

    best = sweep / "local" / "runs" / "unet-dice-s0" / "best"
    base = ["infer-auto", "--data", str(sweep / "synth"), "--checkpoint", str(best), "-q"]
    assert main([*base, "--out-dir", str(sweep / "whole")]) == 0
    for k in (1, 2):
        assert main([*base, "--out-dir", str(sweep / "parts"), "--shard", f"{k}/2"]) == 0
    got = {p.name: p for p in (sweep / "parts").glob("shard-*-of-2/*.nii.gz")}
    want = sorted(p.name for p in (sweep / "whole").glob("*.nii.gz"))
    assert sorted(got) == want and len(want) == 3
    for name in want:
        np.testing.assert_array_equal(read_mask(got[name])[1], read_mask(sweep / "whole" / name)[1])
    capsys.readouterr()
