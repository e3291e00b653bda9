"""`archaudit run` as a real child process against the test control plane, webhook in `url:` mode.

The apiserver calls https://127.0.0.1:PORT/validate/... directly. The operator makes its own CA and
serving certificate (tls_mode=self, SAN 127.0.0.1), stores them in a Secret and patches the caBundle
into the ValidatingWebhookConfiguration — the same code path a cluster install uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

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


def register_webhook(api: Any, url: str) -> dict[str, Any]:
    """Create (or replace, if an earlier run left it) the chart's configuration pointing at `url`."""
    from kubernetes import client  # the e2e side only
    from kubernetes.client.exceptions import ApiException

    admission = client.AdmissionregistrationV1Api(api)
    configuration = webhook_configuration(url)
    try:
        admission.create_validating_webhook_configuration(configuration)
    except ApiException as e:
        if e.status != 409:
            raise
        admission.replace_validating_webhook_configuration(configuration["metadata"]["name"], configuration)
    return configuration


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


def ensure_namespace(api: Any, name: str, labels: Mapping[str, str] | None = None) -> None:
    """Create `name` unless it exists (several test modules share the operator's namespace)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
    try:
        client.CoreV1Api(api).create_namespace(body)
    except ApiException as e:
        if e.status != 409:
            raise


# --- the operator as the chart installs it ------------------------------------------------------------
# Shared by tests/e2e/test_chart_install.py and `make demo`: the chart is installed in url mode
# (replicaCount 0) and `archaudit run` runs on the host with the environment the chart's Deployment
# would give it and the chart's ServiceAccount token, so a gap in the chart's RBAC shows up as a 403.

CHART = Path(__file__).resolve().parents[2] / "charts" / "archaudit"
# What differs between the chart's pod and a process on the host: where it listens and writes files.
_HOST_KEYS = (
    "KUBECONFIG",
    "ARCHAUDIT_WEBHOOK_HOST",
    "ARCHAUDIT_WEBHOOK_PORT",
    "ARCHAUDIT_WEBHOOK_CERT_DIR",
    "ARCHAUDIT_METRICS_HOST",
    "ARCHAUDIT_METRICS_PORT",
)


def helm(
    bin_dir: Path, *args: str, kubeconfig: Path, home: Path, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm against `kubeconfig`, with its cache and config kept under `home`."""
    argv, env = _helm_command(bin_dir, args, kubeconfig, home)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def helm_process(bin_dir: Path, *args: str, kubeconfig: Path, home: Path) -> subprocess.Popen[str]:
    """`helm` started in the background: for commands that wait on something the test must do."""
    argv, env = _helm_command(bin_dir, args, kubeconfig, home)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _helm_command(
    bin_dir: Path, args: Sequence[str], kubeconfig: Path, home: Path
) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return [str(bin_dir / "helm"), *args, "--kubeconfig", str(kubeconfig)], env


def manifest_documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def chart_env(documents: Sequence[Mapping[str, Any]], *, namespace: str) -> dict[str, str]:
    """The operator's environment as the chart's Deployment sets it, the pod's namespace filled in."""
    (deployment,) = [d for d in documents if d.get("kind") == "Deployment"]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for item in main.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        else:
            raise ValueError(f"cannot run {item['name']} from {item.get('valueFrom')} out of cluster")
    return env


