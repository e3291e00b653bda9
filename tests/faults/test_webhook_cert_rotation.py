"""The webhook's own certificate rotated under load, self-TLS mode (issue 16).

The operator renews its serving certificate before it expires (same CA: the caBundle stays) and its CA
in three steps (new CA trusted beside the old, serving certificate switched, old CA dropped). Here the
lifetimes are seconds, so the serving certificate is renewed every few seconds and the CA rotates
during the run, while:
- pods are created through the real kube-apiserver in an enforce namespace, through a webhook
  configuration of this test's own with failurePolicy Fail: a call the apiserver cannot make (a TLS
  failure) fails the create instead of being admitted unchecked, so it is seen. Every create must be
  answered by archaudit: amd64-only pods pinned to arm64 denied (403), multi-arch pods created;
- direct reviews go to the webhook, trusting what the webhook configuration publishes, as the
  apiserver does;
- a prober opens a new TLS connection to the webhook port every 100 ms and records the certificate
  served: the port never refuses, and the certificate changes without the server restarting.
Asserts zero failed creates, zero failed reviews, the apiserver's own webhook metrics without a call
error for this webhook, and that both the serving certificate and the caBundle did switch.
"""

from __future__ import annotations

import base64
import copy
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.faults.load import Figures, Outcome, PodLoad, ReviewCase, ReviewLoad, rss_kib
from tests.harness.cluster import Cluster
from tests.harness.kube import create_namespace, pod_manifest
from tests.harness.operator import Operator, ensure_namespace, webhook_configuration
from tests.harness.procs import wait_until

OPERATOR_NAMESPACE = "archaudit-faults-tls"  # a Secret of its own: the rotation starts from nothing
CERT_SECONDS, RENEW_BEFORE_SECONDS, CA_SECONDS = 8, 4, 16  # overlap between CA steps: 1 s
CA_ROTATIONS = 1  # complete ones (old CA dropped) to see before the load stops
RENEWALS = 5  # distinct serving certificates to see
RUN_BOUND = 60.0
REVIEW_DEADLINE = 5.0
HOOK = "pods-rotation.archaudit.io"
ARM64 = {"kubernetes.io/arch": "arm64"}


@dataclass
class Setup:
    cluster: Cluster
    op: Operator
    namespace: str
    configuration: str
    amd64_only: str
    multiarch: str


def _configuration(url: str, name: str, namespace: str) -> dict[str, Any]:
    """The chart's pod webhook, failing closed and limited to the test's namespace."""
    body = copy.deepcopy(webhook_configuration(url))
    (pods,) = [h for h in body["webhooks"] if h["name"] == "pods.archaudit.io"]
    pods["name"] = HOOK
    pods["failurePolicy"] = "Fail"
    pods["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    body["metadata"]["name"] = name
    body["webhooks"] = [pods]
    return body


@pytest.fixture(scope="module")
def setup(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("cert-rotation")
    ensure_namespace(cluster.admin, OPERATOR_NAMESPACE)
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"rotation-{suffix}", f"archaudit-rotation-{suffix}"
    create_namespace(cluster.admin, namespace)
    op = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=directory / "logs",
        env={
            "ARCHAUDIT_CLUSTER_NAMESPACE": OPERATOR_NAMESPACE,
            "ARCHAUDIT_WEBHOOK_TLS_SECRET": f"webhook-tls-{suffix}",
            "ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME": name,
            "ARCHAUDIT_WEBHOOK_CERT_VALIDITY_SECONDS": str(CERT_SECONDS),
            "ARCHAUDIT_WEBHOOK_CERT_RENEW_BEFORE_SECONDS": str(RENEW_BEFORE_SECONDS),
            "ARCHAUDIT_WEBHOOK_CA_VALIDITY_SECONDS": str(CA_SECONDS),
            "ARCHAUDIT_REGISTRY_INSECURE": plain_registry.registry.host,
            "ARCHAUDIT_AUDIT_ENABLED": "false",
        },
    )
    admission = client.AdmissionregistrationV1Api(cluster.admin)
    # Registered before the operator starts; until its caBundle is patched in, creates fail (closed).
    admission.create_validating_webhook_configuration(_configuration(op.url, name, namespace))
    samples = plain_registry.samples
    s = Setup(cluster, op, namespace, name, samples["amd64-docker"].reference, samples["multiarch"].reference)
    try:
        op.start(timeout=120)
        core = client.CoreV1Api(cluster.admin)

        def live() -> bool:
            try:
                core.create_namespaced_pod(
                    namespace, pod_manifest("canary", image=s.amd64_only, node_selector=ARM64), dry_run="All"
                )
            except ApiException as e:
                return e.status == 403 and HOOK in str(e.body)
            return False

        wait_until(
            live, timeout=90, interval=0.5, what="the apiserver to call the webhook", service=op.service
        )
        yield s
    finally:
        op.stop()
        admission.delete_validating_webhook_configuration(name)
        print(f"operator log: {op.service.log_path}")


def _published(s: Setup) -> bytes:
    found = client.AdmissionregistrationV1Api(s.cluster.admin).read_validating_webhook_configuration(
        s.configuration
    )
    return base64.b64decode(found.webhooks[0].client_config.ca_bundle or "")


class PublishedTrustReviews(ReviewLoad):
    """Direct reviews trusting the caBundle the webhook configuration holds at each request."""

    def __init__(self, s: Setup, cases: list[ReviewCase], *, rate: float) -> None:
        super().__init__(s.op.url, _ca_path(s.op), cases, rate=rate)
        self.setup = s
        self.trusted = b""

    def once(self) -> Outcome:
        bundle = _published(self.setup)
        if bundle != self.trusted:
            self._ctx = ssl.create_default_context(cadata=bundle.decode())
            self._opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ctx)
            )
            self.trusted = bundle
        return super().once()


