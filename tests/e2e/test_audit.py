"""The auditor end to end: `archaudit run` against the real control plane and a real registry.

No ValidatingWebhookConfiguration is registered here, so every pod is admitted unchecked — exactly the
pods the auditor exists for (created before archaudit was installed, or while it could not look). The
ImageAudit reports, their printer columns, garbage collection, the Events and the "no write when nothing
changed" promise are all observed through the apiserver, as a user would see them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from archaudit.adapters.kube import KubeApi
from tests.conftest import Seeded
from tests.harness.cluster import REPO, Cluster
from tests.harness.kube import deployment_manifest, pod_manifest, wait_pods
from tests.harness.operator import NAMESPACE, Operator, install_imageaudit_crd
from tests.harness.procs import wait_until
from tests.harness.registry import image_config, push_image, push_index

GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"
AUDIT_WAIT = 90.0
RESYNC_SECONDS = 3


@pytest.fixture(scope="module")
def auditor(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """One operator for the module, auditing every few seconds, trusting the plain-HTTP test registry."""
    directory = tmp_path_factory.mktemp("audit")
    install_imageaudit_crd(cluster, directory)
    core = client.CoreV1Api(cluster.admin)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as e:
        if e.status != 409:
            raise
    env = {
        "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
        "ARCHAUDIT_REGISTRY_TAG_TTL_SECONDS": "1",
        "ARCHAUDIT_REGISTRY_NEGATIVE_TTL_SECONDS": "1",
        "ARCHAUDIT_REGISTRY_TIMEOUT_SECONDS": "3",
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
    }
    log_dir = REPO / ".test-artifacts" / "e2e-audit"  # kept after the run, for reading
    op = Operator(kubeconfig=cluster.kubeconfig, log_dir=log_dir, env=env)
    op.start(timeout=90)
    try:
        yield op
    finally:
        op.stop()


def _audit(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(cluster.admin).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found


def _wait_verdict(cluster: Cluster, op: Operator, namespace: str, name: str, verdict: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        audit = _audit(cluster, namespace, name)
        return audit if audit and audit.get("status", {}).get("verdict") == verdict else None

    try:
        found: dict[str, Any] = wait_until(ready, timeout=AUDIT_WAIT, what=f"ImageAudit {name} {verdict}")  # type: ignore[assignment]
    except TimeoutError:
        print("last seen:", _audit(cluster, namespace, name), "\n", op.tail())
        raise
    return found


def _table(cluster: Cluster, path: str) -> dict[str, Any]:
    """The list as `kubectl get` asks for it: a server-side Table with the CRD's printer columns."""
    table: dict[str, Any] = KubeApi(cluster.admin).request_now(
        "GET", path, accept="application/json;as=Table;v=v1;g=meta.k8s.io"
    )
    return table


def _events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[Any]:
    items = client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items
    return [
        e
        for e in items
        if e.reason == "ImageArchMismatch"
        and e.involved_object.kind == kind
        and e.involved_object.name == name
    ]


def _metric(op: Operator, name: str, labels: str = "") -> float | None:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    for match in pattern.finditer(op.metrics()):
        if labels in (match.group(1) or ""):
            return float(match.group(2))
    return None


def _full_audits_after(op: Operator, count: int) -> None:
    """Wait until `count` more full audits completed (the timestamp metric moved `count` times)."""
    seen: list[float] = []

    def moved() -> bool:
        value = _metric(op, "archaudit_last_full_audit_timestamp_seconds")
        if value is not None and (not seen or value > seen[-1]):
            seen.append(value)
        return len(seen) > count

    wait_until(moved, timeout=RESYNC_SECONDS * (count + 2) + 30, what=f"{count} more full audits")


