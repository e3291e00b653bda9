"""The alert rules and the dashboard: valid for the real promtool, tested per alert, tied to real metrics.

promtool unit tests (tests/unit/promtool/*.yaml) give every alert a firing and a quiet case; the
mutation tests below prove they would notice an alert that never fires or always fires. Every metric an
alert or a dashboard panel queries must appear in a real scrape of archaudit.adapters.metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from archaudit.adapters import metrics
from archaudit.adapters.placement_metrics import PlacementMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/archaudit/files/prometheus-rules.yaml"
DASHBOARD = ROOT / "charts/archaudit/files/dashboard.json"
RUNBOOKS = ROOT / "docs/runbooks.md"
METRICS_DOC = ROOT / "docs/metrics.md"
PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yaml"))
RUNBOOK_URL = "https://github.com/archaudit/archaudit/blob/main/docs/runbooks.md#"
METRIC_NAME = re.compile(r"\b(?:archaudit|process|python)_[a-z0-9_]+\b")


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is not installed: `make deps` installs it (Debian package `prometheus`)")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def exported_sample_names() -> set[str]:
    """Sample names of a real scrape with every family populated."""
    state = metrics.MutableState(
        resolver_cache={"tag": (1, 1)},
        unresolved_images={"auth": 1},
        workloads={("Incompatible", "shop"): 1},
        pods_on_incompatible_nodes={("shop", "linux/arm64"): 1},
        nodes={"linux/arm64": 1},
        runnable_workloads={"linux/arm64": 1},
        runnable_cpu_cores={"linux/arm64": 0.5},
        events={"emitted": 1},
        cloud_tokens={("aws", "ok"): 1},
    )
    state.observe_runtime_mismatch("shop")
    state.full_audit_completed()
    state.cluster_state_age_from = lambda: 1.0
    meters = metrics.Metrics(state)
    meters.observe_admission("Pod", "CREATE", "enforce", "denied", 0.1)
    meters.observe_dropped_review("memory")
    meters.observe_stale_review()
    meters.on_request("registry-1.docker.io", "GET", 200, 0.1)
    meters.on_ratelimit("registry-1.docker.io", 5)
    # Placement's series live in the same registry (app.py registers them beside these).
    PlacementMetrics(meters.registry, lambda: (1, 0.0)).observe("placed", "")
    text = generate_latest(meters.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_file() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = run_promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def promtool_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"firing": n, "quiet": n} over every promtool test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES], path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                kind = "firing" if case.get("exp_alerts") else "quiet"
                counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
                counts[kind] += 1
    return cases


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    cases = promtool_cases()
    for alert in alerts():
        counts = cases.get(alert["alert"], {"firing": 0, "quiet": 0})
        assert counts["firing"] >= 1, (alert["alert"], counts)
        assert counts["quiet"] >= 1, (alert["alert"], counts)
    assert set(cases) <= {a["alert"] for a in alerts()}, "promtool tests for alerts that do not exist"


def _with_expr(tmp_path: Path, alertname: str, expr: str) -> list[Path]:
    """Copies of the rules file (one alert's expression replaced) and of the promtool tests using it."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alertname:
                rule["expr"] = expr
    mutated = tmp_path / "rules.yaml"
    mutated.write_text(yaml.safe_dump(doc, sort_keys=False))
    copies = []
    for path in PROMTOOL_TESTS:
        if f"alertname: {alertname}" not in path.read_text():
            continue  # promtool is slow to start; the other files cannot notice anyway
        test_doc = yaml.safe_load(path.read_text())
        test_doc["rule_files"] = [str(mutated)]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(test_doc, sort_keys=False))
        copies.append(copy)
    return copies


@pytest.mark.parametrize("alertname", [a["alert"] for a in alerts()])
@pytest.mark.parametrize(
    ("broken_expr", "what"), [("vector(1) == 0", "never fires"), ("vector(1)", "always fires")]
)
def test_promtool_tests_catch_an_alert_that(
    tmp_path: Path, alertname: str, broken_expr: str, what: str
) -> None:
    result = run_promtool("test", "rules", *_with_expr(tmp_path, alertname, broken_expr))
    assert result.returncode != 0, f"the promtool tests did not notice that {alertname} {what}"
    assert f"alertname: {alertname}" in result.stdout + result.stderr


# --- content of the rules ----------------------------------------------------------------------------


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    headings = {
        line.removeprefix("## ").strip().lower()
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in alerts():
        name = alert["alert"]
        assert name.startswith("Archaudit"), name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == RUNBOOK_URL + name.lower(), name
        assert name.lower() in headings, f"docs/runbooks.md has no section '## {name}'"


def test_every_runbook_says_how_to_confirm_and_how_to_fix() -> None:
    sections = RUNBOOKS.read_text().split("\n## ")
    by_name = {section.split("\n", 1)[0].strip(): section for section in sections}
    for alert in alerts():
        section = by_name[alert["alert"]]
        for part in ("**What it means.**", "**Confirm", "**Fix", "kubectl "):
            assert part in section, (alert["alert"], part)
    assert "docker buildx build --platform linux/amd64,linux/arm64" in RUNBOOKS.read_text()


def test_per_namespace_alerts_name_the_namespace_and_the_count() -> None:
    for alert in alerts():
        summary = alert["annotations"]["summary"]
        labels_used = set(re.findall(r"\$labels\.(\w+)", summary))
        if "archaudit_workloads" in alert["expr"] or "runtime_mismatches" in alert["expr"]:
            assert "namespace" in labels_used, alert["alert"]
            assert "$value" in summary, alert["alert"]
        # a label the summary names must survive the aggregations of the expression
        for group in re.findall(r"\bwithout \(([^)]*)\)", alert["expr"]):
            removed = {label.strip() for label in group.split(",")}
            assert not labels_used & removed, (alert["alert"], labels_used & removed)


def test_every_metric_an_alert_uses_is_exported() -> None:
    exported = exported_sample_names()
    for alert in alerts():
        used = set(METRIC_NAME.findall(alert["expr"]))
        assert used, alert["alert"]
        assert used <= exported, (alert["alert"], used - exported)


# --- dashboard ---------------------------------------------------------------------------------------


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_sample_names()
    exprs = dashboard_exprs(dashboard)
    assert exprs
    for expr in exprs:
        used = set(METRIC_NAME.findall(expr))
        assert used, expr
        assert used <= exported, (expr, used - exported)
    documented = METRICS_DOC.read_text()
    used_families = {m for expr in exprs for m in METRIC_NAME.findall(expr) if m.startswith("archaudit_")}
    for name in used_families:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{base}`" in documented, f"{base} is charted but not in docs/metrics.md"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL when it checks rules: every panel query becomes a recording rule, with the
    # Grafana variables replaced by what Grafana would put there.
    grafana = {"$__rate_interval": "5m", "$job": ".*", "$namespace": ".*"}
    rules = []
    for n, expr in enumerate(dashboard_exprs(json.loads(DASHBOARD.read_text()))):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_and_portable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # an id would clash on import
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            # no data source baked in: it must follow the variable on any Grafana
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_documented_metric_is_exported() -> None:
    documented = set(re.findall(r"^\| `(archaudit_[a-z_]+)`", METRICS_DOC.read_text(), flags=re.MULTILINE))
    exported = exported_sample_names()
    assert documented
    for name in documented:
        assert name in exported or f"{name}_count" in exported, name
    families = {
        re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exported if n.startswith("archaudit_")
    }
    undocumented = {f for f in families if f not in documented and f"{f}_total" not in documented}
    assert not undocumented
