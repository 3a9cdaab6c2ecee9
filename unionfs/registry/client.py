"""HTTP to one registry: endpoint probing, authentication, bounded retries, resumable blobs.

One `RegistryClient` serves one registry host for one command. It pings `/v2/` first, as
docker does, to pick the scheme (HTTPS, then plain HTTP where `hosts` allows it) and to
learn how the registry authenticates. Requests answered 401 are retried once with Basic
credentials or with a bearer token fetched from the challenge's realm for the scopes the
request needs (tokens are cached per scope set until they expire). 429, 5xx and
connection errors are retried with exponential backoff a bounded number of times;
a blob download that breaks mid-way continues from where it stopped with `Range`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urljoin

import httpx
import trio

from unionfs import __version__
from unionfs.errors import BadInput, ImgfsError, NotFound, RegistryError, Unauthorized
from unionfs.registry.auth import Challenge, Credentials, parse_challenges
from unionfs.registry.hosts import HostSettings, is_loopback

T = TypeVar("T")
USER_AGENT = f"imgfs/{__version__}"
CHUNK = 1 << 20


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.max_delay, self.base_delay * (2**attempt))
        return min(30.0, max(wait, retry_after or 0.0))


class _Retry(Exception):
    """One attempt failed in a way worth another try."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class _Token:
    value: str
    expires: float


