"""Placement's metrics, in the operator's one registry (adapters/metrics.Metrics.registry).

Kept beside, not inside, metrics.py so that placement's series are defined in one place with their
help texts: placements by result (placed, unchanged, gated, ungated-timeout, skipped with its reason),
and, read at scrape time from the gate controller (no gauge kept in sync by hand), the pods gated now
and the age of the oldest gate. No pod or image names as labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PlacementMetrics"]

PREFIX = "archaudit"
# (pods gated now, creation time of the oldest one as a Unix timestamp or None)
GatedSource = Callable[[], tuple[int, float | None]]


class _GatedCollector(Collector):
    def __init__(self, source: GatedSource, clock: Callable[[], float]) -> None:
        self._source = source
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        count, oldest = self._source()
        gated = GaugeMetricFamily(
            f"{PREFIX}_placement_gated_pods",
            "Pods that carry the scheduling gate archaudit.io/placement now (seen by this replica).",
        )
        gated.add_metric([], count)
        yield gated
        age = GaugeMetricFamily(
            f"{PREFIX}_placement_oldest_gate_age_seconds",
            "Age of the oldest pod that carries archaudit's scheduling gate; 0 when none does.",
        )
        age.add_metric([], 0.0 if oldest is None else max(self._clock() - oldest, 0.0))
        yield age


class PlacementMetrics:
    """`observe(result, reason)` is the observer placement.Mutation and GateController call."""

    def __init__(
        self, registry: CollectorRegistry, gated: GatedSource, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.placements = Counter(
            "placements",
            "Pods placement looked at, by result (placed, unchanged, gated, ungated-timeout, skipped, "
            "error, reinvoked: a second call for a pod seen already) and, for skipped, the reason.",
            ["result", "reason"],
            namespace=PREFIX,
            registry=registry,
        )
        registry.register(_GatedCollector(gated, clock))

    def observe(self, result: str, reason: str) -> None:
        self.placements.labels(result=result, reason=reason).inc()
