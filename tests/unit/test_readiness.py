"""Readiness: quantities, a pod's requests as the scheduler counts them, replicas, and the document."""

from __future__ import annotations

from typing import Any

import pytest

from archaudit.core import readiness
from archaudit.core.readiness import Requests, cpu_millicores, memory_bytes, pod_requests, replicas_of
from archaudit.core.scheduling import Node, virtual_nodes


@pytest.mark.parametrize(
    ("text", "millicores"),
    [
        ("100m", 100),
        ("0.5", 500),
        ("1", 1000),
        (2, 2000),
        ("1.5", 1500),
        ("250000u", 250),
        ("1n", 1),
        ("2e-3", 2),
    ],
)
def test_cpu(text: object, millicores: int) -> None:
    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("500k", 500_000),
        ("1e3", 1000),
        ("100", 100),
        ("0.5Ki", 512),
        ("1m", 1),
    ],
)
def test_memory(text: str, n: int) -> None:
    assert memory_bytes(text) == n


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "1.2.3"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        cpu_millicores(text)


def container(cpu: str | None = None, memory: str | None = None, **extra: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": "c", "image": "x", "resources": {"requests": requests}, **extra}


def test_containers_sum() -> None:
    spec = {"containers": [container("100m", "64Mi"), container("200m", "64Mi")]}
    assert pod_requests(spec) == Requests(300, 128 * 2**20)


def test_init_containers_take_the_max_per_resource() -> None:
    spec = {
        "initContainers": [container("2", "16Mi"), container("100m", "1Gi")],
        "containers": [container("500m", "256Mi")],
    }
    assert pod_requests(spec) == Requests(2000, 2**30)


def test_sidecars_run_beside_the_containers_and_the_later_init_containers() -> None:
    spec = {
        "initContainers": [
            container("100m", "10Mi", restartPolicy="Always"),  # sidecar
            container("1", "10Mi"),  # runs beside the sidecar: 1100m
        ],
        "containers": [container("200m", "100Mi")],
    }
    assert pod_requests(spec) == Requests(1100, 110 * 2**20)


def test_limits_stand_in_for_missing_requests_and_overhead_adds() -> None:
    spec = {
        "containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        "overhead": {"cpu": "250m", "memory": "120Mi"},
    }
    assert pod_requests(spec) == Requests(1250, 2**30 + 120 * 2**20)


def test_no_requests_is_zero_and_garbage_is_ignored() -> None:
    assert pod_requests({"containers": [{"name": "c"}, container("lots")]}) == Requests()


@pytest.mark.parametrize(
    ("kind", "spec", "pods", "n"),
    [
        ("Deployment", {"replicas": 3}, 0, 3),
        ("Deployment", {}, 0, 1),
        ("StatefulSet", {"replicas": 0}, 0, 0),
        ("Job", {"parallelism": 4}, 0, 4),
        ("CronJob", {"jobTemplate": {"spec": {"parallelism": 2}}}, 0, 2),
        ("DaemonSet", {}, 5, 5),
        ("Pod", {}, 1, 1),
    ],
)
def test_replicas(kind: str, spec: dict[str, Any], pods: int, n: int) -> None:
    assert replicas_of(kind, spec, pods=pods) == n


def test_targets_one_per_kind_of_node_then_the_common_targets() -> None:
    real = [
        Node("a", virtual_nodes(["linux/amd64"])[0].platform, ("containerd-1.7",)),
        Node("b", virtual_nodes(["linux/amd64"])[0].platform, ("containerd-1.7",)),
        Node("c", virtual_nodes(["linux/amd64"])[0].platform, ("cri-o",)),
    ]
    targets = readiness.target_nodes(real, readiness.COMMON_TARGETS, profiles=("containerd",))
    assert [(str(n.platform), n.profiles) for n in targets] == [
        ("linux/amd64", ("containerd-1.7",)),
        ("linux/amd64", ("cri-o",)),
        ("linux/arm/v7", ("containerd",)),
        ("linux/arm64", ("containerd",)),
    ]
    assert all(n.virtual for n in targets)


def audit(
    ns: str,
    name: str,
    runs_on: list[str],
    cpu: int,
    memory: int,
    replicas: int,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": f"deployment-{name}"},
        "spec": {"workload": {"kind": "Deployment", "name": name}},
        "status": {
            "verdict": "Compatible",
            "runsOn": runs_on,
            "replicas": replicas,
            "requests": {"cpu": cpu, "memory": memory},
            "containers": containers or [],
        },
    }


def test_document_groups_sums_and_sorts_by_what_it_frees() -> None:
    docs = [
        audit("a", "small", ["linux/amd64", "linux/arm64"], 100, 2**20, 2),
        audit("a", "big", ["linux/amd64", "linux/arm64"], 500, 2**20, 3),
        audit(
            "b",
            "blocked",
            ["linux/amd64"],
            250,
            2**30,
            4,
            containers=[
                {"image": "acme/api:1.0", "runsOn": ["linux/amd64"], "fixes": {"linux/arm64": "1.2"}},
                {"image": "acme/multi:1", "runsOn": ["linux/amd64", "linux/arm64"]},
            ],
        ),
        {"metadata": {"namespace": "c", "name": "new"}, "spec": {}},  # not judged yet
        {"metadata": {"namespace": "c", "name": "old"}, "status": {"verdict": "Compatible"}},  # no runsOn
    ]
    doc = readiness.readiness(docs, "linux/arm64")
    assert [e["name"] for e in doc["ready"]] == ["big", "small"]
    assert doc["ready"][0] == {
        "namespace": "a",
        "kind": "Deployment",
        "name": "big",
        "replicas": 3,
        "cpu": 1500,
        "memory": 3 * 2**20,
    }
    assert doc["blocked"] == [
        {
            "namespace": "b",
            "kind": "Deployment",
            "name": "blocked",
            "replicas": 4,
            "cpu": 1000,
            "memory": 4 * 2**30,
            "images": ["acme/api:1.0"],
            "fix": "acme/api:1.0: 1.2 provides linux/arm64",
        }
    ]
    assert doc["totals"] == {
        "ready": {"workloads": 2, "cpu": 1700, "memory": 5 * 2**20},
        "blocked": {"workloads": 1, "cpu": 1000, "memory": 4 * 2**30},
    }
    assert doc["pending"] == 2
    text = readiness.render_text(doc).splitlines()
    assert text[0] == "Ready for linux/arm64: 2 workloads, 1700m CPU, 5Mi memory requested"
    assert text[1] == "Blocked:  1 workload, 1 CPU, 4Gi memory requested"
    assert text[2] == "Not judged yet: 2 ImageAudit(s) (new, or written by an older archaudit)"
    assert text[4].split() == [
        "BLOCKING",
        "IMAGE",
        "WORKLOADS",
        "ALONE",
        "FREES",
        "CPU",
        "FREES",
        "MEMORY",
        "FIX",
    ]
    assert text[5].split() == ["acme/api:1.0", "1", "1", "1", "4Gi", "1.2", "provides", "linux/arm64"]
    assert [line.split()[0] for line in text[7:10]] == ["READY", "a/Deployment/big", "a/Deployment/small"]


def test_formats() -> None:
    assert readiness.format_cpu(250) == "250m"
    assert readiness.format_cpu(3000) == "3"
    assert readiness.format_cpu(1500) == "1500m"
    assert readiness.format_memory(1536 * 2**20) == "1.5Gi"
    assert readiness.format_memory(192 * 2**20) == "192Mi"
    assert readiness.format_memory(12) == "12"
