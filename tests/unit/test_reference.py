"""Image references as distribution/reference and containerd's ParseDockerRef read them (spec/registry.md)."""

from __future__ import annotations

import pytest

from archaudit.core.errors import InvalidReference
from archaudit.core.reference import ImageReference, digest_problem, is_digest, parse

SHA = "sha256:" + "0123456789abcdef" * 4
SHA_B = "sha256:" + "b" * 64
SHA512 = "sha512:" + "c" * 128


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "normalized"),
    [
        # Docker Hub: one-component paths get library/, index.docker.io is docker.io, :latest is added
        ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36"),
        (
            "library/busybox",
            "docker.io",
            "library/busybox",
            "latest",
            None,
            "docker.io/library/busybox:latest",
        ),
        ("bitnami/redis:7.2", "docker.io", "bitnami/redis", "7.2", None, "docker.io/bitnami/redis:7.2"),
        (
            "docker.io/busybox",
            "docker.io",
            "library/busybox",
            "latest",
            None,
            "docker.io/library/busybox:latest",
        ),
        (
            "index.docker.io/busybox",
            "docker.io",
            "library/busybox",
            "latest",
            None,
            "docker.io/library/busybox:latest",
        ),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar", "latest", None, "docker.io/foo/bar:latest"),
        (
            "docker.io/library/python:3",
            "docker.io",
            "library/python",
            "3",
            None,
            "docker.io/library/python:3",
        ),
        ("a/b/c/d", "docker.io", "a/b/c/d", "latest", None, "docker.io/a/b/c/d:latest"),
        # the first component is a registry only with '.', ':', localhost or upper case
        ("ghcr.io/owner/app:v1.2.3", "ghcr.io", "owner/app", "v1.2.3", None, "ghcr.io/owner/app:v1.2.3"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None, "localhost:5000/app:dev"),
        ("registry:5000/app", "registry:5000", "app", "latest", None, "registry:5000/app:latest"),
        ("Registry/app", "Registry", "app", "latest", None, "Registry/app:latest"),
        ("localhostx/app", "docker.io", "localhostx/app", "latest", None, "docker.io/localhostx/app:latest"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", None, "127.0.0.1:5000/a/b:latest"),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None, "[::1]:5000/app:latest"),
        ("[fe80::1]/app", "[fe80::1]", "app", "latest", None, "[fe80::1]/app:latest"),
        (
            "docker.io.example.com/x",
            "docker.io.example.com",
            "x",
            "latest",
            None,
            "docker.io.example.com/x:latest",
        ),
        # no slash: a Docker Hub name, so foo_bar.com:8080 is repository foo_bar.com, tag 8080
        (
            "foo_bar.com:8080",
            "docker.io",
            "library/foo_bar.com",
            "8080",
            None,
            "docker.io/library/foo_bar.com:8080",
        ),
        (
            "example.com",
            "docker.io",
            "library/example.com",
            "latest",
            None,
            "docker.io/library/example.com:latest",
        ),
        # separators in path components
        ("a.b_c__d-e---f", "docker.io", "library/a.b_c__d-e---f", "latest", None, None),
        ("quay.io/a-b/c.d_e", "quay.io", "a-b/c.d_e", "latest", None, "quay.io/a-b/c.d_e:latest"),
        # tags
        ("busybox:Latest_1.0-rc.1", "docker.io", "library/busybox", "Latest_1.0-rc.1", None, None),
        ("busybox:_x", "docker.io", "library/busybox", "_x", None, None),
        ("busybox:" + "t" * 128, "docker.io", "library/busybox", "t" * 128, None, None),
        # digests: the digest is pulled and the tag dropped from the normalized form (kept in .tag)
        (f"busybox@{SHA}", "docker.io", "library/busybox", None, SHA, f"docker.io/library/busybox@{SHA}"),
        (
            f"busybox:1.36@{SHA}",
            "docker.io",
            "library/busybox",
            "1.36",
            SHA,
            f"docker.io/library/busybox@{SHA}",
        ),
        (f"ghcr.io/o/r:v1@{SHA}", "ghcr.io", "o/r", "v1", SHA, f"ghcr.io/o/r@{SHA}"),
        (
            f"localhost:5000/app@{SHA512}",
            "localhost:5000",
            "app",
            None,
            SHA512,
            f"localhost:5000/app@{SHA512}",
        ),
        (f"app@sha384:{'d' * 96}", "docker.io", "library/app", None, f"sha384:{'d' * 96}", None),
        # other algorithms: the general grammar, hex encoded in a reference, 32+ characters
        (f"app@blake3:{'e' * 64}", "docker.io", "library/app", None, f"blake3:{'e' * 64}", None),
        (f"app@multi+hash:{'E' * 32}", "docker.io", "library/app", None, f"multi+hash:{'E' * 32}", None),
        # a first component that is no valid host (underscore) but a valid path: Go reads it as path, and
        # the runtime dials it as host
        ("a_b.com/c", "a_b.com", "c", "latest", None, "a_b.com/c:latest"),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None, normalized: str | None
) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    if normalized is not None:
        assert str(ref) == normalized
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("a" * 64, "hexadecimal string is an image ID"),
        ("0123456789abcdef" * 4, "image ID"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("ghcr.io/Owner/app:v1", "must be lowercase"),
        ("busybox:", "tag ''"),
        ("busybox:-x", "tag '-x'"),
        ("busybox:.x", "tag '.x'"),
        ("busybox:" + "t" * 129, "tag"),
        ("busybox:a/b", "registry host 'busybox:a'"),  # Go reads busybox:a as a host
        ("busybox:ta g", "tag"),
        ("busybox:tä", "tag"),  # Go's \w is ASCII
        ("busy box", "repository path"),
        ("-busybox", "repository path"),
        ("busybox-", "repository path"),
        ("a//b", "repository path"),
        ("a/b/", "repository path"),
        ("ghcr.io/", "repository path"),
        ("a...b", "repository path"),
        ("a._b", "repository path"),
        ("a___b", "repository path"),
        ("a..b/c", "registry host"),
        ("-a.com/c", "registry host"),
        ("a.com:/c", "registry host"),
        ("a.com:x/c", "registry host"),
        (":tag", "repository path"),
        ("@" + SHA, "repository path"),
        ("busybox@sha256:abc", "sha256 needs exactly 64"),
        ("busybox@sha256:" + "A" * 64, "lowercase hexadecimal"),
        ("busybox@sha256:" + "a" * 65, "64"),
        ("busybox@sha512:" + "a" * 64, "128"),
        ("busybox@SHA256:" + "a" * 64, "algorithm must be lowercase"),
        ("busybox@foo:" + "a" * 31, "digest"),
        ("busybox@sha256", "digest"),
        ("busybox@", "digest"),
        ("busybox@sha256:" + "g" * 64, "digest"),
        (f"busybox@{SHA}@{SHA}", "digest"),
        ("x/" + "a" * 254, "255"),
        ("ghcr.io/" + "/".join(["abcdefghi"] * 26), "259 characters, the limit is 255"),
        ("busybox\n", "repository path|tag"),
        ("busybox:latest\n", "tag"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why):
        parse(text)


def test_invalid_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        parse("UPPER")


def test_path_of_exactly_255_characters_is_accepted() -> None:
    ref = parse("x/" + "a" * 253)
    assert len(ref.repository) == 255


def test_long_input_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidReference) as caught:
        parse("x/" + "A" * 5000)
    assert len(str(caught.value)) < 400


def test_references_are_equal_when_they_pull_the_same_thing() -> None:
    assert parse(f"busybox:1.36@{SHA}") == parse(f"docker.io/library/busybox@{SHA}")
    assert hash(parse(f"busybox:1.36@{SHA}")) == hash(parse(f"busybox@{SHA}"))
    assert parse("busybox") == parse("docker.io/library/busybox:latest")
    assert parse("busybox:1") != parse("busybox:2")
    assert parse(f"busybox@{SHA}") != parse(f"busybox@{SHA_B}")


@pytest.mark.parametrize(
    ("text", "name", "locator", "familiar"),
    [
        ("busybox", "docker.io/library/busybox", "latest", "busybox:latest"),
        ("bitnami/redis:7", "docker.io/bitnami/redis", "7", "bitnami/redis:7"),
        (f"busybox:1@{SHA}", "docker.io/library/busybox", SHA, f"busybox@{SHA}"),
        ("ghcr.io/o/r:v1", "ghcr.io/o/r", "v1", "ghcr.io/o/r:v1"),
        ("localhost:5000/library/x", "localhost:5000/library/x", "latest", "localhost:5000/library/x:latest"),
    ],
)
def test_name_locator_familiar(text: str, name: str, locator: str, familiar: str) -> None:
    ref = parse(text)
    assert (ref.name, ref.locator, ref.familiar) == (name, locator, familiar)
    assert parse(ref.familiar) == ref


def test_with_digest_pins_and_keeps_the_tag_for_display() -> None:
    pinned = parse("ghcr.io/o/r:v1").with_digest(SHA)
    assert str(pinned) == f"ghcr.io/o/r@{SHA}"
    assert pinned.tag == "v1"
    with pytest.raises(InvalidReference, match="64"):
        parse("ghcr.io/o/r:v1").with_digest("sha256:abc")


def test_a_reference_built_by_hand_prints_like_a_parsed_one() -> None:
    ref = ImageReference(registry="docker.io", repository="library/busybox")
    assert str(ref) == "docker.io/library/busybox:latest"
    assert parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("digest", "valid"),
    [
        (SHA, True),
        (SHA512, True),
        ("sha384:" + "1" * 96, True),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "A" * 64, False),
        ("sha256:", False),
        (":" + "a" * 64, False),
        ("sha256" + "a" * 64, False),
        ("blake3:" + "z" * 32, True),  # general grammar outside references: [a-zA-Z0-9=_-]
        ("blake3:" + "z" * 31, False),
        ("a.b+c_d-e:" + "=" * 40, True),
        ("Blake3:" + "a" * 32, False),
        ("a..b:" + "a" * 32, False),
        ("", False),
    ],
)
def test_digest_grammar(digest: str, valid: bool) -> None:
    assert is_digest(digest) is valid
    assert (digest_problem(digest) is None) is valid
