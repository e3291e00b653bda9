"""The auditor: ImageAudit reports that tell the truth about what already runs in the cluster.

The webhook guards the door; this module covers what it cannot see: pods admitted before archaudit was
installed, pods that slipped through while a registry was down, and tags that moved to a digest without
the node's platform. kopf glue, kept thin:
- watch handlers (Pods, Nodes, and core Events for runtime evidence) only update an in-memory store and
  mark workloads dirty; they never do I/O, so kopf's watch streams stay fast;
- one worker task audits the dirty workloads in debounced passes, and all of them every
  `audit.resync_seconds` (the resolver's tag TTL has expired by then, so a moved tag is seen);
- each pass resolves every unique image once (the resolver's caches and singleflight do the rest),
  builds each report with the pure `reports` module, and writes only what changed (fingerprint), only
  on the leader (`ctx.is_leader()`); every replica keeps the store, so a new leader audits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from archaudit.adapters.auditstore import AuditStore
from archaudit.adapters.events import AUDITOR, Involved
from archaudit.adapters.kube import KubeApi, load_client
from archaudit.adapters.tagfinder import TagFinder, TagLister
from archaudit.context import Context
from archaudit.core import policy, readiness, reports, scheduling, workloads
from archaudit.core.config import AuditSettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.readiness import Requests
from archaudit.core.reference import ImageReference
from archaudit.core.reports import Container, PodFacts, RuntimeEvidence, WorkloadRef
from archaudit.resolution import resolve_images

__all__ = ["Auditor", "configure_kopf", "register"]

log = logging.getLogger(__name__)

_LEADER_POLL_SECONDS = 5.0
_RETRY_SECONDS = 30.0  # a workload whose audit failed (apiserver hiccup) is tried again this soon
_RESOLVE_GUARD_SECONDS = 60.0  # beyond the resolver's own deadline: a stuck lookup must not stall a pass
_MAX_EVENT_EVIDENCE = 5000  # pods remembered with runtime evidence from Events
# The first pass waits for kopf's initial pod listing (paged: it takes a while at 10,000 pods), so that
# no report is written over part of a workload's pods and then again; bounded, and given up when the
# count stops moving (pods deleted meanwhile).
_LISTING_WAIT_SECONDS = 300.0
_LISTING_STALL_SECONDS = 10.0

_CORE_EVENTS = ("", "v1", "events")  # kopf selector of core/v1 Events (not events.k8s.io)

ParentKey = tuple[str, str]  # (namespace, uid of the pod's controller, or of the pod itself)
WorkloadKey = tuple[str, str, str]  # (namespace, kind, name)
Resolved = ImagePlatforms | ResolutionError
_NO_REQUESTS = Requests()


@dataclass(frozen=True, slots=True)
class _Pod:
    """The little of a pod the auditor keeps: who owns it, where it runs, what it runs, what went wrong.

    Kept for every pod in the cluster, so it holds no part of the pod's body: the fields pods of one
    ReplicaSet have in common (controller, spec subset, containers) are shared objects (`_Interner`),
    and only name and uid are the pod's own.
    """

    namespace: str
    name: str
    uid: str
    controller: Mapping[str, Any] | None  # the ownerReference marked controller, if any
    node_name: str
    spec: Mapping[str, Any]  # scheduling and pull-credential fields only
    containers: tuple[Container, ...]
    evidence: tuple[RuntimeEvidence, ...]
    requests: Requests = field(default=_NO_REQUESTS)  # shared: what one pod asks the scheduler for

    @property
    def parent(self) -> ParentKey:
        uid = self.controller.get("uid") if self.controller else None
        return (self.namespace, str(uid) if uid else self.uid)

    def as_object(self) -> dict[str, Any]:
        """Enough of the Pod object for workloads.top_level_owner and owner reads."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "ownerReferences": [self.controller] if self.controller else [],
            },
        }


_SPEC_KEYS = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "imagePullSecrets",
    "serviceAccountName",
    "serviceAccount",
)
_OWNER_KEYS = ("apiVersion", "kind", "name", "uid", "controller")


