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

Verdicts come from the one engine (`engine.judge`, per pod: where it runs and where else it may go,
or where a pending pod may go, exactly as the webhook judges it); a workload's verdict is the worst of
its pods', and a workload without pods is judged from its pod template. What is left here is what only
a report has: tallies of running pods per platform, runtime evidence, the bounds and the CRD's shape.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from archaudit.core.engine import SEVERITY, ImageCheck, Judgement, Verdict, fix, judge, plural, worst
from archaudit.core.engine import Reason as EngineReason
from archaudit.core.errors import ResolutionError
from archaudit.core.kubetypes import Condition, ContainerReport, ImageAuditStatus, PlatformCheck
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.platforms import Fit, Platform
from archaudit.core.readiness import Requests
from archaudit.core.scheduling import Node

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
    "PodFacts",
    "RuntimeEvidence",
    "TemplateFacts",
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
_MAX_TARGETS = 12  # runsOn: the cluster's node platforms plus cluster.platforms and the common targets
_TAG_BYTES = 128  # the OCI limit on a tag
_MAX_FIXES = 3  # fixing tags listed per container (one per lacking target platform)
_NO_NODES = "no node matches the pods' scheduling constraints"


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
    node: Node | None  # where it runs; None while pending (or on a node we do not know)
    candidates: Sequence[Node]  # the nodes it may use (its scheduling constraints, nodeName aside)
    containers: tuple[Container, ...]  # init, regular and ephemeral containers
    evidence: tuple[RuntimeEvidence, ...] = ()


@dataclass(frozen=True)
class Audit:
    """The outcome for one workload: the status to write plus what metrics and Events need."""

    workload: WorkloadRef
    verdict: Verdict
    message: str
    status: ImageAuditStatus
    fingerprint: str
    announce: bool  # an Event is due: a problem not announced before
    incompatible_pods: Mapping[str, int]  # node platform -> pods running where an image cannot run
    unresolved: Mapping[str, str]  # image -> reason (errors.Reason value)
    evidence: tuple[tuple[str, RuntimeEvidence], ...]  # (pod name, evidence)
    runs_on: tuple[str, ...] = ()  # target platforms on which every image runs
    # resolved image -> target platforms it does not run on (what a fixing tag is looked for)
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


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


@dataclass(frozen=True)
class TemplateFacts:
    """A workload without pods, judged from its pod template (what its pods would be)."""

    containers: tuple[Container, ...]
    candidates: Sequence[Node]  # the nodes its pods could use
    why: str  # "scaled to 0", "no pods", "no pods between runs"
    denied: bool = False  # archaudit denies its pods (enforce mode), so Incompatible means none will start


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
    verdict: Verdict = Verdict.COMPATIBLE  # the engine's, worst over the pods
    reason: str = ""
    fixes: dict[str, str] = field(default_factory=dict)  # platform it lacks -> tag that provides it

    def tally(self, node: Node, fit: Fit | None, *, running: bool) -> None:
        key = str(node.platform)
        entry = self.platforms.get(key)
        if entry is None:
            entry = self.platforms[key] = _PlatformTally(node.platform)
        if fit is not None and (entry.fit is None or _badness(fit) > _badness(entry.fit)):
            entry.fit = fit
        if running:
            entry.pods += 1
            entry.no_pods += fit is Fit.NO

    def judged(self, check: ImageCheck) -> None:
        # Worst wins; at equal verdicts what a runtime reported beats what we infer.
        if SEVERITY[check.verdict] < SEVERITY[self.verdict] or (
            check.verdict is self.verdict and check.reason == EngineReason.RUNTIME_MISMATCH
        ):
            self.verdict, self.reason = check.verdict, check.reason


