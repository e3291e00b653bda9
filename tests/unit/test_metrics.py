"""The metrics contract, asserted from a real scrape of the real aiohttp server on loopback.

Dashboards and alert rules depend on metric names, types and label names: CONTRACT below is that
promise. Values are fed through the same hooks the webhook, the registry client and the auditor use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from archaudit import __version__
from archaudit.adapters import metrics
from tests.harness.procs import free_port

# family name (as the parser names it) -> (type, label names)
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "archaudit_admission_reviews": ("counter", frozenset({"kind", "operation", "mode", "decision"})),
    "archaudit_admission_duration_seconds": ("histogram", frozenset()),
    "archaudit_registry_requests": ("counter", frozenset({"registry", "status_class"})),
    "archaudit_registry_request_duration_seconds": ("histogram", frozenset({"registry"})),
    "archaudit_resolver_cache_hits": ("counter", frozenset({"cache"})),
    "archaudit_resolver_cache_misses": ("counter", frozenset({"cache"})),
    "archaudit_unresolved_images": ("gauge", frozenset({"reason"})),
    "archaudit_workloads": ("gauge", frozenset({"verdict", "namespace"})),
    "archaudit_pods_on_incompatible_nodes": ("gauge", frozenset({"namespace", "node_platform"})),
    "archaudit_runtime_mismatches": ("counter", frozenset({"namespace"})),
    "archaudit_registry_ratelimit_remaining": ("gauge", frozenset({"registry"})),
    "archaudit_last_full_audit_timestamp_seconds": ("gauge", frozenset()),
    "archaudit_nodes": ("gauge", frozenset({"platform"})),
    "archaudit_runnable_workloads": ("gauge", frozenset({"platform"})),
    "archaudit_runnable_cpu_cores": ("gauge", frozenset({"platform"})),
    "archaudit_events": ("counter", frozenset({"result"})),
    "archaudit_cloud_token_requests": ("counter", frozenset({"source", "result"})),
    "archaudit_event_write_retries": ("counter", frozenset()),
    "archaudit_cluster_state_age_seconds": ("gauge", frozenset()),
    "archaudit_admission_reviews_stale_state": ("counter", frozenset()),
    "archaudit_admission_reviews_dropped": ("counter", frozenset({"reason"})),
    "archaudit_build_info": ("gauge", frozenset({"version", "python"})),
}


class FakeClock:
    """A clock the test moves by hand: the rate-limit TTL is about elapsed time, not real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    url: str
    state: metrics.MutableState
    meters: metrics.Metrics
    clock: FakeClock
    checks: dict[str, Callable[[], bool]]
    http: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, str, CIMultiDictProxy[str]]:
        async with self.http.get(self.url + path, headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers

    async def scrape(self) -> dict[str, Metric]:
        status, body, _ = await self.get("/metrics")
        assert status == 200
        return {f.name: f for f in text_string_to_metric_families(body)}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = metrics.MutableState()
    clock = FakeClock()
    meters = metrics.Metrics(state, registries_limit=3, ratelimit_ttl=600, clock=clock)
    checks: dict[str, Callable[[], bool]] = {"health": lambda: True, "ready": lambda: False}
    port = free_port()
    runner = await metrics.start_metrics_server(
        "127.0.0.1",
        port,
        meters.registry,
        health=lambda: checks["health"](),
        ready=lambda: checks["ready"](),
    )
    try:
        async with aiohttp.ClientSession() as http:
            yield Server(f"http://127.0.0.1:{port}", state, meters, clock, checks, http)
    finally:
        await runner.cleanup()


def feed_everything(s: Server) -> None:
    """One of every event and every piece of state, so that every family has a sample."""
    s.meters.observe_admission("Pod", "CREATE", "enforce", "denied", 0.02)
    s.meters.observe_admission("Deployment", "UPDATE", "warn", "warned", 0.3)
    s.meters.on_request("registry-1.docker.io", "GET", 200, 0.12)
    s.meters.on_request("registry-1.docker.io", "HEAD", None, 5.0)
    s.meters.on_ratelimit("registry-1.docker.io", 87)
    s.state.resolver_cache = {"tag": (5, 2), "platforms": (9, 1)}
    s.state.unresolved_images = {"auth": 2, "not-found": 1}
    s.state.workloads = {("Incompatible", "shop"): 2, ("Compatible", "shop"): 7, ("AtRisk", "web"): 1}
    s.state.pods_on_incompatible_nodes = {("shop", "linux/arm64"): 3}
    s.state.nodes = {"linux/amd64": 2, "linux/arm64": 3, "linux/arm/v7": 1}
    s.state.observe_runtime_mismatch("shop")
    s.state.full_audit_completed(at=1_700_000_000.0)
    s.state.runnable_workloads = {"linux/amd64": 9, "linux/arm64": 4}
    s.state.runnable_cpu_cores = {"linux/amd64": 3.5, "linux/arm64": 1.25}
    s.state.events = {"emitted": 1, "aggregated": 41, "dropped": 0, "failed": 0}
    s.state.cloud_tokens = {("aws", "ok"): 2, ("gcp", "error"): 1}
    s.state.cluster_state_age_from = lambda: 4.5
    s.meters.observe_stale_review()
    s.meters.observe_dropped_review("memory")


def label_names(family: Metric) -> frozenset[str]:
    return frozenset(name for sample in family.samples for name in sample.labels if name != "le")


def value(family: Metric, suffix: str = "", **labels: str) -> float:
    matches = [s.value for s in family.samples if s.name == family.name + suffix and s.labels == labels]
    assert len(matches) == 1, f"{family.name}{suffix}{labels}: {family.samples}"
    return matches[0]


# --- the contract --------------------------------------------------------------------------------


async def test_scrape_exports_exactly_the_documented_names_types_and_labels(server: Server) -> None:
    feed_everything(server)
    families = await server.scrape()
    ours = {name: f for name, f in families.items() if name.startswith("archaudit_")}
    # `_created` companions are prometheus_client's (creation time of each counter/histogram series).
    created = {name for name in ours if name.endswith("_created")}
    assert {name.removesuffix("_created") for name in created} <= set(CONTRACT)
    got = {name: (f.type, label_names(f)) for name, f in ours.items() if name not in created}
    assert got == CONTRACT
    assert "process_resident_memory_bytes" in families  # memory, for the Pi-sized requests


async def test_openmetrics_scrape_has_the_same_contract(server: Server) -> None:
    feed_everything(server)
    status, body, headers = await server.get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    parsed = parse_openmetrics(body)  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed if f.name.startswith("archaudit_")}
    assert {name: (f.type, label_names(f)) for name, f in families.items()} == CONTRACT


