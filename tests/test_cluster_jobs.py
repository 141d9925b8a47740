"""Cluster jobs without training (issue 23): ``--shard`` coverage, the job-folder rules (skip,
retry, refuse, busy), both locks against SIGKILLed holders, a missing extra, sharded inference
merged by ``evaluate``, and the sbatch script of ``--dry-run`` checked against docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _script_helpers import load_script
from sam_l1dfl.cluster import jobs as jobs_mod
from sam_l1dfl.cluster.jobs import (Job, check_not_conflicting, clear_job, job_state, lock_holder, make_fingerprint,
                                    run_job)
from sam_l1dfl.cluster.resources import Resources
from sam_l1dfl.data.discovery import parse_shard, select_shard
from sam_l1dfl.data.io import CaseRecord
from sam_l1dfl.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("compare_losses")


# ---------------------------------------------------------------------- shards
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shard_covers_every_case_exactly_once(n):
    ids = [f"case{i:02d}" for i in range(11)]
    shuffled = [ids[i] for i in np.random.default_rng(n).permutation(len(ids))]
    recs = [CaseRecord(c, Path(f"{c}.nii.gz")) for c in shuffled]
    parts = [[r.case_id for r in select_shard(recs, k, n)] for k in range(1, n + 1)]
    flat = [c for p in parts for c in p]
    assert flat == sorted(ids)  # every case once, consecutive parts of the list sorted by id
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [[r.case_id for r in select_shard(list(reversed(recs)), k, n)] for k in range(1, n + 1)]
    few = [r.case_id for k in range(1, n + 1) for r in select_shard(recs[:3], k, n)]
    assert few == sorted(shuffled[:3])  # more parts than cases: some parts are empty, none repeats


def test_parse_shard():
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 7 / 7 ") == (7, 7)
    for bad in ("0/3", "4/3", "1/0", "x", "1-3"):
        with pytest.raises(InputError, match="K/N"):
            parse_shard(bad)


# ---------------------------------------------------------------------- job folders
def count_target(payload: dict) -> None:
    """A job target: counts its calls; fails while ``payload["fail_if"]`` exists."""
    calls = Path(payload["folder"]) / "calls.txt"
    calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
    if payload.get("fail_if") and Path(payload["fail_if"]).exists():
        raise RuntimeError("boom")


def _job(tmp_path: Path, name: str = "j", config: str = "a", **payload) -> Job:
    folder = tmp_path / name
    return Job(name=name, folder=str(folder), target=f"{__name__}:count_target",
               payload={"folder": str(folder), **payload}, fingerprint=make_fingerprint(config, ["c1", "c2"]))


def _calls(job: Job) -> int:
    return int((Path(job.folder) / "calls.txt").read_text())


def test_job_runs_once_is_skipped_retried_and_refused_with_other_settings(tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    job = _job(tmp_path, fail_if=str(marker))
    assert job_state(job)["state"] == "pending"
    with pytest.raises(RuntimeError, match="boom"):
        run_job(job)
    st = job_state(job)
    assert st["state"] == "failed" and st["error"] == "RuntimeError: boom"
    marker.unlink()
    assert run_job(job)["state"] == "done" and _calls(job) == 2  # a failed job is retried
    assert not (Path(job.folder) / "failed.json").exists() and job_state(job)["state"] == "done"
    assert run_job(job)["state"] == "skipped" and _calls(job) == 2  # finished: skipped
    fp = json.loads((Path(job.folder) / "fingerprint.json").read_text())
    assert fp["id"] == job.id and fp["code"] == jobs_mod.code_version()
    other = _job(tmp_path, config="b")
    assert job_state(other)["state"] == "conflict"
    with pytest.raises(ConfigError, match="finished with other settings: made with another config;.*--force"):
        check_not_conflicting([other])
    with pytest.raises(ConfigError, match="another config"):
        run_job(other)
    assert _calls(job) == 2  # nothing ran
    clear_job(other)  # --force
    assert run_job(other)["state"] == "done" and _calls(other) == 1


def test_interrupted_job_is_reported_and_resumed(tmp_path):
    job = _job(tmp_path)
    Path(job.folder).mkdir()
    (Path(job.folder) / "job.json").write_text(json.dumps({"state": "running", "attempt": 1}))
    (Path(job.folder) / "fingerprint.json").write_text(json.dumps(job.fingerprint))
    assert job_state(job)["state"] == "interrupted"
    res = run_job(job)
    assert res["state"] == "done" and json.loads((Path(job.folder) / "job.json").read_text())["attempt"] == 2


HOLDER = textwrap.dedent("""
    import sys, time
    from sam_l1dfl.cluster.jobs import JobLock, holder_info
    lock = JobLock(sys.argv[1])
    assert lock.acquire(holder_info("test"))
    print("held", flush=True)
    time.sleep(600)