class _Interner:
    """One shared copy of each distinct value pods have in common (50 replicas, one spec).

    Keyed by a canonical form; the table is cleared when it grows past `limit` distinct values, which
    costs only sharing (pods seen before keep their copies), never correctness.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._values: dict[Any, Any] = {}

    def share(self, key: Any, value: Any) -> Any:
        found = self._values.get(key)
        if found is not None:
            return found
        if len(self._values) >= self.limit:
            self._values.clear()
        self._values[key] = value
        return value

    def mapping(self, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.share(json.dumps(value, sort_keys=True, default=str), value)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._values)


def pod_record(obj: Mapping[str, Any], shared: _Interner | None = None) -> _Pod:
    shared = _Interner() if shared is None else shared
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    owner = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
    controller = shared.mapping({k: owner[k] for k in _OWNER_KEYS if k in owner}) if owner else None
    containers = tuple(
        Container(sys.intern(str(name)), sys.intern(image))
        for _s, name, image in workloads.containers_of(spec)
    )
    return _Pod(
        namespace=sys.intern(str(meta.get("namespace", ""))),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        controller=controller,
        node_name=sys.intern(str(spec.get("nodeName") or "")),
        spec=shared.mapping({k: spec[k] for k in _SPEC_KEYS if k in spec}),
        containers=shared.share(containers, containers),
        evidence=reports.evidence_from_pod(obj),
        requests=_shared_requests(shared, spec),
    )


def _shared_requests(shared: _Interner, spec: Mapping[str, Any]) -> Requests:
    found = readiness.pod_requests(spec)
    return shared.share(("requests", found), found)  # type: ignore[no-any-return]


# Kinds whose pod template the auditor judges when they have no pods, with the apiVersion kopf watches.
TEMPLATE_RESOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "daemonsets", "DaemonSet"),
    ("apps", "v1", "replicasets", "ReplicaSet"),
    ("batch", "v1", "jobs", "Job"),
    ("batch", "v1", "cronjobs", "CronJob"),
    ("", "v1", "replicationcontrollers", "ReplicationController"),
)
_SCALED = ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController")


@dataclass(frozen=True, slots=True)
class _Template:
    """A top-level workload's pod template: what its pods would be, for a report while it has none."""

    ref: WorkloadRef
    spec: Mapping[str, Any]  # scheduling and pull-credential fields, as the scheduler will see them
    containers: tuple[Container, ...]
    why: str  # why it has no pods, when it has none: "scaled to 0", "suspended", ...
    replicas: int = 1  # pods it runs at once (a DaemonSet: 0 here, its pods are counted)
    requests: Requests = field(default=_NO_REQUESTS)  # of one of its pods

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def name(self) -> str:
        return self.ref.name


def template_record(kind: str, obj: Mapping[str, Any], shared: _Interner | None = None) -> _Template | None:
    """The template of a workload a person manages, or None (owned by a controller, or no template).

    A ReplicaSet of a Deployment or a Job of a CronJob is judged at its owner, whose report it feeds.
    """
    shared = _Interner() if shared is None else shared
    if workloads.controller_of(obj) is not None:
        return None
    spec = workloads.scheduling_spec_of({**obj, "kind": kind})
    if spec is None:
        return None
    meta = obj.get("metadata") or {}
    body = obj.get("spec") or {}
    ref = WorkloadRef(
        api_version=str(obj.get("apiVersion") or ""),
        kind=kind,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
    )
    if kind in _SCALED and body.get("replicas") == 0:
        why = "scaled to 0"
    elif kind == "CronJob" and body.get("suspend"):
        why = "suspended"
    elif kind == "CronJob":
        why = "no pods between runs"
    elif kind == "DaemonSet":
        why = "no pods (no node runs it)"
    else:
        why = "no pods"
    containers = tuple(
        Container(sys.intern(str(n)), sys.intern(i)) for _s, n, i in workloads.containers_of(spec)
    )
    return _Template(
        ref=ref,
        spec=shared.mapping({k: spec[k] for k in _SPEC_KEYS if k in spec}),
        containers=shared.share(containers, containers),
        why=why,
        replicas=readiness.replicas_of(kind, body),
        requests=_shared_requests(shared, spec),
    )


