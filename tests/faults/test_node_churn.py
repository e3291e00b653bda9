"""Node churn under load: 200 nodes join and leave within about a minute (issue 16).

An autoscaler adding a node group and taking it away again. What users notice: while the nodes are
there the webhook judges pods against them (a pod pinned to their architecture, with an image that
lacks it, is denied), once they are gone it no longer does, the node map is exact afterwards (the
`archaudit_nodes` gauge equals the cluster's nodes) and nothing is kept of them (memory back).
Reviews keep being answered in time throughout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.faults.load import Figures, ReviewCase, ReviewLoad, rss_kib
from tests.harness.cluster import Cluster, FakeNode
from tests.harness.kube import create_namespace, pod_manifest
from tests.harness.operator import NAMESPACE, Operator, ensure_namespace
from tests.harness.procs import wait_until

CHURN = 200
ARCH = "s390x"  # no seeded image provides it, and no fake node of the cluster has it
STATE_BOUND = 30.0  # node map exact this long after the last change, at the latest
ANSWER_BOUND = 4.5


@dataclass
class Setup:
    op: Operator
    namespace: str
    ca: Path
    multiarch: str


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    ensure_namespace(cluster.admin, NAMESPACE)
    namespace = f"churn-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster.admin, namespace)
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path_factory.mktemp("node-churn") / "logs",
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "false",
            "ARCHAUDIT_LOG_LEVEL": "INFO",
        },
    )
    op.start(timeout=120)
    assert op.service.env is not None
    ca = Path(op.service.env["ARCHAUDIT_WEBHOOK_CERT_DIR"]) / "ca.crt"
    try:
        yield Setup(op, namespace, ca, plain_registry.samples["multiarch"].reference)
    finally:
        op.stop()


def _known(op: Operator) -> int:
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in op.metrics().splitlines()
            if line.startswith("archaudit_nodes{")
        )
    )


def _cluster_nodes(cluster: Cluster) -> int:
    return len(cluster.get("/api/v1/nodes")["items"])


def _denied(s: Setup, pod: dict[str, object]) -> bool:
    outcome = ReviewLoad(s.op.url, s.ca, [ReviewCase(s.namespace, pod, denied=True)]).once()
    assert outcome.ok, outcome.detail
    return '"allowed": false' in outcome.detail


def test_200_nodes_join_and_leave(cluster: Cluster, setup: Setup) -> None:
    s = setup
    core = client.CoreV1Api(cluster.admin)
    version = str(cluster.get("/version")["gitVersion"])
    names = [f"churn-{i}" for i in range(CHURN)]
    pinned = pod_manifest("pinned", image=s.multiarch, node_selector={"kubernetes.io/arch": ARCH})
    assert s.op.service.proc is not None
    pid = s.op.service.proc.pid
    assert not _denied(s, pinned)  # no such node yet: Unknown, admitted with a warning
    rss_before = rss_kib(pid)
    reviews = ReviewLoad(
        s.op.url,
        s.ca,
        [ReviewCase(s.namespace, pod_manifest("steady", image=s.multiarch), denied=False)],
        rate=5,
    ).start()

    def join(name: str) -> None:
        core.create_node(FakeNode(name, ARCH, f"198.51.100.{names.index(name) % 250 + 1}").manifest(version))

    def leave(name: str) -> None:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(join, names))
        joined = time.monotonic()
        wait_until(
            lambda: _known(s.op) == _cluster_nodes(cluster),
            timeout=STATE_BOUND,
            what="the node map to hold the new nodes",
        )
        join_seen = time.monotonic() - joined
        denied_while_there = _denied(s, pinned)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(leave, names))
        left = time.monotonic()
        wait_until(
            lambda: _known(s.op) == _cluster_nodes(cluster),
            timeout=STATE_BOUND,
            what="the node map to drop them",
        )
        leave_seen = time.monotonic() - left
    finally:
        reviews.stop()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(leave, names))
    denied_after = _denied(s, pinned)
    rss_after = rss_kib(pid)
    figures = reviews.figures(ANSWER_BOUND, started)
    print(
        Figures(
            "node-churn-200",
            {
                "join_s": round(joined - started, 1),
                "join_seen_s": round(join_seen, 1),
                "leave_s": round(left - joined, 1),
                "leave_seen_s": round(leave_seen, 1),
                "reviews": figures,
                "denied_while_there": denied_while_there,
                "denied_after": denied_after,
                "rss_kib_before": rss_before,
                "rss_kib_after": rss_after,
            },
        ).line()
    )
    assert denied_while_there  # the decision used the nodes that had joined
    assert not denied_after  # and no longer uses them
    assert figures["failed"] == figures["over_deadline"] == figures["wrong"] == 0, figures
    assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)  # 200 nodes are a few hundred KiB