""")


def _hold(folder: Path, env: dict) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("mode", ["flock", "excl"])
def test_lock_held_by_a_live_process_then_freed_by_sigkill(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("SAM_L1DFL_LOCK", mode)
    monkeypatch.setattr(jobs_mod, "LOCK_WAIT_S", 0.3)
    job = _job(tmp_path)
    holder = _hold(Path(job.folder), {"SAM_L1DFL_LOCK": mode})
    try:
        info = lock_holder(job.folder)
        assert info["pid"] == holder.pid and info["launcher"] == "test"
        assert job_state(job)["state"] == "running"
        res = run_job(job)  # a second launcher: leaves the running job alone
        assert res["state"] == "busy" and res["holder"]["pid"] == holder.pid
        assert not (Path(job.folder) / "calls.txt").exists()
        with pytest.raises(ConfigError, match="is running now"):
            clear_job(job)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL: flock is released by the kernel; the O_EXCL file stays but is stale (dead pid here)
    assert (Path(job.folder) / ".lock.excl").exists() == (mode == "excl")
    assert lock_holder(job.folder) is None
    assert run_job(job)["state"] == "done" and _calls(job) == 1
    assert not (Path(job.folder) / ".lock.excl").exists()


FORKING_HOLDER = textwrap.dedent("""
    import os, sys, time
    from sam_l1dfl.cluster.jobs import JobLock, holder_info
    lock = JobLock(sys.argv[1])
    assert lock.acquire(holder_info("test"))
    ready = os.path.join(sys.argv[1], "worker.ready")
    child = os.fork()
    if child == 0:  # like a DataLoader worker: outlives a SIGKILLed parent (PyTorch's watchdog: 5 s)
        open(ready, "w").close()  # past fork(): the at-fork handlers have run
        time.sleep(60)
        os._exit(0)
    while not os.path.exists(ready):
        time.sleep(0.01)
    print("held", child, flush=True)
    time.sleep(600)
