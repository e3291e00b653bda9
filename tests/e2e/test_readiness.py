"""Migration readiness end to end: `status.runsOn`, replicas and requests in the ImageAudits the auditor
writes on the real control plane (kwok nodes), the fixing tag the auditor finds in a real registry, and
`archaudit readiness` run as a user runs it (a subprocess with a kubeconfig), totals exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.e2e.test_audit import AUDIT_WAIT, GROUP, PLURAL, RESYNC_SECONDS, VERSION, _audit, _metric, _table
from tests.harness.cluster import REPO, Cluster
from tests.harness.kube import create_namespace, deployment_manifest, wait_pods
from tests.harness.operator import NAMESPACE, Operator, install_imageaudit_crd
from tests.harness.procs import wait_until
from tests.harness.registry import push_image, push_index

MI, GI = 2**20, 2**30
MULTI_PLATFORMS = ["linux/amd64", "linux/arm/v7", "linux/arm64"]


@pytest.fixture(scope="module")
def auditor(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    directory = tmp_path_factory.mktemp("readiness")
    install_imageaudit_crd(cluster, directory)
    try:
        client.CoreV1Api(cluster.admin).create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as e:
        if e.status != 409:
            raise
    env = {
        "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
        "ARCHAUDIT_REGISTRY_TIMEOUT_SECONDS": "3",
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
    }
    op = Operator(kubeconfig=cluster.kubeconfig, log_dir=REPO / ".test-artifacts" / "e2e-readiness", env=env)
    op.start(timeout=90)
    try:
        yield op
    finally:
        op.stop()


def with_requests(
    manifest: dict[str, Any], cpu: str, memory: str, init: tuple[str, str] | None = None
) -> dict[str, Any]:
    spec = manifest["spec"]["template"]["spec"]
    spec["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": memory}}
    if init is not None:
        spec["initContainers"] = [
            {
                "name": "setup",
                "image": spec["containers"][0]["image"],
                "resources": {"requests": {"cpu": init[0], "memory": init[1]}},
            }
        ]
    return manifest


def readiness(cluster: Cluster, *args: str) -> dict[str, Any]:
    """`archaudit readiness ... -o json` as a user runs it: a process with a kubeconfig, nothing else."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "archaudit",
            "readiness",
            *args,
            "-o",
            "json",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def status_of(cluster: Cluster, namespace: str, name: str, want: Any) -> dict[str, Any]:
    """The report's status once `want(status)` holds."""

    def ready() -> dict[str, Any] | None:
        status = (_audit(cluster, namespace, name) or {}).get("status") or {}
        return status if status and want(status) else None

    found: dict[str, Any] = wait_until(ready, timeout=AUDIT_WAIT, what=f"ImageAudit {namespace}/{name}")  # type: ignore[assignment]
    return found


