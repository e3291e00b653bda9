"""Two `archaudit run` replicas: both admit, exactly one audits (issue 5), and the other takes over.

Every replica serves the webhook; only the holder of the Lease `archaudit-auditor` writes ImageAudits and
Events. A report written twice, or an Event posted by both replicas, is what users see when that breaks,
so this test counts writes (resourceVersion) and Events through the apiserver. The replicas get a
cluster namespace of their own, so the Lease and the webhook Secret are not shared with the operators
of other test modules, and a webhook configuration name nobody registers, so no other module's
caBundle is touched.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import signal
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.harness.cluster import Cluster
from tests.harness.kube import deployment_manifest, pod_manifest, wait_pods
from tests.harness.operator import Operator, ensure_namespace, install_imageaudit_crd
from tests.harness.procs import wait_until

GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"
LEASE = "archaudit-auditor"
CLUSTER_NAMESPACE = "archaudit-leader"  # the replicas' own namespace: their Lease and webhook Secret
RESYNC_SECONDS = 3
AUDIT_WAIT = 90.0
START_WAIT = 120.0  # two Python operators starting at once on two busy cores
CPU_SLACK = 15.0  # a loaded machine delays a renewal loop by this much at worst, in practice
WEBHOOK_CONFIGURATION = f"archaudit-leader-test-{uuid.uuid4().hex[:6]}"  # registered by nobody


@dataclass(frozen=True)
class Replica:
    op: Operator

    @property
    def pid(self) -> int:
        assert self.op.service.proc is not None
        return self.op.service.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill: no clean-up of any kind runs."""
        proc = self.op.service.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def holds(self, holder: str | None) -> bool:
        """Lease identities are `<hostname>-<pid>`: both replicas share the host, never the pid."""
        return holder is not None and holder.endswith(f"-{self.pid}")

    def audited(self) -> bool:
        """This replica completed a full audit pass (only the leader runs passes)."""
        return self.last_full_audit() is not None

    def writes(self, namespace: str) -> list[str]:
        """ImageAudit and Event writes to `namespace` this replica made, from its DEBUG log."""
        pattern = re.compile(
            rf'"(POST|PUT|PATCH) /api[s]?/[^ ]*namespaces/{re.escape(namespace)}/(imageaudits|events)[/ ]'
        )
        return [line for line in self.op.service.log_path.read_text().splitlines() if pattern.search(line)]

    def last_full_audit(self) -> float | None:
        for line in self.op.metrics().splitlines():
            if line.startswith("archaudit_last_full_audit_timestamp_seconds "):
                return float(line.split()[1])
        return None


def _replica_env(plain_registry: Seeded) -> dict[str, str]:
    return {
        "ARCHAUDIT_CLUSTER_NAMESPACE": CLUSTER_NAMESPACE,
        "ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME": WEBHOOK_CONFIGURATION,
        "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
        "ARCHAUDIT_REGISTRY_TIMEOUT_SECONDS": "3",
        "ARCHAUDIT_AUDIT_ENABLED": "true",
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
    }


