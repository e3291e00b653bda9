"""Registry documents -> the platforms an image offers and the manifest a node would pull.

Registries answer with four kinds of manifest documents (OCI index, Docker manifest list, OCI or Docker
image manifest), old schema1 manifests, and image config blobs. They do not always say truthfully which
(some ignore Accept, some omit the optional OCI `mediaType`), so the body is the authority: the
Content-Type is only a hint. Every document is validated into small frozen types, and an image resolves
to one `ImagePlatforms`, the result type the resolver, policy, CLI and auditor share.

Spec: spec/registry.md "Manifests", spec/platforms.md §5-§6. This module is pure: it contains no I/O
code whatsoever; the resolver fetches, this module reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from archaudit.core.errors import ManifestError
from archaudit.core.platforms import Fit, Platform, fit
from archaudit.core.reference import digest_problem

__all__ = [
    "ACCEPT",
    "MAX_MANIFEST_BYTES",
    "MEDIA_DOCKER_CONFIG",
    "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_MANIFEST",
    "MEDIA_OCI_CONFIG",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_MANIFEST",
    "MEDIA_SCHEMA1",
    "MEDIA_SCHEMA1_SIGNED",
    "Descriptor",
    "Document",
    "ImageManifest",
    "ImagePlatforms",
    "Index",
    "PlatformEntry",
    "Schema1Manifest",
    "parse_document",
    "platform_from_config",
    "platforms_of_index",
    "platforms_of_manifest",
    "sha256_digest",
    "verify_digest",
]

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({MEDIA_SCHEMA1, MEDIA_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG})

# Ask for every type: a registry asked without the list type silently serves the amd64 child (the
# "amd64-only" false alarm), and one asked without the OCI index type answers 404.
ACCEPT = ", ".join(
    [
        MEDIA_OCI_INDEX,
        MEDIA_DOCKER_LIST,
        MEDIA_OCI_MANIFEST,
        MEDIA_DOCKER_MANIFEST,
        MEDIA_SCHEMA1_SIGNED,
        MEDIA_SCHEMA1,
        "*/*",
    ]
)

MAX_MANIFEST_BYTES = 4_393_216  # containerd's cap per manifest
MAX_NESTING = 8  # index-in-index depth; real images use one level at most

ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"  # buildkit attestation manifests
_UNKNOWN = "unknown"
_NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: an index entry, a manifest's config or one of its layers."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=lambda: _NO_ANNOTATIONS, hash=False)
    artifact_type: str = ""

    @property
    def is_attestation(self) -> bool:
        """A buildkit attestation (or other reference) entry: not a platform the image supports."""
        p = self.platform
        unknown = p is not None and p.os == _UNKNOWN and p.architecture == _UNKNOWN
        return unknown or ANNOTATION_REFERENCE_TYPE in self.annotations

    @property
    def is_index(self) -> bool:
        """Whether the entry points to another index (nested index)."""
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class Index:
    """A Docker manifest list or an OCI image index."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    def image_entries(self) -> tuple[Descriptor, ...]:
        """The entries that are images (attestations left out), in index order."""
        return tuple(d for d in self.manifests if not d.is_attestation)

    def nested_index_digests(self) -> tuple[str, ...]:
        """Digests of image entries that are themselves indexes: the resolver fetches these for `nested`."""
        return tuple(d.digest for d in self.image_entries() if d.is_index)


@dataclass(frozen=True)
class ImageManifest:
    """A Docker v2 or OCI image manifest (or an OCI artifact using the manifest format)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def is_image(self) -> bool:
        """False for artifacts (Helm charts, signatures...): their config is not an image config."""
        return self.config.media_type in CONFIG_TYPES


@dataclass(frozen=True)
class Schema1Manifest:
    """A legacy schema1 manifest: it names only the architecture (the os is linux)."""

    media_type: str
    architecture: str

    def platform(self) -> Platform:
        """linux/<architecture>."""
        return Platform("linux", self.architecture)


Document = Index | ImageManifest | Schema1Manifest
_NO_NESTED: Mapping[str, Index] = MappingProxyType({})


# ---------------------------------------------------------------------------------------------------------
# Reading documents


def parse_document(body: bytes, content_type: str | None = None) -> Document:
    """Read a manifest-endpoint response body as an index, image manifest or schema1 manifest.

    The type comes from the body (`mediaType`; else `schemaVersion` 1 -> schema1; else a `manifests` key
    -> index, a `config` key -> manifest); `content_type` only picks between Docker and OCI names when the
    body does not say. Raises ManifestError for oversized, non-JSON, wrongly shaped or unknown documents.
    """
    document = _json_object(body, "manifest", limit=MAX_MANIFEST_BYTES)
    media_type = _media_type_of(document, _mime(content_type))
    if media_type in INDEX_TYPES:
        return _index(document, media_type)
    if media_type in MANIFEST_TYPES:
        return _image_manifest(document, media_type)
    architecture = _string(document, "architecture", "schema1 manifest")
    return Schema1Manifest(media_type=media_type, architecture=architecture)


def _media_type_of(document: Mapping[str, Any], hinted: str) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("manifest field 'mediaType' is not a string")
    schema_version = document.get("schemaVersion")
    if declared:
        if declared not in INDEX_TYPES | MANIFEST_TYPES | SCHEMA1_TYPES:
            raise ManifestError(f"unsupported manifest media type {declared!r}")
        return declared
    if schema_version == 1:
        if hinted in SCHEMA1_TYPES:
            return hinted
        return MEDIA_SCHEMA1_SIGNED if "signatures" in document else MEDIA_SCHEMA1
    if "manifests" in document:
        return hinted if hinted in INDEX_TYPES else MEDIA_OCI_INDEX
    if "config" in document:
        return hinted if hinted in MANIFEST_TYPES else MEDIA_OCI_MANIFEST
    raise ManifestError(
        "document is neither an index (no 'manifests'), an image manifest (no 'config') nor a schema1 "
        f"manifest (schemaVersion {schema_version!r}); Content-Type was {hinted or 'absent'}"
    )


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _index(document: Mapping[str, Any], media_type: str) -> Index:
    if "manifests" not in document:
        raise ManifestError(f"{media_type} document has no 'manifests' list")
    entries = document["manifests"]
    if entries is None:
        entries = []  # containers/image reads a null list as empty
    if not isinstance(entries, list):
        raise ManifestError(f"index field 'manifests' is a {type(entries).__name__}, not a list")
    return Index(
        media_type=media_type,
        manifests=tuple(_descriptor(e, f"index entry {n}", strict=True) for n, e in enumerate(entries)),
    )


def _image_manifest(document: Mapping[str, Any], media_type: str) -> ImageManifest:
    config = document.get("config")
    if not isinstance(config, dict):
        raise ManifestError("image manifest has no 'config' object")
    layers = document.get("layers") or []
    if not isinstance(layers, list):
        raise ManifestError(f"manifest field 'layers' is a {type(layers).__name__}, not a list")
    config_descriptor = _descriptor(config, "manifest config", strict=False)
    if config_descriptor.media_type in CONFIG_TYPES:
        _check_digest(config_descriptor.digest, "manifest config")  # fetched next: must be a real digest
    return ImageManifest(
        media_type=media_type,
        config=config_descriptor,
        layers=tuple(_descriptor(layer, f"layer {n}", strict=False) for n, layer in enumerate(layers)),
    )


def _descriptor(value: object, what: str, *, strict: bool) -> Descriptor:
    """A descriptor; `strict` ones are fetched by digest, so their digest must be valid."""
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is a {type(value).__name__}, not an object")
    digest = _string(value, "digest", what)
    if strict:
        _check_digest(digest, what)
    size = value.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"{what}: 'size' must be a non-negative integer")
    platform = value.get("platform")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ManifestError(f"{what}: 'annotations' must map strings to strings")
    return Descriptor(
        media_type=_string(value, "mediaType", what, default=""),
        digest=digest,
        size=size,
        platform=None if platform is None else _platform(platform, f"{what} platform"),
        annotations=MappingProxyType(dict(annotations)) if annotations else _NO_ANNOTATIONS,
        artifact_type=_string(value, "artifactType", what, default=""),
    )


def _check_digest(digest: str, what: str) -> None:
    problem = digest_problem(digest)
    if problem:
        raise ManifestError(f"{what}: digest {digest[:80]!r} is invalid: {problem}")


def _platform(value: object, what: str) -> Platform:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is a {type(value).__name__}, not an object")
    features = value.get("os.features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ManifestError(f"{what}: 'os.features' must be a list of strings")
    return Platform(
        os=_string(value, "os", what, default=""),
        architecture=_string(value, "architecture", what, default=""),
        variant=_string(value, "variant", what, default=""),
        os_version=_string(value, "os.version", what, default=""),
        os_features=tuple(features),
    )


_REQUIRED = object()


def _string(value: Mapping[str, Any], key: str, what: str, *, default: object = _REQUIRED) -> str:
    found = value.get(key)
    if found is None:
        if isinstance(default, str):
            return default
        raise ManifestError(f"{what} has no '{key}'")
    if not isinstance(found, str):
        raise ManifestError(f"{what}: '{key}' is a {type(found).__name__}, not a string")
    return found


def _json_object(body: bytes, what: str, *, limit: int | None = None) -> dict[str, Any]:
    if limit is not None and len(body) > limit:
        raise ManifestError(f"{what} is {len(body)} bytes, more than the {limit}-byte limit")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"{what} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{what} is a JSON {type(document).__name__}, not an object")
    return document


def platform_from_config(body: bytes) -> Platform | None:
    """The platform an image config blob declares, or None when it declares no architecture ("unknown")."""
    config = _json_object(body, "image config")
    architecture = _string(config, "architecture", "image config", default="")
    if not architecture:
        return None
    return _platform(config, "image config")


# ---------------------------------------------------------------------------------------------------------
# Images and their platforms


@dataclass(frozen=True)
class PlatformEntry:
    """One thing a runtime might pull: a platform (None = not declared or unknown) and its manifest."""

    platform: Platform | None
    digest: str


@dataclass(frozen=True)
class ImagePlatforms:
    """What an image reference resolves to: the result type shared by resolver, policy, CLI, audit."""

    digest: str  # of the top-level document
    media_type: str
    kind: str  # "index" | "manifest" | "schema1" | "artifact"
    entries: tuple[PlatformEntry, ...]

    @property
    def platforms(self) -> tuple[Platform, ...]:
        """The declared platforms, de-duplicated, in index order."""
        return tuple(dict.fromkeys(e.platform for e in self.entries if e.platform is not None))

    def runnable(self, node: Platform, profiles: Sequence[str]) -> tuple[Fit, str | None]:
        """`fit` over the entries: how sure we are that `node` runs this image, and the manifest it pulls.

        A single manifest of unknown platform (no architecture in its config, or an artifact) never runs:
        unlike an index entry without a platform, nothing suggests it was meant for this node.
        """
        candidates = [e.platform for e in self.entries]
        if self.kind != "index" and None in candidates:
            return Fit.NO, None
        verdict, index = fit(node, candidates, profiles)
        return verdict, None if index is None else self.entries[index].digest


def platforms_of_index(index: Index, digest: str, nested: Mapping[str, Index] = _NO_NESTED) -> ImagePlatforms:
    """The image entries of `index` (attestations left out), nested indexes flattened in place.

    `nested` maps the digest of each nested index entry to that index (see `Index.nested_index_digests`);
    a nested index that is missing from it raises ManifestError.
    """
    return ImagePlatforms(
        digest=digest,
        media_type=index.media_type,
        kind="index",
        entries=tuple(_flatten(index, nested, seen=(digest,))),
    )


def _flatten(index: Index, nested: Mapping[str, Index], seen: tuple[str, ...]) -> list[PlatformEntry]:
    if len(seen) > MAX_NESTING:
        raise ManifestError(f"indexes nested more than {MAX_NESTING} deep")
    entries: list[PlatformEntry] = []
    for entry in index.image_entries():
        if not entry.is_index:
            entries.append(PlatformEntry(entry.platform, entry.digest))
            continue
        if entry.digest in seen:
            raise ManifestError(f"index {entry.digest} contains itself")
        child = nested.get(entry.digest)
        if child is None:
            raise ManifestError(
                f"nested index {entry.digest} was not provided; fetch it and pass it in nested"
            )
        entries += _flatten(child, nested, (*seen, entry.digest))
    return entries


def platforms_of_manifest(
    manifest: ImageManifest | Schema1Manifest, digest: str, config_platform: Platform | None
) -> ImagePlatforms:
    """A single-manifest image: its platform comes from its config blob (`config_platform`).

    containerd pulls a plain manifest without checking its platform, and the container then dies with
    `exec format error`; so the config's platform is judged like an index entry. Schema1 manifests carry
    their architecture themselves. An artifact has no platform and never runs.
    """
    platform: Platform | None
    if isinstance(manifest, Schema1Manifest):
        kind, platform = "schema1", manifest.platform() if manifest.architecture else None
    elif manifest.is_image:
        kind, platform = "manifest", config_platform
    else:
        kind, platform = "artifact", None
    return ImagePlatforms(digest, manifest.media_type, kind, (PlatformEntry(platform, digest),))


# ---------------------------------------------------------------------------------------------------------
# Digests

_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def sha256_digest(body: bytes) -> str:
    """The content digest of `body`: sha256:<hex>."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def verify_digest(body: bytes, expected: str) -> None:
    """Raise ManifestError unless `body` hashes to `expected` (sha256, sha384 or sha512)."""
    algorithm, _, encoded = expected.partition(":")
    hasher = _HASHES.get(algorithm)
    if hasher is None:
        raise ManifestError(f"cannot verify digest {expected[:80]!r}: unsupported algorithm {algorithm!r}")
    problem = digest_problem(expected)
    if problem:
        raise ManifestError(f"cannot verify digest {expected[:80]!r}: {problem}")
    actual = hasher(body).hexdigest()
    if actual != encoded:
        raise ManifestError(
            f"content does not match its digest: expected {expected}, got {algorithm}:{actual}"
        )
