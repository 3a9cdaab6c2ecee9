"""What the `mount` benchmark does on a mounted union: the timed commands and what runs
(untimed) on the fresh mount before them.

Every workload is the same code for every contender: external tools (`find`, `ls`,
`cat`, `fio`, `tar`, `rm`, `chroot`) or a Python loop in the harness itself (`lstat`,
appends, the copy-up write), which costs the same per call whatever answers it, so the
ratios compare the filesystems. Reads that only the mount's page cache could answer
are "warm" (the same command ran once, untimed); "cold" ones drop the machine's caches
after mounting. Write workloads start from the rep's empty upper dir.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import mount_data
from benchmarks.harness import CommandError, Rep
from benchmarks.mounters import drop_caches
from benchmarks.workload_data import Inputs

CHROOT_LOOPS = 300
FIO_RUNTIME = "3s"
QUICK_FIO_RUNTIME = "500ms"
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}
TOOLS = ("find", "ls", "cat", "fio", "tar", "rm", "chroot")
"""The workloads' commands: required, and versioned in the results."""


@dataclass(frozen=True)
class Workload:
    name: str
    action: Callable[[Rep], int | None]
    """Timed; may return the bytes it processed (for MB/s)."""
    before: Callable[[Rep], None] | None = None
    """Untimed, on the fresh mount: warm it, drop caches, put files in place."""
    bytes: int | None = None
    rate_metric: str | None = None
    """A metric that is the workload's rate (higher is better), e.g. fio's `iops`."""


def mnt(rep: Rep) -> Path:
    path: Path = rep.state["mnt"]
    return path


def metrics(rep: Rep) -> dict[str, float]:
    """Where an action leaves numbers about what it did (the contender's inspect reads them)."""
    out: dict[str, float] = rep.state.setdefault("metrics", {})
    return out


