"""Admission Events under load, against the real kube-apiserver (issue 11).

One `archaudit run` with the admin kubeconfig serves a ValidatingWebhookConfiguration (so the
ReplicaSet controller's pods reach it), and the tests also post AdmissionReviews to it directly, as the
apiserver would, to make bursts no control plane on two cores could produce through pod creation. A
second operator runs as a ServiceAccount that may not write Events.

What is asserted is behaviour, never time: how many Event objects exist, what they are attached to,
their counts, the operator's own `archaudit_events_total`, that every review was answered 200, and
that the operator's memory did not grow with the number of reviews.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import ssl
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from archaudit.adapters.events import RETRY_MAX_SECONDS, RETRY_TRIES, EventEmitter, Involved
from archaudit.adapters.kube import KubeApi
from tests.conftest import Seeded
from tests.harness.cluster import Cluster
from tests.harness.operator import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Operator,
    ensure_namespace,
    service_account_kubeconfig,
    wait_until_denied,
    webhook_configuration,
)
from tests.harness.procs import wait_until
from tests.harness.tcpgate import TcpGate

REASON = "ImageArchMismatch"
TLS_SECRET = "archaudit-webhook-tls"
BURST = 20_000
CONCURRENCY = 8


# --- AdmissionReviews posted straight to the operator -----------------------------------------------


def review_body(obj: Mapping[str, Any], uid: str, *, dry_run: bool = False) -> bytes:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": obj["metadata"].get("name", ""),
            "namespace": obj["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": dry_run,
        },
    }
    return json.dumps(review).encode()


def webhook_tls(cluster: Cluster) -> ssl.SSLContext:
    secret = client.CoreV1Api(cluster.admin).read_namespaced_secret(TLS_SECRET, NAMESPACE)
    assert secret.data
    return ssl.create_default_context(cadata=base64.b64decode(secret.data["ca.crt"]).decode())


async def _post_all(url: str, tls: ssl.SSLContext, bodies: Sequence[bytes]) -> list[tuple[int, bytes]]:
    answers: list[tuple[int, bytes]] = []
    work = iter(bodies)
    connector = aiohttp.TCPConnector(ssl=tls, limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def loop() -> None:
            for body in work:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    answers.append((r.status, await r.read()))

        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    return answers


def post_reviews(op: Operator, tls: ssl.SSLContext, bodies: Sequence[bytes]) -> list[dict[str, Any]]:
    """Post every body (8 at a time) and return each `response`, after checking it was a 200."""
    answers = asyncio.run(_post_all(op.url + "/validate/pods", tls, bodies))
    assert len(answers) == len(bodies)
    bad = [(status, body[:300]) for status, body in answers if status != 200]
    assert bad == [], bad[:5]
    return [json.loads(body)["response"] for _, body in answers]


def at_risk_pod(registry: Seeded, namespace: str, name: str) -> dict[str, Any]:
    """The issue's pod: multi-arch, attested (amd64 only) and amd64-only images; no nodeSelector."""
    images = [registry.samples[s].reference for s in ("multiarch", "attested", "amd64-docker")]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
    }


# --- what the operator and the apiserver say ---------------------------------------------------------


def events_total(op: Operator) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in op.metrics().splitlines():
        if line.startswith("archaudit_events_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('result="', 1)[1].split('"', 1)[0]] = float(value)
    return found


def rss_bytes(op: Operator) -> float:
    for line in op.metrics().splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    raise AssertionError("no process_resident_memory_bytes in /metrics")


def our_events(cluster: Cluster, namespace: str) -> list[Any]:
    items = client.CoreV1Api(cluster.admin).list_namespaced_event(namespace).items
    return [e for e in items if e.reason == REASON]


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path_factory.mktemp("archaudit-events-logs"),
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "false",
            "ARCHAUDIT_LOG_LEVEL": "INFO",  # DEBUG would log every review of the burst
        },
    )
    op.start()
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    admission.create_validating_webhook_configuration(webhook_configuration(op.url))
    try:
        # Until the apiserver has the configuration and its caBundle, it admits everything unchecked
        # (failurePolicy Ignore): wait for a pod it must deny, dry-run, so no Event is involved.
        canary = "archaudit-canary"
        ensure_namespace(cluster.admin, canary)
        bad = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "canary"},
            "spec": {
                "containers": [{"name": "c", "image": plain_registry.samples["amd64-docker"].reference}],
                "nodeSelector": {"kubernetes.io/arch": "arm64"},
            },
        }
        wait_until_denied(cluster.admin, canary, bad, service=op.service, what="the webhook in the apiserver")
        yield op
    finally:
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