async def test_metrics_are_served_in_the_prometheus_text_format_and_gzipped_on_request(
    server: Server,
) -> None:
    _, _, headers = await server.get("/metrics")
    # Without an Accept header: the classic text format every Prometheus version reads.
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    _, body, headers = await server.get("/metrics", **{"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"  # the client decompressed it for us
    assert "archaudit_build_info" in body
    _, _, headers = await server.get("/metrics", **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers


# --- values --------------------------------------------------------------------------------------


async def test_events_are_counted_with_their_labels(server: Server) -> None:
    feed_everything(server)
    server.meters.observe_admission("Pod", "CREATE", "enforce", "denied", 0.04)
    families = await server.scrape()

    reviews = families["archaudit_admission_reviews"]
    assert value(reviews, "_total", kind="Pod", operation="CREATE", mode="enforce", decision="denied") == 2
    assert (
        value(reviews, "_total", kind="Deployment", operation="UPDATE", mode="warn", decision="warned") == 1
    )
    duration = families["archaudit_admission_duration_seconds"]
    assert value(duration, "_count") == 3
    assert value(duration, "_sum") == pytest.approx(0.36)
    assert value(duration, "_bucket", le="0.025") == 1  # 0.02
    assert value(duration, "_bucket", le="0.05") == 2  # + 0.04

    requests = families["archaudit_registry_requests"]
    assert value(requests, "_total", registry="registry-1.docker.io", status_class="2xx") == 1
    assert value(requests, "_total", registry="registry-1.docker.io", status_class="error") == 1
    registry_duration = families["archaudit_registry_request_duration_seconds"]
    assert value(registry_duration, "_count", registry="registry-1.docker.io") == 2
    assert value(registry_duration, "_sum", registry="registry-1.docker.io") == pytest.approx(5.12)


async def test_state_is_read_at_scrape_time(server: Server) -> None:
    feed_everything(server)
    families = await server.scrape()
    assert value(families["archaudit_workloads"], verdict="Incompatible", namespace="shop") == 2
    assert (
        value(families["archaudit_pods_on_incompatible_nodes"], namespace="shop", node_platform="linux/arm64")
        == 3
    )
    assert value(families["archaudit_nodes"], platform="linux/arm/v7") == 1
    assert value(families["archaudit_unresolved_images"], reason="auth") == 2
    assert value(families["archaudit_resolver_cache_hits"], "_total", cache="tag") == 5
    assert value(families["archaudit_resolver_cache_misses"], "_total", cache="platforms") == 1
    assert value(families["archaudit_runtime_mismatches"], "_total", namespace="shop") == 1
    assert value(families["archaudit_last_full_audit_timestamp_seconds"]) == 1_700_000_000.0
    assert value(families["archaudit_registry_ratelimit_remaining"], registry="registry-1.docker.io") == 87
    assert value(families["archaudit_cluster_state_age_seconds"]) == 4.5
    assert value(families["archaudit_admission_reviews_stale_state"], "_total") == 1
    assert value(families["archaudit_admission_reviews_dropped"], "_total", reason="memory") == 1

    # The next audit replaces the picture: a fixed namespace's series disappear, nothing is kept in sync.
    server.state.workloads = {("Compatible", "shop"): 9}
    server.state.observe_runtime_mismatch("shop", 2)
    families = await server.scrape()
    assert [(s.labels, s.value) for s in families["archaudit_workloads"].samples] == [
        ({"verdict": "Compatible", "namespace": "shop"}, 9)
    ]
    assert value(families["archaudit_runtime_mismatches"], "_total", namespace="shop") == 3


async def test_resolver_counters_can_be_read_from_the_resolver_itself(server: Server) -> None:
    live = {"tag": (1, 1)}
    server.state.resolver_cache_from = lambda: live
    assert value((await server.scrape())["archaudit_resolver_cache_hits"], "_total", cache="tag") == 1
    live["tag"] = (41, 3)
    assert value((await server.scrape())["archaudit_resolver_cache_hits"], "_total", cache="tag") == 41


async def test_nodes_can_be_counted_from_the_live_node_map(server: Server) -> None:
    node_platforms = ["linux/amd64", "linux/arm64", "linux/arm64"]
    server.state.nodes_from = lambda: Counter(node_platforms)
    assert value((await server.scrape())["archaudit_nodes"], platform="linux/arm64") == 2
    node_platforms.pop()  # a node left
    assert value((await server.scrape())["archaudit_nodes"], platform="linux/arm64") == 1


async def test_event_outcomes_are_read_from_the_emitter_at_scrape_time(server: Server) -> None:
    live = Counter({"emitted": 1, "aggregated": 0})
    server.state.events_from = lambda: live
    assert value((await server.scrape())["archaudit_events"], "_total", result="aggregated") == 0
    live["aggregated"] += 9
    assert value((await server.scrape())["archaudit_events"], "_total", result="aggregated") == 9


async def test_a_broken_live_reader_costs_its_own_series_not_the_scrape(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, int]:
        raise KeyError("node map is being rebuilt")

    server.state.nodes_from = broken
    server.state.workloads = {("Compatible", "shop"): 1}
    families = await server.scrape()
    assert families["archaudit_nodes"].samples == []
    assert value(families["archaudit_workloads"], verdict="Compatible", namespace="shop") == 1
    assert "node map is being rebuilt" in caplog.text


async def test_no_audit_yet_means_no_timestamp_rather_than_zero(server: Server) -> None:
    families = await server.scrape()
    assert families["archaudit_last_full_audit_timestamp_seconds"].samples == []


async def test_cluster_state_never_confirmed_is_absent_rather_than_zero(server: Server) -> None:
    server.state.cluster_state_age_from = lambda: None
    families = await server.scrape()
    assert families["archaudit_cluster_state_age_seconds"].samples == []


async def test_build_info_names_this_version(server: Server) -> None:
    family = (await server.scrape())["archaudit_build_info"]
    [sample] = family.samples
    assert sample.value == 1
    assert sample.labels["version"] == __version__
    assert sample.labels["python"].count(".") == 2


async def test_a_rate_limit_seen_long_ago_is_no_longer_exported(server: Server) -> None:
    server.meters.on_ratelimit("registry-1.docker.io", 3)
    server.clock.now += 599
    assert (
        value(
            (await server.scrape())["archaudit_registry_ratelimit_remaining"], registry="registry-1.docker.io"
        )
        == 3
    )
    server.clock.now += 2
    assert (await server.scrape())["archaudit_registry_ratelimit_remaining"].samples == []


async def test_registry_hosts_beyond_the_limit_are_counted_as_other(server: Server) -> None:
    # The fixture allows 3 hosts: image references are user input, series must stay bounded.
    for host in ("a.example", "b.example", "c.example", "d.example", "e.example", "a.example"):
        server.meters.on_request(host, "GET", 200, 0.1)
    requests = (await server.scrape())["archaudit_registry_requests"]
    per_host = {s.labels["registry"]: s.value for s in requests.samples if s.name.endswith("_total")}
    assert per_host == {"a.example": 2, "b.example": 1, "c.example": 1, "other": 2}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (206, "2xx"),
        (307, "3xx"),
        (401, "4xx"),
        (429, "4xx"),
        (503, "5xx"),
        (None, "error"),
        (0, "error"),
        (199, "error"),
        (600, "error"),
    ],
)
def test_status_class(status: int | None, expected: str) -> None:
    assert metrics.status_class(status) == expected
    assert expected in metrics.STATUS_CLASSES


def test_two_instances_do_not_share_numbers() -> None:
    from prometheus_client import generate_latest

    first, second = metrics.Metrics(metrics.MutableState()), metrics.Metrics(metrics.MutableState())
    first.observe_admission("Pod", "CREATE", "enforce", "allowed", 0.01)
    assert b'decision="allowed"' in generate_latest(first.registry)
    assert b'decision="allowed"' not in generate_latest(second.registry)


# --- probes and the server -------------------------------------------------------------------------


async def test_readyz_turns_from_503_to_200_when_ready(server: Server) -> None:
    status, body, _ = await server.get("/readyz")
    assert (status, body) == (503, "not ready\n")
    server.checks["ready"] = lambda: True
    status, body, _ = await server.get("/readyz")
    assert (status, body) == (200, "ok\n")


async def test_healthz_says_why_when_a_check_raises(server: Server) -> None:
    status, body, _ = await server.get("/healthz")
    assert (status, body) == (200, "ok\n")

    def broken() -> bool:
        raise RuntimeError("event loop stalled")

    server.checks["health"] = broken
    status, body, _ = await server.get("/healthz")
    assert (status, body) == (503, "unhealthy: event loop stalled\n")


async def test_a_taken_port_is_an_error_at_start(server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    registry = metrics.Metrics(metrics.MutableState()).registry
    with pytest.raises(OSError, match="in use"):
        await metrics.start_metrics_server(
            "127.0.0.1", port, registry, health=lambda: True, ready=lambda: True
        )


async def test_readiness_gauges_per_platform(server: Server) -> None:
    feed_everything(server)
    families = await server.scrape()
    assert value(families["archaudit_runnable_workloads"], platform="linux/arm64") == 4
    assert value(families["archaudit_runnable_cpu_cores"], platform="linux/arm64") == 1.25
