"""Workloads on a container's changes: `imgfs diff` and `imgfs commit` of 10,000 changes.

Every rep gets a fresh container of the image whose upper dir is a `cp -a` of the
template upper dir (`changes_data`: the change set applied once through `imgfs mount`),
so populating it is not timed; peers get the same copy in their rep's dir. Everything is
warm: the copy has just been written (and synced) and the image's layers were read
before, so these are CPU and syscall costs rather than disk reads.

`diff`: the floor is a walk of the upper dir that stats every entry (`find -printf`),
the least any upper-dir based diff has to do. The peers are what a user could run
without imgfs: compare the image's tree with the container's tree, both mounted
read-only with kernel overlayfs over the same layer dirs (+ the upper dir as the top
layer): `rsync -aiX --dry-run --delete` compares the two trees by stat fields and xattrs
(what docker's overlay2 "naive diff" does), `diff -rq --no-dereference` by content.

`commit`: the baseline is `tar -c` of the upper dir piped into `zstd -T0 -3`, the bytes
any commit has to read and compress (but not a valid layer: whiteouts stay devices, the
overlay xattrs go in as they are). `umoci repack` works on a bundle `umoci unpack` made of
the same image, with the same changes applied to its rootfs: it finds them by walking and
hashing the whole rootfs against the mtree manifest written at unpack, then writes a gzip
layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks import changes_data
from benchmarks.changes_data import COMMIT_REPO, UMOCI_TAG, Prepared, imgfs
from benchmarks.data import Dataset
from benchmarks.harness import Case, CommandError, Contender, Rep, run, slug
from benchmarks.import_bench import imgfs_command
from benchmarks.mounters import daemon_pid

DIFF_FLOOR = "find upper dir (floor)"
COMMIT_BASELINE = "tar -c + zstd -T0 -3"
NEEDS_ROOT = "needs root (whiteout devices, trusted xattrs, mount)"
UNMOUNT_TIMEOUT = 30.0
TAR_CREATE = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", "-"]
TAR_EXTRACT = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]
SAME_WORK = "tar -c + zstd + tar -x + sync (same work)"


# -- per-rep inputs --------------------------------------------------------------------


def _copy_upper(p: Prepared, rep: Rep) -> Path:
    upper = rep.workdir / "upper"
    run(["cp", "-a", "--", p.upper, upper])
    return upper


def _fresh_container(p: Prepared, rep: Rep) -> None:
    """`imgfs create`, then the template upper dir in place of the new, empty one."""
    cid = imgfs(p.store, "create", p.image).strip()
    rep.state["cid"] = cid
    [cdir] = (p.store / "containers").glob(cid + "*")
    os.rmdir(cdir / "upper")
    run(["cp", "-a", "--", p.upper, cdir / "upper"])
    rep.state["blobs0"] = _blobs(p.store / "oci")


def _remove_container(p: Prepared, rep: Rep) -> None:
    mnt = rep.state.pop("mounted", None)
    if mnt is not None:
        pid = rep.state.get("daemon")
        done = subprocess.run(
            [*imgfs_command(), "--root", str(p.store), "umount", str(mnt)], capture_output=True
        )
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if pid is not None:
            deadline = time.monotonic() + UNMOUNT_TIMEOUT
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.01)
    cid = rep.state.pop("cid", None)
    if cid is not None:
        imgfs(p.store, "rm", "-f", cid)
    ref = rep.state.pop("ref", None)
    if ref is not None:
        index = json.loads((p.store / "oci" / "index.json").read_text())
        names = {
            (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            for m in index["manifests"]
        }
        if f"docker.io/{ref}" in names:
            imgfs(p.store, "rmi", ref)  # and its layer: the next rep must not find it


def _mount_container(p: Prepared, rep: Rep) -> None:
    mnt = rep.workdir / "mnt"
    mnt.mkdir()
    imgfs(p.store, "mount", rep.state["cid"], mnt)
    rep.state["mounted"] = mnt
    rep.state["daemon"] = daemon_pid(mnt)


def _overlay_views(p: Prepared, rep: Rep) -> None:
    """The image's tree and the container's, read-only kernel overlayfs mounts of the same
    layer dirs (the container's with its upper dir as the top layer)."""
    upper = _copy_upper(p, rep)
    lower = [str(d) for d in p.lower_dirs]
    if len(lower) == 1:  # overlayfs without an upper dir needs two lower dirs
        (rep.workdir / "empty").mkdir()
        lower.append(str(rep.workdir / "empty"))
    views = {"image": lower, "container": [str(upper), *lower]}
    for name, dirs in views.items():
        mnt = rep.workdir / name
        mnt.mkdir()
        opts = f"ro,redirect_dir=follow,lowerdir={':'.join(dirs)}"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
        rep.state.setdefault("views", []).append(mnt)


def _unmount_views(rep: Rep) -> None:
    for mnt in rep.state.pop("views", []):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- timed actions -----------------------------------------------------------------------


def _count_lines(rep: Rep, cmd: list[str | Path], ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    if proc.returncode not in ok:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(
            f"{Path(str(cmd[0])).name} exited {proc.returncode}: " + " | ".join(tail)
        )
    rep.state["lines"] = proc.stdout.count(b"\n")


def _lines(rep: Rep) -> dict[str, float]:
    return {"lines_listed": rep.state["lines"]}


def _tar_zstd(rep: Rep) -> None:
    out = rep.workdir / "layer.tar.zst"
    tar = subprocess.Popen(
        [*TAR_CREATE, "-C", str(rep.workdir / "upper"), "."],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    zstd = subprocess.run(["zstd", "-q", "-T0", "-3", "-o", str(out)], stdin=tar.stdout)
    tar.stdout.close()
    if tar.wait() != 0 or zstd.returncode != 0:
        raise CommandError(f"tar exited {tar.returncode}, zstd exited {zstd.returncode}")


def _tar_zstd_untar(rep: Rep) -> None:
    """The same work as a commit with the stock tools: one `tar -c` of the upper dir, fed
    (by the harness, 1 MiB at a time) to `zstd -T0 -3` and to `tar -x` into a layer dir,
    then `sync -f` of that filesystem (syncfs, as imgfs does)."""
    layer = rep.workdir / "layer"
    layer.mkdir()
    tar = subprocess.Popen(
        [*TAR_CREATE, "-C", str(rep.workdir / "upper"), "."],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    zstd = subprocess.Popen(
        ["zstd", "-q", "-T0", "-3", "-o", str(rep.workdir / "layer.tar.zst")],
        stdin=subprocess.PIPE,
    )
    untar = subprocess.Popen([*TAR_EXTRACT, "-", "-C", str(layer)], stdin=subprocess.PIPE)
    assert tar.stdout is not None and zstd.stdin is not None and untar.stdin is not None
    try:
        while chunk := tar.stdout.read(1 << 20):
            zstd.stdin.write(chunk)
            untar.stdin.write(chunk)
    finally:
        for pipe in (tar.stdout, zstd.stdin, untar.stdin):
            pipe.close()
        codes = [p.wait() for p in (tar, zstd, untar)]
    if any(codes):
        raise CommandError(f"tar -c, zstd, tar -x exited {codes}")
    run(["sync", "-f", layer])


def _blobs(layout: Path) -> set[str]:
    d = layout / "blobs" / "sha256"
    return set(os.listdir(d)) if d.is_dir() else set()


def _layer_metrics(path: Path) -> dict[str, float]:
    """The compressed layer's size and its entry count (`tar -t`; GNU tar detects gzip/zstd)."""
    listing = run(["tar", "-tf", path])
    return {"layer_blob_bytes": path.stat().st_size, "layer_entries": listing.count("\n")}


def _new_layer(layout: Path, before: set[str]) -> dict[str, float]:
    """Metrics of the largest blob a commit added to `layout` (the layer; the others are a
    config and a manifest)."""
    d = layout / "blobs" / "sha256"
    new = [d / name for name in _blobs(layout) - before]
    if not new:
        raise CommandError("no new blob in the layout")
    return _layer_metrics(max(new, key=lambda f: f.stat().st_size))


# -- the cases ---------------------------------------------------------------------------


def _diff_contenders(p: Prepared) -> list[Contender]:
    def imgfs_diff(rep: Rep) -> None:
        _count_lines(rep, [*imgfs_command(), "--root", p.store, "diff", rep.state["cid"]])

    def mounted_setup(rep: Rep) -> None:
        _fresh_container(p, rep)
        _mount_container(p, rep)

    return [
        Contender(
            DIFF_FLOOR,
            lambda rep: _count_lines(
                rep, ["find", rep.workdir / "upper", "-printf", "%y %m %U %G %s %T@ %p\n"]
            ),
            setup=lambda rep: _copy_upper(p, rep) and None,
            description="find UPPER -printf '%y %m %U %G %s %T@ %p\\n': walks the upper dir"
            " and lstats every entry, compares nothing",
            requires=("find", "cp"),
            inspect=_lines,
        ),
        Contender(
            "imgfs diff",
            imgfs_diff,
            setup=lambda rep: _fresh_container(p, rep),
            teardown=lambda rep: _remove_container(p, rep),
            description="imgfs --root STORE diff CONTAINER (not mounted)",
            requires=("cp",),
            inspect=_lines,
            ours=True,
        ),
        Contender(
            "imgfs diff (mounted)",
            imgfs_diff,
            setup=mounted_setup,
            teardown=lambda rep: _remove_container(p, rep),
            description="the same while the container is mounted (imgfs mount, untimed):"
            " the mount is synced first",
            requires=("cp", "fusermount3"),
            inspect=_lines,
            ours=True,
        ),
        Contender(
            "rsync -aiX -n --delete (overlayfs views)",
            lambda rep: _count_lines(
                rep,
                [
                    *("rsync", "-aiX", "--dry-run", "--delete"),
                    f"{rep.workdir / 'container'}/",
                    f"{rep.workdir / 'image'}/",
                ],
            ),
            setup=lambda rep: _overlay_views(p, rep),
            teardown=_unmount_views,
            description="rsync -aiX --dry-run --delete CONTAINER_VIEW/ IMAGE_VIEW/: both trees"
            " walked and compared by type, size, mtime, mode, owner, xattrs (docker's"
            " overlay2 naive diff)",
            requires=("rsync", "mount", "cp"),
            inspect=_lines,
        ),
        Contender(
            "diff -rq (overlayfs views)",
            lambda rep: _count_lines(
                rep,
                [
                    *("diff", "-rq", "--no-dereference"),
                    rep.workdir / "image",
                    rep.workdir / "container",
                ],
                ok=(0, 1),
            ),
            setup=lambda rep: _overlay_views(p, rep),
            teardown=_unmount_views,
            description="diff -rq --no-dereference IMAGE_VIEW CONTAINER_VIEW: both trees walked,"
            " every file present in both read and compared",
            requires=("diff", "mount", "cp"),
            inspect=_lines,
        ),
    ]


def _commit_contenders(p: Prepared) -> list[Contender]:
    def imgfs_commit(extra: list[str], name: str) -> Contender:
        def action(rep: Rep) -> None:
            rep.state["ref"] = f"{COMMIT_REPO}:{slug(name)}-{rep.index + 1}"
            imgfs(p.store, "commit", *extra, rep.state["cid"], rep.state["ref"])

        return Contender(
            name,
            action,
            setup=lambda rep: _fresh_container(p, rep),
            teardown=lambda rep: _remove_container(p, rep),
            inspect=lambda rep: _new_layer(p.store / "oci", rep.state["blobs0"]),
            description=f"imgfs --root STORE commit {' '.join(extra)} CONTAINER REF".replace(
                "  ", " "
            ),
            requires=("cp",),
            ours=True,
        )

    def umoci_setup(rep: Rep) -> None:
        assert p.umoci_layout is not None and p.umoci_bundle is not None
        run(["cp", "-a", "--", p.umoci_layout, rep.workdir / "layout"])
        run(["cp", "-a", "--", p.umoci_bundle, rep.workdir / "bundle"])
        rep.state["blobs0"] = _blobs(rep.workdir / "layout")

    def umoci_repack(rep: Rep) -> None:
        layout, bundle = rep.workdir / "layout", rep.workdir / "bundle"
        run(["umoci", "repack", "--image", f"{layout}:{UMOCI_TAG}", bundle])

    return [
        Contender(
            COMMIT_BASELINE,
            _tar_zstd,
            setup=lambda rep: _copy_upper(p, rep) and None,
            inspect=lambda rep: _layer_metrics(rep.workdir / "layer.tar.zst"),
            description="tar --numeric-owner --xattrs --xattrs-include='*' -C UPPER -cf - ."
            " | zstd -T0 -3: the upper dir as it is on disk, not a valid layer",
            requires=("tar", "zstd", "cp"),
        ),
        Contender(
            SAME_WORK,
            _tar_zstd_untar,
            setup=lambda rep: _copy_upper(p, rep) and None,
            inspect=lambda rep: _layer_metrics(rep.workdir / "layer.tar.zst"),
            description="tar -c of the upper dir, fed to zstd -T0 -3 and to tar -x into a"
            " layer dir, then sync -f: what imgfs commit does (blob + unpacked layer, synced)"
            " with the stock tools",
            requires=("tar", "zstd", "cp", "sync"),
        ),
        imgfs_commit([], "imgfs commit"),
        imgfs_commit(["--compression", "gzip"], "imgfs commit --compression gzip"),
        Contender(
            "umoci repack",
            umoci_repack,
            setup=umoci_setup,
            inspect=lambda rep: _new_layer(rep.workdir / "layout", rep.state["blobs0"]),
            description="umoci repack --image LAYOUT:base BUNDLE, the bundle made by umoci"
            " unpack of the same image with the same changes applied to its rootfs",
            requires=("umoci", "cp"),
            skip=None if p.umoci_bundle is not None else "not installed: umoci",
        ),
    ]


def cases(data: Dataset, quick: bool) -> list[Case]:
    if os.geteuid() != 0:
        names = {
            "diff": [DIFF_FLOOR, "imgfs diff", "imgfs diff (mounted)"],
            "commit": [COMMIT_BASELINE, "imgfs commit", "umoci repack"],
        }
        return [
            Case(
                "changes",
                workload,
                [Contender(n, lambda rep: None, skip=NEEDS_ROOT) for n in contenders],
                contenders[0],
            )
            for workload, contenders in names.items()
        ]
    p = changes_data.prepare(data, quick)
    common = [
        f"{data.name}: {data.description}; image imported with --compression gzip (so umoci"
        " can unpack it)",
        p.summary(),
        "Every rep: a fresh container (imgfs create) whose upper dir is a cp -a of the"
        " populated one, or the same copy in the rep's dir for the peers (untimed). Warm:"
        " the copy was just written, the layers were read before.",
    ]
    diff_notes = [
        *common,
        "diff: lines_listed = lines of output (imgfs diff: A/C/D lines; find: upper entries;"
        " rsync: itemized changes; diff -rq: 'Only in' / 'differ' lines, a directory only on"
        " one side being one line). The peers compare two read-only kernel overlayfs mounts"
        " (the image's layers; the upper dir on top of them), mounted untimed.",
    ]
    commit_notes = [
        "commit: MB/s = upper-dir file data (the same for every contender) per wall second;"
        " layer_blob_bytes = the compressed layer, layer_entries = its tar entries.",
        "imgfs commit also unpacks the new layer into the store and syncs it (syncfs), like"
        " import; the baseline and umoci leave their output in the page cache.",
        "umoci repack (0.4, gzip only) finds the changes by walking and hashing the whole"
        " bundle rootfs against its mtree manifest, then writes a gzip layer; compare it"
        " with imgfs commit --compression gzip (single-threaded gzip -6; umoci's is"
        " parallel).",
    ]
    return [
        Case("changes", "diff", _diff_contenders(p), DIFF_FLOOR, notes=diff_notes),
        Case(
            "changes",
            "commit",
            _commit_contenders(p),
            COMMIT_BASELINE,
            bytes=p.upper_bytes,
            notes=commit_notes,
        ),
    ]
