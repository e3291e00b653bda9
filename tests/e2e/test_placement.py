"""Placement against the real kube-apiserver and kube-scheduler, kwok nodes and the seeded real registry.

`archaudit run` serves `/mutate/pods` out of cluster; the apiserver calls it through a
MutatingWebhookConfiguration in `url:` mode (as the chart renders it), and the real scheduler places the
pods on the fake nodes: amd64-1, amd64-2, arm64-1, arm64-tainted (NoSchedule), arm-1 (arm/v7, k3s
containerd 1.7) and cordoned-1.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Seeded
from tests.harness.certs import TestCA
from tests.harness.cluster import FAKE_NODES, Cluster
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
ARCH = "kubernetes.io/arch"
ON = {"archaudit.io/placement": "on"}
# Where each sample can run on the fake nodes, by node arch label (see SAMPLE_DESCRIPTIONS).
RUNS_ON = {
    "arm64-oci": {"arm64"},
    "amd64-docker": {"amd64"},
    "schema2-only": {"arm"},  # linux/arm/v6: arm-1 (containerd 1.7); arm64-1's containerd 2 only maybe
    "multiarch": {"amd64", "arm64", "arm"},
}


def pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": image}], **spec},
    }


def deployment(name: str, image: str, replicas: int) -> dict[str, Any]:
    template = pod(name, image)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def note(p: Any) -> dict[str, Any] | None:
    raw = (p.metadata.annotations or {}).get("archaudit.io/placement")
    return None if raw is None else dict(json.loads(raw))


def required_terms(p: Any) -> list[Any]:
    affinity = p.spec.affinity
    if affinity is None or affinity.node_affinity is None:
        return []
    required = affinity.node_affinity.required_during_scheduling_ignored_during_execution
    return list(required.node_selector_terms) if required else []


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path_factory.mktemp("archaudit-placement-logs"),
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "false",
        },
    )
    op.start()
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    admission.create_mutating_webhook_configuration(mutating_webhook_configuration(op.url))
    try:
        yield op
    finally:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


def placement_namespace(cluster: Cluster, op: Operator, registry: Seeded, stem: str) -> str:
    """A namespace with placement on, once the apiserver and the operator both know its label."""
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, name, labels=ON)
    canary = pod("canary", registry.samples["arm64-oci"].reference)
    wait_until_placed(cluster.admin, name, canary, service=op.service, what=f"placement live in {name}")
    return name


@pytest.fixture
def placed_ns(cluster: Cluster, operator: Operator, plain_registry: Seeded) -> Iterator[str]:
    name = placement_namespace(cluster, operator, plain_registry, "placement")
    yield name
    client.CoreV1Api(cluster.admin).delete_namespace(name)


def test_a_hundred_pods_land_on_nodes_that_run_their_images(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, placed_ns: str
) -> None:
    apps = client.AppsV1Api(cluster.admin)
    for sample in RUNS_ON:
        apps.create_namespaced_deployment(
            placed_ns, deployment(sample, plain_registry.samples[sample].reference, 25)
        )
    for sample, archs in RUNS_ON.items():
        found = wait_pods(cluster.admin, placed_ns, f"app={sample}", count=25, timeout=180)
        landed = {p.metadata.name: ARCH_OF[p.spec.node_name] for p in found}
        assert set(landed.values()) <= archs, (sample, landed)
        for p in found:
            if sample == "multiarch":
                assert note(p) is None  # every node it may use runs it: nothing added
            else:
                assert note(p)["result"] == "placed"  # type: ignore[index]
    # The single-arch pods were spread by the scheduler over every node of their arch, not pinned.
    amd = wait_pods(cluster.admin, placed_ns, "app=amd64-docker", count=25)
    assert {p.spec.node_name for p in amd} == {"amd64-1", "amd64-2"}


def test_an_existing_required_affinity_is_narrowed_not_widened(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, placed_ns: str
) -> None:
    user = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["amd64-1", "arm64-1"]}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [user]}]
            }
        }
    }
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_pod(
        placed_ns, pod("pinned", plain_registry.samples["arm64-oci"].reference, affinity=affinity)
    )
    (landed,) = wait_pods(cluster.admin, placed_ns, "app=pinned", count=1)
    assert landed.spec.node_name == "arm64-1"
    (term,) = required_terms(landed)  # one term: narrowed, never a new ORed one
    expressions = [cluster.admin.sanitize_for_serialization(e) for e in term.match_expressions]
    assert expressions == [user, {"key": ARCH, "operator": "In", "values": ["arm64"]}]


def test_what_placement_leaves_alone(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, placed_ns: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    arm64 = plain_registry.samples["arm64-oci"].reference
    core.create_namespaced_pod(placed_ns, pod("selector", arm64, nodeSelector={ARCH: "arm64"}))
    core.create_namespaced_pod(placed_ns, pod("bound", arm64, nodeName="arm64-1"))
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod("agent", arm64)["spec"]},
        },
    }
    client.AppsV1Api(cluster.admin).create_namespaced_daemon_set(placed_ns, daemonset)
    (selector,) = wait_pods(cluster.admin, placed_ns, "app=selector", count=1)
    assert note(selector) is None
    assert selector.spec.affinity is None
    assert selector.spec.node_selector == {ARCH: "arm64"}
    (bound,) = wait_pods(cluster.admin, placed_ns, "app=bound", count=1)
    assert note(bound) is None
    assert bound.spec.affinity is None

    def daemon_pods() -> list[Any]:
        found = core.list_namespaced_pod(placed_ns, label_selector="app=agent").items
        return found if len(found) >= 4 else []

    agents = wait_until(daemon_pods, timeout=90, what="the DaemonSet's pods")
    for agent in agents:  # type: ignore[attr-defined]
        assert note(agent) is None
        # The DaemonSet controller's own term (matchFields on the node name), nothing else.
        (term,) = required_terms(agent)
        assert term.match_expressions is None
        assert term.match_fields[0].key == "metadata.name"


def test_a_namespace_without_the_label_is_untouched(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    created = core.create_namespaced_pod(
        namespace, pod("plain", plain_registry.samples["arm64-oci"].reference)
    )
    assert note(created) is None
    assert created.spec.affinity is None


# --- a second mutating webhook that adds a sidecar: reinvocation sees its image -------------------------


class SidecarWebhook:
    """A mutating webhook (HTTPS on loopback) that adds a sidecar container to every pod it is sent."""

    def __init__(self, ca: TestCA, image: str) -> None:
        pair = ca.issue("sidecar")  # SAN 127.0.0.1
        image_ = image

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pod_ = review["request"]["object"]
                names = {c["name"] for c in pod_["spec"]["containers"]}
                ops = (
                    []
                    if "sidecar" in names
                    else [
                        {
                            "op": "add",
                            "path": "/spec/containers/-",
                            "value": {"name": "sidecar", "image": image_},
                        }
                    ]
                )
                response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
                if ops:
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
                body = json.dumps(
                    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_sidecar_added_by_a_later_webhook_is_taken_into_account(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ca = TestCA(tmp_path_factory.mktemp("sidecar-ca"))
    sidecar = SidecarWebhook(ca, plain_registry.samples["arm64-oci"].reference)
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        # Sorted after "archaudit": the apiserver calls placement first, then this, then placement again.
        "metadata": {"name": "zz-sidecar"},
        "webhooks": [
            {
                "name": "sidecar.example.test",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": f"{sidecar.url}/inject",
                    "caBundle": base64.b64encode(ca.pem).decode(),
                },
                "namespaceSelector": {"matchLabels": {"sidecar": "yes"}},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
            }
        ],
    }
    admission.create_mutating_webhook_configuration(config)
    name = placement_namespace(cluster, operator, plain_registry, "sidecar")
    core = client.CoreV1Api(cluster.admin)
    try:
        client.CoreV1Api(cluster.admin).patch_namespace(name, {"metadata": {"labels": {"sidecar": "yes"}}})

        def injected() -> Any:
            created = core.create_namespaced_pod(
                name, pod("probe", plain_registry.samples["multiarch"].reference), dry_run="All"
            )
            return created if len(created.spec.containers) == 2 else None

        created = wait_until(injected, timeout=60, what="the sidecar webhook live")
        # multiarch alone runs everywhere; the arm64-only sidecar narrows it to arm64.
        (term,) = required_terms(created)
        assert [cluster.admin.sanitize_for_serialization(e) for e in term.match_expressions] == [
            {"key": ARCH, "operator": "In", "values": ["arm64"]}
        ]
        core.create_namespaced_pod(name, pod("app", plain_registry.samples["multiarch"].reference))
        (landed,) = wait_pods(cluster.admin, name, "app=app", count=1)
        assert ARCH_OF[landed.spec.node_name] == "arm64"
    finally:
        admission.delete_mutating_webhook_configuration("zz-sidecar")
        sidecar.stop()
        core.delete_namespace(name)
