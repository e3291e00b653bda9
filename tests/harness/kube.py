"""Small synchronous helpers over the official `kubernetes` client for e2e tests.

Why: tests should read as "this pod lands there", not as API plumbing; and every wait on the cluster
is a condition with a deadline (`wait_until`), never a sleep.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from tests.harness.procs import wait_until

__all__ = [
    "HARNESS_KUBELET",
    "create_namespace",
    "pod_manifest",
    "pods",
    "run_pod_here",
    "scheduling_failure",
    "wait_pods",
]

POD_WAIT_SECONDS = 90.0


def create_namespace(api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None) -> None:
    """Create a namespace and wait for its default ServiceAccount, without which pods are refused."""
    core = client.CoreV1Api(api)
    meta = client.V1ObjectMeta(name=name, labels=dict(labels or {}))
    core.create_namespace(client.V1Namespace(metadata=meta))
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=60,
        what=f"ServiceAccount default in namespace {name}",
    )


def pod_manifest(
    name: str,
    *,
    image: str = "registry.example/pause:3.10",
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal pod. kwok never pulls images, so any well-formed reference will do."""
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": image}]}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {"app": name})},
        "spec": spec,
    }


def deployment_manifest(
    name: str,
    *,
    replicas: int,
    image: str = "registry.example/pause:3.10",
    node_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment whose template is `pod_manifest(name, ...)` (selected by its app label)."""
    template = pod_manifest(name, image=image, node_selector=node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def pods(api: client.ApiClient, namespace: str, selector: str = "") -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


def wait_pods(
    api: client.ApiClient,
    namespace: str,
    selector: str,
    *,
    count: int,
    phase: str = "Running",
    timeout: float = POD_WAIT_SECONDS,
) -> list[Any]:
    """Wait until exactly `count` pods match `selector` and all are in `phase`; return them."""

    def settled() -> list[Any] | None:
        found = [p for p in pods(api, namespace, selector) if p.metadata.deletion_timestamp is None]
        if len(found) == count and all(p.status.phase == phase for p in found):
            return found
        return None

    found = wait_until(settled, timeout=timeout, what=f"{count} pod(s) {selector} {phase} in {namespace}")
    return cast(list[Any], found)


def scheduling_failure(api: client.ApiClient, namespace: str, name: str) -> str | None:
    """The scheduler's message when it refused the pod (PodScheduled=False/Unschedulable), else None."""
    pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    for cond in (pod.status.conditions if pod.status else None) or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return str(cond.message)
    return None


HARNESS_KUBELET = ("archaudit.test/kubelet", "harness")  # kwok leaves such Job pods Running for us


def run_pod_here(
    api: client.ApiClient,
    namespace: str,
    selector: str,
    *,
    kubeconfig_for: Callable[[str], Path],
    timeout: float = POD_WAIT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Play the kubelet for one pod: run its container's command here, report its exit code.

    kwok completes Job pods without running anything (hack/build-cluster-bins.sh, `kwok_stage`),
    except those labelled HARNESS_KUBELET. For one of those, this waits until it is Running, runs its
    only container's command with this venv's Python (the image's `python`) as the pod's
    ServiceAccount (`kubeconfig_for(name)` makes a kubeconfig with a bound token, as the kubelet
    mounts one), then writes the outcome to the pod's status as a kubelet would, so the Job controller
    (and whoever waits on the Job, such as helm) sees the real result.
    """
    core = client.CoreV1Api(api)

    def running() -> Any:
        found = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((p for p in found if p.status.phase == "Running"), None)

    pod = wait_until(running, timeout=timeout, what=f"a Running pod {selector} in {namespace}")
    (container,) = pod.spec.containers
    argv = [*(container.command or []), *(container.args or [])]
    if argv[:1] == ["python"]:
        argv[0] = sys.executable
    kubeconfig = kubeconfig_for(pod.spec.service_account_name or "default")
    done = subprocess.run(
        [*argv, "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=timeout
    )
    # Nobody else may have finished it meanwhile: kwok completing it unrun would make a pass meaningless.
    phase = core.read_namespaced_pod(pod.metadata.name, namespace).status.phase
    assert phase == "Running", f"pod {pod.metadata.name} is {phase}: something else played its kubelet"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {
        "exitCode": done.returncode,
        "reason": "Completed" if done.returncode == 0 else "Error",
        "startedAt": now,
        "finishedAt": now,
    }
    status = {
        "phase": "Succeeded" if done.returncode == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
        ],
    }
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})
    return done