def adopt_chart_env(op: Operator, env: Mapping[str, str], **extra: str) -> Operator:
    """Give a not yet started `op` the chart's environment, keeping its own host ports and files.

    The webhook certificate also names 127.0.0.1, the address the apiserver calls in url mode.
    """
    assert op.service.env is not None
    assert op.service.proc is None, "adopt_chart_env before start()"
    mine = {key: op.service.env[key] for key in _HOST_KEYS}
    op.service.env = {**op.service.env, **env, **mine, "ARCHAUDIT_WEBHOOK_EXTRA_SANS": "127.0.0.1", **extra}
    return op


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    *,
    namespace: str,
    name: str,
    path: Path,
    expiration_seconds: int = 3600,
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a TokenRequest token.

    The same kind of bound token the kubelet mounts into the chart's pod; server and CA come from
    the admin kubeconfig.
    """
    from kubernetes import client, config  # the e2e side and the demo only

    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    api = config.new_client_from_config(config_file=str(admin_kubeconfig))  # type: ignore[no-untyped-call]
    try:
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    finally:
        api.close()
    assert answer.status is not None, "TokenRequest answered without a token"
    user = f"system:serviceaccount:{namespace}:{name}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "archaudit", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": answer.status.token}}],
        "contexts": [{"name": "archaudit", "context": {"cluster": "archaudit", "user": user}}],
        "current-context": "archaudit",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


# RBAC's refusal ('pods is forbidden: User "system:serviceaccount:ns:sa" cannot list resource "pods"
# ...', quotes JSON-escaped in client errors) and kopf's name for it. Other 403s are not RBAC's: a
# namespace being deleted refuses new objects with 403 too.
_RBAC_REFUSAL = re.compile(r'forbidden: User |cannot [a-z]+ resource \\?"|APIForbiddenError')


def forbidden_lines(log_text: str) -> list[str]:
    """Log lines that report an API call refused by RBAC."""
    return [line for line in log_text.splitlines() if _RBAC_REFUSAL.search(line)]


def install_imageaudit_crd(cluster: Any, directory: Path) -> None:
    """The ImageAudit CRD exactly as the chart renders it, applied and Established (for auditor tests).

    `cluster` is a tests.harness.cluster.Cluster (not imported here: this module stays cluster-agnostic).
    """
    rendered = subprocess.run(
        [
            str(cluster.bin_dir / "helm"),
            "template",
            "archaudit",
            str(CHART),
            "--show-only",
            "templates/crd-imageaudits.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    path = directory / "crd-imageaudits.yaml"
    path.write_text(rendered)
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", "crd/imageaudits.archaudit.io", "--timeout=60s")


def wait_until_denied(
    api: Any, namespace: str, pod: Mapping[str, Any], *, service: Service, what: str, timeout: float = 90.0
) -> None:
    """Repeat a server-side dry-run of `pod` until the webhook denies it (403).

    The apiserver picks up a new webhook configuration or caBundle after a moment; until then, with
    failurePolicy Ignore, everything is admitted. A pod archaudit must deny is the canary.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)

    def denied() -> bool:
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except ApiException as e:
            return e.status == 403
        return False

    wait_until(denied, timeout=timeout, interval=0.5, what=what, service=service)


# --- placement: the MutatingWebhookConfiguration as the chart renders it in url mode ------------------


def mutating_webhook_configuration(
    url: str, *, release_namespace: str = NAMESPACE, default: str = "off", timeout: int = 4
) -> dict[str, Any]:
    """charts/archaudit/templates/placement-webhook.yaml in url mode (caBundle patched by the operator)."""
    opt_in = (
        {"key": "archaudit.io/placement", "operator": "NotIn", "values": ["off"]}
        if default == "on"
        else {"key": "archaudit.io/placement", "operator": "In", "values": ["on"]}
    )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [
            {
                "name": "placement.archaudit.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": timeout,
                "matchPolicy": "Equivalent",
                "clientConfig": {"url": f"{url}/mutate/pods"},
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", "kube-node-lease", release_namespace],
                        },
                        {"key": "archaudit.io/ignore", "operator": "DoesNotExist"},
                        opt_in,
                    ]
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
            }
        ],
    }


def wait_until_placed(
    api: Any, namespace: str, pod: Mapping[str, Any], *, service: Service, what: str, timeout: float = 90.0
) -> None:
    """Repeat a server-side dry-run of `pod` until placement annotates it (the mutating webhook is live)."""
    from kubernetes import client

    core = client.CoreV1Api(api)

    def placed() -> bool:
        created = core.create_namespaced_pod(namespace, pod, dry_run="All")
        return "archaudit.io/placement" in (created.metadata.annotations or {})

    wait_until(placed, timeout=timeout, interval=0.5, what=what, service=service)