def _ca_path(op: Operator) -> Path:
    assert op.service.env is not None
    return Path(op.service.env["ARCHAUDIT_WEBHOOK_CERT_DIR"]) / "ca.crt"


@dataclass
class Prober:
    """A new TLS connection to the webhook every `interval`: which certificate it serves, and failures."""

    port: int
    interval: float = 0.1
    served: list[tuple[float, int]] = field(default_factory=list)  # (when, serial) at each change
    failures: list[str] = field(default_factory=list)
    probes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # which certificate, not whether it is trusted: the loads say that
        while not self._stop.is_set():
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                    ctx.wrap_socket(raw) as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
                assert der is not None
                serial = x509.load_der_x509_certificate(der).serial_number
                if not self.served or self.served[-1][1] != serial:
                    self.served.append((time.monotonic(), serial))
            except (OSError, ssl.SSLError) as e:
                self.failures.append(repr(e))
            self.probes += 1
            self._stop.wait(self.interval)  # the probing rate, not a synchronisation

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="tls-prober", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _bundles_seen(s: Setup, seen: list[tuple[int, ...]], stop: threading.Event) -> None:
    """Record each distinct caBundle published (as the serials of its CAs, newest first)."""
    while not stop.is_set():
        try:
            serials = tuple(c.serial_number for c in x509.load_pem_x509_certificates(_published(s)))
            if not seen or seen[-1] != serials:
                seen.append(serials)
        except Exception:  # a read the apiserver did not answer: the next one will
            pass
        stop.wait(0.1)  # the sampling rate, not a synchronisation


