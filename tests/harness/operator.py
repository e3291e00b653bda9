"""`archaudit run` as a real child process against the test control plane, webhook in `url:` mode.

The apiserver calls https://127.0.0.1:PORT/validate/... directly. The operator makes its own CA and
serving certificate (tls_mode=self, SAN 127.0.0.1), stores them in a Secret and patches the caBundle
into the ValidatingWebhookConfiguration — the same code path a cluster install uses.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.procs import Service, free_port, wait_until

WEBHOOK_CONFIG = "archaudit"
NAMESPACE = "archaudit"


def webhook_configuration(
    url: str, *, release_namespace: str = NAMESPACE, timeout: int = 5
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration as the chart renders it in url mode (caBundle patched later)."""

    def hook(name: str, path: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": f"{name}.archaudit.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": timeout,
            "matchPolicy": "Equivalent",
            "clientConfig": {"url": f"{url}/validate/{path}"},
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["kube-system", "kube-node-lease", release_namespace],
                    },
                    {"key": "archaudit.io/ignore", "operator": "DoesNotExist"},
                ]
            },
            "rules": rules,
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [
            hook(
                "pods",
                "pods",
                [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    },
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["pods/ephemeralcontainers"],
                    },
                ],
            ),
            hook(
                "workloads",
                "workloads",
                [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
                    },
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["jobs", "cronjobs"],
                    },
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["replicationcontrollers"],
                    },
                ],
            ),
        ],
    }


class Operator:
    """One `archaudit run` process; `env` overrides go on top of the test defaults."""

    def __init__(self, *, kubeconfig: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.url = f"https://127.0.0.1:{self.webhook_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        full_env = {
            "KUBECONFIG": str(kubeconfig),
            "ARCHAUDIT_WEBHOOK_HOST": "127.0.0.1",
            "ARCHAUDIT_WEBHOOK_PORT": str(self.webhook_port),
            "ARCHAUDIT_WEBHOOK_TLS_MODE": "self",
            "ARCHAUDIT_WEBHOOK_EXTRA_SANS": "127.0.0.1",
            "ARCHAUDIT_WEBHOOK_CERT_DIR": str(log_dir / f"tls-{self.webhook_port}"),
            "ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME": WEBHOOK_CONFIG,
            "ARCHAUDIT_CLUSTER_NAMESPACE": NAMESPACE,
            "ARCHAUDIT_METRICS_HOST": "127.0.0.1",
            "ARCHAUDIT_METRICS_PORT": str(self.metrics_port),
            "ARCHAUDIT_LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        self.service = Service(
            f"archaudit-{self.webhook_port}",
            [sys.executable, "-m", "archaudit", "run"],
            log_dir,
            env=full_env,
        )

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def metrics(self) -> str:
        return self._get("/metrics")[1]

    def start(self, timeout: float = 60.0) -> Operator:
        self.service.start()
        wait_until(self.ready, timeout=timeout, what="archaudit /readyz", service=self.service)
        return self

    def stop(self) -> None:
        self.service.stop()

    def tail(self) -> str:
        return self.service.tail(80)

    def __enter__(self) -> Operator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