def quiet(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a command with its output thrown away; a failure says what it printed on stderr."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(f"{cmd[0]} exited {proc.returncode}: " + " | ".join(tail))


# -- reading ---------------------------------------------------------------------------------


def find(rep: Rep) -> None:
    out = subprocess.run(["find", str(mnt(rep))], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise CommandError(f"find exited {out.returncode}")
    metrics(rep)["entries"] = out.stdout.count(b"\n") - 1  # without the mountpoint


def ls(rep: Rep) -> None:
    quiet(["ls", "-lR", str(mnt(rep))])


def cat(rep: Rep) -> None:
    quiet(["cat", str(mnt(rep) / mount_data.BIG_NAME)])


def with_full_paths(paths: list[str]) -> Callable[[Rep], None]:
    """Untimed: the paths joined to this rep's mountpoint, for `lstat_all`."""

    def before(rep: Rep) -> None:
        rep.state["full_paths"] = [os.path.join(mnt(rep), p) for p in paths]

    return before


def lstat_all(rep: Rep) -> None:
    """os.lstat of every path in a Python loop: one syscall each, no process start."""
    lstat, failed = os.lstat, 0
    for p in rep.state["full_paths"]:
        try:
            lstat(p)
        except OSError:
            failed += 1
    metrics(rep)["lstat_failed"] = failed


def fio_randread(big: int, runtime: str) -> Callable[[Rep], int]:
    """fio's 4 KiB random reads of the big file for `runtime`: IOPS from its JSON report."""

    def action(rep: Rep) -> int:
        cmd = [
            "fio",
            "--name=randread",
            f"--filename={mnt(rep) / mount_data.BIG_NAME}",
            "--readonly",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            "--invalidate=0",  # keep the page cache: reads of kernel overlayfs would go to disk
            "--randrepeat=1",
            "--norandommap",
            f"--size={big}",
            f"--runtime={runtime}",
            "--time_based",
            "--output-format=json",
        ]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CommandError(f"fio exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        read = json.loads(proc.stdout[proc.stdout.index("{") :])["jobs"][0]["read"]
        metrics(rep)["iops"] = round(float(read["iops"]), 1)
        return int(read["io_bytes"])

    return action


# -- writing ---------------------------------------------------------------------------------


def append_byte(files: list[str]) -> Callable[[Rep], None]:
    """Append one byte to each lower file: a copy-up per file, then a one-byte write."""

    def action(rep: Rep) -> None:
        root = str(mnt(rep))
        for rel in files:
            fd = os.open(os.path.join(root, rel), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"\n")
            finally:
                os.close(fd)

    return action


def write_one_byte(rep: Rep) -> None:
    """Open the big lower file for writing (kernel overlayfs copies it up here) and write
    one byte in its middle."""
    path = mnt(rep) / mount_data.BIG_NAME
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x", os.fstat(fd).st_size // 2)
    finally:
        os.close(fd)


def untar_into(tarball: Path) -> Callable[[Rep], None]:
    def action(rep: Rep) -> None:
        dest = mnt(rep) / "bench-untar"
        dest.mkdir()
        quiet(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(dest)])

    return action


def rm_untarred(rep: Rep) -> None:
    quiet(["rm", "-rf", str(mnt(rep) / "bench-untar")])


# -- running programs from the union ---------------------------------------------------------


def chroot(*argv: str) -> Callable[[Rep], None]:
    def action(rep: Rep) -> None:
        quiet(["chroot", str(mnt(rep)), *argv], env=CHROOT_ENV)

    return action


# -- the list --------------------------------------------------------------------------------


def cold(rep: Rep) -> None:
    drop_caches()


def warm(action: Callable[[Rep], object]) -> Callable[[Rep], None]:
    """Run the action once, untimed, so the timed run finds what it caches."""

    def before(rep: Rep) -> None:
        action(rep)

    return before


def _then(*steps: Callable[[Rep], object] | None) -> Callable[[Rep], None]:
    def before(rep: Rep) -> None:
        for step in steps:
            if step is not None:
                step(rep)

    return before


def read_lower(path: Path) -> Callable[[Rep], None]:
    """Warm the page cache of the big file's lower copy (not through the mount): the
    copy-up then reads the same cached bytes for every contender."""

    def before(rep: Rep) -> None:
        quiet(["cat", str(path)])

    return before


def workloads(stack: mount_data.Stack, inputs: Inputs, quick: bool) -> list[Workload]:
    big = stack.big_bytes
    label = mount_data.size_label(big)
    big_lower = next(
        d / mount_data.BIG_NAME for d in stack.lower_dirs if (d / mount_data.BIG_NAME).exists()
    )
    paths = with_full_paths(inputs.paths)
    untar = untar_into(inputs.untar)
    loop = f"for i in $(seq {CHROOT_LOOPS}); do /bin/true; done"
    out = [
        Workload("find (cold)", find, cold),
        Workload("find (warm)", find, warm(find)),
        Workload("ls -lR (warm)", ls, warm(ls)),
        Workload("lstat every path (cold)", lstat_all, _then(paths, cold)),
        Workload("lstat every path (warm)", lstat_all, _then(paths, lstat_all)),
        Workload(f"cat {label} (cold)", cat, cold, bytes=big),
        Workload(f"cat {label} (warm)", cat, warm(cat), bytes=big),
        Workload(
            "fio randread 4k (warm)",
            fio_randread(big, QUICK_FIO_RUNTIME if quick else FIO_RUNTIME),
            warm(cat),
            rate_metric="iops",
        ),
        Workload(
            f"append 1 byte to {len(inputs.append_files)} lower files",
            append_byte(inputs.append_files),
        ),
        Workload(f"copy-up: 1-byte write into {label} file", write_one_byte, read_lower(big_lower)),
        Workload(f"untar {inputs.untar_what}", untar, bytes=inputs.untar_bytes),
        Workload(f"rm -rf untarred {inputs.untar_what}", rm_untarred, untar),
        Workload(
            f"chroot {CHROOT_LOOPS}× /bin/true", chroot("/bin/sh", "-c", loop), chroot("/bin/true")
        ),
    ]
    if inputs.has_dpkg:
        dpkg = chroot("dpkg", "-l")
        out.append(Workload("chroot dpkg -l (warm)", dpkg, dpkg))
    return out
