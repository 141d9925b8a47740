"""scripts/gpu_check.sh (``make gpu-check``), what can be checked without a GPU: the plan of a dry
run, a real run of the light steps into one log file, and the offline wheel install that never
installs another torch."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(tmp_path, *args, **env):
    e = {**os.environ, "GPU_CHECK_DIR": str(tmp_path / "log"), "GPU_CHECK_WORK": str(tmp_path / "work"),
         "PYTHON": sys.executable, **env}
    p = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=300)
    return p.returncode, (tmp_path / "log" / "gpu_check.log").read_text()


def test_dry_run_plans_every_step_at_full_size(tmp_path):
    rc, log = run(tmp_path, "--dry-run")
    assert rc == 0, log
    assert os.listdir(tmp_path / "log") == ["gpu_check.log"]  # one log, nothing else in the log folder
    for step in ("env", "imports", "cuda_tests", "bench_encoder", "bench_finetune", "demo", "pretrain", "suite",
                 "bench_compile"):
        assert f"=== {step} " in log and f"| {step} | planned |" in log
    assert "--preset vit_b_ori --batch 8 --clicks 11" in log and "--loss l1dfl,dicece,dicefocal" in log
    assert "tests/test_readme_dicom.py" in log and "test_resume_equals_uninterrupted" in log
    assert "scripts/pretrain_standin.py" in log and "train.mixed_precision=bf16" in log


def test_light_steps_run_and_fail_loudly(tmp_path):
    rc, log = run(tmp_path, "--steps", "env,imports", "--budget", "200")
    assert rc == 0, log
    assert "| env | ok |" in log and "| imports | ok |" in log and "sam_l1dfl" in log
    rc, log = run(tmp_path, "--steps", "imports", PYTHON="/nonexistent/python")
    assert rc == 1 and "| imports | FAILED" in log
    p = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: --frobnicate")


def _wheel(path: Path, name: str, version: str = "0.1") -> Path:
    whl = path / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return whl


def test_offline_wheels_from_a_folder_and_a_tar_xz_never_torch(tmp_path):
    wheels = tmp_path / "whl"
    packed = tmp_path / "packed"
    wheels.mkdir()
    packed.mkdir()
    _wheel(wheels, "gpu_check_probe_a")
    _wheel(wheels, "torch", "9.9.9")  # must be skipped
    _wheel(packed, "gpu_check_probe_b")
    subprocess.run(["tar", "-cJf", str(wheels / "big.tar.xz"), "-C", str(packed), "."], check=True)
    rc, log = run(tmp_path, "--steps", "wheels", "--wheels", str(wheels), "--budget", "200")
    assert rc == 0, log
    site = tmp_path / "work" / "site"
    assert (site / "gpu_check_probe_a" / "__init__.py").is_file()
    assert (site / "gpu_check_probe_b" / "__init__.py").is_file()  # unpacked from the .tar.xz
    assert not (site / "torch").exists() and "torch-9.9.9" in log
