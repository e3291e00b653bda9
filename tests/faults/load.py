"""A steady load on archaudit while a fault is injected, and the figures users would notice.

Two streams run in threads until stopped, each at a fixed rate:
- pod creations through the real kube-apiserver (which calls the webhook, failurePolicy Ignore): what a
  Deployment rollout or a CI namespace does to a cluster;
- AdmissionReviews posted straight to the webhook, each with a known right answer: so an answer that
  is wrong, failed or late is seen even while the apiserver is down and cannot call the webhook.

Every outcome is kept with its time, so a test can ask "how many failed during the gap" and the
figures (answered / failed / over deadline / wrong) are printed the same way by every fault case.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.harness.cluster import Cluster
from tests.harness.procs import wait_until

__all__ = [
    "Figures",
    "Outcome",
    "PodLoad",
    "ReadyzProbe",
    "ReviewCase",
    "ReviewLoad",
    "control_plane_caught_up",
    "rss_kib",
]


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when the request was sent
    seconds: float
    ok: bool  # answered (HTTP 200 AdmissionReview / pod created or refused by a policy)
    wrong: bool = False  # answered, but not what the case expects
    detail: str = ""
    case: int = -1  # ReviewLoad: index of the ReviewCase this answers


@dataclass(frozen=True)
class ReviewCase:
    """A pod the webhook must answer a known way: `denied` True for a 403 in enforce mode."""

    namespace: str
    pod: Mapping[str, Any]
    denied: bool


def admission_review(namespace: str, pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod CREATE review as kube-apiserver sends it."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": pod["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "fault-load", "groups": ["system:authenticated"]},
            "object": {**pod, "metadata": {**pod["metadata"], "namespace": namespace}},
            "dryRun": False,
        },
    }


class _Stream:
    """A thread that calls `once()` every `1/rate` seconds (paced on a clock, not slept blindly)."""

    def __init__(self, name: str, rate: float) -> None:
        self.name = name
        self.interval = 1.0 / rate
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()

    def once(self) -> Outcome:
        raise NotImplementedError

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            outcome = self.once()
            with self._lock:
                self.outcomes.append(outcome)
            next_at += self.interval
            # Event.wait is the pacing of a fixed-rate load (and wakes at once on stop), not a sync.
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> _Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.at < end]

    def figures(self, deadline: float, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        chosen = self.between(start, end)
        return {
            "sent": len(chosen),
            "answered": sum(o.ok for o in chosen),
            "failed": sum(not o.ok for o in chosen),
            "over_deadline": sum(o.seconds > deadline for o in chosen),
            "wrong": sum(o.wrong for o in chosen),
        }


class ReviewLoad(_Stream):
    """AdmissionReviews straight to the webhook, cycling through `cases`."""

    def __init__(self, url: str, ca_file: Path, cases: list[ReviewCase], *, rate: float = 5.0) -> None:
        super().__init__("review-load", rate)
        self.url = url
        self.cases = cases
        self._i = 0
        self._ctx = ssl.create_default_context(cafile=str(ca_file))
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ctx)
        )

    def once(self) -> Outcome:
        index = self._i % len(self.cases)
        case = self.cases[index]
        self._i += 1
        body = json.dumps(admission_review(case.namespace, case.pod)).encode()
        request = urllib.request.Request(
            f"{self.url}/validate/pods", data=body, headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        try:
            with self._opener.open(request, timeout=10) as resp:
                answer = json.loads(resp.read())["response"]
        except (OSError, ValueError, KeyError) as e:
            return Outcome(started, time.monotonic() - started, ok=False, detail=repr(e), case=index)
        seconds = time.monotonic() - started
        allowed = bool(answer.get("allowed"))
        # Fail-open is not a wrong verdict (allowed with a warning saying why); a denial of a pod that
        # can run, or a silent allow of one that cannot, is.
        wrong = (not allowed and not case.denied) or (allowed and case.denied and not answer.get("warnings"))
        return Outcome(started, seconds, ok=True, wrong=wrong, detail=json.dumps(answer)[:300], case=index)


class PodLoad(_Stream):
    """Pods created through the apiserver (which calls the webhook), one new name each time."""

    def __init__(self, create: Callable[[str], None], *, rate: float = 3.0) -> None:
        super().__init__("pod-load", rate)
        self.create = create
        self.created: list[str] = []
        self._n = 0

    def once(self) -> Outcome:
        self._n += 1
        name = f"load-{self._n}"
        started = time.monotonic()
        try:
            self.create(name)
        except Exception as e:  # an apiserver that is down refuses the connection: that is the fault
            return Outcome(started, time.monotonic() - started, ok=False, detail=repr(e)[:300])
        with self._lock:
            self.created.append(name)
        return Outcome(started, time.monotonic() - started, ok=True)


class ReadyzProbe(_Stream):
    """/readyz polled as a kubelet would (more often): `ok` is a 200, `detail` the 503's reason."""

    def __init__(self, metrics_url: str, *, rate: float = 4.0) -> None:
        super().__init__("readyz-probe", rate)
        self.url = f"{metrics_url}/readyz"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def once(self) -> Outcome:
        started = time.monotonic()
        try:
            with self._opener.open(self.url, timeout=5) as resp:
                return Outcome(started, time.monotonic() - started, ok=resp.status == 200)
        except urllib.error.HTTPError as e:
            return Outcome(started, time.monotonic() - started, ok=False, detail=e.read().decode()[:300])
        except OSError as e:
            return Outcome(started, time.monotonic() - started, ok=False, detail=repr(e))


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Figures:
    """One fault case's figures, printed in one line for BENCHMARKS.md's Faults table."""

    case: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"FAULT {self.case}: " + ", ".join(f"{k}={v}" for k, v in self.values.items())


def control_plane_caught_up(cluster: Cluster) -> None:
    """Leave the shared cluster whole: kube-controller-manager serving new namespaces again.

    Its client-go reflectors back off on the errors a restarted apiserver answers at first (403 while
    RBAC fills its cache), doubling up to 30 s with jitter, and the steps only reset after 2 minutes of
    calm: after the restart case just before this one, a new namespace waited 68 s for its
    ServiceAccount, and the next module's timed out. The controllers are restarted instead (seconds).
    Every case that restarts the apiserver calls this when it ends.
    """
    started = time.monotonic()
    cluster.restart_controllers()
    name = f"after-fault-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.admin)
    core.create_namespace({"metadata": {"name": name}})
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=120,
        interval=0.25,
        what="kube-controller-manager to make a new namespace's ServiceAccount after the fault",
    )
    core.delete_namespace(name)
    print(f"control plane whole again {time.monotonic() - started:.1f}s after the case")
