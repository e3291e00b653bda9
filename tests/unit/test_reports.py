"""ImageAudit reports: verdicts, runtime evidence, bounds, fingerprints and when an Event is due.

Inputs are the real types (manifests.ImagePlatforms, scheduling.Node, errors.ResolutionError); the
report builder is pure, so every case is a plain function call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archaudit.core import reports
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform
from archaudit.core.reports import Container, EvidenceKind, PodFacts, RuntimeEvidence, Verdict, WorkloadRef
from archaudit.core.scheduling import Node

NOW = "2025-01-01T00:00:00Z"
LATER = "2025-01-01T00:05:00Z"
WORKLOAD = WorkloadRef("apps/v1", "Deployment", "web", "uid-1", "shop")


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def image(*platforms: str, kind: str = "index") -> ImagePlatforms:
    entries = tuple(PlatformEntry(Platform.parse(p), digest(i + 100)) for i, p in enumerate(platforms))
    media = "application/vnd.oci.image.index.v1+json"
    return ImagePlatforms(digest=digest(len(platforms)), media_type=media, kind=kind, entries=entries)


def node(name: str, platform: str, profiles: tuple[str, ...] = ("containerd",)) -> Node:
    parsed = Platform.parse(platform)
    labels = {"kubernetes.io/os": parsed.os, "kubernetes.io/arch": parsed.architecture}
    return Node(name=name, platform=parsed, profiles=profiles, labels=labels)


AMD1 = node("amd64-1", "linux/amd64")
AMD2 = node("amd64-2", "linux/amd64")
ARM64 = node("arm64-1", "linux/arm64")
ARM = node("arm-1", "linux/arm/v7")

AMD_ONLY = image("linux/amd64")
MULTI = image("linux/amd64", "linux/arm64", "linux/arm/v7")
ARM64_ONLY = image("linux/arm64")


def pod(
    name: str,
    on: Node | None,
    candidates: Sequence[Node] = (),
    images: Sequence[tuple[str, str]] = (("app", "acme/app:1"),),
    evidence: tuple[RuntimeEvidence, ...] = (),
) -> PodFacts:
    return PodFacts(
        name=name,
        node=on,
        candidates=tuple(candidates) if candidates else ((on,) if on else ()),
        containers=tuple(Container(n, i) for n, i in images),
        evidence=evidence,
    )


def build(
    pods: Sequence[PodFacts],
    images: Mapping[str, ImagePlatforms | ResolutionError],
    *,
    now: str = NOW,
    previous: dict[str, Any] | None = None,
) -> reports.Audit:
    return reports.build(WORKLOAD, pods, images, now=now, previous=previous)


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


# --- runtime evidence -----------------------------------------------------------------------------


def status_with(
    key: str, name: str, state: dict[str, Any], last: dict[str, Any] | None = None
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": name, "state": state}
    if last is not None:
        cs["lastState"] = last
    return {"status": {key: [cs]}}


NO_MATCH = CONTAINERD_NO_MATCH = (
    'failed to pull and unpack image "docker.io/acme/app:1": no match for platform in manifest: not found'
)


@pytest.mark.parametrize(
    ("pod_object", "expected"),
    [
        pytest.param(
            status_with(
                "containerStatuses",
                "app",
                {"waiting": {"reason": "ErrImagePull", "message": CONTAINERD_NO_MATCH}},
            ),
            [("app", EvidenceKind.NO_PLATFORM_MATCH)],
            id="containerd-errimagepull",
        ),
        pytest.param(
            status_with(
                "containerStatuses",
                "app",
                {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "acme/app:1": ErrImagePull: {NO_MATCH}',
                    }
                },
            ),
            [("app", EvidenceKind.NO_PLATFORM_MATCH)],
            id="containerd-backoff",
        ),
        pytest.param(
            status_with(
                "containerStatuses",
                "app",
                {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 10s restarting failed container",
                    }
                },
                {
                    "terminated": {
                        "reason": "Error",
                        "exitCode": 1,
                        "message": "exec /app/server: exec format error",
                    }
                },
            ),
            [("app", EvidenceKind.EXEC_FORMAT)],
            id="crashloop-last-state",
        ),
        pytest.param(
            status_with(
                "initContainerStatuses",
                "setup",
                {
                    "terminated": {
                        "reason": "StartError",
                        "exitCode": 128,
                        "message": 'failed to create containerd task: exec: "/bin/sh": Exec Format Error',
                    }
                },
            ),
            [("setup", EvidenceKind.EXEC_FORMAT)],
            id="init-start-error-case-insensitive",
        ),
        pytest.param(
            status_with(
                "ephemeralContainerStatuses",
                "debug",
                {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": "no matching manifest for linux/arm64/v8 in the manifest list entries",
                    }
                },
            ),
            [("debug", EvidenceKind.NO_PLATFORM_MATCH)],
            id="docker-ephemeral",
        ),
        pytest.param(
            status_with(
                "containerStatuses",
                "app",
                {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": "choosing image instance: no image found in manifest list for "
                        'architecture arm64, variant "v8", OS linux',
                    }
                },
            ),
            [("app", EvidenceKind.NO_PLATFORM_MATCH)],
            id="cri-o",
        ),
        pytest.param(
            status_with(
                "containerStatuses",
                "app",
                {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": "pull access denied, repository does not exist",
                    }
                },
            ),
            [],
            id="other-pull-error",
        ),
        pytest.param(
            status_with("containerStatuses", "app", {"running": {"startedAt": NOW}}), [], id="running"
        ),
        pytest.param({"status": {}}, [], id="no-statuses"),
        pytest.param({}, [], id="no-status"),
    ],
)
def test_evidence_from_pod(pod_object: dict[str, Any], expected: list[tuple[str, EvidenceKind]]) -> None:
    found = reports.evidence_from_pod(pod_object)
    assert [(e.container, e.kind) for e in found] == expected


def test_evidence_from_pod_once_per_container_and_kind() -> None:
    text = "exec /app: exec format error"
    obj = status_with(
        "containerStatuses",
        "app",
        {"terminated": {"reason": "Error", "message": text}},
        {"terminated": {"reason": "Error", "message": text}},
    )
    found = reports.evidence_from_pod(obj)
    assert len(found) == 1
    assert found[0].message == f"Error {text}"


def test_evidence_message_is_clipped() -> None:
    obj = status_with(
        "containerStatuses",
        "app",
        {"terminated": {"reason": "Error", "message": "exec format error " + "x" * 5000}},
    )
    (found,) = reports.evidence_from_pod(obj)
    assert len(found.message.encode()) <= 200
    assert found.message.endswith("…")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            {
                "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
                "reason": "Failed",
                "message": f'Failed to pull image "acme/app:1": {CONTAINERD_NO_MATCH}',
            },
            ("web-1", "app", EvidenceKind.NO_PLATFORM_MATCH),
            id="core-v1",
        ),
        pytest.param(
            {
                "regarding": {"kind": "Pod", "name": "web-2", "fieldPath": "spec.initContainers{setup}"},
                "note": "Error: exec format error",
            },
            ("web-2", "setup", EvidenceKind.EXEC_FORMAT),
            id="events-k8s-io",
        ),
        pytest.param(
            {"involvedObject": {"kind": "Pod", "name": "web-3"}, "message": "exec format error"},
            ("web-3", "", EvidenceKind.EXEC_FORMAT),
            id="no-field-path",
        ),
    ],
)
def test_evidence_from_event(event: dict[str, Any], expected: tuple[str, str, EvidenceKind]) -> None:
    found = reports.evidence_from_event(event)
    assert found is not None
    pod_name, evidence = found
    assert (pod_name, evidence.container, evidence.kind) == expected


@pytest.mark.parametrize(
    "event",
    [
        {"involvedObject": {"kind": "Node", "name": "n"}, "message": "exec format error"},
        {"involvedObject": {"kind": "Pod", "name": "p"}, "message": "Successfully pulled image"},
        {
            "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "ImageArchMismatch",
            "message": "Incompatible: the runtime said: exec format error",
        },
        {},
    ],
)
def test_evidence_from_event_ignores_others(event: dict[str, Any]) -> None:
    assert reports.evidence_from_event(event) is None


# --- verdicts -------------------------------------------------------------------------------------


def test_compatible_everywhere() -> None:
    audit = build([pod("a", AMD1, [AMD1, ARM64]), pod("b", ARM64, [AMD1, ARM64])], {"acme/app:1": MULTI})
    assert audit.verdict is Verdict.COMPATIBLE
    assert audit.status["verdict"] == "Compatible"
    assert audit.message == "1 image runs on every node the pods use (linux/amd64, linux/arm64)"
    assert audit.status["nodePlatforms"] == "linux/amd64,linux/arm64"
    assert not audit.announce
    assert audit.status["announced"] == ""
    (entry,) = audit.status["containers"]
    assert entry["provides"] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert entry["digest"] == MULTI.digest
    assert entry["checks"] == [
        {"platform": "linux/amd64", "fit": "runs", "pods": 1},
        {"platform": "linux/arm64", "fit": "runs", "pods": 1},
    ]


def test_at_risk_when_some_candidates_cannot_run_it() -> None:
    audit = build([pod("a", AMD1, [AMD1, AMD2, ARM64])], {"acme/app:1": AMD_ONLY})
    assert audit.verdict is Verdict.AT_RISK
    assert audit.message == (
        "image acme/app:1 provides linux/amd64 only; its pods may also land on linux/arm64 nodes; "
        "fix: add nodeSelector kubernetes.io/arch=amd64"
    )
    (entry,) = audit.status["containers"]
    assert entry["reason"] == "not-on-all-candidates"
    assert entry["nodePlatforms"] == ["linux/amd64", "linux/arm64"]
    assert entry["checks"] == [
        {"platform": "linux/amd64", "fit": "runs", "pods": 1},
        {"platform": "linux/arm64", "fit": "no", "pods": 0},
    ]
    assert audit.incompatible_pods == {}
    assert audit.announce


def test_incompatible_when_a_pod_runs_where_the_image_cannot() -> None:
    pods = [pod("a", AMD1, [AMD1, ARM64]), pod("b", ARM64, [AMD1, ARM64]), pod("c", ARM64, [AMD1, ARM64])]
    audit = build(pods, {"acme/app:1": AMD_ONLY})
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert audit.message == (
        "image acme/app:1 provides linux/amd64 only; 2 pods run on linux/arm64 nodes; "
        "fix: add nodeSelector kubernetes.io/arch=amd64"
    )
    assert audit.incompatible_pods == {"linux/arm64": 2}
    assert audit.status["incompatible"] == 1
    assert audit.status["incompatiblePods"] == 2
    assert audit.status["pods"] == 3


def test_unresolved_is_unknown_with_reason() -> None:
    error = ResolutionError(Reason.AUTH, "image acme/private:1: registry docker.io refused our credentials")
    audit = build([pod("a", AMD1, images=[("app", "acme/private:1")])], {"acme/private:1": error})
    assert audit.verdict is Verdict.UNKNOWN
    assert audit.message == error.message
    (entry,) = audit.status["containers"]
    assert (entry["verdict"], entry["reason"], entry["digest"], entry["provides"]) == (
        "Unknown",
        "auth",
        "",
        [],
    )
    assert entry["checks"] == [{"platform": "linux/amd64", "fit": "unknown", "pods": 1}]
    assert audit.unresolved == {"acme/private:1": "auth"}
    resolved = condition(audit.status, "ImagesResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "Auth")
    assert not audit.announce


@pytest.mark.parametrize(
    "reason",
    [Reason.AUTH, Reason.NOT_FOUND, Reason.RATE_LIMITED, Reason.TIMEOUT, Reason.REFUSED_HOST],
)
def test_every_resolution_reason_is_reported(reason: Reason) -> None:
    audit = build([pod("a", AMD1)], {"acme/app:1": ResolutionError(reason, "why")})
    assert audit.status["containers"][0]["reason"] == reason.value
    assert condition(audit.status, "ImagesResolved")["reason"].isalnum()


def test_incompatible_image_outweighs_an_unresolved_one() -> None:
    images: dict[str, ImagePlatforms | ResolutionError] = {
        "acme/app:1": AMD_ONLY,
        "acme/side:1": ResolutionError(Reason.TIMEOUT, "image acme/side:1: timed out"),
    }
    audit = build([pod("a", ARM64, images=[("app", "acme/app:1"), ("side", "acme/side:1")])], images)
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert audit.message.startswith(
        "image acme/app:1 provides linux/amd64 only; 1 pod runs on linux/arm64 nodes"
    )
    assert audit.message.endswith("(and 1 more)")
    assert [c["verdict"] for c in audit.status["containers"]] == ["Incompatible", "Unknown"]


def test_runtime_evidence_marks_it_even_when_the_registry_is_unreachable() -> None:
    error = ResolutionError(Reason.UNREACHABLE, "image acme/app:1: registry unreachable")
    evidence = (RuntimeEvidence("app", EvidenceKind.EXEC_FORMAT, "Error exec /app: exec format error"),)
    audit = build([pod("a", ARM64, evidence=evidence)], {"acme/app:1": error})
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert audit.message == "the runtime said: Error exec /app: exec format error"
    (entry,) = audit.status["containers"]
    assert entry["runtimeMismatch"] is True
    assert entry["reason"] == "runtime-mismatch"
    mismatch = condition(audit.status, "RuntimeMismatchObserved")
    assert (mismatch["status"], mismatch["reason"]) == ("True", "ExecFormatError")
    assert "pod a container app" in mismatch["message"]
    assert audit.evidence == (("a", evidence[0]),)
    assert audit.announce


def test_evidence_from_events_counts_only_for_pods_of_the_workload() -> None:
    e = RuntimeEvidence("app", EvidenceKind.NO_PLATFORM_MATCH, "no match for platform in manifest")
    mine = reports.build(
        WORKLOAD, [pod("a", AMD1)], {"acme/app:1": MULTI}, now=NOW, extra_evidence=[("a", e)]
    )
    other = reports.build(
        WORKLOAD, [pod("a", AMD1)], {"acme/app:1": MULTI}, now=NOW, extra_evidence=[("other", e)]
    )
    assert mine.verdict is Verdict.INCOMPATIBLE
    assert condition(mine.status, "RuntimeMismatchObserved")["reason"] == "NoPlatformMatch"
    assert other.verdict is Verdict.COMPATIBLE
    assert condition(other.status, "RuntimeMismatchObserved")["status"] == "False"


def test_evidence_without_container_weighs_on_every_container_of_its_pod() -> None:
    e = RuntimeEvidence("", EvidenceKind.EXEC_FORMAT, "exec format error")
    images = {"acme/app:1": MULTI, "acme/side:1": MULTI}
    two = [("app", "acme/app:1"), ("side", "acme/side:1")]
    audit = reports.build(WORKLOAD, [pod("a", AMD1, images=two)], images, now=NOW, extra_evidence=[("a", e)])
    assert [c["runtimeMismatch"] for c in audit.status["containers"]] == [True, True]


def test_pending_pod_with_no_node_that_runs_it_is_incompatible() -> None:
    audit = build([pod("a", None, [ARM64, ARM])], {"acme/app:1": AMD_ONLY})
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert (
        audit.message
        == "image acme/app:1 provides linux/amd64 only; nodes its pods can use are linux/arm/v7, linux/arm64"
    )


def test_pending_pod_whose_images_share_no_node_is_incompatible() -> None:
    images: dict[str, ImagePlatforms | ResolutionError] = {"acme/app:1": AMD_ONLY, "acme/side:1": ARM64_ONLY}
    two = [("app", "acme/app:1"), ("side", "acme/side:1")]
    audit = build([pod("a", None, [AMD1, ARM64], images=two)], images)
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert audit.message == "1 pending pod can use no node that runs all its images"
    assert {c["verdict"] for c in audit.status["containers"]} == {"AtRisk"}
    assert audit.announce


def test_pending_pod_without_candidates_is_unknown() -> None:
    audit = build([pod("a", None, [])], {"acme/app:1": MULTI})
    assert audit.verdict is Verdict.UNKNOWN
    assert audit.message == "no node matches the pods' scheduling constraints"


def test_no_pods_is_unknown() -> None:
    audit = build([], {})
    assert (audit.verdict, audit.message, audit.status["images"]) == (Verdict.UNKNOWN, "no pods to audit", 0)


def test_containerd_2_with_unknown_pull_mode_is_at_risk() -> None:
    arm64_unknown_pull = node("arm64-2", "linux/arm64", ("containerd-strict", "containerd"))
    arm_only = image("linux/arm/v7")
    audit = build([pod("a", arm64_unknown_pull)], {"acme/app:1": arm_only})
    assert audit.verdict is Verdict.AT_RISK
    (entry,) = audit.status["containers"]
    assert entry["reason"] == "depends-on-pull-mode"
    assert entry["checks"] == [{"platform": "linux/arm64", "fit": "at-risk", "pods": 1}]


def test_artifact_runs_nowhere() -> None:
    artifact = ImagePlatforms(
        digest=digest(9),
        media_type="application/vnd.oci.image.manifest.v1+json",
        kind="artifact",
        entries=(PlatformEntry(None, digest(9)),),
    )
    audit = build([pod("a", AMD1)], {"acme/app:1": artifact})
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert "provides no platform (it is not an image)" in audit.message
    assert "fix:" not in audit.message  # no architecture would help


def test_no_arch_fix_when_variants_differ() -> None:
    v6 = node("pi-zero", "linux/arm/v6")
    audit = build([pod("a", ARM, [ARM, v6])], {"acme/app:1": image("linux/arm/v7")})
    assert audit.verdict is Verdict.AT_RISK
    assert "fix:" not in audit.message


def test_fix_names_every_working_architecture() -> None:
    audit = build([pod("a", AMD1, [AMD1, ARM64, ARM])], {"acme/app:1": image("linux/amd64", "linux/arm64")})
    assert audit.message.endswith("fix: require node affinity kubernetes.io/arch In (amd64, arm64)")


def test_rollout_lists_each_image_of_a_container() -> None:
    pods = [
        pod("old", AMD1, images=[("app", "acme/app:1")]),
        pod("new", AMD1, images=[("app", "acme/app:2")]),
    ]
    audit = build(pods, {"acme/app:1": MULTI, "acme/app:2": MULTI})
    assert [(c["name"], c["image"]) for c in audit.status["containers"]] == [
        ("app", "acme/app:1"),
        ("app", "acme/app:2"),
    ]


# --- bounds ---------------------------------------------------------------------------------------


def many_platform_nodes() -> list[Node]:
    platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/ppc64le", "linux/s390x"]
    platforms += ["linux/riscv64", "linux/386", "linux/mips64le", "linux/loong64"]
    return [node(f"node-{i}", p) for i, p in enumerate(platforms)]


def test_fifty_containers_and_five_hundred_pods_stay_small() -> None:
    nodes = many_platform_nodes()
    long_tail = "ü" * 400  # 800 bytes of UTF-8: clipped in bytes, not characters
    containers = [
        (f"c{i:02d}-{'n' * 50}", f"registry.example/{'r' * 300}/img{i}:{long_tail}") for i in range(50)
    ]
    images: dict[str, ImagePlatforms | ResolutionError] = {}
    for i, (_name, ref) in enumerate(containers):
        if i % 3 == 0:
            images[ref] = ResolutionError(Reason.TIMEOUT, "timed out " + long_tail * 10)
        else:
            images[ref] = image(*(str(n.platform) for n in nodes[: 1 + i % 4]))
    pods = [pod(f"web-{i}", nodes[i % len(nodes)], nodes, images=containers) for i in range(500)]
    evidence = (
        RuntimeEvidence(containers[5][0], EvidenceKind.EXEC_FORMAT, "exec format error " + "e" * 300),
    )
    pods[7] = pod("web-7", nodes[7], nodes, images=containers, evidence=evidence)

    audit = build(pods, images)

    size = len(json.dumps(audit.status, ensure_ascii=False).encode())
    assert size < reports.MAX_STATUS_BYTES, size
    status = audit.status
    assert status["images"] == 50
    assert len(status["containers"]) == reports.MAX_CONTAINERS
    assert status["containersOmitted"] == 50 - reports.MAX_CONTAINERS
    assert status["pods"] == 500
    assert all(len(c["checks"]) <= reports.MAX_PLATFORMS for c in status["containers"])
    assert all(len(c["provides"]) <= reports.MAX_PLATFORMS for c in status["containers"])
    # worst first: the runtime mismatch and the other incompatible images are listed, not cut
    assert status["containers"][0]["runtimeMismatch"] is True
    verdicts = [c["verdict"] for c in status["containers"]]
    assert verdicts == sorted(verdicts, key=["Incompatible", "Unknown", "AtRisk", "Compatible"].index)
    assert status["nodePlatforms"].endswith(",+4")


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=40, unique=True),
    message=st.text(max_size=2000),
)
def test_any_text_stays_within_bounds(names: list[str], message: str) -> None:
    images: dict[str, ImagePlatforms | ResolutionError] = {
        n: ResolutionError(Reason.REGISTRY_ERROR, message) for n in names
    }
    pods = [pod("p", AMD1, [AMD1, ARM64], images=[(n, n) for n in names])]
    audit = reports.build(
        WorkloadRef("v1", "Pod", "p" * 253, "u", "ns"), pods, images, now=NOW, previous=None
    )
    assert len(json.dumps(audit.status, ensure_ascii=False).encode()) < reports.MAX_STATUS_BYTES
    assert len(audit.message.encode()) <= 256


# --- stability and Events -------------------------------------------------------------------------


def test_fingerprint_ignores_time_and_pod_order() -> None:
    pods = [pod(f"p{i}", [AMD1, ARM64][i % 2], [AMD1, ARM64]) for i in range(20)]
    first = build(pods, {"acme/app:1": AMD_ONLY})
    shuffled = list(pods)
    random.Random(4).shuffle(shuffled)
    again = build(shuffled, {"acme/app:1": AMD_ONLY}, now=LATER, previous=first.status)
    assert again.fingerprint == first.fingerprint
    assert again.status["lastChecked"] == LATER
    assert reports.fingerprint(again.status) == again.fingerprint


def test_fingerprint_changes_with_the_content() -> None:
    before = build([pod("a", AMD1, [AMD1, ARM64])], {"acme/app:1": AMD_ONLY})
    after = build([pod("a", AMD1, [AMD1, ARM64])], {"acme/app:1": MULTI}, previous=before.status)
    assert before.fingerprint != after.fingerprint


def test_condition_transition_time_kept_while_status_unchanged() -> None:
    error = ResolutionError(Reason.RATE_LIMITED, "image acme/app:1: docker.io said 429")
    first = build([pod("a", AMD1)], {"acme/app:1": error})
    second = build([pod("a", AMD1)], {"acme/app:1": error}, now=LATER, previous=first.status)
    assert condition(second.status, "ImagesResolved")["lastTransitionTime"] == NOW
    third = build([pod("a", AMD1)], {"acme/app:1": MULTI}, now=LATER, previous=second.status)
    assert condition(third.status, "ImagesResolved")["lastTransitionTime"] == LATER
    assert condition(third.status, "ImagesResolved")["status"] == "True"


def test_event_announced_once_per_problem() -> None:
    images = {"acme/app:1": AMD_ONLY}
    first = build([pod("a", ARM64, [AMD1, ARM64])], images)
    assert first.announce
    resync = build([pod("a", ARM64, [AMD1, ARM64])], images, now=LATER, previous=first.status)
    assert not resync.announce
    scaled = build(
        [pod(f"p{i}", ARM64, [AMD1, ARM64]) for i in range(5)], images, now=LATER, previous=resync.status
    )
    assert not scaled.announce  # more pods, same problem
    assert scaled.fingerprint != resync.fingerprint  # but the status did change
    fixed = build([pod("a", AMD1, [AMD1])], images, now=LATER, previous=scaled.status)
    assert fixed.verdict is Verdict.COMPATIBLE
    assert not fixed.announce
    broken_again = build([pod("a", ARM64, [AMD1, ARM64])], images, now=LATER, previous=fixed.status)
    assert broken_again.announce


def test_event_announced_when_the_verdict_changes() -> None:
    images = {"acme/app:1": AMD_ONLY}
    at_risk = build([pod("a", AMD1, [AMD1, ARM64])], images)
    incompatible = build([pod("a", ARM64, [AMD1, ARM64])], images, previous=at_risk.status)
    assert at_risk.announce
    assert incompatible.announce


# --- the object -----------------------------------------------------------------------------------


def test_object_body_is_owned_by_the_workload() -> None:
    body = reports.object_body(WORKLOAD)
    assert body["apiVersion"] == "archaudit.io/v1alpha1"
    assert body["kind"] == "ImageAudit"
    assert body["metadata"]["name"] == "deployment-web"
    assert body["metadata"]["namespace"] == "shop"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-1"}
    ]
    assert body["spec"]["workload"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": "uid-1",
    }


def test_audit_name_fits_a_long_pod_name() -> None:
    a = WorkloadRef("v1", "Pod", "p" * 250 + "a", "u", "ns")
    b = WorkloadRef("v1", "Pod", "p" * 250 + "b", "u", "ns")
    assert len(reports.audit_name(a)) <= 253
    assert reports.audit_name(a) != reports.audit_name(b)
    assert reports.audit_name(WorkloadRef("batch/v1", "CronJob", "nightly", "u", "ns")) == "cronjob-nightly"


def test_reports_module_does_no_io() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(reports))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {
        "__future__",
        "enum",
        "hashlib",
        "json",
        "collections",
        "dataclasses",
        "typing",
        "archaudit",
    }


def test_platforms_are_shown_as_nodes_name_them() -> None:
    declared = image("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/arm64")
    audit = build([pod("a", ARM64, [ARM64, ARM])], {"acme/app:1": declared})
    assert audit.status["containers"][0]["provides"] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]


# --- workloads without pods: judged from the template ------------------------------------------------


def test_a_workload_whose_pods_are_all_denied_says_so() -> None:
    template = reports.TemplateFacts((Container("app", "acme/app:1"),), (ARM64,), why="no pods", denied=True)
    audit = reports.build(WORKLOAD, [], {"acme/app:1": AMD_ONLY}, now=NOW, template=template)
    assert audit.verdict is Verdict.INCOMPATIBLE
    assert audit.message == (
        "no pods: every pod would be denied: image acme/app:1 provides linux/amd64 only; "
        "nodes its pods can use are linux/arm64"
    )
    assert (audit.status["pods"], audit.status["incompatible"]) == (0, 1)
    assert audit.announce


def test_a_workload_scaled_to_zero_is_judged_from_its_template() -> None:
    template = reports.TemplateFacts((Container("app", "acme/app:1"),), (AMD1, ARM64), why="scaled to 0")
    audit = reports.build(WORKLOAD, [], {"acme/app:1": MULTI}, now=NOW, template=template)
    assert audit.verdict is Verdict.COMPATIBLE
    assert (
        audit.message == "scaled to 0: 1 image runs on every node its pods can use (linux/amd64, linux/arm64)"
    )
    at_risk = reports.build(WORKLOAD, [], {"acme/app:1": AMD_ONLY}, now=NOW, template=template)
    assert at_risk.verdict is Verdict.AT_RISK
    assert at_risk.message.startswith("scaled to 0: image acme/app:1 provides linux/amd64 only")
    assert at_risk.message.endswith("fix: add nodeSelector kubernetes.io/arch=amd64")


def test_without_pods_or_template_there_is_nothing_to_say() -> None:
    audit = reports.build(WORKLOAD, [], {}, now=NOW)
    assert (audit.verdict, audit.message) == (Verdict.UNKNOWN, "no pods to audit")
