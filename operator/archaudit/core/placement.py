"""Placement: which node-affinity expressions keep a pod on nodes that run every one of its images.

The validating webhook says no (or warns); placement steers. For a pod CREATE it narrows the pod's
required node affinity so that the scheduler only considers nodes where every container and init
container image runs, as judged by the one engine (`engine.judge`: per image, per node `Fit`, with each
node's runtime profile). This module has no verdict rules of its own: "which nodes run every image" is
read from the engine's fits; all it decides is how to say that set with node labels.

Rules, each for a reason:
- Narrow, never widen. Required `nodeSelectorTerms` are ORed, so a new term would add nodes (the bug of
  appending a term); the expressions are ANDed into EVERY existing term instead, and one term is created
  only when the pod has no required affinity. What the user wrote is kept as written, in order.
- Say it with labels the scheduler sees: `kubernetes.io/os` and `kubernetes.io/arch` first; when arm
  variants or pull modes split nodes with the same arch label, also `archaudit.io/variant` and
  `archaudit.io/containerd-pull`. The first (smallest) set of label keys whose constraint admits only
  nodes that run every image wins.
- Invariant, checked here on every answer with the scheduling filters themselves
  (`scheduling.candidates` over the constrained spec): the constraint never admits a node on which an
  image cannot run (`Fit.NO`). When labels cannot tell the nodes that run every image from the others
  exactly, a constraint that admits nodes where an image only runs if containerd pulls locally
  (`Fit.AT_RISK`) is accepted and said so (the validating webhook's warning says the rest); when even
  that cannot be expressed, nothing is written.
- Idempotent: the annotation `archaudit.io/placement` records what was added, so a reinvocation (after
  another webhook added a sidecar) takes its own expressions out, judges the pod's current images, and
  writes again only what changed.

Pure: plain dicts in the shape of the Kubernetes API's JSON, no I/O.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archaudit.core import scheduling
from archaudit.core.engine import ImageResult, judge
from archaudit.core.platforms import LABEL_ARCH, LABEL_OS, LABEL_PULL_MODE, LABEL_VARIANT, Fit
from archaudit.core.scheduling import Node

__all__ = [
    "ANNOTATION",
    "GATE",
    "LABEL_KEYS",
    "NAMESPACE_LABEL",
    "Placement",
    "Record",
    "Result",
    "Skip",
    "add_gate",
    "constrained_spec",
    "has_gate",
    "namespace_enabled",
    "original_spec",
    "patch",
    "place",
    "previous",
    "remove_gate",
    "skip_reason",
]

NAMESPACE_LABEL = "archaudit.io/placement"  # on | off; default placement.default
ANNOTATION = "archaudit.io/placement"  # what was added and why (JSON)
GATE = "archaudit.io/placement"  # the scheduling gate of a pod whose images are not resolved yet
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # the kubelet's mirror of a static pod

# Tried in this order: the fewest keys that tell the nodes apart.
LABEL_KEYS: tuple[tuple[str, ...], ...] = (
    (LABEL_OS, LABEL_ARCH),
    (LABEL_OS, LABEL_ARCH, LABEL_VARIANT),
    (LABEL_OS, LABEL_ARCH, LABEL_VARIANT, LABEL_PULL_MODE),
)
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"

Expression = dict[str, Any]  # {"key", "operator", "values"?} as in a NodeSelectorRequirement


class Result(enum.StrEnum):
    """What placement did with one pod (the `result` label of its metric)."""

    PLACED = "placed"  # expressions added
    UNCHANGED = "unchanged"  # every node the pod may use runs every image: nothing to add
    GATED = "gated"  # an image was not resolved in time: scheduling gate added
    UNGATED_TIMEOUT = "ungated-timeout"  # the gate was removed after placement.gateTimeoutSeconds
    SKIPPED = "skipped"


class Skip(enum.StrEnum):
    """Why a pod was left alone (the `reason` label of skipped placements)."""

    NODE_NAME = "node-name"  # bound by the user: the scheduler is not involved
    DAEMONSET = "daemonset"  # one pod per node by design
    MIRROR = "mirror"  # a static pod's mirror: the kubelet runs it wherever it is
    ARCH_CONSTRAINED = "arch-constrained"  # the user chose the architecture already
    NO_IMAGES = "no-images"  # no image to check (all exempt)
    UNRESOLVED = "unresolved"  # an image could not be resolved: no node is known to run it
    NO_CANDIDATES = "no-candidate-nodes"
    NO_COMMON_NODE = "no-node-runs-all"  # the validating webhook decides (deny in enforce)
    NOT_EXPRESSIBLE = "not-expressible"  # node labels cannot tell the nodes apart safely


@dataclass(frozen=True)
class Placement:
    """The answer for one pod: what to add (if anything) and why."""

    result: Result
    reason: str  # a Skip value when skipped; "" otherwise
    expressions: tuple[Expression, ...] = ()  # ANDed into every required term
    preferred: str | None = None  # architecture of a weighted preferred term
    weight: int = 0
    admitted: tuple[str, ...] = ()  # the nodes the constraint leaves (names, sorted)
    at_risk: tuple[str, ...] = ()  # admitted nodes where an image runs only if containerd pulls locally
    why: str = ""  # one sentence for the annotation


@dataclass(frozen=True)
class Record:
    """What the annotation says a previous invocation added, so that it can be taken out again."""

    result: str
    expressions: tuple[Expression, ...]
    created_term: bool  # the required term was ours (the pod had no required affinity)
    preferred: Expression | None  # the preferred term we added, as written


# --- namespaces and skips --------------------------------------------------------------------------


def namespace_enabled(labels: Mapping[str, str], *, default: bool) -> bool:
    """`archaudit.io/placement=on|off` on the namespace; anything else (or nothing) is the default."""
    value = labels.get(NAMESPACE_LABEL, "")
    if value == "on":
        return True
    if value == "off":
        return False
    return default


def skip_reason(pod: Mapping[str, Any], spec: Mapping[str, Any]) -> Skip | None:
    """Why this pod is none of placement's business (`spec`: the pod spec without our additions)."""
    meta = _mapping(pod.get("metadata"))
    if spec.get("nodeName"):
        return Skip.NODE_NAME
    if MIRROR_ANNOTATION in _mapping(meta.get("annotations")):
        return Skip.MIRROR
    for owner in _list(meta.get("ownerReferences")):
        if isinstance(owner, Mapping) and owner.get("controller") and owner.get("kind") == "DaemonSet":
            return Skip.DAEMONSET
    if LABEL_ARCH in _mapping(spec.get("nodeSelector")):
        return Skip.ARCH_CONSTRAINED
    terms = _terms(spec)
    if terms is not None and all(
        any(_mapping(e).get("key") == LABEL_ARCH for e in _list(_mapping(t).get("matchExpressions")))
        for t in terms
    ):
        return Skip.ARCH_CONSTRAINED  # every term names an arch (no terms at all: nothing to narrow)
    return None