def _node_signature(obj: Mapping[str, Any]) -> str:
    """What about a node changes a verdict: labels, taints, cordon, runtime. Heartbeats do not."""
    spec = obj.get("spec") or {}
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    return json.dumps(
        [
            (obj.get("metadata") or {}).get("labels") or {},
            spec.get("taints") or [],
            bool(spec.get("unschedulable")),
            {k: info.get(k) for k in ("architecture", "operatingSystem", "containerRuntimeVersion")},
        ],
        sort_keys=True,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age_seconds(timestamp: str) -> float:
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (dt.datetime.now(dt.UTC) - then).total_seconds()


@dataclass
class _Contribution:
    """What one workload adds to the metrics, replaced on each of its audits."""

    namespace: str
    verdict: str
    incompatible_pods: Mapping[str, int]
    unresolved: Mapping[str, str]
    runs_on: tuple[str, ...] = ()
    cpu: int = 0  # millicores requested: one pod's requests times replicas


@dataclass
class Auditor:
    """The store the watch handlers fill and the worker that turns it into reports."""

    ctx_getter: Callable[[], Context]
    store_factory: Callable[[Context], AuditStore] = field(default=lambda ctx: AuditStore(_api_of(ctx)))
    pods: dict[str, _Pod] = field(default_factory=dict)  # uid -> pod
    shared: _Interner = field(default_factory=_Interner)  # what the pods of one ReplicaSet share
    by_parent: dict[ParentKey, set[str]] = field(default_factory=dict)
    by_name: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, pod name) -> uid
    workload_of: dict[ParentKey, WorkloadRef] = field(default_factory=dict)
    node_signatures: dict[str, str] = field(default_factory=dict)
    statuses: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)  # (ns, audit name)
    event_evidence: OrderedDict[tuple[str, str], tuple[RuntimeEvidence, ...]] = field(
        default_factory=OrderedDict
    )
    contributions: dict[WorkloadKey, _Contribution] = field(default_factory=dict)
    mismatches_seen: set[tuple[str, str, str, str]] = field(default_factory=set)
    dirty: set[ParentKey] = field(default_factory=set)
    templates: dict[WorkloadKey, _Template] = field(default_factory=dict)  # top-level workloads
    dirty_templates: set[WorkloadKey] = field(default_factory=set)
    full_due: bool = True
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    passes: int = 0  # completed passes, for tests and logs
    finder: TagFinder | None = None  # the tag that fixes a blocking image (off: audit.fix_tags=false)
    _targets: tuple[int, tuple[scheduling.Node, ...]] = (-1, ())  # (node map version, target nodes)
    _store: AuditStore | None = None
    _statuses_loaded: bool = False
    _listed: bool = False  # the initial pod listing has arrived (or was waited for long enough)

    # --- watch handlers: memory only ------------------------------------------------------------------

    def on_pod(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if not uid:
            return
        old = self.pods.get(uid)
        if event_type == "DELETED":
            if old is not None:
                self._forget(old)
            return
        record = pod_record(obj, self.shared)
        if record == old:
            return  # a status change that says nothing new to us (readiness, IPs, ...)
        if old is not None:
            self._forget(old)
        self.pods[uid] = record
        self.by_parent.setdefault(record.parent, set()).add(uid)
        self.by_name[(record.namespace, record.name)] = uid
        self._touch(record.parent)

    def _forget(self, pod: _Pod) -> None:
        self.pods.pop(pod.uid, None)
        self.by_name.pop((pod.namespace, pod.name), None)
        self.event_evidence.pop((pod.namespace, pod.name), None)
        members = self.by_parent.get(pod.parent)
        if members is not None:
            members.discard(pod.uid)
        self._touch(pod.parent)

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        signature = "" if event_type == "DELETED" else _node_signature(obj)
        if self.node_signatures.get(name, "") == signature:
            return
        if signature:
            self.node_signatures[name] = signature
        else:
            self.node_signatures.pop(name, None)
        self.full_due = True  # candidates of any workload may have changed
        self.wake.set()

    def on_workload(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), kind, str(meta.get("name", "")))
        record = None if event_type == "DELETED" else template_record(kind, obj, self.shared)
        if record == self.templates.get(key):
            return  # a status or scale-subresource change that says nothing new
        if record is None:
            self.templates.pop(key, None)
        else:
            self.templates[key] = record
        self.dirty_templates.add(key)
        self.wake.set()

    def on_kube_event(self, obj: Mapping[str, Any]) -> None:
        found = reports.evidence_from_event(obj)
        if found is None:
            return
        pod_name, evidence = found
        involved = obj.get("involvedObject") or obj.get("regarding") or {}
        key = (str(involved.get("namespace") or (obj.get("metadata") or {}).get("namespace", "")), pod_name)
        known = self.event_evidence.get(key, ())
        if evidence in known:
            return
        self.event_evidence[key] = (*known, evidence)[-4:]
        self.event_evidence.move_to_end(key)
        while len(self.event_evidence) > _MAX_EVENT_EVIDENCE:
            self.event_evidence.popitem(last=False)
        uid = self.by_name.get(key)
        if uid is not None:
            self._touch(self.pods[uid].parent)

    def _touch(self, parent: ParentKey) -> None:
        self.dirty.add(parent)
        self.wake.set()

    def _touch_image(self, _namespace: str, image: str) -> None:
        """The tag finder found (or lost) a fixing tag for `image`: re-report the workloads using it.

        In every namespace: answers are per image (one search however many namespaces run it).
        """
        for pod in self.pods.values():
            if any(c.image == image for c in pod.containers):
                self.dirty.add(pod.parent)
        for key, template in self.templates.items():
            if any(c.image == image for c in template.containers):
                self.dirty_templates.add(key)
        self.wake.set()

    # --- the worker -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Audit passes until `stop`: after a burst of changes, and all workloads every resync."""
        next_full = time.monotonic()
        was_leader = False
        finder_task = self._start_finder(stop)
        try:
            await self._passes(stop, next_full, was_leader)
        finally:
            if finder_task is not None:
                finder_task.cancel()
                await asyncio.gather(finder_task, return_exceptions=True)

    def _start_finder(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """The tag finder's background task, when enabled and the registry client can list tags."""
        ctx = self.ctx_getter()
        settings = ctx.settings.audit
        if not settings.fix_tags:
            return None
        if self.finder is None:
            # The resolver's transport is the registry client in production; a fake without
            # list_tags (unit tests) simply means no fixing tags.
            lister = getattr(ctx.resolver, "transport", None)
            if not isinstance(lister, TagLister):
                return None
            limits = getattr(lister, "ratelimit_remaining", None)
            self.finder = TagFinder(
                lister,
                ctx.resolver,
                period_seconds=settings.fix_tags_period_seconds,
                max_resolves=settings.fix_tags_max_resolves,
                on_found=self._touch_image,
                ratelimits=(lambda: dict(limits)) if isinstance(limits, dict) else dict,
            )
        return asyncio.create_task(self.finder.run(stop), name="archaudit-tag-finder")

    async def _passes(self, stop: asyncio.Event, next_full: float, was_leader: bool) -> None:
        settings = self.ctx_getter().settings.audit
        while not stop.is_set():
            # A standby replica looks at the lease often, so that taking over does not wait a resync.
            standby_deadline = time.monotonic() + _LEADER_POLL_SECONDS
            deadline = next_full if self.ctx_getter().is_leader() else standby_deadline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.0, deadline - time.monotonic()))
            if stop.is_set():
                return
            await asyncio.sleep(settings.debounce_seconds)  # let a burst of events land in one pass
            self.wake.clear()
            leader = self.ctx_getter().is_leader()
            if leader and not was_leader:
                self.full_due = True  # a new leader trusts nothing it did not write itself
                self._statuses_loaded = False
            was_leader = leader
            if not leader:
                continue
            full = self.full_due or time.monotonic() >= next_full
            if not self._listed:
                await self._wait_for_listing(stop)
            try:
                failed = await self.audit_pass(full=full)
            except Exception:
                log.exception("audit pass failed; retrying in %.0fs", _RETRY_SECONDS)
                failed = True
            if full and not failed:
                next_full = time.monotonic() + settings.resync_seconds
            elif failed:
                next_full = min(next_full, time.monotonic() + _RETRY_SECONDS)

    async def _wait_for_listing(self, stop: asyncio.Event) -> None:
        """Until the store holds as many pods as the cluster had when asked, within bounds."""
        try:
            expected = await self._store_for(self.ctx_getter()).count_pods()
        except Exception as e:
            log.warning("cannot count pods (%s): auditing what is listed so far", e)
            return
        started = progressed = time.monotonic()
        seen = len(self.pods)
        if seen < expected:
            log.info("waiting for the initial pod listing: %d of %d pods", seen, expected)
        while len(self.pods) < expected and not stop.is_set():
            now = time.monotonic()
            if len(self.pods) != seen:
                seen, progressed = len(self.pods), now
            if now - started > _LISTING_WAIT_SECONDS or now - progressed > _LISTING_STALL_SECONDS:
                log.warning("initial pod listing incomplete (%d of %d pods): auditing those", seen, expected)
                break
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
        self._listed = True

    async def audit_pass(self, *, full: bool) -> bool:
        """One pass over the dirty workloads (all when `full`); True when some audit failed."""
        ctx = self.ctx_getter()
        store = self._store_for(ctx)
        if not self._statuses_loaded:
            await self._load_statuses(store)
        parents = set(self.by_parent) | self.dirty if full else set(self.dirty)
        self.dirty.clear()
        template_keys = set(self.templates) | self.dirty_templates if full else set(self.dirty_templates)
        self.dirty_templates.clear()
        if full:
            self.full_due = False
        touched, failed = await self._workloads_of(store, parents)
        for key in template_keys:
            if key in self.templates:
                touched.setdefault(key, self.templates[key].ref)
        groups = self._group_pods(touched)
        for key in [k for k, pods in groups.items() if not self._reportable(ctx, k, pods)]:
            # No pods and no template (a bare pod gone: GC removes its report with it), or a namespace
            # archaudit is told to leave alone.
            self.contributions.pop(key, None)
            del groups[key]
        sources: list[_Pod | _Template] = [pod for pods in groups.values() for pod in pods]
        sources += [self.templates[k] for k, pods in groups.items() if not pods]
        images = await self._resolve(ctx, sources)
        for key, pods in groups.items():
            try:
                await self._audit_one(ctx, store, touched[key], pods, images)
            except Exception as e:
                log.warning("audit of %s/%s %s failed: %s", key[0], key[1], key[2], e)
                self.dirty.update(p.parent for p in pods)
                failed = True
        self._publish_metrics(ctx, full=full and not failed)
        self.passes += 1
        return failed

    async def _load_statuses(self, store: AuditStore) -> None:
        """One LIST of every ImageAudit, so the first pass after start writes only what changed."""
        self.statuses = {
            (item["metadata"]["namespace"], item["metadata"]["name"]): item.get("status") or {}
            for item in await store.list_audits()
        }
        self._statuses_loaded = True

    async def _workloads_of(
        self, store: AuditStore, parents: Iterable[ParentKey]
    ) -> tuple[dict[WorkloadKey, WorkloadRef], bool]:
        touched: dict[WorkloadKey, WorkloadRef] = {}
        failed = False
        for parent in parents:
            members = self.by_parent.get(parent)
            if not members:
                self.by_parent.pop(parent, None)
                gone = self.workload_of.pop(parent, None)
                if gone is not None:
                    touched[(gone.namespace, gone.kind, gone.name)] = gone
                continue
            ref = self.workload_of.get(parent)
            if ref is None:
                pod = self.pods[next(iter(members))]
                try:
                    ref = await store.top_level(pod.as_object())
                except Exception as e:
                    log.warning("cannot find the workload of pod %s/%s: %s", pod.namespace, pod.name, e)
                    self.dirty.add(parent)
                    failed = True
                    continue
                self.workload_of[parent] = ref
            touched[(ref.namespace, ref.kind, ref.name)] = ref
        return touched, failed

    def _group_pods(self, touched: Mapping[WorkloadKey, WorkloadRef]) -> dict[WorkloadKey, list[_Pod]]:
        groups: dict[WorkloadKey, list[_Pod]] = {key: [] for key in touched}
        for parent, ref in self.workload_of.items():
            key = (ref.namespace, ref.kind, ref.name)
            if key in groups:
                groups[key].extend(self.pods[uid] for uid in sorted(self.by_parent.get(parent, ())))
        return groups

    async def _resolve(
        self, ctx: Context, pods: Sequence[_Pod | _Template]
    ) -> dict[tuple[str, str], Resolved]:
        """Every unique (namespace, image) once, a few at a time: the webhook shares the registries."""
        wanted: dict[tuple[str, str], _Pod | _Template] = {}
        for pod in pods:
            for c in pod.containers:
                wanted.setdefault((pod.namespace, c.image), pod)
        limit = asyncio.Semaphore(max(1, ctx.settings.audit.concurrency))

        async def one(key: tuple[str, str], pod: _Pod | _Template) -> tuple[tuple[str, str], Resolved]:
            async with limit:
                return key, await _resolve_image(ctx, pod, key[1])

        results = await asyncio.gather(*(one(k, p) for k, p in wanted.items()))
        return dict(results)

    async def _audit_one(
        self,
        ctx: Context,
        store: AuditStore,
        workload: WorkloadRef,
        pods: Sequence[_Pod],
        images: Mapping[tuple[str, str], Resolved],
    ) -> None:
        namespace = workload.namespace
        key = (namespace, workload.kind, workload.name)
        exempt = ctx.settings.webhook.exempt_images
        facts = self._facts(ctx, pods, exempt)
        template = None if pods else self._template_facts(ctx, self.templates[key], exempt)
        containers = [c for f in facts for c in f.containers] + list(template.containers if template else ())
        if not containers:  # every image exempt: nothing to say
            self.contributions.pop(key, None)
            return
        image_results = {c.image: images[(namespace, c.image)] for c in containers}
        name = reports.audit_name(workload)
        previous = self.statuses.get((namespace, name))
        extra = [(p.name, e) for p in pods for e in self.event_evidence.get((namespace, p.name), ())]
        replicas, requests = self._size(workload, pods, self.templates.get(key))
        targets = self._target_nodes(ctx)
        finder = self.finder
        audit = reports.build(
            workload,
            facts,
            image_results,
            now=_now(),
            previous=previous,
            extra_evidence=extra,
            template=template,
            targets=targets,
            replicas=replicas,
            requests=requests,
            fixes=_fixes(finder, image_results, previous) if finder is not None else None,
        )
        self.contributions[key] = _Contribution(
            namespace,
            audit.verdict.value,
            audit.incompatible_pods,
            audit.unresolved,
            audit.runs_on,
            requests.cpu * replicas,
        )
        if finder is not None and ctx.is_leader():
            source: _Pod | _Template = pods[0] if pods else self.templates[key]
            spec = source.spec
            for img, lacking in audit.missing.items():
                if lacking:
                    finder.want(namespace, img, lacking, targets, _credentials_for(ctx, namespace, spec))
        self._count_mismatches(namespace, audit)
        if not ctx.is_leader():
            return
        unchanged = previous is not None and previous.get("fingerprint") == audit.fingerprint
        fresh = previous is not None and _age_seconds(str(previous.get("lastChecked", ""))) < (
            ctx.settings.audit.refresh_seconds
        )
        if unchanged and fresh:
            return
        if previous is not None and not unchanged and log.isEnabledFor(logging.DEBUG):
            written: Mapping[str, Any] = audit.status
            changed = sorted(k for k, v in written.items() if k != "lastChecked" and previous.get(k) != v)
            log.debug("ImageAudit %s/%s written again: %s changed", namespace, name, ", ".join(changed))
        if previous is None or not await store.patch_status(namespace, name, audit.status):
            await store.create_audit(reports.object_body(workload))
            if not await store.patch_status(namespace, name, audit.status):
                raise RuntimeError(f"ImageAudit {namespace}/{name} vanished right after its creation")
        self.statuses[(namespace, name)] = audit.status
        if audit.announce:
            _announce(ctx, workload, audit)

    @staticmethod
    def _size(
        workload: WorkloadRef, pods: Sequence[_Pod], template: _Template | None
    ) -> tuple[int, Requests]:
        """(replicas, one pod's requests): from the workload's template, else from its pods."""
        if template is not None:
            replicas = len(pods) if workload.kind == "DaemonSet" else template.replicas
            return replicas, template.requests
        # A bare pod, or a controller archaudit does not watch (its pods are what runs)
        return len(pods), pods[0].requests if pods else _NO_REQUESTS

    def _target_nodes(self, ctx: Context) -> tuple[scheduling.Node, ...]:
        """One virtual node per kind of node, cluster platform and common target (for runsOn)."""
        version, nodes = self._targets
        if version != ctx.nodes.version or not nodes:
            forced = ctx.settings.cluster.runtime_profile
            nodes = tuple(
                readiness.target_nodes(
                    ctx.nodes.all(),
                    [*ctx.settings.cluster.platforms, *readiness.COMMON_TARGETS],
                    profiles=(forced,) if forced else ("containerd",),
                )
            )
            self._targets = (ctx.nodes.version, nodes)
        return nodes

    def _facts(self, ctx: Context, pods: Sequence[_Pod], exempt: Sequence[str]) -> list[PodFacts]:
        universe = ctx.schedulable_universe()
        # Pods of one ReplicaSet share one spec object (pod_record): one scheduling answer for all.
        memo: dict[int, tuple[scheduling.Node, ...]] = {}
        facts = []
        for pod in pods:
            # A scheduled pod's nodeName pins it; the question is where else it may go (AtRisk).
            candidates = memo.get(id(pod.spec))
            if candidates is None:
                candidates = memo[id(pod.spec)] = tuple(scheduling.candidates(pod.spec, universe))
            containers = tuple(c for c in pod.containers if not policy.image_exempt(c.image, exempt))
            if not containers:
                continue
            node = ctx.nodes.get(pod.node_name) if pod.node_name else None
            facts.append(PodFacts(pod.name, node, candidates, containers, pod.evidence))
        return facts

    def _template_facts(
        self, ctx: Context, template: _Template, exempt: Sequence[str]
    ) -> reports.TemplateFacts:
        candidates = tuple(scheduling.candidates(template.spec, ctx.schedulable_universe()))
        containers = tuple(c for c in template.containers if not policy.image_exempt(c.image, exempt))
        mode = policy.namespace_mode(
            template.namespace,
            ctx.namespaces.get(template.namespace, {}),
            default=ctx.settings.webhook.default_mode,
            exempt=ctx.settings.webhook.exempt_namespaces,
        )
        return reports.TemplateFacts(
            containers, candidates, why=template.why, denied=mode is policy.Mode.ENFORCE
        )

    def _reportable(self, ctx: Context, key: WorkloadKey, pods: Sequence[_Pod]) -> bool:
        return bool(pods or key in self.templates) and self._audited_namespace(ctx, key[0])

    def _audited_namespace(self, ctx: Context, namespace: str) -> bool:
        mode = policy.namespace_mode(
            namespace,
            ctx.namespaces.get(namespace, {}),
            default=ctx.settings.webhook.default_mode,
            exempt=ctx.settings.webhook.exempt_namespaces,
        )
        return mode is not None and mode is not policy.Mode.OFF

    def _count_mismatches(self, namespace: str, audit: reports.Audit) -> None:
        """Count each observed runtime mismatch once, however many resyncs still see it."""
        metrics = self.ctx_getter().metrics
        for pod_name, e in audit.evidence:
            key = (namespace, pod_name, e.container, e.kind.value)
            if key not in self.mismatches_seen:
                self.mismatches_seen.add(key)
                metrics.observe_runtime_mismatch(namespace)
        if len(self.mismatches_seen) > 50_000:  # bound memory; at worst a very old mismatch counts twice
            self.mismatches_seen.clear()

    def _publish_metrics(self, ctx: Context, *, full: bool) -> None:
        workloads_by: Counter[tuple[str, str]] = Counter()
        pods_by: Counter[tuple[str, str]] = Counter()
        unresolved: dict[str, str] = {}
        for c in self.contributions.values():
            workloads_by[(c.verdict, c.namespace)] += 1
            for platform, n in c.incompatible_pods.items():
                pods_by[(c.namespace, platform)] += n
            for image, reason in c.unresolved.items():
                unresolved[f"{c.namespace}/{image}"] = reason
        state = ctx.metrics
        # Whole dicts replaced: series of verdicts and namespaces that are gone disappear.
        state.workloads = dict(workloads_by)
        state.pods_on_incompatible_nodes = dict(pods_by)
        state.unresolved_images = dict(Counter(unresolved.values()))
        runnable: Counter[str] = Counter({str(n.platform): 0 for n in self._target_nodes(ctx)})
        cores: dict[str, float] = dict.fromkeys(runnable, 0.0)
        for c in self.contributions.values():
            for platform in c.runs_on:
                runnable[platform] += 1
                cores[platform] = cores.get(platform, 0.0) + c.cpu / 1000
        state.runnable_workloads = dict(runnable)
        state.runnable_cpu_cores = cores
        if full:
            state.full_audit_completed()

    def _store_for(self, ctx: Context) -> AuditStore:
        if self._store is None:
            self._store = self.store_factory(ctx)
        return self._store