def build(
    workload: WorkloadRef,
    pods: Sequence[PodFacts],
    images: Mapping[str, ImagePlatforms | ResolutionError],
    *,
    now: str,
    previous: Mapping[str, Any] | None = None,
    extra_evidence: Iterable[tuple[str, RuntimeEvidence]] = (),
    template: TemplateFacts | None = None,
    targets: Sequence[Node] = (),
    replicas: int | None = None,
    requests: Requests | None = None,
    fixes: Mapping[str, Mapping[str, str]] | None = None,
) -> Audit:
    """The report for `workload` from its pods (or, without pods, from `template`).

    `images` must hold a result for every container image; `now` is the RFC 3339 time of this check;
    `previous` the current `.status` (for condition transition times and the last announced problem);
    `extra_evidence` (pod name, evidence) pairs come from Events.

    Readiness: `targets` (readiness.target_nodes: one virtual node per kind of node) give `runsOn`,
    judged by the engine like any pod: a platform is listed when every image runs on every target node
    of it. `replicas` and `requests` (one pod's) are recorded for `archaudit readiness` to sum;
    `fixes` (image -> platform -> tag, from the tag finder) name the tag that would provide a platform.
    """
    pod_names = {p.name for p in pods}
    evidence = [(p.name, e) for p in pods for e in p.evidence]
    evidence += [(pod, e) for pod, e in extra_evidence if pod in pod_names and (pod, e) not in evidence]
    tallies: dict[tuple[str, str], _ContainerTally] = {}
    verdicts: list[Verdict] = []
    stuck = 0  # pending pods with nodes to go to, none of which runs all their images
    judged_nodes: dict[str, Node] = {}
    usable: set[str] = set()
    incompatible_pods: dict[str, int] = {}
    # Pods of one ReplicaSet share their containers and candidate tuple (the glue sees to it): one
    # judgement serves them all. The key holds the candidates object itself, so its id is never reused.
    memo: dict[tuple[Any, ...], Judgement] = {}
    by_pod: dict[str, list[RuntimeEvidence]] = {}
    for pod_name, e in evidence:
        by_pod.setdefault(pod_name, []).append(e)

    units: list[tuple[PodFacts | None, Sequence[Node], tuple[Container, ...], Node | None]]
    if pods:
        units = [(p, p.candidates, p.containers, p.node) for p in pods]
    elif template is not None:
        units = [(None, template.candidates, template.containers, None)]
    else:
        units = []
    for pod, candidates, containers, landed in units:
        said = by_pod.get(pod.name, []) if pod is not None else []
        # Evidence without a container name (an Event without fieldPath) weighs on all of the pod's.
        accused = frozenset(c.name for c in containers if any(e.container in ("", c.name) for e in said))
        key = (containers, id(candidates), candidates, landed.name if landed else None, accused)
        j = memo.get(key)
        if j is None:
            j = memo[key] = judge(
                [(c.name, c.image, images[c.image]) for c in containers],
                candidates,
                landed=landed,
                evidence=accused,
                is_pod=pod is not None,
            )
        verdicts.append(j.verdict)
        usable.update(j.usable_nodes)
        for node in candidates:
            judged_nodes.setdefault(node.name, node)
        if landed is not None:
            judged_nodes.setdefault(landed.name, landed)
        cannot_here = False
        for c, check in zip(containers, j.images, strict=True):
            t = tallies.get((c.name, c.image))
            if t is None:
                t = tallies[(c.name, c.image)] = _ContainerTally(c, images[c.image])
            t.judged(check)
            for node in candidates:
                t.tally(node, check.fit_on(node), running=False)
            if landed is not None:
                fit = check.fit_on(landed)
                t.tally(landed, fit, running=True)
                cannot_here = cannot_here or fit is Fit.NO
            for e in said:
                if e.container in ("", c.name) and e not in t.evidence:
                    t.evidence.append(e)
        if landed is not None and cannot_here:
            where = str(landed.platform)
            incompatible_pods[where] = incompatible_pods.get(where, 0) + 1
        pod_alone = worst(check.verdict for check in j.images)
        if landed is None and j.verdict is Verdict.INCOMPATIBLE and pod_alone is not Verdict.INCOMPATIBLE:
            stuck += 1

    judged = sorted(
        tallies.values(),
        # worst first, and what a runtime reported before what we infer
        key=lambda t: (SEVERITY[t.verdict], not t.evidence, t.container.name, t.container.image),
    )
    verdict = worst(verdicts) if units else Verdict.UNKNOWN
    suggestion = (
        fix(judged_nodes.values(), usable) if verdict in (Verdict.INCOMPATIBLE, Verdict.AT_RISK) else None
    )
    fixes = fixes or {}
    runs_on, image_runs_on = _runs_on(judged, images, targets)
    for t in judged:
        found = fixes.get(t.container.image) or {}
        t.fixes = {
            p: tag for p, tag in sorted(found.items()) if p not in image_runs_on.get(t.container.image, ())
        }
    message = _message(verdict, judged, pods, stuck, suggestion)
    if not pods and template is not None:
        message = _clip(_without_pods(template, verdict, message), _MESSAGE_BYTES)
    status = _status(workload, verdict, message, judged, pods, incompatible_pods)
    for entry, t in zip(status["containers"], judged, strict=False):
        entry["runsOn"] = list(image_runs_on.get(t.container.image, ()))[:_MAX_TARGETS]
        entry["fixes"] = {
            _clip(p, _PLATFORM_BYTES): _clip(tag, _TAG_BYTES) for p, tag in list(t.fixes.items())[:_MAX_FIXES]
        }
    status["runsOn"] = list(runs_on)[:_MAX_TARGETS]
    if replicas is not None:
        status["replicas"] = replicas
    if requests is not None:
        status["requests"] = {"cpu": requests.cpu, "memory": requests.memory}
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
        runs_on=runs_on,
        missing={
            image: tuple(p for p in _target_platforms(targets) if p not in ran)
            for image, ran in image_runs_on.items()
            if not isinstance(images[image], ResolutionError)
        },
    )


