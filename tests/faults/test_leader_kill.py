"""The auditing leader SIGKILLed under load, two replicas (issue 16).

Both replicas serve the webhook; the holder of the Lease audits. What users notice when the leader dies
(OOM kill, node loss) while pods keep being created and reviews keep coming:
- reviews sent to the surviving replica are all answered, in time, rightly;
- the survivor takes the Lease within its duration (plus the slack a loaded machine needs), and pods
  created after the kill get their reports;
- no report is written twice and no Event is posted twice: the reports of pods from before the kill
  keep their resourceVersion through the takeover, and every incompatible pod has one auditor Event.
  Their image has a fixing tag (1.0 is amd64 only, 1.2 adds arm64), named in every report before the
  kill: the new leader's tag finder has searched nothing yet, and must not take that for news.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.faults.load import Figures, PodLoad, ReviewCase, ReviewLoad
from tests.harness.cluster import Cluster
from tests.harness.kube import create_namespace, pod_manifest
from tests.harness.operator import Operator, ensure_namespace, install_imageaudit_crd
from tests.harness.procs import wait_until
from tests.harness.registry import push_image, push_index

CLUSTER_NAMESPACE = "archaudit-faults-leader"  # the replicas' own Lease and webhook Secret
LEASE = "archaudit-auditor"
LEASE_SECONDS = 15.0  # kube.LeaseElector's default duration
CPU_SLACK = 15.0
ANSWER_BOUND = 4.5
GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"
ARM64 = {"kubernetes.io/arch": "arm64"}


@pytest.fixture(scope="module")
def replicas(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Operator]]:
    directory = tmp_path_factory.mktemp("leader-kill")
    install_imageaudit_crd(cluster, directory)
    ensure_namespace(cluster.admin, CLUSTER_NAMESPACE)
    env = {
        "ARCHAUDIT_CLUSTER_NAMESPACE": CLUSTER_NAMESPACE,
        "ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME": f"registered-by-nobody-{uuid.uuid4().hex[:6]}",
        "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": "3600",
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
    }
    ops = [Operator(kubeconfig=cluster.kubeconfig, log_dir=directory / "logs", env=env) for _ in range(2)]
    try:
        for op in ops:
            op.service.start()
        for op in ops:
            wait_until(op.ready, timeout=120, what=f"{op.service.name} /readyz", service=op.service)
        yield ops
    finally:
        for op in ops:
            op.stop()


def _holder(cluster: Cluster) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.admin).read_namespaced_lease(LEASE, CLUSTER_NAMESPACE)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(str | None, lease.spec.holder_identity)


def _pid(op: Operator) -> int:
    assert op.service.proc is not None
    return op.service.proc.pid


def _report(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = client.CustomObjectsApi(cluster.admin).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(dict[str, Any], found)


def _auditor_events(cluster: Cluster, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items:
        if e.reason == "ImageArchMismatch" and (e.reporting_component or "") == "archaudit.io/auditor":
            counts[e.involved_object.name] = counts.get(e.involved_object.name, 0) + (e.count or 1)
    return counts


def _ca(op: Operator) -> Path:
    assert op.service.env is not None
    return Path(op.service.env["ARCHAUDIT_WEBHOOK_CERT_DIR"]) / "ca.crt"


def _fixable_image(registry: Seeded) -> str:
    """`<repo>:1.0` (amd64 only) in a repository whose 1.2 provides arm64 too: a fix to name."""
    pusher = registry.registry.pusher()
    repo = f"leader-kill-{uuid.uuid4().hex[:6]}/api"
    push_image(pusher, repo, "linux", "amd64", tag="1.0")
    kids = [push_image(pusher, repo, "linux", "amd64"), push_image(pusher, repo, "linux", "arm64")]
    push_index(pusher, repo, [k.descriptor() for k in kids], tag="1.2")
    return registry.registry.ref(repo, "1.0")


def _rewrites_logged(op: Operator) -> list[str]:
    """What the operator said changed when it wrote a report again (its DEBUG line)."""
    lines = op.service.log_path.read_text(errors="replace").splitlines()
    return [line.split(": ", 1)[-1] for line in lines if "written again" in line]


@pytest.mark.long  # 35 s of load; `make faults` runs it
def test_leader_sigkilled_under_load(
    cluster: Cluster, plain_registry: Seeded, replicas: list[Operator]
) -> None:
    namespace = f"leader-kill-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, namespace, labels={"archaudit.io/mode": "warn"})
    enforce = f"leader-enforce-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, enforce)
    amd64_only = _fixable_image(plain_registry)
    holder = wait_until(lambda: _holder(cluster), timeout=60, what="a replica to hold the Lease")
    (leader,) = [op for op in replicas if str(holder).endswith(f"-{_pid(op)}")]
    (survivor,) = [op for op in replicas if op is not leader]
    core = client.CoreV1Api(cluster.admin)

    def create(name: str) -> None:
        pod = pod_manifest(name, image=amd64_only, node_selector=ARM64)
        core.create_namespaced_pod(namespace, pod, _request_timeout=5)

    cases = [
        ReviewCase(enforce, pod_manifest("deny-me", image=amd64_only, node_selector=ARM64), denied=True),
        ReviewCase(
            enforce, pod_manifest("admit-me", image=plain_registry.samples["multiarch"].reference), False
        ),
    ]
    pods = PodLoad(create, rate=1).start()
    to_survivor = ReviewLoad(survivor.url, _ca(survivor), cases, rate=5).start()
    try:
        wait_until(lambda: len(pods.created) >= 5, timeout=60, what="five pods created")
        before = list(pods.created)
        for name in before:
            wait_until(
                lambda n=name: _report(cluster, namespace, f"pod-{n}"), timeout=60, what=f"report pod-{name}"
            )  # type: ignore[misc]
        # The old leader's tag finder has found the fix by now: every report names it.
        for name in before:
            wait_until(
                lambda n=name: (
                    (_report(cluster, namespace, f"pod-{n}") or {})  # type: ignore[misc]
                    .get("status", {})
                    .get("containers", [{}])[0]
                    .get("fixes")
                    == {"linux/arm64": "1.2"}
                ),
                timeout=60,
                what=f"report pod-{name} to name the fixing tag",
            )
        versions = {n: _report(cluster, namespace, f"pod-{n}")["metadata"]["resourceVersion"] for n in before}  # type: ignore[index]
        killed = time.monotonic()
        os.killpg(_pid(leader), signal.SIGKILL)  # no clean-up: the Lease is left to expire
        assert leader.service.proc is not None
        leader.service.proc.wait(timeout=30)
        wait_until(
            lambda: str(_holder(cluster)).endswith(f"-{_pid(survivor)}"),
            timeout=LEASE_SECONDS + CPU_SLACK,
            what="the survivor to take the Lease",
        )
        took_over = time.monotonic() - killed
        created_after = len(pods.created)
        wait_until(lambda: len(pods.created) >= created_after + 5, timeout=60, what="five more pods")
        # The length of load we keep up after the takeover: not a synchronisation.
        threading.Event().wait(2)
    finally:
        pods.stop()
        to_survivor.stop()
    after = [n for n in pods.created if n not in before]
    for name in after:
        wait_until(
            lambda n=name: _report(cluster, namespace, f"pod-{n}"), timeout=90, what=f"report pod-{name}"
        )  # type: ignore[misc]
    wait_until(
        lambda: all(_auditor_events(cluster, namespace).get(n) for n in pods.created),
        timeout=90,
        what="an auditor Event on every incompatible pod",
    )
    rewritten = [
        n
        for n in before
        if _report(cluster, namespace, f"pod-{n}")["metadata"]["resourceVersion"] != versions[n]  # type: ignore[index]
    ]
    events = _auditor_events(cluster, namespace)
    figures = to_survivor.figures(ANSWER_BOUND, killed)
    print(
        Figures(
            "leader-sigkill",
            {
                "takeover_s": round(took_over, 1),
                "survivor_reviews_after_kill": figures,
                "pods_before": len(before),
                "pods_after": len(after),
                "reports_rewritten_by_new_leader": len(rewritten),
                "events_per_pod": sorted(set(events.values())),
            },
        ).line()
    )
    assert figures["failed"] == figures["over_deadline"] == figures["wrong"] == 0, figures
    assert not rewritten, (rewritten, _rewrites_logged(survivor), _rewrites_logged(leader))
    assert all(events.get(n) == 1 for n in pods.created), events