# --- the decision ----------------------------------------------------------------------------------


def place(
    spec: Mapping[str, Any],
    images: Sequence[ImageResult],
    universe: Sequence[Node],
    *,
    prefer_architecture: str = "",
    prefer_weight: int = 50,
) -> Placement:
    """What to add to `spec` (the pod spec without our additions) so it lands where its images run.

    `universe`: every node, real and virtual (`cluster.platforms`). The verdict per node comes from
    `engine.judge`; this function only finds label expressions for that set and checks them.
    """
    if not images:
        return Placement(Result.SKIPPED, Skip.NO_IMAGES)
    candidates = scheduling.candidates(spec, universe)
    if not candidates:
        return Placement(Result.SKIPPED, Skip.NO_CANDIDATES)
    judgement = judge(images, candidates)
    checks = judgement.images
    if any(c.unresolved is not None for c in checks):
        return Placement(Result.SKIPPED, Skip.UNRESOLVED)
    runs = set(judgement.usable_nodes)
    possible = {n.name for n in candidates if all(c.fits.get(n.name) is not Fit.NO for c in checks)}
    if not possible:
        return Placement(Result.SKIPPED, Skip.NO_COMMON_NODE)
    names = {n.name for n in candidates}
    preferred = _preference(candidates, runs or possible, prefer_architecture)
    if runs == names:
        # Nothing to exclude; a preference may still be worth writing.
        if preferred is None:
            return Placement(Result.UNCHANGED, "", admitted=tuple(sorted(names)))
        return Placement(
            Result.PLACED,
            "",
            preferred=preferred,
            weight=prefer_weight,
            admitted=tuple(sorted(names)),
            why=f"every node this pod can use runs its images; prefers {LABEL_ARCH}={preferred}",
        )
    # First the exact set (nodes that run every image), then one that also admits nodes where an image
    # runs only if containerd pulls locally: never one that admits a node that cannot run an image.
    for target in ([runs] if runs else []) + ([possible] if possible != runs else []):
        for keys in LABEL_KEYS:
            expressions = _expressions(candidates, target, keys)
            if not expressions:
                continue
            trial = constrained_spec(spec, Placement(Result.PLACED, "", expressions))
            admitted = {n.name for n in scheduling.candidates(trial, universe)}
            if admitted and admitted <= target and admitted <= names:
                at_risk = tuple(sorted(admitted - runs))
                chosen = _preference(
                    [n for n in candidates if n.name in admitted], admitted, prefer_architecture
                )
                return Placement(
                    Result.PLACED,
                    "",
                    expressions,
                    preferred=chosen,
                    weight=prefer_weight if chosen else 0,
                    admitted=tuple(sorted(admitted)),
                    at_risk=at_risk,
                    why=_why(candidates, admitted, at_risk),
                )
    if possible == names:
        # The labels cannot single out the nodes that surely run every image, and every node may (if
        # its containerd pulls locally): nothing to exclude. The validating webhook's warning says the rest.
        return Placement(Result.UNCHANGED, "", admitted=tuple(sorted(names)))
    return Placement(Result.SKIPPED, Skip.NOT_EXPRESSIBLE)


