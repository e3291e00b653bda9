"""Placement rules (core/placement.py): what is added to which terms, the invariants, idempotence, skips.

The invariants are checked with the scheduling filters and the engine themselves: a constrained spec's
candidates (`scheduling.candidates`) are compared with the engine's per-node fits (`engine.judge`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archaudit.core import placement, scheduling
from archaudit.core.engine import ImageResult, judge
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.placement import Result, Skip
from archaudit.core.platforms import Fit, Platform
from tests.unit.test_one_engine import IMAGES, POD_SPECS, clusters

CASES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ARCH = "kubernetes.io/arch"


def node(name: str, platform: str, runtime: str = "containerd://1.7.20", **labels: str) -> scheduling.Node:
    p = Platform.parse(platform)
    base = {"kubernetes.io/os": p.os, ARCH: p.architecture, "kubernetes.io/hostname": name, **labels}
    return scheduling.node_from_object(
        {
            "metadata": {"name": name, "labels": base},
            "status": {"nodeInfo": {"containerRuntimeVersion": runtime}},
        }
    )


def image(*platforms: str, n: int = 1) -> ImagePlatforms:
    return ImagePlatforms(
        digest=f"sha256:{n:064x}",
        media_type="application/vnd.oci.image.index.v1+json",
        kind="index",
        entries=tuple(
            PlatformEntry(Platform.parse(p), f"sha256:{100 + i:064x}") for i, p in enumerate(platforms)
        ),
    )


CLUSTER = [
    node("amd64-1", "linux/amd64"),
    node("amd64-2", "linux/amd64"),
    node("arm64-1", "linux/arm64"),
    node("arm64-2", "linux/arm64"),
]
ARM64_ONLY: list[ImageResult] = [("app", "acme/app:1", image("linux/arm64"))]
MULTI: list[ImageResult] = [("app", "acme/multi:1", image("linux/amd64", "linux/arm64"))]


def pod(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "acme/app:1"}], **(spec or {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", **meta},
        "spec": body,
    }


def admitted(spec: dict[str, Any], universe: list[scheduling.Node]) -> list[str]:
    return sorted(n.name for n in scheduling.candidates(spec, universe))


def apply(body: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(body, ops)
    return result


def hostname_affinity(*hosts: str) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": list(hosts)}
                        ]
                    }
                ]
            }
        }
    }


# --- examples ---------------------------------------------------------------------------------------


def test_an_unconstrained_pod_gets_one_term_with_the_arch() -> None:
    p = pod()
    answer = placement.place(p["spec"], ARM64_ONLY, CLUSTER)
    assert answer.result is Result.PLACED
    assert answer.expressions == ({"key": ARCH, "operator": "In", "values": ["arm64"]},)
    placed = apply(p, placement.patch(p, answer))
    terms = placed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [{"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["arm64"]}]}]
    assert admitted(placed["spec"], CLUSTER) == ["arm64-1", "arm64-2"]
    note = json.loads(placed["metadata"]["annotations"][placement.ANNOTATION])
    assert (note["result"], note["added"], note["createdTerm"]) == ("placed", list(answer.expressions), True)
    assert "2 of 4 nodes" in note["why"]


def test_an_existing_required_affinity_is_narrowed_not_widened() -> None:
    p = pod({"affinity": hostname_affinity("amd64-1", "arm64-1")})
    user = copy.deepcopy(p["spec"]["affinity"])
    answer = placement.place(p["spec"], ARM64_ONLY, CLUSTER)
    placed = apply(p, placement.patch(p, answer))
    terms = placed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 1  # never a new ORed term
    user_expressions = user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert terms[0]["matchExpressions"][: len(user_expressions)] == user_expressions
    assert admitted(placed["spec"], CLUSTER) == ["arm64-1"]
    assert placement.original_spec(placed["spec"], placement.previous(placed))["affinity"] == user


def test_every_term_is_narrowed() -> None:
    affinity = hostname_affinity("amd64-1", "arm64-1")
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms.append(
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["arm64-2"]}]}
    )
    terms.append({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["amd64-2"]}]})
    p = pod({"affinity": affinity})
    placed = apply(p, placement.patch(p, placement.place(p["spec"], ARM64_ONLY, CLUSTER)))
    new_terms = placed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(new_terms) == 3
    assert all(
        {"key": ARCH, "operator": "In", "values": ["arm64"]} in t["matchExpressions"] for t in new_terms
    )
    assert new_terms[2]["matchFields"] == terms[2]["matchFields"]
    assert admitted(placed["spec"], CLUSTER) == ["arm64-1", "arm64-2"]


def test_a_multi_arch_image_changes_nothing() -> None:
    p = pod()
    answer = placement.place(p["spec"], MULTI, CLUSTER)
    assert answer.result is Result.UNCHANGED
    assert placement.patch(p, answer) == []


def test_a_preferred_architecture_is_a_weighted_preference_never_a_pin() -> None:
    p = pod()
    answer = placement.place(p["spec"], MULTI, CLUSTER, prefer_architecture="arm64", prefer_weight=30)
    placed = apply(p, placement.patch(p, answer))
    node_affinity = placed["spec"]["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in node_affinity
    assert node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "weight": 30,
            "preference": {"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["arm64"]}]},
        }
    ]
    assert admitted(placed["spec"], CLUSTER) == admitted(p["spec"], CLUSTER)
    assert placement.patch(placed, answer) == []
    # Not written where it cannot matter: only arm64 nodes are left for an arm64-only image.
    assert placement.place(p["spec"], ARM64_ONLY, CLUSTER, prefer_architecture="arm64").preferred is None


def test_no_node_runs_every_image_is_left_to_the_validating_webhook() -> None:
    images: list[ImageResult] = [*ARM64_ONLY, ("side", "acme/side:1", image("linux/amd64", n=2))]
    answer = placement.place(pod()["spec"], images, CLUSTER)
    assert (answer.result, answer.reason) == (Result.SKIPPED, Skip.NO_COMMON_NODE)
    assert placement.patch(pod(), answer) == []


def test_an_unresolved_image_is_skipped() -> None:
    images: list[ImageResult] = [("app", "acme/app:1", ResolutionError(Reason.NOT_FOUND, "no such image"))]
    assert placement.place(pod()["spec"], images, CLUSTER).reason == Skip.UNRESOLVED


def test_arm_variants_are_told_apart_by_the_variant_label() -> None:
    universe = [
        node("pi-zero", "linux/arm/v6", **{"archaudit.io/variant": "v6"}),
        node("pi-4", "linux/arm/v7"),  # no label: arm is read as v7
        node("amd64-1", "linux/amd64"),
    ]
    v7: list[ImageResult] = [("app", "acme/v7:1", image("linux/arm/v7"))]
    answer = placement.place({}, v7, universe)
    assert answer.expressions == (
        {"key": ARCH, "operator": "In", "values": ["arm"]},
        {"key": "archaudit.io/variant", "operator": "NotIn", "values": ["v6"]},
    )
    assert admitted(placement.constrained_spec({}, answer), universe) == ["pi-4"]
    v6: list[ImageResult] = [("app", "acme/v6:1", image("linux/arm/v6"))]
    answer = placement.place({}, v6, universe)  # v7 nodes run v6 images: the arch says it all
    assert answer.expressions == ({"key": ARCH, "operator": "In", "values": ["arm"]},)


def test_runtimes_the_labels_cannot_tell_apart_get_no_constraint() -> None:
    # containerd 1.7 runs arm/v7 on arm64, CRI-O does not; no label says which node is which.
    universe = [
        node("a", "linux/arm64"),
        node("b", "linux/arm64", runtime="cri-o://1.30.0"),
        node("c", "linux/amd64"),
    ]
    answer = placement.place({}, [("app", "acme/v7:1", image("linux/arm/v7"))], universe)
    assert (answer.result, answer.reason) == (Result.SKIPPED, Skip.NOT_EXPRESSIBLE)


def test_a_containerd_2_node_of_unknown_pull_mode_is_admitted_and_said_so() -> None:
    universe = [node("a", "linux/arm64", runtime="containerd://2.1.4"), node("c", "linux/amd64")]
    answer = placement.place({}, [("app", "acme/v7:1", image("linux/arm/v7"))], universe)
    assert (answer.result, answer.at_risk) == (Result.PLACED, ("a",))
    assert "only if their containerd pulls locally" in answer.why


def test_cluster_platforms_count_as_candidates() -> None:
    universe = [node("amd64-1", "linux/amd64"), *scheduling.virtual_nodes(["linux/arm64"])]
    answer = placement.place({}, ARM64_ONLY, universe)
    assert answer.expressions == ({"key": ARCH, "operator": "In", "values": ["arm64"]},)
    assert admitted(placement.constrained_spec({}, answer), universe) == ["(cluster platform linux/arm64)"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (pod({"nodeName": "amd64-1"}), Skip.NODE_NAME),
        (pod({"nodeSelector": {ARCH: "amd64"}}), Skip.ARCH_CONSTRAINED),
        (
            pod(
                {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": ARCH, "operator": "NotIn", "values": ["arm"]}
                                        ]
                                    }
                                ]
                            }
                        }
                    }
                }
            ),
            Skip.ARCH_CONSTRAINED,
        ),
        (
            pod(ownerReferences=[{"kind": "DaemonSet", "name": "d", "controller": True, "uid": "u"}]),
            Skip.DAEMONSET,
        ),
        (pod(annotations={"kubernetes.io/config.mirror": "abc"}), Skip.MIRROR),
    ],
)
def test_skips(body: dict[str, Any], reason: Skip) -> None:
    assert placement.skip_reason(body, body["spec"]) is reason


def test_an_arch_in_only_some_terms_is_not_a_skip() -> None:
    affinity = hostname_affinity("amd64-1")
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms.append({"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["arm64"]}]})
    body = pod({"affinity": affinity})
    assert placement.skip_reason(body, body["spec"]) is None
    # A ReplicaSet's pods are placed; our own expressions never make a pod "constrained by the user".
    owned = pod(ownerReferences=[{"kind": "ReplicaSet", "name": "r", "controller": True, "uid": "u"}])
    placed = apply(owned, placement.patch(owned, placement.place(owned["spec"], ARM64_ONLY, CLUSTER)))
    user = placement.original_spec(placed["spec"], placement.previous(placed))
    assert placement.skip_reason(placed, user) is None


def test_a_sidecar_added_by_a_later_webhook_is_taken_into_account() -> None:
    p = pod()
    first = placement.place(p["spec"], MULTI, CLUSTER)
    assert first.result is Result.UNCHANGED
    placed = apply(p, placement.patch(p, first))
    placed["spec"]["containers"].append({"name": "side", "image": "acme/side:1"})
    images: list[ImageResult] = [*MULTI, ("side", "acme/side:1", image("linux/arm64", n=3))]
    again = placement.place(
        placement.original_spec(placed["spec"], placement.previous(placed)), images, CLUSTER
    )
    replaced = apply(placed, placement.patch(placed, again))
    assert admitted(replaced["spec"], CLUSTER) == ["arm64-1", "arm64-2"]


def test_reinvocation_replaces_rather_than_stacks() -> None:
    p = pod({"affinity": hostname_affinity("amd64-1", "arm64-1", "arm64-2")})
    first = placement.place(p["spec"], ARM64_ONLY, CLUSTER)
    placed = apply(p, placement.patch(p, first))
    assert placement.patch(placed, first) == []  # the same answer: nothing to write
    # A sidecar that runs on amd64 only: no node runs both; our constraint is taken back out.
    images: list[ImageResult] = [*ARM64_ONLY, ("side", "acme/side:1", image("linux/amd64", n=3))]
    again = placement.place(
        placement.original_spec(placed["spec"], placement.previous(placed)), images, CLUSTER
    )
    back = apply(placed, placement.patch(placed, again))
    assert back["spec"] == p["spec"]
    assert placement.ANNOTATION not in back["metadata"]["annotations"]


def test_the_gate_is_added_once_and_removed_alone() -> None:
    spec: dict[str, Any] = {"schedulingGates": [{"name": "other.io/gate"}]}
    gated = apply({"spec": spec}, placement.add_gate(spec))["spec"]
    assert placement.has_gate(gated)
    assert placement.add_gate(gated) == []
    assert placement.remove_gate(gated) == [{"name": "other.io/gate"}]
    assert apply({"spec": {}}, placement.add_gate({}))["spec"] == {
        "schedulingGates": [{"name": placement.GATE}]
    }


@pytest.mark.parametrize(
    ("labels", "default", "expected"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"archaudit.io/placement": "on"}, False, True),
        ({"archaudit.io/placement": "off"}, True, False),
        ({"archaudit.io/placement": "yes"}, False, False),
    ],
)
def test_namespace_label(labels: dict[str, str], default: bool, expected: bool) -> None:
    assert placement.namespace_enabled(labels, default=default) is expected


# --- invariants, over any cluster, pod and images ------------------------------------------------------

VIRTUAL = st.lists(
    st.sampled_from(["linux/arm64", "linux/amd64", "linux/arm/v6", "linux/arm/v7"]), max_size=2
)
MORE_IMAGES = st.lists(IMAGES, min_size=1, max_size=3)


def universe_of(real: list[scheduling.Node], virtual: list[str]) -> list[scheduling.Node]:
    return real + scheduling.virtual_nodes(virtual)


def images_of(results: list[ImagePlatforms | ResolutionError]) -> list[ImageResult]:
    return [(f"c{i}", f"img{i}", r) for i, r in enumerate(results)]


@CASES
@given(clusters(), VIRTUAL, POD_SPECS, MORE_IMAGES, st.sampled_from(["", "arm64", "amd64"]))
def test_the_constraint_never_admits_a_node_that_cannot_run_an_image(
    real: list[scheduling.Node], virtual: list[str], spec: dict[str, Any], results: list[Any], prefer: str
) -> None:
    universe = universe_of(real, virtual)
    images = images_of(results)
    answer = placement.place(spec, images, universe, prefer_architecture=prefer)
    before = {n.name for n in scheduling.candidates(spec, universe)}
    after_spec = placement.constrained_spec(spec, answer)
    after = {n.name for n in scheduling.candidates(after_spec, universe)}
    assert after <= before  # never widens
    if answer.result is not Result.PLACED:
        assert after == before
        assert not answer.expressions
        if answer.reason == Skip.NOT_EXPRESSIBLE:
            # Not a way out: even the plain arch constraint would admit a node where an image cannot run.
            fits = judge(images, [n for n in universe if n.name in before])
            good_archs = {n.labels.get(ARCH) for n in universe if n.name in fits.usable_nodes}
            plain = {n.name for n in universe if n.name in before and n.labels.get(ARCH) in good_archs}
            assert any(any(c.fits[name] is Fit.NO for c in fits.images) for name in plain)
        return
    assert after
    assert after == set(answer.admitted)
    fits = judge(images, [n for n in universe if n.name in before]).images
    for name in after:
        assert all(c.fits[name] is not Fit.NO for c in fits), f"{name} cannot run an image"
    runs = set(judge(images, [n for n in universe if n.name in before]).usable_nodes)
    assert after - runs == set(answer.at_risk)
    # What the user wrote stays as written: the nodeSelector, and each term's expressions as a prefix.
    assert after_spec.get("nodeSelector") == spec.get("nodeSelector")
    old_terms = placement._terms(spec)
    new_terms = placement._terms(after_spec)
    if old_terms is not None and answer.expressions:
        assert new_terms is not None
        assert len(new_terms) == len(old_terms)
        for old, new in zip(old_terms, new_terms, strict=True):
            user = old.get("matchExpressions", [])
            assert new["matchExpressions"][: len(user)] == user
            assert new.get("matchFields") == old.get("matchFields")


@CASES
@given(clusters(), VIRTUAL, POD_SPECS, MORE_IMAGES, MORE_IMAGES, st.sampled_from(["", "arm64"]))
def test_reinvocation_is_idempotent_and_follows_the_current_images(
    real: list[scheduling.Node],
    virtual: list[str],
    spec: dict[str, Any],
    first: list[Any],
    sidecars: list[Any],
    prefer: str,
) -> None:
    universe = universe_of(real, virtual)
    body = pod(copy.deepcopy(spec))
    user_spec = copy.deepcopy(body["spec"])
    images = images_of(first)
    answer = placement.place(body["spec"], images, universe, prefer_architecture=prefer)
    once = apply(body, placement.patch(body, answer))
    # Same images again: the spec we would compute is the one the pod has, and nothing is written.
    recovered = placement.original_spec(once["spec"], placement.previous(once))
    assert recovered == user_spec
    assert placement.place(recovered, images, universe, prefer_architecture=prefer) == answer
    assert placement.patch(once, answer) == []
    # A later webhook adds sidecars: the result is what a first invocation with every image gives.
    everything = images + [(f"s{i}", f"side{i}", r) for i, r in enumerate(sidecars)]
    again = placement.place(recovered, everything, universe, prefer_architecture=prefer)
    twice = apply(once, placement.patch(once, again))
    direct = apply(body, placement.patch(body, again))
    assert twice["spec"] == direct["spec"]
    assert placement.original_spec(twice["spec"], placement.previous(twice)) == user_spec


def test_nodes_that_may_run_an_image_only_if_containerd_pulls_locally_are_left_as_they_are() -> None:
    """Found by hypothesis: one containerd 2.x arm64 node, an amd64 + arm/v7 image (lenient pull only)."""
    node = scheduling.Node(
        "n0",
        Platform("linux", "arm64"),
        ("containerd-strict", "containerd"),
        {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"},
    )
    image = ImagePlatforms(
        digest="sha256:" + "0" * 64,
        media_type="application/vnd.oci.image.index.v1+json",
        kind="index",
        entries=(
            PlatformEntry(Platform("linux", "amd64"), "sha256:" + "1" * 64),
            PlatformEntry(Platform("linux", "arm", "v7"), "sha256:" + "2" * 64),
        ),
    )
    answer = placement.place({}, [("c0", "img0", image)], [node])
    assert (answer.result, answer.expressions) == (Result.UNCHANGED, ())
