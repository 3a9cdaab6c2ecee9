"""Containers: an image plus a writable upper dir, recorded in the store.

`ROOT/containers/<id>/` holds `config.json` (id, name, image_id, image, created,
diff_ids), `upper/` and `work/` (kernel overlayfs format: the upper dir starts empty),
and `mount.json` while a daemon serves the container (see `unionfs.fs.lifecycle`).
Records are created complete under `tmp/` and renamed into place under the store's
index lock, so readers never see half a container.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from unionfs.errors import Conflict, ImgfsError, NotFound
from unionfs.fs import lifecycle
from unionfs.fs.lifecycle import MountRecord, MountState
from unionfs.fs.spec import MountSpec
from unionfs.store.atomic import fsync_dir, temp_name, write_atomic
from unionfs.store.images import Image, ImageStore, parse_time, utc_now
from unionfs.store.lock import flocked

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
ID_RE = re.compile(r"[0-9a-f]{64}")
EMPTY_INDEX = "empty"
"""Index name of the layerless (scratch) stack; see `lower_dirs_for`."""


@dataclass
class Container:
    id: str
    name: str
    image_id: str
    image: str
    created: str
    diff_ids: list[str]
    dir: Path

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def state_file(self) -> Path:
        """`mount.json` while a daemon serves this container."""
        return self.dir / "mount.json"

    @property
    def fsname(self) -> str:
        return f"imgfs:{self.short_id}"

    def mount_record(self) -> MountRecord | None:
        return MountRecord.load(self.state_file)

    def mount_state(self) -> MountState:
        return lifecycle.mount_state(state_file=self.state_file)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image_id": self.image_id,
            "image": self.image,
            "created": self.created,
            "diff_ids": self.diff_ids,
        }

    @classmethod
    def load(cls, directory: Path) -> Container:
        try:
            doc = json.loads((directory / "config.json").read_bytes())
            return cls(
                id=str(doc["id"]),
                name=str(doc["name"]),
                image_id=str(doc.get("image_id", "")),
                image=str(doc.get("image", "")),
                created=str(doc.get("created", "")),
                diff_ids=[str(d) for d in doc.get("diff_ids") or []],
                dir=directory,
            )
        except FileNotFoundError:
            raise NotFound(f"no such container: {directory.name}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ImgfsError(f"container record {directory} is corrupt: {e}") from None

    @property
    def created_at(self) -> datetime | None:
        return parse_time(self.created)


# -- layers and indexes, shared by container and image mounts --------------------------


def indexes_dir(store: ImageStore) -> Path:
    return store.paths.indexes


def lower_dirs_for(store: ImageStore, diff_ids: list[str]) -> list[Path]:
    """Lower dirs of a stack, top layer first. The layerless stack (scratch) gets one
    empty dir of the store, because a merged index needs at least one layer."""
    if not diff_ids:
        empty = indexes_dir(store) / f"{EMPTY_INDEX}.root"
        if not empty.is_dir():
            empty.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(empty, 0o755)
            os.chmod(empty, 0o755)
        return [empty]
    return [store.layers.path(d) for d in reversed(diff_ids)]


def index_path_for(store: ImageStore, diff_ids: list[str]) -> Path:
    from unionfs.index import chain_id

    name = chain_id(diff_ids).removeprefix("sha256:") if diff_ids else EMPTY_INDEX
    return indexes_dir(store) / name


def prepare_image(store: ImageStore, image: Image) -> tuple[list[Path], Path]:
    """Every layer unpacked and the merged index built: (lower dirs, index path)."""
    if len(image.layers) != len(image.diff_ids):
        raise ImgfsError(
            f"image {image.short_id} is inconsistent: {len(image.layers)} layers in its "
            f"manifest, {len(image.diff_ids)} diff_ids in its config"
        )
    for diff_id, layer in zip(image.diff_ids, image.layers, strict=True):
        store.layers.ensure_unpacked(diff_id, layer)
    lower = lower_dirs_for(store, image.diff_ids)
    return lower, ensure_index(store, image.diff_ids, lower)


def ensure_index(store: ImageStore, diff_ids: list[str], lower: list[Path]) -> Path:
    """The persisted merged index of a stack, built now if missing or unusable.
    (build_index writes a temp file and renames it, so concurrent builders are harmless.)"""
    from unionfs.index import MergedIndex

    path = index_path_for(store, diff_ids)
    try:
        MergedIndex.open(path, lower).close()
    except (FileNotFoundError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        MergedIndex.build(lower, path).close()
    return path


def image_mount_spec(
    store: ImageStore, image: Image, mountpoint: Path, options: list[str] | None = None
) -> MountSpec:
    """A read-only mount of an image, without any container."""
    lower, index = prepare_image(store, image)
    return MountSpec(
        lower_dirs=lower,
        mountpoint=mountpoint,
        index_path=index,
        options=list(options or []),
        fsname=f"imgfs:image:{image.short_id or 'scratch'}",
    )


def image_state_file(store: ImageStore, mountpoint: Path) -> Path:
    """State of a read-only image mount: ROOT/mounts/<sha256 of the mountpoint>.json."""
    import hashlib

    key = hashlib.sha256(str(lifecycle.normalize(mountpoint)).encode()).hexdigest()[:32]
    return store.paths.root / "mounts" / f"{key}.json"


# -- the container store ------------------------------------------------------------


class Containers:
    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.paths = store.paths

    def _dir(self, container_id: str) -> Path:
        return self.paths.containers / container_id

    # -- reading ----------------------------------------------------------------

    def list(self) -> builtins.list[Container]:
        """Every container, newest first."""
        found = []
        if self.paths.containers.is_dir():
            for d in self.paths.containers.iterdir():
                if not ID_RE.fullmatch(d.name):
                    continue
                with contextlib.suppress(NotFound, ImgfsError):
                    found.append(Container.load(d))
        found.sort(key=lambda c: (c.created, c.id), reverse=True)
        return found

    def find(self, key: str) -> Container:
        """By full ID, name, or unique ID prefix (docker's order)."""
        containers = self.list()
        for c in containers:
            if c.id == key:
                return c
        for c in containers:
            if c.name == key:
                return c
        if key and re.fullmatch(r"[0-9a-f]+", key):
            matches = [c for c in containers if c.id.startswith(key)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Conflict(f"ambiguous container ID prefix {key!r}: matches {len(matches)}")
        raise NotFound(f"no such container: {key}")

    # -- writing ----------------------------------------------------------------

    def create(self, image_name: str, name: str | None = None) -> Container:
        if name is not None and not NAME_RE.fullmatch(name):
            raise ImgfsError(
                f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are "
                "allowed, at least two characters"
            )
        self.store.layout.ensure()
        # The shared gc lock keeps rmi's garbage collection away from this image's
        # layers until the record that uses them exists.
        with flocked(self.paths.locks / "gc", shared=True):
            image = self.store.find(image_name)
            prepare_image(self.store, image)
            container_id = secrets.token_hex(32)
            tmp = self._stage(container_id, image, image_name)
            try:
                with flocked(self.paths.locks / "index"):
                    taken = {c.name for c in self.list()}
                    if name is None:
                        name = _random_name(taken)
                    elif name in taken:
                        owner = next(c for c in self.list() if c.name == name)
                        raise Conflict(
                            f'the container name "{name}" is already in use by container '
                            f"{owner.short_id}; remove it or choose another name"
                        )
                    _write_record(tmp, container_id, name, image, image_name)
                    self.paths.containers.mkdir(parents=True, exist_ok=True)
                    os.rename(tmp, self._dir(container_id))
                    fsync_dir(self.paths.containers)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return Container.load(self._dir(container_id))

    def _stage(self, container_id: str, image: Image, image_name: str) -> Path:
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.paths.tmp, "container-")
        os.mkdir(tmp, 0o700)
        try:
            for sub in ("upper", "work"):
                os.mkdir(tmp / sub, 0o755)
                os.chmod(tmp / sub, 0o755)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def remove(self, container: Container, *, force: bool = False) -> None:
        """Delete a container; a mounted one only with `force` (it is unmounted first).
        A stale mount (daemon gone) is cleaned up either way."""
        with self.locked(container):
            record = container.mount_record()
            state = container.mount_state()
            if state is MountState.MOUNTED:
                assert record is not None
                if not force:
                    raise Conflict(
                        f"container {container.name} is mounted at {record.mountpoint}; "
                        "unmount it first (imgfs umount) or use -f"
                    )
                lifecycle.umount(record.mountpoint, state_file=container.state_file)
            else:
                lifecycle.clear_state(container.state_file)
            with flocked(self.paths.locks / "index"):
                self.paths.tmp.mkdir(parents=True, exist_ok=True)
                doomed = temp_name(self.paths.tmp, "rm-")
                os.rename(container.dir, doomed)
                fsync_dir(self.paths.containers)
        shutil.rmtree(doomed, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, container: Container) -> Iterator[None]:
        """An exclusive flock on the container's dir: one mount/unmount/rm at a time."""
        fd = _lock_dir(container.dir)
        try:
            yield
        finally:
            os.close(fd)

    # -- mounting ---------------------------------------------------------------

    def mount_spec(
        self, container: Container, mountpoint: Path, options: builtins.list[str] | None = None
    ) -> MountSpec:
        lower = lower_dirs_for(self.store, container.diff_ids)
        for d in lower:
            if not d.is_dir():
                raise ImgfsError(
                    f"container {container.name}: layer dir {d} is missing "
                    "(was its image removed with rmi -f while it was being created?)"
                )
        return MountSpec(
            lower_dirs=lower,
            mountpoint=mountpoint,
            upper_dir=container.upper,
            work_dir=container.work,
            index_path=ensure_index(self.store, container.diff_ids, lower),
            options=list(options or []),
            fsname=container.fsname,
            control=True,  # commit pauses writes through it
        )

    def mount(
        self,
        container: Container,
        mountpoint: Path,
        *,
        options: builtins.list[str] | None = None,
        foreground: bool = False,
        debug: bool = False,
    ) -> int:
        """Mount read-write (read-only with option `ro`); one daemon per container."""
        fd = _lock_dir(container.dir)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                os.close(fd)

        try:
            spec = self.mount_spec(container, mountpoint, options)
            spec.debug = debug
            return lifecycle.mount(
                spec,
                foreground=foreground,
                state_file=container.state_file,
                what=f"container {container.name}",
                extra={"container": container.id},
                on_ready=release,
            )
        finally:
            release()


def create(store: ImageStore, image_name: str, name: str | None = None) -> Container:
    return Containers(store).create(image_name, name)


def _lock_dir(directory: Path) -> int:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no such container: {directory.name}") from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # Removed (renamed away) while we waited: the container is gone.
        if not os.path.samestat(os.fstat(fd), os.stat(directory)):
            raise FileNotFoundError
    except FileNotFoundError:
        os.close(fd)
        raise NotFound(f"no such container: {directory.name}") from None
    return fd


def _write_record(tmp: Path, container_id: str, name: str, image: Image, image_name: str) -> None:
    doc = {
        "id": container_id,
        "name": name,
        "image_id": image.id,
        "image": image_name,
        "created": utc_now(),
        "diff_ids": image.diff_ids,
    }
    write_atomic(tmp / "config.json", json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)
    os.chmod(tmp, 0o755)


# Docker's names-generator style: adjective_surname of a scientist or engineer.
_ADJECTIVES_TEXT = """admiring adoring affectionate agitated amazing angry awesome beautiful
blissful
bold boring brave busy charming clever compassionate competent condescending confident cool
cranky crazy dazzling determined distracted dreamy eager ecstatic elastic elated elegant
eloquent epic exciting fervent festive flamboyant focused friendly frosty funny gallant gifted
goofy gracious great happy hardcore heuristic hopeful hungry infallible inspiring intelligent
interesting jolly jovial keen kind laughing loving lucid magical modest musing mystifying
naughty nervous nice nifty nostalgic objective optimistic peaceful pedantic pensive practical
priceless quirky quizzical recursing relaxed reverent romantic sad serene sharp silly sleepy
stoic strange stupefied suspicious sweet tender thirsty trusting unruffled upbeat vibrant
vigilant vigorous wizardly wonderful xenodochial youthful zealous zen"""
_NAMES_TEXT = """agnesi albattani allen almeida archimedes ardinghelli aryabhata austin babbage
banach bardeen bartik bassi beaver bell benz bhabha bhaskara blackwell bohr booth borg bose
boyd brahmagupta brattain brown buck burnell cannon carson cartwright carver cerf chandrasekhar
chaplygin chatelet chatterjee chaum chebyshev clarke cohen colden cori cray curie darwin
davinci dewdney dhawan diffie dijkstra dirac driscoll dubinsky easley edison einstein elbakyan
elgamal elion ellis engelbart euclid euler faraday feistel fermat fermi feynman franklin
gagarin galileo galois ganguly gates gauss germain goldberg goldstine goldwasser golick
goodall gould greider grothendieck haibt hamilton haslett hawking heisenberg hellman hermann
herschel hertz heyrovsky hodgkin hofstadter hoover hopper hugle hypatia jackson jang jemison
jennings jepsen johnson joliot jones kalam kapitsa kare keldysh keller kepler khayyam khorana
kilby kirch knuth kowalevski lalande lamarr lamport leakey leavitt lederberg lehmann lewin
lichterman liskov lovelace lumiere mahavira margulis matsumoto maxwell mayer mccarthy
mcclintock mclaren mclean mcnulty meitner mendel mendeleev meninsky merkle mestorf mirzakhani
montalcini moore morse moser murdock napier nash neumann newton nightingale nobel noether
northcutt noyce panini pare pascal pasteur payne perlman pike poincare poitras proskuriakova
ptolemy raman ramanujan rhodes ride ritchie robinson roentgen rosalind rubin saha sammet
sanderson satoshi shamir shannon shaw shirley shockley shtern sinoussi snyder solomon
spence stonebraker sutherland swanson swartz swirles taussig tesla tharp thompson torvalds tu
turing varahamihira vaughan villani visvesvaraya volhard wescoff wilbur wiles williams
williamson wilson wing wozniak wright wu yalow yonath zhukovsky"""
_ADJECTIVES = _ADJECTIVES_TEXT.split()
_NAMES = _NAMES_TEXT.split()


def _random_name(taken: set[str]) -> str:
    for attempt in range(1000):
        adjective, surname = secrets.choice(_ADJECTIVES), secrets.choice(_NAMES)
        if adjective == "boring" and surname == "wozniak":
            continue  # Steve Wozniak is not boring (as docker says)
        name = f"{adjective}_{surname}"
        if attempt >= 10:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    raise ImgfsError("could not find a free container name; give one with --name")
