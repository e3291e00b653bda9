"""Placement's metrics: names, types and labels as docs/metrics.md says, gauges read at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from archaudit.adapters.placement_metrics import PlacementMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
CONTRACT = {
    "archaudit_placements": ("counter", frozenset({"result", "reason"})),
    "archaudit_placement_gated_pods": ("gauge", frozenset()),
    "archaudit_placement_oldest_gate_age_seconds": ("gauge", frozenset()),
}


def scrape(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str], list[float]]]:
    text = generate_latest(registry).decode()
    return {
        f.name: (f.type, frozenset(k for s in f.samples for k in s.labels), [s.value for s in f.samples])
        for f in text_string_to_metric_families(text)
        if not f.name.endswith("_created")
    }


def test_the_contract_and_the_docs() -> None:
    registry = CollectorRegistry()
    meters = PlacementMetrics(registry, lambda: (0, None))
    meters.observe("skipped", "node-name")
    got = {name: (kind, labels) for name, (kind, labels, _v) in scrape(registry).items()}
    assert got == CONTRACT
    documented = DOC.read_text()
    for name, (kind, _labels) in CONTRACT.items():
        exported = f"{name}_total" if kind == "counter" else name
        assert f"`{exported}`" in documented, exported


def test_gated_pods_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    state = {"gated": (0, None)}
    PlacementMetrics(registry, lambda: state["gated"], clock=lambda: 1000.0)  # type: ignore[arg-type,return-value]
    assert scrape(registry)["archaudit_placement_oldest_gate_age_seconds"][2] == [0.0]
    state["gated"] = (3, 990.0)  # type: ignore[assignment]
    families = scrape(registry)
    assert families["archaudit_placement_gated_pods"][2] == [3.0]
    assert families["archaudit_placement_oldest_gate_age_seconds"][2] == [10.0]
