"""The auditor's bookkeeping: which watch events make work, and how a pod finds its workload.

The watch handlers only touch memory, so they are driven directly with API-shaped dicts. Owner reads
are injected into the OwnerCache as an async function over a dict of objects (I/O injection): the
same code then runs against the apiserver in tests/e2e/test_audit.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, cast

import kopf
import pytest

from archaudit import audit
from archaudit.adapters.auditstore import OwnerCache
from archaudit.audit import Auditor, configure_kopf, pod_record
from archaudit.core import reports
from archaudit.core.config import AuditSettings
from archaudit.core.reports import EvidenceKind, WorkloadRef


def _pod(name: str = "web-1", *, owner: dict[str, Any] | None = None, node: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{**owner, "controller": True}]
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "acme/app:1", "env": [{"name": "A", "value": "1"}]}],
        "initContainers": [{"name": "setup", "image": "acme/setup:1"}],
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}}


RS_REF = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9", "uid": "uid-rs"}


def _auditor() -> Auditor:
    def no_context() -> Any:
        raise AssertionError("watch handlers must not need the context")

    return Auditor(no_context)


def test_pod_record_keeps_only_what_the_audit_reads() -> None:
    record = pod_record(_pod(owner=RS_REF, node="arm64-1"))
    assert [(c.name, c.image) for c in record.containers] == [
        ("app", "acme/app:1"),
        ("setup", "acme/setup:1"),
    ]
    assert record.spec == {"nodeSelector": {"kubernetes.io/arch": "arm64"}}
    assert record.node_name == "arm64-1"
    assert record.parent == ("shop", "uid-rs")
    assert pod_record(_pod()).parent == ("shop", "uid-web-1")  # a bare pod is its own workload


def test_pods_of_one_replicaset_share_what_they_have_in_common() -> None:
    # Kept for every pod of the cluster: 50 replicas must cost one spec, not 50 copies of it.
    auditor = _auditor()
    for i in range(3):
        auditor.on_pod(None, _pod(f"web-{i}", owner=RS_REF, node=f"arm64-{i}"))
    other = {**RS_REF, "name": "api-5d1", "uid": "uid-rs-api"}
    auditor.on_pod(None, _pod("api-0", owner=other))
    web = [auditor.pods[f"uid-web-{i}"] for i in range(3)]
    api = auditor.pods["uid-api-0"]
    assert all(p.spec is web[0].spec and p.containers is web[0].containers for p in web)
    assert all(p.controller is web[0].controller for p in web)
    assert api.spec is web[0].spec, "same scheduling fields, other ReplicaSet: still one copy"
    assert api.controller is not web[0].controller
    assert api.controller == {**other, "controller": True}
    assert [p.node_name for p in web] == ["arm64-0", "arm64-1", "arm64-2"]
    assert api.as_object()["metadata"]["ownerReferences"] == [{**other, "controller": True}]


def test_the_shared_table_is_bounded() -> None:
    auditor = _auditor()
    auditor.shared.limit = 10
    for i in range(25):
        selector = {"kubernetes.io/hostname": f"node-{i}"}
        obj = _pod(f"pinned-{i}")
        obj["spec"]["nodeSelector"] = selector
        auditor.on_pod(None, obj)
        assert auditor.pods[f"uid-pinned-{i}"].spec == {"nodeSelector": selector}
    assert len(auditor.shared) <= 10


def test_pod_record_reads_runtime_evidence() -> None:
    obj = _pod()
    obj["status"]["containerStatuses"] = [
        {
            "name": "app",
            "state": {"waiting": {"reason": "ErrImagePull", "message": "no match for platform in manifest"}},
        }
    ]
    (evidence,) = pod_record(obj).evidence
    assert (evidence.container, evidence.kind) == ("app", EvidenceKind.NO_PLATFORM_MATCH)


def test_only_pod_changes_that_matter_make_work() -> None:
    auditor = _auditor()
    obj = _pod(owner=RS_REF)
    auditor.on_pod(None, obj)
    assert auditor.dirty == {("shop", "uid-rs")}
    auditor.dirty.clear()

    ready = copy.deepcopy(obj)
    ready["status"] = {"phase": "Running", "podIP": "10.244.0.7", "conditions": [{"type": "Ready"}]}
    auditor.on_pod("MODIFIED", ready)
    assert auditor.dirty == set(), "readiness and IPs say nothing about platforms"

    scheduled = copy.deepcopy(ready)
    scheduled["spec"]["nodeName"] = "arm64-1"
    auditor.on_pod("MODIFIED", scheduled)
    assert auditor.dirty == {("shop", "uid-rs")}
    auditor.dirty.clear()

    auditor.on_pod("DELETED", scheduled)
    assert auditor.dirty == {("shop", "uid-rs")}
    assert auditor.pods == {}
    assert auditor.by_parent[("shop", "uid-rs")] == set()


def _node(labels: dict[str, str], heartbeat: str = "t0", unschedulable: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "arm64-1", "labels": labels},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "nodeInfo": {
                "architecture": "arm64",
                "operatingSystem": "linux",
                "containerRuntimeVersion": "containerd://2.1.4",
            },
            "conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}],
        },
    }


def _makes_work(auditor: Auditor, event_type: str | None, node: dict[str, Any]) -> bool:
    auditor.full_due = False
    auditor.on_node(event_type, node)
    return auditor.full_due


def test_node_heartbeats_make_no_work_but_label_changes_do() -> None:
    auditor = _auditor()
    labels = {"kubernetes.io/arch": "arm64"}
    pull_local = {**labels, "archaudit.io/containerd-pull": "local"}
    assert _makes_work(auditor, None, _node(labels))  # a node joins
    assert not _makes_work(auditor, "MODIFIED", _node(labels, heartbeat="t1"))
    assert _makes_work(auditor, "MODIFIED", _node(pull_local, heartbeat="t2"))
    assert _makes_work(auditor, "MODIFIED", _node(pull_local, unschedulable=True))  # cordoned
    assert _makes_work(auditor, "DELETED", _node(labels))  # a node leaves


def test_events_bring_evidence_to_the_pods_workload() -> None:
    auditor = _auditor()
    auditor.on_pod(None, _pod(owner=RS_REF))
    auditor.dirty.clear()
    event = {
        "metadata": {"namespace": "shop"},
        "involvedObject": {
            "kind": "Pod",
            "name": "web-1",
            "namespace": "shop",
            "fieldPath": "spec.containers{app}",
        },
        "message": "exec /app: exec format error",
    }
    auditor.on_kube_event(event)
    assert auditor.dirty == {("shop", "uid-rs")}
    auditor.dirty.clear()
    auditor.on_kube_event(event)  # the same evidence again (the kubelet repeats itself)
    assert auditor.dirty == set()
    assert len(auditor.event_evidence[("shop", "web-1")]) == 1


# --- the first pass waits for the initial listing ----------------------------------------------------


class CountingStore:
    """The one store call the wait makes: how many pods the cluster has."""

    def __init__(self, pods: int) -> None:
        self.pods = pods

    async def count_pods(self) -> int:
        return self.pods


def _listing_auditor(pods: int) -> Auditor:
    store = CountingStore(pods)
    return Auditor(lambda: cast(Any, "ctx"), store_factory=lambda _ctx: cast(Any, store))


async def test_the_first_pass_waits_for_every_pod_of_the_listing() -> None:
    auditor = _listing_auditor(3)
    waiting = asyncio.create_task(auditor._wait_for_listing(asyncio.Event()))
    for i in range(2):
        auditor.on_pod(None, _pod(f"web-{i}", owner=RS_REF))
        for _ in range(5):
            await asyncio.sleep(0)  # let the waiting task look (a yield, not a wait on time)
        assert not waiting.done(), f"stopped waiting at {i + 1} of 3 pods"
    auditor.on_pod(None, _pod("web-2", owner=RS_REF))
    await asyncio.wait_for(waiting, timeout=5)


async def test_a_listing_that_stops_short_is_not_waited_for_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "_LISTING_STALL_SECONDS", 0.2)  # pods deleted while listing
    auditor = _listing_auditor(5)
    auditor.on_pod(None, _pod("web-0", owner=RS_REF))
    await asyncio.wait_for(auditor._wait_for_listing(asyncio.Event()), timeout=10)
    assert len(auditor.pods) == 1


# --- kopf settings --------------------------------------------------------------------------------


def _resource(group: str, version: str, plural: str, kind: str) -> kopf.Resource:
    return kopf.Resource(group, version, plural, kind=kind, namespaced=True)


def test_kopf_watches_are_paged_filtered_and_quick_to_let_go() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings, AuditSettings(list_chunk_size=200, worker_idle_seconds=0.25))
    assert settings.watching.chunk_size == 200
    assert settings.queueing.idle_timeout == 0.25
    assert settings.watching.initial_streaming is False
    core_events = _resource("", "v1", "events", "Event")
    assert settings.watching.field_selectors.collect(core_events) == ["type=Warning,involvedObject.kind=Pod"]
    # Only core/v1 Events are filtered: not the pods, not the events.k8s.io API (other field names).
    assert settings.watching.field_selectors.collect(_resource("", "v1", "pods", "Pod")) == []
    new_events = _resource("events.k8s.io", "v1", "events", "Event")
    assert settings.watching.field_selectors.collect(new_events) == []


def test_kopf_settings_can_be_turned_back_to_kopfs_own() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(
        settings,
        AuditSettings(
            list_chunk_size=0, initial_streaming=True, events_field_selector="", worker_idle_seconds=5
        ),
    )
    assert settings.watching.chunk_size is None
    assert settings.watching.initial_streaming is True
    assert settings.queueing.idle_timeout == 5
    assert list(settings.watching.field_selectors) == []


@pytest.mark.parametrize(("root", "expected"), [("INFO", logging.WARNING), ("DEBUG", logging.NOTSET)])
def test_kopf_says_handler_succeeded_only_at_debug(root: str, expected: int) -> None:
    objects, root_logger = logging.getLogger("kopf.objects"), logging.getLogger()
    saved = objects.level, root_logger.level
    try:
        objects.setLevel(logging.NOTSET)
        root_logger.setLevel(root)
        configure_kopf(kopf.OperatorSettings(), AuditSettings())
        assert objects.level == expected
    finally:
        objects.setLevel(saved[0])
        root_logger.setLevel(saved[1])


# --- owners ---------------------------------------------------------------------------------------


class Objects:
    """An in-memory owner source counting its reads, injected into OwnerCache."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.reads: list[tuple[str, str, str]] = []

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append((kind, namespace, name))
        return self.objects.get((kind, namespace, name))