def _webhook_call_errors(cluster: Cluster) -> dict[str, float]:
    """The apiserver's own account of calls to HOOK that failed (TLS included) or were failed open."""
    found: dict[str, float] = {}
    for line in cluster.text("/metrics").splitlines():
        if line.startswith("#") or f'name="{HOOK}"' not in line:
            continue
        metric = line.split("{", 1)[0]
        failed = (
            (metric == "apiserver_admission_webhook_rejection_count" and "calling_webhook_error" in line)
            or metric == "apiserver_admission_webhook_fail_open_count"
            or (metric == "apiserver_admission_webhook_request_total" and 'code="0"' in line)
        )
        if failed:
            found[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def _calls(cluster: Cluster) -> dict[str, float]:
    """apiserver_admission_webhook_request_total for HOOK by code."""
    by_code: dict[str, float] = {}
    for line in cluster.text("/metrics").splitlines():
        if line.startswith("apiserver_admission_webhook_request_total{") and f'name="{HOOK}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            by_code[code] = by_code.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return by_code


def test_certificate_and_ca_rotated_under_load_without_a_gap(setup: Setup) -> None:
    s, c = setup, setup.cluster
    assert s.op.service.proc is not None
    pid = s.op.service.proc.pid
    core = client.CoreV1Api(c.admin)
    denied_seen: list[str] = []

    def create(name: str) -> None:
        n = int(name.rsplit("-", 1)[1])
        if n % 2:
            pod = pod_manifest(name, image=s.amd64_only, node_selector=ARM64)
            try:
                core.create_namespaced_pod(s.namespace, pod, _request_timeout=10)
            except ApiException as e:
                if e.status == 403 and HOOK in str(e.body) and "denied the request" in str(e.body):
                    denied_seen.append(name)
                    return
                raise
            raise AssertionError(f"{name} can run nowhere, yet was created")
        core.create_namespaced_pod(s.namespace, pod_manifest(name, image=s.multiarch), _request_timeout=10)

    cases = [
        ReviewCase(
            s.namespace, pod_manifest("deny-me", image=s.amd64_only, node_selector=ARM64), denied=True
        ),
        ReviewCase(s.namespace, pod_manifest("admit-me", image=s.multiarch), denied=False),
    ]
    errors_before = _webhook_call_errors(c)
    calls_before = _calls(c)
    rss_before = rss_kib(pid)
    bundles: list[tuple[int, ...]] = []
    stop_bundles = threading.Event()
    watcher = threading.Thread(target=_bundles_seen, args=(s, bundles, stop_bundles), daemon=True)
    watcher.start()
    prober = Prober(int(s.op.url.rsplit(":", 1)[1])).start()
    reviews = PublishedTrustReviews(s, cases, rate=5).start()
    pods = PodLoad(create, rate=2).start()
    started = time.monotonic()

    def rotated() -> bool:
        # A complete CA rotation: a two-CA bundle, and after it a one-CA bundle with a CA not seen first.
        first_ca = bundles[0][0] if bundles else None
        complete = sum(
            1
            for i in range(1, len(bundles))
            if len(bundles[i - 1]) == 2 and len(bundles[i]) == 1 and bundles[i][0] != first_ca
        )
        return complete >= CA_ROTATIONS and len(prober.served) >= RENEWALS

    try:
        wait_until(rotated, timeout=RUN_BOUND, interval=0.2, what="the certificate and the CA to rotate")
        # The load keeps on a moment past the last switch (the old CA dropped): not a synchronisation.
        threading.Event().wait(2)
    finally:
        pods.stop()
        reviews.stop()
        prober.stop()
        stop_bundles.set()
        watcher.join(timeout=10)
    errors_after = _webhook_call_errors(c)
    calls = {k: v - calls_before.get(k, 0.0) for k, v in _calls(c).items()}
    pod_failures = [o.detail for o in pods.outcomes if not o.ok]
    total = reviews.figures(REVIEW_DEADLINE, started)
    steps = [
        line.split("webhook certificate in Secret", 1)[1].split(": ", 1)[1]
        for line in s.op.service.log_path.read_text(errors="replace").splitlines()
        if "webhook certificate in Secret" in line
    ]
    figures = Figures(
        "webhook-cert-rotation",
        {
            "run_s": round(time.monotonic() - started, 1),
            "serving_certificates_seen": len(prober.served),
            "ca_bundles_seen": [len(b) for b in bundles],
            "rotation_steps": {step: steps.count(step) for step in dict.fromkeys(steps)},
            "tls_probes": prober.probes,
            "tls_probe_failures": len(prober.failures),
            "pod_creates": len(pods.outcomes),
            "pod_creates_failed": len(pod_failures),
            "denied_by_the_webhook": len(denied_seen),
            "apiserver_webhook_calls_by_code": calls,
            "apiserver_webhook_call_errors": {
                k: v - errors_before.get(k, 0.0) for k, v in errors_after.items()
            },
            "reviews": total,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_kib(pid),
        },
    )
    print(figures.line())
    assert s.op.service.proc.poll() is None  # never restarted: the same process served throughout
    assert not prober.failures, prober.failures[:5]
    assert not pod_failures, pod_failures[:5]
    assert len(denied_seen) >= 1
    assert errors_after == errors_before, (errors_before, errors_after)
    assert set(calls) <= {"200", "403"}, calls  # every call answered: allowed, or denied by archaudit
    assert total["failed"] == total["wrong"] == total["over_deadline"] == 0, (
        total,
        [o.detail for o in reviews.outcomes if not o.ok][:5],
    )
