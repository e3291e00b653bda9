"""What one admission decision costs as the cluster grows (`make bench`), printed for BENCHMARKS.md.

The webhook's per-review work beyond parsing is: which nodes the pod may use (scheduling) and whether
every image runs on one of them (policy). Both walk the node list, so a cold decision grows with the
cluster; the pods of one workload then reuse it (webhook._decide's memo) until the node map changes.
Measured on the same functions the webhook calls, without a network; targets are printed, not asserted.
The verdicts ARE asserted: a fast wrong answer is no answer.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from archaudit import webhook
from archaudit.context import Context, NodeMap
from archaudit.core import policy
from archaudit.core.config import Settings
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform

ROWS: list[str] = []
ARCHES = ("amd64", "arm64", "arm")


def node_object(i: int) -> dict[str, Any]:
    arch = ARCHES[i % len(ARCHES)]
    labels = {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": f"node-{i}",
        "topology.kubernetes.io/zone": f"zone-{i % 3}",
    }
    if arch == "arm":
        labels["archaudit.io/variant"] = "v7"
    spec: dict[str, Any] = {}
    if i % 10 == 0:
        spec["taints"] = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]
    return {
        "metadata": {"name": f"node-{i}", "labels": labels},
        "spec": spec,
        "status": {
            "nodeInfo": {
                "operatingSystem": "linux",
                "architecture": arch,
                "containerRuntimeVersion": "containerd://2.1.4" if i % 2 else "containerd://1.7.27",
            }
        },
    }


def image(*platforms: str) -> ImagePlatforms:
    entries = tuple(
        PlatformEntry(Platform.parse(p), "sha256:" + f"{n:064x}") for n, p in enumerate(platforms, start=1)
    )
    return ImagePlatforms("sha256:" + "f" * 64, "application/vnd.oci.image.index.v1+json", "index", entries)


# A 3-container pod like the admission benchmark's: multi-arch, multi-arch, amd64-only; arm64 selector.
IMAGES = [
    ("web", "example.test/web:1", image("linux/amd64", "linux/arm64/v8", "linux/arm/v7")),
    ("sidecar", "example.test/sidecar:1", image("linux/amd64", "linux/arm64/v8")),
    ("legacy", "example.test/legacy:1", image("linux/amd64")),
]
SPEC = {
    "nodeSelector": {"kubernetes.io/arch": "arm64"},
    "tolerations": [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        }
    ],
}


def per_call_us(fn: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count * 1e6


@pytest.fixture(scope="module", autouse=True)
def _table() -> Any:
    yield
    if ROWS:
        print("\n\n| nodes | cold decision (first pod of a workload) | warm (the next pods) |\n|---|---|---|")
        print("\n".join(ROWS))


@pytest.mark.parametrize("nodes", [6, 100, 1000])
def test_decision_cost_by_cluster_size(nodes: int) -> None:
    node_map = NodeMap()
    node_map.replace_all(node_object(i) for i in range(nodes))
    ctx = Context(settings=Settings(), resolver=None, nodes=node_map, credentials=None, metrics=None)

    def cold() -> policy.Decision:
        node_map.version += 1  # as if a node had changed: nothing may be reused
        return webhook._decide(ctx, SPEC, IMAGES, mode=policy.Mode.ENFORCE, is_pod=True)

    def warm() -> policy.Decision:
        return webhook._decide(ctx, SPEC, IMAGES, mode=policy.Mode.ENFORCE, is_pod=True)

    decision = cold()
    assert decision.verdict is policy.Verdict.INCOMPATIBLE  # legacy is amd64-only, the pod wants arm64
    assert not decision.allowed
    assert warm() is warm()
    cold_us = per_call_us(cold, max(20, 20_000 // nodes))
    warm_us = per_call_us(warm, 20_000)
    ROWS.append(f"| {nodes:,} | {cold_us / 1000:.2f} ms | {warm_us:.1f} us |")
    print(f"\n{ROWS[-1]}")
