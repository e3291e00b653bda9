"""The verdict, the admission answer under every mode, and the exact words of both."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from archaudit.core import policy
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Fit, Platform
from archaudit.core.policy import Decision, ImageResult, Mode, Verdict, decide, evaluate
from archaudit.core.scheduling import Node, candidates, virtual_nodes
from archaudit.core.workloads import containers_of

API = "ghcr.io/acme/api:1.2"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def index(*platforms: str) -> ImagePlatforms:
    entries = tuple(PlatformEntry(Platform.parse(p), digest(i + 1)) for i, p in enumerate(platforms))
    return ImagePlatforms(digest(0), MEDIA_INDEX, "index", entries)


def single(platform: str | None, kind: str = "manifest") -> ImagePlatforms:
    parsed = None if platform is None else Platform.parse(platform)
    return ImagePlatforms(digest(99), MEDIA_MANIFEST, kind, (PlatformEntry(parsed, digest(99)),))


def node(name: str, platform: str, profiles: Sequence[str] = ("containerd-1.7",)) -> Node:
    p = Platform.parse(platform)
    labels = {"kubernetes.io/os": p.os, "kubernetes.io/arch": p.architecture}
    return Node(name, p, tuple(profiles), labels)


TIMEOUT = ResolutionError(Reason.TIMEOUT, f"image {API}: the registry did not answer within 3.5s")
AMD = node("amd-1", "linux/amd64")
ARM = node("arm-1", "linux/arm64")

# verdict -> (images, candidates, message for a pod, message for a workload)
SCENARIOS: dict[str, tuple[list[ImageResult], list[Node], str, str]] = {
    "compatible": (
        [("api", API, index("linux/amd64", "linux/arm64"))],
        [AMD, ARM],
        "all images run on every node this pod can use (linux/amd64, linux/arm64)",
        "all images run on every node its pods can use (linux/amd64, linux/arm64)",
    ),
    "incompatible": (
        [("api", API, index("linux/amd64"))],
        [ARM],
        f"image {API} provides linux/amd64 only; nodes this pod can use are linux/arm64",
        f"image {API} provides linux/amd64 only; nodes its pods can use are linux/arm64",
    ),
    "at-risk": (
        [("api", API, index("linux/amd64"))],
        [ARM, AMD],
        f"image {API} provides linux/amd64 only; nodes this pod can use are linux/amd64, linux/arm64; "
        "fix: add nodeSelector kubernetes.io/arch=amd64",
        f"image {API} provides linux/amd64 only; nodes its pods can use are linux/amd64, linux/arm64; "
        "fix: add nodeSelector kubernetes.io/arch=amd64",
    ),
    "unresolved": (
        [("api", API, TIMEOUT)],
        [AMD, ARM],
        f"image {API} could not be checked (timeout): the registry did not answer within 3.5s",
        f"image {API} could not be checked (timeout): the registry did not answer within 3.5s",
    ),
    "no-nodes": (
        [("api", API, index("linux/amd64"))],
        [],
        "no node matches this pod's scheduling constraints",
        "no node matches the pod template's scheduling constraints",
    ),
    "no-nodes-unresolved": (
        [("api", API, TIMEOUT)],
        [],
        "no node matches this pod's scheduling constraints",
        "no node matches the pod template's scheduling constraints",
    ),
}
VERDICTS = {
    "compatible": Verdict.COMPATIBLE,
    "incompatible": Verdict.INCOMPATIBLE,
    "at-risk": Verdict.AT_RISK,
    "unresolved": Verdict.UNKNOWN,
    "no-nodes": Verdict.UNKNOWN,
    "no-nodes-unresolved": Verdict.UNKNOWN,
}
WORKLOAD_DENIAL_NOTE = "its pods will be denied: archaudit enforces in this namespace"

# (scenario, mode, is_pod, deny_unresolved) -> (allowed, what the warnings are)
#   warnings: "none", "message" (one warning: the message), "message+note" (and the enforce note)
DENY, WARN_MSG, NONE, NOTE = False, "message", "none", "message+note"
MODE_TABLE = [
    # enforce: Pods denied when incompatible; workloads warned (as Pod Security Admission)
    ("compatible", Mode.ENFORCE, True, False, True, NONE),
    ("compatible", Mode.ENFORCE, False, False, True, NONE),
    ("incompatible", Mode.ENFORCE, True, False, DENY, NONE),
    ("incompatible", Mode.ENFORCE, False, False, True, NOTE),
    ("at-risk", Mode.ENFORCE, True, False, True, WARN_MSG),
    ("at-risk", Mode.ENFORCE, False, False, True, WARN_MSG),
    ("unresolved", Mode.ENFORCE, True, False, True, WARN_MSG),
    ("unresolved", Mode.ENFORCE, False, False, True, WARN_MSG),
    ("unresolved", Mode.ENFORCE, True, True, DENY, NONE),  # deny_unresolved
    ("unresolved", Mode.ENFORCE, False, True, True, WARN_MSG),  # workloads still only warned
    ("no-nodes", Mode.ENFORCE, True, False, True, WARN_MSG),
    ("no-nodes", Mode.ENFORCE, True, True, True, WARN_MSG),  # not an unresolved image: never denied
    ("no-nodes", Mode.ENFORCE, False, False, True, WARN_MSG),
    ("no-nodes-unresolved", Mode.ENFORCE, True, True, True, WARN_MSG),  # Pending says it: never denied
    # warn: always admitted, with the warnings
    ("compatible", Mode.WARN, True, False, True, NONE),
    ("incompatible", Mode.WARN, True, False, True, WARN_MSG),
    ("incompatible", Mode.WARN, False, False, True, WARN_MSG),
    ("at-risk", Mode.WARN, True, False, True, WARN_MSG),
    ("at-risk", Mode.WARN, False, False, True, WARN_MSG),
    ("unresolved", Mode.WARN, True, True, True, WARN_MSG),
    ("unresolved", Mode.WARN, False, False, True, WARN_MSG),
    ("no-nodes", Mode.WARN, False, False, True, WARN_MSG),
    # audit: admitted silently, the message kept for the record
    ("compatible", Mode.AUDIT, True, False, True, NONE),
    ("incompatible", Mode.AUDIT, True, False, True, NONE),
    ("incompatible", Mode.AUDIT, False, False, True, NONE),
    ("at-risk", Mode.AUDIT, True, False, True, NONE),
    ("unresolved", Mode.AUDIT, True, True, True, NONE),
    ("no-nodes", Mode.AUDIT, False, False, True, NONE),
    # off: nothing
    ("compatible", Mode.OFF, True, False, True, NONE),
    ("incompatible", Mode.OFF, True, False, True, NONE),
    ("incompatible", Mode.OFF, False, False, True, NONE),
    ("at-risk", Mode.OFF, True, False, True, NONE),
    ("unresolved", Mode.OFF, True, True, True, NONE),
    ("no-nodes", Mode.OFF, True, False, True, NONE),
]


@pytest.mark.parametrize(("scenario", "mode", "is_pod", "deny_unresolved", "allowed", "warnings"), MODE_TABLE)
def test_verdict_by_mode_and_kind(
    scenario: str, mode: Mode, is_pod: bool, deny_unresolved: bool, allowed: bool, warnings: str
) -> None:
    images, nodes, pod_message, workload_message = SCENARIOS[scenario]
    d = decide(images, nodes, mode=mode, is_pod=is_pod, deny_unresolved=deny_unresolved)
    message = pod_message if is_pod else workload_message
    assert d.verdict is VERDICTS[scenario]
    assert d.allowed is allowed
    assert d.message == ("" if mode is Mode.OFF else message)
    expected_warnings = {
        NONE: (),
        WARN_MSG: (message,),
        NOTE: (message, WORKLOAD_DENIAL_NOTE),
    }[warnings]
    assert d.warnings == expected_warnings


def test_every_verdict_and_mode_is_in_the_table() -> None:
    seen = {(VERDICTS[s], m, p) for s, m, p, *_ in MODE_TABLE}
    assert {(v, m) for v, m, _p in seen} == {(v, m) for v in Verdict for m in Mode}
    assert {p for *_, p in seen} == {True, False}


def test_warnings_follow_kubernetes_guidance() -> None:
    for images, nodes, *_ in SCENARIOS.values():
        for w in decide(images, nodes, mode=Mode.WARN, is_pod=True).warnings:
            assert not w.lower().startswith("warning")
            assert "\n" not in w
            assert len(w) < 160


# --- fits, usable nodes, image checks ------------------------------------------------------------------


def test_image_checks_carry_fits_pulls_and_usable_nodes() -> None:
    image = index("linux/amd64", "linux/arm/v7")
    strict_arm = node("arm-strict", "linux/arm64", ("containerd-strict",))
    ev = evaluate([("api", API, image)], [ARM, AMD, strict_arm])
    (check,) = ev.images
    assert check.container == "api"
    assert check.image == API
    assert check.provides == (Platform("linux", "amd64"), Platform("linux", "arm", "v7"))
    assert check.digest == digest(0)
    assert check.unresolved is None
    assert dict(check.fits) == {"arm-1": Fit.RUNS, "amd-1": Fit.RUNS, "arm-strict": Fit.NO}
    assert dict(check.pulls) == {"arm-1": digest(2), "amd-1": digest(1), "arm-strict": None}
    assert check.fit_on(AMD) is Fit.RUNS
    assert ev.usable_nodes == ("amd-1", "arm-1")  # sorted
    assert ev.candidates == ("arm-1", "amd-1", "arm-strict")
    assert ev.verdict is Verdict.AT_RISK


def test_unresolved_image_check() -> None:
    ev = evaluate([("api", API, TIMEOUT)], [AMD])
    (check,) = ev.images
    assert check.unresolved is TIMEOUT
    assert check.provides == ()
    assert check.digest is None
    assert dict(check.fits) == {}
    assert check.fit_on(AMD) is None
    assert ev.usable_nodes == ()


# --- containerd 2.x: the pull mode decides ---------------------------------------------------------------

ARMV7_ONLY = "docker.io/acme/legacy:3"


@pytest.mark.parametrize(
    ("profiles", "verdict", "message"),
    [
        (
            ("containerd-strict", "containerd"),  # containerd 2.x, pull mode unknown
            Verdict.AT_RISK,
            f"image {ARMV7_ONLY} provides linux/arm/v7 only; "
            "linux/arm64 nodes run it only if their containerd pulls locally",
        ),
        (
            ("containerd-strict",),  # transfer service
            Verdict.INCOMPATIBLE,
            f"image {ARMV7_ONLY} provides linux/arm/v7 only; nodes this pod can use are linux/arm64",
        ),
        (("containerd",), Verdict.COMPATIBLE, "all images run on every node this pod can use (linux/arm64)"),
    ],
)
def test_containerd2_arm_v7_image_on_arm64(profiles: tuple[str, ...], verdict: Verdict, message: str) -> None:
    arm64 = node("arm-1", "linux/arm64", profiles)
    d = decide([("legacy", ARMV7_ONLY, index("linux/arm/v7"))], [arm64], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is verdict
    assert d.message == message
    assert d.allowed is (verdict is not Verdict.INCOMPATIBLE)  # at risk is a warning, never a denial
    assert d.warnings == (() if verdict is not Verdict.AT_RISK else (message,))
    assert d.fix is None


def test_at_risk_node_beside_a_sure_one_suggests_the_sure_arch() -> None:
    unsure = node("arm64-1", "linux/arm64", ("containerd-strict", "containerd"))
    pi = node("pi-1", "linux/arm/v7")
    d = decide([("legacy", ARMV7_ONLY, index("linux/arm/v7"))], [unsure, pi], mode=Mode.WARN, is_pod=True)
    assert d.verdict is Verdict.AT_RISK
    assert d.usable_nodes == ("pi-1",)
    assert d.fix == "add nodeSelector kubernetes.io/arch=arm"
    assert d.warnings == (
        f"image {ARMV7_ONLY} provides linux/arm/v7 only; linux/arm64 nodes run it only if their containerd "
        "pulls locally; fix: add nodeSelector kubernetes.io/arch=arm",
    )


# --- several images: one common node --------------------------------------------------------------------


def test_init_and_ephemeral_containers_count() -> None:
    spec = {
        "initContainers": [{"name": "migrate", "image": "acme/migrate:1"}],
        "containers": [{"name": "api", "image": API}],
        "ephemeralContainers": [{"name": "debug", "image": "acme/debug:1"}],
    }
    resolved = {
        API: index("linux/amd64", "linux/arm64"),
        "acme/migrate:1": index("linux/amd64", "linux/arm64"),
        "acme/debug:1": single("linux/amd64"),
    }
    images = [(name, image, resolved[image]) for _section, name, image in containers_of(spec)]
    assert [name for name, _i, _r in images] == ["api", "migrate", "debug"]
    d = decide(images, [ARM], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.INCOMPATIBLE
    assert not d.allowed
    assert d.message == "image acme/debug:1 provides linux/amd64 only; nodes this pod can use are linux/arm64"
    # an amd64-only init container on a mixed cluster: at risk, with the fix
    resolved["acme/debug:1"] = index("linux/amd64", "linux/arm64")
    resolved["acme/migrate:1"] = index("linux/amd64")
    images = [(name, image, resolved[image]) for _section, name, image in containers_of(spec)]
    d = decide(images, [ARM, AMD], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.AT_RISK
    assert d.allowed
    assert d.fix == "add nodeSelector kubernetes.io/arch=amd64"


def test_images_that_share_no_node_are_incompatible() -> None:
    images: list[ImageResult] = [
        ("a", "acme/a:1", index("linux/amd64")),
        ("b", "acme/b:1", index("linux/arm64")),
        ("c", "acme/c:1", index("linux/amd64", "linux/arm64")),
    ]
    d = decide(images, [AMD, ARM], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.INCOMPATIBLE
    assert not d.allowed
    assert d.usable_nodes == ()
    assert d.message == (
        "no node this pod can use runs all of its images: image acme/a:1 provides linux/amd64 only; "
        "image acme/b:1 provides linux/arm64 only; nodes this pod can use are linux/amd64, linux/arm64"
    )
    w = decide(images, [AMD, ARM], mode=Mode.WARN, is_pod=False)
    assert w.warnings == (w.message,)
    assert w.message.startswith("no node its pods can use runs all of its images: ")


def test_a_resolved_image_that_runs_nowhere_beats_an_unresolved_one() -> None:
    images: list[ImageResult] = [("db", "acme/db:1", TIMEOUT), ("api", API, index("linux/amd64"))]
    d = decide(images, [ARM], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.INCOMPATIBLE
    assert not d.allowed
    assert d.message == (
        f"image {API} provides linux/amd64 only; nodes this pod can use are linux/arm64; "
        f"image acme/db:1 could not be checked (timeout): image {API}: "
        "the registry did not answer within 3.5s"
    )


def test_unresolved_beside_a_partial_fit_is_unknown_and_names_both() -> None:
    not_found = ResolutionError(Reason.NOT_FOUND, "image 'acme/db:1': manifest unknown")
    images: list[ImageResult] = [("api", API, index("linux/amd64")), ("db", "acme/db:1", not_found)]
    d = decide(images, [AMD, ARM], mode=Mode.ENFORCE, is_pod=True, deny_unresolved=False)
    assert d.verdict is Verdict.UNKNOWN
    assert d.allowed
    assert d.fix is None  # the unresolved image may need another arch
    assert d.usable_nodes == ()
    assert d.warnings == (
        f"image {API} provides linux/amd64 only; nodes this pod can use are linux/amd64, linux/arm64",
        "image acme/db:1 could not be checked (not-found): manifest unknown",
    )
    assert decide(images, [AMD, ARM], mode=Mode.ENFORCE, is_pod=True, deny_unresolved=True).allowed is False


def test_an_image_used_twice_is_told_once() -> None:
    images: list[ImageResult] = [("a", API, index("linux/amd64")), ("b", API, index("linux/amd64"))]
    d = decide(images, [ARM], mode=Mode.WARN, is_pod=True)
    assert len(d.images) == 2
    assert d.warnings == (f"image {API} provides linux/amd64 only; nodes this pod can use are linux/arm64",)


def test_no_images_is_compatible() -> None:
    d = decide([], [AMD], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.COMPATIBLE
    assert d.allowed
    assert d.usable_nodes == ("amd-1",)


# --- words: platforms, variants, fixes -------------------------------------------------------------------


def test_messages_are_deterministic_whatever_the_order() -> None:
    nodes = [
        node("a", "linux/s390x"),
        node("b", "linux/arm64"),
        node("c", "linux/amd64"),
        node("d", "linux/arm64"),
    ]
    image = index("linux/arm64", "linux/amd64")
    one = decide([("api", API, image)], nodes, mode=Mode.WARN, is_pod=True)
    two = decide(
        [("api", API, index("linux/amd64", "linux/arm64"))], nodes[::-1], mode=Mode.WARN, is_pod=True
    )
    assert one.message == two.message
    assert one.message == (
        f"image {API} provides linux/amd64, linux/arm64 only; "
        "nodes this pod can use are linux/amd64, linux/arm64, linux/s390x; "
        "fix: require node affinity kubernetes.io/arch In (amd64, arm64)"
    )
    assert one.usable_nodes == two.usable_nodes == ("b", "c", "d")


def test_variants_are_named_and_a_shared_arch_label_gives_no_fix() -> None:
    nodes = [node("pi-zero", "linux/arm/v6"), node("pi-3", "linux/arm/v7")]
    d = decide([("api", API, index("linux/arm/v7"))], nodes, mode=Mode.WARN, is_pod=True)
    assert d.verdict is Verdict.AT_RISK
    assert d.fix is None  # both nodes are labelled kubernetes.io/arch=arm
    assert (
        d.message
        == f"image {API} provides linux/arm/v7 only; nodes this pod can use are linux/arm/v6, linux/arm/v7"
    )


def test_windows_node_of_the_same_arch_gives_no_arch_fix() -> None:
    win = node("win", "windows/amd64:10.0.20348")
    d = decide([("api", API, index("linux/amd64"))], [AMD, win], mode=Mode.WARN, is_pod=True)
    assert d.verdict is Verdict.AT_RISK
    assert d.fix is None
    assert d.message == (
        f"image {API} provides linux/amd64 only; "
        "nodes this pod can use are linux/amd64, windows/amd64:10.0.20348"
    )


def test_nodes_without_an_arch_label_are_left_out_of_the_fix() -> None:
    unlabelled = Node("old", Platform("linux", "arm64"), ("containerd-1.7",), {})
    d = decide([("api", API, index("linux/amd64"))], [AMD, unlabelled], mode=Mode.WARN, is_pod=True)
    assert d.fix == "add nodeSelector kubernetes.io/arch=amd64"


@pytest.mark.parametrize(
    ("image", "provides"),
    [
        (single(None, "artifact"), "no platform"),
        (single(None), "no platform"),
        (single("linux/amd64"), "linux/amd64 only"),
    ],
)
def test_single_manifests(image: ImagePlatforms, provides: str) -> None:
    d = decide([("api", API, image)], [ARM], mode=Mode.ENFORCE, is_pod=True)
    assert d.verdict is Verdict.INCOMPATIBLE
    assert d.message == f"image {API} provides {provides}; nodes this pod can use are linux/arm64"


def test_virtual_nodes_make_an_image_at_risk() -> None:
    real = [AMD, node("amd-2", "linux/amd64")]
    nodes = candidates({}, [*real, *virtual_nodes(["linux/arm64"])])
    d = decide([("api", API, index("linux/amd64"))], nodes, mode=Mode.WARN, is_pod=False)
    assert d.verdict is Verdict.AT_RISK
    assert d.usable_nodes == ("amd-1", "amd-2")
    assert d.warnings == (
        f"image {API} provides linux/amd64 only; nodes its pods can use are linux/amd64, linux/arm64; "
        "fix: add nodeSelector kubernetes.io/arch=amd64",
    )
    pinned = candidates(
        {"nodeSelector": {"kubernetes.io/arch": "amd64"}}, [*real, *virtual_nodes(["linux/arm64"])]
    )
    assert decide([("api", API, index("linux/amd64"))], pinned, mode=Mode.WARN, is_pod=False).verdict is (
        Verdict.COMPATIBLE
    )


def test_decision_is_a_value() -> None:
    images, nodes, *_ = SCENARIOS["at-risk"]
    a = decide(images, nodes, mode=Mode.WARN, is_pod=True)
    b = decide(images, nodes, mode=Mode.WARN, is_pod=True)
    assert isinstance(a, Decision)
    assert a == b
    assert hash(a) == hash(b)


# --- namespace modes and image exemptions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "labels", "exempt", "expected"),
    [
        ("shop", {}, (), policy.Mode.ENFORCE),
        ("shop", {"archaudit.io/mode": "warn"}, (), policy.Mode.WARN),
        ("shop", {"archaudit.io/mode": "audit"}, (), policy.Mode.AUDIT),
        ("shop", {"archaudit.io/mode": "off"}, (), policy.Mode.OFF),
        ("shop", {"archaudit.io/mode": "enforec"}, (), policy.Mode.ENFORCE),  # a typo keeps the default
        ("shop", {"archaudit.io/ignore": ""}, (), None),
        ("shop", {"archaudit.io/ignore": "false", "archaudit.io/mode": "warn"}, (), None),  # presence counts
        ("batch", {"archaudit.io/mode": "warn"}, ("batch",), None),
    ],
)
def test_namespace_mode(
    name: str, labels: dict[str, str], exempt: tuple[str, ...], expected: policy.Mode | None
) -> None:
    assert policy.namespace_mode(name, labels, default="enforce", exempt=exempt) is expected


@pytest.mark.parametrize(
    ("image", "patterns", "expected"),
    [
        ("busybox", ("docker.io/library/busybox:*",), True),  # matched in its normalized form
        ("busybox:1.36", ("busybox:*",), True),  # or as written
        ("ghcr.io/acme/api:1.2", ("ghcr.io/acme/*",), True),
        ("ghcr.io/acme/api:1.2", ("ghcr.io/other/*",), False),
        ("ghcr.io/acme/api:1.2", (), False),
        ("Not/A:Reference!", ("Not/*",), True),  # invalid references still match as written
    ],
)
def test_image_exempt(image: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert policy.image_exempt(image, patterns) is expected
