"""Placement's scheduling gate against the real apiserver and scheduler: never block, never strand.

An image the registry does not answer for within `placement.budget_seconds` gets the gate
`archaudit.io/placement`; the gate controller places the pod and removes the gate in one update, or
after `placement.gate_timeout_seconds` removes it anyway with a Warning Event. The registry is the real
one behind the fault proxy (3 s per request: a far registry) or a TCP black hole (a registry that hangs).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Seeded
from tests.e2e.test_webhook import Blackhole
from tests.harness.cluster import FAKE_NODES, Cluster
from tests.harness.faultproxy import FaultProxy
from tests.harness.kube import create_namespace, wait_pods
from tests.harness.operator import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Operator,
    ensure_namespace,
    mutating_webhook_configuration,
    wait_until_placed,
)
from tests.harness.procs import wait_until

ARCH_OF = {n.name: n.arch for n in FAKE_NODES}
GATE = "archaudit.io/placement"
GATE_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def proxy(plain_registry: Seeded) -> Iterator[FaultProxy]:
    p = FaultProxy(plain_registry.registry).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.close()


def start_operator(
    cluster: Cluster, registry: Seeded, proxy: FaultProxy, blackhole: Blackhole, log_dir: Any
) -> Operator:
    insecure = f"{registry.registry.host},{proxy.host},127.0.0.1:{blackhole.port}"
    return Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=log_dir,
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": insecure,
            # Longer than the gate: a hanging registry is let go by the gate's timeout, not the client's.
            "ARCHAUDIT_REGISTRY_TIMEOUT_SECONDS": "30",
            "ARCHAUDIT_PLACEMENT_GATE_TIMEOUT_SECONDS": str(GATE_TIMEOUT),
            "ARCHAUDIT_AUDIT_ENABLED": "false",
        },
    ).start()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster,
    plain_registry: Seeded,
    proxy: FaultProxy,
    blackhole: Blackhole,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    op = start_operator(cluster, plain_registry, proxy, blackhole, tmp_path_factory.mktemp("gate-logs"))
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    admission.create_mutating_webhook_configuration(mutating_webhook_configuration(op.url))
    try:
        yield op
    finally:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


@pytest.fixture
def placed_ns(cluster: Cluster, operator: Operator, plain_registry: Seeded) -> Iterator[str]:
    name = f"gate-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, name, labels={"archaudit.io/placement": "on"})
    canary = pod("canary", plain_registry.samples["arm64-oci"].reference)
    wait_until_placed(cluster.admin, name, canary, service=operator.service, what=f"placement live in {name}")
    yield name
    client.CoreV1Api(cluster.admin).delete_namespace(name)


def pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": image}]},
    }


def gates(p: Any) -> list[str]:
    return [g.name for g in p.spec.scheduling_gates or []]


def note(p: Any) -> dict[str, Any]:
    return dict(json.loads((p.metadata.annotations or {})["archaudit.io/placement"]))


def read(cluster: Cluster, namespace: str, name: str) -> Any:
    return client.CoreV1Api(cluster.admin).read_namespaced_pod(name, namespace)


def test_a_cold_image_is_gated_then_placed_and_scheduled(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, proxy: FaultProxy, placed_ns: str
) -> None:
    proxy.latency = 3.0
    proxy.set("latency")
    image = proxy.ref(plain_registry.samples["arm64-oci"].reference)
    created = client.CoreV1Api(cluster.admin).create_namespaced_pod(placed_ns, pod("cold", image))
    assert gates(created) == [GATE]
    assert note(created)["result"] == "gated"
    (landed,) = wait_pods(cluster.admin, placed_ns, "app=cold", count=1, timeout=GATE_TIMEOUT + 30)
    assert ARCH_OF[landed.spec.node_name] == "arm64"
    assert gates(landed) == []
    assert note(landed)["result"] == "placed"
    terms = landed.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert terms.node_selector_terms[0].match_expressions[0].values == ["arm64"]


def test_a_registry_that_hangs_is_let_go_after_the_gate_timeout_with_an_event(
    cluster: Cluster, operator: Operator, blackhole: Blackhole, placed_ns: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    started = time.monotonic()
    created = core.create_namespaced_pod(placed_ns, pod("hung", f"127.0.0.1:{blackhole.port}/app:1"))
    assert gates(created) == [GATE]
    (landed,) = wait_pods(cluster.admin, placed_ns, "app=hung", count=1, timeout=GATE_TIMEOUT + 30)
    assert time.monotonic() - started >= GATE_TIMEOUT - 1  # not before the timeout (creation time has 1 s)
    assert gates(landed) == []
    assert landed.spec.affinity is None
    assert note(landed)["result"] == "ungated-timeout"

    def event() -> Any:
        found = core.list_namespaced_event(placed_ns, field_selector="involvedObject.name=hung").items
        return [e for e in found if e.reason == "PlacementTimeout" and e.type == "Warning"]

    (warning,) = wait_until(event, timeout=30, what="the PlacementTimeout Event")  # type: ignore[misc]
    assert "scheduling gate archaudit.io/placement removed" in warning.message
    counted = [
        line
        for line in operator.metrics().splitlines()
        if line.startswith("archaudit_placements_total{") and 'result="ungated-timeout"' in line
    ]
    assert [line.rsplit(" ", 1)[1] for line in counted] == ["1.0"]


def test_gates_left_by_a_stopped_operator_are_swept_at_start_up(
    cluster: Cluster,
    operator: Operator,
    plain_registry: Seeded,
    proxy: FaultProxy,
    blackhole: Blackhole,
    placed_ns: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    proxy.latency = 3.0
    proxy.set("latency")
    image = proxy.ref(plain_registry.samples["multiarch"].reference)
    core = client.CoreV1Api(cluster.admin)
    created = core.create_namespaced_pod(placed_ns, pod("left", image))
    assert gates(created) == [GATE]
    operator.stop()  # while the pod is gated; the webhook configuration stays, failing open
    try:
        assert gates(read(cluster, placed_ns, "left")) == [GATE]
        proxy.set("pass")
        again = start_operator(
            cluster, plain_registry, proxy, blackhole, tmp_path_factory.mktemp("gate-logs-2")
        )
        try:
            (landed,) = wait_pods(cluster.admin, placed_ns, "app=left", count=1, timeout=GATE_TIMEOUT + 30)
            assert gates(landed) == []
        finally:
            again.stop()
    finally:
        operator.start()  # the module's operator again, for the tests after this one
