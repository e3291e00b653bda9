"""Which nodes a pod (or a workload's pod template) may land on.

archaudit's verdict is "can every image run on the nodes this pod can use?", so the set of nodes has to
be the one kube-scheduler would consider, not the whole cluster: an amd64-only image is fine in a pod
pinned to amd64 by a nodeSelector, and a pod that tolerates nothing never lands on a tainted Arm pool.
This module reproduces the scheduler's hard filters that depend on the pod spec and node labels:
`nodeName`, `nodeSelector`, required node affinity, NoSchedule/NoExecute taints and cordoned nodes.
Resources, ports and pod (anti-)affinity are left out on purpose: they change from minute to minute and
say nothing about which architectures a pod may meet.

Deliberate differences from kube-scheduler, each so that verdicts follow the cluster's shape rather
than its weather:
- the taints the node lifecycle controller adds for passing conditions (not-ready, unreachable, memory
  pressure, ...) are ignored: a NotReady Arm node comes back, and a verdict must not flap with it;
- a pod with `nodeName` is bound: its only candidate is that node (when it exists), whatever its
  selectors, taints or cordon say, because the scheduler is not involved and the kubelet reports those
  mismatches itself;
- virtual nodes (`ClusterSettings.platforms`, node groups an autoscaler has scaled to zero) are always
  candidates when the pod's constraints on `kubernetes.io/os` / `kubernetes.io/arch` allow them. Only
  those two labels are known, so requirements on any other label are assumed to be satisfiable and
  taints are not checked. They widen "nodes this pod can use", which is their purpose: an image that
  runs on today's amd64 nodes but not on the arm64 nodes the autoscaler will add is at risk.

Pure: plain dicts in the shape of the Kubernetes API's JSON, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from archaudit.core.platforms import (
    LABEL_ARCH,
    LABEL_OS,
    LABEL_PULL_MODE,
    LABEL_VARIANT,
    LABEL_WINDOWS_BUILD,
    RUNTIMES,
    Platform,
    node_platform,
    profiles_for,
)

__all__ = [
    "CONDITION_TAINTS",
    "UNSCHEDULABLE_TAINT",
    "Labels",
    "Node",
    "Taint",
    "candidates",
    "matches_affinity",
    "matches_selector",
    "node_from_object",
    "schedulable",
    "scheduling_key",
    "tolerates",
    "tolerates_taints",
    "virtual_nodes",
]

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
# Added and removed by the node lifecycle controller as conditions come and go (see module docstring).
CONDITION_TAINTS = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/network-unavailable",
        "node.cloudprovider.kubernetes.io/uninitialized",
    }
)
_FILTERING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})  # PreferNoSchedule only scores
_VIRTUAL_LABELS = frozenset({LABEL_OS, LABEL_ARCH})


class Labels(Mapping[str, str]):
    """A read-only, hashable label map, so that a Node can be a frozen, hashable, picklable value."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"

    def __reduce__(self) -> tuple[type[Labels], tuple[dict[str, str]]]:
        return (Labels, (self._items,))


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class Node:
    """What archaudit keeps of a node: small, because the webhook holds one per node in memory."""

    name: str
    platform: Platform
    profiles: tuple[str, ...] = ("containerd",)  # platforms.profiles_for(...) or the configured override
    labels: Mapping[str, str] = field(default_factory=Labels)  # stored as Labels: read-only, hashable
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    virtual: bool = False  # a configured cluster platform: no such node exists yet

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Labels):
            object.__setattr__(self, "labels", Labels(self.labels))


