"""Migration readiness: which workloads could move to a platform today, what that frees, what blocks the rest.

People moving to Graviton or adding Raspberry Pis ask "which of my workloads can run on arm64 now, how
much CPU and memory is that, and which images block the rest?". The auditor already judges every image
of every workload with the one engine; this module holds the pure parts around that answer:

- the platforms a report is judged against for `status.runsOn` (`target_nodes`): the cluster's node
  platforms (with the runtime profiles its nodes have), `cluster.platforms`, and the common targets;
- what one pod asks of the scheduler (`pod_requests`: CPU in millicores, memory in bytes, init
  containers as the scheduler counts them) and how many pods a workload runs (`replicas_of`);
- the readiness document `archaudit readiness` prints (`readiness`, `render_text`), built from
  ImageAudit statuses alone.

It contains no I/O code whatsoever: every rule is tested with plain values.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archaudit.core.platforms import LABEL_ARCH, LABEL_OS, Platform
from archaudit.core.scheduling import Node, virtual_nodes

__all__ = [
    "COMMON_TARGETS",
    "Requests",
    "cpu_millicores",
    "format_cpu",
    "format_memory",
    "memory_bytes",
    "pod_requests",
    "readiness",
    "render_text",
    "replicas_of",
    "target_nodes",
]

# Where people move to: Intel/AMD, Graviton/Ampere/Pi 4-5 (64-bit OS), Pi 2-4 with a 32-bit OS.
COMMON_TARGETS = ("linux/amd64", "linux/arm64", "linux/arm/v7")


# --- quantities ------------------------------------------------------------------------------------

# Kubernetes resource.Quantity: a signed decimal, then a binary (Ki..Ei), decimal (n..E) or exponent suffix.
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def _quantity(text: object) -> decimal.Decimal:
    """The value of a Kubernetes quantity ("100m", "1.5Gi", "2e3", 1) as an exact decimal."""
    raw = str(text).strip()
    match = _QUANTITY.match(raw)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {raw!r}")
    number, suffix = decimal.Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    exponent = int(suffix[1:]) if suffix[:1] in ("e", "E") and len(suffix) > 1 else _DECIMAL[suffix]
    return number.scaleb(exponent)


def cpu_millicores(text: object) -> int:
    """CPU in millicores, rounded up as Kubernetes does ("100m" -> 100, "0.5" -> 500, "1" -> 1000)."""
    return max(0, math.ceil(_quantity(text) * 1000))


def memory_bytes(text: object) -> int:
    """Memory in bytes, rounded up ("128Mi" -> 134217728, "1G" -> 10**9)."""
    return max(0, math.ceil(_quantity(text)))


@dataclass(frozen=True)
class Requests:
    """What one pod asks of the scheduler."""

    cpu: int = 0  # millicores
    memory: int = 0  # bytes

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu + other.cpu, self.memory + other.memory)

    def times(self, n: int) -> Requests:
        return Requests(self.cpu * n, self.memory * n)

    def most(self, other: Requests) -> Requests:
        """Per resource, the larger: the scheduler reserves each resource's peak separately."""
        return Requests(max(self.cpu, other.cpu), max(self.memory, other.memory))


def _container_requests(container: Mapping[str, Any]) -> Requests:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    # The apiserver defaults a missing request to the limit on Pods, not on the templates of workloads:
    # do it here so a template counts what its pods will ask for.
    cpu = requests.get("cpu", limits.get("cpu"))
    memory = requests.get("memory", limits.get("memory"))
    return Requests(
        cpu_millicores(cpu) if cpu is not None else 0,
        memory_bytes(memory) if memory is not None else 0,
    )


def pod_requests(spec: Mapping[str, Any]) -> Requests:
    """A pod's effective requests as kube-scheduler computes them.

    The regular containers and the sidecars (init containers with `restartPolicy: Always`) run together;
    each other init container runs alone, beside the sidecars started before it. The pod needs the larger
    of the two, per resource, plus the RuntimeClass `overhead`. Unparsable quantities count as 0 (the
    apiserver would have refused them).
    """
    sidecars = Requests()
    init_peak = Requests()
    for container in spec.get("initContainers") or ():
        own = _safe(container)
        if container.get("restartPolicy") == "Always":
            sidecars = sidecars + own
            init_peak = init_peak.most(sidecars)
        else:
            init_peak = init_peak.most(own + sidecars)
    running = sidecars
    for container in spec.get("containers") or ():
        running = running + _safe(container)
    overhead = spec.get("overhead") or {}
    extra = Requests(
        _safe_quantity(cpu_millicores, overhead.get("cpu")),
        _safe_quantity(memory_bytes, overhead.get("memory")),
    )
    return running.most(init_peak) + extra


