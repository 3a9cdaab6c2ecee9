"""Image reference parsing, checked against the cases of Go's distribution/reference tests.

Docker users type these names every day; whatever `docker pull` accepts must mean the same
image here, and whatever it refuses must be refused with a readable reason.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unionfs.errors import ImgfsError, InvalidReference
from unionfs.reference import (
    DEFAULT_DOMAIN,
    DEFAULT_TAG,
    OFFICIAL_REPO_PREFIX,
    Reference,
    is_id_like,
    parse,
)

F64 = "f" * 64
SHA_F = "sha256:" + F64
SHA_REDIS = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
SHA_BUSYBOX = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
SHA512_F = "sha512:" + "f" * 128
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


def _case(
    text: str,
    domain: str,
    path: str,
    tag: str | None,
    digest: str | None,
    familiar: str,
) -> pytest.ParameterSet:
    return pytest.param(text, domain, path, tag, digest, familiar, id=text[:60])


VALID = [
    # Docker Hub official images: "library/" added, "latest" added when nothing else is given.
    _case("ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
    _case("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "ubuntu:22.04"),
    _case("library/debian", "docker.io", "library/debian", "latest", None, "debian:latest"),
    _case("docker.io/debian", "docker.io", "library/debian", "latest", None, "debian:latest"),
    _case(
        "docker.io/library/debian", "docker.io", "library/debian", "latest", None, "debian:latest"
    ),
    _case("index.docker.io/debian", "docker.io", "library/debian", "latest", None, "debian:latest"),
    _case(
        "index.docker.io/library/debian:11", "docker.io", "library/debian", "11", None, "debian:11"
    ),
    _case(
        "ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
        "latest",
        None,
        "ubuntu-12.04-base:latest",
    ),
    _case("test_com", "docker.io", "library/test_com", "latest", None, "test_com:latest"),
    # Without a "/" a dotted or ported first part is a Hub name plus a tag, as in Go.
    _case("test.com:tag", "docker.io", "library/test.com", "tag", None, "test.com:tag"),
    _case("test.com:5000", "docker.io", "library/test.com", "5000", None, "test.com:5000"),
    _case("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None, "foo_bar.com:8080"),
    _case("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None, "192.168.1.1:latest"),
    _case("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None, "192.168.1.1:5000"),
    _case("localhost:5000", "docker.io", "library/localhost", "5000", None, "localhost:5000"),
    _case(
        "lowercase:Uppercase",
        "docker.io",
        "library/lowercase",
        "Uppercase",
        None,
        "lowercase:Uppercase",
    ),
    _case(
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
    ),
    _case("dbcc1", "docker.io", "library/dbcc1", "latest", None, "dbcc1:latest"),
    _case(HEX64[:63], "docker.io", "library/" + HEX64[:63], "latest", None, HEX64[:63] + ":latest"),
    # A 64-hex name is fine once a domain makes it unambiguous.
    _case("docker.io/" + HEX64, "docker.io", "library/" + HEX64, "latest", None, HEX64 + ":latest"),
    # As in Go only the bare string is refused: with a tag or digest it is a name.
    _case(HEX64 + ":latest", "docker.io", "library/" + HEX64, "latest", None, HEX64 + ":latest"),
    _case(HEX64 + "@" + SHA_F, "docker.io", "library/" + HEX64, None, SHA_F, HEX64 + "@" + SHA_F),
    # Docker Hub user images.
    _case("user/app:v1", "docker.io", "user/app", "v1", None, "user/app:v1"),
    _case("docker/docker", "docker.io", "docker/docker", "latest", None, "docker/docker:latest"),
    _case(
        "docker.io/mcgowan/myapp:latest",
        "docker.io",
        "mcgowan/myapp",
        "latest",
        None,
        "mcgowan/myapp:latest",
    ),
    _case("index.docker.io/fooo/bar", "docker.io", "fooo/bar", "latest", None, "fooo/bar:latest"),
    _case("other/library", "docker.io", "other/library", "latest", None, "other/library:latest"),
    _case("test_com/foo", "docker.io", "test_com/foo", "latest", None, "test_com/foo:latest"),
    _case(
        "docker-rules/docker",
        "docker.io",
        "docker-rules/docker",
        "latest",
        None,
        "docker-rules/docker:latest",
    ),
    _case(
        "docker---rules/docker",
        "docker.io",
        "docker---rules/docker",
        "latest",
        None,
        "docker---rules/docker:latest",
    ),
    _case(
        "dock__er/docker", "docker.io", "dock__er/docker", "latest", None, "dock__er/docker:latest"
    ),
    _case("d/docker", "docker.io", "d/docker", "latest", None, "d/docker:latest"),
    _case("jess/t", "docker.io", "jess/t", "latest", None, "jess/t:latest"),
    _case(
        "foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None, "foo/foo_bar.com:8080"
    ),
    _case("store/foo/bar", "docker.io", "store/foo/bar", "latest", None, "store/foo/bar:latest"),
    # "library/" is only dropped when what is left has a single component.
    _case(
        "library/foo/bar", "docker.io", "library/foo/bar", "latest", None, "library/foo/bar:latest"
    ),
    _case(
        "docker.io/library/foo/bar",
        "docker.io",
        "library/foo/bar",
        "latest",
        None,
        "library/foo/bar:latest",
    ),
    # Hub names whose namespace looks like a registry keep "docker.io/" in the familiar form
    # (Go drops it, and then cannot read its own output back).
    _case("docker.io/a.b/c", "docker.io", "a.b/c", "latest", None, "docker.io/a.b/c:latest"),
    _case(
        "docker.io/localhost/c",
        "docker.io",
        "localhost/c",
        "latest",
        None,
        "docker.io/localhost/c:latest",
    ),
    _case("localhost", "docker.io", "library/localhost", "latest", None, "localhost:latest"),
    # Self-hosted registries, with and without ports.
    _case(
        "registry.example.com/my-private/image",
        "registry.example.com",
        "my-private/image",
        "latest",
        None,
        "registry.example.com/my-private/image:latest",
    ),
    _case("test.com/repo:tag", "test.com", "repo", "tag", None, "test.com/repo:tag"),
    _case("test:5000/repo", "test:5000", "repo", "latest", None, "test:5000/repo:latest"),
    _case("test-com:8080/foo", "test-com:8080", "foo", "latest", None, "test-com:8080/foo:latest"),
    _case(
        "example.com:8000/private/moonbase",
        "example.com:8000",
        "private/moonbase",
        "latest",
        None,
        "example.com:8000/private/moonbase:latest",
    ),
    _case(
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
    ),
    _case(
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
        "b.gcr.io/test.example.com/my-app:test.example.com",
    ),
    _case(
        "xn--n3h.com:18080/foo",
        "xn--n3h.com:18080",
        "foo",
        "latest",
        None,
        "xn--n3h.com:18080/foo:latest",
    ),
    _case(
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000",
        "library/debian",
        "latest",
        None,
        "127.0.0.1:5000/library/debian:latest",
    ),
    _case(
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000",
        "repo",
        "5050",
        None,
        "192.168.1.1:5000/repo:5050",
    ),
    _case(
        "192.168.0.1:8/debian",
        "192.168.0.1:8",
        "debian",
        "latest",
        None,
        "192.168.0.1:8/debian:latest",
    ),
    # Uppercase is allowed in the domain, and makes the first part one.
    _case("Foo/bar", "Foo", "bar", "latest", None, "Foo/bar:latest"),
    _case("DOCKER/docker", "DOCKER", "docker", "latest", None, "DOCKER/docker:latest"),
    _case(
        "Registry.Example.COM:443/app",
        "Registry.Example.COM:443",
        "app",
        "latest",
        None,
        "Registry.Example.COM:443/app:latest",
    ),
    # localhost.
    _case("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
    _case("localhost:5000/x", "localhost:5000", "x", "latest", None, "localhost:5000/x:latest"),
    _case("localhost:5000/a/b:dev", "localhost:5000", "a/b", "dev", None, "localhost:5000/a/b:dev"),
    # IPv6 literals in brackets.
    _case(
        "[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None, "[2001:db8::1]/repo:latest"
    ),
    _case(
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]",
        "repo",
        "tag",
        None,
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
    ),
    _case(
        "[2001:db8::]:5000/repo",
        "[2001:db8::]:5000",
        "repo",
        "latest",
        None,
        "[2001:db8::]:5000/repo:latest",
    ),
    _case("[::1]:5000/repo", "[::1]:5000", "repo", "latest", None, "[::1]:5000/repo:latest"),
    _case(
        "[fc00::1]:5000/docker/docker",
        "[fc00::1]:5000",
        "docker/docker",
        "latest",
        None,
        "[fc00::1]:5000/docker/docker:latest",
    ),
    # Digests: the tag stays None when only a digest is given, and both are kept together.
    _case(
        "redis@" + SHA_REDIS, "docker.io", "library/redis", None, SHA_REDIS, "redis@" + SHA_REDIS
    ),
    _case(
        "dmcgowan/myapp@" + SHA_REDIS,
        "docker.io",
        "dmcgowan/myapp",
        None,
        SHA_REDIS,
        "dmcgowan/myapp@" + SHA_REDIS,
    ),
    _case(
        "busybox:latest@" + SHA_BUSYBOX,
        "docker.io",
        "library/busybox",
        "latest",
        SHA_BUSYBOX,
        "busybox:latest@" + SHA_BUSYBOX,
    ),
    _case("test:5000/repo@" + SHA_F, "test:5000", "repo", None, SHA_F, "test:5000/repo@" + SHA_F),
    _case(
        "test:5000/repo:tag@" + SHA_F,
        "test:5000",
        "repo",
        "tag",
        SHA_F,
        "test:5000/repo:tag@" + SHA_F,
    ),
    _case(
        "[2001:db8::1]:5000/repo:tag@" + SHA_F,
        "[2001:db8::1]:5000",
        "repo",
        "tag",
        SHA_F,
        "[2001:db8::1]:5000/repo:tag@" + SHA_F,
    ),
    _case(
        "xn--7o8h.com/myimage:xn--7o8h.com@" + SHA512_F,
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        SHA512_F,
        "xn--7o8h.com/myimage:xn--7o8h.com@" + SHA512_F,
    ),
    # Tags: any case, up to 128 characters.
    _case("foo:" + "a" * 128, "docker.io", "library/foo", "a" * 128, None, "foo:" + "a" * 128),
    _case("foo:_x.Y-1", "docker.io", "library/foo", "_x.Y-1", None, "foo:_x.Y-1"),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest", "familiar"), VALID)
def test_parse_valid(
    text: str, domain: str, path: str, tag: str | None, digest: str | None, familiar: str
) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.name == f"{domain}/{path}"
    tag_part = f":{tag}" if tag is not None else ""
    digest_part = f"@{digest}" if digest is not None else ""
    assert str(ref) == f"{domain}/{path}{tag_part}{digest_part}"
    assert ref.familiar() == familiar
    short = familiar.partition("@")[0]
    assert ref.familiar_name == (short.removesuffix(f":{tag}") if tag is not None else short)


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest", "familiar"), VALID)
def test_round_trips(
    text: str, domain: str, path: str, tag: str | None, digest: str | None, familiar: str
) -> None:
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref
    assert parse(familiar) == ref


# Go's TestParseRepositoryInfo: every spelling of a repository is the same reference.
@pytest.mark.parametrize(
    ("spellings", "familiar_name", "name"),
    [
        (
            ["fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar"],
            "fooo/bar",
            "docker.io/fooo/bar",
        ),
        (
            [
                "ubuntu",
                "library/ubuntu",
                "docker.io/library/ubuntu",
                "docker.io/ubuntu",
                "index.docker.io/ubuntu",
                "index.docker.io/library/ubuntu",
            ],
            "ubuntu",
            "docker.io/library/ubuntu",
        ),
        (
            ["nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"],
            "nonlibrary/ubuntu",
            "docker.io/nonlibrary/ubuntu",
        ),
        (
            ["127.0.0.1:8000/privatebase"],
            "127.0.0.1:8000/privatebase",
            "127.0.0.1:8000/privatebase",
        ),
        (
            ["example.com/private/moonbase"],
            "example.com/private/moonbase",
            "example.com/private/moonbase",
        ),
        (["FOO/bar"], "FOO/bar", "FOO/bar"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_spellings_of_one_repository(spellings: list[str], familiar_name: str, name: str) -> None:
    refs = {parse(s) for s in spellings}
    assert len(refs) == 1
    (ref,) = refs
    assert ref.name == name
    assert ref.familiar_name == familiar_name


def _bad(text: str, why: str = "") -> pytest.ParameterSet:
    return pytest.param(text, id=(why or text)[:60])


INVALID = [
    # From Go's TestReferenceParse, TestValidateReferenceName and TestValidateRemoteName.
    _bad("", "empty"),
    _bad(":justtag"),
    _bad("@" + SHA_F, "digest only"),
    _bad("repo@sha256:" + "f" * 34, "short sha256"),
    _bad("validname@invaliddigest:" + F64, "unsupported algorithm"),
    _bad("Uppercase:tag"),
    _bad("test:5000/Uppercase/lowercase:tag"),
    _bad("a/" * 128 + "a:tag", "name too long"),
    _bad("aa/asdf$$^/aa"),
    _bad("[2001:db8::1]"),
    _bad("[2001:db8::1]:5000"),
    _bad("[2001:db8::1]:tag"),
    _bad("[fe80::1%eth0]:5000/repo"),
    _bad("[fe80::1%@invalidzone]:5000/repo"),
    _bad("[2001:db8:3:4::192.0.2.33]:5000/debian"),
    _bad("[fc00::1]"),
    _bad("[fc00::1]:5000"),
    _bad("fc00::1:5000/debian"),
    _bad("https://github.com/docker/docker"),
    _bad("docker/Docker"),
    _bad("docker.io/docker/Docker"),
    _bad("-docker"),
    _bad("-foo"),
    _bad("-docker/docker"),
    _bad("-docker.io/docker/docker"),
    _bad("docker-/docker"),
    _bad("-docker-/docker"),
    _bad("docker///docker"),
    _bad("docker.io/docker///docker"),
    _bad("____/____"),
    _bad("_docker/_docker"),
    _bad("dock..er/docker"),
    _bad("dock_.er/docker"),
    _bad("dock-.er/docker"),
    _bad("docker/"),
    _bad(
        "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4 + "/docker",
        "namespace too long",
    ),
    _bad(HEX64, "64 hex name"),
    # Our own: structure, tags, digests, whitespace, non-ASCII.
    _bad("foo:bar:baz"),
    _bad("foo:bar@baz"),
    _bad("a//b"),
    _bad("a/"),
    _bad("/a"),
    _bad("localhost/"),
    _bad("ubuntu:", "empty tag"),
    _bad("ubuntu:-foo", "tag starting with dash"),
    _bad("ubuntu:.foo", "tag starting with dot"),
    _bad("ubuntu:" + "a" * 129, "tag of 129"),
    _bad("ubuntu:caf\u00e9", "non-ascii tag"),
    _bad("ub\u00fcntu", "non-ascii name"),
    _bad("ubuntu@", "empty digest"),
    _bad("busybox@foo", "digest without algorithm"),
    _bad("ubuntu@sha256:" + "F" * 64, "uppercase sha256 hex"),
    _bad("ubuntu@sha256:" + "f" * 65, "65 hex"),
    _bad("ubuntu@sha256:" + "g" * 64, "non-hex digest"),
    _bad("ubuntu@sha256:" + F64 + "@" + SHA_F, "two digests"),
    _bad("ubuntu@md5:" + "f" * 32, "md5"),
    _bad(" ", "space"),
    _bad("\t\n", "whitespace"),
    _bad(" ubuntu", "leading space"),
    _bad("ubuntu ", "trailing space"),
    _bad("ubuntu\n", "trailing newline"),
    _bad("ubuntu:latest\n", "tag with trailing newline"),
    _bad("foo bar"),
    # Stricter than Go on purpose (see the module docstring).
    _bad("foo_bar.com/baz", "underscore domain"),
    _bad("bad..domain/x"),
    _bad("example.com:port/x"),
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text)[:100] in message
    assert isinstance(info.value, ImgfsError)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "repository name must have at least one component"),
        ("Ubuntu", "invalid reference format: repository name must be lowercase"),
        ("docker/Docker:latest", "invalid reference format: repository name must be lowercase"),
        ("ubuntu:" + "a" * 129, "is too long (max 128)"),
        ("ubuntu@sha256:abc", "invalid digest"),
        ("ubuntu@sha256:" + "F" * 64, "64 lowercase hex"),
        ("ubuntu@md5:" + "f" * 32, "unsupported digest algorithm"),
        (HEX64, "cannot specify 64-byte hexadecimal strings"),
        ("foo:bar:baz", "invalid reference format"),
        ("a//b", "invalid reference format: empty path component"),
        ("example.com/" + "a" * 250, "repository name too long"),
        ("foo bar", "whitespace"),
        ("foo_bar.com/baz", "invalid registry domain"),
    ],
    ids=lambda v: v[:40],
)
def test_error_reasons(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=re.escape(reason)):
        parse(text)


def test_long_input_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidReference) as info:
        parse("x" * 5000)
    assert len(str(info.value)) < 300


def test_not_a_string() -> None:
    with pytest.raises(InvalidReference):
        parse(None)  # type: ignore[arg-type]


def test_name_length_limit_counts_the_normalized_name() -> None:
    # "docker.io/" is 10 characters: 245 more reach the limit exactly.
    at_limit = "u/" + "a" * 243
    assert len(parse(at_limit).name) == 255
    with pytest.raises(InvalidReference, match="too long"):
        parse(at_limit + "a")
    assert len(parse("example.com/" + "a" * 243).name) == 255
    with pytest.raises(InvalidReference, match="too long"):
        parse("example.com/" + "a" * 244)


def test_constants() -> None:
    assert (DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX, DEFAULT_TAG) == (
        "docker.io",
        "library/",
        "latest",
    )


def test_with_tag() -> None:
    ref = parse("busybox")
    retagged = ref.with_tag("1.36")
    assert str(retagged) == "docker.io/library/busybox:1.36"
    assert retagged.familiar() == "busybox:1.36"
    assert str(ref) == "docker.io/library/busybox:latest"  # frozen: the original is unchanged
    assert parse("test.com:8000/foo").with_tag("TAG5").familiar() == "test.com:8000/foo:TAG5"
    # Go's WithTag keeps a digest.
    pinned = parse("redis@" + SHA_REDIS).with_tag("7")
    assert (pinned.tag, pinned.digest) == ("7", SHA_REDIS)


@pytest.mark.parametrize("tag", ["-foo", "", "a" * 129, "a:b", "a/b", "caf\u00e9"])
def test_with_tag_refuses_bad_tags(tag: str) -> None:
    with pytest.raises(InvalidReference):
        parse("busybox").with_tag(tag)


def test_reference_is_frozen_and_hashable() -> None:
    ref = parse("ubuntu")
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
    assert {ref, parse("docker.io/library/ubuntu:latest")} == {ref}


def test_constructor_accepts_normalized_fields() -> None:
    ref = Reference(domain="docker.io", path="library/ubuntu", tag="latest", digest=None)
    assert ref == parse("ubuntu")


@pytest.mark.parametrize(
    ("domain", "path", "tag", "digest"),
    [
        ("docker.io", "ubuntu", "latest", None),  # missing library/
        ("index.docker.io", "library/ubuntu", "latest", None),  # legacy domain
        ("docker.io", "library/Ubuntu", "latest", None),
        ("bad_domain", "x", "latest", None),
        ("", "x", "latest", None),
        ("docker.io", "library/ubuntu", None, None),  # neither tag nor digest
        ("docker.io", "library/ubuntu", "-x", None),
        ("docker.io", "library/ubuntu", None, "sha256:abc"),
        ("example.com", "a//b", "latest", None),
    ],
)
def test_constructor_refuses_unnormalized_fields(
    domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    with pytest.raises(InvalidReference):
        Reference(domain=domain, path=path, tag=tag, digest=digest)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", True),
        ("abc123", True),
        (HEX64, True),
        ("sha256:" + HEX64, True),
        ("sha256:abc", True),
        (HEX64 + "0", False),
        ("sha256:", False),
        ("", False),
        ("ABC123", False),
        ("sha512:abc", False),
        ("xyz", False),
        ("ubuntu", False),
        ("abc\n", False),
        ("sha256:" + HEX64 + "0", False),
    ],
    ids=lambda v: str(v)[:20],
)
def test_is_id_like(text: str, expected: bool) -> None:
    assert is_id_like(text) is expected


def test_id_like_strings_may_also_be_names() -> None:
    # Short hex is both: callers look for an image ID first, as docker does.
    assert is_id_like("dbcc1")
    assert parse("dbcc1").familiar_name == "dbcc1"
    assert is_id_like(HEX64)
    with pytest.raises(InvalidReference):
        parse(HEX64)


# --- properties ----------------------------------------------------------------------------

_alnum = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)


@st.composite
def _path_component(draw: st.DrawFn, dots: bool = True) -> str:
    separators = [".", "_", "__", "-", "--", "---"] if dots else ["_", "__", "-", "--"]
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(st.sampled_from(separators)), draw(_alnum)]
    return "".join(parts)


_domain_component = st.from_regex(
    r"[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]{0,6}[a-zA-Z0-9]", fullmatch=True
)
_port = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))
_ipv6 = st.lists(st.from_regex(r"[0-9a-fA-F]{0,4}", fullmatch=True), min_size=2, max_size=8).map(
    lambda groups: "[" + ":".join(groups) + "]"
)
_domain = st.one_of(
    st.lists(_domain_component, min_size=2, max_size=4).map(".".join),  # has a "."
    st.tuples(_domain_component, st.integers(0, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.from_regex(r"[A-Z][a-zA-Z0-9]{0,5}", fullmatch=True),  # uppercase makes a domain
    st.just("localhost"),
    st.sampled_from(["docker.io", "index.docker.io"]),
    _ipv6,
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True) | st.just("x" * 128)
_digest = st.one_of(
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda h: f"sha256:{h}"),
    st.from_regex(r"[0-9a-f]{128}", fullmatch=True).map(lambda h: f"sha512:{h}"),
)


@st.composite
def _reference_text(draw: st.DrawFn) -> tuple[str, str | None, list[str], str | None, str | None]:
    """A valid reference string, with the parts it was built from."""
    domain = draw(st.none() | _domain)
    if domain is not None:
        domain += draw(_port) if domain[-1] != "]" and ":" not in domain else ""
    n = draw(st.integers(1, 3))
    # With no domain a dotted first component would be read as one; keep it a namespace.
    components = [draw(_path_component(dots=domain is not None or n == 1))]
    components += [draw(_path_component()) for _ in range(n - 1)]
    tag = draw(st.none() | _tag)
    digest = draw(st.none() | _digest)
    text = "/".join(([domain] if domain is not None else []) + components)
    text += (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest is not None else "")
    return text, domain, components, tag, digest


@given(_reference_text())
def test_property_generated_references_round_trip(
    generated: tuple[str, str | None, list[str], str | None, str | None],
) -> None:
    text, domain, components, tag, digest = generated
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)
    assert parse(ref.familiar()) == ref
    # The parts land where they were put.
    hub = domain in (None, "docker.io", "index.docker.io")
    assert ref.domain == ("docker.io" if hub else domain)
    path = "/".join(components)
    assert ref.path == (OFFICIAL_REPO_PREFIX + path if hub and len(components) == 1 else path)
    assert ref.digest == digest
    assert ref.tag == (tag if tag is not None or digest is not None else DEFAULT_TAG)


@given(st.text(max_size=60) | st.text(alphabet="abAB09:/@._-[]", max_size=40))
def test_property_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference as e:
        assert "\n" not in str(e)
        return
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref
