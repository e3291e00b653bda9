"""Registry documents -> platforms, over real manifests (tests/unit/fixtures/manifests, see its README)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from archaudit.core import manifests as m
from archaudit.core.errors import ManifestError
from archaudit.core.manifests import (
    Descriptor,
    ImageManifest,
    ImagePlatforms,
    Index,
    PlatformEntry,
    Schema1Manifest,
    parse_document,
    platform_from_config,
    platforms_of_index,
    platforms_of_manifest,
    sha256_digest,
    verify_digest,
)
from archaudit.core.platforms import Fit, Platform
from archaudit.core.reference import is_digest

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
P = Platform.parse
BOTH = ("containerd-strict", "containerd")  # a containerd 2.x node whose pull mode is unknown


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(body(name))
    return loaded


def resolved_index(name: str, content_type: str | None = None) -> ImagePlatforms:
    data = body(name)
    index = parse_document(data, content_type)
    assert isinstance(index, Index)
    return platforms_of_index(index, sha256_digest(data))


def entry_digest(name: str, position: int) -> str:
    digest: str = doc(name)["manifests"][position]["digest"]
    return digest


BUSYBOX = "dockerhub__busybox-latest__docker-manifest-list"
BUILDKIT = "buildx-docs__moby-buildkit-master__oci-index-with-attestations"
MCR = "mcr__dotnet-runtime-7.0__docker-manifest-list-linux+windows"

# --------------------------------------------------------------------------------------------------------
# What every fixture is


@pytest.mark.parametrize(
    ("name", "kind", "media_type"),
    [
        ("greenbone-test__single-platform-oci-index-with-attestation", Index, m.MEDIA_OCI_INDEX),
        (BUSYBOX, Index, m.MEDIA_DOCKER_LIST),
        ("dockerhub__busybox-latest__linux-amd64-docker-v2-manifest", ImageManifest, m.MEDIA_DOCKER_MANIFEST),
        ("dockerhub__debian-latest__docker-manifest-list", Index, m.MEDIA_DOCKER_LIST),
        (
            "dockerhub__richlander-sdk-3.0__single-arch-docker-v2-manifest",
            ImageManifest,
            m.MEDIA_DOCKER_MANIFEST,
        ),
        (MCR, Index, m.MEDIA_DOCKER_LIST),
        ("mcr__dotnet-runtime-7.0__linux-amd64-docker-v2-manifest", ImageManifest, m.MEDIA_DOCKER_MANIFEST),
        (BUILDKIT, Index, m.MEDIA_OCI_INDEX),
        ("buildx-docs__moby-buildkit-master__raw-docker-manifest-list", Index, m.MEDIA_DOCKER_LIST),
        ("buildx-docs__crazymax-buildkit-attest__index-with-attestation", Index, m.MEDIA_OCI_INDEX),
        ("buildx-docs__crazymax-loop__raw-docker-v2-manifest", ImageManifest, m.MEDIA_DOCKER_MANIFEST),
        ("containers-image__schema2list", Index, m.MEDIA_DOCKER_LIST),
        ("containers-image__schema2list-variants", Index, m.MEDIA_DOCKER_LIST),
        ("containers-image__ocilist-variants", Index, m.MEDIA_OCI_INDEX),
        ("containers-image__v2list.manifest", Index, m.MEDIA_DOCKER_LIST),
        ("containers-image__ociv1.image.index", Index, m.MEDIA_OCI_INDEX),
        ("containers-image__v2s2.manifest", ImageManifest, m.MEDIA_DOCKER_MANIFEST),
        ("containers-image__ociv1.manifest", ImageManifest, m.MEDIA_OCI_MANIFEST),
        ("containers-image__ociv1.artifact", ImageManifest, m.MEDIA_OCI_MANIFEST),
        ("containers-image__v2s1.manifest", Schema1Manifest, m.MEDIA_SCHEMA1_SIGNED),
        ("containers-image__v2s1-unsigned.manifest", Schema1Manifest, m.MEDIA_SCHEMA1),
    ],
)
def test_every_fixture_parses_to_its_kind(name: str, kind: type, media_type: str) -> None:
    document = parse_document(body(name))
    assert isinstance(document, kind)
    assert document.media_type == media_type


def test_every_fixture_file_is_covered() -> None:
    # A fixture added without a test is a fixture nobody reads.
    names = {p.stem for p in FIXTURES.glob("*.json")}
    configs = {n for n in names if "config" in n}
    assert len(names - configs) == 21
    assert configs == {
        "buildx-docs__crazymax-buildkit-attest__image-config-amd64",
        "mcr__dotnet-runtime-7.0__linux-amd64-image-config",
    }


# --------------------------------------------------------------------------------------------------------
# Indexes: image entries, attestations, platforms, selection


def test_busybox_list_platforms_in_order() -> None:
    image = resolved_index(BUSYBOX)
    assert image.kind == "index"
    assert [str(p) for p in image.platforms] == [
        "linux/amd64",
        "linux/arm/v5",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm64/v8",
        "linux/386",
        "linux/mips64le",
        "linux/ppc64le",
        "linux/s390x",
    ]
    assert [e.digest for e in image.entries] == [d["digest"] for d in doc(BUSYBOX)["manifests"]]


@pytest.mark.parametrize(
    ("node", "profiles", "fit", "position"),
    [
        ("linux/amd64", ("containerd",), Fit.RUNS, 0),
        ("linux/arm64", BOTH, Fit.RUNS, 4),
        ("linux/arm/v7", BOTH, Fit.RUNS, 3),
        ("linux/arm/v6", ("cri-o",), Fit.RUNS, 2),
        ("linux/arm/v8", BOTH, Fit.AT_RISK, 3),  # only through the fallback vector
        ("linux/386", ("containerd-1.7",), Fit.RUNS, 5),
        ("linux/riscv64", BOTH, Fit.NO, None),
    ],
)
def test_busybox_list_runnable(node: str, profiles: tuple[str, ...], fit: Fit, position: int | None) -> None:
    expected = None if position is None else entry_digest(BUSYBOX, position)
    assert resolved_index(BUSYBOX).runnable(P(node), profiles) == (fit, expected)


def test_attestations_are_not_platforms() -> None:
    index = parse_document(body(BUILDKIT))
    assert isinstance(index, Index)
    assert len(index.manifests) == 12
    assert [d.is_attestation for d in index.manifests] == [False] * 6 + [True] * 6
    assert len(index.image_entries()) == 6
    image = platforms_of_index(index, "sha256:" + "0" * 64)
    assert [str(p) for p in image.platforms] == [
        "linux/amd64",
        "linux/arm/v7",
        "linux/arm64",
        "linux/s390x",
        "linux/ppc64le",
        "linux/riscv64",
    ]
    assert all(e.platform is not None and e.platform.os != "unknown" for e in image.entries)


def test_the_raw_list_and_the_oci_index_offer_the_same_platforms() -> None:
    raw = resolved_index("buildx-docs__moby-buildkit-master__raw-docker-manifest-list")
    assert raw.platforms == resolved_index(BUILDKIT).platforms


def test_a_riscv64_node_runs_buildkit_but_not_busybox() -> None:
    riscv = P("linux/riscv64")
    assert resolved_index(BUILDKIT).runnable(riscv, BOTH) == (Fit.RUNS, entry_digest(BUILDKIT, 5))
    assert resolved_index(BUSYBOX).runnable(riscv, BOTH) == (Fit.NO, None)


@pytest.mark.parametrize(
    "name",
    [
        "greenbone-test__single-platform-oci-index-with-attestation",
        "buildx-docs__crazymax-buildkit-attest__index-with-attestation",
    ],
)
def test_a_single_platform_index_with_an_attestation_is_amd64_only(name: str) -> None:
    image = resolved_index(name)
    assert image.platforms == (P("linux/amd64"),)
    assert image.runnable(P("linux/amd64"), BOTH) == (Fit.RUNS, entry_digest(name, 0))
    assert image.runnable(P("linux/arm64"), BOTH) == (Fit.NO, None)


def test_an_attestation_is_known_by_its_annotation_alone() -> None:
    marked = Descriptor(
        m.MEDIA_OCI_MANIFEST,
        "sha256:" + "1" * 64,
        10,
        P("linux/amd64"),
        annotations={"vnd.docker.reference.type": "attestation-manifest"},
    )
    assert marked.is_attestation
    assert not Descriptor(m.MEDIA_OCI_MANIFEST, "sha256:" + "1" * 64, 10, P("linux/amd64")).is_attestation
    assert Descriptor(
        m.MEDIA_OCI_MANIFEST, "sha256:" + "1" * 64, 10, Platform("unknown", "unknown")
    ).is_attestation


def test_the_index_media_type_is_optional_in_the_body() -> None:
    # As Docker Hub served greenbone's index: no top-level mediaType. The body's shape decides.
    data = doc("greenbone-test__single-platform-oci-index-with-attestation")
    del data["mediaType"]
    raw = json.dumps(data).encode()
    assert parse_document(raw).media_type == m.MEDIA_OCI_INDEX
    assert parse_document(raw, m.MEDIA_OCI_INDEX).media_type == m.MEDIA_OCI_INDEX
    assert parse_document(raw, m.MEDIA_DOCKER_LIST).media_type == m.MEDIA_DOCKER_LIST
    # a Content-Type of the wrong family does not override the shape
    assert parse_document(raw, m.MEDIA_DOCKER_MANIFEST).media_type == m.MEDIA_OCI_INDEX


def test_the_body_wins_over_the_content_type() -> None:
    # Registries that ignore Accept and mislabel: trust the body.
    document = parse_document(body(BUSYBOX), m.MEDIA_OCI_MANIFEST)
    assert isinstance(document, Index)
    assert document.media_type == m.MEDIA_DOCKER_LIST
    single = parse_document(body("containers-image__ociv1.manifest"), f"{m.MEDIA_DOCKER_LIST}; charset=utf-8")
    assert isinstance(single, ImageManifest)
    assert single.media_type == m.MEDIA_OCI_MANIFEST


def test_a_manifest_without_media_type_takes_the_content_type_family() -> None:
    data = doc("containers-image__v2s2.manifest")
    del data["mediaType"]
    raw = json.dumps(data).encode()
    assert parse_document(raw).media_type == m.MEDIA_OCI_MANIFEST
    assert parse_document(raw, " Application/VND.docker.distribution.manifest.v2+json ").media_type == (
        m.MEDIA_DOCKER_MANIFEST
    )


def test_zstd_duplicates_are_one_platform_and_the_first_is_pulled() -> None:
    name = "containers-image__ocilist-variants"
    image = resolved_index(name)
    assert [str(p) for p in image.platforms] == [
        "linux/amd64",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/unrecognized-present",
        "linux/arm",
    ]
    assert len(image.entries) == 6
    assert image.runnable(P("linux/arm/v6"), ("containerd",)) == (Fit.RUNS, entry_digest(name, 2))
    assert image.runnable(P("linux/arm/v7"), ("containerd",)) == (Fit.RUNS, entry_digest(name, 1))


def test_variants_list_containerd_and_crio_pull_different_manifests() -> None:
    name = "containers-image__schema2list-variants"
    image = resolved_index(name)
    v7 = P("linux/arm/v7")
    assert image.runnable(v7, ("containerd",)) == (Fit.RUNS, entry_digest(name, 3))  # "arm" is arm/v7
    assert image.runnable(v7, ("cri-o",)) == (Fit.RUNS, entry_digest(name, 1))  # v6 before no variant


def test_non_canonical_variants_match_nothing() -> None:
    # The distribution spec example: arm/armv7 and arm64/armv8 are not variants containerd knows.
    image = resolved_index("containers-image__v2list.manifest")
    for profiles in (BOTH, ("containerd-1.7",), ("cri-o",)):
        assert image.runnable(P("linux/arm64"), profiles) == (Fit.NO, None)
        assert image.runnable(P("linux/arm/v7"), profiles) == (Fit.NO, None)
    # the old "features" field is not os.features: amd64 runs
    expected = (Fit.RUNS, entry_digest("containers-image__v2list.manifest", 1))
    assert image.runnable(P("linux/amd64"), BOTH) == expected


def test_os_features_entries_do_not_run_on_linux_with_containerd_2() -> None:
    name = "containers-image__ociv1.image.index"
    image = resolved_index(name)
    assert image.entries[1].platform == Platform("linux", "amd64", os_features=("sse4",))
    assert image.runnable(P("linux/amd64"), BOTH) == (Fit.NO, None)
    assert image.runnable(P("linux/amd64"), ("containerd-1.7",)) == (Fit.RUNS, entry_digest(name, 1))
    assert image.runnable(P("linux/amd64"), ("cri-o",)) == (Fit.RUNS, entry_digest(name, 1))
    assert image.runnable(P("linux/ppc64le"), BOTH) == (Fit.RUNS, entry_digest(name, 0))


@pytest.mark.parametrize(
    ("node", "position"),
    [
        ("windows/amd64:10.0.20348", 4),
        ("windows/amd64:10.0.17763", 3),
        ("windows/amd64:10.0.26100", 4),  # WS2025 runs the ltsc2022 image
        ("windows/amd64:10.0.19041", None),
        ("linux/amd64", 0),
        ("linux/arm/v7", 1),
        ("linux/arm64", 2),
    ],
)
def test_linux_and_windows_list(node: str, position: int | None) -> None:
    image = resolved_index(MCR)
    assert image.platforms[3] == Platform("windows", "amd64", os_version="10.0.17763.3532")
    verdict = Fit.NO if position is None else Fit.RUNS
    expected = None if position is None else entry_digest(MCR, position)
    assert image.runnable(P(node), BOTH) == (verdict, expected)


def test_an_empty_or_null_index_offers_nothing() -> None:
    manifests: list[object] | None
    for manifests in ([], None):
        raw = json.dumps(
            {"schemaVersion": 2, "mediaType": m.MEDIA_OCI_INDEX, "manifests": manifests}
        ).encode()
        index = parse_document(raw)
        assert isinstance(index, Index)
        image = platforms_of_index(index, sha256_digest(raw))
        assert image.entries == ()
        assert image.runnable(P("linux/amd64"), ("containerd",)) == (Fit.NO, None)


def test_an_index_entry_without_platform_is_at_risk_not_a_pass() -> None:
    child = "sha256:" + "2" * 64
    raw = json.dumps(
        {"schemaVersion": 2, "manifests": [{"mediaType": m.MEDIA_OCI_MANIFEST, "digest": child, "size": 5}]}
    ).encode()
    index = parse_document(raw)
    assert isinstance(index, Index)
    image = platforms_of_index(index, sha256_digest(raw))
    assert image.entries == (PlatformEntry(None, child),)
    assert image.platforms == ()
    assert image.runnable(P("linux/amd64"), ("containerd",)) == (Fit.AT_RISK, child)


# --------------------------------------------------------------------------------------------------------
# Nested indexes


def descriptor(media_type: str, n: int, platform: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + f"{n:x}" * 64, "size": 100 + n}
    if platform:
        os, arch, *variant = platform.split("/")
        out["platform"] = {"os": os, "architecture": arch, **({"variant": variant[0]} if variant else {})}
    return out


def index_of(*entries: dict[str, Any]) -> Index:
    document = parse_document(json.dumps({"schemaVersion": 2, "manifests": list(entries)}).encode())
    assert isinstance(document, Index)
    return document


def test_a_nested_index_is_flattened_in_place() -> None:
    child = index_of(
        descriptor(m.MEDIA_OCI_MANIFEST, 2, "linux/arm64"),
        descriptor(m.MEDIA_OCI_MANIFEST, 3, "linux/arm/v7"),
    )
    top = index_of(
        descriptor(m.MEDIA_OCI_MANIFEST, 1, "linux/s390x"),
        descriptor(m.MEDIA_OCI_INDEX, 4),
        descriptor(m.MEDIA_OCI_MANIFEST, 5, "linux/amd64"),
    )
    assert top.nested_index_digests() == ("sha256:" + "4" * 64,)
    image = platforms_of_index(top, "sha256:" + "9" * 64, {"sha256:" + "4" * 64: child})
    assert [str(p) for p in image.platforms] == ["linux/s390x", "linux/arm64", "linux/arm/v7", "linux/amd64"]
    assert [e.digest[-1] for e in image.entries] == ["1", "2", "3", "5"]
    assert image.runnable(P("linux/arm64"), ("containerd",)) == (Fit.RUNS, "sha256:" + "2" * 64)


def test_a_missing_nested_index_is_an_error_not_a_guess() -> None:
    top = index_of(descriptor(m.MEDIA_DOCKER_LIST, 4), descriptor(m.MEDIA_OCI_MANIFEST, 5, "linux/amd64"))
    with pytest.raises(ManifestError, match=r"nested index sha256:4+ was not provided"):
        platforms_of_index(top, "sha256:" + "9" * 64)


def test_an_index_that_contains_itself_is_refused() -> None:
    loop = index_of(descriptor(m.MEDIA_OCI_INDEX, 4))
    with pytest.raises(ManifestError, match="contains itself"):
        platforms_of_index(loop, "sha256:" + "9" * 64, {"sha256:" + "4" * 64: loop})


def test_too_deep_nesting_is_refused() -> None:
    # index 1 -> index 2 -> ... -> index 11, each holding only the next
    nested = {"sha256:" + f"{n:x}" * 64: index_of(descriptor(m.MEDIA_OCI_INDEX, n + 1)) for n in range(1, 12)}
    top = index_of(descriptor(m.MEDIA_OCI_INDEX, 1))
    with pytest.raises(ManifestError, match="nested more than 8 deep"):
        platforms_of_index(top, "sha256:" + "0" * 64, nested)


# --------------------------------------------------------------------------------------------------------
# Single manifests and their config blobs (§6)


def test_a_single_manifest_is_judged_by_its_config() -> None:
    raw = body("mcr__dotnet-runtime-7.0__linux-amd64-docker-v2-manifest")
    manifest = parse_document(raw)
    assert isinstance(manifest, ImageManifest)
    assert manifest.is_image
    assert manifest.config.media_type == m.MEDIA_DOCKER_CONFIG
    config = platform_from_config(body("mcr__dotnet-runtime-7.0__linux-amd64-image-config"))
    assert config == P("linux/amd64")
    image = platforms_of_manifest(manifest, sha256_digest(raw), config)
    assert image.kind == "manifest"
    assert image.media_type == m.MEDIA_DOCKER_MANIFEST
    assert image.entries == (PlatformEntry(P("linux/amd64"), sha256_digest(raw)),)
    assert image.runnable(P("linux/amd64"), BOTH) == (Fit.RUNS, sha256_digest(raw))
    # containerd would pull it on arm64 and the container would die with "exec format error"
    assert image.runnable(P("linux/arm64"), BOTH) == (Fit.NO, None)


@pytest.mark.parametrize(
    "name",
    [
        "dockerhub__busybox-latest__linux-amd64-docker-v2-manifest",
        "dockerhub__richlander-sdk-3.0__single-arch-docker-v2-manifest",
        "buildx-docs__crazymax-loop__raw-docker-v2-manifest",
        "containers-image__v2s2.manifest",
        "containers-image__ociv1.manifest",
    ],
)
def test_single_manifests_with_an_unknown_config_never_run(name: str) -> None:
    manifest = parse_document(body(name))
    assert isinstance(manifest, ImageManifest)
    assert manifest.is_image
    assert is_digest(manifest.config.digest)  # the resolver fetches it next
    assert len(manifest.layers) >= 1
    image = platforms_of_manifest(manifest, "sha256:" + "a" * 64, None)
    assert image.entries == (PlatformEntry(None, "sha256:" + "a" * 64),)
    assert image.platforms == ()
    assert image.runnable(P("linux/amd64"), ("containerd",)) == (Fit.NO, None)


def test_an_artifact_is_not_an_image_and_never_runs() -> None:
    manifest = parse_document(body("containers-image__ociv1.artifact"))
    assert isinstance(manifest, ImageManifest)
    assert not manifest.is_image
    assert manifest.layers == ()  # "layers": null
    image = platforms_of_manifest(manifest, "sha256:" + "a" * 64, P("linux/amd64"))
    assert image.kind == "artifact"
    assert image.entries[0].platform is None
    for node in ("linux/amd64", "linux/arm64"):
        assert image.runnable(P(node), ("containerd",)) == (Fit.NO, None)


@pytest.mark.parametrize(
    ("name", "content_type", "media_type"),
    [
        ("containers-image__v2s1.manifest", None, m.MEDIA_SCHEMA1_SIGNED),
        ("containers-image__v2s1-unsigned.manifest", None, m.MEDIA_SCHEMA1),
        ("containers-image__v2s1-unsigned.manifest", m.MEDIA_SCHEMA1_SIGNED, m.MEDIA_SCHEMA1_SIGNED),
        ("containers-image__v2s1.manifest", "application/json", m.MEDIA_SCHEMA1_SIGNED),
    ],
)
def test_schema1_names_its_architecture(name: str, content_type: str | None, media_type: str) -> None:
    manifest = parse_document(body(name), content_type)
    assert isinstance(manifest, Schema1Manifest)
    assert manifest.media_type == media_type
    assert manifest.platform() == P("linux/amd64")
    image = platforms_of_manifest(manifest, "sha256:" + "b" * 64, None)
    assert image.kind == "schema1"
    assert image.runnable(P("linux/amd64"), BOTH) == (Fit.RUNS, "sha256:" + "b" * 64)
    assert image.runnable(P("linux/arm64"), BOTH) == (Fit.NO, None)


def test_schema1_without_architecture_is_unknown() -> None:
    manifest = parse_document(b'{"schemaVersion": 1, "architecture": ""}')
    assert isinstance(manifest, Schema1Manifest)
    image = platforms_of_manifest(manifest, "sha256:" + "b" * 64, None)
    assert image.entries[0].platform is None
    assert image.runnable(P("linux/amd64"), ("containerd",)) == (Fit.NO, None)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architecture": "amd64", "os": "linux"}, Platform("linux", "amd64")),
        ({"architecture": "arm", "os": "linux", "variant": "v6"}, Platform("linux", "arm", "v6")),
        (
            {
                "architecture": "amd64",
                "os": "windows",
                "os.version": "10.0.20348.1",
                "os.features": ["win32k"],
            },
            Platform("windows", "amd64", os_version="10.0.20348.1", os_features=("win32k",)),
        ),
        ({"architecture": "arm64"}, Platform("", "arm64")),  # no os: the node's own, as containerd reads it
        ({"os": "linux"}, None),
        ({"architecture": "", "os": "linux"}, None),
        ({"architecture": None, "os": "linux"}, None),
        ({}, None),
    ],
)
def test_platform_from_config(config: dict[str, Any], expected: Platform | None) -> None:
    assert platform_from_config(json.dumps(config).encode()) == expected


def test_platform_from_the_real_buildkit_config() -> None:
    config = platform_from_config(body("buildx-docs__crazymax-buildkit-attest__image-config-amd64"))
    assert config == Platform("linux", "amd64")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[]", "not an object"),
        (b"not json", "not valid JSON"),
        (b'{"architecture": 64}', "'architecture' is a int"),
        (b'{"architecture": "arm", "variant": ["v7"]}', "'variant' is a list"),
        (b'{"architecture": "amd64", "os.features": "sse4"}', "os.features"),
    ],
)
def test_platform_from_config_refuses_what_is_not_a_config(raw: bytes, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        platform_from_config(raw)


# --------------------------------------------------------------------------------------------------------
# Refusals, each with a clear message


MANIFEST_OK = {
    "schemaVersion": 2,
    "mediaType": m.MEDIA_OCI_MANIFEST,
    "config": {"mediaType": m.MEDIA_OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 2},
    "layers": [],
}


def with_(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


def index_with_entry(**changes: Any) -> bytes:
    entry = {"mediaType": m.MEDIA_OCI_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 1, **changes}
    return json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'"just a string"', "JSON str, not an object"),
        (b"null", "JSON NoneType, not an object"),
        (b"{}", "neither an index"),
        (b'{"schemaVersion": 2}', "neither an index"),
        (
            with_(MANIFEST_OK, mediaType="application/vnd.oci.artifact.manifest.v1+json"),
            "unsupported manifest media type",
        ),
        (with_(MANIFEST_OK, mediaType=m.MEDIA_OCI_CONFIG), "unsupported manifest media type"),
        (with_(MANIFEST_OK, mediaType=7), "'mediaType' is not a string"),
        (with_(MANIFEST_OK, config=None), "no 'config' object"),
        (with_(MANIFEST_OK, config="sha256:x"), "no 'config' object"),
        (with_(MANIFEST_OK, layers={"a": 1}), "'layers' is a dict"),
        (with_(MANIFEST_OK, layers=[1]), "layer 0 is a int"),
        (
            with_(MANIFEST_OK, config={"mediaType": m.MEDIA_OCI_CONFIG, "digest": "sha256:zz", "size": 1}),
            "invalid",
        ),
        (with_(MANIFEST_OK, config={"mediaType": m.MEDIA_OCI_CONFIG, "size": 1}), "has no 'digest'"),
        (with_(MANIFEST_OK, mediaType=m.MEDIA_OCI_INDEX), "no 'manifests' list"),
        (json.dumps({"mediaType": m.MEDIA_DOCKER_LIST, "manifests": {}}).encode(), "'manifests' is a dict"),
        (json.dumps({"manifests": ["sha256:" + "d" * 64]}).encode(), "index entry 0 is a str"),
        (index_with_entry(digest="sha256:short"), "index entry 0: digest 'sha256:short' is invalid"),
        (index_with_entry(digest="../../etc/passwd"), "is invalid"),
        (index_with_entry(digest=None), "has no 'digest'"),
        (index_with_entry(size=-1), "non-negative integer"),
        (index_with_entry(size=True), "non-negative integer"),
        (index_with_entry(size=1.5), "non-negative integer"),
        (index_with_entry(platform="linux/amd64"), "platform is a str"),
        (index_with_entry(platform={"os": "linux", "architecture": 1}), "'architecture' is a int"),
        (
            index_with_entry(platform={"os": "linux", "architecture": "amd64", "os.features": [1]}),
            "os.features",
        ),
        (index_with_entry(annotations=["a"]), "'annotations' must map"),
        (index_with_entry(annotations={"a": 1}), "'annotations' must map"),
        (index_with_entry(mediaType=3), "'mediaType' is a int"),
        (b'{"schemaVersion": 1}', "schema1 manifest has no 'architecture'"),
        (b'{"schemaVersion": 1, "architecture": 5}', "'architecture' is a int"),
    ],
)
def test_unreadable_documents_raise_manifest_error(raw: bytes, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        parse_document(raw)


def test_the_size_cap_is_containerds() -> None:
    padding = b" " * (m.MAX_MANIFEST_BYTES - len(body(BUSYBOX)))
    assert isinstance(parse_document(body(BUSYBOX) + padding), Index)  # exactly at the cap: fine
    with pytest.raises(ManifestError, match="more than the 4393216-byte limit"):
        parse_document(body(BUSYBOX) + padding + b" ")


def test_a_manifest_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_document(b"<html>")


# --------------------------------------------------------------------------------------------------------
# Accept header and digests


def test_accept_asks_for_every_manifest_type_then_anything() -> None:
    accepted = [part.strip() for part in m.ACCEPT.split(",")]
    assert accepted[:4] == [
        m.MEDIA_OCI_INDEX,
        m.MEDIA_DOCKER_LIST,
        m.MEDIA_OCI_MANIFEST,
        m.MEDIA_DOCKER_MANIFEST,
    ]
    assert set(accepted[4:6]) == {m.MEDIA_SCHEMA1, m.MEDIA_SCHEMA1_SIGNED}
    assert accepted[-1] == "*/*"


def test_sha256_digest() -> None:
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    raw = body(BUSYBOX)
    assert sha256_digest(raw) == "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_verify_digest_accepts_the_right_content(algorithm: str) -> None:
    raw = body(MCR)
    verify_digest(raw, f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}")


@pytest.mark.parametrize(
    ("expected", "why"),
    [
        ("sha256:" + "0" * 64, "does not match"),
        ("sha512:" + "0" * 128, "does not match"),
        ("md5:" + "0" * 32, "unsupported algorithm 'md5'"),
        ("sha256:abc", "64"),
        ("sha256:" + "A" * 64, "lowercase"),
        ("", "unsupported algorithm"),
    ],
)
def test_verify_digest_refuses(expected: str, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        verify_digest(body(MCR), expected)


def test_verify_digest_catches_one_changed_byte() -> None:
    raw = body(BUSYBOX)
    digest = sha256_digest(raw)
    verify_digest(raw, digest)
    with pytest.raises(ManifestError, match="does not match"):
        verify_digest(raw[:-2] + b"X" + raw[-1:], digest)


# --------------------------------------------------------------------------------------------------------
# The shared result type


def test_platforms_are_deduplicated_in_order_and_none_is_left_out() -> None:
    amd, arm = P("linux/amd64"), P("linux/arm/v7")
    image = ImagePlatforms(
        digest="sha256:" + "e" * 64,
        media_type=m.MEDIA_OCI_INDEX,
        kind="index",
        entries=(
            PlatformEntry(arm, "sha256:" + "1" * 64),
            PlatformEntry(None, "sha256:" + "2" * 64),
            PlatformEntry(amd, "sha256:" + "3" * 64),
            PlatformEntry(arm, "sha256:" + "4" * 64),
        ),
    )
    assert image.platforms == (arm, amd)


def test_descriptors_are_immutable_values() -> None:
    index = parse_document(body("greenbone-test__single-platform-oci-index-with-attestation"))
    assert isinstance(index, Index)
    attestation = index.manifests[1]
    with pytest.raises(TypeError):
        attestation.annotations["x"] = "y"  # type: ignore[index]
    again = parse_document(body("greenbone-test__single-platform-oci-index-with-attestation"))
    assert isinstance(again, Index)
    assert again == index
    assert hash(attestation) == hash(again.manifests[1])