@pytest.fixture(scope="module")
def tls(cluster: Cluster, operator: Operator) -> ssl.SSLContext:
    return webhook_tls(cluster)


# --- the tests ---------------------------------------------------------------------------------------


def test_a_burst_of_one_warned_pod_makes_one_event_counting_every_review(
    cluster: Cluster, operator: Operator, tls: ssl.SSLContext, plain_registry: Seeded, namespace: str
) -> None:
    obj = at_risk_pod(plain_registry, namespace, "burst")
    [first] = post_reviews(operator, tls, [review_body(obj, "warm-up")])  # resolves the images once
    assert first["allowed"], first
    assert first["warnings"], first
    wait_until(lambda: len(our_events(cluster, namespace)) == 1, timeout=30, what="the first Event")
    before_rss, before = rss_bytes(operator), events_total(operator)

    answers = post_reviews(operator, tls, [review_body(obj, str(uuid.uuid4())) for _ in range(BURST)])

    assert all(a["allowed"] and a["warnings"] == first["warnings"] for a in answers)
    # Every occurrence is accounted for, none was dropped, and none made a second object.
    wait_until(
        lambda: events_total(operator)["aggregated"] - before["aggregated"] == BURST,
        timeout=60,
        what=f"{BURST} occurrences counted as aggregated",
    )
    after = events_total(operator)
    assert after["emitted"] == before["emitted"]
    assert after["dropped"] == before["dropped"]
    # The count reaches the Event itself (patched every few seconds, not once per review).
    wait_until(
        lambda: [e.count for e in our_events(cluster, namespace)] == [BURST + 1],
        timeout=60,
        what=f"the Event's count to reach {BURST + 1}",
    )
    [event] = our_events(cluster, namespace)
    assert (event.involved_object.kind, event.involved_object.name) == ("Pod", "burst")
    assert event.type == "Warning"
    assert event.message == "; ".join(first["warnings"])
    # Queued work is per problem, not per review: 20,000 reviews leave no trace in memory. (One
    # task per review, as before, held every pod object until its write finished: ~100 MiB here.)
    assert rss_bytes(operator) - before_rss < 32 * 2**20


def test_an_at_risk_deployment_of_50_replicas_has_its_event_on_the_deployment(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    apps = client.AppsV1Api(cluster.admin)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }
    created = apps.create_namespaced_deployment(namespace, body)
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 50}})
    core = client.CoreV1Api(cluster.admin)
    wait_until(
        lambda: len(core.list_namespaced_pod(namespace).items) == 50, timeout=120, what="50 pods of web"
    )

    def pod_event() -> Any:
        # The pods' problem (the Deployment's own review has its own words, hence its own Event).
        found = [e for e in our_events(cluster, namespace) if "this pod" in e.message]
        return found[0] if len(found) == 1 and found[0].count >= 50 else None

    event = wait_until(pod_event, timeout=60, what="one pod Event on web counting 50 pods")
    events = our_events(cluster, namespace)
    assert {(e.involved_object.kind, e.involved_object.name) for e in events} == {("Deployment", "web")}
    assert {e.involved_object.uid for e in events} == {created.metadata.uid}
    assert len({e.message for e in events}) == len(events)  # one Event per distinct problem
    assert getattr(event, "count", 0) >= 50


def test_the_pods_of_a_cronjobs_job_have_their_event_on_the_cronjob(
    cluster: Cluster, operator: Operator, plain_registry: Seeded, namespace: str
) -> None:
    image = plain_registry.samples["amd64-docker"].reference
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image}]}}
    batch = client.BatchV1Api(cluster.admin)
    # Suspended: the Job below stands for the run the CronJob controller would start every minute.
    cron = batch.create_namespaced_cron_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly"},
            "spec": {
                "schedule": "0 3 * * *",
                "suspend": True,
                "jobTemplate": {"spec": {"template": template}},
            },
        },
    )
    owner = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": "nightly",
        "uid": cron.metadata.uid,
        "controller": True,
    }
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "nightly-29000000", "ownerReferences": [owner]},
            "spec": {"parallelism": 3, "completions": 3, "template": template},
        },
    )

    def pod_event() -> Any:
        found = [e for e in our_events(cluster, namespace) if "this pod" in e.message]
        return found[0] if len(found) == 1 else None

    wait_until(pod_event, timeout=60, what="the Event of the Job's pods")
    events = our_events(cluster, namespace)
    assert {(e.involved_object.kind, e.involved_object.name) for e in events} == {("CronJob", "nightly")}
    assert {e.involved_object.uid for e in events} == {cron.metadata.uid}


