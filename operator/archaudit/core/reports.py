"""ImageAudit reports: what the auditor found about one workload, as a small, stable, bounded status.

The webhook asks "can this pod run where it may land?"; the auditor asks "can it run where it landed,
and everywhere else it may go?". The glue (audit.py) gathers the facts — a workload's pods with the node
each runs on and the nodes it may use, every image's resolution, runtime evidence from pod statuses and
Events — and this module turns them into the `.status` of an `ImageAudit`. It contains no I/O code
whatsoever, so every rule is tested with plain values.

Three promises shape it:
- bounded: a workload with 50 containers and 500 pods still gives a status under `MAX_STATUS_BYTES`
  (containers listed worst first and capped, platform lists capped, every text clipped in bytes);
- stable: the same facts give the same status and `fingerprint`, so an unchanged result causes no write;
- quiet: an Event is due once per problem (`Audit.announce`), not on every resync.

Verdicts of a workload (the CRD's enum, the same strings as `policy.Verdict`):
- Incompatible: a pod runs on a node that cannot run one of its images, the runtime said so
  (`exec format error`, `no match for platform in manifest`), or a pending pod has no node it may use
  that runs all its images;
- Unknown: an image could not be resolved (and nothing above proves incompatibility), or no pod and
  node to judge by;
- AtRisk: every pod runs where it is, but some nodes its pods may use could not run an image (or only
  depending on the node's containerd pull mode);
- Compatible: every image runs on every node the pods run on or may use.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from archaudit.core.errors import ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.platforms import Fit, Platform

__all__ = [
    "API_VERSION",
    "EVENT_REASON",
    "KIND",
    "MAX_CONTAINERS",
    "MAX_PLATFORMS",
    "MAX_STATUS_BYTES",
    "Audit",
    "Container",
    "EvidenceKind",
    "NodeLike",
    "PodFacts",
    "RuntimeEvidence",
    "Verdict",
    "WorkloadRef",
    "audit_name",
    "build",
    "classify_runtime_message",
    "evidence_from_event",
    "evidence_from_pod",
    "fingerprint",
    "object_body",
]

GROUP = "archaudit.io"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "ImageAudit"
EVENT_REASON = "ImageArchMismatch"

# Bounds. A listed container costs at most ~1.8 KB with every text at its cap, so 16 of them plus the
# summary stay below MAX_STATUS_BYTES, which the unit tests assert on adversarial input.
MAX_CONTAINERS = 16
MAX_PLATFORMS = 6
MAX_STATUS_BYTES = 40 * 1024
_MESSAGE_BYTES = 256
_CONTAINER_MESSAGE_BYTES = 200
_IMAGE_BYTES = 256
_NAME_BYTES = 64
_PLATFORM_BYTES = 40
_DIGEST_BYTES = 100
_NAME_MAX = 253  # metadata.name of the ImageAudit
_NO_NODES = "no node matches the pods' scheduling constraints"


class Verdict(enum.StrEnum):
    """A workload's verdict: the enum of `.status.verdict` in the CRD (same strings as policy.Verdict)."""

    COMPATIBLE = "Compatible"
    INCOMPATIBLE = "Incompatible"
    AT_RISK = "AtRisk"
    UNKNOWN = "Unknown"


# Worst first: the order in which problems are told and containers listed.
_SEVERITY = {Verdict.INCOMPATIBLE: 0, Verdict.UNKNOWN: 1, Verdict.AT_RISK: 2, Verdict.COMPATIBLE: 3}
_FIT_BADNESS = {Fit.RUNS: 0, Fit.AT_RISK: 1, Fit.NO: 2}


