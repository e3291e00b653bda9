"""The Kubernetes calls of the auditor: ImageAudits and the owners between a pod and its workload.

Same rules as kube.py: the official client is synchronous, so every call runs in a worker thread with a
request timeout and never blocks the event loop that answers admission reviews; objects come back as
plain API-shaped dicts. Owner lookups (Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob) go
through a small cache keyed by uid, because a Deployment with 500 pods has one ReplicaSet worth reading.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from archaudit.adapters.kube import KubeApi
from archaudit.core import reports, workloads

__all__ = ["AuditStore", "OwnerCache", "OwnerRef", "controller_ref"]

_GROUP, _VERSION = reports.API_VERSION.split("/")
_PLURAL = "imageaudits"

# Owners read to find the one above them; every other controller is the top-level workload itself.
_FETCHED = {"ReplicaSet": "apps/v1", "Job": "batch/v1"}


@dataclass(frozen=True)
class OwnerRef:
    api_version: str
    kind: str
    name: str
    uid: str


def controller_ref(obj: Mapping[str, Any]) -> OwnerRef | None:
    """The ownerReference with `controller: true`, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return OwnerRef(
                str(ref.get("apiVersion", "")),
                str(ref.get("kind", "")),
                str(ref.get("name", "")),
                str(ref.get("uid", "")),
            )
    return None


class OwnerCache:
    """Owner objects (only their metadata) by (kind, namespace, name), refreshed after `ttl` seconds.

    `prefetch` follows a pod's controller references with API reads; `lookup` then answers
    `workloads.top_level_owner` synchronously from what was read.
    """

    def __init__(
        self,
        read: Callable[[str, str, str], Any],
        *,
        ttl: float = 600.0,
        size: int = 20000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read  # async (kind, namespace, name) -> object dict | None
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._objects: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._refs: dict[tuple[str, str, str], OwnerRef] = {}

    def lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        hit = self._objects.get((kind, namespace, name))
        return hit[1] if hit else None

    def ref(self, kind: str, namespace: str, name: str) -> OwnerRef | None:
        """The ownerReference last seen pointing at (kind, namespace, name): its apiVersion and uid."""
        return self._refs.get((kind, namespace, name))

    async def prefetch(self, namespace: str, obj: Mapping[str, Any]) -> None:
        ref = controller_ref(obj)
        for _ in range(4):  # Pod -> Job -> CronJob is the longest chain we read
            if ref is None:
                return
            key = (ref.kind, namespace, ref.name)
            self._refs[key] = ref
            if _FETCHED.get(ref.kind) != ref.api_version:
                return
            owner = await self._fresh(key, ref.uid)
            if owner is None:
                return
            ref = controller_ref(owner)

    async def workload_of(self, pod: Mapping[str, Any]) -> reports.WorkloadRef:
        """The workload a pod belongs to: Deployment, StatefulSet, DaemonSet, CronJob, Job, ... or itself."""
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace", ""))
        await self.prefetch(namespace, pod)
        kind, name = workloads.top_level_owner(pod, lookup=self.lookup)
        if kind == "Pod" and name == meta.get("name"):
            return reports.WorkloadRef("v1", "Pod", name, str(meta.get("uid", "")), namespace)
        ref = self.ref(kind, namespace, name)
        if ref is None:  # the chain ended at an object we read: its own identity
            found = self.lookup(kind, namespace, name) or {}
            return reports.WorkloadRef(str(found.get("apiVersion", "")), kind, name, _uid(found), namespace)
        return reports.WorkloadRef(ref.api_version, ref.kind, ref.name, ref.uid, namespace)

    async def _fresh(self, key: tuple[str, str, str], uid: str) -> dict[str, Any] | None:
        hit = self._objects.get(key)
        now = self._clock()
        if hit is not None and hit[0] > now and (hit[1] is None or _uid(hit[1]) == uid):
            self._objects.move_to_end(key)
            return hit[1]
        found = await self._read(*key)
        compact = _compact(found) if found is not None else None
        if compact is not None and _uid(compact) != uid:
            compact = None  # a namesake: the owner this pod refers to is gone
        self._objects[key] = (now + self._ttl, compact)
        self._objects.move_to_end(key)
        while len(self._objects) > self._size:
            self._objects.popitem(last=False)
        return compact


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _compact(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj.get("kind", ""),
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "uid": meta.get("uid", ""),
            "ownerReferences": list(meta.get("ownerReferences") or ()),
        },
    }


class AuditStore:
    """ImageAudit reads and writes and owner reads: the auditor's API surface (Events: events.py).

    Plain REST calls through the client's ApiClient rather than its generated API classes: creating
    AppsV1Api, BatchV1Api and CustomObjectsApi imports some hundred model modules (about 7 MiB of
    the operator's memory) for three paths the auditor can spell itself.
    """

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.owners = OwnerCache(self.read_owner)

    async def read_owner(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = {"ReplicaSet": "replicasets", "Job": "jobs"}[kind]
        path = f"/apis/{_FETCHED[kind]}/namespaces/{_quote(namespace)}/{plural}/{_quote(name)}"
        try:
            result: dict[str, Any] = await self.api.request("GET", path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    async def top_level(self, pod: Mapping[str, Any]) -> reports.WorkloadRef:
        return await self.owners.workload_of(pod)

    async def count_pods(self) -> int:
        """How many pods the cluster has now, without reading them (limit=1 and remainingItemCount)."""
        page = await self.api.request("GET", "/api/v1/pods", query={"limit": "1"})
        items = page.get("items") or []
        return len(items) + int((page.get("metadata") or {}).get("remainingItemCount") or 0)

    async def list_audits(self) -> list[dict[str, Any]]:
        result = await self.api.request("GET", f"/apis/{_GROUP}/{_VERSION}/{_PLURAL}")
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create_audit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the ImageAudit; if it exists already, return the existing one."""
        namespace = body["metadata"]["namespace"]
        collection = _audits_path(namespace)
        try:
            created: dict[str, Any] = await self.api.request("POST", collection, body=body)
        except ApiException as e:
            if e.status != 409:
                raise
            existing: dict[str, Any] = await self.api.request(
                "GET", f"{collection}/{_quote(body['metadata']['name'])}"
            )
            return existing
        return created

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Replace the report's status (a merge patch; every key is always present). False: no such object."""
        try:
            await self.api.request(
                "PATCH",
                f"{_audits_path(namespace)}/{_quote(name)}/status",
                body={"status": dict(status)},
                content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _audits_path(namespace: str) -> str:
    return f"/apis/{_GROUP}/{_VERSION}/namespaces/{_quote(namespace)}/{_PLURAL}"
