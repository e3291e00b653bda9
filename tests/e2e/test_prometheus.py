"""A real Prometheus scrapes archaudit on the real apiserver; the shipped alerts fire and resolve.

The promtool tests (tests/unit/promtool) check each alert expression on hand-written series. Here the
series are real: `archaudit run` audits the control plane, Debian's Prometheus server scrapes its
/metrics every second with the scrape settings docs/metrics.md recommends, evaluates the chart's rules
file and is asked over its HTTP API what it ingested and which alerts are active. That is where a
renamed metric, a lost `namespace` label (honor_labels) or a counter exported under the wrong type
would show.

The rules' `for:` durations are minutes (10 minutes for ArchauditIncompatibleWorkloads), which a test
cannot wait for. Prometheus evaluates a copy of the shipped rules file in which only `for:` is
shortened; every expression, label and annotation is the shipped one, so the test still proves that
the shipped expressions match what archaudit exports. The `for:` durations themselves are promtool's
business (tests/unit/promtool).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import yaml
from kubernetes import client

from tests.conftest import Seeded
from tests.harness.cluster import REPO, Cluster
from tests.harness.kube import wait_pods
from tests.harness.operator import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Operator,
    ensure_namespace,
    install_imageaudit_crd,
    webhook_configuration,
)
from tests.harness.procs import wait_until
from tests.harness.prometheus import JOB, Prometheus, find_prometheus

RULES = REPO / "charts/archaudit/files/prometheus-rules.yaml"
METRICS_DOC = REPO / "docs/metrics.md"
INCOMPATIBLE_ALERT = "ArchauditIncompatibleWorkloads"
DOWN_ALERT = "ArchauditDown"
SHORT_FOR = "2s"  # long enough to pass through `pending`, short enough to wait for
WAIT = 120.0  # generous: two cores shared with a Go build and other test runs
RESYNC_SECONDS = 5
# What the Prometheus operator attaches to a ServiceMonitor's targets. With these, `honor_labels` and the
# rules' `max without (instance, pod)` matter here as they do in a cluster.
TARGET_LABELS = {"namespace": NAMESPACE, "pod": "archaudit-0"}

_T = TypeVar("_T")


@pytest.fixture(scope="module", autouse=True)
def _need_prometheus() -> None:
    if find_prometheus() is None:
        pytest.skip("/usr/bin/prometheus is not installed (Debian package prometheus; `make deps`)")


# --- the documented contract ------------------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    name: str  # as documented, e.g. archaudit_admission_reviews_total
    type: str  # counter | gauge | histogram
    labels: frozenset[str]

    @property
    def family(self) -> str:
        """The family name Prometheus' metadata uses: OpenMetrics names a counter without `_total`."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def sample_names(self) -> set[str]:
        if self.type == "histogram":
            return {f"{self.name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
        if self.type == "counter":
            return {self.name, f"{self.family}_created"}
        return {self.name}


def documented_metrics() -> dict[str, Documented]:
    """The reference table of docs/metrics.md, by documented name."""
    row = re.compile(r"^\| `(archaudit_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", re.M)
    found = {}
    for name, kind, labels in row.findall(METRICS_DOC.read_text()):
        found[name] = Documented(name, kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return found


def rules_with_short_for(source: Path, target: Path, duration: str) -> Path:
    """A copy of the rules file in which every `for:` is `duration`; nothing else changes."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


# --- fixtures -------------------------------------------------------------------------------------


@dataclass
class Stack:
    cluster: Cluster
    registry: Seeded
    operator: Operator
    prometheus: Prometheus

    def wait(self, condition: Callable[[], _T | None], what: str, *, operator_running: bool = True) -> _T:
        """wait_until with the logs of both servers and the active alerts in the failure message.

        While the operator should be running, its death fails the wait at once.
        """
        watched = self.operator.service if operator_running else None
        try:
            found = wait_until(condition, timeout=WAIT, interval=0.5, what=what, service=watched)
            return cast(_T, found)
        except TimeoutError as e:
            try:
                active = json.dumps(self.prometheus.alerts(), indent=1)
            except Exception as err:  # Prometheus itself may be what broke
                active = repr(err)
            raise TimeoutError(
                f"{e}\nactive alerts: {active}\n{self.operator.tail()}\n{self.prometheus.tail()}"
            ) from e


def _operator_env(registry: Seeded, **extra: str) -> dict[str, str]:
    return {
        "ARCHAUDIT_REGISTRY_INSECURE": registry.registry.host,
        "ARCHAUDIT_REGISTRY_TAG_TTL_SECONDS": "1",
        "ARCHAUDIT_REGISTRY_NEGATIVE_TTL_SECONDS": "1",
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
        **extra,
    }


def scraping(op: Operator, work_dir: Path, rules: Path) -> Prometheus:
    """A Prometheus that scrapes `op` as a ServiceMonitor would: with `namespace` and `pod` target labels."""
    target = op.metrics_url.removeprefix("http://")
    return Prometheus(targets=[target], work_dir=work_dir, rule_files=[rules], target_labels=TARGET_LABELS)


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The operator (webhook registered, auditor on) and a Prometheus scraping it with the test rules."""
    work = tmp_path_factory.mktemp("prometheus-e2e")
    install_imageaudit_crd(cluster, work)
    ensure_namespace(cluster.admin, NAMESPACE)
    op = Operator(kubeconfig=cluster.kubeconfig, log_dir=work, env=_operator_env(plain_registry))
    op.start(timeout=90)
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    try:
        admission.create_validating_webhook_configuration(webhook_configuration(op.url))  # type: ignore[arg-type]
        rules = rules_with_short_for(RULES, work / "rules.yaml", SHORT_FOR)
        with scraping(op, work / "prometheus", rules) as prom:
            stack = Stack(cluster, plain_registry, op, prom)
            _wait_for_webhook(stack)
            yield stack
    finally:
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


# --- Kubernetes helpers -----------------------------------------------------------------------------


def deployment(name: str, image: str) -> dict[str, Any]:
    """One replica pinned to arm64 nodes: an amd64-only image there is Incompatible."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "main", "image": image}],
                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                },
            },
        },
    }


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any], *extra: str) -> list[str]:
    """kubectl apply; the admission warnings it printed."""
    done = cluster.kubectl("apply", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj))
    return [
        line.removeprefix("Warning: ") for line in done.stderr.splitlines() if line.startswith("Warning: ")
    ]


def warned_dry_run(stack: Stack, namespace: str, obj: dict[str, Any]) -> list[str]:
    """Wait until a server-side dry run of `obj` in `namespace` comes back with warnings.

    The apiserver picks a new webhook configuration up after a moment, and the operator learns a
    namespace's mode label from its watch: both are waited for this way.
    """
    return stack.wait(
        lambda: apply(stack.cluster, namespace, obj, "--dry-run=server") or None,
        f"the archaudit webhook to warn about a dry run in {namespace}",
    )


def _wait_for_webhook(stack: Stack) -> None:
    """Once per module: the webhook answers, so admission and registry metrics have series."""
    canary = "prom-canary"
    ensure_namespace(stack.cluster.admin, canary, labels={"archaudit.io/mode": "warn"})
    warned_dry_run(stack, canary, deployment("canary", stack.registry.samples["amd64-docker"].reference))


# --- Prometheus helpers -------------------------------------------------------------------------------


def alerts_named(prom: Prometheus, name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prom.alerts()
        if a["labels"].get("alertname") == name and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def firing(prom: Prometheus, name: str, **labels: str) -> dict[str, Any] | None:
    found = [a for a in alerts_named(prom, name, **labels) if a["state"] == "firing"]
    return found[0] if found else None


def value(prom: Prometheus, expr: str) -> float | None:
    """The single value of an instant query; None when the result is empty."""
    result = prom.query(expr)
    assert len(result) <= 1, f"{expr} matched several series: {result}"
    return float(result[0]["value"][1]) if result else None


# --- tests ----------------------------------------------------------------------------------------


def test_the_rules_prometheus_evaluates_differ_from_the_shipped_ones_only_in_for(tmp_path: Path) -> None:
    shipped = yaml.safe_load(RULES.read_text())
    evaluated = yaml.safe_load(rules_with_short_for(RULES, tmp_path / "rules.yaml", SHORT_FOR).read_text())
    shortened = 0
    for group in shipped["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
                shortened += 1
    assert shortened >= 2, "the shipped rules have no `for:` left to shorten"
    assert evaluated == shipped


def test_incompatible_workload_alert_fires_and_resolves_after_the_fix(stack: Stack, namespace: str) -> None:
    cluster, prom, ns = stack.cluster, stack.prometheus, namespace
    # Mode warn: the webhook admits the incompatible Deployment (with a warning) for the auditor to find.
    client.CoreV1Api(cluster.admin).patch_namespace(
        ns, {"metadata": {"labels": {"archaudit.io/mode": "warn"}}}
    )
    amd64_only = stack.registry.samples["amd64-docker"].reference
    multiarch = stack.registry.samples["multiarch"].reference
    bad = deployment("app", amd64_only)
    warned_dry_run(stack, ns, bad)
    warnings = apply(cluster, ns, bad)
    assert any(f"image {amd64_only} provides linux/amd64 only" in w for w in warnings), warnings
    wait_pods(cluster.admin, ns, "app=app", count=1)

    alert = stack.wait(
        lambda: firing(prom, INCOMPATIBLE_ALERT, namespace=ns), f"{INCOMPATIBLE_ALERT} firing for {ns}"
    )
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["verdict"] == "Incompatible"
    # The value comes from the real gauge; the namespace is archaudit's label, not the target's
    # (honor_labels), and the target's `pod` label is aggregated away by the shipped expression.
    assert "pod" not in alert["labels"]
    assert alert["annotations"]["summary"] == (
        f"1 workload(s) in namespace {ns} run on nodes that cannot run their image."
    )
    assert float(alert["value"]) == 1.0
    assert value(prom, f'archaudit_pods_on_incompatible_nodes{{namespace="{ns}"}}') == 1.0
    assert alerts_named(prom, DOWN_ALERT) == [], "archaudit is up: ArchauditDown must stay quiet"

    # The fix a user makes: the multi-arch image. The alert must go once the auditor says so.
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": multiarch}]}}}}
    client.AppsV1Api(cluster.admin).patch_namespaced_deployment("app", ns, patch)
    stack.wait(
        lambda: value(prom, f'archaudit_workloads{{namespace="{ns}", verdict="Compatible"}}') == 1.0,
        f"Prometheus to see the Deployment in {ns} Compatible",
    )
    stack.wait(
        lambda: not alerts_named(prom, INCOMPATIBLE_ALERT, namespace=ns),
        f"{INCOMPATIBLE_ALERT} for {ns} to resolve",
    )
    assert value(prom, f'archaudit_workloads{{namespace="{ns}", verdict="Incompatible"}} > 0') is None


def test_metric_names_types_and_labels_in_a_real_scrape(stack: Stack, namespace: str) -> None:
    """What Prometheus ingested from archaudit matches docs/metrics.md: names, types, label sets."""
    cluster, prom = stack.cluster, stack.prometheus
    documented = documented_metrics()
    assert len(documented) >= 14, "the reference table of docs/metrics.md was not parsed"

    # Give every family the auditor and the webhook fill a reason to have series: a compatible
    # Deployment, admitted by the webhook (default mode enforce) after resolving its image.
    good = deployment("fine", stack.registry.samples["multiarch"].reference)
    assert apply(cluster, namespace, good) == []
    stack.wait(
        lambda: value(prom, f'archaudit_workloads{{namespace="{namespace}", verdict="Compatible"}}') == 1.0,
        "the audited Deployment in Prometheus",
    )
    must_have_series = {
        "archaudit_build_info",
        "archaudit_nodes",
        "archaudit_workloads",
        "archaudit_last_full_audit_timestamp_seconds",
        "archaudit_admission_reviews_total",
        "archaudit_admission_duration_seconds",
        "archaudit_registry_requests_total",
        "archaudit_registry_request_duration_seconds",
        "archaudit_resolver_cache_hits_total",
        "archaudit_resolver_cache_misses_total",
    }
    series = stack.wait(
        lambda: (
            _series_by_metric(prom, documented)
            if must_have_series <= _series_by_metric(prom, documented).keys()
            else None
        ),
        f"series of {sorted(must_have_series)}",
    )

    # Types, from the metadata Prometheus parsed (empty families included).
    metadata = prom.metadata()
    for doc in documented.values():
        assert doc.family in metadata, f"{doc.name} not in the scrape's metadata"
        assert {m["type"] for m in metadata[doc.family]} == {doc.type}, doc.name
    exported = {name for name in metadata if name.startswith("archaudit_")}
    assert exported == {d.family for d in documented.values()}, "undocumented or missing archaudit metrics"
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "python_gc_collections",
    } <= metadata.keys()

    # Label sets, from every series Prometheus stored. Labels a metric does not document come from the
    # target, with the target's values: archaudit did not export them.
    from_target = {"job", "instance", *TARGET_LABELS}
    for name, stored in series.items():
        doc = documented[name]
        for labels in stored:
            bucket = {"le"} if labels["__name__"].endswith("_bucket") else set()
            own = labels.keys() - {"__name__"} - bucket - (from_target - doc.labels)
            assert own == doc.labels, f"{name}: {labels}"
            for key in TARGET_LABELS.keys() - doc.labels:
                assert labels[key] == TARGET_LABELS[key], f"{name} exports an undocumented {key}: {labels}"
    admitted = prom.series(f'archaudit_admission_reviews_total{{job="{JOB}"}}')
    assert {s["decision"] for s in admitted} <= {"allowed", "warned", "denied", "error"}
    nodes = {
        s["platform"]: value(prom, f'archaudit_nodes{{platform="{s["platform"]}"}}')
        for s in prom.series("archaudit_nodes")
    }
    assert nodes, "no archaudit_nodes series"
    assert all(n is not None and n >= 1 for n in nodes.values()), nodes
    assert value(prom, f'up{{job="{JOB}"}}') == 1.0


def _series_by_metric(prom: Prometheus, documented: dict[str, Documented]) -> dict[str, list[dict[str, str]]]:
    """Documented metric -> the label sets of its stored series; a sample name nobody documents fails."""
    owner = {sample: doc.name for doc in documented.values() for sample in doc.sample_names()}
    found: dict[str, list[dict[str, str]]] = {}
    for s in prom.series('{__name__=~"archaudit_.+"}'):
        assert s["__name__"] in owner, f"series {s} belongs to no documented metric"
        found.setdefault(owner[s["__name__"]], []).append(s)
    return found


def test_archaudit_down_fires_when_the_operator_stops(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A separate operator and Prometheus: stopping the shared one would break the other tests."""
    work = tmp_path_factory.mktemp("prometheus-down")
    ensure_namespace(cluster.admin, NAMESPACE)
    env = _operator_env(plain_registry, ARCHAUDIT_AUDIT_ENABLED="false")
    op = Operator(kubeconfig=cluster.kubeconfig, log_dir=work, env=env)
    rules = rules_with_short_for(RULES, work / "rules.yaml", SHORT_FOR)
    with (
        op,
        scraping(op, work / "prometheus", rules) as prom,
    ):
        stack = Stack(cluster, plain_registry, op, prom)
        up = f'up{{job="{JOB}"}}'
        # Before the first scrape `absent(archaudit_build_info)` is true: wait past that moment.
        stack.wait(
            lambda: (
                value(prom, up) == 1.0
                and value(prom, "archaudit_build_info") == 1.0
                and not alerts_named(prom, DOWN_ALERT)
            ),
            "archaudit scraped and ArchauditDown quiet",
        )
        op.stop()
        stack.wait(lambda: value(prom, up) == 0.0, f"{up} == 0", operator_running=False)
        alert = stack.wait(lambda: firing(prom, DOWN_ALERT), f"{DOWN_ALERT} firing", operator_running=False)
        assert alert["labels"]["severity"] == "critical"
