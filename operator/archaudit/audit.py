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
import json
import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from archaudit.adapters.auditstore import AuditStore
from archaudit.adapters.events import AUDITOR, Involved
from archaudit.adapters.kube import KubeApi, load_client
from archaudit.context import Context
from archaudit.core import policy, reports, scheduling, workloads
from archaudit.core.config import AuditSettings
from archaudit.core.errors import InvalidReference, Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.reference import parse as parse_reference
from archaudit.core.reports import Container, PodFacts, RuntimeEvidence, WorkloadRef

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
    statuses: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ns, audit name)
    event_evidence: OrderedDict[tuple[str, str], tuple[RuntimeEvidence, ...]] = field(
        default_factory=OrderedDict
    )
    contributions: dict[WorkloadKey, _Contribution] = field(default_factory=dict)
    mismatches_seen: set[tuple[str, str, str, str]] = field(default_factory=set)
    dirty: set[ParentKey] = field(default_factory=set)
    full_due: bool = True
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    passes: int = 0  # completed passes, for tests and logs
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

    # --- the worker -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Audit passes until `stop`: after a burst of changes, and all workloads every resync."""
        settings = self.ctx_getter().settings.audit
        next_full = time.monotonic()
        was_leader = False
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
        if full:
            self.full_due = False
        touched, failed = await self._workloads_of(store, parents)
        groups = self._group_pods(touched)
        for key in [k for k, pods in groups.items() if not pods or not self._audited_namespace(ctx, k[0])]:
            # No pods left (the report keeps its last word; GC removes it with the workload), or a
            # namespace archaudit is told to leave alone.
            self.contributions.pop(key, None)
            del groups[key]
        images = await self._resolve(ctx, [pod for pods in groups.values() for pod in pods])
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

    async def _resolve(self, ctx: Context, pods: Sequence[_Pod]) -> dict[tuple[str, str], Resolved]:
        """Every unique (namespace, image) once, a few at a time: the webhook shares the registries."""
        wanted: dict[tuple[str, str], _Pod] = {}
        for pod in pods:
            for c in pod.containers:
                wanted.setdefault((pod.namespace, c.image), pod)
        limit = asyncio.Semaphore(max(1, ctx.settings.audit.concurrency))

        async def one(key: tuple[str, str], pod: _Pod) -> tuple[tuple[str, str], Resolved]:
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
        if not facts:  # every image exempt: nothing to say
            self.contributions.pop(key, None)
            return
        image_results = {c.image: images[(namespace, c.image)] for f in facts for c in f.containers}
        name = reports.audit_name(workload)
        previous = self.statuses.get((namespace, name))
        extra = [(p.name, e) for p in pods for e in self.event_evidence.get((namespace, p.name), ())]
        audit = reports.build(
            workload, facts, image_results, now=_now(), previous=previous, extra_evidence=extra
        )
        self.contributions[key] = _Contribution(
            namespace, audit.verdict.value, audit.incompatible_pods, audit.unresolved
        )
        self._count_mismatches(namespace, audit)
        if not ctx.is_leader():
            return
        unchanged = previous is not None and previous.get("fingerprint") == audit.fingerprint
        fresh = previous is not None and _age_seconds(str(previous.get("lastChecked", ""))) < (
            ctx.settings.audit.refresh_seconds
        )
        if unchanged and fresh:
            return
        if previous is None or not await store.patch_status(namespace, name, audit.status):
            await store.create_audit(reports.object_body(workload))
            if not await store.patch_status(namespace, name, audit.status):
                raise RuntimeError(f"ImageAudit {namespace}/{name} vanished right after its creation")
        self.statuses[(namespace, name)] = audit.status
        if audit.announce:
            _announce(ctx, workload, audit)

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
        if full:
            state.full_audit_completed()

    def _store_for(self, ctx: Context) -> AuditStore:
        if self._store is None:
            self._store = self.store_factory(ctx)
        return self._store


def _api_of(ctx: Context) -> KubeApi:
    api = getattr(ctx, "api", None)
    return api if isinstance(api, KubeApi) else KubeApi(load_client())


async def _resolve_image(ctx: Context, pod: _Pod, image: str) -> Resolved:
    try:
        ref = parse_reference(image)
    except InvalidReference as e:
        return ResolutionError(Reason.INVALID_REFERENCE, f"image {image!r}: {e}")
    try:
        async with asyncio.timeout(_RESOLVE_GUARD_SECONDS):
            creds = await ctx.credentials.for_pod(pod.namespace, pod.spec, ref)
            resolution = await ctx.resolver.resolve(ref, creds)
    except ResolutionError as e:
        return e
    except TimeoutError:
        return ResolutionError(
            Reason.TIMEOUT, f"image {image}: no answer within {_RESOLVE_GUARD_SECONDS:.0f}s"
        )
    except Exception as e:  # a bug or an apiserver error reading pull secrets: say so, keep auditing
        log.warning("resolving %s for %s/%s failed: %r", image, pod.namespace, pod.name, e)
        return ResolutionError(Reason.REGISTRY_ERROR, f"image {image}: internal error ({type(e).__name__})")
    result: ImagePlatforms = resolution.image
    return result


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

    if ctx_getter().settings.audit.watch_events:

        @kopf.on.event("", "v1", "events", registry=registry)
        async def audit_kube_event(event: Mapping[str, Any], **_: Any) -> None:
            if event.get("type") != "DELETED":
                auditor.on_kube_event(event.get("object") or {})

    return auditor