def _expressions(candidates: Sequence[Node], target: set[str], keys: Sequence[str]) -> tuple[Expression, ...]:
    """Per key, the narrowest expression that keeps every target node: `In` the target nodes' values,
    or `NotIn` the others' values when some target node has no such label. Keys that exclude nothing
    are left out."""
    out: list[Expression] = []
    for key in keys:
        keep = {n.labels.get(key) for n in candidates if n.name in target}
        every = {n.labels.get(key) for n in candidates}
        if keep >= every:
            continue
        if None not in keep:
            out.append({"key": key, "operator": "In", "values": sorted(v for v in keep if v is not None)})
        else:
            excluded = sorted(v for v in every - keep if v is not None)
            out.append({"key": key, "operator": "NotIn", "values": excluded})
    return tuple(out)


def _preference(nodes: Sequence[Node], admitted: set[str], architecture: str) -> str | None:
    """The preferred architecture when it is worth a term: some admitted nodes have it, others not."""
    if not architecture:
        return None
    archs = {n.labels.get(LABEL_ARCH) for n in nodes if n.name in admitted}
    return architecture if architecture in archs and len(archs) > 1 else None


def _why(candidates: Sequence[Node], admitted: set[str], at_risk: Sequence[str]) -> str:
    platforms = ", ".join(sorted({str(n.platform) for n in candidates if n.name in admitted}))
    text = f"every image runs on {len(admitted)} of {len(candidates)} nodes this pod can use ({platforms})"
    if at_risk:
        text += f"; on {len(at_risk)} of them only if their containerd pulls locally"
    return text


# --- writing it ------------------------------------------------------------------------------------


def constrained_spec(spec: Mapping[str, Any], placement: Placement) -> dict[str, Any]:
    """`spec` with the placement's expressions ANDed into every required term (one term created when
    there is none) and its preferred term appended. `spec` itself is not modified."""
    out = dict(spec)
    if not placement.expressions and placement.preferred is None:
        return out
    affinity = copy.deepcopy(dict(_mapping(spec.get("affinity"))))
    node_affinity = affinity.setdefault("nodeAffinity", {})
    if placement.expressions:
        required = node_affinity.get(_REQUIRED)
        if required is None:
            node_affinity[_REQUIRED] = {
                "nodeSelectorTerms": [{"matchExpressions": [dict(e) for e in placement.expressions]}]
            }
        else:
            for term in _list(required.get("nodeSelectorTerms")):
                if isinstance(term, dict):
                    term["matchExpressions"] = [
                        *_list(term.get("matchExpressions")),
                        *(dict(e) for e in placement.expressions),
                    ]
    if placement.preferred is not None:
        node_affinity[_PREFERRED] = [*_list(node_affinity.get(_PREFERRED)), _preferred_term(placement)]
    out["affinity"] = affinity
    return out


def _preferred_term(placement: Placement) -> dict[str, Any]:
    return {
        "weight": placement.weight,
        "preference": {
            "matchExpressions": [{"key": LABEL_ARCH, "operator": "In", "values": [placement.preferred]}]
        },
    }


def previous(pod: Mapping[str, Any]) -> Record | None:
    """What an earlier invocation recorded in the annotation, or None (none, or unreadable)."""
    raw = _mapping(_mapping(pod.get("metadata")).get("annotations")).get(ANNOTATION)
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    expressions = tuple(e for e in _list(data.get("added")) if isinstance(e, dict))
    preferred = data.get("preferred")
    return Record(
        result=str(data.get("result", "")),
        expressions=expressions,
        created_term=bool(data.get("createdTerm", False)),
        preferred=preferred if isinstance(preferred, dict) else None,
    )


