"""The runtime rules of spec/platforms.md, case by case (§2 normalization ... §8 examples, and more)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archaudit.core.manifests import Index, parse_document
from archaudit.core.platforms import (
    RUNTIMES,
    Fit,
    Platform,
    can_run,
    fit,
    node_platform,
    normalize,
    profiles_for,
    select,
    windows_version_compatible,
)

P = Platform.parse
Y, N = True, False

# --------------------------------------------------------------------------------------------------------
# §8 and many more: node | image entry | containerd | containerd-strict | containerd-1.7 | cri-o

VERDICTS = [
    # the spec's own table (§8)
    ("linux/arm64", "linux/arm/v7", Y, N, Y, N),
    ("linux/amd64", "linux/386", Y, N, Y, N),
    ("linux/amd64", "linux/amd64/v3", N, N, N, N),
    ("linux/arm/v6", "linux/arm", N, N, N, Y),
    ("linux/arm/v7", "linux/arm/v5", Y, N, Y, Y),
    ("linux/arm64", "linux/aarch64", Y, Y, Y, N),
    ("linux/arm64", "linux/arm64/v8", Y, Y, Y, Y),
    # amd64: v1 is plain amd64; micro-architecture levels only on nodes that declare them
    ("linux/amd64", "linux/amd64", Y, Y, Y, Y),
    ("linux/amd64", "linux/x86_64", Y, Y, Y, N),
    ("linux/amd64", "linux/x86-64", Y, Y, Y, N),
    ("linux/amd64", "linux/amd64/v1", Y, Y, Y, N),
    ("linux/amd64", "linux/amd64/v2", N, N, N, N),
    ("linux/amd64", "linux/i386", Y, N, Y, N),
    ("linux/amd64/v3", "linux/amd64/v2", Y, N, Y, N),
    ("linux/amd64/v3", "linux/amd64/v3", Y, Y, Y, Y),
    ("linux/amd64/v3", "linux/amd64", Y, N, Y, Y),
    ("linux/amd64/v3", "linux/386", Y, N, Y, N),
    ("linux/amd64/v2", "linux/amd64/v3", N, N, N, N),
    ("linux/386", "linux/amd64", N, N, N, N),
    ("linux/386", "linux/i386", Y, Y, Y, N),
    # arm: empty and "7" are v7; armhf = arm/v7, armel = arm/v6; lower variants run on higher nodes
    ("linux/arm/v7", "linux/arm", Y, Y, Y, Y),
    ("linux/arm/v7", "linux/arm/7", Y, Y, Y, N),
    ("linux/arm/v7", "linux/armhf", Y, Y, Y, N),
    ("linux/arm/v7", "linux/armel", Y, N, Y, N),
    ("linux/arm/v7", "linux/arm/v6", Y, N, Y, Y),
    ("linux/arm/v7", "linux/arm/v8", N, N, N, N),
    ("linux/arm/v7", "linux/arm/armv7", N, N, N, N),
    ("linux/arm/v5", "linux/arm/v6", N, N, N, N),
    ("linux/arm/v5", "linux/arm/5", Y, Y, Y, N),
    ("linux/arm/v6", "linux/arm/v5", Y, N, Y, Y),
    ("linux/arm/v8", "linux/arm/v7", Y, N, Y, Y),
    ("linux/arm/v8", "linux/arm/8", Y, Y, Y, N),
    # arm64 runs 32-bit arm (not under strict / CRI-O)
    ("linux/arm64", "linux/arm/v8", Y, N, Y, N),
    ("linux/arm64", "linux/arm/v5", Y, N, Y, N),
    ("linux/arm64", "linux/arm", Y, N, Y, N),
    ("linux/arm64", "linux/armhf", Y, N, Y, N),
    ("linux/arm64", "linux/amd64", N, N, N, N),
    ("linux/arm64", "linux/arm64", Y, Y, Y, Y),
    ("linux/arm64", "linux/arm64/8", Y, Y, Y, N),
    ("linux/arm64", "linux/arm64/V8", Y, Y, Y, N),
    ("linux/arm64", "linux/arm64/v8.0", Y, Y, N, N),  # 1.7 knew only 8/v8
    ("linux/arm64", "linux/arm64/v8.2", N, N, N, N),
    ("linux/arm64", "linux/arm64/v9", N, N, N, N),
    ("linux/arm64", "linux/arm64/armv8", N, N, N, N),
    # arm64 v8.x / v9.x table (containerd 2.x only)
    ("linux/arm64/v8.2", "linux/arm64/v8.1", Y, N, N, N),
    ("linux/arm64/v8.2", "linux/arm64/v8.2", Y, Y, Y, Y),
    ("linux/arm64/v8.2", "linux/arm64", Y, N, N, Y),
    ("linux/arm64/v8.2", "linux/arm64/v8.3", N, N, N, N),
    ("linux/arm64/v8.2", "linux/arm/v7", Y, N, N, N),
    ("linux/arm64/v9", "linux/arm64/v8.5", Y, N, N, N),
    ("linux/arm64/v9", "linux/arm64/v8.6", N, N, N, N),
    ("linux/arm64/v9", "linux/arm64/v9.0", Y, Y, N, N),
    ("linux/arm64/v9", "linux/arm64/9", Y, Y, N, N),
    ("linux/arm64/v9", "linux/arm64", Y, N, N, Y),
    ("linux/arm64/v9", "linux/arm/v7", Y, N, Y, N),
    ("linux/arm64/v9.2", "linux/arm64/v9.1", Y, N, N, N),
    ("linux/arm64/v9.2", "linux/arm64/v8.7", Y, N, N, N),
    ("linux/arm64/v9.2", "linux/arm64/v8.8", N, N, N, N),
    ("linux/arm64/v9.2", "linux/arm64/v9.3", N, N, N, N),
    ("linux/arm64/v9.5", "linux/arm64/v8.9", Y, N, N, N),
    # an arm64 variant outside the table: containerd accepts nothing, not even itself
    ("linux/arm64/v10", "linux/arm64/v10", N, Y, Y, Y),
    ("linux/arm64/v10", "linux/arm64", N, N, N, Y),
    ("linux/arm64/v10", "linux/arm/v7", N, N, Y, N),
    # every other architecture is exactly itself
    ("linux/riscv64", "linux/riscv64", Y, Y, Y, Y),
    ("linux/ppc64le", "linux/ppc64le", Y, Y, Y, Y),
    ("linux/s390x", "linux/s390x", Y, Y, Y, Y),
    ("linux/mips64le", "linux/mips64le", Y, Y, Y, Y),
    ("linux/s390x", "linux/amd64", N, N, N, N),
    ("linux/riscv64", "linux/riscv64/rva23u64", N, N, N, N),
    ("linux/ppc64le", "linux/ppc64", N, N, N, N),
    ("linux/amd64", "linux/unknown", N, N, N, N),
    # os: lower-cased, macos = darwin; never across operating systems
    ("linux/amd64", "Linux/AMD64", Y, Y, Y, N),
    ("darwin/arm64", "macos/arm64", Y, Y, Y, N),
    ("linux/amd64", "windows/amd64", N, N, N, N),
    ("linux/amd64", "unknown/unknown", N, N, N, N),
    ("windows/amd64", "linux/amd64", N, N, N, N),
    # Windows: exact match plus os.version, never 386
    ("windows/amd64:10.0.20348", "windows/amd64:10.0.20348.1129", Y, Y, Y, Y),
    ("windows/amd64:10.0.20348", "windows/amd64:10.0.17763.3532", N, N, N, Y),
    ("windows/amd64:10.0.17763", "windows/amd64:10.0.20348.1129", N, N, N, Y),
    ("windows/amd64:10.0.17763", "windows/amd64:10.0.17763.3532", Y, Y, Y, Y),
    ("windows/amd64:10.0.26100", "windows/amd64:10.0.20348.1129", Y, Y, Y, Y),
    ("windows/amd64:10.0.20348", "windows/amd64", Y, Y, Y, Y),
    ("windows/amd64", "windows/amd64:10.0.17763.1", Y, Y, Y, Y),
    ("windows/amd64:10.0.20348", "windows/386", N, N, N, N),
    ("windows/amd64:10.0.20348", "windows/arm64:10.0.20348.1", N, N, N, N),
    ("windows/arm64:10.0.26100", "windows/arm64:10.0.26100.1", Y, Y, Y, Y),
]


@pytest.mark.parametrize(("node", "image", "containerd", "strict", "legacy", "crio"), VERDICTS)
def test_can_run_per_profile(
    node: str, image: str, containerd: bool, strict: bool, legacy: bool, crio: bool
) -> None:
    expected = dict(zip(RUNTIMES, (containerd, strict, legacy, crio), strict=True))
    got = {runtime: can_run(P(node), P(image), runtime) for runtime in RUNTIMES}
    assert got == expected


def test_the_verdict_table_covers_every_runtime_both_ways() -> None:
    # Guards the table itself: each profile must say yes somewhere and no somewhere.
    for column in range(2, 6):
        assert {row[column] for row in VERDICTS} == {True, False}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_image_with_no_os_gets_the_node_os_except_on_crio(runtime: str) -> None:
    image = Platform("", "amd64")
    assert can_run(P("linux/amd64"), image, runtime) is (runtime != "cri-o")


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [("containerd", False), ("containerd-strict", False), ("containerd-1.7", True), ("cri-o", True)],
)
def test_os_features_must_be_a_subset_of_the_nodes_on_containerd_2(runtime: str, expected: bool) -> None:
    image = Platform("linux", "amd64", os_features=("sse4",))
    assert can_run(P("linux/amd64"), image, runtime) is expected


@pytest.mark.parametrize(
    ("node_features", "image_features", "expected"),
    [
        (("win32k",), ("win32k",), True),
        (("a", "win32k"), ("win32k",), True),
        (("win32k",), ("win32k", "win32k"), True),  # de-duplicated
        (("win32k",), ("a", "win32k"), False),
        ((), (), True),
        (("win32k",), (), True),
    ],
)
def test_os_features_subset_on_a_node_that_declares_features(
    node_features: tuple[str, ...], image_features: tuple[str, ...], expected: bool
) -> None:
    node = Platform("windows", "amd64", os_version="10.0.20348", os_features=node_features)
    image = Platform("windows", "amd64", os_version="10.0.20348.1", os_features=image_features)
    assert can_run(node, image) is expected
    assert can_run(node, image, "containerd-1.7") is True


# --------------------------------------------------------------------------------------------------------
# §2 normalization


@pytest.mark.parametrize(
    ("text", "runtime", "expected"),
    [
        ("linux/amd64", "containerd", "linux/amd64"),
        ("Linux/X86_64", "containerd", "linux/amd64"),
        ("linux/x86-64/v1", "containerd", "linux/amd64"),
        ("linux/amd64/V2", "containerd", "linux/amd64/v2"),
        ("linux/amd64/v4", "containerd", "linux/amd64/v4"),
        ("linux/i386/v7", "containerd", "linux/386"),
        ("linux/aarch64", "containerd", "linux/arm64"),
        ("linux/arm64/8", "containerd", "linux/arm64"),
        ("linux/arm64/v8", "containerd", "linux/arm64"),
        ("linux/arm64/v8.0", "containerd", "linux/arm64"),
        ("linux/arm64/v8.1", "containerd", "linux/arm64/v8.1"),
        ("linux/arm64/9", "containerd", "linux/arm64/v9"),
        ("linux/arm64/9.0", "containerd", "linux/arm64/v9"),
        ("linux/arm64/v9.0", "containerd", "linux/arm64/v9"),
        ("linux/arm64/v9.1", "containerd", "linux/arm64/v9.1"),
        ("linux/armhf", "containerd", "linux/arm/v7"),
        ("linux/armhf/v6", "containerd", "linux/arm/v7"),
        ("linux/armel", "containerd", "linux/arm/v6"),
        ("linux/arm", "containerd", "linux/arm/v7"),
        ("linux/arm/7", "containerd", "linux/arm/v7"),
        ("linux/arm/5", "containerd", "linux/arm/v5"),
        ("linux/arm/6", "containerd", "linux/arm/v6"),
        ("linux/arm/8", "containerd", "linux/arm/v8"),
        ("linux/arm/armv7", "containerd", "linux/arm/armv7"),
        ("linux/arm/V7", "containerd", "linux/arm/v7"),
        ("macos/arm64", "containerd", "darwin/arm64"),
        ("linux/RISCV64", "containerd", "linux/riscv64"),
        ("linux/s390x", "containerd-strict", "linux/s390x"),
        # containerd 1.7 knew only 8/v8 for arm64
        ("linux/arm64/v8", "containerd-1.7", "linux/arm64"),
        ("linux/arm64/v8.0", "containerd-1.7", "linux/arm64/v8.0"),
        ("linux/arm64/v9.0", "containerd-1.7", "linux/arm64/v9.0"),
        ("linux/aarch64", "containerd-1.7", "linux/arm64"),
        ("linux/arm", "containerd-1.7", "linux/arm/v7"),
        # CRI-O does not normalize
        ("linux/aarch64", "cri-o", "linux/aarch64"),
        ("Linux/arm", "cri-o", "Linux/arm"),
    ],
)
def test_normalize(text: str, runtime: str, expected: str) -> None:
    assert str(normalize(P(text), runtime)) == expected
    assert str(P(text).normalized(runtime)) == expected


def test_normalize_sorts_and_deduplicates_os_features_and_keeps_os_version() -> None:
    p = Platform("windows", "amd64", os_version="10.0.20348.1", os_features=("win32k", "a", "win32k"))
    assert normalize(p) == Platform(
        "windows", "amd64", os_version="10.0.20348.1", os_features=("a", "win32k")
    )


def test_normalize_keeps_an_empty_os_empty() -> None:
    assert normalize(Platform("", "aarch64")) == Platform("", "arm64")


def test_an_unknown_runtime_is_refused() -> None:
    amd64 = P("linux/amd64")
    with pytest.raises(ValueError, match="unknown runtime profile 'docker'"):
        normalize(amd64, "docker")
    with pytest.raises(ValueError, match="unknown runtime profile 'docker'"):
        can_run(amd64, amd64, "docker")
    with pytest.raises(ValueError, match="unknown runtime profile 'docker'"):
        select(amd64, [amd64], "docker")


# --------------------------------------------------------------------------------------------------------
# Platform.parse / str

BUSYBOX = [
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("linux/aarch64", Platform("linux", "aarch64")),
        (" linux/arm64 ", Platform("linux", "arm64")),
        ("windows/amd64:10.0.20348", Platform("windows", "amd64", os_version="10.0.20348")),
        ("windows/amd64:10.0.20348.1129", Platform("windows", "amd64", os_version="10.0.20348.1129")),
        ("windows(10.0.17763)/amd64", Platform("windows", "amd64", os_version="10.0.17763")),
        ("linux/riscv64/rva23u64", Platform("linux", "riscv64", "rva23u64")),
    ],
)
def test_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected os/architecture"),
        ("amd64", "expected os/architecture"),
        ("linux/", "architecture ''"),
        ("/amd64", "os ''"),
        ("linux/arm/v7/extra", "too many"),
        ("linux/arm/", "variant ''"),
        ("linux/am d64", "architecture 'am d64'"),
        ("linux/amd64:", "os.version ''"),
        ("windows/amd64:10 0", "os.version"),
        ("windows(10.0.1)/amd64:10.0.2", "os.version given twice"),
        ("linux/*", "architecture '\\*'"),
    ],
)
def test_parse_refuses_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Platform.parse(text)


@pytest.mark.parametrize(
    "text",
    [*BUSYBOX, "windows/amd64:10.0.20348.1129", "linux/arm64/v8.2", "darwin/arm64"],
)
def test_str_round_trips_through_parse(text: str) -> None:
    assert str(Platform.parse(text)) == text
    assert Platform.parse(str(Platform.parse(text))) == Platform.parse(text)


def test_str_omits_an_empty_variant() -> None:
    assert str(Platform("linux", "arm64", "")) == "linux/arm64"
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"


# --------------------------------------------------------------------------------------------------------
# §5 choosing one entry


def plats(*texts: str | None) -> list[Platform | None]:
    return [None if t is None else P(t) for t in texts]


@pytest.mark.parametrize(
    ("node", "runtime", "expected"),
    [
        ("linux/amd64", "containerd", 0),
        ("linux/amd64", "cri-o", 0),
        ("linux/arm64", "containerd", 4),
        ("linux/arm64", "containerd-strict", 4),
        ("linux/arm64", "containerd-1.7", 4),
        ("linux/arm64", "cri-o", 4),
        ("linux/arm/v7", "containerd", 3),
        ("linux/arm/v6", "containerd", 2),
        ("linux/arm/v5", "containerd", 1),
        ("linux/arm/v8", "containerd", 3),  # no arm/v8 entry: the next in its vector
        ("linux/arm/v8", "containerd-strict", None),
        ("linux/386", "containerd", 5),
        ("linux/s390x", "containerd", 8),
        ("linux/riscv64", "containerd", None),
        ("linux/arm64/v8.2", "containerd", 4),
        ("linux/arm64/v8.2", "containerd-1.7", None),  # vector [arm64/v8.2, arm/v8.2]: nothing listed
        ("linux/arm64/v10", "containerd", None),
    ],
)
def test_select_from_the_busybox_list(node: str, runtime: str, expected: int | None) -> None:
    assert select(P(node), plats(*BUSYBOX), runtime) == expected


@pytest.mark.parametrize(
    ("node", "candidates", "runtime", "expected"),
    [
        # vector order beats list order
        ("linux/arm/v7", ("linux/arm/v5", "linux/arm/v7"), "containerd", 1),
        ("linux/arm64", ("linux/arm/v6", "linux/arm/v7", "linux/amd64"), "containerd", 1),
        ("linux/amd64", ("linux/386", "linux/amd64"), "containerd", 1),
        ("linux/amd64/v3", ("linux/amd64", "linux/amd64/v2", "linux/386"), "containerd", 1),
        ("linux/arm64/v9.1", ("linux/arm64/v8.5", "linux/arm64/v9", "linux/arm64"), "containerd", 1),
        # among equals the first listed wins
        ("linux/arm/v7", ("linux/arm", "linux/arm/v7"), "containerd", 0),
        ("linux/arm/v7", ("linux/arm/v7", "linux/arm"), "containerd", 0),
        ("linux/amd64", ("linux/amd64/v1", "linux/amd64"), "containerd", 0),
        # nothing matches
        ("linux/arm64", ("linux/amd64", "linux/s390x"), "containerd", None),
        ("linux/arm64", ("linux/arm/v7",), "containerd-strict", None),
        ("linux/amd64", (), "containerd", None),
        # entries without a platform come after everything that matches, and are a last resort
        ("linux/amd64", (None, "linux/amd64"), "containerd", 1),
        ("linux/amd64", (None, "linux/amd64"), "cri-o", 1),
        ("linux/amd64", ("linux/arm64", None), "containerd", 1),
        ("linux/amd64", ("linux/arm64", None, None), "cri-o", 1),
        ("linux/amd64", (None,), "containerd-strict", 0),
        # CRI-O: the node's variant, then lower ones, then no variant; without a node variant "" first
        ("linux/arm/v7", ("linux/arm", "linux/arm/v6"), "cri-o", 1),
        ("linux/arm/v7", ("linux/arm", "linux/arm/v7"), "cri-o", 1),
        ("linux/arm64", ("linux/arm64", "linux/arm64/v8"), "cri-o", 0),  # no node variant: "" first
        ("linux/arm64/v8", ("linux/arm64", "linux/arm64/v8"), "cri-o", 1),  # a node variant: "" last
        ("linux/amd64", ("linux/amd64/v2", "linux/amd64"), "cri-o", 1),
        # Windows builds
        (
            "windows/amd64:10.0.20348",
            ("windows/amd64:10.0.17763.1", "windows/amd64:10.0.20348.2"),
            "containerd",
            1,
        ),
        (
            "windows/amd64:10.0.17763",
            ("windows/amd64:10.0.17763.1", "windows/amd64:10.0.20348.2"),
            "containerd",
            0,
        ),
    ],
)
def test_select(node: str, candidates: tuple[str | None, ...], runtime: str, expected: int | None) -> None:
    assert select(P(node), plats(*candidates), runtime) == expected


# containers/image's variant fixture (schema2list-variants.json): amd64, arm/v6, arm/unrecognized-present, arm
VARIANTS = ("linux/amd64", "linux/arm/v6", "linux/arm/unrecognized-present", "linux/arm")


@pytest.mark.parametrize(
    ("node", "crio", "containerd"),
    [
        ("linux/amd64", 0, 0),
        ("linux/arm/v7", 1, 3),  # CRI-O walks v7 -> v6 before ""; containerd reads "" as v7
        ("linux/arm/v6", 1, 1),
        ("linux/arm/v8", 1, 3),
        ("linux/arm", 3, 3),  # CRI-O: "" is its own first choice; containerd: "" is v7, the best match
        ("linux/arm/unrecognized-present", 2, 2),
        ("linux/arm/unrecognized-not-present", 3, None),
        ("linux/arm64", None, 3),
    ],
)
def test_select_variants_like_containers_image(node: str, crio: int | None, containerd: int | None) -> None:
    assert select(P(node), plats(*VARIANTS), "cri-o") == crio
    assert select(P(node), plats(*VARIANTS), "containerd") == containerd


# containers/image, read at df7e80d: internal/pkg/platform/platform_matcher_test.go TestWantedPlatforms
# (OSChoice/ArchitectureChoice/VariantChoice -> the wanted platforms, most preferred first). Our own
# table of its cases, checked through `select` alone: the order is what `select` prefers.
CRIO_WANTED = [
    ("linux/amd64", ["linux/amd64"]),  # x86_64 has no variants
    ("linux/arm/v6", ["linux/arm/v6", "linux/arm/v5", "linux/arm"]),  # a variant: walk down, "" last
    ("linux/arm", ["linux/arm", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/arm64", ["linux/arm64", "linux/arm64/v8"]),  # arm64 has a base variant
    ("freeBSD/armel/custom", ["freeBSD/armel/custom", "freeBSD/armel"]),  # unrecognized: no normalization
]
CRIO_POOL = (
    "linux/amd64",
    "linux/amd64/v2",
    "linux/386",
    "linux/arm",
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm/v8",
    "linux/armhf",
    "linux/armel",
    "linux/arm64",
    "linux/arm64/v8",
    "linux/aarch64",
    "freebsd/armel/custom",
    "freeBSD/armel",
    "freeBSD/armel/custom",
    "freeBSD/arm/v6",
)


def preference(node: Platform, pool: tuple[str, ...], runtime: str) -> list[str]:
    """The entries of `pool` that `runtime` on `node` accepts, in the order `select` takes them."""
    left = list(pool)
    order: list[str] = []
    while (index := select(node, plats(*left), runtime)) is not None:
        order.append(left.pop(index))
    return order


@pytest.mark.parametrize(("node", "wanted"), CRIO_WANTED)
def test_crio_wants_what_containers_image_wants(node: str, wanted: list[str]) -> None:
    assert preference(P(node), CRIO_POOL, "cri-o") == wanted
    assert preference(P(node), tuple(reversed(CRIO_POOL)), "cri-o") == wanted  # list order is no factor


# containers/image, read at df7e80d: internal/manifest/list_test.go TestChooseInstance and
# oci_index_test.go TestOCI1IndexChooseInstanceByCompression, over the same fixtures (copied into
# tests/unit/fixtures/manifests). Node = OSChoice "linux" + ArchitectureChoice + VariantChoice.
# Values: the first 12 hex digits of the digest containers/image picks (None: "no image found").
S2, S2_VARIANTS = "containers-image__schema2list", "containers-image__schema2list-variants"
OCI_VARIANTS = "containers-image__ocilist-variants"
CRIO_CHOOSE = [
    (S2, "linux/amd64", "030fcb92e148"),
    (S2, "linux/s390x", "e5aa1b0a2462"),
    (S2, "linux/arm/v7", "b5dbad4bdb44"),
    (S2, "linux/arm64", "dc472a59fb00"),
    (S2, "linux/unmatched", None),
    (S2_VARIANTS, "linux/amd64", "59eec8837a4d"),
    (S2_VARIANTS, "linux/arm/v7", "f365626a556e"),
    (S2_VARIANTS, "linux/arm/v6", "f365626a556e"),
    (S2_VARIANTS, "linux/arm/v5", "c84b0a3a07b6"),
    # the case issue #12 names: an arm node without a variant takes the plain `arm` entry, not arm/v6
    (S2_VARIANTS, "linux/arm", "c84b0a3a07b6"),
    (S2_VARIANTS, "linux/arm/unrecognized-present", "bcf9771c0b50"),
    (S2_VARIANTS, "linux/arm/unrecognized-not-present", "c84b0a3a07b6"),
    (S2_VARIANTS, "linux/unmatched", None),
    (OCI_VARIANTS, "linux/amd64", "59eec8837a4d"),
    (OCI_VARIANTS, "linux/arm/v7", "eeeeeeeeeeee"),
    # two arm/v6 entries: the first listed (containers/image with preferGzip; without it a
    # zstd-annotated one wins, which `select` cannot see: it is given platforms, not compression)
    (OCI_VARIANTS, "linux/arm/v6", "dddddddddddd"),
    (OCI_VARIANTS, "linux/arm/v5", "c84b0a3a07b6"),
    # archaudit took the arm/v7 entry here before: it read the node's empty variant as v7
    (OCI_VARIANTS, "linux/arm", "c84b0a3a07b6"),
    (OCI_VARIANTS, "linux/arm/unrecognized-present", "bcf9771c0b50"),
    (OCI_VARIANTS, "linux/arm/unrecognized-not-present", "c84b0a3a07b6"),
    (OCI_VARIANTS, "linux/unmatched", None),
]
FIXTURES = Path(__file__).parent / "fixtures" / "manifests"


@pytest.mark.parametrize(("fixture", "node", "digest"), CRIO_CHOOSE)
def test_crio_chooses_the_instance_containers_image_chooses(
    fixture: str, node: str, digest: str | None
) -> None:
    index = parse_document((FIXTURES / f"{fixture}.json").read_bytes())
    assert isinstance(index, Index)
    chosen = select(P(node), [entry.platform for entry in index.manifests], "cri-o")
    picked = None if chosen is None else index.manifests[chosen].digest.removeprefix("sha256:")[:12]
    assert picked == digest


# containers/image's oci1index.json (not copied: three entries), the same test: os.features are not
# looked at (the amd64 entry declares sse4), arm64 has no entry of its own here.
OCI1INDEX = ("linux/ppc64le", "linux/amd64", "linux/arm64")


def test_crio_ignores_os_features_like_containers_image() -> None:
    entries = plats(*OCI1INDEX)
    entries[1] = Platform("linux", "amd64", os_features=("sse4",))
    assert select(P("linux/amd64"), entries, "cri-o") == 1
    assert select(P("linux/ppc64le"), entries, "cri-o") == 0
    assert select(P("linux/unmatched"), entries, "cri-o") is None


def test_can_run_agrees_with_select_on_one_candidate() -> None:
    for node, image, *expected in VERDICTS:
        for runtime, runs in zip(RUNTIMES, expected, strict=True):
            assert (select(P(node), [P(image)], runtime) == 0) is runs, (node, image, runtime)


# --------------------------------------------------------------------------------------------------------
# fit: profiles in order


@pytest.mark.parametrize(
    ("node", "candidates", "profiles", "expected"),
    [
        ("linux/arm64", ("linux/arm/v7",), ("containerd-strict", "containerd"), (Fit.AT_RISK, 0)),
        ("linux/arm64", ("linux/arm/v7", "linux/arm64"), ("containerd-strict", "containerd"), (Fit.RUNS, 1)),
        ("linux/arm64", ("linux/amd64",), ("containerd-strict", "containerd"), (Fit.NO, None)),
        ("linux/arm64", ("linux/arm/v7",), ("containerd",), (Fit.RUNS, 0)),
        ("linux/arm64", ("linux/arm/v7",), ("containerd-strict",), (Fit.NO, None)),
        ("linux/amd64", ("linux/386",), ("containerd-strict", "containerd"), (Fit.AT_RISK, 0)),
        ("linux/amd64", ("linux/386", "linux/amd64"), ("containerd-strict", "containerd"), (Fit.RUNS, 1)),
        ("linux/arm64", ("linux/arm64",), ("cri-o",), (Fit.RUNS, 0)),
        # an entry without a platform is pulled, but whether it runs is unknown
        ("linux/amd64", (None,), ("containerd",), (Fit.AT_RISK, 0)),
        ("linux/amd64", ("linux/arm64", None), ("containerd-strict", "containerd"), (Fit.AT_RISK, 1)),
        ("linux/amd64", (None, "linux/amd64"), ("containerd",), (Fit.RUNS, 1)),
    ],
)
def test_fit(
    node: str, candidates: tuple[str | None, ...], profiles: tuple[str, ...], expected: tuple[Fit, int | None]
) -> None:
    assert fit(P(node), plats(*candidates), profiles) == expected


def test_fit_needs_a_profile() -> None:
    with pytest.raises(ValueError, match="at least one runtime profile"):
        fit(P("linux/amd64"), plats("linux/amd64"), ())


def test_fit_values_are_stable_strings() -> None:
    assert [f.value for f in Fit] == ["runs", "at-risk", "no"]


# --------------------------------------------------------------------------------------------------------
# §4 Windows os.version


@pytest.mark.parametrize(
    ("node", "image", "expected"),
    [
        ("10.0.20348", "10.0.20348.1129", True),
        ("10.0.20348.1", "10.0.20348.2", True),  # the revision does not matter
        ("10.0.20348", "10.0.17763.3532", False),  # WS2022 runs only 20348
        ("10.0.20348", "10.0.26100.1", False),
        ("10.0.26100", "10.0.20348.1", True),  # WS2025 runs 20348..26100
        ("10.0.26100", "10.0.22621.1", True),
        ("10.0.26100", "10.0.26100.100", True),
        ("10.0.26100", "10.0.17763.1", False),
        ("10.0.26100", "10.0.26101.1", False),
        ("10.0.22621", "10.0.20348.1", True),  # Windows 11: above 20348, S = 20348
        ("10.0.22621", "10.0.22000.1", True),
        ("10.0.22621", "10.0.26100.1", False),
        ("10.0.30000", "10.0.26100.1", True),  # a future build: S = 26100
        ("10.0.30000", "10.0.20348.1", False),
        ("10.0.17763", "10.0.17763.3532", True),  # before WS2022: same build only
        ("10.0.17763", "10.0.17134.1", False),
        ("10.0.17763", "10.0.20348.1", False),
        ("10.0.20348", "10.1.20348.1", False),  # major.minor must be equal
        ("10.0.20348", "11.0.20348.1", False),
        ("", "10.0.17763.1", True),  # either side empty or unparsable: passes
        ("10.0.20348", "", True),
        ("garbage", "10.0.17763.1", True),
        ("10.0.20348", "10.0", True),
        ("10.0.20348", "10.0.x.1", True),
        ("10.0.20348", "10.0.99999", True),  # build beyond uint16: unparsable
        ("10.0.20348", "+10.0.17763", True),
    ],
)
def test_windows_version_compatible(node: str, image: str, expected: bool) -> None:
    assert windows_version_compatible(node, image) is expected


# --------------------------------------------------------------------------------------------------------
# §3 choosing profiles per node


@pytest.mark.parametrize(
    ("version", "pull_mode", "expected"),
    [
        ("containerd://1.7.23-k3s2", None, ("containerd-1.7",)),
        ("containerd://1.6.28", None, ("containerd-1.7",)),
        ("containerd://1.7.0", "transfer", ("containerd-1.7",)),  # 1.x always pulls in process
        ("containerd://2.0.4-k3s2", None, ("containerd-strict", "containerd")),
        ("containerd://2.1.0", "local", ("containerd",)),
        ("containerd://2.1.0", "transfer", ("containerd-strict",)),
        ("containerd://2.0.0", "bogus", ("containerd-strict", "containerd")),
        ("containerd://2.0.0", "", ("containerd-strict", "containerd")),
        ("containerd://v2.0.0", None, ("containerd-strict", "containerd")),
        ("CONTAINERD://2.0.0", " Local ", ("containerd",)),
        ("containerd://3.0.0", "local", ("containerd",)),
        ("cri-o://1.30.2", None, ("cri-o",)),
        ("cri-o://1.30.2", "local", ("cri-o",)),
        ("docker://24.0.7", None, ("containerd",)),
        ("", None, ("containerd",)),
        ("containerd://", None, ("containerd",)),
        ("containerd://unknown", None, ("containerd",)),
    ],
)
def test_profiles_for(version: str, pull_mode: str | None, expected: tuple[str, ...]) -> None:
    assert profiles_for(version, pull_mode) == expected
    assert all(profile in RUNTIMES for profile in expected)


# --------------------------------------------------------------------------------------------------------
# §7 nodes


def labels(os: str, arch: str, **extra: str) -> dict[str, str]:
    return {"kubernetes.io/os": os, "kubernetes.io/arch": arch, **extra}


@pytest.mark.parametrize(
    ("node_labels", "node_info", "expected"),
    [
        (labels("linux", "amd64"), None, Platform("linux", "amd64")),
        (labels("linux", "arm"), None, Platform("linux", "arm", "v7")),
        (labels("linux", "arm", **{"archaudit.io/variant": "v6"}), None, Platform("linux", "arm", "v6")),
        (labels("linux", "arm", **{"archaudit.io/variant": "6"}), None, Platform("linux", "arm", "v6")),
        (labels("linux", "arm64"), None, Platform("linux", "arm64")),
        (labels("linux", "arm64", **{"archaudit.io/variant": "v8"}), None, Platform("linux", "arm64")),
        (
            labels("linux", "arm64", **{"archaudit.io/variant": "v8.2"}),
            None,
            Platform("linux", "arm64", "v8.2"),
        ),
        (labels("linux", "amd64", **{"archaudit.io/variant": "v3"}), None, Platform("linux", "amd64", "v3")),
        ({}, {"operatingSystem": "linux", "architecture": "arm64"}, Platform("linux", "arm64")),
        (
            {"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "s390x"},
            None,
            Platform("linux", "s390x"),
        ),
        (
            labels("linux", "arm64"),
            {"operatingSystem": "linux", "architecture": "amd64"},
            Platform("linux", "arm64"),
        ),
        (
            labels("windows", "amd64", **{"node.kubernetes.io/windows-build": "10.0.20348"}),
            None,
            Platform("windows", "amd64", os_version="10.0.20348"),
        ),
        (
            labels("windows", "amd64"),
            {"kernelVersion": "10.0.17763.5122"},
            Platform("windows", "amd64", os_version="10.0.17763.5122"),
        ),
        (
            labels("windows", "amd64", **{"node.kubernetes.io/windows-build": "n/a"}),
            None,
            Platform("windows", "amd64"),
        ),
        (labels("linux", "amd64"), {"kernelVersion": "6.1.0-13-amd64"}, Platform("linux", "amd64")),
    ],
)
def test_node_platform(
    node_labels: dict[str, str], node_info: dict[str, str] | None, expected: Platform
) -> None:
    assert node_platform(node_labels, node_info) == expected


def test_node_platform_without_os_or_arch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"kubernetes\.io/arch"):
        node_platform({"kubernetes.io/os": "linux"})


def test_a_pi_zero_node_refuses_arm_v7_images() -> None:
    pi_zero = node_platform(labels("linux", "arm", **{"archaudit.io/variant": "v6"}))
    assert not can_run(pi_zero, P("linux/arm/v7"))
    assert can_run(pi_zero, P("linux/arm/v6"))
    assert select(pi_zero, plats(*BUSYBOX)) == 2
