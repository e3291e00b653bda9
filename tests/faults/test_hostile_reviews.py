"""Malformed and hostile AdmissionReviews at volume, and a memory cap, straight to the webhook (issue 16).

Anything that reaches the port may send anything: fuzzed bodies (truncated, bytes flipped, subtrees
replaced by values of the wrong type), 8 MiB bodies, JSON nested 50,000 deep, shapes that explode in
memory, wrong kinds. Every one must be answered 400 (with a reason) or 200 allowed with its uid, never
a 500 or a dropped connection; the operator stays up, keeps deciding correctly, and its memory stays
bounded. The seed is printed: a failure replays with ARCHAUDIT_FUZZ_SEED.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.load import Figures, ReviewCase, ReviewLoad, admission_review, rss_kib
from tests.harness.cluster import Cluster
from tests.harness.kube import pod_manifest
from tests.harness.operator import NAMESPACE, Operator, ensure_namespace

FUZZED = 1500
LARGE = 24  # 8 MiB bodies
THREADS = 6
RSS_GROWTH_BOUND_KIB = 150 * 1024  # a few large bodies in flight at once, nothing kept afterwards


@pytest.fixture(scope="module")
def op(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    ensure_namespace(cluster.admin, NAMESPACE)
    operator = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path_factory.mktemp("hostile") / "logs",
        env={"ARCHAUDIT_AUDIT_ENABLED": "false", "ARCHAUDIT_LOG_LEVEL": "INFO"},
    )
    operator.start(timeout=120)
    try:
        yield operator
    finally:
        operator.stop()


def _ca(op: Operator) -> Path:
    assert op.service.env is not None
    return Path(op.service.env["ARCHAUDIT_WEBHOOK_CERT_DIR"]) / "ca.crt"


_WRONG_VALUES: list[Any] = [None, 0, -1, 1e308, "", "x" * 1000, [], [[]], {}, {"": {}}, True, [None] * 50]


def _mutate(rng: random.Random, valid: dict[str, Any]) -> bytes:
    """One hostile body derived from a valid review."""
    how = rng.randrange(7)
    text = json.dumps(valid).encode()
    if how == 0:  # truncated
        return text[: rng.randrange(len(text))]
    if how == 1:  # bytes flipped
        data = bytearray(text)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if how == 2:  # a subtree replaced by a value of the wrong type
        doc = copy.deepcopy(valid)
        node: Any = doc
        path: list[Any] = []
        while isinstance(node, dict | list) and node and rng.random() < 0.8:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            parent[key] = rng.choice(_WRONG_VALUES)
        return json.dumps(doc).encode()
    if how == 3:  # wrong kinds and versions
        doc = copy.deepcopy(valid)
        doc["kind"] = rng.choice(["Pod", "AdmissionReviewList", "", 7])
        doc["request"]["kind"] = rng.choice([{"kind": "Secret"}, "Pod", None])
        doc["request"]["resource"] = rng.choice([{"group": 1, "version": [], "resource": {}}, "pods"])
        return json.dumps(doc).encode()
    if how == 4:  # deep nesting somewhere inside
        depth = rng.choice([100, 900, 5_000, 50_000])
        return json.dumps(valid)[:-1].encode() + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    if how == 5:  # random junk
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
    return b""  # empty body


def _large(rng: random.Random, valid: dict[str, Any]) -> bytes:
    """An 8 MiB body: a huge annotation, a memory bomb of tiny objects, or 8 MiB of nesting."""
    limit = 8 * 1024 * 1024
    how = rng.randrange(3)
    if how == 0:
        doc = copy.deepcopy(valid)
        doc["request"]["object"]["metadata"]["annotations"] = {"a": "x" * (limit - 4096)}
        return json.dumps(doc).encode()
    if how == 1:
        return b'{"kind": "AdmissionReview", "request": [' + b"{}," * (limit // 3 - 20) + b"{}]}"
    return b"[" * (limit // 2) + b"]" * (limit // 2)


class Poster:
    """One HTTPS connection per thread (as the apiserver keeps them), reopened when the server closes it."""

    def __init__(self, url: str, ca: Path) -> None:
        host, port = url.removeprefix("https://").split(":")
        self.host, self.port = host, int(port)
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.conn: http.client.HTTPSConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
            try:
                self.conn.request(
                    "POST", "/validate/pods", body=body, headers={"Content-Type": "application/json"}
                )
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed between two requests: reopen once. A
                # second failure is the server dropping this very request.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def test_hostile_reviews_at_volume_are_answered_400_or_allowed(op: Operator) -> None:
    seed = int(os.environ.get("ARCHAUDIT_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"ARCHAUDIT_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    valid = admission_review("hostile", pod_manifest("p", image="registry.invalid/app:1"))
    bodies = [_mutate(rng, valid) for _ in range(FUZZED)] + [_large(rng, valid) for _ in range(LARGE)]
    rng.shuffle(bodies)
    assert op.service.proc is not None
    pid = op.service.proc.pid
    rss_before = rss_kib(pid)
    peak = [rss_before]
    statuses: dict[int, int] = {}
    bad: list[str] = []
    lock = threading.Lock()
    todo = iter(enumerate(bodies))

    def work() -> None:
        poster = Poster(op.url, _ca(op))
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, body = item
            try:
                status, answer = poster.post(body)
            except OSError as e:
                with lock:
                    bad.append(f"#{i} ({len(body)} bytes): {e!r}")
                continue
            ok = status == 400 or (status == 200 and json.loads(answer)["response"]["allowed"] is True)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if not ok:
                    bad.append(f"#{i} ({len(body)} bytes): {status} {answer[:200]!r}")
                if i % 50 == 0:
                    peak[0] = max(peak[0], rss_kib(pid))

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    seconds = time.monotonic() - started
    rss_after = rss_kib(pid)
    # Still deciding, correctly, after the storm: a known pod is answered with its uid.
    check = ReviewLoad(
        op.url, _ca(op), [ReviewCase("hostile", pod_manifest("after", image="x.invalid/a:1"), False)]
    )
    after = check.once()
    print(
        Figures(
            "hostile-reviews",
            {
                "bodies": len(bodies),
                "large_8MiB": LARGE,
                "seconds": round(seconds, 1),
                "statuses": statuses,
                "not_400_or_allowed": len(bad),
                "rss_kib_before": rss_before,
                "rss_kib_peak_sampled": peak[0],
                "rss_kib_after": rss_after,
            },
        ).line()
    )
    assert not bad, bad[:10]
    assert sum(statuses.values()) == len(bodies)
    assert op.service.alive(), op.tail()
    assert after.ok, after.detail
    assert not after.wrong, after.detail
    assert rss_after - rss_before < RSS_GROWTH_BOUND_KIB, (rss_before, rss_after)


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _dropped(op: Operator) -> float:
    prefix = 'archaudit_admission_reviews_dropped_total{reason="memory"} '
    return sum(float(line.split()[-1]) for line in op.metrics().splitlines() if line.startswith(prefix))


def test_memory_capped_near_steady_state_degrades_instead_of_crashing(op: Operator) -> None:
    # `ulimit -v` on the running operator (prlimit --as, the soft limit): its address space now, plus
    # 12 MiB. 8 MiB bodies no longer fit: they must be dropped and counted, everything else answered.
    assert op.service.proc is not None
    pid = op.service.proc.pid
    limit = (_vm_kib(pid, "VmSize") + 12 * 1024) * 1024
    subprocess.run(["prlimit", f"--pid={pid}", f"--as={limit}:"], check=True)
    rng = random.Random(int(os.environ.get("ARCHAUDIT_FUZZ_SEED", "16")))
    valid = admission_review("hostile", pod_manifest("p", image="registry.invalid/app:1"))
    statuses: dict[int, int] = {}
    poster = Poster(op.url, _ca(op))
    try:
        for i in range(60):
            status, _ = poster.post(_large(rng, valid) if i % 2 else _mutate(rng, valid))
            statuses[status] = statuses.get(status, 0) + 1
        check = ReviewLoad(
            op.url, _ca(op), [ReviewCase("hostile", pod_manifest("ok", image="x.invalid/a:1"), False)]
        )
        after = check.once()
        dropped = _dropped(op)
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", "--as=unlimited:"], check=True)
    print(
        Figures(
            "memory-capped",
            {"address_space_limit_mib": limit >> 20, "statuses": statuses, "dropped_memory_counted": dropped},
        ).line()
    )
    assert op.service.alive(), op.tail()
    assert set(statuses) <= {200, 400, 503}, statuses  # never a 500: dropped (503) and counted instead
    assert dropped == statuses.get(503, 0)
    assert after.ok, after.detail
    assert not after.wrong, after.detail
