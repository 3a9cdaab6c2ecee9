"""The benchmark suite runs end to end on the built-in busybox rootfs (no network, no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_write_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "IMGFS_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--data", "small", "--reps", "1"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    [json_path] = out.glob("*-import-small.json")
    doc = json.loads(json_path.read_text())
    assert doc["data"]["entries"] > 0 and doc["machine"]["nproc"] >= 1
    [case] = doc["cases"]
    by_name = {c["name"]: c for c in case["contenders"]}
    ours = by_name["imgfs import"]
    assert ours["error"] is None, ours["error"]
    assert len(ours["samples"]) == 1 and ours["samples"][0]["wall_s"] > 0
    assert ours["samples"][0]["bytes"] == doc["data"]["bytes"]
    assert by_name[case["baseline"]]["samples"], by_name[case["baseline"]]

    md = json_path.with_suffix(".md").read_text()
    assert "| Workload | Contender | Median |" in md and "| imgfs import |" in md
    assert "| Workload | Contender | Median |" in proc.stdout
    assert not (tmp_path / "cache" / "scratch").exists()