def _fixes(
    finder: TagFinder, images: Iterable[str], previous: Mapping[str, Any] | None
) -> dict[str, dict[str, str]]:
    """image -> platform -> fixing tag: the finder's answers, the stored report's where it has none."""
    return {
        image: reports.reported_fixes(
            finder.known(image),
            reports.stored_fixes(previous, image),
            functools.partial(finder.searched, image),
        )
        for image in images
    }


def _api_of(ctx: Context) -> KubeApi:
    api = getattr(ctx, "api", None)
    return api if isinstance(api, KubeApi) else KubeApi(load_client())


def _credentials_for(
    ctx: Context, namespace: str, spec: Mapping[str, Any]
) -> Callable[[ImageReference], Awaitable[Sequence[Credential]]]:
    """The pod's pull credentials, then its cloud identity's, looked up when the tag finder gets to the
    image (not when asked)."""

    async def credentials(ref: ImageReference) -> Sequence[Credential]:
        found = await ctx.credentials.for_pod(namespace, spec, ref)
        cloud = getattr(ctx, "cloud", None)  # test contexts may be plain objects without it
        return found if cloud is None else (await cloud.for_image(ref)).after(found)

    return credentials


async def _resolve_image(ctx: Context, pod: _Pod | _Template, image: str) -> Resolved:
    found = await resolve_images(ctx, pod.namespace, pod.spec, [image], _RESOLVE_GUARD_SECONDS)
    return found[image]