def test_dry_run_reviews_leave_no_event(
    cluster: Cluster, operator: Operator, tls: ssl.SSLContext, plain_registry: Seeded, namespace: str
) -> None:
    dry = at_risk_pod(plain_registry, namespace, "dry")
    answers = post_reviews(operator, tls, [review_body(dry, str(i), dry_run=True) for i in range(200)])
    assert all(a["allowed"] and a["warnings"] for a in answers)
    # A real review after them gets its Event; the dry ones, judged the same, got none.
    post_reviews(operator, tls, [review_body(at_risk_pod(plain_registry, namespace, "real"), "real")])
    wait_until(lambda: our_events(cluster, namespace), timeout=30, what="the Event of the real review")
    assert [e.involved_object.name for e in our_events(cluster, namespace)] == ["real"]


def test_a_pod_without_a_name_or_owner_gets_no_event(
    cluster: Cluster, operator: Operator, tls: ssl.SSLContext, plain_registry: Seeded, namespace: str
) -> None:
    unnamed = at_risk_pod(plain_registry, namespace, "")
    unnamed["metadata"] = {"generateName": "adhoc-", "namespace": namespace}
    before = events_total(operator)["dropped"]
    post_reviews(operator, tls, [review_body(unnamed, "unnamed")])
    post_reviews(operator, tls, [review_body(at_risk_pod(plain_registry, namespace, "named"), "named")])
    wait_until(lambda: our_events(cluster, namespace), timeout=30, what="the Event of the named pod")
    assert [e.involved_object.name for e in our_events(cluster, namespace)] == ["named"]
    assert events_total(operator)["dropped"] == before + 1


# --- an apiserver that refuses Event writes ---------------------------------------------------------

