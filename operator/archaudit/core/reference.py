"""Image references read exactly as the kubelet and containerd's CRI read them.

A pod's `image:` string decides which registry archaudit talks to and which manifest it judges, so it
must be parsed by the same grammar (distribution/reference) and normalized the same way (containerd's
`ParseDockerRef`): `busybox` is `docker.io/library/busybox:latest`; `name:tag@digest` pulls the digest.
Anything that grammar refuses raises `InvalidReference` saying why: a clear error, never a guess.

This module is pure: it contains no I/O code whatsoever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from archaudit.core.errors import InvalidReference

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "ImageReference",
    "InvalidReference",
    "digest_problem",
    "is_digest",
    "parse",
]

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_PATH_LENGTH = 255

# distribution/reference regexp.go, spelled in ASCII (Go's \w is ASCII; Python's is not).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REF_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(rf"((?:{_DOMAIN}/)?{_PATH})(?::({_TAG}))?(?:@({_REF_DIGEST}))?")
_NAME = re.compile(rf"(?:({_DOMAIN})/)?({_PATH})")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_TAG_ONLY = re.compile(_TAG)
_PATH_ONLY = re.compile(_PATH)

# opencontainers/go-digest: the general grammar, and the encodings of the algorithms it implements.
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_MIN_ENCODED = 32


@dataclass(frozen=True, eq=False)
class ImageReference:
    """A parsed, normalized image reference.

    `tag` is the tag as written ("latest" when neither tag nor digest was given, None when only a digest
    was). With both, the runtime pulls the digest and ignores the tag: `str()` drops it, and so do `==`
    and `hash()` (two references are equal when they pull the same thing). Use `locator` for what to
    fetch, never `tag` alone.
    """

    registry: str  # "docker.io", "ghcr.io", "localhost:5000"
    repository: str  # "library/busybox"
    tag: str | None = None
    digest: str | None = None  # "sha256:<64 hex>"

    def _identity(self) -> tuple[str, str, str]:
        return self.registry, self.repository, self.locator

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageReference):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __str__(self) -> str:
        """The normalized form: docker.io/library/busybox:latest, or ...@sha256:..."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    @property
    def name(self) -> str:
        """registry/repository, e.g. docker.io/library/busybox."""
        return f"{self.registry}/{self.repository}"

    @property
    def locator(self) -> str:
        """What a registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short form people write: busybox:latest, bitnami/redis@sha256:..., ghcr.io/o/r:1."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository.removeprefix(OFFICIAL_PREFIX)
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag or DEFAULT_TAG}"

    def with_digest(self, digest: str) -> ImageReference:
        """The same repository pinned to `digest` (the tag is kept for display)."""
        problem = digest_problem(digest)
        if problem:
            raise InvalidReference(f"digest {digest!r}: {problem}")
        return replace(self, digest=digest)


def parse(text: str) -> ImageReference:
    """Parse `text` as containerd's CRI does; raise InvalidReference saying why it is not a reference."""
    if not text:
        raise InvalidReference("image reference is empty")
    if _IDENTIFIER.fullmatch(text):
        raise InvalidReference(
            f"invalid repository name ({text}): a 64-character hexadecimal string is an image ID, "
            "not a name; pin a digest as name@sha256:<hex>"
        )
    domain, remainder = _split_docker_domain(text)
    # Go checks the text before the first ':'; stopping at '@' too leaves a digest's case to its own check
    remote_name = remainder.split("@", 1)[0].split(":", 1)[0]
    if remote_name.lower() != remote_name:
        raise InvalidReference(
            f"invalid reference {_show(text)}: repository name {_show(remote_name)} must be lowercase"
        )

    full = f"{domain}/{remainder}"
    match = _REFERENCE.fullmatch(full)
    if match is None:
        raise InvalidReference(f"invalid reference {_show(text)}: {_diagnose(full)}")
    name, tag, digest = match.group(1), match.group(2), match.group(3)

    parts = _NAME.fullmatch(name)
    assert parts is not None  # the name group matched the same grammar
    registry, path = parts.group(1) or "", parts.group(2)
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidReference(
            f"invalid reference {_show(text)}: repository path is {len(path)} characters, "
            f"the limit is {MAX_PATH_LENGTH}"
        )
    if not registry:
        # Go accepts a first component that is no valid host (`a_b.com/x`) as part of the path; the
        # runtime then dials that component as the host anyway.
        registry, path = path.split("/", 1)
    if digest is not None:
        problem = digest_problem(digest)
        if problem:
            raise InvalidReference(f"invalid reference {_show(text)}: digest {digest}: {problem}")
    elif tag is None:
        tag = DEFAULT_TAG
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)


def _show(text: str, limit: int = 120) -> str:
    """`text` quoted for an error message, shortened: references come from users and can be huge."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _split_docker_domain(text: str) -> tuple[str, str]:
    """docker/normalize.go splitDockerDomain: is the first component a registry, or a Docker Hub path?"""
    first, slash, rest = text.partition("/")
    is_registry = bool(slash) and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    domain, remainder = (first, rest) if is_registry else (DEFAULT_REGISTRY, text)
    if domain == LEGACY_DEFAULT_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def _diagnose(full: str) -> str:
    """Say which part of a refused `registry/path[:tag][@digest]` is wrong."""
    rest, at, digest = full.partition("@")
    colon = rest.find(":", rest.rfind("/") + 1)
    name, tag = (rest[:colon], rest[colon + 1 :]) if colon != -1 else (rest, None)
    domain, _, path = name.partition("/")
    domain_ok = re.fullmatch(_DOMAIN, domain) is not None
    if not domain_ok and not _PATH_ONLY.fullmatch(name):
        return f"registry host {_show(domain)} is not a host name[:port]"
    if domain_ok and not _PATH_ONLY.fullmatch(path):
        return (
            f"repository path {_show(path)} must be lowercase letters and digits, separated by '/', '.', "
            "'_', '__' or dashes, each part starting and ending with a letter or digit"
        )
    if tag is not None and not _TAG_ONLY.fullmatch(tag):
        return (
            f"tag {_show(tag)} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        )
    if at:
        problem = digest_problem(digest) or "a digest inside a reference is algorithm:hex, 32+ hex digits"
        return f"digest {_show(digest)}: {problem}"
    return "not of the form [registry/]repository[:tag][@digest]"


def digest_problem(digest: str) -> str | None:
    """Why `digest` is not a valid content digest, or None when it is (go-digest's rules).

    sha256/sha384/sha512 need exactly 64/96/128 lowercase hex characters; other algorithms follow the
    general grammar `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}`.
    """
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not algorithm or not encoded:
        return "expected algorithm:encoded, e.g. sha256:<64 hex>"
    length = _HEX_LENGTHS.get(algorithm)
    if length is not None:
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            return f"{algorithm} needs exactly {length} lowercase hexadecimal characters"
        return None
    if not _DIGEST.fullmatch(digest):
        return "algorithm must be lowercase letters/digits joined by . + _ - and encoded [a-zA-Z0-9=_-]"
    if len(encoded) < _MIN_ENCODED:
        return f"encoded part is shorter than {_MIN_ENCODED} characters"
    return None


def is_digest(text: str) -> bool:
    """Whether `text` is a valid content digest (see `digest_problem`)."""
    return digest_problem(text) is None
