"""Pull credentials as the kubelet finds them: the pod's imagePullSecrets, then its service account's.

The registry is the real docker-registry behind TLS (test CA) and htpasswd Basic auth. archaudit trusts
the CA through a k3s registries.yaml that carries NO credentials: whatever resolves the image here came
from the pod's Secrets, read through the API.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.harness.cluster import Cluster
from tests.harness.operator import (
    NAMESPACE,
    WEBHOOK_CONFIG,
    Operator,
    ensure_namespace,
    wait_until_denied,
    webhook_configuration,
)

ARM64_ONLY = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}
SECRET = "regcred"


def pull_secret(registry: Seeded) -> dict[str, Any]:
    reg = registry.registry
    assert reg.username
    assert reg.password
    auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    config = {"auths": {reg.host: {"auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def pod(name: str, image: str, *, secrets: bool, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "main", "image": image}], **spec}
    if secrets:
        body["imagePullSecrets"] = [{"name": SECRET}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, basic_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    directory = tmp_path_factory.mktemp("archaudit-creds")
    trust_only = basic_registry.registry.registries_yaml(
        directory / "registries.yaml", with_credentials=False
    )
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=directory,
        env={"ARCHAUDIT_REGISTRY_REGISTRIES_FILE": str(trust_only), "ARCHAUDIT_AUDIT_ENABLED": "false"},
    )
    op.start()
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    admission.create_validating_webhook_configuration(webhook_configuration(op.url))
    try:
        canary_ns = "archaudit-creds-canary"
        ensure_namespace(cluster.admin, canary_ns)
        core = client.CoreV1Api(cluster.admin)
        try:
            core.create_namespaced_secret(canary_ns, pull_secret(basic_registry))
        except ApiException as e:
            if e.status != 409:
                raise
        bad = pod("canary", basic_registry.samples["amd64-docker"].reference, secrets=True, **ARM64_ONLY)

        wait_until_denied(
            cluster.admin, canary_ns, bad, service=op.service, what="the webhook to deny the canary"
        )
        yield op
    finally:
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG)
        op.stop()


def denial(call: Any) -> str:
    with pytest.raises(ApiException) as denied:
        call()
    assert denied.value.status == 403
    return str(json.loads(denied.value.body)["message"])


def test_image_pull_secret_of_the_pod_is_used(
    cluster: Cluster, operator: Operator, basic_registry: Seeded, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_secret(namespace, pull_secret(basic_registry))
    image = basic_registry.samples["amd64-docker"].reference
    message = denial(
        lambda: core.create_namespaced_pod(namespace, pod("p", image, secrets=True, **ARM64_ONLY))
    )
    assert message.endswith(
        f"image {image} provides linux/amd64 only; nodes this pod can use are linux/arm64"
    )


def test_without_credentials_the_image_is_unresolved_and_admitted_with_a_warning(
    cluster: Cluster, operator: Operator, basic_registry: Seeded, namespace: str
) -> None:
    image = basic_registry.samples["amd64-docker"].reference
    core = client.CoreV1Api(cluster.admin)
    # The python client drops response headers on success; read the Warning header from the raw response.
    resp = core.create_namespaced_pod(
        namespace, pod("anon", image, secrets=False, **ARM64_ONLY), dry_run="All", _preload_content=False
    )
    warnings = list(resp.headers.get_all("Warning") or [])
    assert resp.status == 201
    assert any(f"image {image} could not be checked (auth)" in w for w in warnings), warnings


def test_service_account_pull_secret_is_used(
    cluster: Cluster, operator: Operator, basic_registry: Seeded, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_secret(namespace, pull_secret(basic_registry))
    core.create_namespaced_service_account(
        namespace, {"metadata": {"name": "builder"}, "imagePullSecrets": [{"name": SECRET}]}
    )
    image = basic_registry.samples["amd64-docker"].reference
    obj = pod("sa", image, secrets=False, serviceAccountName="builder", **ARM64_ONLY)
    message = denial(lambda: core.create_namespaced_pod(namespace, obj, dry_run="All"))
    assert f"image {image} provides linux/amd64 only" in message


def test_credentials_never_reach_logs_or_messages(
    cluster: Cluster, operator: Operator, basic_registry: Seeded, namespace: str
) -> None:
    username, password = basic_registry.registry.username, basic_registry.registry.password
    assert username
    assert password
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_secret(namespace, pull_secret(basic_registry))
    image = basic_registry.samples["multiarch"].reference
    core.create_namespaced_pod(namespace, pod("ok", image, secrets=True, **ARM64_ONLY), dry_run="All")
    # The password itself, and the forms it travels in (Basic header, dockerconfigjson "auth").
    secret_forms = {password, base64.b64encode(f"{username}:{password}".encode()).decode()}
    text = operator.service.log_path.read_text(errors="replace") + operator.metrics()
    assert not [s for s in secret_forms if s in text]
