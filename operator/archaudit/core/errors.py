"""The exception tree, drawn once so callers know what to catch.

    ArchauditError
    ├── InvalidReference (ValueError)   image reference text that the grammar refuses
    ├── ManifestError (ValueError)      a registry document we cannot read as a manifest/index/config
    ├── CredentialsError (ValueError)   a docker config, pull secret or registries.yaml `auth` we cannot
    │                                   read (also importable from archaudit.core.credentials)
    ├── ResolutionError                 an image could not be resolved to its platforms;
    │   │                               `.reason` says why in one word users can alert on
    │   └── DeadlineExpiredError        the caller's deadline passed while the registry was still
    │                                   being asked (the answer may yet come: placement waits for it)
    └── UsageError                      bad input on the command line or in a file it names
                                        (the CLI prints it on one line and exits 2)

The ValueError bases let callers that only validate input catch `ValueError`; code that talks to
registries catches `ResolutionError`; the CLI catches `ArchauditError`.

Messages are for people: they say what was wrong and, where possible, what to do.
They never carry credentials.
"""

from __future__ import annotations

import enum

__all__ = [
    "ArchauditError",
    "CredentialsError",
    "DeadlineExpiredError",
    "InvalidReference",
    "ManifestError",
    "Reason",
    "ResolutionError",
    "UsageError",
]


class ArchauditError(Exception):
    """Base of every error archaudit raises on purpose."""


class InvalidReference(ArchauditError, ValueError):  # noqa: N818 (name fixed by DESIGN.md's contract)
    """An image reference that distribution/reference (and so the kubelet) would refuse."""


class ManifestError(ArchauditError, ValueError):
    """A document that is not a manifest, index or image config we understand."""


class CredentialsError(ArchauditError, ValueError):
    """A docker config or pull secret we cannot read. The message never contains secret material."""


class UsageError(ArchauditError):
    """Bad input on the command line or in a file it names: the CLI exits 2 with this message."""


class Reason(enum.StrEnum):
    """Why an image is unresolved. Stable strings: they appear in ImageAudits and metric labels."""

    AUTH = "auth"  # 401/403 after trying every credential
    NOT_FOUND = "not-found"  # 404 for the repository, tag or digest
    RATE_LIMITED = "rate-limited"  # 429 (Docker Hub pull limits)
    TIMEOUT = "timeout"  # the per-image deadline passed
    REFUSED_HOST = "refused-host"  # the host guard refused the registry host
    UNREACHABLE = "unreachable"  # DNS, connection or TLS failure
    REGISTRY_ERROR = "registry-error"  # 5xx, redirect loop, protocol violation
    INVALID_MANIFEST = "invalid-manifest"  # unparsable, oversized or digest mismatch
    INVALID_REFERENCE = "invalid-reference"


class ResolutionError(ArchauditError):
    """An image could not be resolved; `reason` is one of `Reason`, `message` is for people."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


class DeadlineExpiredError(ResolutionError):
    """The caller's deadline passed while the registry was still being asked: the answer may yet come
    (placement gates the pod and waits for it), unlike a failure the registry gave or the cache holds."""
