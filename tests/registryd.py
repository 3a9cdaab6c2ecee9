"""Real registry servers for the registry client's tests, and skopeo to check them with.

`Registry` runs distribution's `docker-registry serve` (Debian's package, 2.8) on a random
loopback port with its own config, storage and log: plain HTTP or TLS (a `trustme` CA), with
no auth, htpasswd (basic) auth or token auth backed by `TokenIssuer`, a token server in a
thread of the test process (so it serves a client in a subprocess as well as one in a trio
test). `Relay` is a throttling TCP relay that can cut every connection mid-transfer.
Test modules import the fixtures they use: `from registryd import registry, oci_image`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from unionfs.builtin import write_rootfs_tar

from conftest import require

USER = "alice"
PASSWORD = "wonderland-42"
SERVICE = "imgfs-test-registry"
ISSUER = "imgfs-test-issuer"


def free_port() -> int:
    """A loopback port nobody listens on right now (the caller may still lose a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_registry() -> str:
    path = shutil.which("docker-registry")
    require(path is not None, "docker-registry (Debian package docker-registry) is not installed")
    assert path is not None
    return path


# --- token issuer -----------------------------------------------------------------------------


@dataclass
class Grant:
    """One token handed out: to whom (None: anonymous), what was asked, what was granted."""

    account: str | None
    scopes: list[str]
    access: list[dict[str, Any]]


class TokenIssuer:
    """A Docker token server (the `auth: token` realm) on 127.0.0.1, in a background thread.

    `GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]` with optional Basic
    credentials, and the OAuth2 `POST /token` form (grant_type=password with
    username/password, or grant_type=refresh_token) both answer `{"token", "access_token",
    "expires_in", "issued_at"}`; a POST with access_type=offline also gets a "refresh_token".
    Policy: the right user/password gets every action it asks for, on any repository and on
    `registry:catalog:*`; wrong credentials get 401; anonymous requests get a token with no
    access, so the registry's 401 reaches the client as "login needed" — or pull-only access
    with `anonymous_pull=True`. A wrong `service` gets 400.
    Tokens are ES256 JWTs whose `x5c` header carries the signing certificate, which is also the
    registry's whole rootcertbundle (distribution 2.8 verifies the x5c chain against it).
    Their `exp` is `token_lifetime` (default: the advertised `expires_in`) seconds ahead; the
    registry allows 60 s of leeway past it, so a test that needs the registry to refuse a token
    as expired sets `token_lifetime = -120` (attributes are read at each request).
    """

    def __init__(
        self,
        *,
        user: str = USER,
        password: str = PASSWORD,
        service: str = SERVICE,
        issuer: str = ISSUER,
        anonymous_pull: bool = False,
        expires_in: int = 300,
        token_lifetime: int | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.service = service
        self.issuer = issuer
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.token_lifetime = token_lifetime
        self.grants: list[Grant] = []
        self.port = 0
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]

    @property
    def issued(self) -> int:
        """How many tokens were handed out (to check that a client caches them)."""
        with self._lock:
            return len(self.grants)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def creds(self) -> str:
        return f"{self.user}:{self.password}"

    def start(self) -> TokenIssuer:
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", self.port), _token_handler(self))
            server.daemon_threads = True
            self.port = server.server_address[1]
            threading.Thread(
                target=server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
            ).start()
            self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def grant(self, account: str | None, scopes: Sequence[str]) -> list[dict[str, Any]]:
        """The access claim for a request (see the class docstring for the policy)."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            if account is not None:
                granted = wanted if kind in ("repository", "registry") else []
            else:
                granted = ["pull"] if self.anonymous_pull and kind == "repository" else []
                granted = [a for a in wanted if a in granted]
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        return access

    def issue(self, account: str | None, scopes: Sequence[str]) -> dict[str, Any]:
        """Sign a token for `account` and record the grant; the JSON body the realm answers."""
        access = self.grant(account, scopes)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + (self.expires_in if self.token_lifetime is None else self.token_lifetime),
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})
        with self._lock:
            self.grants.append(Grant(account, list(scopes), access))
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }

    def refresh_token_for(self, account: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = account
        return token

    def account_of_refresh_token(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)


def _token_handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path != "/token":
                return self._reply(404, {"details": "not found"})
            if not self._service_ok(query):
                return None
            account: str | None = None
            header = self.headers.get("Authorization", "")
            if header:
                scheme, _, value = header.partition(" ")
                try:
                    user, _, password = base64.b64decode(value).decode().partition(":")
                except ValueError:
                    user, password = "", ""
                if scheme.lower() != "basic" or (user, password) != (issuer.user, issuer.password):
                    return self._unauthorized()
                account = user
            return self._reply(200, issuer.issue(account, query.get("scope", [])))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if urllib.parse.urlsplit(self.path).path != "/token":
                return self._reply(404, {"details": "not found"})
            if not self._service_ok(form):
                return None
            grant_type = form.get("grant_type", [""])[0]
            if grant_type == "password":
                user = form.get("username", [""])[0]
                password = form.get("password", [""])[0]
                if (user, password) != (issuer.user, issuer.password):
                    return self._unauthorized()
                account: str | None = user
            elif grant_type == "refresh_token":
                account = issuer.account_of_refresh_token(form.get("refresh_token", [""])[0])
                if account is None:
                    return self._unauthorized()
            else:
                return self._reply(400, {"details": f"unsupported grant_type {grant_type!r}"})
            scopes = " ".join(form.get("scope", [])).split()
            body = issuer.issue(account, scopes)
            if form.get("access_type", [""])[0] == "offline":
                body["refresh_token"] = issuer.refresh_token_for(account)
            return self._reply(200, body)

        def _service_ok(self, params: dict[str, list[str]]) -> bool:
            service = params.get("service", [issuer.service])[0]
            if service != issuer.service:
                self._reply(400, {"details": f"unknown service {service!r}"})
                return False
            return True

        def _unauthorized(self) -> None:
            message = "incorrect username or password"
            self._reply(
                401,
                {"details": message, "errors": [{"code": "UNAUTHORIZED", "message": message}]},
                {"WWW-Authenticate": f'Basic realm="{issuer.realm}"'},
            )

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# --- docker-registry --------------------------------------------------------------------------


class Registry:
    """`docker-registry serve` on 127.0.0.1:<random port>, its files under `workdir`.

    Plain HTTP unless `tls` (then `ca_pem` and `cert_dir` are set); no auth unless `basic`
    (htpasswd; distribution 2.8 accepts it over plain HTTP too) or `token` (a started
    `TokenIssuer`, which the caller owns). `start()` again after `stop()`/`kill()` reuses the
    port, the storage and the HTTP secret, so content and interrupted uploads survive.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = False,
        basic: bool = False,
        token: TokenIssuer | None = None,
        user: str = USER,
        password: str = PASSWORD,
        port: int | None = None,
        start: bool = True,
    ) -> None:
        if basic and token is not None:
            raise ValueError("basic and token auth are exclusive")
        self.binary = require_registry()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.log = workdir / "registry.log"
        self.config = workdir / "config.yml"
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.issuer = token
        self.user: str | None = None
        self.password: str | None = None
        if basic:
            self.user, self.password = user, password
        elif token is not None:
            self.user, self.password = token.user, token.password
        self.basic = basic
        self.ca_pem: Path | None = None
        self.cert_dir: Path | None = None
        self._ca: trustme.CA | None = None
        self._secret = secrets.token_hex(16)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        if start:
            self.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def creds(self) -> str | None:
        """`user:password` for skopeo's --creds, or None when the registry has no auth."""
        return None if self.user is None else f"{self.user}:{self.password}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ref(self, name: str) -> str:
        """`host:port/name` for a `repo:tag` or `repo@digest`."""
        return f"{self.host}/{name}"

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes, to corrupt or remove it behind its back."""
        algorithm, _, hexdigest = digest.partition(":")
        blobs = self.storage / "docker" / "registry" / "v2" / "blobs"
        return blobs / algorithm / hexdigest[:2] / hexdigest / "data"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(self.storage))}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {self._secret}",
        ]
        if self.tls:
            if self._ca is None:
                self._make_certs()
            lines += [
                "  tls:",
                f"    certificate: {json.dumps(str(self.workdir / 'server.pem'))}",
                f"    key: {json.dumps(str(self.workdir / 'server.key'))}",
            ]
        if self.basic:
            assert self.user is not None and self.password is not None
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.user}:{hashed}\n")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: imgfs-test",
                f"    path: {json.dumps(str(htpasswd))}",
            ]
        elif self.issuer is not None:
            bundle = self.workdir / "token-root.pem"
            bundle.write_bytes(self.issuer.cert_pem)
            lines += [
                "auth:",
                "  token:",
                f"    realm: {json.dumps(self.issuer.realm)}",
                f"    service: {json.dumps(self.issuer.service)}",
                f"    issuer: {json.dumps(self.issuer.issuer)}",
                f"    rootcertbundle: {json.dumps(str(bundle))}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def _make_certs(self) -> None:
        self._ca = trustme.CA()
        leaf = self._ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.workdir / "server.key"))
        (self.workdir / "server.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self.ca_pem = self.workdir / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem))
        # podman's --cert-dir, and /etc/containers/certs.d/<host:port>/ under cert_dir.parent.
        self.cert_dir = self.workdir / "certs.d" / self.host
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_pem, self.cert_dir / "ca.crt")

    def start(self, timeout: float = 15) -> Registry:
        """Start (again) and return once it answers `GET /v2/`."""
        if self.running:
            return self
        for attempt in range(5):
            self._write_config()
            try:
                self._spawn(timeout)
                return self
            except RuntimeError as e:
                lost_race = "address already in use" in str(e)
                if not lost_race or self._fixed_port or self._started_once or attempt == 4:
                    raise
                self.port = free_port()
                if self.tls:
                    self._ca = None  # the cert dir is named after the port
        return self

    def _spawn(self, timeout: float) -> None:
        # distribution reads REGISTRY_* as config overrides: REGISTRY_AUTH_FILE (podman's
        # auth.json) would turn into an unknown `auth: file:` section and break startup.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"docker-registry exited with {rc}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/v2/", verify=False, timeout=1)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"docker-registry did not answer in {timeout}s:\n{self.log_text()}"
                    ) from None
                time.sleep(0.02)
            else:
                self._started_once = True
                return

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait (SIGKILL if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL and wait: the registry dies mid-whatever-it-was-doing."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        auth = "basic" if self.basic else "token" if self.issuer else "none"
        return f"<Registry {self.url} auth={auth} storage={self.storage}>"


# --- relay ------------------------------------------------------------------------------------


class Relay:
    """A TCP relay on 127.0.0.1:<random port> to `target_host:target_port`, threads inside.

    `bytes_per_second` limits the server→client direction (over all connections together), so
    a test can interrupt a download part-way deterministically: `cut_after(n)` drops every
    connection once n more server→client bytes have gone through (exactly n reach clients),
    `kill()` closes the listener and every connection (the server died), `drop()` only the
    connections (a network reset), `start()` listens again on the same port.
    `bytes_down`/`bytes_up` count what was forwarded; `connections` counts accepted clients.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        bytes_per_second: int | None = None,
        *,
        start: bool = True,
    ) -> None:
        self.target = (target_host, target_port)
        self.bytes_per_second = bytes_per_second
        self.port = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.connections = 0
        self._cond = threading.Condition()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._cut_at: int | None = None
        self._cut_kills = False
        self._fail_next = 0
        self.failed = 0
        self._next_send = 0.0
        if start:
            self.start()

    @classmethod
    def to(cls, registry: Registry, bytes_per_second: int | None = None) -> Relay:
        return cls("127.0.0.1", registry.port, bytes_per_second)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def start(self) -> Relay:
        with self._cond:
            if self._listener is not None:
                return self
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            sock.settimeout(0.05)
            self.port = sock.getsockname()[1]
            self._listener = sock
            self._closed = closed = threading.Event()
        threading.Thread(target=self._accept, args=(sock, closed), daemon=True).start()
        return self

    def drop(self) -> None:
        """Close every open connection abruptly; keep listening."""
        with self._cond:
            conns, self._conns = self._conns, set()
        for s in conns:
            _close(s)

    def kill(self) -> None:
        """Close the listener and every open connection: connecting now fails until start()."""
        with self._cond:
            listener, self._listener = self._listener, None
            self._closed.set()
        if listener is not None:
            listener.close()
        self.drop()

    close = kill

    def cut_after(self, n: int, *, kill: bool = False) -> None:
        """Once n more server→client bytes have been forwarded, drop() (or kill()), once."""
        with self._cond:
            self._cut_at = self.bytes_down + n
            self._cut_kills = kill

    def fail_next(self, n: int) -> None:
        """Answer the next n connections as an overloaded load balancer in front of the
        registry does: `503 Service Unavailable`, then close."""
        with self._cond:
            self._fail_next = n

    def wait_for_bytes(self, n: int, timeout: float = 30) -> None:
        """Block until at least n server→client bytes have been forwarded in total."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.bytes_down >= n, timeout):
                raise TimeoutError(f"relay forwarded {self.bytes_down} of {n} bytes")

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _accept(self, listener: socket.socket, closed: threading.Event) -> None:
        while not closed.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                failing = self._fail_next > 0
                if failing:
                    self._fail_next -= 1
                    self.failed += 1
            if failing:
                threading.Thread(target=_answer_503, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._cond:
                if closed.is_set():
                    _close(client)
                    _close(upstream)
                    return
                self.connections += 1
                self._conns |= {client, upstream}
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

    def _chunk(self) -> int:
        if self.bytes_per_second is None:
            return 65536
        return max(1, min(16384, self.bytes_per_second // 50))

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(self._chunk() if down else 65536)
                if not data:
                    break
                if not down:
                    dst.sendall(data)
                    with self._cond:
                        self.bytes_up += len(data)
                    continue
                self._throttle(len(data))
                with self._cond:
                    cut = False
                    if self._cut_at is not None and self.bytes_down + len(data) >= self._cut_at:
                        data = data[: self._cut_at - self.bytes_down]
                        cut, kill = True, self._cut_kills
                        self._cut_at = None
                if data:
                    dst.sendall(data)
                with self._cond:
                    self.bytes_down += len(data)
                    self._cond.notify_all()
                if cut:
                    if kill:
                        self.kill()
                    else:
                        self.drop()
                    return
        except OSError:
            pass
        with self._cond:
            self._conns -= {src, dst}
        _close(src)
        _close(dst)

    def _throttle(self, size: int) -> None:
        if self.bytes_per_second is None:
            return
        with self._cond:
            now = time.monotonic()
            at = max(self._next_send, now)
            self._next_send = at + size / self.bytes_per_second
        if at > now:
            time.sleep(at - now)


def _answer_503(client: socket.socket) -> None:
    with contextlib.suppress(OSError):
        client.settimeout(5)
        client.recv(65536)  # the request (its head, at least)
        client.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
            b"Retry-After: 0\r\nConnection: close\r\n\r\n"
        )
    _close(client)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# --- skopeo -----------------------------------------------------------------------------------


class SkopeoError(AssertionError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo {' '.join(args)} exited with {returncode}:\n{stderr}")
        self.returncode = returncode
        self.stderr = stderr


def skopeo(*args: str, timeout: float = 120) -> str:
    """Run skopeo with no credentials but the ones on its command line; its stdout."""
    binary = shutil.which("skopeo")
    require(binary is not None, "skopeo is not installed")
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="skopeo-home-") as home:
        auth = Path(home) / "auth.json"
        auth.write_text('{"auths": {}}')
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG",)}
        env.update(
            HOME=home,
            XDG_CONFIG_HOME=home,
            XDG_RUNTIME_DIR=home,
            REGISTRY_AUTH_FILE=str(auth),
        )
        proc = subprocess.run(
            [binary, "--insecure-policy", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    if proc.returncode != 0:
        raise SkopeoError(args, proc.returncode, proc.stderr)
    return proc.stdout


def skopeo_flags(
    registry: Registry,
    side: str = "",
    *,
    creds: str | None = None,
    anonymous: bool = False,
) -> list[str]:
    """TLS and credential flags for `registry`; side is "src", "dest" or "" (inspect)."""
    prefix = f"--{side}-" if side else "--"
    if registry.tls:
        flags = [f"{prefix}cert-dir={registry.cert_dir}"]
    else:
        flags = [f"{prefix}tls-verify=false"]
    login = creds if creds is not None else None if anonymous else registry.creds
    if login:
        flags.append(f"{prefix}creds={login}")
    return flags


def skopeo_copy(
    src: str,
    dest: str,
    *,
    registry: Registry | None = None,
    creds: str | None = None,
    anonymous: bool = False,
    extra: Sequence[str] = (),
) -> str:
    """`skopeo copy src dest`; each `docker://` side gets `registry`'s TLS flags and its
    credentials (or `creds`; none with anonymous=True). Raises SkopeoError with stderr."""
    flags: list[str] = []
    if registry is not None:
        for side, ref in (("src", src), ("dest", dest)):
            if ref.startswith("docker://"):
                flags += skopeo_flags(registry, side, creds=creds, anonymous=anonymous)
    return skopeo("copy", "--retry-times=0", *flags, *extra, src, dest)


def skopeo_inspect(
    ref: str,
    *,
    registry: Registry | None = None,
    creds: str | None = None,
    anonymous: bool = False,
    raw: bool = False,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """`skopeo inspect [--raw] ref` as JSON, with `registry`'s flags as in skopeo_copy."""
    flags = [] if registry is None else skopeo_flags(registry, creds=creds, anonymous=anonymous)
    return json.loads(skopeo("inspect", *(["--raw"] if raw else []), *flags, *extra, ref))