def _object(kind: str, name: str, uid: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    api = {"ReplicaSet": "apps/v1", "Job": "batch/v1"}[kind]
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": uid}
    if owner:
        meta["ownerReferences"] = [{**owner, "controller": True}]
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": {"big": "x" * 1000}}


DEPLOY_REF = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-deploy"}


async def test_pods_of_a_deployment_read_their_replicaset_once() -> None:
    source = Objects(_object("ReplicaSet", "web-7c9", "uid-rs", owner=DEPLOY_REF))
    cache = OwnerCache(source.read)
    for i in range(50):
        ref = await cache.workload_of(_pod(f"web-{i}", owner=RS_REF))
        assert ref == WorkloadRef("apps/v1", "Deployment", "web", "uid-deploy", "shop")
    assert source.reads == [("ReplicaSet", "shop", "web-7c9")]
    assert "spec" not in (cache.lookup("ReplicaSet", "shop", "web-7c9") or {}), "only metadata is kept"


async def test_job_of_a_cronjob() -> None:
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "uid-cron"}
    job_ref = {"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-290", "uid": "uid-job"}
    source = Objects(_object("Job", "nightly-290", "uid-job", owner=cron))
    ref = await OwnerCache(source.read).workload_of(_pod("nightly-290-x", owner=job_ref))
    assert ref == WorkloadRef("batch/v1", "CronJob", "nightly", "uid-cron", "shop")


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u"}, ("StatefulSet", "db")),
        ({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u"}, ("DaemonSet", "agent")),
        ({"apiVersion": "batch/v1", "kind": "Job", "name": "once", "uid": "uid-once"}, ("Job", "once")),
        (
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r", "uid": "u"},
            ("Rollout", "r"),
        ),
        (None, ("Pod", "web-1")),
    ],
)
async def test_top_level_workloads(owner: dict[str, Any] | None, expected: tuple[str, str]) -> None:
    source = Objects(_object("Job", "once", "uid-once"))
    ref = await OwnerCache(source.read).workload_of(_pod(owner=owner))
    assert (ref.kind, ref.name) == expected
    assert ref.uid == (owner["uid"] if owner else "uid-web-1")
    assert all(kind == "Job" for kind, _ns, _name in source.reads), "only ReplicaSets and Jobs are read"