class NodeLike(Protocol):
    """What a report needs of a node; `scheduling.Node` has it (kept structural to stay independent)."""

    @property
    def name(self) -> str: ...

    @property
    def platform(self) -> Platform: ...

    @property
    def profiles(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class WorkloadRef:
    """The top-level workload a report is about, and owned by (ownerReference fields)."""

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Container:
    name: str
    image: str  # the reference text as written in the pod


class EvidenceKind(enum.StrEnum):
    """What a runtime said that proves an image does not fit the node it was started on."""

    EXEC_FORMAT = "exec-format-error"  # the binary is for another architecture
    NO_PLATFORM_MATCH = "no-platform-match"  # the image index has no entry for the node's platform


@dataclass(frozen=True)
class RuntimeEvidence:
    container: str
    kind: EvidenceKind
    message: str  # the runtime's words, clipped


@dataclass(frozen=True)
class PodFacts:
    """One pod of the workload, as the glue saw it."""

    name: str
    node: NodeLike | None  # where it runs; None while pending (or on a node we do not know)
    candidates: Sequence[NodeLike]  # the nodes it may use (its scheduling constraints, nodeName aside)
    containers: tuple[Container, ...]  # init, regular and ephemeral containers
    evidence: tuple[RuntimeEvidence, ...] = ()


@dataclass(frozen=True)
class Audit:
    """The outcome for one workload: the status to write plus what metrics and Events need."""

    workload: WorkloadRef
    verdict: Verdict
    message: str
    status: dict[str, Any]
    fingerprint: str
    announce: bool  # an Event is due: a problem not announced before
    incompatible_pods: Mapping[str, int]  # node platform -> pods running where an image cannot run
    unresolved: Mapping[str, str]  # image -> reason (errors.Reason value)
    evidence: tuple[tuple[str, RuntimeEvidence], ...]  # (pod name, evidence)


# --- runtime evidence -------------------------------------------------------------------------------

# Phrases runtimes print when an image does not fit the node. Lower case; matched case-insensitively.
_EXEC_FORMAT_PHRASES = ("exec format error",)
_NO_MATCH_PHRASES = (
    "no match for platform in manifest",  # containerd
    "no matching manifest for",  # docker / cri-dockerd
    "no image found in manifest list for architecture",  # cri-o (containers/image)
)


def classify_runtime_message(text: str) -> EvidenceKind | None:
    """The kind of evidence a runtime message carries, or None when it says nothing about platforms."""
    lowered = text.lower()
    if any(p in lowered for p in _EXEC_FORMAT_PHRASES):
        return EvidenceKind.EXEC_FORMAT
    if any(p in lowered for p in _NO_MATCH_PHRASES):
        return EvidenceKind.NO_PLATFORM_MATCH
    return None


_STATUS_KEYS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")


def evidence_from_pod(pod: Mapping[str, Any]) -> tuple[RuntimeEvidence, ...]:
    """Evidence in a pod's container statuses: waiting/terminated reasons and messages, now or last time.

    A crash-looping container shows `exec format error` in `lastState.terminated` while it waits in
    CrashLoopBackOff, so both states are read. One piece of evidence per container and kind.
    """
    status = pod.get("status") or {}
    found: dict[tuple[str, EvidenceKind], RuntimeEvidence] = {}
    for key in _STATUS_KEYS:
        for cs in status.get(key) or ():
            name = str(cs.get("name", ""))
            for text in _state_texts(cs):
                kind = classify_runtime_message(text)
                if kind is not None and (name, kind) not in found:
                    found[(name, kind)] = RuntimeEvidence(name, kind, _clip(text, _CONTAINER_MESSAGE_BYTES))
    return tuple(found[k] for k in sorted(found))


def _state_texts(container_status: Mapping[str, Any]) -> Iterable[str]:
    for state_key in ("state", "lastState"):
        state = container_status.get(state_key) or {}
        for phase in ("waiting", "terminated"):
            detail = state.get(phase) or {}
            text = " ".join(str(detail.get(k) or "") for k in ("reason", "message")).strip()
            if text:
                yield text


def evidence_from_event(event: Mapping[str, Any]) -> tuple[str, RuntimeEvidence] | None:
    """(pod name, evidence) from a core/v1 Event about a pod's container, or None.

    The kubelet's pull failures ("Failed to pull image ...: no match for platform in manifest") are
    Events on the pod with `involvedObject.fieldPath` = `spec.containers{name}`; the pod status later
    only says ImagePullBackOff, so the Event is the better witness.
    """
    involved = event.get("involvedObject") or event.get("regarding") or {}
    if involved.get("kind") != "Pod" or event.get("reason") == EVENT_REASON:
        return None  # our own Events quote the runtime's words: they are no new evidence
    text = str(event.get("message") or event.get("note") or "")
    kind = classify_runtime_message(text)
    if kind is None:
        return None
    container = _container_of_field_path(str(involved.get("fieldPath") or ""))
    return str(involved.get("name", "")), RuntimeEvidence(
        container, kind, _clip(text, _CONTAINER_MESSAGE_BYTES)
    )


def _container_of_field_path(path: str) -> str:
    # "spec.containers{api}", "spec.initContainers{setup}", "spec.ephemeralContainers{debug}"
    start, end = path.find("{"), path.rfind("}")
    return path[start + 1 : end] if 0 <= start < end else ""


# --- building the report ----------------------------------------------------------------------------


@dataclass
class _PlatformTally:
    platform: Platform
    fit: Fit | None = None  # worst fit over the nodes of this platform; None: image unresolved
    pods: int = 0  # pods running on nodes of this platform
    no_pods: int = 0  # of those, on a node the image cannot run on


@dataclass
class _ContainerTally:
    container: Container
    result: ImagePlatforms | ResolutionError
    platforms: dict[str, _PlatformTally] = field(default_factory=dict)
    evidence: list[RuntimeEvidence] = field(default_factory=list)
    pending_pods: int = 0
    pending_nowhere: int = 0  # pending pods none of whose candidate nodes can run this image

    @property
    def nowhere_to_go(self) -> bool:
        """No pod runs and no pending pod has a candidate node that runs this image."""
        running = any(p.pods for p in self.platforms.values())
        return not running and 0 < self.pending_nowhere == self.pending_pods

    def tally(self, node: NodeLike, fit: Fit | None, *, running: bool) -> None:
        key = str(node.platform)
        entry = self.platforms.get(key)
        if entry is None:
            entry = self.platforms[key] = _PlatformTally(node.platform)
        if fit is not None and (entry.fit is None or _badness(fit) > _badness(entry.fit)):
            entry.fit = fit
        if running:
            entry.pods += 1
            entry.no_pods += fit is Fit.NO


@dataclass(frozen=True)
class _Judgement:
    verdict: Verdict
    reason: str
    message: str


class _Fits:
    """Memo of `ImagePlatforms.runnable` per (image, node platform, profiles): 500 pods, few answers."""

    def __init__(self, images: Mapping[str, ImagePlatforms | ResolutionError]) -> None:
        self._images = images
        self._memo: dict[tuple[str, Platform, tuple[str, ...]], Fit] = {}

    def of(self, image: str, node: NodeLike) -> Fit | None:
        result = self._images[image]
        if isinstance(result, ResolutionError):
            return None
        key = (image, node.platform, tuple(node.profiles))
        fit = self._memo.get(key)
        if fit is None:
            fit = self._memo[key] = result.runnable(node.platform, node.profiles)[0]
        return fit


def build(
    workload: WorkloadRef,
    pods: Sequence[PodFacts],
    images: Mapping[str, ImagePlatforms | ResolutionError],
    *,
    now: str,
    previous: Mapping[str, Any] | None = None,
    extra_evidence: Iterable[tuple[str, RuntimeEvidence]] = (),
) -> Audit:
    """The report for `workload` from its pods; `images` must hold a result for every container image.

    `now` is the RFC 3339 time of this check; `previous` the current `.status` (for condition
    transition times and the last announced problem); `extra_evidence` (pod name, evidence) pairs come
    from Events.
    """
    fits = _Fits(images)
    tallies: dict[tuple[str, str], _ContainerTally] = {}
    stuck: list[str] = []  # pending pods with candidates, none of which runs all their images
    no_candidates = 0
    pod_names = {p.name for p in pods}
    evidence = [(p.name, e) for p in pods for e in p.evidence]
    evidence += [(pod, e) for pod, e in extra_evidence if pod in pod_names and (pod, e) not in evidence]
    incompatible_pods: dict[str, int] = {}

    for pod in pods:
        pod_tallies = []
        for c in pod.containers:
            t = tallies.get((c.name, c.image))
            if t is None:
                t = tallies[(c.name, c.image)] = _ContainerTally(c, images[c.image])
            pod_tallies.append(t)
        if pod.node is not None:
            cannot = False
            for t in pod_tallies:
                fit = fits.of(t.container.image, pod.node)
                t.tally(pod.node, fit, running=True)
                cannot = cannot or fit is Fit.NO
            if cannot:
                key = str(pod.node.platform)
                incompatible_pods[key] = incompatible_pods.get(key, 0) + 1
        for node in pod.candidates:
            for t in pod_tallies:
                t.tally(node, fits.of(t.container.image, node), running=False)
        if pod.node is None:
            if not pod.candidates:
                no_candidates += 1
            elif _stuck(pod, fits):
                stuck.append(pod.name)
            for t in pod_tallies:
                t.pending_pods += 1
                t.pending_nowhere += bool(pod.candidates) and all(
                    fits.of(t.container.image, n) is Fit.NO for n in pod.candidates
                )

    images_of = {p.name: {c.name: c.image for c in p.containers} for p in pods}
    for pod_name, e in evidence:
        # Evidence without a container name (an Event without fieldPath) weighs on all of the pod's.
        names = [e.container] if e.container else list(images_of[pod_name])
        for name in names:
            t = tallies.get((name, images_of[pod_name].get(name, "")))
            if t is not None and e not in t.evidence:
                t.evidence.append(e)

    judged = sorted(
        ((t, _judge(t)) for t in tallies.values()),
        # worst first, and what a runtime reported before what we infer
        key=lambda tj: (
            _SEVERITY[tj[1].verdict],
            not tj[0].evidence,
            tj[0].container.name,
            tj[0].container.image,
        ),
    )
    verdict, message = _overall(judged, pods, stuck, no_candidates, tallies)
    status = _status(workload, verdict, message, judged, pods, evidence, incompatible_pods)
    problem = _problem_key(verdict, judged, stuck)
    announced = str((previous or {}).get("announced") or "")
    status["announced"] = problem or ""
    status["conditions"] = _conditions(judged, evidence, now=now, previous=previous)
    digest = fingerprint(status)
    status["fingerprint"] = digest
    status["lastChecked"] = now
    unresolved = {
        t.container.image: t.result.reason.value
        for t in tallies.values()
        if isinstance(t.result, ResolutionError)
    }
    return Audit(
        workload=workload,
        verdict=verdict,
        message=message,
        status=status,
        fingerprint=digest,
        announce=bool(problem) and problem != announced,
        incompatible_pods=incompatible_pods,
        unresolved=unresolved,
        evidence=tuple(evidence),
    )


def _stuck(pod: PodFacts, fits: _Fits) -> bool:
    """A pending pod none of whose candidate nodes runs all its (resolved) images."""
    if any(fits.of(c.image, pod.candidates[0]) is None for c in pod.containers):
        return False  # unresolved: we cannot prove it
    return not any(all(fits.of(c.image, n) is Fit.RUNS for c in pod.containers) for n in pod.candidates)


def _judge(t: _ContainerTally) -> _Judgement:
    image = t.container.image
    if t.evidence:
        e = t.evidence[0]
        return _Judgement(Verdict.INCOMPATIBLE, "runtime-mismatch", f"the runtime said: {e.message}")
    if isinstance(t.result, ResolutionError):
        return _Judgement(Verdict.UNKNOWN, t.result.reason.value, t.result.message)
    provides = _provides_text(t.result)
    running_no = sorted(k for k, p in t.platforms.items() if p.no_pods)
    if running_no:
        pods = sum(t.platforms[k].no_pods for k in running_no)
        where = _join(running_no)
        text = f"image {image} provides {provides}; {_plural(pods, 'pod')} run on {where} nodes"
        return _Judgement(Verdict.INCOMPATIBLE, "no-matching-platform", text)
    if t.nowhere_to_go:
        where = _join(sorted(t.platforms))
        text = f"image {image} provides {provides}; nodes its pods can use are {where}"
        return _Judgement(Verdict.INCOMPATIBLE, "no-matching-platform", text)
    if not t.platforms:
        return _Judgement(Verdict.UNKNOWN, "no-candidate-nodes", _NO_NODES)
    cannot = sorted(k for k, p in t.platforms.items() if p.fit is Fit.NO)
    if cannot:
        text = f"image {image} provides {provides}; its pods may also land on {_join(cannot)} nodes"
        return _Judgement(Verdict.AT_RISK, "not-on-all-candidates", text)
    unsure = sorted(k for k, p in t.platforms.items() if p.fit is Fit.AT_RISK)
    if unsure:
        text = (
            f"image {image} provides {provides}; on {_join(unsure)} nodes it runs only if containerd "
            "pulls with the local (lenient) platform matcher"
        )
        return _Judgement(Verdict.AT_RISK, "depends-on-pull-mode", text)
    return _Judgement(Verdict.COMPATIBLE, "", "")


def _overall(
    judged: Sequence[tuple[_ContainerTally, _Judgement]],
    pods: Sequence[PodFacts],
    stuck: Sequence[str],
    no_candidates: int,
    tallies: Mapping[tuple[str, str], _ContainerTally],
) -> tuple[Verdict, str]:
    if not pods:
        return Verdict.UNKNOWN, "no pods to audit"
    problems = [j for _t, j in judged if j.verdict is not Verdict.COMPATIBLE]
    worst = problems[0].verdict if problems else Verdict.COMPATIBLE
    if stuck and worst is not Verdict.INCOMPATIBLE:
        text = f"{_plural(len(stuck), 'pending pod')} can use no node that runs all its images"
        return Verdict.INCOMPATIBLE, _clip(_with_fix(text, tallies), _MESSAGE_BYTES)
    if not problems:
        if no_candidates == len(pods):
            return Verdict.UNKNOWN, _NO_NODES
        platforms = sorted({k for t in tallies.values() for k in t.platforms})
        text = f"{_plural(len(tallies), 'image')} run on every node the pods use ({_join(platforms)})"
        return Verdict.COMPATIBLE, _clip(text, _MESSAGE_BYTES)
    text = problems[0].message
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    if worst in (Verdict.INCOMPATIBLE, Verdict.AT_RISK):
        text = _with_fix(text, tallies)
    return worst, _clip(text, _MESSAGE_BYTES)


def _with_fix(text: str, tallies: Mapping[tuple[str, str], _ContainerTally]) -> str:
    fix = _fix(tallies)
    return f"{text}; fix: {fix}" if fix else text


def _fix(tallies: Mapping[tuple[str, str], _ContainerTally]) -> str:
    """A nodeSelector on kubernetes.io/arch that keeps every pod on nodes all its images run on, if any.

    Offered only when the architectures that work and those that do not are apart (linux/arm/v6 vs
    linux/arm/v7 cannot be told apart by that label).
    """
    seen: dict[str, Platform] = {}
    bad: set[str] = set()
    for t in tallies.values():
        if isinstance(t.result, ResolutionError):
            return ""
        for key, p in t.platforms.items():
            seen[key] = p.platform
            if p.fit is not Fit.RUNS:
                bad.add(key)
    good_arches = {seen[k].architecture for k in seen if k not in bad}
    bad_arches = {seen[k].architecture for k in bad}
    if not good_arches or not bad_arches or good_arches & bad_arches:
        return ""
    if len(good_arches) == 1:
        return f"add nodeSelector kubernetes.io/arch={next(iter(good_arches))}"
    return f"require node affinity kubernetes.io/arch In ({', '.join(sorted(good_arches))})"


def _problem_key(
    verdict: Verdict, judged: Sequence[tuple[_ContainerTally, _Judgement]], stuck: Sequence[str]
) -> str:
    """Identity of the problem an Event announces: what is wrong, not how many pods show it."""
    if verdict not in (Verdict.INCOMPATIBLE, Verdict.AT_RISK):
        return ""
    parts = [verdict.value, "stuck" if stuck else ""]
    parts += [
        f"{t.container.name}={t.container.image}:{j.verdict.value}:{j.reason}"
        for t, j in judged
        if j.verdict is not Verdict.COMPATIBLE
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _status(
    workload: WorkloadRef,
    verdict: Verdict,
    message: str,
    judged: Sequence[tuple[_ContainerTally, _Judgement]],
    pods: Sequence[PodFacts],
    evidence: Sequence[tuple[str, RuntimeEvidence]],
    incompatible_pods: Mapping[str, int],
) -> dict[str, Any]:
    running = sorted({str(p.node.platform) for p in pods if p.node is not None})
    listed = [_container_entry(t, j) for t, j in judged[:MAX_CONTAINERS]]
    return {
        "workload": _clip(str(workload), _NAME_MAX + 32),
        "verdict": verdict.value,
        "message": message,
        "images": len(judged),
        "incompatible": sum(1 for _t, j in judged if j.verdict is Verdict.INCOMPATIBLE),
        "pods": len(pods),
        "incompatiblePods": sum(incompatible_pods.values()),
        "nodePlatforms": _capped_join(running),
        "containers": listed,
        "containersOmitted": max(0, len(judged) - MAX_CONTAINERS),
    }


def _container_entry(t: _ContainerTally, j: _Judgement) -> dict[str, Any]:
    result = t.result
    provides = [] if isinstance(result, ResolutionError) else _shown_platforms(result)
    # When capped, keep the platforms where it does not run: they are the news.
    worst_first = sorted(t.platforms.items(), key=lambda kp: (-_badness(kp[1].fit), kp[0]))[:MAX_PLATFORMS]
    checks = [
        {"platform": _clip(key, _PLATFORM_BYTES), "fit": p.fit.value if p.fit else "unknown", "pods": p.pods}
        for key, p in sorted(worst_first, key=lambda kp: kp[0])
    ]
    return {
        "name": _clip(t.container.name, _NAME_BYTES),
        "image": _clip(t.container.image, _IMAGE_BYTES),
        "digest": "" if isinstance(result, ResolutionError) else _clip(result.digest, _DIGEST_BYTES),
        "provides": [_clip(p, _PLATFORM_BYTES) for p in provides[:MAX_PLATFORMS]],
        "nodePlatforms": [c["platform"] for c in checks],
        "checks": checks,
        "verdict": j.verdict.value,
        "reason": j.reason,
        "message": _clip(j.message, _CONTAINER_MESSAGE_BYTES),
        "runtimeMismatch": bool(t.evidence),
    }


def _badness(fit: Fit | None) -> int:
    return _FIT_BADNESS[fit] if fit is not None else 0


def _conditions(
    judged: Sequence[tuple[_ContainerTally, _Judgement]],
    evidence: Sequence[tuple[str, RuntimeEvidence]],
    *,
    now: str,
    previous: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    if evidence:
        pod, e = evidence[0]
        mismatch = ("True", _camel(e.kind.value), f"pod {pod} container {e.container}: {e.message}")
    else:
        mismatch = ("False", "NotObserved", "no container reported an exec format or platform match error")
    failed = [t.result for t, _j in judged if isinstance(t.result, ResolutionError)]
    if failed:
        resolved = ("False", _camel(failed[0].reason.value), failed[0].message)
    else:
        resolved = ("True", "Resolved", "every image was resolved to its platforms")
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    out = []
    for ctype, (status, reason, message) in (
        ("RuntimeMismatchObserved", mismatch),
        ("ImagesResolved", resolved),
    ):
        old = before.get(ctype) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": _clip(message, _MESSAGE_BYTES),
                "lastTransitionTime": since or now,
            }
        )
    return out


def fingerprint(status: Mapping[str, Any]) -> str:
    """A digest of what a status says, without the times that change on every check."""
    content = {k: v for k, v in status.items() if k not in ("lastChecked", "fingerprint")}
    content["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or ()
    ]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- the object around it ---------------------------------------------------------------------------


def audit_name(workload: WorkloadRef) -> str:
    """`deployment-web`: kind and name, within the 253 characters of a name (hash-suffixed if cut)."""
    name = f"{workload.kind.lower()}-{workload.name}"
    if len(name) <= _NAME_MAX:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _NAME_MAX - 11].rstrip('.-')}-{suffix}"


