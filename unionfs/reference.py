"""Image references ("ubuntu", "localhost:5000/app:v1", "x@sha256:…") parsed with Docker's rules.

The grammar and the normalization follow the Go library github.com/distribution/reference
(what `docker pull` uses), so that a name typed here means the same image it means to docker:

    reference := name [":" tag] ["@" digest]
    name      := [domain "/"] path
    domain    := (domain-name | "[" ipv6 "]") [":" port]
    path      := component ("/" component)*        component := [a-z0-9]+ (sep [a-z0-9]+)*
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := algorithm ":" hex                 (sha256 → exactly 64 lowercase hex)

The first "/"-separated part of a name is a registry domain only when it contains "." or ":",
is "localhost", or has uppercase letters; otherwise the name lives on Docker Hub ("docker.io"),
and a single-component Hub name gets the "library/" namespace of the official images.

Where the Go library's answer is surprising we are stricter, and say so: a first part that
looks like a domain but is not a valid host name ("foo_bar.com/x") is refused instead of
becoming a name without a domain, and the 255 limit counts the whole normalized name. As in Go,
only a bare 64-hex string is refused as a name ("<64 hex>:latest" is a name with a tag), which
keeps `familiar()` parseable for every reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from unionfs.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
LOCALHOST = "localhost"

NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128

# Every character class is spelled out in ASCII: Python's \w and \d would accept Unicode
# letters and digits, which Go's RE2 (and every registry) refuses.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"  # no zone ids ("%eth0") or IPv4-mapped forms, like Go
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_CHARS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGEST_ALGORITHM_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_DIGEST_HEX_RE = re.compile(r"[0-9a-fA-F]{32,}")
_ID_RE = re.compile(r"[0-9a-f]{64}")
_ID_LIKE_RE = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")

# The algorithms go-digest registers when Go programs import crypto/sha256 and crypto/sha512
# (docker does); any other algorithm is "unsupported" rather than merely malformed.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_MAX_QUOTED_INPUT = 120


class _Invalid(Exception):
    """A reason a reference is refused; `parse` adds the input to make the user-facing error."""


def _quote(s: str) -> str:
    """repr() keeps the message on one line whatever the input holds; very long input is cut."""
    if len(s) > _MAX_QUOTED_INPUT:
        return repr(s[:_MAX_QUOTED_INPUT]) + f"… ({len(s)} characters)"
    return repr(s)


def _check_domain(domain: str) -> None:
    if not _DOMAIN_RE.fullmatch(domain):
        raise _Invalid(f"invalid reference format: invalid registry domain {domain!r}")


def _check_path(path: str) -> None:
    """Path components are what registries accept as repository names: lowercase only."""
    if path != path.lower():
        raise _Invalid("invalid reference format: repository name must be lowercase")
    for component in path.split("/"):
        if not component:
            raise _Invalid("invalid reference format: empty path component")
        if not _PATH_COMPONENT_RE.fullmatch(component):
            raise _Invalid(f"invalid reference format: invalid path component {component!r}")


def _check_tag(tag: str) -> None:
    if not _TAG_CHARS_RE.fullmatch(tag):
        raise _Invalid(f"invalid reference format: invalid tag {tag!r}")
    if len(tag) > TAG_LENGTH_MAX:
        raise _Invalid(f"invalid reference format: tag {tag[:20]!r}… is too long (max 128)")


def _check_digest(digest: str) -> None:
    """Syntax from the reference grammar, then go-digest's rules for the known algorithms."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not _DIGEST_ALGORITHM_RE.fullmatch(algorithm):
        raise _Invalid(f"invalid digest {digest!r}: expected <algorithm>:<hex>")
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        if not _DIGEST_HEX_RE.fullmatch(encoded):
            raise _Invalid(f"invalid digest {digest!r}: expected <algorithm>:<hex>")
        raise _Invalid(f"invalid digest {digest!r}: unsupported digest algorithm {algorithm!r}")
    if len(encoded) != expected or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise _Invalid(
            f"invalid digest {digest!r}: {algorithm} needs exactly {expected} lowercase hex digits"
        )