""")


def test_a_killed_job_with_forked_workers_lets_go_of_its_lock(tmp_path, monkeypatch):
    """The race behind a flaky sweep test: the launcher saw the SIGKILLed job end, but its forked
    worker still shared the flock, so ``mark_failed`` (1 s wait) recorded no failure and the job
    read as running, then interrupted.  Forked children now drop their copy of the lock."""
    monkeypatch.setenv("SAM_L1DFL_LOCK", "flock")
    job = _job(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(job.folder)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = None
    try:
        said, worker = p.stdout.readline().split()
        assert said == "held"
        assert lock_holder(job.folder)["pid"] == p.pid
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert lock_holder(job.folder) is None  # the worker (still alive) does not hold it
        jobs_mod.mark_failed(job, "killed (test)", "test")
        assert job_state(job) == {"state": "failed", "error": "killed (test)"}
    finally:
        p.stdout.close()
        if p.poll() is None:
            p.kill()
            p.wait()
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(worker), signal.SIGKILL)  # the orphaned worker


def test_excl_lock_of_a_silent_holder_on_another_node_goes_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_L1DFL_LOCK", "excl")
    monkeypatch.setattr(jobs_mod, "LOCK_WAIT_S", 0.3)
    job = _job(tmp_path)
    Path(job.folder).mkdir()
    lock = Path(job.folder) / ".lock.excl"
    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "launcher": "submitit"}))
    assert lock_holder(job.folder)["host"] == "another-node"  # touched recently: held
    assert run_job(job)["state"] == "busy"
    old = time.time() - jobs_mod.STALE_S - 5
    os.utime(lock, (old, old))  # no heartbeat for longer than STALE_S: its holder is gone
    assert lock_holder(job.folder) is None
    assert run_job(job)["state"] == "done"


# ---------------------------------------------------------------------- extras, resources
def test_missing_extra_is_one_line(tmp_path, monkeypatch, capsys):
    from sam_l1dfl.cluster.launch import require

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'sam-l1dfl\[slurm\]'"):
        require("submitit")
    with pytest.raises(ConfigError, match=r"pip install 'sam-l1dfl\[ray\]'"):
        require("ray")
    rc = _script().main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--launcher", "ray", "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0] == ("error: --launcher ray needs the optional extra [ray]: "
                                                    "pip install 'sam-l1dfl[ray]'")
    assert not (tmp_path / "o").exists()


def test_resources_are_checked():
    from sam_l1dfl.cluster.resources import job_resources

    r = job_resources({"gpus": 1, "cpus": 8, "models": {"unet": {"mem_gb": 96, "time_min": 90}}}, "unet")
    assert (r.gpus, r.cpus, r.mem_gb, r.time_min) == (1, 8, 96.0, 90) and r.processes == 1
    assert job_resources({"gpus": 4}, "segresnet").processes == 4
    with pytest.raises(ConfigError, match="unknown key.*'resources.gpu'"):
        job_resources({"gpu": 1})
    with pytest.raises(ConfigError, match="resources.cpus must be >= 1"):
        Resources(cpus=0)


# ---------------------------------------------------------------------- --dry-run vs the docs
def autopet_cases(root: Path, n: int, shape=(12, 12, 12)) -> Path:
    """``n`` autoPET-layout cases (SUV, CTres, SEG; one small lesion each) of 4 mm voxels."""
    for i in range(n):
        d = root / f"c{i:02d}"
        d.mkdir(parents=True)
        pet = np.full(shape, 0.5, np.float32)
        ct = np.full(shape, -1000, np.int16)
        ct[2:-2, 2:-2, 2:-2] = 40
        lab = np.zeros(shape, np.uint8)
        lab[5:7, 5:7, 4 + i % 3:6 + i % 3] = 1
        pet[lab > 0] = 8.0 + i
        for name, a in (("SUV", pet), ("CTres", ct), ("SEG", lab)):
            img = sitk.GetImageFromArray(a)
            img.SetSpacing((4.0, 4.0, 4.0))
            sitk.WriteImage(img, str(d / f"{name}.nii.gz"))
    return root


def documented_resources() -> list[tuple[str, str, str, str]]:
    """The rows of the resources table of docs/cluster.md: (key, flag, sbatch line, Ray option)."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(--[\w-]+) \w+` \| `(#SBATCH [^`]+)` \| (`[^`]+`|—)[^|]* \|", text, re.M)
    assert {r[0] for r in rows} >= {"gpus", "cpus", "mem_gb", "time_min", "partition", "account"}, rows
    return rows


