"""`make bench-quick` as a test: every benchmark runs at its tiny size and stays correct.

Speed is never asserted here (PERFORMANCE.md: it lives in the benchmarks, the machines are
shared and noisy); this only keeps the benchmarks from rotting: they run, print their table,
write numeric figures, and their correctness checks pass (every mail delivered exactly once,
every queued row where it should be).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_NAMES = ("b1_email_drain", "b2_enqueue")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Slow: B1 and B2 alone take about 25 s on a quiet machine, but the runner also runs the other
# benchmarks registered in bench/run.py (B3, B4, B5, B7 at their quick sizes): 85 s in all
# on the shared 2-core machine.
@pytest.mark.slow
def test_bench_quick_runs_prints_one_table_and_every_check_passes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "quick", "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"

    header = [line for line in proc.stdout.splitlines() if line.startswith("| benchmark ")]
    assert len(header) == 1, proc.stdout
    for column in ("figure", "value", "limit measured", "ratio", "goal", "ok"):
        assert column in header[0]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| B")]
    assert any(line.startswith("| B1 email drain") for line in rows), proc.stdout
    assert any(line.startswith("| B2 enqueue") for line in rows), proc.stdout

    for name in RESULT_NAMES:
        assert (tmp_path / f"{name}.json").exists(), f"{name}.json was not written"
    # Every benchmark the runner knows (others register theirs in bench/run.py) wrote
    # numeric figures and passed its correctness checks.
    for path in sorted(tmp_path.glob("*.json")):
        result = json.loads(path.read_text())
        assert result["size"] == "quick", path.name
        assert result["figures"], path.name
        for figure in result["figures"]:
            assert _number(figure["value"]), (path.name, figure)
            assert figure["limit"] is None or _number(figure["limit"]), (path.name, figure)
            assert figure["ratio"] is None or _number(figure["ratio"]), (path.name, figure)
            assert figure["ok"] in (True, False, None), (path.name, figure)
        assert result["checks"]["ok"] is True, (path.name, result["checks"])

    b1 = json.loads((tmp_path / "b1_email_drain.json").read_text())
    for figure in b1["figures"]:
        assert figure["value"] > 0 and figure["limit"] > 0, figure
    n = b1["checks"]["n"]
    assert b1["checks"]["every_mail_delivered_exactly_once"] is True
    # 2 paths x 2 batch sizes x 1 and 2 workers, and (a) at batch 20 with pipelining off on 1
    # and 2 workers, each checked on its own.
    assert len(b1["checks"]["deliveries"]) == 10
    assert {"a_w1_b20_nopipe", "a_w2_b20_nopipe"} <= set(b1["checks"]["deliveries"])
    for run, check in b1["checks"]["deliveries"].items():
        assert check["sink_count"] == n == check["sink_distinct"], run
        assert check["rows_by_status"] == {"sent": n}, run
    for baseline in b1["checks"]["baselines"]:
        assert baseline["sink_count"] == baseline["n"] == baseline["sink_distinct"], baseline

    b2 = json.loads((tmp_path / "b2_enqueue.json").read_text())
    singles = b2["checks"]["singles_api"]
    assert singles["rows"] == singles["distinct_keys"] == singles["built"] == singles["pending"]
