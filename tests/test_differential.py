"""imgfs-overlay against kernel overlayfs, operation by operation, on random layers.

Each seed builds three random lower layers (kernel overlayfs format: whiteouts, opaque dirs,
files over dirs and dirs over files, hard links, symlinks out of the layers to a canary dir,
fifos, devices, user xattrs), mounts them twice with empty upper dirs -- the oracle with
`mount -t overlay -o redirect_dir=on,index=on,metacopy=off`, ours with
`imgfs-overlay -o lowerdir=…,upperdir=…,workdir=…` -- applies the same random operations to
both and compares every outcome, and the whole merged trees every IMGFS_DIFF_CHECK_EVERY
operations and at the end. What is deliberately not compared is listed, with the reasons, in
tests/difftest/__init__.py (KNOWN_DIFFERENCES).

Environment:
  IMGFS_DIFF_OURS         imgfs (default): <venv>/bin/imgfs-overlay; kernel: a second kernel
                          overlayfs mount, to validate the harness (must pass 100%)
  IMGFS_DIFF_SEEDS        "N" (seeds 0..N-1), "A-B" or "A,B,C"; default: 16 seeds for the main
                          test, 4 for each of the others
  IMGFS_DIFF_OPS          operations per seed (default 300, 250 for the other tests)
  IMGFS_DIFF_CHECK_EVERY  whole-tree comparison every K operations (default 25; 0: end only)
  IMGFS_DIFF_SHRINK       seconds spent shrinking a failure to a minimal repro (default 60;
                          0: off); the first 3 failures of a session are shrunk
  IMGFS_DIFF_REPLAY       a JSON file of operations (written by a failure) to run instead
  IMGFS_DIFF_TIMEOUT      seconds one operation on our mount may take (default 30)

A long local run: IMGFS_DIFF_SEEDS=0-999 IMGFS_DIFF_OPS=2000 pytest tests/test_differential.py
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from difftest import KNOWN_DIFFERENCES
from difftest.layers import (
    ALL_FEATURES,
    build_layers,
    canary_changes,
    canary_state,
    features,
    make_canary,
)
from difftest.mounts import imgfs_overlay_bin, kernel_options, ours_kind
from difftest.ops import from_json
from difftest.runner import Config, Plan, Run, report, run, shrink

from conftest import require, require_root

pytestmark = pytest.mark.root

CFG = Config.from_env(ours_kind())
MAIN_SEEDS = CFG.seeds if CFG.seeds is not None else list(range(16))
UPPER_SEEDS = CFG.seeds if CFG.seeds is not None else list(range(1000, 1004))
CANARY_SEEDS = CFG.seeds if CFG.seeds is not None else list(range(2000, 2004))
MAIN_OPS = CFG.ops or 300
OTHER_OPS = CFG.ops or 250
_shrinks_left = [3]  # failures shrunk per session (each up to IMGFS_DIFF_SHRINK seconds)


@pytest.fixture(scope="module")
def oracle_options(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The oracle's mount options: index=on if this kernel and filesystem allow it."""
    require_root()
    options, errors = kernel_options(tmp_path_factory.mktemp("probe"))
    require(options is not None, f"kernel overlayfs unusable here: {errors}")
    assert options is not None
    if errors:  # index=on refused: the oracle then breaks hard links on copy-up
        warnings.warn(f"oracle falls back to -o {options}; refused: {errors}", stacklevel=1)
    return options


@pytest.fixture
def ours() -> str:
    if CFG.ours == "imgfs":
        binary = imgfs_overlay_bin()
        require(
            binary.exists(),
            f"{binary} is not installed (IMGFS_DIFF_OURS=kernel validates the harness alone)",
        )
        require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    return CFG.ours


@pytest.fixture
def canary(tmp_path: Path):
    """The directory symlinks in the layers point at; no test may change it."""
    path = make_canary(tmp_path / "canary")
    before = canary_state(path)
    yield path
    changes = canary_changes(before, canary_state(path))
    assert not changes, "the canary directory outside the layers changed:\n" + "\n".join(changes)


def plan(seed: int, count: int, focus_symlinks: bool = False) -> Plan:
    ops = from_json(CFG.replay.read_text()) if CFG.replay else None
    return Plan(seed, count, focus_symlinks, ops)


def check(tmp: Path, result: Run, seed: int, test: str, options: str) -> None:
    """Fail with the difference, the operations before it and a shrunk repro."""
    if result.mismatch is None:
        return
    shrunk = None
    if CFG.shrink_seconds > 0 and _shrinks_left[0] > 0:
        _shrinks_left[0] -= 1
        canary = result.rig.layers.canary
        shrunk = shrink(tmp, seed, result.ops, result.mismatch, CFG, options, canary)
    title = f"kernel overlayfs (-o {options}) and {CFG.ours} differ"
    message = report(title, seed, CFG, result.ops, result.mismatch, test, tmp, shrunk)
    pytest.fail(message, pytrace=False)


def test_known_differences_are_documented():
    for d in KNOWN_DIFFERENCES:
        assert d.name and d.what and len(d.reason) > 40, d


def test_layers_cover_every_situation(tmp_path: Path, canary: Path):
    """The default seeds between them build every layer situation the harness is meant to test."""
    require_root()  # trusted.overlay.* xattrs and device nodes
    seen: set[str] = set()
    for seed in range(16):
        seen |= features(build_layers(seed, tmp_path / f"s{seed}", canary))
    assert ALL_FEATURES - seen == set()


@pytest.mark.parametrize("seed", MAIN_SEEDS)
def test_ops_match_kernel(seed: int, tmp_path: Path, oracle_options: str, ours: str, canary: Path):
    result = run(tmp_path, "run", plan(seed, MAIN_OPS), CFG, oracle_options, canary)
    check(tmp_path, result, seed, "test_ops_match_kernel", oracle_options)


@pytest.mark.parametrize("seed", UPPER_SEEDS)
def test_upper_dir_mounts_in_kernel_overlayfs(
    seed: int, tmp_path: Path, oracle_options: str, ours: str, canary: Path
):
    """Our upper dir, mounted by kernel overlayfs (fresh workdir), shows the oracle's tree."""
    p = plan(seed, OTHER_OPS)
    result = run(tmp_path, "run", p, CFG, oracle_options, canary, check_upper=True)
    check(tmp_path, result, seed, "test_upper_dir_mounts_in_kernel_overlayfs", oracle_options)
    if result.upper_lines:
        head = (
            f"kernel overlayfs over {CFG.ours}'s upper dir (fresh workdir) differs from the "
            f"oracle after {len(result.ops)} operations of seed {seed}:"
        )
        pytest.fail("\n".join([head, *result.upper_lines]), pytrace=False)


@pytest.mark.parametrize("seed", CANARY_SEEDS)
def test_canary_untouched(seed: int, tmp_path: Path, oracle_options: str, ours: str, canary: Path):
    """Operations aimed at symlinks that lead out of the layers never change what they point
    at (checked here, and again by the `canary` fixture)."""
    before = canary_state(canary)
    p = plan(seed, OTHER_OPS, focus_symlinks=True)
    result = run(tmp_path, "run", p, CFG, oracle_options, canary)
    changes = canary_changes(before, canary_state(canary))
    assert not changes, "the canary directory outside the layers changed:\n" + "\n".join(changes)
    check(tmp_path, result, seed, "test_canary_untouched", oracle_options)