def test_runs_on_readiness_totals_and_the_fixing_tag(
    cluster: Cluster, namespace: str, auditor: Operator, plain_registry: Seeded
) -> None:
    registry = plain_registry.registry
    pusher = registry.pusher()
    repo = f"readiness/{namespace}/api"
    push_image(pusher, repo, "linux", "amd64", tag="1.0")
    kids = [push_image(pusher, repo, "linux", "amd64"), push_image(pusher, repo, "linux", "arm64")]
    push_index(pusher, repo, [k.descriptor() for k in kids], tag="1.2")
    api_10 = registry.ref(repo, "1.0")
    multi = plain_registry.samples["multiarch"].reference
    other = f"{namespace[:50]}-other"
    create_namespace(cluster.admin, other)
    apps = client.AppsV1Api(cluster.admin)
    try:
        # 3 x max(init 1 CPU / 16Mi, main 250m / 64Mi) = 3000m, 192Mi
        apps.create_namespaced_deployment(
            namespace,
            with_requests(
                deployment_manifest("web", image=multi, replicas=3), "250m", "64Mi", init=("1", "16Mi")
            ),
        )
        # 2 x 500m / 1Gi, amd64 only (pinned there, so it runs): blocked for arm64 until 1.2
        apps.create_namespaced_deployment(
            namespace,
            with_requests(
                deployment_manifest(
                    "api", image=api_10, replicas=2, node_selector={"kubernetes.io/arch": "amd64"}
                ),
                "500m",
                "1Gi",
            ),
        )
        # scaled to 0: ready, and frees nothing
        apps.create_namespaced_deployment(
            namespace, with_requests(deployment_manifest("idle", image=multi, replicas=0), "2", "2Gi")
        )
        apps.create_namespaced_deployment(
            other, with_requests(deployment_manifest("cache", image=multi, replicas=1), "100m", "100Mi")
        )
        wait_pods(cluster.admin, namespace, "app=web", count=3)
        wait_pods(cluster.admin, namespace, "app=api", count=2)

        web = status_of(cluster, namespace, "deployment-web", lambda s: s.get("pods") == 3)
        assert web["runsOn"] == MULTI_PLATFORMS
        assert (web["replicas"], web["requests"]) == (3, {"cpu": 1000, "memory": 64 * MI})
        assert web["containers"][0]["runsOn"] == MULTI_PLATFORMS
        idle = status_of(cluster, namespace, "deployment-idle", lambda s: "runsOn" in s)
        assert (idle["replicas"], idle["runsOn"]) == (0, MULTI_PLATFORMS)

        # The tag finder works in the background; the report is rewritten when it has an answer.
        api = status_of(
            cluster, namespace, "deployment-api", lambda s: s.get("containers", [{}])[0].get("fixes")
        )
        assert api["verdict"] == "Compatible"  # it runs where it is pinned...
        assert api["runsOn"] == ["linux/amd64"]  # ...and nowhere else
        assert (api["replicas"], api["requests"]) == (2, {"cpu": 500, "memory": GI})
        assert api["containers"][0]["fixes"] == {"linux/arm64": "1.2"}  # arm/v7: no tag provides it

        status_of(cluster, other, "deployment-cache", lambda s: "runsOn" in s)
        doc = readiness(cluster, "--platform", "linux/arm64", "-n", namespace)
        assert doc["platform"] == "linux/arm64"
        assert [(e["name"], e["replicas"], e["cpu"], e["memory"]) for e in doc["ready"]] == [
            ("web", 3, 3000, 192 * MI),
            ("idle", 0, 0, 0),
        ]
        assert doc["blocked"] == [
            {
                "namespace": namespace,
                "kind": "Deployment",
                "name": "api",
                "replicas": 2,
                "cpu": 1000,
                "memory": 2 * GI,
                "images": [api_10],
                "fix": f"{api_10}: 1.2 provides linux/arm64",
            }
        ]
        assert doc["totals"] == {
            "ready": {"workloads": 2, "cpu": 3000, "memory": 192 * MI},
            "blocked": {"workloads": 1, "cpu": 1000, "memory": 2 * GI},
        }
        print("readiness -n:", json.dumps(doc["totals"]))

        everywhere = readiness(cluster, "--platform", "linux/arm64", "-A")
        mine = [e for e in everywhere["ready"] if e["namespace"] in (namespace, other)]
        assert {(e["namespace"], e["name"], e["cpu"], e["memory"]) for e in mine} == {
            (namespace, "web", 3000, 192 * MI),
            (namespace, "idle", 0, 0),
            (other, "cache", 100, 100 * MI),
        }
        for group in ("ready", "blocked"):  # the totals are the sums of what is listed, cluster-wide
            entries = everywhere[group]
            assert everywhere["totals"][group] == {
                "workloads": len(entries),
                "cpu": sum(e["cpu"] for e in entries),
                "memory": sum(e["memory"] for e in entries),
            }
        print("readiness -A:", json.dumps(everywhere["totals"]))
        text = subprocess.run(
            [
                sys.executable,
                "-m",
                "archaudit",
                "readiness",
                "-n",
                namespace,
                "--kubeconfig",
                str(cluster.kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        assert text[:2] == [
            # --platform defaults to linux/arm64
            "Ready for linux/arm64: 2 workloads, 3 CPU, 192Mi memory requested",
            "Blocked:  1 workload, 1 CPU, 2Gi memory requested",
        ]
        assert text[4].split() == [api_10, "1", "1", "1", "2Gi", "1.2", "provides", "linux/arm64"]
        # linux/amd64: everything is ready
        assert (
            readiness(cluster, "--platform", "linux/amd64", "-n", namespace)["totals"]["blocked"]["workloads"]
            == 0
        )

        # kubectl get ia -o wide: the Runs On column
        table = _table(cluster, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
        column = [c["name"] for c in table["columnDefinitions"]].index("Runs On")
        cells = {r["cells"][0]: r["cells"][column] for r in table["rows"]}
        # the apiserver prints a list column as JSON
        assert cells["deployment-web"] == '["linux/amd64","linux/arm/v7","linux/arm64"]'
        assert cells["deployment-api"] == '["linux/amd64"]'

        # Metrics: per platform, workloads and requested cores that could run there.
        def counted() -> bool:
            cores = _metric(auditor, "archaudit_runnable_cpu_cores", 'platform="linux/arm64"') or 0.0
            return cores >= 3.1 - 1e-9  # web's 3 cores and cache's 0.1 at least

        wait_until(counted, timeout=AUDIT_WAIT, what="readiness gauges")
        assert (_metric(auditor, "archaudit_runnable_workloads", 'platform="linux/arm64"') or 0) >= 3
    finally:
        client.CoreV1Api(cluster.admin).delete_namespace(other)