NO_EVENTS_SA = "archaudit-no-events"
EVENT_WRITER = "archaudit-no-events-writer"  # the grant the test removes
# What the operator reads and writes with the auditor off, Events readable but never writable.
NO_EVENTS_RULES = [
    {
        "apiGroups": [""],
        "resources": ["nodes", "namespaces", "pods", "events"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get", "create", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations"],
        "verbs": ["get", "patch"],
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
]


@pytest.fixture(scope="module")
def refused(
    cluster: Cluster, plain_registry: Seeded, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """An operator whose ServiceAccount may write Events through `EVENT_WRITER` until a test removes it."""
    rbac = client.RbacAuthorizationV1Api(cluster.admin)
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": NO_EVENTS_SA}})
    writer_rules = [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
    for name, rules in ((NO_EVENTS_SA, NO_EVENTS_RULES), (EVENT_WRITER, writer_rules)):
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": NO_EVENTS_SA, "namespace": NAMESPACE}],
            }
        )
    work = tmp_path_factory.mktemp("archaudit-no-events")
    kubeconfig = service_account_kubeconfig(
        cluster.kubeconfig, namespace=NAMESPACE, name=NO_EVENTS_SA, path=Path(work / "sa.kubeconfig")
    )
    op = Operator(
        kubeconfig=kubeconfig,
        log_dir=work,
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "false",
            "ARCHAUDIT_LOG_LEVEL": "INFO",
        },
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()
        for name in (NO_EVENTS_SA, EVENT_WRITER):
            with contextlib.suppress(ApiException):  # the test may have removed the writer's binding
                rbac.delete_cluster_role_binding(name)
            rbac.delete_cluster_role(name)
        core.delete_namespaced_service_account(NO_EVENTS_SA, NAMESPACE)


def test_refused_event_writes_never_fail_a_review(
    cluster: Cluster, refused: Operator, tls: ssl.SSLContext, plain_registry: Seeded, namespace: str
) -> None:
    def review(name: str) -> bytes:
        return review_body(at_risk_pod(plain_registry, namespace, name), str(uuid.uuid4()))

    # With the grant: this operator writes Events like any other.
    post_reviews(refused, tls, [review("granted")])
    wait_until(lambda: our_events(cluster, namespace), timeout=30, what="the Event written with the grant")

    client.RbacAuthorizationV1Api(cluster.admin).delete_cluster_role_binding(EVENT_WRITER)
    probes = iter(range(10_000))

    def refused_now() -> bool:
        # A new problem each time, so that each probe is a create the apiserver must authorize anew.
        post_reviews(refused, tls, [review(f"probe-{next(probes)}")])
        return events_total(refused)["failed"] >= 1

    wait_until(refused_now, timeout=30, interval=0.3, what="the apiserver to refuse Event writes")
    before = events_total(refused)

    # Many distinct problems, so that the emitter keeps trying to create Events and is refused.
    answers = post_reviews(refused, tls, [review(f"burst-{i % 100}") for i in range(2_000)])
    assert all(a["allowed"] and a["warnings"] for a in answers)
    wait_until(
        lambda: events_total(refused)["failed"] >= before["failed"] + 100,
        timeout=30,
        what="the refused creates of the 100 new problems",
    )
    after = events_total(refused)
    assert after["emitted"] == before["emitted"]
    assert not [e for e in our_events(cluster, namespace) if e.involved_object.name.startswith("burst-")]
    # A refused create spends the object's write budget like an accepted one: at most 25 tries per
    # object while the bucket refills (one per 5 minutes), never one per review.
    assert after["failed"] - before["failed"] <= 100 * 25


# --- an apiserver that is away when an Event is due ----------------------------------------------------


@pytest.fixture
def gate(cluster: Cluster) -> Iterator[TcpGate]:
    """The real apiserver behind a forwarder the test can shut: only this client sees the outage."""
    parsed = urllib.parse.urlsplit(cluster.server)
    forwarder = TcpGate(parsed.hostname or "127.0.0.1", parsed.port or 443).start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


def _emitter_behind(cluster: Cluster, gate: TcpGate, clock: list[float]) -> EventEmitter:
    configuration = copy.copy(cluster.admin.configuration)
    configuration.host = gate.url
    configuration.retries = False  # the emitter's own retries are under test, not urllib3's
    return EventEmitter(KubeApi(ApiClient(configuration)), clock=lambda: clock[0], instance="test")


def test_an_event_due_while_the_apiserver_is_away_is_written_when_it_is_back(
    cluster: Cluster, gate: TcpGate, namespace: str
) -> None:
    clock = [1000.0]
    emitter = _emitter_behind(cluster, gate, clock)
    pod = Involved("v1", "Pod", namespace, "seen-before-the-restart")
    gate.shut()

    async def away_then_back() -> None:
        emitter.about(pod, ["Incompatible: amd64 only"])
        await emitter.drain()
        assert emitter.retrying() == 1
        assert gate.refused >= 1
        # Seen again while the create waits: counted on it, not a second create.
        for _ in range(3):
            emitter.about(pod, ["Incompatible: amd64 only"])
        await emitter.drain()
        assert emitter.retrying() == 1
        gate.open()
        clock[0] += 1.0  # the first retry is due after a second (the clock is the emitter's own)
        await emitter.drain()

    asyncio.run(away_then_back())
    events = [e for e in our_events(cluster, namespace) if e.involved_object.name == pod.name]
    assert [e.count for e in events] == [4], events
    assert emitter.retrying() == 0
    assert (emitter.stats["emitted"], emitter.stats["failed"]) == (1, 0)
    assert emitter.stats["retried"] >= 1


def test_an_apiserver_away_for_good_ends_the_retries_with_one_failure(
    cluster: Cluster, gate: TcpGate, namespace: str
) -> None:
    clock = [1000.0]
    emitter = _emitter_behind(cluster, gate, clock)
    gate.shut()

    async def never_back() -> None:
        emitter.about(Involved("v1", "Pod", namespace, "lost"), ["Incompatible: amd64 only"])
        await emitter.drain()
        for _ in range(RETRY_TRIES):
            clock[0] += RETRY_MAX_SECONDS
            await emitter.drain()

    asyncio.run(never_back())
    assert emitter.retrying() == 0
    assert emitter.stats["failed"] == 1
    assert emitter.stats["retried"] == RETRY_TRIES - 1
    assert not our_events(cluster, namespace)
