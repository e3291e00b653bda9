"""The control plane behaves like a mixed-architecture cluster: real version, arch-labelled Ready nodes,
selectors, taints and cordons honoured by the real scheduler, pods Running through kwok.

Everything archaudit's e2e tests assume about the harness is checked here first, so that a harness
problem fails here with a clear name rather than as a puzzling webhook test.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from tests.harness.cluster import FAKE_NODES, Cluster, FakeNode
from tests.harness.kube import deployment_manifest, pod_manifest, pods, scheduling_failure, wait_pods
from tests.harness.procs import wait_until

ARM64_TOLERATION = {
    "key": "kubernetes.io/arch",
    "operator": "Equal",
    "value": "arm64",
    "effect": "NoSchedule",
}


def _pinned_k8s_version(bin_dir: Path) -> str:
    """The Kubernetes version the build script pinned, read from its cache directory name."""
    match = re.search(r"k8s-(v\d+\.\d+\.\d+)", bin_dir.name)
    assert match, f"cannot read the Kubernetes pin from {bin_dir}"
    return match.group(1)


def test_apiserver_answers_with_the_pinned_version(cluster: Cluster) -> None:
    pin = _pinned_k8s_version(cluster.bin_dir)
    assert cluster.get("/version")["gitVersion"] == pin
    client_version = cluster.kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "{pin}"' in client_version  # kubectl is stamped too (helm's kubeVersion checks)


def test_every_fake_node_is_ready_with_its_platform(cluster: Cluster) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(cluster.admin).list_node().items}
    for want in FAKE_NODES:
        node = nodes[want.name]
        assert node.metadata.labels["kubernetes.io/arch"] == want.arch
        assert node.metadata.labels["kubernetes.io/os"] == want.os
        assert node.metadata.labels["kubernetes.io/hostname"] == want.name
        info = node.status.node_info
        assert (info.architecture, info.operating_system) == (want.arch, want.os)
        assert info.container_runtime_version == want.runtime
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", f"{want.name} not Ready"
        assert bool(node.spec.unschedulable) == want.unschedulable


def test_kubectl_shows_the_arch_column(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "nodes", "-L", "kubernetes.io/arch", "--no-headers").stdout
    arch_of = {line.split()[0]: line.split()[-1] for line in out.splitlines()}
    assert arch_of == {n.name: n.arch for n in FAKE_NODES}


def test_arm64_deployment_lands_on_the_untainted_arm64_node(cluster: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(cluster.admin)
    apps.create_namespaced_deployment(
        namespace, deployment_manifest("arm-app", replicas=3, node_selector={"kubernetes.io/arch": "arm64"})
    )
    running = wait_pods(cluster.admin, namespace, "app=arm-app", count=3)
    # arm64-tainted is arm64 too, but its NoSchedule taint is not tolerated
    assert {p.spec.node_name for p in running} == {"arm64-1"}
    assert all(p.status.pod_ip for p in running), "kwok gives Running pods an IP"


def test_a_pod_tolerating_the_arm64_taint_may_use_the_tainted_node(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.admin)
    pin = {"kubernetes.io/hostname": "arm64-tainted"}
    core.create_namespaced_pod(
        namespace, pod_manifest("tolerant", node_selector=pin, tolerations=[ARM64_TOLERATION])
    )
    core.create_namespaced_pod(namespace, pod_manifest("intolerant", node_selector=pin))

    [tolerant] = wait_pods(cluster.admin, namespace, "app=tolerant", count=1)
    assert tolerant.spec.node_name == "arm64-tainted"
    message = wait_until(
        lambda: scheduling_failure(cluster.admin, namespace, "intolerant"),
        timeout=60,
        what="the scheduler to refuse the pod without toleration",
    )
    assert "untolerated taint" in str(message)


def test_nothing_lands_on_the_cordoned_node(cluster: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(cluster.admin)
    core = client.CoreV1Api(cluster.admin)
    apps.create_namespaced_deployment(
        namespace, deployment_manifest("amd-app", replicas=6, node_selector={"kubernetes.io/arch": "amd64"})
    )
    core.create_namespaced_pod(
        namespace, pod_manifest("pinned", node_selector={"kubernetes.io/hostname": "cordoned-1"})
    )

    running = wait_pods(cluster.admin, namespace, "app=amd-app", count=6)
    assert {p.spec.node_name for p in running} <= {"amd64-1", "amd64-2"}
    message = wait_until(
        lambda: scheduling_failure(cluster.admin, namespace, "pinned"),
        timeout=60,
        what="the scheduler to refuse the pod pinned to the cordoned node",
    )
    assert "unschedulable" in str(message)
    assert all(p.spec.node_name != "cordoned-1" for p in pods(cluster.admin, namespace))


def test_deleting_a_deployment_garbage_collects_its_pods(cluster: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(cluster.admin)
    apps.create_namespaced_deployment(
        namespace, deployment_manifest("gc-app", replicas=2, node_selector={"kubernetes.io/arch": "amd64"})
    )
    wait_pods(cluster.admin, namespace, "app=gc-app", count=2)
    apps.delete_namespaced_deployment("gc-app", namespace, propagation_policy="Background")
    wait_until(
        lambda: not pods(cluster.admin, namespace, "app=gc-app"),
        timeout=90,
        what="the garbage collector and kwok to remove the deployment's pods",
    )


# --- teardown: nothing outlives the cluster, even when start-up fails half-way -------------------


class _FailsAfterEverythingStarted(Cluster):
    """Every process is up when this start() fails: the worst moment to leak processes."""

    def _create_nodes(self) -> None:
        raise RuntimeError("injected failure after all components started")


def _process_groups_alive(pgids: set[int]) -> list[str]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process went away while we looked
        state, pgid = fields[0], int(fields[2])
        if pgid in pgids and state != "Z":
            alive.append(stat.parent.name)
    return alive


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR ignores TIME_WAIT leftovers of closed connections; a listener still refuses
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def test_a_failed_start_leaves_no_process_and_no_port_behind(cluster: Cluster, tmp_path: Path) -> None:
    # `cluster` only to reuse its bin_dir and to not race the session cluster's start on 2 cores
    doomed = _FailsAfterEverythingStarted(work_dir=tmp_path / "c", bin_dir=cluster.bin_dir, nodes=())
    with pytest.raises(RuntimeError, match="injected failure"):
        doomed.start()

    pids = {svc.name: svc.proc.pid for svc in doomed.services if svc.proc is not None}
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert {name: pid for name, pid in pids.items() if _pid_exists(pid)} == {}  # reaped, not zombies
    # start_new_session made each pid its own process-group id: no descendant may survive either
    assert _process_groups_alive(set(pids.values())) == []
    ports = dataclasses.asdict(doomed.ports)
    busy = {name: port for name, port in ports.items() if not _port_is_free(port)}
    assert busy == {}


def test_built_binaries_report_their_pin(cluster: Cluster) -> None:
    out = subprocess.run(
        [str(cluster.bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"Kubernetes {_pinned_k8s_version(cluster.bin_dir)}"


def test_fake_node_manifest_carries_what_archaudit_reads() -> None:
    node = FakeNode("pi", "arm", runtime="containerd://1.7.27-k3s1", labels={"archaudit.io/variant": "v7"})
    m = node.manifest("v1.36.3+k3s1")
    assert m["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert m["metadata"]["labels"]["archaudit.io/variant"] == "v7"
    assert m["status"]["nodeInfo"]["containerRuntimeVersion"] == "containerd://1.7.27-k3s1"
    assert m["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3+k3s1"
