"""RBAC is really enforced by the harness's apiserver (--authorization-mode=Node,RBAC).

archaudit's chart grants narrow rights; its e2e tests can only prove them narrow if a ServiceAccount
without a Role is refused here. Impersonation (`kubectl --as`) is how those tests act as the operator.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.harness.cluster import Cluster, KubectlError
from tests.harness.kube import create_namespace
from tests.harness.procs import wait_until


def _as_sa(namespace: str, name: str) -> str:
    return f"--as=system:serviceaccount:{namespace}:{name}"


def _pod_reader_role(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def _binding(namespace: str, sa: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{sa}-reads-pods", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }


def _can_list_pods(cluster: Cluster, namespace: str, as_flag: str) -> bool:
    done = cluster.kubectl("get", "pods", "-n", namespace, as_flag, check=False)
    if done.returncode == 0:
        return True
    assert "Forbidden" in done.stderr or "forbidden" in done.stderr, done.stderr  # refused, not broken
    return False


def test_a_service_account_without_a_role_is_refused(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    as_nobody = _as_sa(namespace, "nobody")
    with pytest.raises(KubectlError) as refused:
        cluster.kubectl("get", "pods", "-n", namespace, as_nobody)
    assert "forbidden" in refused.value.stderr.lower()
    assert f"system:serviceaccount:{namespace}:nobody" in refused.value.stderr
    verdict = cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, as_nobody, check=False)
    assert verdict.stdout.strip() == "no"


def test_a_role_grants_exactly_its_namespace_and_verbs(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.admin)
    rbac = client.RbacAuthorizationV1Api(cluster.admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(namespace, _pod_reader_role(namespace))
    rbac.create_namespaced_role_binding(namespace, _binding(namespace, "reader"))
    as_reader = _as_sa(namespace, "reader")

    # the RBAC authorizer reads roles from an informer: the grant takes effect shortly after creation
    wait_until(
        lambda: _can_list_pods(cluster, namespace, as_reader),
        timeout=30,
        what="the pod-reader RoleBinding to take effect",
    )
    other = f"{namespace[:50]}-other"
    create_namespace(cluster.admin, other)
    try:
        assert not _can_list_pods(cluster, other, as_reader), "a Role leaked outside its namespace"
    finally:
        core.delete_namespace(other)
    delete = cluster.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, as_reader, check=False)
    assert delete.stdout.strip() == "no"


def test_impersonation_header_through_the_python_client(cluster: Cluster, namespace: str) -> None:
    """The raw Impersonate-User header, as archaudit's own tests can send it without kubectl."""
    core = client.CoreV1Api(cluster.admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    user = f"system:serviceaccount:{namespace}:nobody"
    with pytest.raises(client.ApiException) as refused:
        core.list_namespaced_pod(namespace, _headers={"Impersonate-User": user})
    assert refused.value.status == 403
    assert user in str(refused.value.body)
    assert core.list_namespaced_pod(namespace).items == []  # the admin itself still can
