"""ImageAudit readiness fields: `runsOn` (the engine over target nodes), replicas, requests, fixing tags."""

from __future__ import annotations

import json

from archaudit.core import readiness, reports
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.readiness import Requests
from archaudit.core.reports import Container, PodFacts, TemplateFacts
from archaudit.core.scheduling import virtual_nodes
from tests.unit.test_reports import AMD1, ARM, ARM64, MULTI, NOW, WORKLOAD, image, node

AMD_ONLY = image("linux/amd64")
ARM64_AMD = image("linux/amd64", "linux/arm64")
TARGETS = readiness.target_nodes([AMD1, ARM64], readiness.COMMON_TARGETS, profiles=("containerd",))


def build_pods(images: dict[str, ImagePlatforms | ResolutionError], **kw: object) -> reports.Audit:
    containers = tuple(Container(f"c{i}", ref) for i, ref in enumerate(images))
    pods = [PodFacts("web-1", AMD1, (AMD1, ARM64), containers)]
    return reports.build(WORKLOAD, pods, images, now=NOW, targets=TARGETS, **kw)  # type: ignore[arg-type]


def test_runs_on_is_where_every_image_runs() -> None:
    audit = build_pods({"acme/api:1.0": AMD_ONLY, "acme/multi:1": MULTI})
    assert audit.status["runsOn"] == ["linux/amd64"]
    by_image = {c["image"]: c["runsOn"] for c in audit.status["containers"]}
    assert by_image == {
        "acme/api:1.0": ["linux/amd64"],
        "acme/multi:1": ["linux/amd64", "linux/arm/v7", "linux/arm64"],
    }
    assert audit.missing == {"acme/api:1.0": ("linux/arm/v7", "linux/arm64"), "acme/multi:1": ()}


def test_runs_on_honours_the_nodes_runtime_rules() -> None:
    # An arm/v7-only image runs on arm64 under containerd 1.7 (k3s) but not with containerd 2.x's strict pull.
    arm_only = image("linux/arm/v7")
    lenient = readiness.target_nodes(
        [node("a", "linux/arm64", ("containerd-1.7",))], (), profiles=("containerd",)
    )
    strict = readiness.target_nodes(
        [node("a", "linux/arm64", ("containerd-strict",))], (), profiles=("containerd",)
    )
    containers = (Container("c", "acme/pi:1"),)
    tmpl = TemplateFacts(containers, (ARM,), why="scaled to 0")
    ok = reports.build(WORKLOAD, [], {"acme/pi:1": arm_only}, now=NOW, template=tmpl, targets=lenient)
    no = reports.build(WORKLOAD, [], {"acme/pi:1": arm_only}, now=NOW, template=tmpl, targets=strict)
    assert ok.status["runsOn"] == ["linux/arm64"]
    assert no.status["runsOn"] == []


def test_an_unresolved_image_runs_nowhere_known() -> None:
    audit = build_pods({"acme/api:1.0": ResolutionError(Reason.TIMEOUT, "slow"), "acme/multi:1": MULTI})
    assert audit.status["runsOn"] == []
    assert "acme/api:1.0" not in audit.missing  # nothing to look a fixing tag up for


def test_replicas_requests_and_fixes_are_recorded_and_told() -> None:
    audit = build_pods(
        {"acme/api:1.0": AMD_ONLY},
        replicas=3,
        requests=Requests(250, 2**27),
        fixes={"acme/api:1.0": {"linux/arm64": "1.2", "linux/amd64": "9.9"}},
    )
    status = audit.status
    assert status["replicas"] == 3
    assert status["requests"] == {"cpu": 250, "memory": 2**27}
    assert status["containers"][0]["fixes"] == {"linux/arm64": "1.2"}  # amd64 it has: no fix needed
    assert "fix: 1.2 provides linux/arm64" in status["containers"][0]["message"]
    assert "fix: 1.2 provides linux/arm64" in status["message"]
    again = build_pods({"acme/api:1.0": AMD_ONLY}, replicas=3, requests=Requests(250, 2**27))
    assert again.fingerprint != audit.fingerprint  # a tag found is news: the report is written


def test_readiness_reads_what_build_wrote() -> None:
    audit = build_pods(
        {"acme/api:1.0": AMD_ONLY},
        replicas=2,
        requests=Requests(100, 10),
        fixes={"acme/api:1.0": {"linux/arm64": "1.2"}},
    )
    body = reports.object_body(WORKLOAD) | {"status": audit.status}
    doc = readiness.readiness([body], "linux/arm64")
    assert doc["blocked"][0]["fix"] == "acme/api:1.0: 1.2 provides linux/arm64"
    assert doc["totals"]["blocked"] == {"workloads": 1, "cpu": 200, "memory": 20}
    assert readiness.readiness([body], "linux/amd64")["totals"]["ready"]["workloads"] == 1


def test_bounded_with_many_targets_and_long_fixes() -> None:
    platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/ppc64le", "linux/s390x"]
    platforms += ["linux/riscv64", "linux/386", "linux/mips64le", "linux/loong64"]
    nodes = [node(f"n{i}", p) for i, p in enumerate(platforms)]
    targets = readiness.target_nodes(
        nodes, [*readiness.COMMON_TARGETS, "windows/amd64"], profiles=("containerd",)
    )
    long_tail = "ü" * 400
    refs = [f"registry.example/{'r' * 300}/img{i}:{long_tail}" for i in range(50)]
    images: dict[str, ImagePlatforms | ResolutionError] = {
        r: image(*platforms[: 1 + i % 3]) for i, r in enumerate(refs)
    }
    fixes = {r: {p: "t" * 200 for p in platforms} for r in refs}
    containers = tuple(Container(f"c{i:02d}-{'n' * 50}", r) for i, r in enumerate(refs))
    pods = [PodFacts(f"p{i}", nodes[i % len(nodes)], tuple(nodes), containers) for i in range(50)]
    audit = reports.build(
        WORKLOAD, pods, images, now=NOW, targets=targets, fixes=fixes, replicas=50, requests=Requests(1, 1)
    )
    size = len(json.dumps(audit.status, ensure_ascii=False).encode())
    assert size < reports.MAX_STATUS_BYTES, size
    assert all(len(c["fixes"]) <= 3 for c in audit.status["containers"])
    assert len(virtual_nodes(["linux/arm64"])) == 1