async def test_a_namesake_replicaset_is_not_the_owner() -> None:
    # The ReplicaSet the pod names was deleted and a new one took its name: do not follow the stranger.
    source = Objects(_object("ReplicaSet", "web-7c9", "uid-other", owner=DEPLOY_REF))
    ref = await OwnerCache(source.read).workload_of(_pod(owner=RS_REF))
    assert ref == WorkloadRef("apps/v1", "ReplicaSet", "web-7c9", "uid-rs", "shop")


async def test_owner_cache_expires() -> None:
    now = [0.0]
    source = Objects(_object("ReplicaSet", "web-7c9", "uid-rs", owner=DEPLOY_REF))
    cache = OwnerCache(source.read, ttl=60, clock=lambda: now[0])
    await cache.workload_of(_pod(owner=RS_REF))
    now[0] = 61.0
    await cache.workload_of(_pod(owner=RS_REF))
    assert len(source.reads) == 2


# --- workloads without pods ---------------------------------------------------------------------------


def deployment(replicas: int = 1, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "shop", "uid": "d-1"}
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "apps/v1",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                    "containers": [{"name": "app", "image": "acme/app:1"}],
                }
            },
        },
    }


def test_template_record_of_a_workload_people_manage() -> None:
    record = audit.template_record("Deployment", deployment())
    assert record is not None
    assert (record.ref.kind, record.ref.name, record.ref.uid, record.ref.api_version) == (
        "Deployment",
        "web",
        "d-1",
        "apps/v1",
    )
    assert record.containers == (reports.Container("app", "acme/app:1"),)
    assert record.spec == {"nodeSelector": {"kubernetes.io/arch": "arm64"}}
    assert record.why == "no pods"
    assert audit.template_record("Deployment", deployment(replicas=0)).why == "scaled to 0"  # type: ignore[union-attr]