def original_spec(spec: Mapping[str, Any], record: Record | None) -> dict[str, Any]:
    """`spec` with what `record` says we added taken out again: the spec as the user (and the webhooks
    before us) wrote it. Ours were appended, so the last equal occurrence in each term is ours."""
    out = dict(spec)
    if record is None or not (record.expressions or record.preferred):
        return out
    affinity = copy.deepcopy(dict(_mapping(spec.get("affinity"))))
    node_affinity = affinity.get("nodeAffinity")
    if not isinstance(node_affinity, dict):
        return out
    required = node_affinity.get(_REQUIRED)
    if record.expressions and isinstance(required, dict):
        terms = [t for t in _list(required.get("nodeSelectorTerms")) if isinstance(t, dict)]
        for term in terms:
            expressions = _list(term.get("matchExpressions"))
            for ours in reversed(record.expressions):
                for i in range(len(expressions) - 1, -1, -1):
                    if expressions[i] == ours:
                        del expressions[i]
                        break
            if expressions:
                term["matchExpressions"] = expressions
            else:
                term.pop("matchExpressions", None)
        if record.created_term and len(terms) == 1 and not terms[0]:
            del node_affinity[_REQUIRED]
    preferred = node_affinity.get(_PREFERRED)
    if record.preferred is not None and isinstance(preferred, list):
        for i in range(len(preferred) - 1, -1, -1):
            if preferred[i] == record.preferred:
                del preferred[i]
                break
        if not preferred:
            del node_affinity[_PREFERRED]
    if not node_affinity:
        del affinity["nodeAffinity"]
    if affinity:
        out["affinity"] = affinity
    else:
        out.pop("affinity", None)
    return out


def annotation(placement: Placement, *, created_term: bool) -> str:
    """The annotation's value: what was added and why, readable by people and by `previous`."""
    data: dict[str, Any] = {"result": placement.result.value}
    if placement.reason:
        data["reason"] = placement.reason
    if placement.expressions:
        data["added"] = [dict(e) for e in placement.expressions]
        data["createdTerm"] = created_term
    if placement.preferred is not None:
        data["preferred"] = _preferred_term(placement)
    if placement.why:
        data["why"] = placement.why
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def patch(pod: Mapping[str, Any], placement: Placement) -> list[dict[str, Any]]:
    """JSONPatch operations that give `pod` this placement (taking out an earlier one): [] when the pod
    already has exactly it, so a reinvocation that changes nothing writes nothing."""
    spec = _mapping(pod.get("spec"))
    record = previous(pod)
    base = original_spec(spec, record)
    created = placement.expressions != () and _terms(base) is None
    wanted = constrained_spec(base, placement)
    ops: list[dict[str, Any]] = []
    if wanted.get("affinity") != spec.get("affinity"):
        if "affinity" in wanted:
            op = "replace" if "affinity" in spec else "add"
            ops.append({"op": op, "path": "/spec/affinity", "value": wanted["affinity"]})
        else:
            ops.append({"op": "remove", "path": "/spec/affinity"})
    ops.extend(
        _annotation_ops(
            pod,
            annotation(placement, created_term=created)
            if placement.result
            in (
                Result.PLACED,
                Result.GATED,
            )
            else None,
        )
    )
    return ops


def _annotation_ops(pod: Mapping[str, Any], value: str | None) -> list[dict[str, Any]]:
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    path = "/metadata/annotations/" + ANNOTATION.replace("~", "~0").replace("/", "~1")
    if value is None:
        return [{"op": "remove", "path": path}] if ANNOTATION in annotations else []
    if annotations.get(ANNOTATION) == value:
        return []
    if "annotations" not in _mapping(pod.get("metadata")):
        return [{"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: value}}]
    return [{"op": "add", "path": path, "value": value}]


# --- the scheduling gate ---------------------------------------------------------------------------


def has_gate(spec: Mapping[str, Any]) -> bool:
    return any(_mapping(g).get("name") == GATE for g in _list(spec.get("schedulingGates")))


def add_gate(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSONPatch operations that add our scheduling gate (none when it is there)."""
    if has_gate(spec):
        return []
    if "schedulingGates" not in spec:
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": GATE}]}]
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": GATE}}]


def remove_gate(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod's scheduling gates without ours (others' gates are kept, in order)."""
    return [dict(g) for g in _list(spec.get("schedulingGates")) if _mapping(g).get("name") != GATE]


# --- helpers ---------------------------------------------------------------------------------------


def _terms(spec: Mapping[str, Any]) -> list[Any] | None:
    """The required nodeSelectorTerms, or None when the pod has no required node affinity."""
    required = _mapping(_mapping(_mapping(spec.get("affinity")).get("nodeAffinity"))).get(_REQUIRED)
    if required is None:
        return None
    return _list(_mapping(required).get("nodeSelectorTerms"))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
