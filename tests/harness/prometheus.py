"""A real Prometheus server (Debian's `/usr/bin/prometheus`) that scrapes archaudit and evaluates rules.

The promtool unit tests prove the alert expressions on synthetic series; this harness closes the loop
with the real thing: Prometheus scrapes a running operator's /metrics over HTTP, stores what it parsed,
evaluates the rule files and answers on its HTTP API exactly as it would in a cluster. Tests read
everything back through that API (`/api/v1/alerts`, `/api/v1/query`, `/api/v1/series`,
`/api/v1/metadata`), so they see the names, types and labels Prometheus actually ingested.

Scrape and evaluation intervals are one second so that a test waits seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.harness.procs import Service, free_port, wait_until

__all__ = ["PROMETHEUS_BIN", "Prometheus", "find_prometheus"]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
JOB = "archaudit"


def find_prometheus() -> Path | None:
    """The Prometheus server binary (Debian package `prometheus`), or None when it is not installed."""
    if os.access(PROMETHEUS_BIN, os.X_OK):
        return PROMETHEUS_BIN
    found = shutil.which("prometheus")
    return Path(found) if found else None


def scrape_config(
    targets: Sequence[str], rule_files: Sequence[Path], target_labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """prometheus.yml: scrape `targets` (host:port) every second as job `archaudit`, evaluate `rule_files`.

    `target_labels` are attached to every target, as service discovery would (the Prometheus operator
    gives a ServiceMonitor's targets `namespace` and `pod`). `honor_labels: true` as docs/metrics.md
    asks: archaudit's own `namespace` label (the workload's namespace) must win over the target's.
    """
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": JOB,
                "honor_labels": True,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets), "labels": dict(target_labels or {})}],
            }
        ],
    }


class PrometheusError(RuntimeError):
    """The Prometheus API answered with an error (a bad query is a bug in the test, not a wait)."""


class Prometheus:
    """One Prometheus server on a free loopback port, its config and TSDB in `work_dir`."""

    def __init__(
        self,
        *,
        targets: Sequence[str],
        work_dir: Path,
        rule_files: Sequence[Path] = (),
        target_labels: Mapping[str, str] | None = None,
        binary: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / "prometheus.yml"
        config = scrape_config(targets, rule_files, target_labels)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.service = Service(
            f"prometheus-{self.port}",
            [
                str(binary or find_prometheus() or PROMETHEUS_BIN),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            work_dir,
            cwd=work_dir,
        )

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.service.start()
        wait_until(self._ready, timeout=timeout, what="prometheus /-/ready", service=self.service)
        return self

    def stop(self) -> None:
        self.service.stop()

    def tail(self) -> str:
        return self.service.tail(40)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # --- HTTP API ----------------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer. Repeated params take a sequence."""
        query = urllib.parse.urlencode(
            [(k, v) for k, vs in (params or {}).items() for v in ([vs] if isinstance(vs, str) else vs)]
        )
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"GET {url}: {e.code} {e.read().decode(errors='replace')}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (`[{"metric": {...}, "value": [t, "v"]}]`)."""
        data = self.api("query", {"query": expr})
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gave a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing); resolved alerts are not listed."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def series(self, match: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.api("series", {"match[]": match})
        return found

    def metadata(self) -> dict[str, list[dict[str, str]]]:
        """Metric family -> [{"type", "help", "unit"}], as parsed from the scraped targets."""
        found: dict[str, list[dict[str, str]]] = self.api("metadata")
        return found

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", {"state": "active"})["activeTargets"]
        return active
