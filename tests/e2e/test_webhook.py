"""The admission webhook against the real kube-apiserver, with the seeded real registry.

`archaudit run` runs as a child process out of cluster; the apiserver calls it through a
ValidatingWebhookConfiguration in `url:` mode whose caBundle the operator patches itself.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.harness.cluster import Cluster
from tests.harness.kube import create_namespace
from tests.harness.operator import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Operator,
    ensure_namespace,
    wait_until_denied,
    webhook_configuration,
)
from tests.harness.procs import free_port, wait_until


def pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}], **spec},
    }


def deployment(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}], **spec},
            },
        },
    }


ARM64_ONLY = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}


class Blackhole:
    """A TCP server that accepts connections and never answers: a registry that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.close()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, plain_registry: Seeded, blackhole: Blackhole, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    insecure = f"{plain_registry.registry.host},127.0.0.1:{blackhole.port}"
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path_factory.mktemp("archaudit-logs"),
        env={"ARCHAUDIT_REGISTRY_INSECURE": insecure, "ARCHAUDIT_AUDIT_ENABLED": "false"},
    )
    op.start()
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    admission.create_validating_webhook_configuration(webhook_configuration(op.url))
    try:
        _wait_for_webhook(cluster, plain_registry, op)
        yield op
    finally:
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


def _wait_for_webhook(cluster: Cluster, registry: Seeded, op: Operator) -> None:
    canary_ns = "archaudit-canary"
    ensure_namespace(cluster.admin, canary_ns)
    bad = pod("canary", registry.samples["amd64-docker"].reference, **ARM64_ONLY)
    wait_until_denied(
        cluster.admin,
        canary_ns,
        bad,
        service=op.service,
        what="the apiserver to call the webhook (canary denied)",
    )