@pytest.fixture(scope="module")
def replicas(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    """Two replicas started at the same moment, so both race for the Lease and the webhook Secret."""
    directory = tmp_path_factory.mktemp("audit-leader")
    install_imageaudit_crd(cluster, directory)
    ensure_namespace(cluster.admin, CLUSTER_NAMESPACE)
    log_dir = directory / "logs"
    env = _replica_env(plain_registry)
    ops = [Operator(kubeconfig=cluster.kubeconfig, log_dir=log_dir, env=env) for _ in range(2)]
    try:
        for op in ops:
            op.service.start()
        for op in ops:
            wait_until(op.ready, timeout=START_WAIT, what=f"{op.service.name} /readyz", service=op.service)
        yield [Replica(op) for op in ops]
    finally:
        for op in ops:
            op.stop()
        print(f"operator logs: {log_dir}")


def _lease(cluster: Cluster) -> Any:
    try:
        return client.CoordinationV1Api(cluster.admin).read_namespaced_lease(LEASE, CLUSTER_NAMESPACE)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _leader(cluster: Cluster, replicas: list[Replica]) -> tuple[Replica, Replica, Any]:
    """(leader, standby, lease) once some replica holds the Lease."""

    def held() -> tuple[Replica, Replica, Any] | None:
        lease = _lease(cluster)
        holder = lease.spec.holder_identity if lease is not None else None
        holding = [r for r in replicas if r.holds(holder)]
        if not holding:
            return None
        (leader,) = holding
        (standby,) = [r for r in replicas if r is not leader]
        return leader, standby, lease

    found = wait_until(held, timeout=AUDIT_WAIT, what=f"a replica to hold Lease {LEASE}")
    return cast(tuple[Replica, Replica, Any], found)


def _audit(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = client.CustomObjectsApi(cluster.admin).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(dict[str, Any], found)


def _wait_verdict(cluster: Cluster, namespace: str, name: str, verdict: str) -> dict[str, Any]:
    def reported() -> dict[str, Any] | None:
        audit = _audit(cluster, namespace, name)
        return audit if audit and audit.get("status", {}).get("verdict") == verdict else None

    found = wait_until(reported, timeout=AUDIT_WAIT, what=f"ImageAudit {namespace}/{name} {verdict}")
    return cast(dict[str, Any], found)


def _mismatch_events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[Any]:
    return [
        e
        for e in client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items
        if e.reason == "ImageArchMismatch"
        and e.involved_object.kind == kind
        and e.involved_object.name == name
    ]


def _incompatible_deployment(
    cluster: Cluster, apps: Any, namespace: str, name: str, image: str, *, replicas: int
) -> dict[str, Any]:
    """An amd64-only image pinned to arm64 nodes: its report once Incompatible and announced by an Event."""
    apps.create_namespaced_deployment(
        namespace,
        deployment_manifest(
            name, image=image, replicas=replicas, node_selector={"kubernetes.io/arch": "arm64"}
        ),
    )
    wait_pods(cluster.admin, namespace, f"app={name}", count=replicas)
    report = _wait_verdict(cluster, namespace, f"deployment-{name}", "Incompatible")
    wait_until(
        lambda: _mismatch_events(cluster, namespace, "Deployment", name),
        timeout=30,
        what=f"the ImageArchMismatch event on deployment {name}",
    )
    return report


def _full_audits_after(replica: Replica, count: int) -> None:
    """Wait until the replica completed `count` more full audit passes."""
    seen: list[float] = []

    def moved() -> bool:
        value = replica.last_full_audit()
        if value is not None and (not seen or value > seen[-1]):
            seen.append(value)
        return len(seen) > count

    wait_until(moved, timeout=RESYNC_SECONDS * (count + 2) + 60, what=f"{count} more full audits")


def _admission_review(namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "name": pod["metadata"]["name"],
            "userInfo": {"username": "admin"},
            "object": {**pod, "metadata": {**pod["metadata"], "namespace": namespace}},
        },
    }


def _review(op: Operator, trust: ssl.SSLContext, review: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{op.url}/validate/pods",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=trust)
    )
    with opener.open(request, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def _shared_ca(cluster: Cluster, directory: Path) -> ssl.SSLContext:
    """Trust only the CA in the replicas' shared webhook Secret: both must serve a certificate it signed."""
    secret = client.CoreV1Api(cluster.admin).read_namespaced_secret(
        "archaudit-webhook-tls", CLUSTER_NAMESPACE
    )
    ca = directory / "shared-ca.crt"
    ca.write_bytes(base64.b64decode(str((secret.data or {})["ca.crt"])))
    return ssl.create_default_context(cafile=str(ca))


def _micro(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_both_replicas_admit_and_one_audits_then_the_other_takes_over(
    cluster: Cluster, namespace: str, replicas: list[Replica], plain_registry: Seeded, tmp_path: Path
) -> None:
    amd_only = plain_registry.samples["amd64-docker"].reference
    apps = client.AppsV1Api(cluster.admin)

    # Both replicas answer admission reviews, with a certificate from the CA they agreed on, and judge:
    # an amd64-only image pinned to arm64 nodes is denied by each (a fail-open allow would not be).
    trust = _shared_ca(cluster, tmp_path)
    doomed = pod_manifest("doomed", image=amd_only, node_selector={"kubernetes.io/arch": "arm64"})
    for replica in replicas:
        review = _admission_review(namespace, doomed)
        answer = _review(replica.op, trust, review)["response"]
        assert answer["uid"] == review["request"]["uid"]
        assert answer["allowed"] is False, f"{replica.op.service.name} allowed {doomed}: {answer}"

    leader, standby, lease = _leader(cluster, replicas)

    first = _incompatible_deployment(cluster, apps, namespace, "amd-on-arm", amd_only, replicas=2)

    # Several more passes: the report is not written again and the Event is not posted again, and the
    # standby never runs a pass at all.
    _full_audits_after(leader, 2)
    again = _audit(cluster, namespace, "deployment-amd-on-arm")
    assert again is not None
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    (event,) = _mismatch_events(cluster, namespace, "Deployment", "amd-on-arm")
    assert event.count == 1
    assert not standby.audited(), "the standby ran an audit pass"
    # Every apiserver call is in the DEBUG log (urllib3): the leader's show its writes, the standby's none.
    assert leader.writes(namespace), "no ImageAudit/Event write in the leader's log: is it still at DEBUG?"
    assert not standby.writes(namespace), f"the standby wrote: {standby.writes(namespace)}"
    assert standby.op.ready(), "the standby must stay ready: it serves the webhook"
    lease = _lease(cluster)
    assert leader.holds(lease.spec.holder_identity)

    # The leader dies without a word (SIGKILL: no release): the standby waits out the lease, then audits.
    duration = float(lease.spec.lease_duration_seconds)
    stopped_at = time.monotonic()
    leader.kill()
    last_renewal = _micro(_lease(cluster).spec.renew_time)
    bound = duration + duration / 3 + CPU_SLACK  # expiry, then one renew period of the standby
    wait_until(
        lambda: standby.holds((_lease(cluster) or lease).spec.holder_identity),
        timeout=bound,
        what=f"the standby to take Lease {LEASE} (lease duration {duration:.0f}s)",
        service=standby.op.service,
    )
    takeover = time.monotonic() - stopped_at
    taken = _lease(cluster)
    acquired = _micro(taken.spec.acquire_time)
    assert acquired - last_renewal >= dt.timedelta(seconds=duration), (
        f"the standby took a live lease: acquired {acquired}, last renewal {last_renewal}"
    )
    print(f"\ntakeover {takeover:.1f}s after the leader was killed (lease duration {duration:.0f}s)")

    # The new leader trusts the reports it finds: the unchanged one is left alone, no second Event.
    _full_audits_after(standby, 1)
    kept = _audit(cluster, namespace, "deployment-amd-on-arm")
    assert kept is not None
    assert kept["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert len(_mismatch_events(cluster, namespace, "Deployment", "amd-on-arm")) == 1

    # ... and keeps the reports current.
    late = _incompatible_deployment(cluster, apps, namespace, "late", amd_only, replicas=1)
    assert late["status"]["workload"] == "Deployment/late"
    _full_audits_after(standby, 1)
    assert len(_mismatch_events(cluster, namespace, "Deployment", "late")) == 1


def test_a_leader_that_stops_cleanly_hands_over_at_once(
    cluster: Cluster, replicas: list[Replica], plain_registry: Seeded, tmp_path: Path
) -> None:
    """A clean stop (SIGTERM, as on a rolling update) releases the Lease: no wait of a lease duration."""
    live = [r for r in replicas if r.op.service.alive()]
    env = _replica_env(plain_registry)
    newcomer = Replica(Operator(kubeconfig=cluster.kubeconfig, log_dir=tmp_path, env=env))
    newcomer.op.start(timeout=START_WAIT)
    try:
        candidates = [*live, newcomer]

        def holder() -> Replica | None:
            lease = _lease(cluster)
            return next((r for r in candidates if lease and r.holds(lease.spec.holder_identity)), None)

        leader = wait_until(holder, timeout=AUDIT_WAIT, what=f"a replica to hold Lease {LEASE}")
        duration = float(_lease(cluster).spec.lease_duration_seconds)
        stopped_at = time.monotonic()
        leader.op.stop()
        after = _lease(cluster)
        assert after is not None
        assert not leader.holds(after.spec.holder_identity), f"a stopped leader still holds: {after.spec}"
        assert "released Lease" in leader.op.service.log_path.read_text()
        successor = wait_until(
            holder,
            timeout=duration / 3 + CPU_SLACK,
            what=f"a replica to take the released Lease {LEASE}",
        )
        handover = time.monotonic() - stopped_at
        assert successor is not leader
        print(f"\nhandover {handover:.1f}s after a clean stop (lease duration {duration:.0f}s)")
    finally:
        newcomer.op.stop()