class RegistryClient:
    def __init__(
        self,
        settings: HostSettings,
        credentials: Credentials | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.base = ""
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._http = httpx.AsyncClient(
            verify=settings.ssl_context,
            timeout=httpx.Timeout(60.0, connect=15.0),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            # proxies from the environment for real registries, never for this machine
            trust_env=not is_loopback(settings.host),
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # -- endpoint ----------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: choose the scheme and learn the auth challenge (retried, bounded)."""
        if self.base:
            return
        await self._retrying(f"reach registry {self.host}", self._ping_once)

    async def _ping_once(self) -> None:
        errors = []
        for scheme in self.settings.schemes:
            base = f"{scheme}://{self.host}"
            try:
                resp = await self._http.get(base + "/v2/")
            except httpx.TransportError as e:
                reason = _transport_reason(e)
                if "CERTIFICATE_VERIFY_FAILED" in reason:
                    raise RegistryError(
                        f"cannot verify the TLS certificate of {self.host} ({reason}); trust its "
                        f"CA with --cert-dir DIR (or /etc/containers/certs.d/{self.host}/ca.crt), "
                        "or pass --tls-verify=false"
                    ) from None
                errors.append(f"{scheme}: {reason}")
                continue
            if resp.status_code == 400 and scheme == "http" and b"HTTPS" in resp.content:
                errors.append("http: the server speaks HTTPS only")
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Retry(f"HTTP {resp.status_code}", _retry_after(resp))
            if resp.status_code not in (200, 401):
                raise RegistryError(
                    f"{self.host} does not look like a registry: GET /v2/ answered "
                    f"HTTP {resp.status_code}"
                )
            self.base = base
            if resp.status_code == 401:
                self._challenge = _pick_challenge(resp)
            return
        raise _Retry("; ".join(errors))

    def url(self, path: str) -> str:
        return urljoin(self.base + "/", path.lstrip("/")) if not path.startswith("http") else path

    async def check_login(self) -> None:
        """Prove the credentials: a token for no scope, or GET /v2/ with Basic auth."""
        await self.ping()
        if self._challenge is None:
            return
        resp = await self.request("GET", "/v2/", [], what="log in")
        if resp.status_code != 200:
            raise status_error(resp, f"login to {self.host}")

    # -- auth --------------------------------------------------------------------------

    async def _auth_header(self, scopes: Sequence[str], *, fresh: bool = False) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        if challenge.scheme != "bearer":
            raise RegistryError(
                f"{self.host} asks for {challenge.scheme!r} authentication, which imgfs does not "
                "support"
            )
        key = tuple(sorted(set(scopes)))
        token = self._tokens.get(key)
        if fresh or token is None or token.expires <= time.monotonic():
            token = await self._fetch_token(challenge, key)
            self._tokens[key] = token
        return f"Bearer {token.value}"

    async def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.host} sent a bearer challenge without a realm")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        headers = {}
        if self.credentials is not None:
            params.append(("account", self.credentials.username))
            headers["Authorization"] = self.credentials.basic_header()

        async def once() -> httpx.Response:
            try:
                resp = await self._http.get(realm, params=params, headers=headers)
            except httpx.TransportError as e:
                raise _Retry(f"token service {realm}: {_transport_reason(e)}") from None
            if resp.status_code >= 500 or resp.status_code == 429:
                raise _Retry(f"token service {realm}: HTTP {resp.status_code}", _retry_after(resp))
            return resp

        resp = await self._retrying(f"get a token from {realm}", once)
        if resp.status_code in (401, 403):
            if self.credentials is None:
                raise Unauthorized(
                    f"{self.host}: authentication required (run: imgfs login {self.host})"
                )
            raise Unauthorized(f"{self.host}: unauthorized: incorrect username or password")
        if resp.status_code != 200:
            raise RegistryError(f"token service {realm} answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            value = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token service {realm} sent an unreadable answer") from None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token service {realm} sent no token")
        return _Token(value, time.monotonic() + max(1.0, expires_in - 10))

    # -- requests ----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        scopes: Sequence[str],
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], Any] | None = None,
        what: str = "",
        follow: bool = False,
        limit: int = 64 << 20,
    ) -> httpx.Response:
        """One API call with auth and retries; the body (at most `limit` bytes) is read
        before it returns. `content` may be a callable that makes the body for each try."""
        await self.ping()

        async def once() -> httpx.Response:
            async with self._send(
                method, path, scopes, headers=headers, content=content, follow=follow
            ) as resp:
                size = int(resp.headers.get("Content-Length") or 0)
                if size > limit:
                    raise RegistryError(f"{what or path}: the answer is too large ({size} bytes)")
                await resp.aread()
                return resp

        return await self._retrying(what or f"{method} {path}", once)

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        scopes: Sequence[str],
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Any | None = None,
        follow: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Send once (again once after a 401 with fresh credentials); raises _Retry."""
        url = self.url(path)
        for fresh in (False, True):
            all_headers = dict(headers or {})
            auth = await self._auth_header(scopes, fresh=fresh)
            if auth is not None:
                all_headers["Authorization"] = auth
            body = content() if callable(content) else content
            request = self._http.build_request(method, url, headers=all_headers, content=body)
            try:
                resp = await self._http.send(request, stream=True, follow_redirects=follow)
            except httpx.TransportError as e:
                raise _Retry(_transport_reason(e)) from None
            try:
                if resp.status_code == 401 and not fresh:
                    challenge = _pick_challenge(resp)
                    if challenge is not None and (
                        challenge.scheme == "bearer" or self.credentials is not None
                    ):
                        self._challenge = challenge
                        continue
                if resp.status_code == 401:
                    raise self._unauthorized()
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise _Retry(f"HTTP {resp.status_code}", _retry_after(resp))
                yield resp
                return
            finally:
                await resp.aclose()

    def _unauthorized(self) -> Unauthorized:
        if self.credentials is None:
            return Unauthorized(
                f"{self.host}: authentication required (run: imgfs login {self.host})"
            )
        return Unauthorized(
            f"{self.host}: unauthorized: access denied for {self.credentials.username}"
        )

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        last = ""
        for n in range(self.retry.attempts):
            try:
                return await attempt()
            except _Retry as e:
                last = str(e)
                if n + 1 < self.retry.attempts:
                    await trio.sleep(self.retry.delay(n, e.retry_after))
        raise RegistryError(f"cannot {what}: {last} (gave up after {self.retry.attempts} attempts)")

    # -- blobs -------------------------------------------------------------------------

    async def download_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        part: BinaryIO,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """Fetch a blob into `part`, continuing after what it already holds, and verify it.

        `part` is a file opened for reading and appending; on a digest mismatch it is
        emptied (so the next try starts over) and BadInput is raised.
        """
        await self.ping()
        scopes = [f"repository:{repository}:pull"]
        hasher = hashlib.sha256()
        part.seek(0)
        while chunk := await trio.to_thread.run_sync(part.read, 8 * CHUNK):
            hasher.update(chunk)
        offset = part.tell()
        if offset > size:
            part.truncate(0)
            hasher, offset = hashlib.sha256(), 0
        if on_bytes is not None and offset:
            on_bytes(offset)
        failures = 0
        while offset < size:
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            start = offset
            try:
                async with self._send(
                    "GET", f"/v2/{repository}/blobs/{digest}", scopes, headers=headers, follow=True
                ) as resp:
                    if resp.status_code == 404:
                        raise NotFound(f"blob {digest} is unknown to {self.host}/{repository}")
                    if (
                        resp.status_code == 416
                        or (resp.status_code == 200 and offset)
                        or (resp.status_code == 206 and not _range_starts_at(resp, offset))
                    ):
                        part.truncate(0)
                        part.seek(0)
                        hasher, offset = hashlib.sha256(), 0
                        if resp.status_code != 200:
                            continue
                    elif resp.status_code not in (200, 206):
                        raise status_error(resp, f"blob {digest} of {self.host}/{repository}")
                    async for data in resp.aiter_raw(CHUNK):
                        offset += len(data)
                        if offset > size:
                            break
                        part.write(data)
                        hasher.update(data)
                        if on_bytes is not None:
                            on_bytes(len(data))
                    if offset < size:
                        raise _Retry(f"connection closed after {offset} of {size} bytes")
            except (_Retry, httpx.TransportError) as e:
                part.flush()
                failures = 0 if offset > start else failures + 1
                if failures >= self.retry.attempts:
                    raise RegistryError(
                        f"cannot download blob {digest} from {self.host}: "
                        f"{_transport_reason(e) if isinstance(e, httpx.TransportError) else e} "
                        f"(gave up after {failures} attempts without progress)"
                    ) from None
                await trio.sleep(self.retry.delay(failures, getattr(e, "retry_after", None)))
        part.flush()
        os.fsync(part.fileno())
        got = "sha256:" + hasher.hexdigest()
        if offset != size or got != digest:
            part.truncate(0)
            detail = f"content has {got}" if offset == size else f"{offset} of {size} bytes"
            raise BadInput(
                f"blob {digest} from {self.host}/{repository} does not match its digest ({detail})"
            )


def _range_starts_at(resp: httpx.Response, offset: int) -> bool:
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False


def _pick_challenge(resp: httpx.Response) -> Challenge | None:
    challenges = []
    for header in resp.headers.get_list("WWW-Authenticate"):
        challenges += parse_challenges(header)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return challenges[0] if challenges else None


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _transport_reason(e: BaseException) -> str:
    """The most specific message in the exception's chain (httpx wraps ssl and OS errors)."""
    reasons = []
    seen: BaseException | None = e
    while seen is not None and len(reasons) < 8:
        if isinstance(seen, OSError) and seen.strerror:
            reasons.append(seen.strerror)
        elif str(seen).strip():
            reasons.append(str(seen).strip())
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
        else:
            seen = seen.__cause__ or seen.__context__
    specific = [r for r in reasons if "CERTIFICATE_VERIFY_FAILED" in r]
    return (specific or reasons or [type(e).__name__])[0 if specific else -1]


