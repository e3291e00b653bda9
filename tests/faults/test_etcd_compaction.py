"""etcd compacted past what the operator's watches last saw: every watch gets `410 Gone` (issue 16).

kube-apiserver compacts etcd every 5 minutes; a watch that reconnects with a resourceVersion from
before the compaction (after an apiserver restart, a long disconnect, a watch cache that moved on) is
told `410 Gone` and must list again. Here, under the steady load, the apiserver is SIGKILLed; while it
is down etcd's revision is pushed on (writes of keys the apiserver never reads) and etcd is compacted
up to it through its JSON gateway; then the apiserver comes back. Its watch cache starts at the new
revision, etcd has nothing older: every watch of the operator reconnects with a resourceVersion that
is gone. What users would notice, and what this asserts:
- the watches relist (kopf logs "Restarting the watch-stream" for pods, nodes and namespaces);
- reports converge: every pod created before, during and after the fault gets its ImageAudit;
- none is written twice: in etcd's own history of each report since the compaction, every write
  changed the report (its fingerprint); the relist, which hands the auditor every pod again, writes
  nothing; and every incompatible pod has one auditor Event;
- the webhook answers every direct review meanwhile, in time and rightly;
- memory is back near where it was (the relist's bodies are not kept).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from tests.conftest import Seeded
from tests.faults.audited import ARM64, Setup, audited, ca_file, watch_driven
from tests.faults.load import (
    Figures,
    PodLoad,
    ReviewCase,
    ReviewLoad,
    rss_kib,
)
from tests.harness.cluster import Cluster
from tests.harness.kube import pod_manifest
from tests.harness.operator import (
    Operator,
)
from tests.harness.procs import wait_until

REVIEW_DEADLINE = 5.0
RECOVERY_SECONDS = 30.0
GAP_SECONDS = 5.0  # the apiserver's outage; the revision is pushed on and compacted meanwhile
WRITES = 300  # etcd writes made during the outage: the revision moves far past the watches'
RSS_SLACK_KIB = 20 * 1024
GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"
RELISTED = ("pods", "nodes", "namespaces")  # the watches the webhook's state and the reports hang on


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("etcd-compaction")
    env = watch_driven(state_resync=2, state_stale=6)
    with audited(cluster, plain_registry, directory, prefix="compact", env=env) as s:
        yield s


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _reports(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    found = client.CustomObjectsApi(cluster.admin).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )
    return {item["metadata"]["name"]: item for item in cast(dict[str, Any], found)["items"]}


def _auditor_events(cluster: Cluster, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items:
        if e.reason == "ImageArchMismatch" and (e.reporting_component or "") == "archaudit.io/auditor":
            counts[e.involved_object.name] = counts.get(e.involved_object.name, 0) + (e.count or 1)
    return counts


def _relists(op: Operator, since_line: int) -> dict[str, int]:
    """kopf's "Restarting the watch-stream" lines (its answer to a 410 Gone) by resource, after a line."""
    lines = op.service.log_path.read_text(errors="replace").splitlines()[since_line:]
    counts = dict.fromkeys(RELISTED, 0)
    for line in lines:
        if "Restarting the watch-stream for" in line:
            resource = line.split("Restarting the watch-stream for ", 1)[1].split(" ", 1)[0]
            plural = resource.split(".", 1)[0]
            if plural in counts:
                counts[plural] += 1
    return counts


def _duplicate_writes(cluster: Cluster, namespace: str, names: list[str], since: int) -> dict[str, Any]:
    """From etcd's history of each report since revision `since`: how many writes, and which of them
    changed nothing (same fingerprint as the write before: a report written twice)."""
    writes: dict[str, int] = {}
    duplicates: dict[str, list[int]] = {}
    for name in names:
        history = cluster.etcd_writes(f"/registry/{GROUP}/{PLURAL}/{namespace}/{name}", since=since)
        writes[name] = len(history)
        before: str | None = None
        for revision, value in history:
            fingerprint = (json.loads(value).get("status") or {}).get("fingerprint")
            if fingerprint is not None and fingerprint == before:
                duplicates.setdefault(name, []).append(revision)
            before = fingerprint
    return {"writes": writes, "duplicates": duplicates}