def _safe(container: Mapping[str, Any]) -> Requests:
    try:
        return _container_requests(container)
    except (ValueError, decimal.InvalidOperation):
        return Requests()


def _safe_quantity(convert: Any, value: object) -> int:
    if value is None:
        return 0
    try:
        return int(convert(value))
    except (ValueError, decimal.InvalidOperation):
        return 0


def replicas_of(kind: str, spec: Mapping[str, Any], *, pods: int = 0) -> int:
    """How many pods a workload runs at once: what readiness multiplies the requests by.

    Deployments & co. say so in `spec.replicas` (default 1), Jobs in `spec.parallelism`, CronJobs in their
    job template's; a DaemonSet runs one per node it covers, which is how many pods it has (`pods`); a bare
    Pod is one.
    """
    if kind == "DaemonSet":
        return pods
    if kind == "Pod":
        return 1
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        kind = "Job"
    value = spec.get("parallelism" if kind == "Job" else "replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 1


# --- the platforms a report is judged against ----------------------------------------------------


def target_nodes(nodes: Iterable[Node], extra: Iterable[str], *, profiles: Sequence[str]) -> list[Node]:
    """One virtual node per kind of node (platform, runtime profiles), for `status.runsOn`.

    A platform the cluster has is judged with the runtime profiles of each kind of its nodes (a platform
    runs a workload only if every kind does); `extra` platforms (`cluster.platforms` and the common
    targets) that no node has yet are judged with `profiles` (the configured override, else the lenient
    `containerd`, as virtual nodes of cluster platforms are). Ordered by platform, then profiles.
    """
    kinds: dict[tuple[Platform, tuple[str, ...]], None] = {}
    seen: set[str] = set()
    for node in nodes:
        kinds.setdefault((node.platform, node.profiles))
        seen.add(str(node.platform))
    for text in extra:
        platform = _platform(text)
        if platform is not None and str(platform) not in seen:
            kinds.setdefault((platform, tuple(profiles)))
            seen.add(str(platform))
    ordered = sorted(kinds, key=lambda k: (str(k[0]), k[1]))
    return [
        Node(
            name=f"(target {p} {'+'.join(prof)})",
            platform=p,
            profiles=prof,
            labels={LABEL_OS: p.os, LABEL_ARCH: p.architecture},
            virtual=True,
        )
        for p, prof in ordered
    ]


def _platform(text: str) -> Platform | None:
    try:
        # As a node of that platform would be named: linux/arm64/v8 is linux/arm64, linux/arm is v7.
        return virtual_nodes([text])[0].platform
    except ValueError:
        return None


# --- the readiness document ----------------------------------------------------------------------


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def readiness(audits: Iterable[Mapping[str, Any]], platform: str) -> dict[str, Any]:
    """The `archaudit readiness -o json` document for `platform`, from ImageAudit objects.

    A workload is ready when `platform` is in its `status.runsOn`; otherwise it is blocked by the images
    whose own `runsOn` lacks it (unresolved images included: nothing proves they run). CPU (millicores)
    and memory (bytes) are the pod's requests times its replicas. Workloads are listed by what moving
    them frees, most first. Audits not judged for readiness yet (no status, or written by an archaudit
    without `runsOn`) are left out and counted in `pending`, so that nothing is called blocked unseen.
    """
    ready: list[dict[str, Any]] = []
    blocked: list[dict[str, Any]] = []
    pending = 0
    for audit in audits:
        status = audit.get("status") or {}
        if not status.get("verdict") or "runsOn" not in status:
            pending += 1
            continue
        meta = audit.get("metadata") or {}
        workload = ((audit.get("spec") or {}).get("workload")) or {}
        requests = status.get("requests") or {}
        replicas = _int(status.get("replicas", 1))
        entry: dict[str, Any] = {
            "namespace": str(meta.get("namespace", "")),
            "kind": str(workload.get("kind") or str(status.get("workload", "/")).split("/", 1)[0]),
            "name": str(workload.get("name") or str(status.get("workload", "/")).split("/", 1)[-1]),
            "replicas": replicas,
            "cpu": _int(requests.get("cpu")) * replicas,
            "memory": _int(requests.get("memory")) * replicas,
        }
        if platform in (status.get("runsOn") or ()):
            ready.append(entry)
            continue
        images: list[str] = []
        fixes: list[str] = []
        for container in status.get("containers") or ():
            if platform in (container.get("runsOn") or ()):
                continue
            image = str(container.get("image", ""))
            if image in images:
                continue
            images.append(image)
            tag = (container.get("fixes") or {}).get(platform)
            if tag:
                fixes.append(f"{image}: {tag} provides {platform}")
        entry["images"] = images
        entry["fix"] = "; ".join(fixes) or None
        blocked.append(entry)
    order = _frees_most
    ready.sort(key=order)
    blocked.sort(key=order)
    return {
        "platform": platform,
        "ready": ready,
        "blocked": blocked,
        "totals": {"ready": _totals(ready), "blocked": _totals(blocked)},
        "pending": pending,
    }


def _frees_most(entry: Mapping[str, Any]) -> tuple[int, int, str, str, str]:
    return (-entry["cpu"], -entry["memory"], entry["namespace"], entry["kind"], entry["name"])


def _totals(entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        "workloads": len(entries),
        "cpu": sum(e["cpu"] for e in entries),
        "memory": sum(e["memory"] for e in entries),
    }


def format_cpu(millicores: int) -> str:
    """As kubectl writes CPU: `3` cores when whole, else millicores (`1500m`, `250m`)."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(n: int) -> str:
    """As kubectl writes memory, in binary units with at most one decimal: `192Mi`, `1.5Gi`, `512`."""
    value = float(n)
    unit = ""
    for bigger in ("Ki", "Mi", "Gi", "Ti", "Pi"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text}{unit}"


def render_text(doc: Mapping[str, Any]) -> str:
    """The human form: totals, the images that block the most, then every workload (biggest first)."""
    platform = doc["platform"]
    totals = doc["totals"]
    lines = [
        f"Ready for {platform}: {_summary(totals['ready'])}",
        f"Blocked:  {_summary(totals['blocked'])}",
    ]
    if doc.get("pending"):
        lines.append(
            f"Not judged yet: {doc['pending']} ImageAudit(s) (new, or written by an older archaudit)"
        )
    # Which image to fix first: the one whose workloads it alone blocks free the most.
    by_image: dict[str, list[Mapping[str, Any]]] = {}
    for entry in doc["blocked"]:
        for image in entry["images"]:
            by_image.setdefault(image, []).append(entry)
    rows: list[list[str]] = []
    for image, entries in by_image.items():
        alone = [e for e in entries if len(e["images"]) == 1]
        prefix = image + ": "
        fix = next((f for e in entries for f in (e["fix"] or "").split("; ") if f.startswith(prefix)), "")
        cpu, memory = sum(e["cpu"] for e in alone), sum(e["memory"] for e in alone)
        rows.append(
            [
                image,
                str(len(entries)),
                str(len(alone)),
                format_cpu(cpu),
                format_memory(memory),
                fix[len(prefix) :] or "-",
                str(cpu),
            ]
        )
    if rows:
        rows.sort(key=lambda r: (-int(r[6]), -int(r[1]), r[0]))
        lines += [
            "",
            *_table(
                ["BLOCKING IMAGE", "WORKLOADS", "ALONE", "FREES CPU", "FREES MEMORY", "FIX"],
                [r[:6] for r in rows],
            ),
        ]
    if doc["ready"]:
        lines += ["", *_table(["READY", "REPLICAS", "CPU", "MEMORY"], [_row(e) for e in doc["ready"]])]
    if doc["blocked"]:
        blocked = [[*_row(e), ", ".join(e["images"]) or "-"] for e in doc["blocked"]]
        lines += ["", *_table(["BLOCKED", "REPLICAS", "CPU", "MEMORY", "BLOCKED BY"], blocked)]
    return "\n".join(lines)


def _row(e: Mapping[str, Any]) -> list[str]:
    return [
        f"{e['namespace']}/{e['kind']}/{e['name']}",
        str(e["replicas"]),
        format_cpu(e["cpu"]),
        format_memory(e["memory"]),
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]


def _summary(totals: Mapping[str, int]) -> str:
    n = totals["workloads"]
    return (
        f"{n} workload{'' if n == 1 else 's'}, {format_cpu(totals['cpu'])} CPU, "
        f"{format_memory(totals['memory'])} memory requested"
    )
