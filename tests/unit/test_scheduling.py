"""Which nodes a pod may land on: kube-scheduler's hard filters, one table per rule."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from archaudit.core.platforms import Platform
from archaudit.core.scheduling import (
    CONDITION_TAINTS,
    Labels,
    Node,
    Taint,
    candidates,
    matches_affinity,
    matches_selector,
    node_from_object,
    scheduling_key,
    tolerates,
    virtual_nodes,
)


def node_object(
    name: str,
    arch: str = "amd64",
    *,
    os: str = "linux",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    runtime: str = "containerd://1.7.27",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if taints is not None:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/os": os, "kubernetes.io/arch": arch, **(labels or {})},
        },
        "spec": spec,
        "status": {
            "nodeInfo": {"operatingSystem": os, "architecture": arch, "containerRuntimeVersion": runtime}
        },
    }


def node(name: str, arch: str = "amd64", **kwargs: Any) -> Node:
    return node_from_object(node_object(name, arch, **kwargs))


def names(spec: dict[str, Any], nodes: list[Node]) -> list[str]:
    return [n.name for n in candidates(spec, nodes)]


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    e: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        e["values"] = list(values)
    return e


# --- node_from_object ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "label", "configured", "forced", "expected"),
    [
        ("containerd://1.7.27", None, "", "", ("containerd-1.7",)),
        ("cri-o://1.30.1", None, "", "", ("cri-o",)),
        ("containerd://2.1.0", None, "", "", ("containerd-strict", "containerd")),
        ("containerd://2.1.0", None, "local", "", ("containerd",)),
        ("containerd://2.1.0", None, "transfer", "", ("containerd-strict",)),
        ("containerd://2.1.0", "local", "transfer", "", ("containerd",)),  # the node's label wins
        ("containerd://2.1.0", "transfer", "local", "", ("containerd-strict",)),
        ("containerd://2.1.0", "local", "", "cri-o", ("cri-o",)),  # a forced profile wins over all
        ("docker://24.0.0", None, "", "", ("containerd",)),
    ],
)
def test_node_profiles(
    runtime: str, label: str | None, configured: str, forced: str, expected: tuple[str, ...]
) -> None:
    labels = {"archaudit.io/containerd-pull": label} if label else {}
    obj = node_object("n", labels=labels, runtime=runtime)
    assert node_from_object(obj, runtime_profile=forced, containerd_pull=configured).profiles == expected


def test_node_from_object_reads_platform_taints_and_cordon() -> None:
    obj = node_object(
        "pi",
        "arm",
        labels={"archaudit.io/variant": "v6", "pool": "edge"},
        taints=[{"key": "edge", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoExecute"}],
        unschedulable=True,
    )
    n = node_from_object(obj)
    assert n.name == "pi"
    assert n.platform == Platform("linux", "arm", "v6")
    assert n.labels["pool"] == "edge"
    assert n.taints == (Taint("edge", "", "NoSchedule"), Taint("k", "v", "NoExecute"))
    assert n.unschedulable
    assert not n.virtual


def test_node_from_object_falls_back_to_node_info() -> None:
    obj = node_object("old", "arm64")
    obj["metadata"]["labels"] = {}
    assert node_from_object(obj).platform == Platform("linux", "arm64")


def test_unknown_forced_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime profile 'dockerd'"):
        node_from_object(node_object("n"), runtime_profile="dockerd")


def test_node_is_a_hashable_picklable_value() -> None:
    a = node("a", labels={"x": "1"})
    same = node("a", labels={"x": "1"})
    other = node("a", labels={"x": "2"})
    assert a == same
    assert hash(a) == hash(same)
    assert a != other
    assert len({a, same, other}) == 2
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a
    with pytest.raises(TypeError):
        a.labels["x"] = "2"  # type: ignore[index]
    assert isinstance(Node("d", Platform("linux", "amd64"), labels={"k": "v"}).labels, Labels)


# --- nodeName -----------------------------------------------------------------------------------------

NODES = [
    node("amd-1", "amd64", labels={"pool": "general", "cores": "8"}),
    node("arm-1", "arm64", labels={"pool": "general", "cores": "64"}),
    node("arm-2", "arm64", labels={"pool": "batch"}),
    node("pi", "arm", labels={"cores": "4x"}),
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"nodeName": "arm-2"}, ["arm-2"]),
        ({"nodeName": "gone"}, []),  # a node we do not know: no candidate, not "every node"
        # bound: the selector is the kubelet's business, not the scheduler's
        ({"nodeName": "arm-2", "nodeSelector": {"kubernetes.io/arch": "amd64"}}, ["arm-2"]),
        ({"nodeName": ""}, ["amd-1", "arm-1", "arm-2", "pi"]),
        ({}, ["amd-1", "arm-1", "arm-2", "pi"]),
    ],
)
def test_node_name(spec: dict[str, Any], expected: list[str]) -> None:
    assert names(spec, NODES) == expected


def test_node_name_ignores_taints_cordon_and_virtual_nodes() -> None:
    tainted = node("t", taints=[{"key": "dedicated", "effect": "NoSchedule"}], unschedulable=True)
    virtual = virtual_nodes(["linux/amd64"])
    assert names({"nodeName": "t"}, [tainted, *virtual]) == ["t"]
    assert names({"nodeName": virtual[0].name}, virtual) == []


# --- nodeSelector ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"kubernetes.io/arch": "arm64"}, ["arm-1", "arm-2"]),
        ({"kubernetes.io/arch": "arm64", "pool": "general"}, ["arm-1"]),  # every pair must match
        ({"pool": "nowhere"}, []),
        ({"kubernetes.io/arch": "ARM64"}, []),  # values are compared exactly
        ({}, ["amd-1", "arm-1", "arm-2", "pi"]),
    ],
)
def test_node_selector(selector: dict[str, str], expected: list[str]) -> None:
    assert names({"nodeSelector": selector}, NODES) == expected
    for n in NODES:
        assert matches_selector({"nodeSelector": selector}, n) == (n.name in expected)


# --- required node affinity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ({"matchExpressions": [expr("kubernetes.io/arch", "In", "arm64", "arm")]}, ["arm-1", "arm-2", "pi"]),
        ({"matchExpressions": [expr("kubernetes.io/arch", "In", "s390x")]}, []),
        ({"matchExpressions": [expr("pool", "In", "general")]}, ["amd-1", "arm-1"]),
        # NotIn also matches nodes without the label
        ({"matchExpressions": [expr("pool", "NotIn", "general")]}, ["arm-2", "pi"]),
        ({"matchExpressions": [expr("pool", "Exists")]}, ["amd-1", "arm-1", "arm-2"]),
        ({"matchExpressions": [expr("pool", "DoesNotExist")]}, ["pi"]),
        ({"matchExpressions": [expr("cores", "Gt", "8")]}, ["arm-1"]),
        ({"matchExpressions": [expr("cores", "Gt", "7")]}, ["amd-1", "arm-1"]),
        ({"matchExpressions": [expr("cores", "Lt", "64")]}, ["amd-1"]),  # "4x" is not an integer: no match
        ({"matchExpressions": [expr("cores", "Lt", "+65")]}, ["amd-1", "arm-1"]),
        ({"matchExpressions": [expr("cores", "Gt", "-1")]}, ["amd-1", "arm-1"]),
        ({"matchExpressions": [expr("missing", "Lt", "100")]}, []),  # Gt/Lt need the label
        # expressions of a term are ANDed
        (
            {"matchExpressions": [expr("kubernetes.io/arch", "In", "arm64"), expr("pool", "NotIn", "batch")]},
            ["arm-1"],
        ),
        # matchFields on metadata.name
        ({"matchFields": [expr("metadata.name", "In", "arm-2")]}, ["arm-2"]),
        ({"matchFields": [expr("metadata.name", "NotIn", "arm-2")]}, ["amd-1", "arm-1", "pi"]),
        # fields and expressions of one term are ANDed
        (
            {
                "matchExpressions": [expr("kubernetes.io/arch", "In", "arm64")],
                "matchFields": [expr("metadata.name", "NotIn", "arm-1")],
            },
            ["arm-2"],
        ),
    ],
)
def test_affinity_operators(term: dict[str, Any], expected: list[str]) -> None:
    spec = affinity(term)
    assert names(spec, NODES) == expected
    for n in NODES:
        assert matches_affinity(spec, n) == (n.name in expected)


@pytest.mark.parametrize(
    "term",
    [
        {},  # an empty term selects nothing
        {"matchExpressions": [], "matchFields": []},
        {"matchExpressions": [expr("cores", "Gt", "eight")]},  # non-integer value: the term is invalid
        {"matchExpressions": [expr("cores", "Gt", "1.5")]},
        {"matchExpressions": [expr("cores", "Lt", " 9")]},
        {"matchExpressions": [expr("cores", "Gt", "1", "2")]},  # Gt/Lt take exactly one value
        {"matchExpressions": [expr("cores", "Lt")]},
        {"matchExpressions": [expr("pool", "In")]},  # In/NotIn need values
        {"matchExpressions": [expr("pool", "NotIn")]},
        {"matchExpressions": [expr("pool", "Exists", "general")]},  # Exists/DoesNotExist take none
        {"matchExpressions": [expr("pool", "DoesNotExist", "x")]},
        {"matchExpressions": [expr("pool", "Matches", "general")]},  # unknown operator
        {"matchFields": [expr("metadata.name", "In", "arm-1", "arm-2")]},  # one value only
        {"matchFields": [expr("metadata.name", "Exists")]},
        {"matchFields": [expr("metadata.uid", "In", "arm-1")]},  # the only node field is metadata.name
        # an invalid expression spoils its whole term, even beside a valid one
        {"matchExpressions": [expr("pool", "Exists"), expr("cores", "Gt", "x")]},
    ],
)
def test_affinity_terms_that_select_nothing(term: dict[str, Any]) -> None:
    assert names(affinity(term), NODES) == []


def test_affinity_terms_are_ored() -> None:
    spec = affinity(
        {"matchExpressions": [expr("kubernetes.io/arch", "In", "amd64")]},
        {},  # ignored, selects nothing
        {"matchFields": [expr("metadata.name", "In", "pi")]},
        {"matchExpressions": [expr("cores", "Gt", "nope")]},  # invalid: selects nothing, spoils no other
    )
    assert names(spec, NODES) == ["amd-1", "pi"]


@pytest.mark.parametrize(
    ("node_affinity", "expected"),
    [
        ({}, ["amd-1", "arm-1", "arm-2", "pi"]),  # no required part
        ({"requiredDuringSchedulingIgnoredDuringExecution": {}}, []),  # no terms: nothing
        ({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}, []),
        (
            {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [expr("pool", "In", "batch")]}}
                ]
            },
            ["amd-1", "arm-1", "arm-2", "pi"],
        ),  # preferences only score
    ],
)
def test_affinity_shapes(node_affinity: dict[str, Any], expected: list[str]) -> None:
    assert names({"affinity": {"nodeAffinity": node_affinity}}, NODES) == expected


def test_selector_and_affinity_both_apply() -> None:
    spec = {
        "nodeSelector": {"pool": "general"},
        **affinity({"matchExpressions": [expr("kubernetes.io/arch", "In", "arm64")]}),
    }
    assert names(spec, NODES) == ["arm-1"]


# --- taints and tolerations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effect", "blocks"),
    [("NoSchedule", True), ("NoExecute", True), ("PreferNoSchedule", False)],
)
def test_taint_effects(effect: str, blocks: bool) -> None:
    tainted = node("tainted", taints=[{"key": "dedicated", "value": "gpu", "effect": effect}])
    assert names({}, [tainted]) == ([] if blocks else ["tainted"])


TAINT = Taint("kubernetes.io/arch", "arm64", "NoSchedule")


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}, True),
        ({"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"}, True),  # Equal by default
        ({"key": "kubernetes.io/arch", "value": "arm64"}, True),  # empty effect: every effect
        ({"key": "kubernetes.io/arch", "value": "amd64"}, False),  # Equal compares values
        ({"key": "kubernetes.io/arch"}, False),  # Equal with no value wants an empty value
        ({"key": "kubernetes.io/arch", "operator": "Exists"}, True),
        ({"key": "kubernetes.io/arch", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
        ({"operator": "Exists"}, True),  # empty key with Exists: every taint
        ({"operator": "Exists", "effect": "NoSchedule"}, True),
        ({"operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "kubernetes.io/arch", "operator": "Lt", "value": "arm64"}, False),  # unknown operator
    ],
)
def test_toleration_rules(toleration: dict[str, str], tolerated: bool) -> None:
    assert tolerates([toleration], TAINT) is tolerated
    gke_arm = node(
        "arm", "arm64", taints=[{"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"}]
    )
    assert names({"tolerations": [toleration]}, [gke_arm]) == (["arm"] if tolerated else [])


def test_every_taint_must_be_tolerated() -> None:
    n = node(
        "n",
        taints=[
            {"key": "a", "effect": "NoSchedule"},
            {"key": "b", "value": "1", "effect": "NoExecute"},
            {"key": "c", "effect": "PreferNoSchedule"},
        ],
    )
    only_a = [{"key": "a", "operator": "Exists"}]
    both = [*only_a, {"key": "b", "value": "1", "effect": "NoExecute"}]
    assert names({"tolerations": only_a}, [n]) == []
    assert names({"tolerations": both}, [n]) == ["n"]
    assert not tolerates([], Taint("a", "", "NoSchedule"))


@pytest.mark.parametrize("key", sorted(CONDITION_TAINTS))
def test_passing_condition_taints_do_not_filter(key: str) -> None:
    # A NotReady node comes back; verdicts must not flap with node conditions.
    n = node("n", taints=[{"key": key, "effect": "NoExecute"}, {"key": key, "effect": "NoSchedule"}])
    assert names({}, [n]) == ["n"]


# --- cordoned nodes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tolerations", "expected"),
    [
        ([], []),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}], ["c"]),
        ([{"operator": "Exists"}], ["c"]),
        ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoExecute"}], []),
    ],
)
def test_cordoned_node(tolerations: list[dict[str, str]], expected: list[str]) -> None:
    cordoned = node("c", unschedulable=True)
    assert names({"tolerations": tolerations}, [cordoned]) == expected


# --- virtual nodes -------------------------------------------------------------------------------------


def test_virtual_nodes_shape() -> None:
    arm64, armv6, win = virtual_nodes(["linux/arm64", "linux/arm/v6", "windows/amd64:10.0.20348"])
    assert arm64.name == "(cluster platform linux/arm64)"
    assert arm64.virtual
    assert arm64.platform == Platform("linux", "arm64")
    assert dict(arm64.labels) == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}
    assert arm64.profiles == ("containerd",)
    assert armv6.platform == Platform("linux", "arm", "v6")
    assert win.platform == Platform("windows", "amd64", os_version="10.0.20348")
    assert virtual_nodes(["linux/aarch64"])[0].labels["kubernetes.io/arch"] == "arm64"  # as a node labels it
    assert virtual_nodes(["linux/arm64"], profiles=("containerd-strict",))[0].profiles == (
        "containerd-strict",
    )
    with pytest.raises(ValueError, match="expected os/architecture"):
        virtual_nodes(["arm64"])


VIRTUAL = virtual_nodes(["linux/arm64", "linux/amd64"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ["(cluster platform linux/arm64)", "(cluster platform linux/amd64)"]),
        ({"nodeSelector": {"kubernetes.io/arch": "amd64"}}, ["(cluster platform linux/amd64)"]),
        ({"nodeSelector": {"kubernetes.io/os": "windows"}}, []),
        # other labels are unknown for a node that does not exist yet: assumed satisfiable
        (
            {"nodeSelector": {"pool": "gpu"}},
            ["(cluster platform linux/arm64)", "(cluster platform linux/amd64)"],
        ),
        (
            affinity(
                {"matchExpressions": [expr("kubernetes.io/arch", "NotIn", "arm64"), expr("pool", "Exists")]}
            ),
            ["(cluster platform linux/amd64)"],
        ),
        (
            affinity({"matchExpressions": [expr("pool", "DoesNotExist"), expr("gpu", "Gt", "2")]}),
            [v.name for v in VIRTUAL],
        ),
        (affinity({"matchExpressions": [expr("pool", "Gt", "two")]}), []),  # still invalid
        (affinity({"matchFields": [expr("metadata.name", "In", "arm-1")]}), []),  # a DaemonSet pod's pin
        (affinity({"matchFields": [expr("metadata.name", "NotIn", "arm-1")]}), [v.name for v in VIRTUAL]),
        # taints are unknown too: a pod tolerating nothing still may land on a future node
        ({"tolerations": []}, [v.name for v in VIRTUAL]),
    ],
)
def test_virtual_nodes_are_filtered_by_os_and_arch_only(spec: dict[str, Any], expected: list[str]) -> None:
    assert names(spec, VIRTUAL) == expected


def test_virtual_nodes_widen_real_candidates() -> None:
    real = [node("amd-1", "amd64", taints=[{"key": "x", "effect": "NoSchedule"}]), node("amd-2", "amd64")]
    got = names({"nodeSelector": {"pool": "web"}}, [*real, *VIRTUAL])
    assert got == ["(cluster platform linux/arm64)", "(cluster platform linux/amd64)"]
    assert names({}, [*real, *VIRTUAL]) == ["amd-2", *(v.name for v in VIRTUAL)]


def test_virtual_nodes_ignore_taints_and_cordon_even_if_given() -> None:
    v = Node(
        "(cluster platform linux/arm64)",
        Platform("linux", "arm64"),
        labels={"kubernetes.io/arch": "arm64"},
        taints=(Taint("kubernetes.io/arch", "arm64", "NoSchedule"),),
        unschedulable=True,
        virtual=True,
    )
    assert names({}, [v]) == [v.name]


# --- scheduling_key: equal keys must mean equal candidates ------------------------------------------

KEYED_SPECS: list[dict[str, Any]] = [
    {},
    {"nodeName": "arm-1"},
    {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
    {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
    {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
                            ]
                        }
                    ]
                }
            }
        }
    },
]
KEY_NODES = [
    node("amd-1"),
    node("arm-1", "arm64"),
    node("arm-2", "arm64", taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
]


def test_every_field_candidates_reads_changes_the_scheduling_key() -> None:
    keys = [scheduling_key(spec) for spec in KEYED_SPECS]
    assert len(set(keys)) == len(keys)


def test_what_candidates_ignores_leaves_the_key_alone() -> None:
    base = {"nodeSelector": {"b": "2", "a": "1"}}
    other = {
        "nodeSelector": {"a": "1", "b": "2"},  # key order
        "containers": [{"name": "x", "image": "busybox"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "serviceAccountName": "sa",
    }
    assert scheduling_key(base) == scheduling_key(other)
    assert names(base, KEY_NODES) == names(other, KEY_NODES)
