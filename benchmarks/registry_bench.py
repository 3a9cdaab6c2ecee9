"""Workloads: push an image to a registry, and pull it back, against `skopeo copy`.

Every rep talks to a fresh Debian `docker-registry` (distribution) on 127.0.0.1 with
empty storage, so no contender can skip a blob the registry already has. Both push the
same blobs: the data set imported once by `imgfs import` (zstd layer), which skopeo
reads from the store's OCI layout. For pulls the registry is filled (untimed) before
each rep; skopeo copies the blobs into a fresh OCI layout, while `imgfs pull` also
verifies and unpacks the layer into a fresh store, so it does more work than skopeo.
MB/s counts the image's blob bytes (config and layers) over the wall time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.data import Dataset, cache_dir
from benchmarks.harness import Case, Contender, Rep, rmtree, run
from benchmarks.import_bench import TAR_EXTRACT, imgfs_command

SKOPEO = "skopeo copy"
REF = "docker.io/bench/registry:latest"
REMOTE = "bench/image:1"


def cases(data: Dataset, quick: bool) -> list[Case]:
    store = _imported(data)
    blob_bytes = _blob_bytes(store)
    note = (
        f"{data.name}: one zstd layer, {blob_bytes / 1e6:.1f} MB of blobs; a fresh "
        "docker-registry on 127.0.0.1 per rep; MB/s is blob bytes per wall second."
    )
    push = Case(
        benchmark="registry",
        workload=f"push {data.name}",
        baseline=SKOPEO,
        bytes=blob_bytes,
        notes=[note],
        contenders=[
            Contender(
                SKOPEO,
                lambda rep: _run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--dest-tls-verify=false",
                        f"oci:{store / 'oci'}:{REF}",
                        f"docker://{rep.state['host']}/{REMOTE}",
                    ]
                ),
                setup=_start_registry,
                teardown=_stop_registry,
                description="skopeo copy oci:STORE:REF docker://HOST/bench/image:1",
                requires=("skopeo", "docker-registry"),
            ),
            Contender(
                "imgfs push",
                lambda rep: _run(
                    [
                        *imgfs_command(),
                        "--root",
                        store,
                        "push",
                        "-q",
                        REF,
                        f"{rep.state['host']}/{REMOTE}",
                    ]
                ),
                setup=lambda rep: _start_registry(rep, forget=store),
                teardown=_stop_registry,
                description="imgfs push REF HOST/bench/image:1 (layer kept as zstd)",
                requires=("docker-registry",),
                ours=True,
            ),
        ],
    )
    pull = Case(
        benchmark="registry",
        workload=f"pull {data.name}",
        baseline=SKOPEO,
        bytes=blob_bytes,
        notes=[
            note,
            "imgfs pull also verifies the diff_id and unpacks the layer: compare it with "
            "skopeo copy + tar -x, which does the same work.",
        ],
        contenders=[
            Contender(
                SKOPEO,
                lambda rep: _run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        f"docker://{rep.state['host']}/{REMOTE}",
                        f"oci:{rep.workdir / 'oci'}:x",
                    ]
                ),
                setup=lambda rep: _filled_registry(rep, store),
                teardown=_stop_registry,
                description="skopeo copy docker://HOST/bench/image:1 oci:FRESH:x",
                requires=("skopeo", "docker-registry"),
            ),
            Contender(
                "skopeo copy + tar -x",
                _skopeo_and_unpack,
                setup=lambda rep: _filled_registry(rep, store),
                teardown=_stop_registry,
                description="skopeo copy docker://… dir:FRESH, then tar -x of each layer "
                "(the same work as a pull into a store: fetch and unpack)",
                requires=("skopeo", "docker-registry", "tar", "zstd"),
            ),
            Contender(
                "imgfs pull",
                lambda rep: _run(
                    [
                        *imgfs_command(),
                        "--root",
                        rep.workdir / "store",
                        "pull",
                        "-q",
                        f"{rep.state['host']}/{REMOTE}",
                    ]
                ),
                setup=lambda rep: _filled_registry(rep, store),
                teardown=_stop_registry,
                description="imgfs --root FRESH pull HOST/bench/image:1 (download, verify, unpack)",
                requires=("docker-registry",),
                ours=True,
            ),
        ],
    )
    return [push, pull]


def _skopeo_and_unpack(rep: Rep) -> None:
    blobs, rootfs = rep.workdir / "dir", rep.workdir / "rootfs"
    src = f"docker://{rep.state['host']}/{REMOTE}"
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", src, f"dir:{blobs}"])
    rootfs.mkdir()
    manifest = json.loads((blobs / "manifest.json").read_text())
    for layer in manifest["layers"]:
        blob = blobs / layer["digest"].removeprefix("sha256:")
        run([*TAR_EXTRACT, blob, "-C", rootfs])


def _run(cmd: list[str | Path]) -> None:
    """The timed command (its output is not the bytes it processed)."""
    run(cmd)


def _imported(data: Dataset) -> Path:
    """A store holding the data set as one image, made once per data set."""
    store = cache_dir() / "registry" / data.name / "store"
    done = store.parent / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("tarball_bytes") == data.bytes:
        return store
    rmtree(store.parent)
    store.parent.mkdir(parents=True)
    run([*imgfs_command(), "--root", store, "import", data.tarball, REF])
    done.write_text(json.dumps({"tarball_bytes": data.bytes}))
    return store


def _blob_bytes(store: Path) -> int:
    index = json.loads((store / "oci" / "index.json").read_text())
    [entry] = index["manifests"]
    blobs = store / "oci" / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_text())
    return int(manifest["config"]["size"]) + sum(int(la["size"]) for la in manifest["layers"])


def _start_registry(rep: Rep, forget: Path | None = None) -> None:
    """A docker-registry with empty storage in the rep's dir, on a free loopback port."""
    if forget is not None:  # no cross-repository mounts from earlier reps' pushes
        (forget / "registry-sources.json").unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = rep.workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {rep.workdir / 'registry'}}}}}\n"
        f'http: {{addr: "127.0.0.1:{port}"}}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rep.state["registry"] = proc
    rep.state["host"] = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
    _stop_registry(rep)
    raise RuntimeError("docker-registry did not start")


def _filled_registry(rep: Rep, store: Path) -> None:
    _start_registry(rep, forget=store)
    run([*imgfs_command(), "--root", store, "push", "-q", REF, f"{rep.state['host']}/{REMOTE}"])


def _stop_registry(rep: Rep) -> None:
    proc: subprocess.Popen[bytes] | None = rep.state.pop("registry", None)
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
