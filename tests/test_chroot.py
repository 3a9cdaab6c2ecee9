"""Real programs in a chroot of the mount: a busybox shell edits its rootfs."""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

from mounts import overlay_mount, unpack_layer

SCRIPT = r"""
set -e
echo hello > /tmp/created
mkdir -p /srv/a/b/c
echo deep > /srv/a/b/c/file
sed -i 's/busybox/chrooted/' /etc/hostname
echo extra >> /etc/passwd
mv /etc/os-release /etc/os-release.old
mv /srv/a /srv/moved
rm /bin/vi
rmdir /home
ln -s /tmp/created /tmp/link
ln /tmp/created /tmp/hardlink
chmod 600 /tmp/created
touch -d '2001-02-03 04:05:06' /tmp/created
mkfifo /tmp/fifo
cat /tmp/link
ls /srv/moved/b/c
stat -c '%h %a %Y' /tmp/created
id -u
"""


def test_busybox_shell_edits_its_rootfs(tmp_path: Path, busybox_tar: bytes) -> None:
    layer = unpack_layer(busybox_tar, tmp_path / "layer")
    with overlay_mount([layer], tmp_path) as (mnt, upper):
        out = subprocess.run(
            ["chroot", str(mnt), "/bin/sh", "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/bin:/usr/sbin:/usr/bin:/sbin"},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["hello", "file", "2", "600", "981173106", "0"]
        # What the shell did is what anyone sees from outside the chroot ...
        assert (mnt / "etc/hostname").read_text() == "chrooted\n"
        assert (mnt / "etc/passwd").read_text().endswith("extra\n")
        assert not (mnt / "etc/os-release").exists()
        assert (mnt / "etc/os-release.old").read_text().startswith('NAME="imgfs busybox"')
        assert (mnt / "srv/moved/b/c/file").read_text() == "deep\n"
        assert not (mnt / "bin/vi").exists() and (mnt / "bin/sh").exists()
        assert not (mnt / "home").exists()
        assert os.readlink(mnt / "tmp/link") == "/tmp/created"
        st = os.stat(mnt / "tmp/created")
        assert st.st_ino == os.stat(mnt / "tmp/hardlink").st_ino and st.st_nlink == 2
        # ... and the lower layer never changed.
        assert (layer / "etc/hostname").read_text() == "busybox\n"
        assert (layer / "bin/vi").is_symlink() and (layer / "home").is_dir()
    # The upper dir holds exactly the changes, in overlayfs format.
    assert (upper / "etc/hostname").read_text() == "chrooted\n"
    wh = os.lstat(upper / "bin/vi")
    assert (wh.st_mode & 0o170000) == 0o020000 and wh.st_rdev == 0
    assert os.lstat(upper / "home").st_rdev == 0
    assert not (upper / "usr").exists()


def test_inode_numbers_are_stable_across_copy_up_and_remount(
    tmp_path: Path, busybox_tar: bytes
) -> None:
    layer = unpack_layer(busybox_tar, tmp_path / "layer")
    with overlay_mount([layer], tmp_path, "a") as (mnt, _):
        before = os.stat(mnt / "etc/passwd").st_ino
        with open(mnt / "etc/passwd", "a") as f:
            f.write("x\n")  # copy-up
        assert os.stat(mnt / "etc/passwd").st_ino == before
    with overlay_mount([layer], tmp_path, "b") as (mnt, _):
        assert os.stat(mnt / "etc/passwd").st_ino == before


def test_mmap_shared_and_private(tmp_path: Path, busybox_tar: bytes) -> None:
    layer = unpack_layer(busybox_tar, tmp_path / "layer")
    with overlay_mount([layer], tmp_path) as (mnt, upper):
        path = mnt / "etc/passwd"
        original = path.read_bytes()
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED) as m:
            m[0:4] = b"ROOT"
            m.flush()
        assert path.read_bytes() == b"ROOT" + original[4:]
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
            m[0:4] = b"priv"
            assert m[0:4] == b"priv"
            m.close()
        assert path.read_bytes()[:4] == b"ROOT"
        # A lower file mapped read-only (how the dynamic loader maps libraries).
        exe = os.open(mnt / "bin/busybox", os.O_RDONLY)
        with mmap.mmap(exe, 0, prot=mmap.PROT_READ) as m:
            assert m[:4] == b"\x7fELF"
        os.close(exe)
    assert (upper / "etc/passwd").read_bytes()[:4] == b"ROOT"
