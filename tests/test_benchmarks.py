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
    must show overlayfs semantics and list exactly what kernel overlayfs lists; the report
    has the issue's goals and a chart."""
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
        "lstat every path (cold)",
        "lstat every path (warm)",
        "cat 64 MiB (cold)",
        "cat 64 MiB (warm)",
        "fio randread 4k (warm)",
        "append 1 byte to 52 lower files",  # busybox has few: its changes layer's added files
        "copy-up: 1-byte write into 64 MiB file",
        "untar the rootfs",  # busybox has no /usr/share
        "rm -rf untarred the rootfs",
        "chroot 300× /bin/true",  # no dpkg -l: busybox has no dpkg
    }
    for case in cases.values():
        assert case["baseline"] == "kernel overlayfs"
        by_name = {c["name"]: c for c in case["contenders"]}
        for name in ("kernel overlayfs", "imgfs-overlay", "imgfs mount (container)"):
            result = by_name[name]
            assert result["error"] is None, (case["workload"], name, result["error"])
            assert len(result["samples"]) == 1 and result["samples"][0]["wall_s"] > 0
            assert result["ratio_to_baseline"] > 0, (case["workload"], name)
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
    lstat = {c["name"]: c for c in cases["lstat every path (cold)"]["contenders"]}
    assert lstat["imgfs mount (container)"]["median_metrics"]["lstat_failed"] == 0
    fio = {c["name"]: c for c in cases["fio randread 4k (warm)"]["contenders"]}
    assert fio["imgfs-overlay"]["median_metrics"]["iops"] > 0

    goals = {(t["target"], t["contender"]): t for t in doc["targets"]}
    assert goals[("find, cold", "imgfs-overlay")]["value"] > 0
    assert goals[("chroot dpkg -l", "imgfs-overlay")]["met"] is None  # not measured here
    md = json_path.with_suffix(".md").read_text()
    assert "| find (cold) | kernel overlayfs (baseline) |" in md
    assert "| find, cold | ≤ 2× | imgfs-overlay |" in md
    assert f"![ratios to the baseline]({json_path.with_suffix('.png').name})" in md
    assert json_path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "| ls -lR (warm) | imgfs-overlay |" in proc.stdout


def test_quick_layers_benchmark_writes_results(tmp_path: Path) -> None:
    """Mount and 10k stats on images of 1 and 100 layers: kernel overlayfs takes 100 lower
    dirs, ours find every bottom-layer path and none of the missing ones."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    run_quick(tmp_path, "layers")

    [json_path] = (tmp_path / "results").glob("*-layers-small.json")
    doc = json.loads(json_path.read_text())
    cases = {c["workload"]: c for c in doc["cases"]}
    assert set(cases) == {
        f"{what} ({n})"
        for n in ("1 layer", "100 layers")
        for what in (
            "mount",
            "10,000 stats of bottom-layer paths",
            "10,000 stats of missing paths",
        )
    }
    for workload, case in cases.items():
        by_name = {c["name"]: c for c in case["contenders"]}
        for name in ("kernel overlayfs", "imgfs-overlay", "imgfs mount (container)"):
            result = by_name[name]
            assert result["error"] is None, (workload, name, result["error"])
            if "bottom-layer" in workload:
                assert result["median_metrics"]["lstat_failed"] == 0, (workload, name)
            if "missing" in workload:
                assert result["median_metrics"]["lstat_failed"] == 10_000, (workload, name)
    goals = {(t["target"], t["contender"]): t for t in doc["targets"]}
    assert goals[("own mount time, 100 layers / 1 layer", "imgfs mount (container)")]["value"]
    assert json_path.with_suffix(".png").is_file()


def test_quick_changes_benchmark_writes_results(tmp_path: Path) -> None:
    """diff and commit of a 200-change container: ours run on a fresh copy of the populated
    upper dir each rep (and see what the populated container showed), the peers run or are
    skipped, and nothing is left in the bench store."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    proc = run_quick(tmp_path, "changes")

    [json_path] = (tmp_path / "results").glob("*-changes-small.json")
    doc = json.loads(json_path.read_text())
    cases = {c["workload"]: c for c in doc["cases"]}
    assert set(cases) == {"diff", "commit"}
    [sidecar] = (tmp_path / "cache").glob("changes-busybox-rootfs-*.json")
    built = json.loads(sidecar.read_text())
    assert built["changes"] == 200 and built["upper_bytes"] > 0

    diff = {c["name"]: c for c in cases["diff"]["contenders"]}
    assert cases["diff"]["baseline"] == "find upper dir (floor)"
    for name in ("find upper dir (floor)", "imgfs diff", "imgfs diff (mounted)"):
        assert diff[name]["error"] is None, (name, diff[name]["error"])
        assert len(diff[name]["samples"]) == 1 and diff[name]["samples"][0]["wall_s"] > 0
    for name in ("imgfs diff", "imgfs diff (mounted)"):  # the copy diffs as the original did
        assert diff[name]["median_metrics"]["lines_listed"] == built["diff_lines"] >= 200
    for peer in ("rsync -aiX -n --delete (overlayfs views)", "diff -rq (overlayfs views)"):
        assert diff[peer]["skipped"] or diff[peer]["samples"], diff[peer]

    commit = {c["name"]: c for c in cases["commit"]["contenders"]}
    assert cases["commit"]["baseline"] == "tar -c + zstd -T0 -3"
    for name in ("tar -c + zstd -T0 -3", "imgfs commit", "imgfs commit --compression gzip"):
        result = commit[name]
        assert result["error"] is None, (name, result["error"])
        assert result["samples"][0]["bytes"] == built["upper_bytes"]
        assert result["median_metrics"]["layer_blob_bytes"] > 0
    entries = commit["imgfs commit"]["median_metrics"]["layer_entries"]
    assert commit["imgfs commit --compression gzip"]["median_metrics"]["layer_entries"] == entries
    assert commit["umoci repack"]["skipped"] or commit["umoci repack"]["samples"]

    store = tmp_path / "cache" / "changes-store-busybox-rootfs"
    assert not any((store / "containers").iterdir())
    index = json.loads((store / "oci" / "index.json").read_text())
    assert len(index["manifests"]) == 1  # the committed images were removed again

    md = json_path.with_suffix(".md").read_text()
    assert "| diff | find upper dir (floor) (baseline) |" in md
    assert "| commit | imgfs commit |" in proc.stdout


def test_quick_registry_benchmark_writes_results(tmp_path: Path) -> None:
    """push and pull through a fresh docker-registry per rep, beside skopeo."""
    require(shutil.which("docker-registry") is not None, "docker-registry is not installed")
    require(shutil.which("skopeo") is not None, "skopeo is not installed")
    run_quick(tmp_path, "registry")

    [json_path] = (tmp_path / "results").glob("*-registry-small.json")
    cases = {c["workload"]: c for c in json.loads(json_path.read_text())["cases"]}
    assert set(cases) == {"push busybox-rootfs", "pull busybox-rootfs"}
    for case, ours in (
        ("push busybox-rootfs", "imgfs push"),
        ("pull busybox-rootfs", "imgfs pull"),
    ):
        by_name = {c["name"]: c for c in cases[case]["contenders"]}
        for name in (ours, "skopeo copy"):
            assert by_name[name]["error"] is None, (name, by_name[name]["error"])
            assert by_name[name]["samples"][0]["bytes"] > 0
