"""Prometheus metrics and the small HTTP server for /metrics, /healthz and /readyz.

Why this module exists: operators of a mixed-architecture cluster need numbers to alert on (incompatible
workloads, registry trouble, a slow webhook) without reading logs. Two kinds of numbers, kept apart:

- events that happen (an admission review, a registry request, a Docker Hub rate-limit header) are
  counted here as they occur: `Metrics` owns the counters and histograms and is the registry client's
  observer (`on_request`, `on_ratelimit`) and the webhook's (`observe_admission`);
- facts about the cluster (workloads by verdict, nodes by platform, unresolved images...) live in the
  operator's state and are read at scrape time through the `StateSource` protocol. Nothing has to keep
  gauges in sync by hand: whatever the state says when Prometheus asks is what it gets. `MutableState`
  is the plain in-memory source the glue and the auditor update.

Every metric lives in its own `CollectorRegistry` (not prometheus_client's global one), so tests and
several instances in one process never see each other's numbers. Label values never carry image or pod
names; registry hosts are the one label a user can choose freely (by writing an image reference), so
their number is capped. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from archaudit import __version__

__all__ = [
    "ADMISSION_DECISIONS",
    "STATUS_CLASSES",
    "Metrics",
    "MutableState",
    "Snapshot",
    "StateCollector",
    "StateSource",
    "start_metrics_server",
    "status_class",
]

log = logging.getLogger(__name__)

PREFIX = "archaudit"
ADMISSION_DECISIONS = ("allowed", "warned", "denied", "error")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
OTHER_REGISTRY = "other"

# The webhook must answer below its deadline (3.5 s by default) and the apiserver's timeout (5 s):
# buckets are dense where that decision is made.
ADMISSION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 10.0)
REGISTRY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# --- the state read at scrape time ------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the operator knows about the cluster at one instant; read once per scrape."""

    resolver_cache: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # cache -> (hits, misses)
    unresolved_images: Mapping[str, int] = field(default_factory=dict)  # errors.Reason value -> images
    workloads: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (verdict, namespace) -> n
    pods_on_incompatible_nodes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (ns, platform)
    nodes: Mapping[str, int] = field(default_factory=dict)  # node platform "linux/arm64" -> nodes
    runtime_mismatches: Mapping[str, int] = field(default_factory=dict)  # namespace -> observed so far
    last_full_audit: float | None = None  # unix time of the last completed full audit
    runnable_workloads: Mapping[str, int] = field(default_factory=dict)  # platform -> workloads (runsOn)
    runnable_cpu_cores: Mapping[str, float] = field(default_factory=dict)  # platform -> requested cores
    events: Mapping[str, int] = field(default_factory=dict)  # emitted|aggregated|dropped|failed -> n
    cluster_state_age: float | None = None  # seconds since nodes/namespaces were confirmed (None: never)
    cloud_tokens: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (source, ok|error) -> n


class StateSource(Protocol):
    """Anything that can tell the collector what the operator knows right now."""

    def snapshot(self) -> Snapshot: ...


