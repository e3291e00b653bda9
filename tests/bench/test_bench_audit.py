"""The auditor at scale (`make bench`): a kwok cluster of many mixed-architecture nodes and pods.

What a user of a big cluster asks before installing archaudit: how long until every workload has its
report, how hard does it hit my registry and my apiserver, how much memory does it need. Each size runs
on a fresh control plane (tests/harness/cluster.py) with fake nodes (amd64, arm64, 32-bit arm on the old
k3s containerd), Deployments of 50 replicas created the way users create them (the ReplicaSet
controller makes the pods, the scheduler places them, kwok runs them), and images pushed to the real
test registry behind a counting pass-through proxy. Only then does `archaudit run` start; measured:

- time from operator start to every Deployment's ImageAudit being complete (a verdict over all its pods);
- registry requests (target: one resolution per unique image = HEAD + GET, + the config blob of a
  single-arch image);
- apiserver writes to ImageAudits, from the apiserver's own `apiserver_request_total` (only the
  operator writes ImageAudits), and resourceVersions of every report across two more full resyncs
  with nothing changed (target: 0 writes);
- the operator's peak RSS (VmHWM; target <= 150 MiB) and CPU time.

Sizes: `ARCHAUDIT_BENCH_AUDIT_SIZES="NODES:PODS,..."` (default `1000:10000`); workloads = PODS / 50,
unique images = min(100, workloads). `ARCHAUDIT_BENCH_MEMPROFILE=/tmp/audit-mem.txt` runs the operator
under tracemalloc (tests/bench/memprofile.py) and leaves its top allocation sites at the peak in that
file; the RSS figures of such a run are inflated by tracemalloc itself. Timings are printed, never
asserted; what is asserted is that every workload got a report with the verdict its images and node
selector call for.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from archaudit.adapters.kube import KubeApi
from tests.conftest import Seeded
from tests.harness.cluster import Cluster, FakeNode
from tests.harness.faultproxy import FaultProxy
from tests.harness.kube import pod_manifest
from tests.harness.operator import NAMESPACE, Operator, ensure_namespace, install_imageaudit_crd
from tests.harness.procs import wait_until
from tests.harness.registry import seed_many

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(4 * 3600)]

GROUP, VERSION, PLURAL = "archaudit.io", "v1alpha1", "imageaudits"
REPLICAS = 50
MAX_IMAGES = 100
NAMESPACES = 10  # workloads spread over a few namespaces, as teams have them
BENCH_LABEL = "archaudit-bench"
RESYNC_SECONDS = 30  # short, so that "two more full resyncs with nothing changed" fits the run
NODES_WAIT = 900.0
PODS_WAIT = float(os.environ.get("ARCHAUDIT_BENCH_AUDIT_PODS_WAIT", "2400"))
REPORTS_WAIT = 1800.0
PROGRESS_EVERY = 30.0
# Node architectures in the mix: 50% amd64, 35% arm64, 15% 32-bit arm (Raspberry Pi on k3s).
ARCH_MIX = (("amd64", 0.50), ("arm64", 0.35), ("arm", 0.15))
# What every seed_many image provides (tests/harness/registry.py): every third one is an index.
IMAGE_PLATFORMS: Callable[[int], frozenset[str]] = lambda i: (  # noqa: E731
    frozenset({"amd64", "arm64"}) if i % 3 == 0 else frozenset({"amd64" if i % 2 else "arm64"})
)
PINS: tuple[str | None, ...] = ("amd64", "arm64", None, "arm")
ROWS: list[dict[str, str]] = []
VARIANTS: list[str] = []
MEMPROFILE = Path(__file__).with_name("memprofile.py")


@dataclass(frozen=True)
class Size:
    nodes: int
    pods: int

    @property
    def workloads(self) -> int:
        return max(1, self.pods // REPLICAS)

    @property
    def images(self) -> int:
        return min(MAX_IMAGES, self.workloads)

    def __str__(self) -> str:
        return f"{self.nodes}n-{self.pods}p"


def _sizes() -> list[Size]:
    raw = os.environ.get("ARCHAUDIT_BENCH_AUDIT_SIZES", "1000:10000")
    sizes = []
    for part in raw.split(","):
        nodes, _, pods = part.strip().partition(":")
        sizes.append(Size(int(nodes), int(pods)))
    return sizes


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    image_index: int
    pin: str | None  # kubernetes.io/arch nodeSelector

    def expected(self) -> set[str]:
        """The verdicts the report may carry: exact when pinned, a problem of some kind otherwise."""
        provided = IMAGE_PLATFORMS(self.image_index)
        if self.pin is not None:
            return {"Compatible"} if self.pin in provided else {"Incompatible"}
        # Unpinned, it may land on every architecture and no image covers 32-bit arm: Incompatible
        # where a pod landed on a node it cannot run on, AtRisk if, by chance, none did.
        return {"Incompatible", "AtRisk"}


def _workloads(size: Size) -> list[Workload]:
    out = []
    for w in range(size.workloads):
        image = w % size.images
        # shift the pin per round over the images, so one image is seen under several selectors
        pin = PINS[(w + w // size.images) % len(PINS)]
        out.append(Workload(f"bench-{w % NAMESPACES}", f"app-{w:04d}", image, pin))
    return out


def _nodes(count: int) -> list[FakeNode]:
    nodes: list[FakeNode] = []
    for arch, share in ARCH_MIX:
        for i in range(round(count * share) if arch != ARCH_MIX[-1][0] else count - len(nodes)):
            n = len(nodes)
            address = f"198.18.{n // 250}.{n % 250 + 1}"  # RFC 2544 benchmarking range, never routed
            if arch == "arm":
                nodes.append(
                    FakeNode(
                        f"{arch}-{i:04d}",
                        arch,
                        address,
                        runtime="containerd://1.7.27-k3s1",
                        labels={"archaudit.io/variant": "v7"},
                        cpu="4",
                        memory="1Gi",
                    )
                )
            else:
                nodes.append(FakeNode(f"{arch}-{i:04d}", arch, address))
    return nodes


# --- figures ------------------------------------------------------------------------------------------


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError):
        mem_kib = 0
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} vCPU {model}, {mem_kib / 1024 / 1024:.0f} GiB, "
        f"Python {platform.python_version()}, load {load:.1f} at start"
    )


def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in KiB, and CPU seconds (utime + stime) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    figures = {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M)}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    figures["cpu_seconds"] = (int(fields[11]) + int(fields[12])) // ticks
    return figures


_REQUEST_TOTAL = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.M)


def _imageaudit_requests(cluster: Cluster) -> Counter[str]:
    """apiserver_request_total for imageaudits by verb (+subresource): only archaudit writes them."""
    with cluster._open(cluster.server + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    counts: Counter[str] = Counter()
    for labels, value in _REQUEST_TOTAL.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("resource") == "imageaudits":
            verb = fields.get("verb", "")
            sub = fields.get("subresource", "")
            counts[f"{verb}{'/' + sub if sub else ''}"] += int(float(value))
    return counts


_WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"}


def _writes(counts: Counter[str]) -> Counter[str]:
    """The write verbs only: reads include the benchmark's own polling."""
    return Counter({k: v for k, v in counts.items() if v and k.split("/")[0] in _WRITE_VERBS})