def node_from_object(obj: Mapping[str, Any], *, runtime_profile: str = "", containerd_pull: str = "") -> Node:
    """A Node from a Kubernetes Node object (as JSON).

    `runtime_profile` (one of platforms.RUNTIMES) forces the profile of every node. Otherwise it comes
    from `status.nodeInfo.containerRuntimeVersion`; for containerd 2.x the pull mode is the node's
    `archaudit.io/containerd-pull` label (local|transfer), else `containerd_pull`, else unknown.
    """
    metadata = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    node_info = _mapping(_mapping(obj.get("status")).get("nodeInfo"))
    labels = {str(k): str(v) for k, v in _mapping(metadata.get("labels")).items()}
    info = {str(k): str(v) for k, v in node_info.items() if isinstance(v, str)}
    return Node(
        name=str(metadata.get("name", "")),
        platform=node_platform(labels, info),
        profiles=_profiles(labels, info, runtime_profile, containerd_pull),
        labels=labels,
        taints=tuple(_taints(spec.get("taints"))),
        unschedulable=bool(spec.get("unschedulable", False)),
    )


def _profiles(
    labels: Mapping[str, str], node_info: Mapping[str, str], runtime_profile: str, containerd_pull: str
) -> tuple[str, ...]:
    if runtime_profile:
        if runtime_profile not in RUNTIMES:
            raise ValueError(f"unknown runtime profile {runtime_profile!r}: expected one of {RUNTIMES}")
        return (runtime_profile,)
    pull = labels.get(LABEL_PULL_MODE) or containerd_pull or None  # the node's own label wins
    return profiles_for(node_info.get("containerRuntimeVersion", ""), pull)


def _taints(raw: object) -> Iterable[Taint]:
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, Mapping):
            yield Taint(str(item.get("key", "")), str(item.get("value") or ""), str(item.get("effect", "")))


def virtual_nodes(platforms: Iterable[str], *, profiles: Sequence[str] = ("containerd",)) -> list[Node]:
    """Nodes for configured cluster platforms ("linux/arm64") that no real node stands for yet.

    Their runtime is unknown, so they are judged with the lenient `containerd` profile unless told
    otherwise. Raises ValueError for a platform that does not parse.
    """
    nodes = []
    for text in platforms:
        parsed = Platform.parse(text)
        # Read as a node with these labels would be, so "linux/aarch64" is labelled arm64 like real ones.
        hints = {LABEL_OS: parsed.os, LABEL_ARCH: parsed.architecture}
        if parsed.variant:
            hints[LABEL_VARIANT] = parsed.variant
        if parsed.os_version:
            hints[LABEL_WINDOWS_BUILD] = parsed.os_version
        platform = node_platform(hints)
        nodes.append(
            Node(
                name=f"(cluster platform {text})",
                platform=platform,
                profiles=tuple(profiles),
                labels={LABEL_OS: platform.os, LABEL_ARCH: platform.architecture},
                virtual=True,
            )
        )
    return nodes


def candidates(pod_spec: Mapping[str, Any], nodes: Iterable[Node]) -> list[Node]:
    """The nodes, in the order given, that this pod spec may be scheduled to (see module docstring)."""
    node_name = pod_spec.get("nodeName")
    if node_name:
        return [n for n in nodes if n.name == node_name and not n.virtual]
    return [n for n in nodes if schedulable(pod_spec, n)]