def _target_platforms(targets: Sequence[Node]) -> list[str]:
    return sorted({str(n.platform) for n in targets})


def _runs_on(
    judged: Sequence[_ContainerTally],
    images: Mapping[str, ImagePlatforms | ResolutionError],
    targets: Sequence[Node],
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(platforms every image runs on, image -> platforms it runs on), both from the engine.

    The workload's images are judged together against the target nodes, as a pod that may land on any
    of them: `usable_nodes` are the targets that run every image, `fits` say it per image. A platform
    counts when every target node of it (every kind of node the cluster has of that platform) runs.
    """
    if not targets or not judged:
        return (), {}
    unique = list(dict.fromkeys(t.container.image for t in judged))
    j = judge([(image, image, images[image]) for image in unique], targets, is_pod=False)
    by_platform: dict[str, list[Node]] = {}
    for node in targets:
        by_platform.setdefault(str(node.platform), []).append(node)
    usable = set(j.usable_nodes)
    runs_on = tuple(p for p, nodes in sorted(by_platform.items()) if all(n.name in usable for n in nodes))
    per_image = {
        check.image: tuple(
            p for p, nodes in sorted(by_platform.items()) if all(check.fit_on(n) is Fit.RUNS for n in nodes)
        )
        for check in j.images
    }
    return runs_on, per_image


def _message(
    verdict: Verdict,
    judged: Sequence[_ContainerTally],
    pods: Sequence[PodFacts],
    stuck: int,
    suggestion: str | None,
) -> str:
    """The report's one sentence: the worst problem, in the words of the pods' tallies."""
    if not judged and not pods:
        return "no pods to audit"
    problems = [t for t in judged if t.verdict is not Verdict.COMPATIBLE]
    tail = f"; fix: {suggestion}" if suggestion else ""
    if stuck and (not problems or problems[0].verdict is not Verdict.INCOMPATIBLE):
        text = f"{plural(stuck, 'pending pod')} can use no node that runs all its images"
        return _clip(text + tail, _MESSAGE_BYTES)
    if not problems:
        platforms = sorted({k for t in judged for k in t.platforms})
        n = len(judged)
        verb = "runs" if n == 1 else "run"
        where = "the pods use" if pods else "its pods can use"
        return _clip(
            f"{plural(n, 'image')} {verb} on every node {where} ({_join(platforms)})", _MESSAGE_BYTES
        )
    text = _container_message(problems[0])
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return _clip(text + (tail if verdict in (Verdict.INCOMPATIBLE, Verdict.AT_RISK) else ""), _MESSAGE_BYTES)


def _without_pods(template: TemplateFacts, verdict: Verdict, message: str) -> str:
    if verdict is Verdict.INCOMPATIBLE and template.denied:
        return f"{template.why}: every pod would be denied: {message}"
    return f"{template.why}: {message}"


def _container_message(t: _ContainerTally) -> str:
    """What is wrong with one container's image, told with the tallies of the pods that run it."""
    text = _container_problem(t)
    if t.reason in (EngineReason.NO_MATCHING_PLATFORM, EngineReason.NOT_ON_ALL_CANDIDATES):
        # The tag finder's answer for a platform of the nodes that cannot run it: the fix in one upgrade.
        lacking = sorted(k for k, p in t.platforms.items() if p.fit is Fit.NO and k in t.fixes)
        if lacking:
            text += f"; fix: {t.fixes[lacking[0]]} provides {lacking[0]}"
    return text


def _container_problem(t: _ContainerTally) -> str:
    image = t.container.image
    if t.reason == EngineReason.RUNTIME_MISMATCH and t.evidence:
        return f"the runtime said: {t.evidence[0].message}"
    if isinstance(t.result, ResolutionError):
        return t.result.message
    if t.reason == EngineReason.NO_CANDIDATE_NODES:
        return _NO_NODES
    provides = _provides_text(t.result)
    if t.reason == EngineReason.NO_MATCHING_PLATFORM:
        running_no = sorted(k for k, p in t.platforms.items() if p.no_pods)
        if running_no:
            pods = sum(t.platforms[k].no_pods for k in running_no)
            verb = "runs" if pods == 1 else "run"
            where = _join(running_no)
            return f"image {image} provides {provides}; {plural(pods, 'pod')} {verb} on {where} nodes"
        return f"image {image} provides {provides}; nodes its pods can use are {_join(sorted(t.platforms))}"
    if t.reason == EngineReason.NOT_ON_ALL_CANDIDATES:
        cannot = sorted(k for k, p in t.platforms.items() if p.fit is Fit.NO)
        return f"image {image} provides {provides}; its pods may also land on {_join(cannot)} nodes"
    unsure = sorted(k for k, p in t.platforms.items() if p.fit is Fit.AT_RISK)
    return (
        f"image {image} provides {provides}; on {_join(unsure)} nodes it runs only if containerd "
        "pulls with the local (lenient) platform matcher"
    )


def _problem_key(verdict: Verdict, judged: Sequence[_ContainerTally], stuck: int) -> str:
    """Identity of the problem an Event announces: what is wrong, not how many pods show it."""
    if verdict not in (Verdict.INCOMPATIBLE, Verdict.AT_RISK):
        return ""
    parts = [verdict.value, "stuck" if stuck else ""]
    parts += [
        f"{t.container.name}={t.container.image}:{t.verdict.value}:{t.reason}"
        for t in judged
        if t.verdict is not Verdict.COMPATIBLE
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _status(
    workload: WorkloadRef,
    verdict: Verdict,
    message: str,
    judged: Sequence[_ContainerTally],
    pods: Sequence[PodFacts],
    incompatible_pods: Mapping[str, int],
) -> ImageAuditStatus:
    running = sorted({str(p.node.platform) for p in pods if p.node is not None})
    listed = [_container_entry(t) for t in judged[:MAX_CONTAINERS]]
    return {
        "workload": _clip(str(workload), _NAME_MAX + 32),
        "verdict": verdict.value,
        "message": message,
        "images": len(judged),
        "incompatible": sum(1 for t in judged if t.verdict is Verdict.INCOMPATIBLE),
        "pods": len(pods),
        "incompatiblePods": sum(incompatible_pods.values()),
        "nodePlatforms": _capped_join(running),
        "containers": listed,
        "containersOmitted": max(0, len(judged) - MAX_CONTAINERS),
    }


def _container_entry(t: _ContainerTally) -> ContainerReport:
    result = t.result
    provides = [] if isinstance(result, ResolutionError) else _shown_platforms(result)
    # When capped, keep the platforms where it does not run: they are the news.
    worst_first = sorted(t.platforms.items(), key=lambda kp: (-_badness(kp[1].fit), kp[0]))[:MAX_PLATFORMS]
    checks: list[PlatformCheck] = [
        {"platform": _clip(key, _PLATFORM_BYTES), "fit": p.fit.value if p.fit else "unknown", "pods": p.pods}
        for key, p in sorted(worst_first, key=lambda kp: kp[0])
    ]
    problem = _container_message(t) if t.verdict is not Verdict.COMPATIBLE else ""
    return {
        "name": _clip(t.container.name, _NAME_BYTES),
        "image": _clip(t.container.image, _IMAGE_BYTES),
        "digest": "" if isinstance(result, ResolutionError) else _clip(result.digest, _DIGEST_BYTES),
        "provides": [_clip(p, _PLATFORM_BYTES) for p in provides[:MAX_PLATFORMS]],
        "nodePlatforms": [c["platform"] for c in checks],
        "checks": checks,
        "verdict": t.verdict.value,
        "reason": t.reason,
        "message": _clip(problem, _CONTAINER_MESSAGE_BYTES),
        "runtimeMismatch": bool(t.evidence),
    }


_FIT_BADNESS = {Fit.RUNS: 0, Fit.AT_RISK: 1, Fit.NO: 2}


def _badness(fit: Fit | None) -> int:
    return _FIT_BADNESS[fit] if fit is not None else 0


def _conditions(
    judged: Sequence[_ContainerTally],
    evidence: Sequence[tuple[str, RuntimeEvidence]],
    *,
    now: str,
    previous: Mapping[str, Any] | None,
) -> list[Condition]:
    if evidence:
        pod, e = evidence[0]
        mismatch = ("True", _camel(e.kind.value), f"pod {pod} container {e.container}: {e.message}")
    else:
        mismatch = ("False", "NotObserved", "no container reported an exec format or platform match error")
    failed = [t.result for t in judged if isinstance(t.result, ResolutionError)]
    if failed:
        resolved = ("False", _camel(failed[0].reason.value), failed[0].message)
    else:
        resolved = ("True", "Resolved", "every image was resolved to its platforms")
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    out: list[Condition] = []
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


def stored_fixes(previous: Mapping[str, Any] | None, image: str) -> dict[str, str]:
    """The fixing tags a stored report names for `image` (platform -> tag)."""
    found: dict[str, str] = {}
    for entry in (previous or {}).get("containers") or ():
        if isinstance(entry, Mapping) and entry.get("image") == _clip(image, _IMAGE_BYTES):
            fixes = entry.get("fixes")
            if isinstance(fixes, Mapping):
                found.update({str(p): str(t) for p, t in fixes.items()})
    return found


def reported_fixes(
    found: Mapping[str, str], stored: Mapping[str, str], searched: Callable[[str], bool]
) -> dict[str, str]:
    """The fixing tags to report for an image: the tag finder's, and the stored report's for the
    platforms the finder has not searched yet.

    A new leader's (or a restarted operator's) finder knows nothing at first; without this rule every
    report naming a fix would be written without it, then again when the finder finds the same tag.
    A platform the finder has searched is its word: a tag found, or none (the stored one is dropped).
    """
    kept = {p: tag for p, tag in stored.items() if not searched(p)}
    return {**kept, **found}


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


def _camel(text: str) -> str:
    """`rate-limited` -> `RateLimited`: condition reasons allow no dashes."""
    return "".join(part[:1].upper() + part[1:] for part in text.replace("_", "-").split("-") if part)
