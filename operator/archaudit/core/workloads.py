"""Where the pod spec lives in every workload kind, which images it runs, and who owns a pod.

The webhook checks workloads as well as Pods (warning on a Deployment is friendlier than failing the
ReplicaSet's pods one by one), and the auditor reports a pod under the workload a person manages. Both
need the same three answers, kept here in one table so that adding a kind is one line. Pure: objects are
the API's JSON as plain mappings; finding an owner object is injected as a lookup, so no I/O happens here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CONTAINER_SECTIONS",
    "DAEMONSET_TOLERATIONS",
    "WORKLOAD_KINDS",
    "OwnerLookup",
    "containers_of",
    "controller_of",
    "pod_spec_of",
    "scheduling_spec_of",
    "top_level_owner",
]

# kind -> path of keys from the object to its pod spec (the pod template's spec for workloads).
WORKLOAD_KINDS: Mapping[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

# Every image of a pod runs on its node: init containers first, ephemeral (debug) containers later.
CONTAINER_SECTIONS = ("containers", "initContainers", "ephemeralContainers")

# What the DaemonSet controller adds to every pod it creates (AddOrUpdateDaemonPodTolerations): its
# pods go to cordoned and pressured nodes too, so the template alone under-reports their candidates.
DAEMONSET_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)
_HOST_NETWORK_TOLERATION: Mapping[str, str] = {
    "key": "node.kubernetes.io/network-unavailable",
    "operator": "Exists",
    "effect": "NoSchedule",
}

# (kind, namespace, name) -> the object, or None when it is gone or unknown.
OwnerLookup = Callable[[str, str, str], Mapping[str, Any] | None]
_MAX_OWNER_DEPTH = 8  # Pod -> ReplicaSet -> Deployment is 2; anything deeper is a loop or a stranger


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or the pod template spec of a workload; None for other kinds or no template."""
    path = WORKLOAD_KINDS.get(str(obj.get("kind", "")))
    if path is None:
        return None
    node: object = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, Mapping) else None


def scheduling_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec as the scheduler will see it: for a DaemonSet, with its controller's tolerations."""
    spec = pod_spec_of(obj)
    if spec is None or obj.get("kind") != "DaemonSet":
        return spec
    added = list(DAEMONSET_TOLERATIONS)
    if spec.get("hostNetwork"):
        added.append(_HOST_NETWORK_TOLERATION)
    own = spec.get("tolerations")
    return {**spec, "tolerations": [*(own if isinstance(own, list) else []), *added]}


def containers_of(pod_spec: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(section, container name, image) of every container that names an image, in section order."""
    found = []
    for section in CONTAINER_SECTIONS:
        entries = pod_spec.get(section)
        for container in entries if isinstance(entries, list) else ():
            image = container.get("image") if isinstance(container, Mapping) else None
            if isinstance(image, str) and image:
                found.append((section, str(container.get("name", "")), image))
    return found


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the ownerReference marked controller, as Kubernetes' GetControllerOf."""
    refs = _metadata(obj).get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("kind", "")), str(ref.get("name", ""))
    return None


def top_level_owner(obj: Mapping[str, Any], lookup: OwnerLookup | None = None) -> tuple[str, str]:
    """(kind, name) of the object a person manages: Pod -> ReplicaSet -> Deployment, Job -> CronJob.

    With `lookup`, controller references are followed up to an object that has none, or whose owner
    the lookup cannot find (then that owner, as referenced, is the answer). Without it, one step is
    taken, plus the Deployment controller's naming convention: a ReplicaSet named
    `<deployment>-<pod-template-hash>` owning a pod that carries that hash belongs to `<deployment>`.
    """
    current = (str(obj.get("kind", "")), str(_metadata(obj).get("name", "")))
    namespace = str(_metadata(obj).get("namespace") or "")
    owner = controller_of(obj)
    if owner is None:
        return current
    if lookup is None:
        return _deployment_by_name(obj, owner) or owner
    seen = {current}
    for _ in range(_MAX_OWNER_DEPTH):
        if owner in seen:
            return current  # an ownership loop: stop at the last object that exists
        seen.add(owner)
        found = lookup(owner[0], namespace, owner[1])
        if found is None:
            return owner
        current, owner = owner, controller_of(found)
        if owner is None:
            return current
    return current


def _deployment_by_name(pod: Mapping[str, Any], owner: tuple[str, str]) -> tuple[str, str] | None:
    labels = _metadata(pod).get("labels")
    template_hash = labels.get("pod-template-hash") if isinstance(labels, Mapping) else None
    kind, name = owner
    suffix = f"-{template_hash}"
    if kind == "ReplicaSet" and template_hash and name.endswith(suffix) and len(name) > len(suffix):
        return "Deployment", name[: -len(suffix)]
    return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}