def test_a_replicaset_of_a_deployment_is_judged_at_its_owner() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-1", "controller": True}
    assert audit.template_record("ReplicaSet", deployment(owner=owner)) is None


def test_cronjob_between_runs_and_suspended() -> None:
    cron = {
        "apiVersion": "batch/v1",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "c-1"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}},
        },
    }
    assert audit.template_record("CronJob", cron).why == "no pods between runs"  # type: ignore[union-attr]
    cron["spec"]["suspend"] = True
    assert audit.template_record("CronJob", cron).why == "suspended"  # type: ignore[union-attr]


def test_only_template_changes_make_work() -> None:
    auditor = audit.Auditor(lambda: None)  # type: ignore[arg-type,return-value]
    auditor.on_workload("Deployment", "ADDED", deployment())
    assert auditor.dirty_templates == {("shop", "Deployment", "web")}
    auditor.dirty_templates.clear()
    status_only = {**deployment(), "status": {"replicas": 1, "readyReplicas": 0}}
    auditor.on_workload("Deployment", "MODIFIED", status_only)
    assert not auditor.dirty_templates
    auditor.on_workload("Deployment", "MODIFIED", deployment(replicas=0))
    assert auditor.dirty_templates == {("shop", "Deployment", "web")}
    auditor.on_workload("Deployment", "DELETED", deployment(replicas=0))
    assert ("shop", "Deployment", "web") not in auditor.templates