def _registry_requests(proxy: FaultProxy) -> Counter[str]:
    return Counter(f"{s.method} {s.path.split('/')[-2]}" for s in proxy.requests())


# --- cluster set-up -----------------------------------------------------------------------------------


def _bulk_client(cluster: Cluster, pool: int) -> Any:
    """An ApiClient whose connection pool fits `pool` threads (the default keeps 4 connections)."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def _in_parallel(fn: Callable[[Any], object], items: Sequence[Any], workers: int = 16) -> None:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in concurrent.futures.as_completed([pool.submit(fn, item) for item in items]):
            future.result()  # the first failure fails the benchmark, with its exception


_METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def _items(api: Any, path: str, accept: str = "application/json", **query: str) -> list[dict[str, Any]]:
    """A LIST's items (a metadata-only LIST of nothing says `items: null`)."""
    return list(_list_json(api, path, accept, **query).get("items") or [])


def _list_json(api: Any, path: str, accept: str = "application/json", **query: str) -> dict[str, Any]:
    found: dict[str, Any] = KubeApi(api).request_now(
        "GET", path, query=query, accept=accept, timeout=(3.05, 120)
    )
    return found


def _count(api: Any, path: str) -> int:
    """How many objects a LIST would return, without reading them (limit=1 and remainingItemCount)."""
    page = _list_json(api, path, _METADATA_ONLY, limit="1")
    return len(page.get("items") or []) + int(page["metadata"].get("remainingItemCount") or 0)