def _announce(ctx: Context, workload: WorkloadRef, audit: reports.Audit) -> None:
    """A Warning Event on the workload, once per problem (the caller checked `audit.announce`).

    Handed to the operator's one Event emitter (adapters/events.py), which deduplicates it with the
    webhook's and never lets a failed write come back here: the report is written either way.
    """
    if ctx.events is None:
        log.debug("no event emitter: %s in %s not announced", workload, workload.namespace)
        return
    involved = Involved(workload.api_version, workload.kind, workload.namespace, workload.name, workload.uid)
    ctx.events.about(involved, [f"{audit.verdict.value}: {audit.message}"], component=AUDITOR)


def configure_kopf(settings: kopf.OperatorSettings, audit: AuditSettings | None = None) -> None:
    """kopf settings that keep the auditor's cluster-wide watches small (applied at operator start-up).

    Measured with tests/bench/test_bench_audit.py (figures in BENCHMARKS.md): at 10,000 pods the peak
    was the initial LIST parsed in one piece, plus one kopf worker per pod keeping that pod's body
    for `queueing.idle_timeout`; the unfiltered Events watch added a Scheduled Event per pod.
    """
    audit = audit or AuditSettings()
    if audit.list_chunk_size > 0:
        settings.watching.chunk_size = audit.list_chunk_size
    settings.watching.initial_streaming = audit.initial_streaming
    settings.queueing.idle_timeout = audit.worker_idle_seconds
    if audit.watch_events and audit.events_field_selector:
        settings.watching.field_selectors[_CORE_EVENTS] = audit.events_field_selector
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # kopf logs "Handler ... succeeded" at INFO for every pod and Event it hands us: 25,000 lines
        # at 10,000 pods that say nothing an operator of archaudit can act on.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _watch_workloads(
    registry: kopf.OperatorRegistry, auditor: Auditor, group: str, version: str, plural: str, kind: str
) -> None:
    api_version = f"{group}/{version}" if group else version

    @kopf.on.event(group, version, plural, registry=registry, id=f"audit-{plural}")
    async def audit_workload_event(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        auditor.on_workload(kind, event.get("type"), {"apiVersion": api_version, **obj})


def register(registry: kopf.OperatorRegistry, ctx_getter: Callable[[], Context]) -> Auditor:
    """Add the auditor's watch handlers and its worker's start and stop to `registry`."""
    auditor = Auditor(ctx_getter)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def start_auditor(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, ctx_getter().settings.audit)  # before kopf starts any watch
        tasks.append(asyncio.create_task(auditor.run(stop), name="archaudit-auditor"))

    @kopf.on.cleanup(registry=registry)
    async def stop_auditor(**_: Any) -> None:
        stop.set()
        auditor.wake.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def audit_pod_event(event: Mapping[str, Any], **_: Any) -> None:
        auditor.on_pod(event.get("type"), event.get("object") or {})

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def audit_node_event(event: Mapping[str, Any], **_: Any) -> None:
        auditor.on_node(event.get("type"), event.get("object") or {})

    for group, version, plural, kind in TEMPLATE_RESOURCES:
        _watch_workloads(registry, auditor, group, version, plural, kind)

    if ctx_getter().settings.audit.watch_events:

        @kopf.on.event("", "v1", "events", registry=registry)
        async def audit_kube_event(event: Mapping[str, Any], **_: Any) -> None:
            if event.get("type") != "DELETED":
                auditor.on_kube_event(event.get("object") or {})

    return auditor
