"""Registry commands: pull, push, login, logout, search.

The HTTP client (httpx, trio) is imported by the commands that use it, not when the
parser is built, so other imgfs commands do not pay for it."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unionfs import reference
from unionfs.cli.images import open_store
from unionfs.cli.output import print_json, print_table
from unionfs.errors import BadInput, ImgfsError, Unauthorized

if TYPE_CHECKING:
    from unionfs.progress import LineProgress
    from unionfs.registry.connect import RegistryOptions


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-verify",
        type=_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="require HTTPS and verify certificates (default: true, except loopback "
        "registries and registries marked insecure in registries.conf)",
    )
    p.add_argument(
        "--cert-dir", type=Path, help="dir with the registry's CA (*.crt) and client certs"
    )
    p.add_argument("--authfile", type=Path, help="credentials file (default: see imgfs login)")


def _add_creds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--creds", metavar="USER[:PASSWORD]", help="credentials for this command only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, print only the result")


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="download an image from a registry")
    p.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="default: this machine's")
    _add_connection_args(p)
    _add_creds_arg(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="upload an image to a registry")
    p.add_argument("source", metavar="IMAGE")
    p.add_argument("dest", metavar="NAME[:TAG]", nargs="?", help="default: IMAGE's own name")
    p.add_argument(
        "--compression",
        choices=["keep", "gzip"],
        default="keep",
        help="keep layer blobs as stored (zstd), or recompress zstd layers to gzip",
    )
    _add_connection_args(p)
    _add_creds_arg(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("login", help="log in to a registry (credentials kept in auth.json)")
    p.add_argument("host", metavar="REGISTRY")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="(visible to other users; prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _add_connection_args(p)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="forget the credentials of a registry")
    p.add_argument("host", metavar="REGISTRY")
    p.add_argument("--authfile", type=Path, help="credentials file")
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser("search", help="find repositories in a registry")
    p.add_argument("term", metavar="[REGISTRY/]TERM")
    p.add_argument("--registry", metavar="HOST", help="registry to search (default: docker.io)")
    p.add_argument("--limit", type=int, default=25, help="at most this many repositories")
    p.add_argument("--format", choices=["table", "json"], default="table")
    _add_connection_args(p)
    p.set_defaults(func=cmd_search)


def _options(args: argparse.Namespace) -> RegistryOptions:
    from unionfs.registry.auth import Credentials
    from unionfs.registry.connect import RegistryOptions
    from unionfs.registry.hosts import TlsOptions

    creds = None
    if getattr(args, "creds", None):
        user, sep, password = args.creds.partition(":")
        if not sep:
            password = getpass.getpass(f"Password for {user}: ")
        creds = Credentials(user, password)
    tls = TlsOptions(verify=args.tls_verify, cert_dir=args.cert_dir)
    return RegistryOptions(tls=tls, authfile=args.authfile, credentials=creds)


def _progress(args: argparse.Namespace) -> LineProgress:
    from unionfs.progress import LineProgress

    progress = LineProgress()
    progress.enabled = progress.enabled and not args.quiet
    return progress


def cmd_pull(args: argparse.Namespace) -> int:
    import trio

    from unionfs.registry.manifests import parse_platform
    from unionfs.registry.pull import pull

    ref = reference.parse(args.ref)
    platform = parse_platform(args.platform) if args.platform else None
    store = open_store(args)
    options = _options(args)
    if not args.quiet:
        what = ref.tag if ref.digest is None else ref.digest
        sys.stdout.write(f"{what}: Pulling from {ref.familiar_name}\n")
        sys.stdout.flush()
    result = trio.run(
        lambda: pull(store, ref, platform=platform, options=options, progress=_progress(args))
    )
    if args.quiet:
        sys.stdout.write(f"{ref}\n")
        return 0
    status = "Image is up to date for" if result.up_to_date else "Downloaded newer image for"
    sys.stdout.write(f"Digest: {result.digest}\nStatus: {status} {ref.familiar()}\n{ref}\n")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    import trio

    from unionfs.layers.compression import Compression
    from unionfs.registry.push import push

    store = open_store(args)
    image = store.find(args.source)
    dest = reference.parse(args.dest or args.source)
    compression = Compression.GZIP if args.compression == "gzip" else None
    options = _options(args)
    if not args.quiet:
        sys.stdout.write(f"The push refers to repository [{dest.name}]\n")
        sys.stdout.flush()
    result = trio.run(
        lambda: push(
            store, image, dest, options=options, compression=compression, progress=_progress(args)
        )
    )
    if args.quiet:
        sys.stdout.write(f"{result.digest}\n")
    else:
        sys.stdout.write(f"{dest.tag}: digest: {result.digest} size: {result.size}\n")
    return 0


def _registry_domain(host: str) -> str:
    """`docker.io`, `index.docker.io` and Hub URLs name Docker Hub; else the host itself."""
    host = host.removeprefix("https://").removeprefix("http://").rstrip("/")
    if host.endswith("/v1"):
        host = host[: -len("/v1")]
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return reference.DEFAULT_DOMAIN
    if "/" in host or not host:
        raise BadInput(f"invalid registry {host!r}: expected HOST[:PORT]")
    return host


def cmd_login(args: argparse.Namespace) -> int:
    import trio

    from unionfs.registry.auth import Credentials, store_credentials
    from unionfs.registry.connect import RegistryOptions, client_for_domain
    from unionfs.registry.hosts import TlsOptions

    domain = _registry_domain(args.host)
    username = args.username
    if username is None:
        if not sys.stdin.isatty():
            raise BadInput("no username: pass -u USER (and --password-stdin)")
        username = input("Username: ").strip()
    if args.password_stdin:
        if args.password is not None:
            raise BadInput("--password and --password-stdin cannot be used together")
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise BadInput("no password: pass --password-stdin and write it to stdin")
    if not username or not password:
        raise BadInput("username and password must not be empty")
    creds = Credentials(username, password)
    tls = TlsOptions(verify=args.tls_verify, cert_dir=args.cert_dir)
    options = RegistryOptions(tls=tls, authfile=args.authfile, credentials=creds)

    async def check() -> None:
        async with client_for_domain(domain, "", options) as client:
            await client.check_login()

    try:
        trio.run(check)
    except Unauthorized:
        raise Unauthorized(f"login to {domain} failed: incorrect username or password") from None
    store_credentials(domain, creds, args.authfile)
    sys.stdout.write("Login Succeeded!\n")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from unionfs.registry.auth import remove_credentials

    domain = _registry_domain(args.host)
    if not remove_credentials(domain, args.authfile):
        raise ImgfsError(f"not logged in to {domain}")
    sys.stdout.write(f"Removed login credentials for {domain}\n")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import trio

    from unionfs.registry.search import search

    term, domain = args.term, reference.DEFAULT_DOMAIN
    first, slash, rest = term.partition("/")
    if args.registry:
        domain = _registry_domain(args.registry)
    elif slash and ("." in first or ":" in first or first == "localhost"):
        domain, term = first, rest
    options = _options(args)
    results = trio.run(lambda: search(domain, term, limit=args.limit, options=options))
    if args.format == "json":
        print_json([{"name": r.name, "tags": r.tags} for r in results])
    else:
        print_table(["NAME", "TAGS"], [[r.name, ", ".join(r.tags)] for r in results])
    return 0
