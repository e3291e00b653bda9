"""kube-apiserver SIGKILLed and restarted on the same port and etcd, under load (issue 16, first row).

k3s restarts its embedded apiserver on every upgrade and reboot. What users would notice, and what
this asserts, per restart:
- the webhook keeps answering direct reviews during the gap, in time and with no wrong verdict;
- within RECOVERY_SECONDS of the apiserver being ready again the operator's state is exact: a node
  added after the restart is in the node map, a namespace created after it is judged by its labels, and
  a pod created after it gets its ImageAudit (the auditor's pod watch is back);
- no duplicate Event: every incompatible pod has one ImageArchMismatch Event from the auditor;
- readiness is honest: /readyz fails once the node map and namespace labels are unconfirmed for
  longer than the bound (the operator runs with a short one here), and is back with the apiserver;
  the reviews answered meanwhile are counted as answered on stale state.
The short case (one restart) runs in `make test`; the long one (three restarts, gaps of 20, 5 and 30 s,
as seen on `make demo`) in `make faults`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.faults.audited import ARM64, Setup, audited, ca_file, watch_driven
from tests.faults.load import (
    Figures,
    PodLoad,
    ReadyzProbe,
    ReviewCase,
    ReviewLoad,
    rss_kib,
)
from tests.harness.cluster import Cluster, FakeNode
from tests.harness.kube import pod_manifest
from tests.harness.operator import (
    Operator,
)
from tests.harness.procs import wait_until

STATE_RESYNC_SECONDS = 2.0
STATE_STALE_SECONDS = 6.0
RECOVERY_SECONDS = 30.0  # the promise: state exact this long after the apiserver is ready again
REVIEW_DEADLINE = 5.0  # the apiserver's timeoutSeconds: an answer later than this is as good as none
GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("apiserver-restart")
    env = watch_driven(state_resync=STATE_RESYNC_SECONDS, state_stale=STATE_STALE_SECONDS)
    with audited(cluster, plain_registry, directory, prefix="fault", env=env) as s:
        yield s


def _nodes_known(op: Operator) -> int:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("archaudit_nodes{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _metric(op: Operator, name: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


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


def _mismatch_events(cluster: Cluster, namespace: str, name: str) -> dict[str, int]:
    """ImageArchMismatch Events on Pod `name` by reporting component, with their repeat counts.

    The webhook announces a warned pod at admission, the auditor an Incompatible report: one each.
    """
    events = client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items
    counts: dict[str, int] = {}
    for e in events:
        if (
            e.reason == "ImageArchMismatch"
            and e.involved_object.kind == "Pod"
            and e.involved_object.name == name
        ):
            component = e.reporting_component or (e.source.component if e.source else "") or "?"
            counts[component] = counts.get(component, 0) + (e.count or 1)
    return counts


def _review_allowed(s: Setup, namespace: str, pod: dict[str, Any]) -> bool:
    """One direct review of `pod` in `namespace`, answered and allowed."""
    outcome = ReviewLoad(s.op.url, ca_file(s.op), [ReviewCase(namespace, pod, denied=False)]).once()
    return outcome.ok and not outcome.wrong


def _incompatible(s: Setup, name: str) -> None:
    """A pod that runs (warn mode) where its image cannot: an Incompatible report and one Event.

    A bare pod, not a Deployment: its report then depends on archaudit alone, not also on the
    controller manager catching up after the restart.
    """
    pod = pod_manifest(name, image=s.amd64_only, node_selector=ARM64)
    client.CoreV1Api(s.cluster.admin).create_namespaced_pod(s.warn_ns, pod)


def _cycle(
    s: Setup, case: str, i: int, gap: float, baseline: int, reviews: ReviewLoad, readyz: ReadyzProbe
) -> dict[str, Any]:
    """One SIGKILL + restart of kube-apiserver; returns the cycle's figures."""
    c = s.cluster
    killed = time.monotonic()
    c.kill_apiserver()
    # The gap is the length of the outage we inject, while the load runs: not a synchronisation.
    threading.Event().wait(gap)
    ready = c.start_apiserver_again()
    # What changes once the apiserver is back, and must be seen by the operator's watches:
    version = str(c.get("/version")["gitVersion"])
    node = FakeNode(f"{case}-{i}", "arm64", f"192.0.2.{100 + baseline + i}")
    c.kubectl("create", "-f", "-", input=json.dumps(node.manifest(version)))
    new_ns = f"{case}-warn-{i}"
    client.CoreV1Api(c.admin).create_namespace(
        {"metadata": {"name": new_ns, "labels": {"archaudit.io/mode": "warn"}}}
    )
    probe = f"{case}-{i}"
    _incompatible(s, probe)  # its report times the auditor's pod watch; its Events are counted at the end
    expected_nodes = baseline + i + 1
    denied_pod = pod_manifest(f"probe-{i}", image=s.amd64_only, node_selector=ARM64)
    seen: dict[str, float] = {}

    def converged() -> bool:
        now = time.monotonic()
        if "nodes" not in seen and _nodes_known(s.op) == expected_nodes:
            seen["nodes"] = now - ready
        if "namespaces" not in seen and _review_allowed(s, new_ns, denied_pod):
            seen["namespaces"] = now - ready
        if "pods" not in seen and _report(c, s.warn_ns, f"pod-{probe}") is not None:
            seen["pods"] = now - ready
        return len(seen) == 3

    try:
        wait_until(converged, timeout=RECOVERY_SECONDS, interval=0.25, what=f"restart {i} to be caught up")
    except TimeoutError as e:
        raise AssertionError(
            f"{RECOVERY_SECONDS:.0f}s after restart {i} only these had caught up (s after ready): {seen}"
            f"\n{s.op.tail()}"
        ) from e
    wait_until(
        lambda: readyz.between(ready) and readyz.between(ready)[-1].ok,
        timeout=RECOVERY_SECONDS,
        what=f"/readyz to answer 200 after restart {i}",
    )
    probes = readyz.between(killed)
    not_ready = [p for p in probes if not p.ok and p.at < ready]
    back = next(p.at for p in probes if p.at >= ready and p.ok)
    if ready - killed > STATE_STALE_SECONDS + STATE_RESYNC_SECONDS + 2:
        # Unconfirmed for longer than the bound: the probe must have said so, with the reason.
        assert not_ready, f"/readyz stayed 200 through a {ready - killed:.0f}s outage"
        assert any("not confirmed" in p.detail for p in not_ready), not_ready[:3]
    gap_figures = reviews.figures(REVIEW_DEADLINE, killed, ready)
    seen["readyz"] = back - ready
    return {
        "gap_s": round(ready - killed, 1),
        "recovery_s": round(max(seen.values()), 1),
        **{f"gap_reviews_{k}": v for k, v in gap_figures.items()},
        "seen": {k: round(v, 1) for k, v in seen.items()},
    }


