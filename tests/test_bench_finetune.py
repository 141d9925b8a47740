"""scripts/bench_finetune.py: losses in one process with ratios, and the per-part profile whose
backward time lands on the part that made it (not all on "the rest")."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_splits_the_step_per_part(tmp_path, capsys):
    out = tmp_path / "b.json"
    main = runpy.run_path(str(ROOT / "scripts" / "bench_finetune.py"))["main"]
    assert main(["--size", "32", "--clicks", "2", "--steps", "1", "--warmup", "1", "--no-encoder",
                          "--loss", "l1dfl,dicece", "--profile", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = {r["loss"]: r for r in res["rows"]}
    assert set(rows) == {"l1dfl", "dicece"} and rows["l1dfl"]["ratio_to_first"] == 1.0
    assert rows["dicece"]["cpu_ratio_to_first"] > 0 and "the l1dfl step" in text
    prof = res["profile"]["l1dfl"]["parts"]
    for part in ("clickloop.clicks", "clickloop.decoder", "clickloop.upsample", "l1dfl.histogram", "l1dfl.terms",
                 "step.optimizer"):
        assert prof[part]["fwd_ms"] > 0, part
    # backward by sequence number: the decoder's, the upsampling's and the loss's own
    for part in ("clickloop.decoder", "clickloop.upsample", "l1dfl.terms"):
        assert prof[part]["bwd_ms"] > 0, part
    assert prof["step.forward"]["bwd_ms"] < prof["clickloop.decoder"]["bwd_ms"]
    assert res["profile"]["dicece"]["parts"]["l1dfl.histogram"]["fwd_ms"] == 0
    assert "(forward/backward)" not in json.dumps(res["profile"]["l1dfl"]["syncs"])  # no host read in the step
    assert "| prompt encoder + mask decoder |" in text