class _Progress:
    """Prints a progress line at most every PROGRESS_EVERY seconds while a long wait polls."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.monotonic()
        self.last = 0.0
        self.samples: list[tuple[float, int]] = []

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic() - self.started
        self.samples.append((now, done))
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            print(f"  {self.what}: {done}/{total} after {now:.0f}s", flush=True)


def _create_nodes(cluster: Cluster, api: Any, nodes: Sequence[FakeNode]) -> None:
    version = str(cluster.get("/version")["gitVersion"])
    core = client.CoreV1Api(api)
    _in_parallel(lambda n: core.create_node(n.manifest(version), _request_timeout=60), nodes)
    progress = _Progress("nodes Ready")

    def settled() -> bool:
        ready = 0
        for node in _items(api, "/api/v1/nodes", labelSelector="type=kwok"):
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = [t for t in node["spec"].get("taints", []) if t["key"].startswith("node.kubernetes.io/")]
            ready += conditions.get("Ready") == "True" and not taints
        progress(ready, len(nodes))
        return ready == len(nodes)

    wait_until(settled, timeout=NODES_WAIT, what=f"{len(nodes)} nodes Ready", interval=3.0)
    wait_until(
        lambda: _count(api, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases") >= len(nodes),
        timeout=NODES_WAIT,
        what=f"kwok to hold a node Lease for each of {len(nodes)} nodes",
        interval=3.0,
    )


def _deployment(workload: Workload, image: str) -> dict[str, Any]:
    template = pod_manifest(
        workload.name,
        image=image,
        node_selector={"kubernetes.io/arch": workload.pin} if workload.pin else None,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": workload.name, "labels": {BENCH_LABEL: "1"}},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": workload.name}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def _create_workloads(api: Any, workloads: Sequence[Workload], images: Sequence[str]) -> _Progress:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for ns in sorted({w.namespace for w in workloads}):
        core.create_namespace({"metadata": {"name": ns}})
        wait_until(
            lambda ns=ns: core.read_namespaced_service_account("default", ns),
            timeout=120,
            what=f"ServiceAccount default in {ns}",
            interval=0.5,
        )
    _in_parallel(
        lambda w: apps.create_namespaced_deployment(
            w.namespace, _deployment(w, images[w.image_index]), _request_timeout=60
        ),
        workloads,
    )
    total = len(workloads) * REPLICAS
    progress = _Progress("pods Running")

    def all_ready() -> bool:
        # Counting, not reading, 10,000 pods: the total from one item and remainingItemCount, the ones
        # not yet Running as metadata only. (Deployment status lags far behind on a busy controller.)
        total_now = _count(api, "/api/v1/pods")
        waiting = len(_items(api, "/api/v1/pods", _METADATA_ONLY, fieldSelector="status.phase!=Running"))
        progress(total_now - waiting, total)
        return total_now == total and waiting == 0

    try:
        wait_until(all_ready, timeout=PODS_WAIT, what=f"{total} pods Running", interval=5.0)
    except TimeoutError:
        done = progress.samples[-1][1] if progress.samples else 0
        pytest.fail(
            f"only {done}/{total} pods Running after {PODS_WAIT:.0f}s on this machine: "
            "run a smaller size (ARCHAUDIT_BENCH_AUDIT_SIZES=NODES:PODS)"
        )
    return progress


# --- the benchmark ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(plain_registry: Seeded) -> list[str]:
    return seed_many(plain_registry.registry, MAX_IMAGES, "auditbench")


@pytest.fixture(scope="module", autouse=True)
def _table() -> Iterator[None]:
    machine = _machine()
    yield
    if not ROWS:
        return
    sizes = ",".join(f"{s.nodes}:{s.pods}" for s in _sizes())
    command = f"ARCHAUDIT_BENCH_AUDIT_SIZES={sizes} make bench PYTEST_ARGS='-k test_audit_at_scale'"
    print(f"\n\nMachine: {machine}\nCommand: `{command}`\n")
    keys = list(ROWS[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in ROWS:
        print("| " + " | ".join(row[k] for k in keys) + " |")
    print("\n".join(["", *VARIANTS]))
    print(
        "\nTargets: registry requests = one HEAD + GET per unique image + the config blob of each "
        "single-arch image; ImageAudit writes in a resync with nothing changed = 0; peak RSS <= 150 MiB."
    )


@pytest.mark.parametrize("size", _sizes(), ids=str)
def test_audit_at_scale(
    size: Size, images: list[str], plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workloads = _workloads(size)
    print(
        f"\n== {size.nodes} nodes, {size.workloads * REPLICAS} pods, {size.workloads} Deployments, "
        f"{size.images} images",
        flush=True,
    )
    log_dir = tmp_path_factory.mktemp(f"bench-audit-{size}")
    proxy = FaultProxy(plain_registry.registry).start()
    cluster = Cluster(log_dir=log_dir / "control-plane", nodes=())
    op: Operator | None = None
    try:
        started = time.monotonic()
        cluster.start()
        api = _bulk_client(cluster, pool=32)
        _create_nodes(cluster, api, _nodes(size.nodes))
        nodes_time = time.monotonic() - started
        refs = [proxy.ref(images[i]) for i in range(size.images)]
        started = time.monotonic()
        _create_workloads(api, workloads, refs)
        pods_time = time.monotonic() - started
        print(
            f"  cluster + {size.nodes} nodes: {nodes_time:.0f}s; pods Running: {pods_time:.0f}s", flush=True
        )

        install_imageaudit_crd(cluster, log_dir)
        ensure_namespace(cluster.admin, NAMESPACE)
        proxy.set("pass")  # counts from zero
        before = _imageaudit_requests(cluster)
        env = {
            "ARCHAUDIT_LOG_LEVEL": "INFO",  # DEBUG logs every apiserver call: not what users run
            "ARCHAUDIT_REGISTRY_INSECURE": proxy.host,
            "ARCHAUDIT_AUDIT_RESYNC_SECONDS": str(RESYNC_SECONDS),
            "ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME": "archaudit-bench-unregistered",
            # The figures here are the audit's (one resolution per unique image, no rewrite when
            # nothing changed); the tag finder's own requests are counted in
            # tests/integration/test_tag_finder.py.
            "ARCHAUDIT_AUDIT_FIX_TAGS": "false",
        }
        op = Operator(kubeconfig=cluster.kubeconfig, log_dir=log_dir / "operator", env=env)
        profile = os.environ.get("ARCHAUDIT_BENCH_MEMPROFILE", "")
        if profile:  # where the operator's memory is at its peak: tracemalloc, see memprofile.py
            op.service.argv[1:3] = [str(MEMPROFILE), profile]
        started = time.monotonic()
        op.start(timeout=300)
        ready_time = time.monotonic() - started
        pid = op.service.proc.pid if op.service.proc else 0
        reports = _wait_reports(api, op, workloads)
        reports_time = time.monotonic() - started
        at_reports = _proc_status(pid)  # the cold start's peak, before the resyncs
        cold_registry = _registry_requests(proxy)
        cold_api = _imageaudit_requests(cluster) - before
        versions = {k: r["metadata"]["resourceVersion"] for k, r in reports.items()}
        proxy.set("pass")
        mark = _imageaudit_requests(cluster)
        _full_audits(op, 2)
        resync_api = _imageaudit_requests(cluster) - mark
        resync_registry = sum(_registry_requests(proxy).values())
        after = _reports(api)
        rewritten = sum(1 for k, rv in versions.items() if after[k]["metadata"]["resourceVersion"] != rv)
        figures = _proc_status(pid)
        events = _items(
            api, "/api/v1/events", fieldSelector="source=archaudit-auditor,reason=ImageArchMismatch"
        )
        op.stop()
        for name, overrides in _variants():
            _measure_variant(cluster, log_dir, size, name, {**env, **overrides})
    finally:
        if op is not None:
            op.stop()
        cluster.stop()
        proxy.stop()
        print(f"  logs: {log_dir}", flush=True)

    # Correctness: every workload has the report its images and selector call for.
    # Correctness, on the reports as they stand after the resyncs: every workload has the verdict its
    # images and node selector call for, counted over all its pods.
    final = {w: after.get((w.namespace, f"deployment-{w.name}")) for w in workloads}
    missing = [w.name for w, report in final.items() if report is None]
    assert not missing, f"workloads without a report: {missing}"
    reported = {w: report["status"] for w, report in final.items() if report is not None}
    wrong = {w.name: s["verdict"] for w, s in reported.items() if s["verdict"] not in w.expected()}
    assert not wrong, f"unexpected verdicts: {wrong}"
    miscounted = {w.name: s["pods"] for w, s in reported.items() if s["pods"] != REPLICAS}
    assert not miscounted, f"reports that did not count {REPLICAS} pods: {miscounted}"
    verdicts = Counter(s["verdict"] for s in reported.values())

    single = sum(1 for i in range(size.images) if len(IMAGE_PLATFORMS(i)) == 1)
    target = 2 * size.images + single
    ROWS.append(
        {
            "size": f"{size.nodes} nodes / {size.workloads * REPLICAS} pods / {size.workloads} Deployments "
            f"/ {size.images} images",
            "set-up: control plane + nodes Ready / pods Running": f"{nodes_time:.0f}s / {pods_time:.0f}s",
            "operator ready": f"{ready_time:.1f}s",
            "operator start → every report complete": f"{reports_time:.1f}s",
            "verdicts": ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items())),
            "registry requests, cold (target)": f"{sum(cold_registry.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(cold_registry.items()))}) ({target})",
            "ImageAudit writes, cold (target: create + status per report)": (
                f"{_writes(cold_api).total()} ({_fmt(_writes(cold_api))}) ({2 * len(workloads)})"
            ),
            "Events": str(len(events)),
            "2 resyncs unchanged: writes / rewritten reports / registry requests (target 0)": (
                f"{_writes(resync_api).total()} / {rewritten} / {resync_registry}"
            ),
            "peak RSS (VmHWM): at every report / at the end; RSS at the end": (
                f"{at_reports.get('VmHWM', 0) / 1024:.0f} / {figures.get('VmHWM', 0) / 1024:.0f} MiB "
                f"(<= 150); {figures.get('VmRSS', 0) / 1024:.0f} MiB"
            ),
            "operator CPU": f"{figures['cpu_seconds']}s",
        }
    )
    print("  " + json.dumps(ROWS[-1]), flush=True)


def _variants() -> list[tuple[str, dict[str, str]]]:
    """`ARCHAUDIT_BENCH_AUDIT_VARIANTS="name:K=V,K=V;name2:K=V"`: settings to compare on one cluster."""
    variants = []
    for part in filter(None, os.environ.get("ARCHAUDIT_BENCH_AUDIT_VARIANTS", "").split(";")):
        name, _, assignments = part.partition(":")
        pairs = (a.split("=", 1) for a in assignments.split(",") if "=" in a)
        variants.append((name.strip(), {k.strip(): v.strip() for k, v in pairs}))
    return variants


def _measure_variant(cluster: Cluster, log_dir: Path, size: Size, name: str, env: dict[str, str]) -> None:
    """Peak RSS of an operator started with `env` on the same cluster, up to its first full audit.

    The reports exist by then, so such a start writes nothing: a comparison of settings (paging,
    Events filter, allocator), not a figure for the table's cold start.
    """
    op = Operator(kubeconfig=cluster.kubeconfig, log_dir=log_dir / f"variant-{name}", env=env)
    try:
        op.start(timeout=300)
        pid = op.service.proc.pid if op.service.proc else 0
        wait_until(
            lambda: _last_full_audit(op) > 0,
            timeout=REPORTS_WAIT,
            what=f"the first full audit of variant {name}",
            interval=1.0,
            service=op.service,
        )
        first = _proc_status(pid)
        _full_audits(op, 1)
        figures = _proc_status(pid)
    finally:
        op.stop()
    row = (
        f"  variant {name} ({size}): peak RSS {first['VmHWM'] / 1024:.0f} MiB at the first full audit, "
        f"{figures['VmHWM'] / 1024:.0f} MiB after one more; RSS {figures['VmRSS'] / 1024:.0f} MiB; {env}"
    )
    VARIANTS.append(row)
    print(row, flush=True)


def _fmt(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def _reports(api: Any) -> dict[tuple[str, str], dict[str, Any]]:
    items = _items(api, f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    return {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in items}


def _complete(report: dict[str, Any] | None) -> bool:
    """A report with a verdict over all of its workload's pods (not an early one over a few)."""
    status = (report or {}).get("status") or {}
    return bool(status.get("verdict")) and status.get("pods") == REPLICAS


