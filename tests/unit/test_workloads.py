"""Pod specs of every workload kind, their images, and who owns a pod."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from archaudit.core.scheduling import Node, candidates, node_from_object
from archaudit.core.workloads import (
    DAEMONSET_TOLERATIONS,
    WORKLOAD_KINDS,
    containers_of,
    controller_of,
    pod_spec_of,
    scheduling_spec_of,
    top_level_owner,
)

SPEC = {
    "initContainers": [{"name": "setup", "image": "busybox:1.36"}],
    "containers": [
        {"name": "api", "image": "ghcr.io/acme/api:1.2"},
        {"name": "sidecar", "image": "envoy:v1"},
    ],
    "ephemeralContainers": [{"name": "debug", "image": "nicolaka/netshoot"}],
}


def template(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "x"}}, "spec": spec}


OBJECTS = {
    "Pod": {"kind": "Pod", "spec": SPEC},
    "PodTemplate": {"kind": "PodTemplate", "template": template(SPEC)},
    "Deployment": {"kind": "Deployment", "spec": {"replicas": 2, "template": template(SPEC)}},
    "StatefulSet": {"kind": "StatefulSet", "spec": {"template": template(SPEC)}},
    "DaemonSet": {"kind": "DaemonSet", "spec": {"template": template(SPEC)}},
    "ReplicaSet": {"kind": "ReplicaSet", "spec": {"template": template(SPEC)}},
    "ReplicationController": {"kind": "ReplicationController", "spec": {"template": template(SPEC)}},
    "Job": {"kind": "Job", "spec": {"template": template(SPEC)}},
    "CronJob": {
        "kind": "CronJob",
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template(SPEC)}}},
    },
}


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_pod_spec_of_every_kind(kind: str) -> None:
    assert kind in WORKLOAD_KINDS
    assert pod_spec_of(OBJECTS[kind]) == SPEC


def test_every_known_kind_has_an_example() -> None:
    assert set(WORKLOAD_KINDS) == set(OBJECTS)


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Service", "spec": {"template": template(SPEC)}},  # not a workload
        {"spec": SPEC},  # no kind
        {"kind": "ReplicationController", "spec": {"replicas": 0}},  # template is optional there
        {"kind": "Deployment", "spec": {"template": "oops"}},
        {"kind": "CronJob", "spec": {"jobTemplate": None}},
        {"kind": "Pod"},
        {"kind": "Pod", "spec": ["not", "a", "mapping"]},
    ],
)
def test_pod_spec_of_returns_none_without_a_spec(obj: dict[str, Any]) -> None:
    assert pod_spec_of(obj) is None


def test_containers_of_lists_every_section_in_order() -> None:
    assert containers_of(SPEC) == [
        ("containers", "api", "ghcr.io/acme/api:1.2"),
        ("containers", "sidecar", "envoy:v1"),
        ("initContainers", "setup", "busybox:1.36"),
        ("ephemeralContainers", "debug", "nicolaka/netshoot"),
    ]


def test_containers_of_skips_what_names_no_image() -> None:
    spec = {
        "containers": [{"name": "a"}, {"name": "b", "image": ""}, "junk", {"name": "c", "image": 3}],
        "initContainers": None,
        "ephemeralContainers": {"name": "d", "image": "x"},
    }
    assert containers_of(spec) == []
    assert containers_of({}) == []


# --- scheduling view -------------------------------------------------------------------------------------


def cordoned_node() -> Node:
    return node_from_object(
        {
            "metadata": {"name": "c", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}},
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
            },
        }
    )


def test_daemonset_pods_tolerate_cordoned_nodes() -> None:
    ds = OBJECTS["DaemonSet"]
    spec = scheduling_spec_of(ds)
    assert spec is not None
    assert [n.name for n in candidates(spec, [cordoned_node()])] == ["c"]
    # the template itself is left alone, and other kinds get nothing added
    assert "tolerations" not in SPEC
    deployment_spec = scheduling_spec_of(OBJECTS["Deployment"])
    assert deployment_spec is not None
    assert candidates(deployment_spec, [cordoned_node()]) == []


def test_daemonset_keeps_its_own_tolerations_and_adds_network_for_host_network() -> None:
    own = {"key": "dedicated", "operator": "Exists"}
    ds = {
        "kind": "DaemonSet",
        "spec": {"template": template({**SPEC, "hostNetwork": True, "tolerations": [own]})},
    }
    spec = scheduling_spec_of(ds)
    assert spec is not None
    tolerations = spec["tolerations"]
    assert tolerations[0] == own
    assert tolerations[1 : 1 + len(DAEMONSET_TOLERATIONS)] == list(DAEMONSET_TOLERATIONS)
    assert tolerations[-1]["key"] == "node.kubernetes.io/network-unavailable"
    plain = scheduling_spec_of(OBJECTS["DaemonSet"])
    assert plain is not None
    assert "node.kubernetes.io/network-unavailable" not in [t["key"] for t in plain["tolerations"]]


def test_scheduling_spec_of_unknown_kind() -> None:
    assert scheduling_spec_of({"kind": "ConfigMap"}) is None


# --- owners --------------------------------------------------------------------------------------------


def owned(
    kind: str,
    name: str,
    owner: tuple[str, str] | None,
    *,
    controller: bool = True,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Other", "name": "not-me"},  # not the controller
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": controller},
        ]
    return {"kind": kind, "metadata": metadata}


STORE = {
    ("ReplicaSet", "shop", "web-7d9f"): owned("ReplicaSet", "web-7d9f", ("Deployment", "web")),
    ("Deployment", "shop", "web"): owned("Deployment", "web", None),
    ("Job", "shop", "nightly-2890"): owned("Job", "nightly-2890", ("CronJob", "nightly")),
    ("CronJob", "shop", "nightly"): owned("CronJob", "nightly", None),
    ("ReplicaSet", "shop", "loop-a"): owned("ReplicaSet", "loop-a", ("ReplicaSet", "loop-b")),
    ("ReplicaSet", "shop", "loop-b"): owned("ReplicaSet", "loop-b", ("ReplicaSet", "loop-a")),
}
calls: list[tuple[str, str, str]] = []


def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
    calls.append((kind, namespace, name))
    return STORE.get((kind, namespace, name))


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (owned("Pod", "web-7d9f-abcde", ("ReplicaSet", "web-7d9f")), ("Deployment", "web")),
        (owned("Pod", "nightly-2890-xyz", ("Job", "nightly-2890")), ("CronJob", "nightly")),
        (
            owned("Pod", "db-0", ("StatefulSet", "db")),
            ("StatefulSet", "db"),
        ),  # lookup finds none: as referenced
        (owned("Pod", "bare", None), ("Pod", "bare")),
        (owned("Pod", "adopted", ("ReplicaSet", "web-7d9f"), controller=False), ("Pod", "adopted")),
        (owned("ReplicaSet", "web-7d9f", ("Deployment", "web")), ("Deployment", "web")),
        (
            owned("Pod", "p", ("ReplicaSet", "loop-a")),
            ("ReplicaSet", "loop-b"),
        ),  # a loop ends, it does not spin
    ],
)
def test_top_level_owner_with_lookup(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    calls.clear()
    assert top_level_owner(obj, lookup) == expected
    assert all(namespace == "shop" for _kind, namespace, _name in calls)
    assert len(calls) <= 3


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # the Deployment controller names ReplicaSets <deployment>-<pod-template-hash>
        (
            owned("Pod", "web-7d9f-abcde", ("ReplicaSet", "web-7d9f"), labels={"pod-template-hash": "7d9f"}),
            ("Deployment", "web"),
        ),
        (
            owned("Pod", "p", ("ReplicaSet", "web-7d9f"), labels={"pod-template-hash": "0000"}),
            ("ReplicaSet", "web-7d9f"),
        ),
        (
            owned("Pod", "p", ("ReplicaSet", "-7d9f"), labels={"pod-template-hash": "7d9f"}),
            ("ReplicaSet", "-7d9f"),
        ),
        (owned("Pod", "p", ("ReplicaSet", "standalone")), ("ReplicaSet", "standalone")),
        (owned("Pod", "nightly-2890-xyz", ("Job", "nightly-2890")), ("Job", "nightly-2890")),  # one step only
        (owned("Pod", "bare", None), ("Pod", "bare")),
    ],
)
def test_top_level_owner_without_lookup(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert top_level_owner(obj) == expected


def test_controller_of() -> None:
    assert controller_of(owned("Pod", "p", ("Job", "j"))) == ("Job", "j")
    assert controller_of(owned("Pod", "p", ("Job", "j"), controller=False)) is None
    assert controller_of({"metadata": {"ownerReferences": "junk"}}) is None
    assert controller_of({}) is None