def test_incompatible_deployment_is_reported_once_and_left_alone(
    cluster: Cluster, namespace: str, auditor: Operator, plain_registry: Seeded
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    apps = client.AppsV1Api(cluster.admin)
    created = apps.create_namespaced_deployment(
        namespace,
        deployment_manifest(
            "amd-on-arm", image=image, replicas=2, node_selector={"kubernetes.io/arch": "arm64"}
        ),
    )
    wait_pods(cluster.admin, namespace, "app=amd-on-arm", count=2)

    audit = _wait_verdict(cluster, auditor, namespace, "deployment-amd-on-arm", "Incompatible")
    status = audit["status"]
    assert status["workload"] == "Deployment/amd-on-arm"
    assert (status["images"], status["incompatible"], status["pods"]) == (1, 1, 2)
    assert status["nodePlatforms"] == "linux/arm64"
    (container,) = status["containers"]
    assert (container["name"], container["image"], container["provides"]) == ("main", image, ["linux/amd64"])
    assert container["digest"] == plain_registry.samples["amd64-docker"].digest
    assert container["reason"] == "no-matching-platform"
    assert status["message"].startswith(f"image {image} provides linux/amd64 only; 2 pods run on linux/arm64")
    assert audit["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "amd-on-arm", "uid": created.metadata.uid}
    ]

    wait_until(
        lambda: _events(cluster, namespace, "Deployment", "amd-on-arm"),
        timeout=30,
        what="the ImageArchMismatch event on the deployment",
    )
    version = audit["metadata"]["resourceVersion"]
    _full_audits_after(auditor, 2)
    again = _audit(cluster, namespace, "deployment-amd-on-arm")
    assert again is not None
    assert again["metadata"]["resourceVersion"] == version, "an unchanged report must not be written again"
    (event,) = _events(cluster, namespace, "Deployment", "amd-on-arm")
    assert event.type == "Warning"
    assert event.message.startswith("Incompatible: image ")
    assert _metric(auditor, "archaudit_pods_on_incompatible_nodes", f'namespace="{namespace}"') == 2.0

    # garbage collection: the report goes with its workload
    apps.delete_namespaced_deployment("amd-on-arm", namespace, propagation_policy="Background")
    wait_until(
        lambda: _audit(cluster, namespace, "deployment-amd-on-arm") is None,
        timeout=AUDIT_WAIT,
        what="the garbage collector to remove the ImageAudit with its Deployment",
    )


def test_compatible_and_at_risk_with_printer_columns(
    cluster: Cluster, namespace: str, auditor: Operator, plain_registry: Seeded
) -> None:
    apps = client.AppsV1Api(cluster.admin)
    core = client.CoreV1Api(cluster.admin)
    multi = plain_registry.samples["multiarch"].reference
    amd_only = plain_registry.samples["amd64-docker"].reference
    apps.create_namespaced_deployment(
        namespace, deployment_manifest("everywhere", image=multi, replicas=2, node_selector={})
    )
    pinned = pod_manifest("pinned", image=amd_only)
    pinned["spec"]["nodeName"] = "amd64-1"  # runs there, but nothing keeps a replacement off arm nodes
    core.create_namespaced_pod(namespace, pinned)

    compatible = _wait_verdict(cluster, auditor, namespace, "deployment-everywhere", "Compatible")
    assert compatible["status"]["containers"][0]["provides"] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    at_risk = _wait_verdict(cluster, auditor, namespace, "pod-pinned", "AtRisk")
    message = at_risk["status"]["message"]
    assert "its pods may also land on linux/arm/v7, linux/arm64 nodes" in message
    assert message.endswith("fix: add nodeSelector kubernetes.io/arch=amd64")
    assert at_risk["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    wait_until(lambda: _events(cluster, namespace, "Pod", "pinned"), timeout=30, what="the AtRisk event")

    table = _table(cluster, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:6] == ["Name", "Workload", "Verdict", "Images", "Incompatible", "Node Platforms"]
    rows = {r["cells"][0]: r["cells"] for r in table["rows"]}
    assert rows["pod-pinned"][1:5] == ["Pod/pinned", "AtRisk", 1, 0]
    assert rows["deployment-everywhere"][2] == "Compatible"


def test_unreachable_registry_and_runtime_evidence(
    cluster: Cluster, namespace: str, auditor: Operator
) -> None:
    core = client.CoreV1Api(cluster.admin)
    image = "127.0.0.1:9/nowhere/app:1"  # the discard port: nothing listens there
    core.create_namespaced_pod(
        namespace, pod_manifest("lost", image=image, node_selector={"kubernetes.io/arch": "arm64"})
    )
    [pod] = wait_pods(cluster.admin, namespace, "app=lost", count=1)

    unknown = _wait_verdict(cluster, auditor, namespace, "pod-lost", "Unknown")
    assert unknown["status"]["containers"][0]["reason"] in {"unreachable", "timeout"}
    resolved = {c["type"]: c for c in unknown["status"]["conditions"]}["ImagesResolved"]
    assert resolved["status"] == "False"
    before = _metric(auditor, "archaudit_runtime_mismatches_total", f'namespace="{namespace}"') or 0.0

    def kubelet_event(event_type: str) -> dict[str, Any]:
        return {
            "metadata": {"generateName": "lost."},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": "lost",
                "namespace": namespace,
                "uid": pod.metadata.uid,
                "fieldPath": "spec.containers{main}",
            },
            "reason": "Failed",
            "type": event_type,
            "message": 'Error: failed to create containerd task: exec: "/app": exec format error',
            "source": {"component": "kubelet", "host": "arm64-1"},
        }

    # The Events watch is filtered by the apiserver (type=Warning, about Pods): at 10,000 pods the
    # scheduler's Normal "Scheduled" Event per pod is not ours to hold. A Normal one is never seen...
    core.create_namespaced_event(namespace, kubelet_event("Normal"))
    _full_audits_after(auditor, 2)
    assert (_audit(cluster, namespace, "pod-lost") or {})["status"]["verdict"] == "Unknown"
    # ... what a kubelet reports when the binary is for another architecture is: evidence without a
    # registry.
    core.create_namespaced_event(namespace, kubelet_event("Warning"))
    marked = _wait_verdict(cluster, auditor, namespace, "pod-lost", "Incompatible")
    conditions = {c["type"]: c for c in marked["status"]["conditions"]}
    assert conditions["RuntimeMismatchObserved"]["status"] == "True"
    assert conditions["RuntimeMismatchObserved"]["reason"] == "ExecFormatError"
    assert marked["status"]["containers"][0]["runtimeMismatch"] is True
    wait_until(
        lambda: (
            (_metric(auditor, "archaudit_runtime_mismatches_total", f'namespace="{namespace}"') or 0)
            == before + 1
        ),
        timeout=30,
        what="the runtime mismatch to be counted once",
    )
    _full_audits_after(auditor, 1)
    assert _metric(auditor, "archaudit_runtime_mismatches_total", f'namespace="{namespace}"') == before + 1


def test_a_tag_that_moves_flips_the_verdict(
    cluster: Cluster, namespace: str, auditor: Operator, plain_registry: Seeded
) -> None:
    pusher = plain_registry.registry.pusher()
    repo = f"moving/{namespace}"
    kids = [push_image(pusher, repo, "linux", "amd64"), push_image(pusher, repo, "linux", "arm64", "v8")]
    push_index(pusher, repo, [k.descriptor() for k in kids], tag="1")
    image = plain_registry.registry.ref(repo, "1")
    apps = client.AppsV1Api(cluster.admin)
    apps.create_namespaced_deployment(
        namespace,
        deployment_manifest("mover", image=image, replicas=1, node_selector={"kubernetes.io/arch": "arm64"}),
    )
    wait_pods(cluster.admin, namespace, "app=mover", count=1)
    _wait_verdict(cluster, auditor, namespace, "deployment-mover", "Compatible")

    push_image(pusher, repo, "linux", "amd64", tag="1", config=image_config("linux", "amd64"))
    moved = _wait_verdict(cluster, auditor, namespace, "deployment-mover", "Incompatible")
    assert moved["status"]["containers"][0]["provides"] == ["linux/amd64"]


def test_workloads_without_pods_are_judged_from_their_template(
    cluster: Cluster, namespace: str, auditor: Operator, plain_registry: Seeded
) -> None:
    """`kubectl get ia` lists every workload archaudit has an opinion on, pods or not."""
    apps = client.AppsV1Api(cluster.admin)
    amd_only = plain_registry.samples["amd64-docker"].reference
    arm64 = {"kubernetes.io/arch": "arm64"}
    apps.create_namespaced_deployment(
        namespace, deployment_manifest("idle", image=amd_only, replicas=0, node_selector=arm64)
    )
    pod = pod_manifest("nightly", image=amd_only, node_selector=arm64)
    template = {"metadata": pod["metadata"], "spec": {**pod["spec"], "restartPolicy": "Never"}}
    client.BatchV1Api(cluster.admin).create_namespaced_cron_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly"},
            # Never due while the test runs: the CronJob stays between runs, without a Job or a pod.
            "spec": {"schedule": "0 0 29 2 1", "jobTemplate": {"spec": {"template": template}}},
        },
    )

    idle = _wait_verdict(cluster, auditor, namespace, "deployment-idle", "Incompatible")["status"]
    assert idle["pods"] == 0
    assert idle["message"] == (
        f"scaled to 0: every pod would be denied: image {amd_only} provides linux/amd64 only; "
        "nodes its pods can use are linux/arm64"
    )
    nightly = _wait_verdict(cluster, auditor, namespace, "cronjob-nightly", "Incompatible")["status"]
    assert nightly["message"].startswith("no pods between runs: every pod would be denied: ")
    names = {
        row["cells"][0]
        for row in _table(cluster, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")["rows"]
    }
    assert {"deployment-idle", "cronjob-nightly"} <= names

    # Scaled up, its pods are judged where they run; scaled back to 0, from the template again.
    apps.patch_namespaced_deployment_scale("idle", namespace, {"spec": {"replicas": 1}})
    wait_pods(cluster.admin, namespace, "app=idle", count=1)
    running = _wait_verdict(cluster, auditor, namespace, "deployment-idle", "Incompatible")
    wait_until(
        lambda: (_audit(cluster, namespace, "deployment-idle") or {}).get("status", {}).get("pods") == 1,
        timeout=AUDIT_WAIT,
        what="the report of the running pod",
    )
    assert running["status"]["verdict"] == "Incompatible"
    apps.patch_namespaced_deployment_scale("idle", namespace, {"spec": {"replicas": 0}})
    wait_until(
        lambda: (
            (_audit(cluster, namespace, "deployment-idle") or {})
            .get("status", {})
            .get("message", "")
            .startswith("scaled to 0: ")
        ),
        timeout=AUDIT_WAIT,
        what="the report to say the Deployment is scaled to 0",
    )
