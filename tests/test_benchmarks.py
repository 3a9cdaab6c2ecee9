"""The benchmark suites run end to end on the built-in busybox rootfs (no network, no timing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import require, require_root

REPO = Path(__file__).resolve().parent.parent


def run_quick(tmp_path: Path, suite: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMGFS_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--data", "small", "--reps", "1"]
    cmd += ["--only", suite, "--out", str(tmp_path / "results")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "cache" / "scratch").exists()
    return proc


def test_quick_import_benchmark_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_quick(tmp_path, "import")

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


def test_quick_mount_benchmark_writes_results(tmp_path: Path) -> None:
    """Every contender mounts the same layers and runs every workload; ours must not fail,
    must show overlayfs semantics and list exactly what kernel overlayfs lists."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    proc = run_quick(tmp_path, "mount")

    [json_path] = (tmp_path / "results").glob("*-mount-small.json")
    doc = json.loads(json_path.read_text())
    cases = {c["workload"]: c for c in doc["cases"]}
    assert set(cases) == {
        "mount",
        "find (cold)",
        "find (warm)",
        "ls -lR (warm)",
        "cat 64 MiB (cold)",
        "cat 64 MiB (warm)",
    }
    for case in cases.values():
        assert case["baseline"] == "kernel overlayfs"
        by_name = {c["name"]: c for c in case["contenders"]}
        for name in ("kernel overlayfs", "imgfs-overlay", "imgfs mount (container)"):
            result = by_name[name]
            assert result["error"] is None, (case["workload"], name, result["error"])
            assert len(result["samples"]) == 1 and result["samples"][0]["wall_s"] > 0
        for peer in ("fuse-overlayfs", "unionfs-fuse"):  # installed or not, never an error
            assert by_name[peer]["skipped"] or by_name[peer]["samples"], by_name[peer]
        if case["workload"].startswith("cat"):
            assert by_name["imgfs-overlay"]["samples"][0]["bytes"] == 64 << 20
    mount = {c["name"]: c for c in cases["mount"]["contenders"]}
    for name in ("kernel overlayfs", "imgfs-overlay", "imgfs mount (container)"):
        assert mount[name]["median_metrics"]["overlay_semantics_ok"] == 1, name
    assert mount["imgfs-overlay"]["median_metrics"]["daemon_peak_rss_bytes"] > 0
    find = {c["name"]: c for c in cases["find (cold)"]["contenders"]}
    entries = find["kernel overlayfs"]["median_metrics"]["entries"]
    assert find["imgfs-overlay"]["median_metrics"]["entries"] == entries > 0

    md = json_path.with_suffix(".md").read_text()
    assert "| find (cold) | kernel overlayfs (baseline) |" in md
    assert "| ls -lR (warm) | imgfs-overlay |" in proc.stdout