def scheduling_key(pod_spec: Mapping[str, Any]) -> str:
    """Everything `candidates` reads from a pod spec, canonical: equal keys, equal candidates.

    The pods of one workload share it, so callers can reuse one answer for all of them.
    """
    return json.dumps(
        [
            pod_spec.get("nodeName"),
            pod_spec.get("nodeSelector"),
            _mapping(pod_spec.get("affinity")).get("nodeAffinity"),
            pod_spec.get("tolerations"),
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


def schedulable(pod_spec: Mapping[str, Any], node: Node) -> bool:
    """Whether the scheduler's label, affinity, taint and cordon filters let the pod onto `node`."""
    if not (matches_selector(pod_spec, node) and matches_affinity(pod_spec, node)):
        return False
    if node.virtual:
        return True
    tolerations = _tolerations(pod_spec)
    if node.unschedulable and not tolerates(tolerations, Taint(UNSCHEDULABLE_TAINT, "", "NoSchedule")):
        return False
    return tolerates_taints(tolerations, node.taints)


def matches_selector(pod_spec: Mapping[str, Any], node: Node) -> bool:
    """`spec.nodeSelector`: every pair must be a label of the node."""
    selector = _mapping(pod_spec.get("nodeSelector"))
    for key, value in selector.items():
        if node.virtual and key not in _VIRTUAL_LABELS:
            continue
        if node.labels.get(str(key)) != str(value):
            return False
    return True


def matches_affinity(pod_spec: Mapping[str, Any], node: Node) -> bool:
    """Required node affinity: ORed nodeSelectorTerms, each an AND of its expressions and fields.

    As kube-scheduler: an empty term selects nothing, no terms select nothing, and a term with an
    invalid requirement (unknown operator, non-integer Gt/Lt value, In without values...) selects
    nothing.
    """
    node_affinity = _mapping(_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    terms = _mapping(required).get("nodeSelectorTerms")
    return any(_term_matches(_mapping(term), node) for term in (terms if isinstance(terms, list) else ()))


def _term_matches(term: Mapping[str, Any], node: Node) -> bool:
    expressions = _list(term.get("matchExpressions"))
    fields = _list(term.get("matchFields"))
    if not expressions and not fields:
        return False
    return all(_expression_matches(_mapping(e), node) for e in expressions) and all(
        _field_matches(_mapping(f), node) for f in fields
    )


def _expression_matches(expression: Mapping[str, Any], node: Node) -> bool:
    key = str(expression.get("key", ""))
    operator = expression.get("operator")
    values = [str(v) for v in _list(expression.get("values"))]
    if not _valid_expression(operator, values):
        return False
    if node.virtual and key not in _VIRTUAL_LABELS:
        return True  # a label we cannot know for a node that does not exist yet
    present = key in node.labels
    label = node.labels.get(key, "")
    if operator == "In":
        return present and label in values
    if operator == "NotIn":
        return not present or label not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    number = _integer(label)
    if not present or number is None:
        return False
    bound = int(values[0])
    return number > bound if operator == "Gt" else number < bound


def _valid_expression(operator: object, values: Sequence[str]) -> bool:
    # The rules of labels.NewRequirement, which the scheduler uses to parse a term.
    if operator in ("In", "NotIn"):
        return len(values) > 0
    if operator in ("Exists", "DoesNotExist"):
        return len(values) == 0
    if operator in ("Gt", "Lt"):
        return len(values) == 1 and _integer(values[0]) is not None
    return False


def _field_matches(requirement: Mapping[str, Any], node: Node) -> bool:
    # Only metadata.name exists as a node field; In/NotIn with exactly one value, as the API requires.
    values = [str(v) for v in _list(requirement.get("values"))]
    if requirement.get("key") != "metadata.name" or len(values) != 1:
        return False
    operator = requirement.get("operator")
    if operator == "In":
        return node.name == values[0]
    if operator == "NotIn":
        return node.name != values[0]
    return False


def _integer(text: str) -> int | None:
    # Go's strconv.ParseInt(s, 10, 64): optional sign, decimal digits, no spaces or underscores.
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits.isascii() or not digits.isdigit():
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Taint) -> bool:
    """Whether any toleration tolerates `taint` (Kubernetes' Toleration.ToleratesTaint).

    Empty effect matches every effect; empty key (with Exists) matches every key; the default
    operator is Equal, which compares values.
    """
    return any(_tolerates_one(t, taint) for t in tolerations)


def _tolerates_one(toleration: Mapping[str, Any], taint: Taint) -> bool:
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    if key and key != taint.key:
        return False
    value = toleration.get("value") or ""
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return bool(value == taint.value)
    return False


def tolerates_taints(tolerations: Sequence[Mapping[str, Any]], taints: Iterable[Taint]) -> bool:
    """Whether every NoSchedule/NoExecute taint that is not a passing condition is tolerated."""
    return all(
        tolerates(tolerations, taint)
        for taint in taints
        if taint.effect in _FILTERING_EFFECTS and taint.key not in CONDITION_TAINTS
    )


def _tolerations(pod_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in _list(pod_spec.get("tolerations")) if isinstance(t, Mapping)]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
