"""Image commands: import, images, tag, rmi, inspect, history."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, BinaryIO

from unionfs import reference
from unionfs.cli.output import print_json, print_json_lines, print_table
from unionfs.errors import ImgfsError, NotFound
from unionfs.layers.compression import Compression
from unionfs.progress import Progress, ProgressReader
from unionfs.store.images import Image, ImageStore, display_ref, parse_time
from unionfs.store.importing import import_image
from unionfs.units import human_size, time_ago


def add_layer_args(p: argparse.ArgumentParser) -> None:
    """Options of the commands that make a layer and an image (import, commit)."""
    p.add_argument("-m", "--message", default="", help="commit message for the history")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="Dockerfile instruction, e.g. 'CMD [\"sh\"]'",
    )
    p.add_argument(
        "--compression",
        choices=["zstd", "gzip"],
        default="zstd",
        help="layer blob compression (gzip for tools without zstd support, e.g. umoci 0.4)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="create an image from a rootfs tarball (tar, tar.gz, tar.zst)"
    )
    p.add_argument("file", metavar="FILE|-", help="tarball to import, or - for standard input")
    p.add_argument("ref", metavar="REPOSITORY[:TAG]", nargs="?")
    add_layer_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("images", help="list images")
    p.add_argument("filter", metavar="REPOSITORY[:TAG]", nargs="?")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate IDs")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("tag", help="give an image another name")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="untag and remove images")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="remove even if tagged in several repositories or used",
    )
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("inspect", help="show an image's details as JSON")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("history", help="show the history of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_history)


def open_store(args: argparse.Namespace) -> ImageStore:
    return ImageStore(args.root)


def cmd_import(args: argparse.Namespace) -> int:
    ref = reference.parse(args.ref) if args.ref else None
    store = open_store(args)
    source, total, name = _open_source(args.file)
    progress = Progress("Importing", total)
    try:
        image = import_image(
            store,
            ProgressReader(source, progress),
            ref=ref,
            source_name=name,
            message=args.message,
            changes=args.change,
            compression=Compression[args.compression.upper()],
        )
    finally:
        progress.finish()
        if source is not sys.stdin.buffer:
            source.close()
    print(image.id)
    return 0


def _open_source(file: str) -> tuple[BinaryIO, int | None, str]:
    if file == "-":
        return sys.stdin.buffer, None, "-"
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise ImgfsError(f"cannot open {file}: {e.strerror}") from None
    st = os.fstat(f.fileno())
    return f, (st.st_size if stat.S_ISREG(st.st_mode) else None), os.path.basename(file)


def _rows(store: ImageStore, flt: str | None) -> list[tuple[Image, str, str]]:
    want_repo = want_tag = None
    if flt:
        ref = reference.parse(flt)
        want_repo = ref.name
        want_tag = ref.tag if ":" in flt.rsplit("/", 1)[-1] else None
    rows = []
    for image in store.images():
        refs = _shown_refs(image.refs) or ([] if flt else [""])
        for r in refs:
            if r and flt:
                parsed = reference.parse(r) if _parses(r) else None
                if parsed is None or parsed.name != want_repo:
                    continue
                if want_tag is not None and parsed.tag != want_tag:
                    continue
            repo, tag = display_ref(r) if r else ("<none>", "<none>")
            rows.append((image, repo, tag))
    return rows


def _shown_refs(refs: list[str]) -> list[str]:
    """A `name@digest` a pull by digest recorded is a row only if `name` has no tag row."""
    tagged = {r.rpartition(":")[0] for r in refs if "@" not in r}
    return [r for r in refs if "@" not in r or r.partition("@")[0] not in tagged]


def _parses(name: str) -> bool:
    try:
        reference.parse(name)
    except ImgfsError:
        return False
    return True


def cmd_images(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = _rows(store, args.filter)
    if args.quiet:
        seen: list[str] = []
        for image, _, _ in rows:
            ident = image.id if args.no_trunc else image.short_id
            if ident not in seen:
                seen.append(ident)
        sys.stdout.write("".join(f"{i}\n" for i in seen))
        return 0
    if args.format == "json":
        print_json_lines(
            [
                {
                    "Repository": repo,
                    "Tag": tag,
                    "ID": image.id if args.no_trunc else image.short_id,
                    "Digest": image.manifest_digest,
                    "CreatedAt": image.config.get("created", ""),
                    "CreatedSince": time_ago(image.created),
                    "Size": human_size(store.image_size(image)),
                }
                for image, repo, tag in rows
            ]
        )
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else [])
    headers += ["IMAGE ID", "CREATED", "SIZE"]
    table = []
    for image, repo, tag in rows:
        row = [repo, tag] + ([image.manifest_digest] if args.digests else [])
        row += [
            image.id if args.no_trunc else image.short_id,
            time_ago(image.created),
            human_size(store.image_size(image)),
        ]
        table.append(row)
    print_table(headers, table)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    target = reference.parse(args.target)
    if target.digest is not None:
        raise ImgfsError(f"cannot tag with a digest reference: {args.target}")
    store = open_store(args)
    store.tag(store.find(args.source), target)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    store = open_store(args)
    failed = 0
    for name in args.images:
        try:
            for line in store.untag_or_delete(name, args.force):
                print(line)
        except ImgfsError as e:
            sys.stderr.write(f"imgfs: {e}\n")
            failed += 1
    store.collect_garbage()  # once, not per name: it scans every blob and layer
    return 1 if failed else 0


def inspect_doc(store: ImageStore, image: Image) -> dict[str, Any]:
    cfg = image.config
    repo_tags, repo_digests = [], []
    for r in image.refs:
        repo, tag = display_ref(r)
        repo_tags.append(f"{repo}:{tag}")
        repo_digests.append(f"{repo}@{image.manifest_digest}")
    return {
        "Id": image.id,
        "RepoTags": repo_tags,
        "RepoDigests": sorted(set(repo_digests)),
        "Created": cfg.get("created", ""),
        "Author": cfg.get("author", ""),
        "Comment": next((h.get("comment", "") for h in reversed(cfg.get("history") or [])), ""),
        "Config": cfg.get("config") or {},
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", ""),
        "Os": cfg.get("os", ""),
        "Size": store.image_size(image),
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Manifest": {
            "Digest": image.manifest_digest,
            "MediaType": image.manifest.get("mediaType", ""),
            "Layers": image.layers,
        },
        "History": cfg.get("history") or [],
        # As docker's GraphDriver: lower dirs top layer first, ready for `mount -t overlay`.
        "GraphDriver": {
            "Name": "imgfs",
            "Data": {
                "LowerDir": ":".join(str(store.layers.path(d)) for d in reversed(image.diff_ids))
            },
        },
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    store = open_store(args)
    docs, missing = [], []
    for name in args.images:
        try:
            docs.append(inspect_doc(store, store.find(name)))
        except NotFound:
            missing.append(name)
    print_json(docs)
    if missing:
        raise NotFound("no such image: " + ", ".join(missing))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    store = open_store(args)
    image = store.find(args.image)
    layers = list(zip(image.diff_ids, image.layers, strict=False))
    rows: list[dict[str, Any]] = []
    for h in image.config.get("history") or []:
        size = 0
        if not h.get("empty_layer") and layers:
            diff_id, layer = layers.pop(0)
            known = store.layer_size(diff_id)
            size = known if known is not None else int(layer.get("size") or 0)
        rows.append(
            {
                "ID": "<missing>",
                "CreatedAt": h.get("created", ""),
                "CreatedSince": time_ago(parse_time(h.get("created"))),
                "CreatedBy": h.get("created_by", ""),
                "Size": human_size(size),
                "Comment": h.get("comment", ""),
            }
        )
    rows.reverse()
    if rows:
        rows[0]["ID"] = image.id if args.no_trunc else image.short_id
    if args.quiet:
        sys.stdout.write("".join(f"{r['ID']}\n" for r in rows))
    elif args.format == "json":
        print_json_lines(rows)
    else:
        created_by = [r["CreatedBy"] if args.no_trunc else _trunc(r["CreatedBy"], 45) for r in rows]
        print_table(
            ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
            [
                [r["ID"], r["CreatedSince"], cb, r["Size"], r["Comment"]]
                for r, cb in zip(rows, created_by, strict=True)
            ],
        )
    return 0


def _trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