@dataclass(eq=False)
class MutableState:
    """The in-memory `StateSource`: the auditor and the glue assign or update these dicts.

    Replacing a whole dict (`state.workloads = {...}` after a full audit) is the simplest way to make
    series of namespaces that are gone disappear. `runtime_mismatches` only grows: it is exported as a
    counter, so add to it once per newly observed mismatch, never on every resync.
    """

    resolver_cache: dict[str, tuple[int, int]] = field(default_factory=dict)
    unresolved_images: dict[str, int] = field(default_factory=dict)
    workloads: dict[tuple[str, str], int] = field(default_factory=dict)
    pods_on_incompatible_nodes: dict[tuple[str, str], int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    # Set these to read live objects (the resolver's counters, the node map) at scrape time instead of
    # copying into the dicts above; they win over the dicts when set.
    resolver_cache_from: Callable[[], Mapping[str, tuple[int, int]]] | None = None
    nodes_from: Callable[[], Mapping[str, int]] | None = None
    # The Event emitter's outcome counts (adapters/events.py `stats`), read live at scrape time.
    events_from: Callable[[], Mapping[str, int]] | None = None
    events: dict[str, int] = field(default_factory=dict)
    # The cloud credential step's token requests (adapters/cloud `requests`), read live at scrape time.
    cloud_tokens_from: Callable[[], Mapping[tuple[str, str], int]] | None = None
    cloud_tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    # Seconds since the node map and namespace labels were last confirmed by a re-list (None: never).
    cluster_state_age_from: Callable[[], float | None] | None = None
    runtime_mismatches: dict[str, int] = field(default_factory=dict)
    last_full_audit: float | None = None
    # readiness, per target platform (the auditor replaces both after each pass)
    runnable_workloads: dict[str, int] = field(default_factory=dict)
    runnable_cpu_cores: dict[str, float] = field(default_factory=dict)

    def observe_runtime_mismatch(self, namespace: str, count: int = 1) -> None:
        """A container showed `exec format error` or `no match for platform in manifest`."""
        self.runtime_mismatches[namespace] = self.runtime_mismatches.get(namespace, 0) + count

    def full_audit_completed(self, at: float | None = None) -> None:
        self.last_full_audit = time.time() if at is None else at

    def snapshot(self) -> Snapshot:
        # dict(d) of a dict is one C-level copy: a scrape never sees a dict change size mid-iteration,
        # even if some update runs in a worker thread.
        return Snapshot(
            resolver_cache=_read(self.resolver_cache_from, self.resolver_cache),
            unresolved_images=dict(self.unresolved_images),
            workloads=dict(self.workloads),
            pods_on_incompatible_nodes=dict(self.pods_on_incompatible_nodes),
            nodes=_read(self.nodes_from, self.nodes),
            runtime_mismatches=dict(self.runtime_mismatches),
            last_full_audit=self.last_full_audit,
            runnable_workloads=dict(self.runnable_workloads),
            runnable_cpu_cores=dict(self.runnable_cpu_cores),
            events=_read(self.events_from, self.events),
            cluster_state_age=_read_value(self.cluster_state_age_from),
            cloud_tokens=_read(self.cloud_tokens_from, self.cloud_tokens),
        )


_K = TypeVar("_K")
_V = TypeVar("_V")


def _read(live: Callable[[], Mapping[_K, _V]] | None, copy: Mapping[_K, _V]) -> dict[_K, _V]:
    if live is None:
        return dict(copy)
    try:
        return dict(live())
    except Exception:
        # One broken reader must not fail the whole scrape: that would look like archaudit being down.
        log.exception("metrics: reading live state failed; exporting nothing for it in this scrape")
        return {}


def _read_value(live: Callable[[], float | None] | None) -> float | None:
    if live is None:
        return None
    try:
        return live()
    except Exception:
        log.exception("metrics: reading live state failed; exporting nothing for it in this scrape")
        return None


class StateCollector(Collector):
    """A custom collector: turns one `Snapshot` per scrape into metric families."""

    def __init__(
        self,
        source: StateSource,
        ratelimits: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._source = source
        self._ratelimits = ratelimits

    def describe(self) -> Iterable[Metric]:
        # Names and types only, so that registering twice is caught without reading the state.
        return list(self._families(Snapshot(), {}))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._source.snapshot(), self._ratelimits()))

    @staticmethod
    def _families(snap: Snapshot, ratelimits: Mapping[str, int]) -> Iterable[Metric]:
        hits = CounterMetricFamily(
            f"{PREFIX}_resolver_cache_hits", "Resolver cache lookups that found an entry.", labels=["cache"]
        )
        misses = CounterMetricFamily(
            f"{PREFIX}_resolver_cache_misses", "Resolver cache lookups that found nothing.", labels=["cache"]
        )
        for cache, (hit, miss) in sorted(snap.resolver_cache.items()):
            hits.add_metric([cache], hit)
            misses.add_metric([cache], miss)
        yield hits
        yield misses

        yield _gauge(
            "unresolved_images",
            "Images the auditor could not resolve to their platforms, by reason.",
            ["reason"],
            _keyed(snap.unresolved_images),
        )
        yield _gauge(
            "workloads",
            "Top-level workloads by ImageAudit verdict (Compatible, Incompatible, AtRisk, Unknown).",
            ["verdict", "namespace"],
            snap.workloads.items(),
        )
        yield _gauge(
            "pods_on_incompatible_nodes",
            "Pods running on a node whose platform their image does not provide.",
            ["namespace", "node_platform"],
            snap.pods_on_incompatible_nodes.items(),
        )
        yield _gauge(
            "nodes", "Nodes by platform (os/architecture[/variant]).", ["platform"], _keyed(snap.nodes)
        )
        yield _gauge(
            "runnable_workloads",
            "Top-level workloads whose every image runs on the platform (ImageAudit status.runsOn).",
            ["platform"],
            _keyed(snap.runnable_workloads),
        )
        yield _gauge(
            "runnable_cpu_cores",
            "CPU cores requested (requests times replicas) by the workloads that could run on the platform.",
            ["platform"],
            _keyed(snap.runnable_cpu_cores),
        )
        yield _gauge(
            "registry_ratelimit_remaining",
            "Pulls left in the registry's rate-limit window (Docker Hub's ratelimit-remaining header).",
            ["registry"],
            _keyed(ratelimits),
        )

        mismatches = CounterMetricFamily(
            f"{PREFIX}_runtime_mismatches",
            "Containers seen failing because of their image's platform (exec format error, no match "
            "for platform in manifest).",
            labels=["namespace"],
        )
        for namespace, n in sorted(snap.runtime_mismatches.items()):
            mismatches.add_metric([namespace], n)
        yield mismatches

        events = CounterMetricFamily(
            f"{PREFIX}_events",
            "Occurrences of ImageArchMismatch problems by what became of them: emitted (a new Event), "
            "aggregated (counted on an existing Event), dropped (queue full, rate limit, no object name), "
            "failed (the apiserver refused or did not answer a write).",
            labels=["result"],
        )
        retried = CounterMetricFamily(
            f"{PREFIX}_event_write_retries",
            "Event creates tried again because the apiserver did not answer (down, timeout, 429, 5xx).",
        )
        for result, n in sorted(snap.events.items()):
            if result != "retried":
                events.add_metric([result], n)
        retried.add_metric([], snap.events.get("retried", 0))
        yield events
        yield retried

        cloud_tokens = CounterMetricFamily(
            f"{PREFIX}_cloud_token_requests",
            "Token requests to the cloud identity services (aws: ECR GetAuthorizationToken, gcp: the "
            "metadata server, azure: Azure AD + ACR exchange) by result: ok or error.",
            labels=["source", "result"],
        )
        for (source, result), n in sorted(snap.cloud_tokens.items()):
            cloud_tokens.add_metric([source, result], n)
        yield cloud_tokens

        last_audit = GaugeMetricFamily(
            f"{PREFIX}_last_full_audit_timestamp_seconds",
            "Unix time at which the last full audit of the cluster completed (absent until the first).",
        )
        if snap.last_full_audit is not None:
            last_audit.add_metric([], snap.last_full_audit)
        yield last_audit

        state_age = GaugeMetricFamily(
            f"{PREFIX}_cluster_state_age_seconds",
            "Seconds since the node map and namespace labels the webhook decides on were last confirmed "
            "against the apiserver (absent until the first listing).",
        )
        if snap.cluster_state_age is not None:
            state_age.add_metric([], snap.cluster_state_age)
        yield state_age