def _check_fields(domain: str, path: str, tag: str | None, digest: str | None) -> None:
    """The invariants every Reference holds, whether it came from `parse` or a constructor."""
    _check_domain(domain)
    if domain == LEGACY_DEFAULT_DOMAIN:
        raise _Invalid(f"domain must be normalized: {LEGACY_DEFAULT_DOMAIN} is {DEFAULT_DOMAIN}")
    _check_path(path)
    if domain == DEFAULT_DOMAIN and "/" not in path:
        raise _Invalid(f"path must be normalized: {DEFAULT_DOMAIN} names need a namespace")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _Invalid(
            f"repository name too long: {len(domain) + 1 + len(path)} characters "
            f"(max {NAME_TOTAL_LENGTH_MAX})"
        )
    if tag is not None:
        _check_tag(tag)
    if digest is not None:
        _check_digest(digest)
    if tag is None and digest is None:
        raise _Invalid("a reference needs a tag or a digest")


@dataclass(frozen=True)
class Reference:
    """A fully normalized image reference; `str()` of it is what the store keys images by."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    def __post_init__(self) -> None:
        """Refuse unnormalized fields: two spellings of one image must compare equal."""
        try:
            _check_fields(self.domain, self.path, self.tag, self.digest)
        except _Invalid as e:
            raise InvalidReference(f"{e}: {_quote(self._raw_string())}") from None

    def _raw_string(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.domain}/{self.path}{tag}{digest}"

    @property
    def name(self) -> str:
        """The repository without tag or digest: "docker.io/library/ubuntu"."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        return self._raw_string()

    @property
    def familiar_name(self) -> str:
        """The name as docker shows it: Hub's domain and "library/" namespace left out.

        Unlike Go, the domain stays when leaving it out would make the first path component
        read back as a registry ("docker.io/a.b/c"), so that `parse` always inverts this.
        """
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX):
            rest = path[len(OFFICIAL_REPO_PREFIX) :]
            if "/" not in rest:  # "library/a/b" would read back as user "a"'s image "b"
                return rest
        first = path.partition("/")[0]
        if first == LOCALHOST or "." in first:  # ":" and uppercase never occur in a path
            return self.name
        return path

    def familiar(self) -> str:
        """The short form for display, e.g. "ubuntu:latest"; `parse` reads it back unchanged."""
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.familiar_name}{tag}{digest}"

    def with_tag(self, tag: str) -> Reference:
        """The same repository under another tag; a digest is kept, as Go's WithTag does."""
        return replace(self, tag=tag)


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's guess at whether the first part of `name` is a registry or a Hub namespace."""
    first, slash, rest = name.partition("/")
    if not slash:
        domain, path = DEFAULT_DOMAIN, name
    elif first == LOCALHOST or "." in first or ":" in first or first != first.lower():
        # Uppercase is allowed in domains but never in paths, so "Foo/bar" must be a registry.
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _parse(s: str) -> Reference:
    if not s:
        raise _Invalid("invalid reference format: repository name must have at least one component")
    if any(c.isspace() for c in s):
        raise _Invalid("invalid reference format: must not contain whitespace")
    if _ID_RE.fullmatch(s):  # an image ID, not a name: refuse rather than guess
        raise _Invalid("invalid repository name, cannot specify 64-byte hexadecimal strings")

    remainder, at, digest_part = s.partition("@")
    digest = digest_part if at else None
    if digest is not None and "@" in digest:
        raise _Invalid("invalid reference format: more than one '@'")

    # A tag follows the last ":" unless a "/" comes after it ("localhost:5000/app" has no tag).
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1 :]
    else:
        name, tag = remainder, None
    if not name:
        raise _Invalid("invalid reference format: missing repository name")

    domain, path = _split_domain(name)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    # Check the parts in the order a reader would fix them: lowercase first, as docker does.
    _check_path(path)
    _check_fields(domain, path, tag, digest)
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def parse(s: str) -> Reference:
    """Parse and normalize a reference the way `docker pull` does.

    "ubuntu" → docker.io/library/ubuntu:latest; the "latest" tag is added only when neither a
    tag nor a digest is given. Raises InvalidReference naming the input and the reason.
    """
    if not isinstance(s, str):
        raise InvalidReference(f"invalid reference format: not a string: {s!r}")
    try:
        return _parse(s)
    except _Invalid as e:
        raise InvalidReference(f"{e}: {_quote(s)}") from None


def is_id_like(s: str) -> bool:
    """Whether `s` could name an image by ID (or an ID prefix) rather than by reference.

    Callers try this before `parse`, as docker does, because "abc123" is both a valid name and
    a plausible ID prefix.
    """
    return isinstance(s, str) and _ID_LIKE_RE.fullmatch(s) is not None