def object_body(workload: WorkloadRef) -> dict[str, Any]:
    """A new ImageAudit for `workload`, owned by it so garbage collection removes it with the workload."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": audit_name(workload),
            "namespace": workload.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "archaudit",
                "archaudit.io/workload-kind": workload.kind,
            },
            "ownerReferences": [
                {
                    "apiVersion": workload.api_version,
                    "kind": workload.kind,
                    "name": workload.name,
                    "uid": workload.uid,
                }
            ],
        },
        "spec": {
            "workload": {
                "apiVersion": workload.api_version,
                "kind": workload.kind,
                "name": workload.name,
                "uid": workload.uid,
            }
        },
    }


# --- small text helpers -----------------------------------------------------------------------------


def _clip(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8 (what the apiserver stores), marked with an ellipsis."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode(errors="ignore") + "…"


def _shown_platforms(image: ImagePlatforms) -> list[str]:
    """The image's platforms as nodes are named: normalized (linux/arm64/v8 is linux/arm64), in order."""
    return list(dict.fromkeys(str(p.normalized()) for p in image.platforms))


def _provides_text(image: ImagePlatforms) -> str:
    platforms = sorted(_shown_platforms(image))
    if not platforms:
        return "no runnable platform" if image.kind != "artifact" else "no platform (it is not an image)"
    if len(platforms) == 1:
        return f"{platforms[0]} only"
    return _join(platforms)


def _join(items: Sequence[str]) -> str:
    if len(items) <= MAX_PLATFORMS:
        return ", ".join(items)
    return ", ".join(items[:MAX_PLATFORMS]) + f" and {len(items) - MAX_PLATFORMS} more"


def _capped_join(items: Sequence[str]) -> str:
    shown = ",".join(_clip(i, _PLATFORM_BYTES) for i in items[:MAX_PLATFORMS])
    return shown + (f",+{len(items) - MAX_PLATFORMS}" if len(items) > MAX_PLATFORMS else "")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _camel(text: str) -> str:
    """`rate-limited` -> `RateLimited`: condition reasons allow no dashes."""
    return "".join(part[:1].upper() + part[1:] for part in text.replace("_", "-").split("-") if part)
