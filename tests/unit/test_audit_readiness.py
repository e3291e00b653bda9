"""What the auditor keeps for readiness: one pod's requests (shared by replicas) and a workload's replicas."""

from __future__ import annotations

from typing import Any

from archaudit.audit import Auditor, pod_record, template_record
from archaudit.core.readiness import Requests
from archaudit.core.reports import WorkloadRef

MI = 2**20


def _spec(cpu: str, memory: str) -> dict[str, Any]:
    return {
        "containers": [
            {"name": "app", "image": "acme/app:1", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
        ],
        "initContainers": [
            {"name": "setup", "image": "acme/setup:1", "resources": {"requests": {"cpu": "2"}}}
        ],
    }


def _deployment(replicas: int | None, cpu: str = "250m", memory: str = "64Mi") -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": _spec(cpu, memory)}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u"},
        "spec": spec,
    }


def test_template_records_replicas_and_one_pods_requests() -> None:
    record = template_record("Deployment", _deployment(4))
    assert record is not None
    assert (record.replicas, record.requests) == (4, Requests(2000, 64 * MI))  # the init container's CPU
    default = template_record("Deployment", _deployment(None))
    assert default is not None
    assert default.replicas == 1


def test_a_scale_or_a_new_request_makes_work() -> None:
    auditor = Auditor(lambda: None)  # type: ignore[arg-type, return-value]
    auditor.on_workload("Deployment", None, _deployment(2))
    auditor.dirty_templates.clear()
    auditor.on_workload("Deployment", "MODIFIED", _deployment(2))
    assert not auditor.dirty_templates  # nothing new
    auditor.on_workload("Deployment", "MODIFIED", _deployment(5))
    assert auditor.dirty_templates == {("shop", "Deployment", "web")}
    auditor.dirty_templates.clear()
    auditor.on_workload("Deployment", "MODIFIED", _deployment(5, memory="128Mi"))
    assert auditor.dirty_templates == {("shop", "Deployment", "web")}


def test_replicas_share_one_requests_value() -> None:
    pods = [
        pod_record(
            {"metadata": {"name": f"p{i}", "namespace": "shop", "uid": f"u{i}"}, "spec": _spec("100m", "1Mi")}
        )
        for i in range(3)
    ]
    assert pods[0].requests == Requests(2000, MI)
    auditor = Auditor(lambda: None)  # type: ignore[arg-type, return-value]
    shared = [
        pod_record(
            {"metadata": {"name": f"p{i}", "uid": f"u{i}"}, "spec": _spec("100m", "1Mi")}, auditor.shared
        )
        for i in range(3)
    ]
    assert all(p.requests is shared[0].requests for p in shared)


def test_size_from_the_template_else_from_the_pods() -> None:
    template = template_record("Deployment", _deployment(3))
    assert template is not None
    pods = [pod_record({"metadata": {"name": "p", "uid": "u"}, "spec": _spec("100m", "1Mi")})]
    ref = WorkloadRef("apps/v1", "Deployment", "web", "u", "shop")
    assert Auditor._size(ref, pods, template) == (3, Requests(2000, 64 * MI))
    daemon = WorkloadRef("apps/v1", "DaemonSet", "agent", "u", "shop")
    assert Auditor._size(daemon, pods * 6, template) == (6, Requests(2000, 64 * MI))  # one per node it covers
    bare = WorkloadRef("v1", "Pod", "p", "u", "shop")
    assert Auditor._size(bare, pods, None) == (1, Requests(2000, MI))


async def test_the_tag_finder_is_off_with_a_setting() -> None:
    import asyncio
    import dataclasses

    from archaudit.adapters.metrics import MutableState
    from archaudit.adapters.registry.client import RegistryClient
    from archaudit.adapters.resolver import Resolver
    from archaudit.context import Context, NodeMap
    from archaudit.core.config import AuditSettings, Settings

    resolver = Resolver(RegistryClient())  # the production transport; nothing is asked of it here
    stop = asyncio.Event()
    try:
        for enabled in (False, True):
            settings = dataclasses.replace(Settings(), audit=AuditSettings(fix_tags=enabled))
            ctx = Context(settings, resolver, NodeMap(), credentials=None, metrics=MutableState())  # type: ignore[arg-type]
            auditor = Auditor(lambda ctx=ctx: ctx)  # type: ignore[misc]
            task = auditor._start_finder(stop)
            assert (task is not None, auditor.finder is not None) == (enabled, enabled)
            if task is not None:
                assert auditor.finder is not None
                assert auditor.finder.lister is resolver.transport  # tag lists go through the one client
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await resolver.aclose()