def _keyed(counts: Mapping[str, float]) -> list[tuple[tuple[str], float]]:
    return [((key,), n) for key, n in counts.items()]


def _gauge(
    name: str, documentation: str, labels: list[str], values: Iterable[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for key, n in sorted(values):
        family.add_metric(list(key), n)
    return family


# --- events counted as they happen ---------------------------------------------------------------


def status_class(status: int | None) -> str:
    """The class of an HTTP status ("2xx".."5xx"); "error" when there was no usable response."""
    if status is None or not 200 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


class _BoundedLabel:
    """Admits at most `limit` distinct values, then answers `overflow`: a cap on series cardinality."""

    def __init__(self, limit: int, overflow: str) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._overflow = overflow

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return self._overflow
        self._seen.add(value)
        return value


class Metrics:
    """Every archaudit metric, in one registry; the observer the webhook and the registry client call.

    `source` is read at scrape time (see `StateSource`). `registries_limit` caps the number of distinct
    registry hosts used as label values; later hosts are counted as "other". A rate-limit value older
    than `ratelimit_ttl` seconds is no longer exported: the window it described has likely reset.
    """

    def __init__(
        self,
        source: StateSource,
        *,
        version: str = __version__,
        registries_limit: int = 50,
        ratelimit_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._registry_label = _BoundedLabel(registries_limit, OTHER_REGISTRY)
        self._ratelimit_ttl = ratelimit_ttl
        self._clock = clock
        self._ratelimits: dict[str, tuple[int, float]] = {}

        self.admission_reviews = Counter(
            "admission_reviews",
            "Admission reviews answered, by object kind, operation, namespace mode and decision.",
            ["kind", "operation", "mode", "decision"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.admission_duration = Histogram(
            "admission_duration_seconds",
            "Time from receiving an admission review to answering it.",
            namespace=PREFIX,
            buckets=ADMISSION_BUCKETS,
            registry=self.registry,
        )
        self.admission_reviews_stale_state = Counter(
            "admission_reviews_stale_state",
            "Admission reviews answered from a node map and namespace labels the last re-list could not "
            "confirm (the apiserver or the watches were down): what the webhook last knew.",
            namespace=PREFIX,
            registry=self.registry,
        )
        self.admission_reviews_dropped = Counter(
            "admission_reviews_dropped",
            "Admission reviews answered 503 without being judged, by reason (memory: the body did not "
            "fit under the process's memory limit). The apiserver admits them (failurePolicy Ignore).",
            ["reason"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.registry_requests = Counter(
            "registry_requests",
            'Registry HTTP requests by registry host and status class ("error": no response).',
            ["registry", "status_class"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.registry_request_duration = Histogram(
            "registry_request_duration_seconds",
            "Duration of registry HTTP requests, including failed ones.",
            ["registry"],
            namespace=PREFIX,
            buckets=REGISTRY_BUCKETS,
            registry=self.registry,
        )
        build_info = Gauge(
            "build_info",
            "Always 1; the labels say which archaudit and Python are running.",
            ["version", "python"],
            namespace=PREFIX,
            registry=self.registry,
        )
        build_info.labels(version=version, python=platform.python_version()).set(1)
        self.registry.register(StateCollector(source, self._fresh_ratelimits))
        # Memory and CPU of the operator itself: the chart's requests are sized for a Raspberry Pi.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe_admission(self, kind: str, operation: str, mode: str, decision: str, seconds: float) -> None:
        """One admission review answered; decision is allowed | warned | denied | error."""
        self.admission_reviews.labels(kind=kind, operation=operation, mode=mode, decision=decision).inc()
        self.admission_duration.observe(max(seconds, 0.0))

    def observe_dropped_review(self, reason: str) -> None:
        """One review answered 503 unjudged (reason "memory")."""
        self.admission_reviews_dropped.labels(reason=reason).inc()

    def observe_stale_review(self) -> None:
        """One review answered while the cluster state was unconfirmed (StateFreshness.confirming False)."""
        self.admission_reviews_stale_state.inc()

    def on_request(self, registry: str, method: str, status: int | None, seconds: float) -> None:
        """The registry client finished one HTTP request (status None: connection error or timeout).

        `method` is accepted for the client's observer protocol but not used as a label: HEAD vs GET
        says little an operator can act on and would double every series.
        """
        host = self._registry_label(registry)
        self.registry_requests.labels(registry=host, status_class=status_class(status)).inc()
        self.registry_request_duration.labels(registry=host).observe(max(seconds, 0.0))

    def on_ratelimit(self, registry: str, remaining: int) -> None:
        """A registry answered with a `ratelimit-remaining` header."""
        self._ratelimits[self._registry_label(registry)] = (remaining, self._clock())

    def _fresh_ratelimits(self) -> dict[str, int]:
        oldest = self._clock() - self._ratelimit_ttl
        return {host: left for host, (left, seen) in dict(self._ratelimits).items() if seen >= oldest}


# --- HTTP ---------------------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _metrics_handler(registry: CollectorRegistry) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encode(registry), headers={"Content-Type": content_type})
        response.enable_compression()  # gzip only when the scraper asks for it
        return response

    return handle


def _probe_handler(check: Callable[[], bool], failure: str) -> _Handler:
    async def handle(_: web.Request) -> web.Response:
        try:
            ok = check()
        except Exception as e:  # a probe answers; a check that raises says why it is not ok
            return web.Response(status=503, text=f"{failure}: {e}\n")
        return web.Response(text="ok\n") if ok else web.Response(status=503, text=f"{failure}\n")

    return handle


async def start_metrics_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    health: Callable[[], bool],
    ready: Callable[[], bool],
) -> web.AppRunner:
    """Serve /metrics, /healthz and /readyz over plain HTTP; the caller awaits `runner.cleanup()`.

    A check that raises answers 503 with the exception's message as the reason.
    """
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler(registry))
    app.router.add_get("/healthz", _probe_handler(health, "unhealthy"))
    app.router.add_get("/readyz", _probe_handler(ready, "not ready"))
    runner = web.AppRunner(app, access_log=None)  # probes every few seconds would drown the log
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