def _run(s: Setup, gaps: list[float], case: str) -> None:
    c = s.cluster
    assert s.op.service.proc is not None
    pid = s.op.service.proc.pid
    _incompatible(s, f"{case}-before")
    wait_until(lambda: _report(c, s.warn_ns, f"pod-{case}-before"), timeout=60, what="the first report")
    baseline = _nodes_known(s.op)
    cases = [
        ReviewCase(
            s.enforce_ns, pod_manifest("deny-me", image=s.amd64_only, node_selector=ARM64), denied=True
        ),
        ReviewCase(s.enforce_ns, pod_manifest("admit-me", image=s.multiarch), denied=False),
    ]
    core = client.CoreV1Api(c.admin)

    def create(name: str) -> None:
        core.create_namespaced_pod(s.warn_ns, pod_manifest(name, image=s.multiarch), _request_timeout=5)

    rss_before = rss_kib(pid)
    reviews = ReviewLoad(s.op.url, ca_file(s.op), cases, rate=5).start()
    readyz = ReadyzProbe(s.op.metrics_url).start()
    pods = PodLoad(create, rate=2).start()
    started = time.monotonic()
    cycles = []
    try:
        for i, gap in enumerate(gaps):
            cycles.append(_cycle(s, case, i, gap, baseline, reviews, readyz))
    finally:
        pods.stop()
        reviews.stop()
        readyz.stop()
    stale_reviews = _metric(s.op, "archaudit_admission_reviews_stale_state_total")
    rss_after = rss_kib(pid)
    names = [f"{case}-before", *(f"{case}-{i}" for i in range(len(gaps)))]
    for name in names:
        wait_until(
            lambda n=name: _mismatch_events(c, s.warn_ns, n).get("archaudit.io/auditor"),  # type: ignore[misc]
            timeout=90,
            what=f"the auditor's Event on Pod {name}",
        )
    events = {name: _mismatch_events(c, s.warn_ns, name) for name in names}
    total = reviews.figures(REVIEW_DEADLINE, started)
    figures = Figures(
        case,
        {
            "cycles": cycles,
            "reviews": total,
            "pods_created": len(pods.created),
            "pod_creates_failed": sum(not o.ok for o in pods.outcomes),
            "events": events,
            "reviews_counted_on_stale_state": stale_reviews,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
        },
    )
    print(figures.line())
    assert total["failed"] == 0, [o.detail for o in reviews.outcomes if not o.ok][:5]
    assert total["wrong"] == 0, [o.detail for o in reviews.outcomes if o.wrong][:5]
    assert total["over_deadline"] == 0, max(o.seconds for o in reviews.outcomes)
    assert stale_reviews > 0  # the reviews answered during the outage said so in the metrics
    # Every incompatible pod is announced once by the auditor, and at most once at admission,
    # even though each restart relists it.
    for name, by_component in events.items():
        assert by_component.get("archaudit.io/auditor") == 1, (name, by_component)
        assert all(n == 1 for n in by_component.values()), (name, by_component)


def test_one_apiserver_restart_under_load(setup: Setup) -> None:
    _run(setup, [10.0], "restart1")


@pytest.mark.long
def test_three_apiserver_restarts_under_load(setup: Setup) -> None:
    _run(setup, [20.0, 5.0, 30.0], "restart3")