def kubectl_apply(
    cluster: Cluster, namespace: str, obj: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    kubectl = str(cluster.bin_dir / "kubectl")
    return subprocess.run(
        [kubectl, "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, "apply", "-f", "-", *extra],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=60,
    )


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line.removeprefix("Warning: ") for line in result.stderr.splitlines() if line.startswith("Warning: ")
    ]


def test_incompatible_pod_is_denied_with_an_exact_message(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(cluster.admin).create_namespaced_pod(namespace, pod("amd", image, **ARM64_ONLY))
    assert denied.value.status == 403
    status = json.loads(denied.value.body)
    assert status["code"] == 403
    assert status["message"] == (
        'admission webhook "pods.archaudit.io" denied the request: '
        f"image {image} provides linux/amd64 only; nodes this pod can use are linux/arm64"
    )


def test_compatible_pod_is_admitted_without_warnings(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["multiarch"].reference
    result = kubectl_apply(cluster, namespace, pod("multi", image, **ARM64_ONLY))
    assert result.returncode == 0, result.stderr
    assert warnings_of(result) == []


def test_pod_that_runs_on_some_nodes_only_is_admitted_with_a_warning_naming_the_fix(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    result = kubectl_apply(cluster, namespace, pod("amd-anywhere", image))
    assert result.returncode == 0, result.stderr
    warnings = warnings_of(result)
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"image {image} provides linux/amd64 only"), warnings
    assert "add nodeSelector kubernetes.io/arch=amd64" in warnings[0]


def test_init_containers_are_checked(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    good = plain_registry.samples["multiarch"].reference
    bad = plain_registry.samples["amd64-docker"].reference
    obj = pod("init", good, **ARM64_ONLY)
    obj["spec"]["initContainers"] = [{"name": "setup", "image": bad}]
    result = kubectl_apply(cluster, namespace, obj)
    assert result.returncode != 0
    assert f"image {bad} provides linux/amd64 only" in result.stderr


def test_workloads_are_warned_not_denied(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    result = kubectl_apply(cluster, namespace, deployment("amd", image, **ARM64_ONLY))
    assert result.returncode == 0, result.stderr
    assert any(f"image {image} provides linux/amd64 only" in w for w in warnings_of(result)), result.stderr


def test_dry_run_is_judged_the_same_and_leaves_no_event(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    denied = kubectl_apply(cluster, namespace, pod("dry", image, **ARM64_ONLY), "--dry-run=server")
    assert denied.returncode != 0
    assert "provides linux/amd64 only" in denied.stderr
    warned = kubectl_apply(cluster, namespace, deployment("dry", image, **ARM64_ONLY), "--dry-run=server")
    assert warned.returncode == 0, warned.stderr
    assert warnings_of(warned)
    # A real (non-dry-run) warned object gets an Event; prove the dry-run one did not by creating
    # the real one and waiting for exactly its Event.
    real = kubectl_apply(cluster, namespace, deployment("real", image, **ARM64_ONLY))
    assert real.returncode == 0
    core = client.CoreV1Api(cluster.admin)

    def events() -> list[Any]:
        return [e for e in core.list_namespaced_event(namespace).items if e.reason == "ImageArchMismatch"]

    wait_until(events, timeout=30, what="the ImageArchMismatch event of the real Deployment")
    assert {e.involved_object.name for e in events()} == {"real"}


def test_ephemeral_container_update_is_checked(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    good = plain_registry.samples["multiarch"].reference
    bad = plain_registry.samples["amd64-docker"].reference
    core.create_namespaced_pod(namespace, pod("target", good, nodeName="arm64-1"))
    body = {"spec": {"ephemeralContainers": [{"name": "debug", "image": bad, "targetContainerName": "main"}]}}
    with pytest.raises(ApiException) as denied:
        core.patch_namespaced_pod_ephemeralcontainers("target", namespace, body)
    assert denied.value.status == 403
    assert json.loads(denied.value.body)["message"].endswith(
        f"image {bad} provides linux/amd64 only; nodes this pod can use are linux/arm64"
    )
    body["spec"]["ephemeralContainers"][0]["image"] = good
    core.patch_namespaced_pod_ephemeralcontainers("target", namespace, body)


@pytest.mark.parametrize(
    ("labels", "admitted", "warned"),
    [
        ({"archaudit.io/mode": "warn"}, True, True),
        ({"archaudit.io/mode": "audit"}, True, False),
        ({"archaudit.io/mode": "off"}, True, False),
        ({"archaudit.io/ignore": ""}, True, False),
        ({"archaudit.io/mode": "enforce"}, False, False),
    ],
    ids=["warn", "audit", "off", "ignored", "enforce"],
)
def test_namespace_modes(
    cluster: Cluster,
    operator: Operator,
    plain_registry: Seeded,
    labels: dict[str, str],
    admitted: bool,
    warned: bool,
    request: pytest.FixtureRequest,
) -> None:
    ns = f"mode-{request.node.callspec.id}-{int(time.time() * 1000) % 100000}"
    create_namespace(cluster.admin, ns, labels=labels)
    try:
        # The operator learns namespace labels from its watch: wait until it judges by them.
        image = plain_registry.samples["amd64-docker"].reference

        def judged() -> subprocess.CompletedProcess[str] | None:
            result = kubectl_apply(cluster, ns, pod("p", image, **ARM64_ONLY), "--dry-run=server")
            ok = (result.returncode == 0) == admitted and bool(warnings_of(result)) == warned
            return result if ok else None

        result = wait_until(judged, timeout=30, interval=0.3, what=f"mode {labels} to take effect")
        assert result is not None
    finally:
        client.CoreV1Api(cluster.admin).delete_namespace(ns)


def test_unreachable_registry_fails_open_with_a_warning(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    image = f"127.0.0.1:{free_port()}/nothing/here:1.0"
    result = kubectl_apply(cluster, namespace, pod("unreachable", image, **ARM64_ONLY))
    assert result.returncode == 0, result.stderr
    warnings = warnings_of(result)
    assert warnings, result.stderr
    assert warnings[0].startswith(f"image {image} could not be checked (unreachable)"), warnings


def test_hanging_registry_fails_open_within_the_deadline(
    cluster: Cluster, operator: Operator, blackhole: Blackhole, namespace: str
) -> None:
    image = f"127.0.0.1:{blackhole.port}/slow/image:1.0"
    result = kubectl_apply(cluster, namespace, pod("hanging", image, **ARM64_ONLY))
    # Admitted (failurePolicy Ignore would admit too, silently): the warning proves *we* answered,
    # i.e. within our own deadline and before the apiserver's 5 s timeout.
    assert result.returncode == 0, result.stderr
    warnings = warnings_of(result)
    assert warnings, result.stderr
    assert f"image {image} could not be checked (timeout)" in warnings[0], result.stderr


def test_invalid_image_reference_is_reported_not_crashed_on(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    # An upper-case repository path: Kubernetes accepts the string, the kubelet could never pull it.
    result = kubectl_apply(cluster, namespace, pod("invalid", "library/Busybox:1", **ARM64_ONLY))
    assert result.returncode == 0, result.stderr
    assert any("could not be checked (invalid-reference)" in w for w in warnings_of(result)), result.stderr