def _wait_reports(api: Any, op: Operator, workloads: Sequence[Workload]) -> dict[tuple[str, str], Any]:
    wanted = {(w.namespace, f"deployment-{w.name}") for w in workloads}
    progress = _Progress("complete reports")

    def written() -> dict[tuple[str, str], Any] | None:
        found = _reports(api)
        done = sum(1 for k in wanted if _complete(found.get(k)))
        progress(done, len(wanted))
        return found if done == len(wanted) else None

    try:
        found = wait_until(
            written, timeout=REPORTS_WAIT, what="every report", interval=0.5, service=op.service
        )
    except TimeoutError:
        print(op.tail(), file=sys.stderr)
        raise
    return found  # type: ignore[return-value]


def _last_full_audit(op: Operator) -> float:
    for line in op.metrics().splitlines():
        if line.startswith("archaudit_last_full_audit_timestamp_seconds "):
            return float(line.split()[1])
    return 0.0


def _full_audits(op: Operator, count: int) -> None:
    """Wait until `count` more full audits completed (the timestamp metric moved `count` times)."""
    seen: list[float] = []

    def moved() -> bool:
        for line in op.metrics().splitlines():
            if line.startswith("archaudit_last_full_audit_timestamp_seconds "):
                value = float(line.split()[1])
                if not seen or value > seen[-1]:
                    seen.append(value)
        return len(seen) > count

    wait_until(
        moved,
        timeout=RESYNC_SECONDS * (count + 2) + 600,
        what=f"{count} more full audits",
        interval=1.0,
        service=op.service,
    )