def test_watches_relist_after_etcd_compaction_under_load(setup: Setup) -> None:
    s, c = setup, setup.cluster
    assert s.op.service.proc is not None
    pid = s.op.service.proc.pid
    core = client.CoreV1Api(c.admin)

    def create(name: str) -> None:
        # Every other pod runs where its image cannot (warn mode admits it): an Incompatible report
        # and one auditor Event each, so a second write or Event after the relist would show.
        n = int(name.rsplit("-", 1)[1])
        pod = (
            pod_manifest(name, image=s.amd64_only, node_selector=ARM64)
            if n % 2
            else pod_manifest(name, image=s.multiarch)
        )
        core.create_namespaced_pod(s.warn_ns, pod, _request_timeout=5)

    cases = [
        ReviewCase(
            s.enforce_ns, pod_manifest("deny-me", image=s.amd64_only, node_selector=ARM64), denied=True
        ),
        ReviewCase(s.enforce_ns, pod_manifest("admit-me", image=s.multiarch), denied=False),
    ]
    rss_before = rss_kib(pid)
    reviews = ReviewLoad(s.op.url, ca_file(s.op), cases, rate=5).start()
    pods = PodLoad(create, rate=2).start()
    started = time.monotonic()
    try:
        wait_until(lambda: len(pods.created) >= 6, timeout=60, what="six pods created before the fault")
        before = list(pods.created)
        # Reported as scheduled (nodePlatforms): nothing left to change in them but the fault.
        wait_until(
            lambda: all(
                (_reports(c, s.warn_ns).get(f"pod-{n}") or {}).get("status", {}).get("nodePlatforms")
                for n in before
            ),
            timeout=60,
            what="the pre-fault pods reported where they run",
        )
        log_mark = len(s.op.service.log_path.read_text(errors="replace").splitlines())
        killed = time.monotonic()
        c.kill_apiserver()
        revision_before = c.etcd_revision()
        prefix = f"/archaudit-faults/compaction-{uuid.uuid4().hex[:6]}/"
        for i in range(WRITES):
            c.etcd("kv/put", {"key": _b64(f"{prefix}{i % 10}"), "value": _b64(str(i))})
        compacted = c.etcd_revision()
        c.compact_etcd(compacted)
        c.etcd("kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0")})
        # The outage we inject while the load runs: not a synchronisation.
        threading.Event().wait(max(0.0, GAP_SECONDS - (time.monotonic() - killed)))
        ready = c.start_apiserver_again()
        created_at_ready = len(pods.created)
        relisted_at: dict[str, float] = {}

        def relisted() -> bool:
            for plural, n in _relists(s.op, log_mark).items():
                if n and plural not in relisted_at:
                    relisted_at[plural] = time.monotonic() - ready
            return len(relisted_at) == len(RELISTED)

        wait_until(
            relisted,
            timeout=RECOVERY_SECONDS,
            interval=0.25,
            what="the pod, node and namespace watches to relist",
        )
        wait_until(
            lambda: len(pods.created) >= created_at_ready + 6, timeout=60, what="six pods after the fault"
        )
    finally:
        pods.stop()
        reviews.stop()
    created = list(pods.created)
    names = [f"pod-{n}" for n in created]
    converge_started = time.monotonic()
    wait_until(
        lambda: set(names) <= set(_reports(c, s.warn_ns)),
        timeout=RECOVERY_SECONDS,
        what="a report for every pod created before, during and after the fault",
    )
    converged_s = time.monotonic() - ready
    incompatible = [n for n in created if int(n.rsplit("-", 1)[1]) % 2]
    wait_until(
        lambda: all(_auditor_events(c, s.warn_ns).get(n) for n in incompatible),
        timeout=RECOVERY_SECONDS,
        what="an auditor Event on every incompatible pod",
    )
    reports = _reports(c, s.warn_ns)
    history = _duplicate_writes(c, s.warn_ns, names, compacted)
    events = _auditor_events(c, s.warn_ns)
    relists = _relists(s.op, log_mark)
    rss_after = rss_kib(pid)
    total = reviews.figures(REVIEW_DEADLINE, started)
    figures = Figures(
        "etcd-compaction",
        {
            "revision_pushed": f"{revision_before}->{compacted} (compacted)",
            "gap_s": round(ready - killed, 1),
            "relists_after_410": relists,
            "relist_s_after_ready": {k: round(v, 1) for k, v in relisted_at.items()},
            "reports_converged_s_after_ready": round(converged_s, 1),
            "converge_wait_s": round(time.monotonic() - converge_started, 1),
            "reviews": total,
            "pods_created": len(created),
            "pod_creates_failed": sum(not o.ok for o in pods.outcomes),
            "reports": len(reports),
            "report_writes_since_compaction": sum(history["writes"].values()),
            "duplicate_writes": history["duplicates"],
            "auditor_events_per_incompatible_pod": sorted({events.get(n, 0) for n in incompatible}),
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
        },
    )
    print(figures.line())
    assert total["failed"] == 0, [o.detail for o in reviews.outcomes if not o.ok][:5]
    assert total["wrong"] == 0, [o.detail for o in reviews.outcomes if o.wrong][:5]
    assert total["over_deadline"] == 0, max(o.seconds for o in reviews.outcomes)
    assert all(relists[p] >= 1 for p in RELISTED), relists
    assert not history["duplicates"], history["duplicates"]
    # The pre-fault reports were written before the compaction: the relist must not write them again.
    assert all(history["writes"][f"pod-{n}"] == 0 for n in before), history["writes"]
    assert all(events.get(n) == 1 for n in incompatible), events
    assert rss_after - rss_before < RSS_SLACK_KIB, (rss_before, rss_after)