def test_dry_run_sbatch_script_has_the_documented_resources(tmp_path, capsys):
    data = autopet_cases(tmp_path / "d", 6)
    out = tmp_path / "o"
    given = {"gpus": "2", "cpus": "16", "mem_gb": "64", "time_min": "600", "partition": "gpu", "account": "proj42"}
    flags = [x for k, v in given.items() for x in (f"--{k.replace('_', '-')}", v)]
    argv = ["--data", str(data), "--out", str(out), "--budget", "paper", "--models", "unet,attentionunet",
            "--losses", "dice,l1dfl", "--seeds", "1", "--launcher", "submitit", "--dry-run", "--plan", *flags,
            "resources.models.attentionunet.mem_gb=96", "resources.slurm.qos=high"]
    assert _script().main(argv) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written, nothing submitted
    scripts = [s for s in re.split(r"(?m)^# job array \d+: ", text)[1:]]
    assert len(scripts) == 2  # one array per resource set: unet, then attentionunet's 96 GB
    assert "2 job(s)" in scripts[0] and "unet-dice-s0" in scripts[0] and "attentionunet" not in scripts[0]
    for sb, mem in zip(scripts, ("64", "96")):
        assert "#!/bin/bash" in sb and "#SBATCH --array=0-1%2" in sb and "#SBATCH --nodes=1" in sb
        assert "#SBATCH --ntasks-per-node=1" in sb and "#SBATCH --qos=high" in sb
        assert "submitit.core._submit" in sb and re.search(r"#SBATCH --signal=USR2@\d+", sb)
        for key, _, line, _ in documented_resources():
            if key == "slurm":
                continue
            value = mem if key == "mem_gb" else given[key]
            expect = re.sub(r"=[A-Z](GB)?$", lambda m: "=" + value + (m.group(1) or ""), line)
            assert expect in sb, (expect, sb)
    # --plan lists every job with its resources and fingerprint
    for name in ("unet-dice-s0", "unet-l1dfl-s0", "attentionunet-dice-s0", "attentionunet-l1dfl-s0"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
        assert re.search(r"2 GPUs, 16 CPUs, (64|96) GB, 10:00 h, partition gpu, account proj42, qos=high  "
                         r"fingerprint [0-9a-f]{16} \(config [0-9a-f]{16}, data [0-9a-f]{16}\)", line), line
    # the Ray submission: the documented task options
    assert _script().main([*argv[:argv.index("--launcher")], "--launcher", "ray", "--dry-run", *flags]) == 0
    ray_text = capsys.readouterr().out
    for key, _, _, opt in documented_resources():
        if opt != "—" and key != "mem_gb":
            assert opt.strip("`").replace("N", given[key]) in ray_text
    assert f"memory={64 * 2**30}" in ray_text


# ---------------------------------------------------------------------- sharded inference, merged
def test_sharded_inference_is_merged_by_evaluate_and_missing_parts_are_named(tmp_path, capsys):
    import shutil

    from sam_l1dfl.cli import main

    data = autopet_cases(tmp_path / "d", 5)
    o = tmp_path / "pred"
    base = ["infer", "--method", "threshold", "--data", str(data), "--prompts-from-mask", "--out-dir", str(o), "-q"]
    for k in (1, 2):
        assert main([*base, "--shard", f"{k}/2"]) == 0
    assert sorted(p.name for p in (o / "shard-1-of-2").glob("*.nii.gz")) == ["c00.nii.gz", "c01.nii.gz", "c02.nii.gz"]
    assert sorted(p.name for p in (o / "shard-2-of-2").glob("*.nii.gz")) == ["c03.nii.gz", "c04.nii.gz"]
    ev = ["evaluate", "--pred-dir", str(o), "--gt-dir", str(data), "--n-boot", "10", "--no-mips", "-q"]
    assert main([*ev, "--out", str(tmp_path / "r")]) == 0
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
    capsys.readouterr()
    # a part that did not finish, a part not run, a case missing: refused, named
    (o / "shard-1-of-2" / "c01.nii.gz").unlink()
    assert main([*ev, "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no prediction for reference case 'c01'" in err and "\n" not in err
    (o / "shard-2-of-2" / "summary.json").unlink()
    assert main([*ev, "--out", str(tmp_path / "r2")]) == 2
    assert "shard 2/2 did not finish" in capsys.readouterr().err
    shutil.rmtree(o / "shard-2-of-2")
    assert main([*ev, "--out", str(tmp_path / "r3")]) == 2
    assert "1 of 2 shard(s) not run (2/2)" in capsys.readouterr().err
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))
    # --shards N with a launcher: every part a job; the finished parts are skipped when run again
    o2 = tmp_path / "pred2"
    many = [x if x != str(o) else str(o2) for x in base] + ["--shards", "3"]
    assert main(many) == 0
    status = json.loads((o2 / "status.json").read_text())
    assert status["counts"]["done"] == 3 and status["complete"]
    assert main([*ev, "--pred-dir", str(o2), "--out", str(tmp_path / "r4")]) == 0
    a = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    b = (tmp_path / "r4" / "metrics.csv").read_text().splitlines()
    cols = a[0].split(",")
    keep = [i for i, c in enumerate(cols) if not c.endswith("_file")]  # the paths differ, not the numbers
    assert [[r.split(",")[i] for i in keep] for r in a] == [[r.split(",")[i] for i in keep] for r in b]
    capsys.readouterr()
    assert main(many) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3
    assert main([*many, "--launcher", "submitit", "--submitit-cluster", "local", "--dry-run"]) == 0
    assert "DRY RUN" in capsys.readouterr().out
    assert main([*base, "--shard", "1/2", "--gpus", "1"]) == 2  # launcher options belong to --shards
    assert "--shards N" in capsys.readouterr().err
