"""One `archaudit run` auditing the shared cluster, its validating webhook registered: the rig of the
fault cases that break the control plane under it (apiserver restarts, etcd compaction).

Why shared: those cases differ in the fault, not in what runs; each gets its own namespaces (an enforce
one for direct reviews, whose answers are known, and a warn one where pods are admitted and reported)
and leaves the cluster whole for the next module (`control_plane_caught_up`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from tests.conftest import Seeded
from tests.faults.load import control_plane_caught_up
from tests.harness.cluster import Cluster
from tests.harness.kube import create_namespace, pod_manifest
from tests.harness.operator import (
    NAMESPACE,
    Operator,
    ensure_namespace,
    install_imageaudit_crd,
    register_webhook,
    wait_until_denied,
)

ARM64 = {"kubernetes.io/arch": "arm64"}
START_WAIT = 120.0


@dataclass
class Setup:
    cluster: Cluster
    op: Operator
    enforce_ns: str  # direct reviews only: what is denied there is known
    warn_ns: str  # workloads and the pod load: admitted, so the auditor reports them
    amd64_only: str
    multiarch: str


def watch_driven(*, state_resync: float, state_stale: float) -> dict[str, str]:
    """Operator settings under which a report after the fault can only come from resumed watches:
    no periodic full pass, a short debounce, and the node/namespace re-list and staleness bounds."""
    return {
        "ARCHAUDIT_AUDIT_RESYNC_SECONDS": "3600",
        "ARCHAUDIT_AUDIT_DEBOUNCE_SECONDS": "0.2",
        "ARCHAUDIT_CLUSTER_STATE_RESYNC_SECONDS": str(state_resync),
        "ARCHAUDIT_CLUSTER_STATE_STALE_SECONDS": str(state_stale),
    }


def ca_file(op: Operator) -> Path:
    """The CA the operator's self-TLS wrote beside its serving certificate."""
    assert op.service.env is not None
    return Path(op.service.env["ARCHAUDIT_WEBHOOK_CERT_DIR"]) / "ca.crt"


@contextlib.contextmanager
def audited(
    cluster: Cluster, registry: Seeded, directory: Path, *, prefix: str, env: Mapping[str, str]
) -> Iterator[Setup]:
    """The operator (auditing, with `env`) and its webhook, up and denying; torn down afterwards."""
    install_imageaudit_crd(cluster, directory)
    ensure_namespace(cluster.admin, NAMESPACE)
    suffix = uuid.uuid4().hex[:6]
    enforce_ns, warn_ns = f"{prefix}-enforce-{suffix}", f"{prefix}-warn-{suffix}"
    create_namespace(cluster.admin, enforce_ns)
    create_namespace(cluster.admin, warn_ns, labels={"archaudit.io/mode": "warn"})
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=directory / "logs",
        env={
            "ARCHAUDIT_REGISTRY_INSECURE": registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "true",
            **env,
        },
    )
    # Registered before the operator starts, so its start-up patch of the caBundle applies at once.
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    configuration = register_webhook(cluster.admin, op.url)
    op.start(timeout=START_WAIT)
    samples = registry.samples
    s = Setup(
        cluster, op, enforce_ns, warn_ns, samples["amd64-docker"].reference, samples["multiarch"].reference
    )
    try:
        wait_until_denied(
            cluster.admin,
            enforce_ns,
            pod_manifest("canary", image=s.amd64_only, node_selector=ARM64),
            service=op.service,
            what="the webhook to deny an amd64-only pod pinned to arm64",
        )
        yield s
    finally:
        op.stop()
        admission.delete_validating_webhook_configuration(configuration["metadata"]["name"])
        print(f"operator log: {op.service.log_path}")
        control_plane_caught_up(cluster)