def registry_errors(resp: httpx.Response) -> list[dict[str, Any]]:
    try:
        doc = json.loads(resp.content)
    except ValueError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def status_error(resp: httpx.Response, what: str) -> RegistryError:
    """One line for an unexpected answer: the registry's own error code and message."""
    errors = registry_errors(resp)
    detail = "; ".join(
        f"{str(e.get('code', '')).lower().replace('_', ' ')}: {e.get('message', '')}".strip(": ")
        for e in errors
    )
    if resp.status_code == 403:
        detail = detail or "requested access to the resource is denied"
        return Unauthorized(f"{what}: denied: {detail}")
    if resp.status_code == 404:
        return NotFound(f"{what}: not found{': ' + detail if detail else ''}")
    return RegistryError(f"{what}: HTTP {resp.status_code}{': ' + detail if detail else ''}")


async def run_all(
    jobs: Sequence[Callable[[trio.CapacityLimiter], Awaitable[None]]], limit: int
) -> None:
    """Run jobs concurrently, sharing a limiter; a failure cancels the rest and is raised
    as itself (the user's one-line error), not as a group."""
    limiter = trio.CapacityLimiter(limit)
    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job, limiter)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup) -> BaseException:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    for kind in (KeyboardInterrupt, ImgfsError):
        for leaf in leaves:
            if isinstance(leaf, kind) and not isinstance(leaf, trio.Cancelled):
                return leaf
    return next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])
