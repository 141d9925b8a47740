"""``sam-l1dfl weights download`` with no network (issue 22): the one line after one probe, not after
~23 s of ``huggingface_hub`` retries; the Hugging Face cache still serves the file.

The issue's figure (≤ 5 s) is measured and reported (< 1 s refused, ~3 s silent: the probe's
``PROBE_TIMEOUT_S``), not asserted as a wall time: the bound here, ``NO_RETRY_S``, only tells one
probe from the retries, so a loaded machine cannot fail it.

Real processes with the environment variables only (``HF_ENDPOINT`` is read when
``huggingface_hub`` is imported).  The time measured is the command's own, after the imports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from sam_l1dfl.formats import WEIGHTS_FILE
from _weights_helpers import populate_hf_cache, tiny_official_checkpoint

pytestmark = pytest.mark.slow

#: Above one probe (PROBE_TIMEOUT_S = 3 s) plus a loaded machine's slack, below the ~23 s of retries.
NO_RETRY_S = 15.0

#: The child imports everything first, then times the command alone.
CHILD = """
import json, sys, time
import sam_l1dfl.commands.weights, sam_l1dfl.model.download
from sam_l1dfl.cli import main
t = time.monotonic()
rc = main(["weights", "download", "--out-dir", "ck", "--quiet"])
print(json.dumps({"rc": rc, "seconds": time.monotonic() - t}))
"""


def download(tmp_path, endpoint: str, timeout: float = 120) -> tuple[dict, list[str]]:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, "OMP_NUM_THREADS": "1"}
    for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr.splitlines()


def assert_the_one_line(lines: list[str], tmp_path, endpoint: str) -> None:
    dest = tmp_path / "ck" / WEIGHTS_FILE
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: ck/{WEIGHTS_FILE}: cannot download {WEIGHTS_FILE} from Hugging Face")
    assert "huggingface.co cannot be reached and the file is not in the Hugging Face cache" in lines[0]
    assert f"download {endpoint}/blueyo0/SAM-Med3D/resolve/main/{WEIGHTS_FILE} by hand" in lines[0]
    assert f"put it at {dest}" in lines[0]
    assert not (tmp_path / "ck").exists()


def test_an_unreachable_endpoint_fails_without_retries(tmp_path):
    endpoint = "http://127.0.0.1:9"  # the discard port: connection refused
    res, lines = download(tmp_path, endpoint)
    assert res["rc"] == 2
    assert_the_one_line(lines, tmp_path, endpoint)
    assert res["seconds"] < NO_RETRY_S, res


def test_a_silent_endpoint_times_out_after_one_probe(tmp_path):
    """A host that takes the connection and never answers (a dead proxy, a filtered network)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: the kernel completes the handshake, nobody answers
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        res, lines = download(tmp_path, endpoint, timeout=60)
    assert res["rc"] == 2
    assert_the_one_line(lines, tmp_path, endpoint)
    assert res["seconds"] < NO_RETRY_S, res


def test_the_cache_serves_the_file_when_the_hub_cannot_be_reached(tmp_path):
    weights = tiny_official_checkpoint(tmp_path / "tiny.pth")
    populate_hf_cache(tmp_path / "hf" / "hub", weights)
    res, lines = download(tmp_path, "http://127.0.0.1:9")
    assert res["rc"] == 0, lines
    assert (tmp_path / "ck" / WEIGHTS_FILE).read_bytes() == weights.read_bytes()
    assert res["seconds"] < NO_RETRY_S + 30.0  # the check reads the file; no retries