# --- a test image -----------------------------------------------------------------------------


def make_oci_image(workdir: Path, name: str = "busybox:registryd") -> tuple[Path, str]:
    """The built-in busybox rootfs imported by `imgfs import` into a store under workdir.

    Returns (OCI layout dir, full reference in it); skopeo reads `oci:{dir}:{ref}`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tar = workdir / "busybox.tar"
    with tar.open("wb") as f:
        write_rootfs_tar(f)
    store = workdir / "store"
    env = dict(os.environ, IMGFS_ROOT=str(store))
    env.pop("IMGFS_DEBUG", None)
    subprocess.run(
        [sys.executable, "-m", "unionfs", "import", str(tar), name],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    oci = store / "oci"
    index = json.loads((oci / "index.json").read_text())
    refs = [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in index["manifests"]
        if "org.opencontainers.image.ref.name" in m.get("annotations", {})
    ]
    [ref] = [r for r in refs if r.endswith("/" + name)]
    return oci, ref


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(OCI layout dir, ref) of a small busybox image, shared by the session: don't modify."""
    return make_oci_image(tmp_path_factory.mktemp("oci-image"))


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Plain HTTP, no auth."""
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Plain HTTP with htpasswd auth: `user`/`password` (or `creds`) get in."""
    with Registry(tmp_path_factory.mktemp("basic-registry"), basic=True) as reg:
        yield reg


@pytest.fixture
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTPS with a test CA (`ca_pem`, `cert_dir`), no auth."""
    with Registry(tmp_path_factory.mktemp("tls-registry"), tls=True) as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Plain HTTP with token auth; the `TokenIssuer` is `token_registry.issuer`."""
    require_registry()
    with (
        TokenIssuer() as issuer,
        Registry(tmp_path_factory.mktemp("token-registry"), token=issuer) as reg,
    ):
        yield reg
