"""One engine: for any pod, node set and image set, the auditor and the webhook give the same verdict.

Both paths are the real ones: the webhook's `policy.decide` over `scheduling.candidates`, and the
auditor's `reports.build` over a pending pod with the same candidates (and a template report for a
workload without pods). Node sets mix architectures, ARM variants, runtime profiles, taints, cordons
and labels; pods mix nodeSelectors, required affinity and tolerations; images mix multi-platform
indexes, single-platform images and unresolvable ones.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archaudit.core import engine, policy, reports, scheduling
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform

CASES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORKLOAD = reports.WorkloadRef("apps/v1", "Deployment", "web", "uid-1", "shop")
NOW = "2026-01-01T00:00:00Z"

PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/386", "linux/s390x"]
RUNTIMES = ["containerd://1.7.20", "containerd://2.1.4", "cri-o://1.30.0", "containerd://1.7.11-k3s2"]


@st.composite
def node_objects(draw: st.DrawFn, index: int) -> dict[str, Any]:
    platform = Platform.parse(draw(st.sampled_from(PLATFORMS[:4])))
    labels = {
        "kubernetes.io/os": platform.os,
        "kubernetes.io/arch": platform.architecture,
        "kubernetes.io/hostname": f"n{index}",
        "pool": draw(st.sampled_from(["a", "b"])),
    }
    if platform.variant and draw(st.booleans()):
        labels["archaudit.io/variant"] = platform.variant
    if draw(st.booleans()):
        labels["archaudit.io/containerd-pull"] = draw(st.sampled_from(["local", "transfer"]))
    taints = draw(
        st.lists(
            st.sampled_from(
                [
                    {"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
                    {"key": "soft", "effect": "PreferNoSchedule"},
                ]
            ),
            max_size=2,
            unique_by=lambda t: t["key"],
        )
    )
    return {
        "metadata": {"name": f"n{index}", "labels": labels},
        "spec": {"taints": taints, "unschedulable": draw(st.booleans()) and draw(st.booleans())},
        "status": {
            "nodeInfo": {
                "architecture": platform.architecture,
                "operatingSystem": platform.os,
                "containerRuntimeVersion": draw(st.sampled_from(RUNTIMES)),
            }
        },
    }


@st.composite
def clusters(draw: st.DrawFn) -> list[scheduling.Node]:
    count = draw(st.integers(0, 6))
    return [scheduling.node_from_object(draw(node_objects(i))) for i in range(count)]


POD_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": st.dictionaries(
            st.sampled_from(["kubernetes.io/arch", "pool"]),
            st.sampled_from(["amd64", "arm64", "arm", "a", "b"]),
            max_size=1,
        ),
        "affinity": st.builds(
            lambda key, values: {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": key, "operator": "In", "values": values}]}
                        ]
                    }
                }
            },
            st.sampled_from(["kubernetes.io/arch", "pool", "kubernetes.io/hostname"]),
            st.lists(st.sampled_from(["amd64", "arm64", "arm", "a", "n0", "n1"]), min_size=1, max_size=3),
        ),
        "tolerations": st.lists(
            st.sampled_from(
                [
                    {"key": "kubernetes.io/arch", "operator": "Exists"},
                    {"key": "dedicated", "operator": "Equal", "value": "gpu"},
                    {"operator": "Exists"},
                ]
            ),
            max_size=2,
        ),
    },
)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


IMAGES = st.one_of(
    st.lists(st.sampled_from(PLATFORMS), min_size=1, max_size=4, unique=True).map(
        lambda ps: ImagePlatforms(
            digest=digest(len(ps)),
            media_type="application/vnd.oci.image.index.v1+json",
            kind="index",
            entries=tuple(PlatformEntry(Platform.parse(p), digest(100 + i)) for i, p in enumerate(ps)),
        )
    ),
    st.sampled_from(list(Reason)).map(lambda r: ResolutionError(r, f"could not ({r.value})")),
)


@CASES
@given(clusters(), POD_SPECS, st.lists(IMAGES, min_size=1, max_size=3))
def test_the_auditor_judges_a_pending_pod_as_the_webhook_does(
    nodes: list[scheduling.Node], spec: dict[str, Any], results: list[Any]
) -> None:
    images = {f"acme/img{i}:1": r for i, r in enumerate(results)}
    containers = tuple(reports.Container(f"c{i}", name) for i, name in enumerate(images))
    candidates = tuple(scheduling.candidates(spec, nodes))

    webhook = policy.decide(
        [(c.name, c.image, images[c.image]) for c in containers],
        candidates,
        mode=policy.Mode.AUDIT,
        is_pod=True,
    )
    pending = reports.PodFacts("web-1", None, candidates, containers)
    auditor = reports.build(WORKLOAD, [pending], images, now=NOW)
    assert auditor.verdict == webhook.verdict

    # A workload without pods, judged from its template, says the same as the workload webhook.
    template = reports.TemplateFacts(containers, candidates, why="scaled to 0")
    from_template = reports.build(WORKLOAD, [], images, now=NOW, template=template)
    workload = policy.decide(
        [(c.name, c.image, images[c.image]) for c in containers],
        candidates,
        mode=policy.Mode.AUDIT,
        is_pod=False,
    )
    assert from_template.verdict == workload.verdict
    assert from_template.message.startswith("scaled to 0: ")


@CASES
@given(clusters(), POD_SPECS, st.lists(IMAGES, min_size=1, max_size=3), st.data())
def test_a_running_pod_is_never_judged_better_than_where_it_runs(
    nodes: list[scheduling.Node], spec: dict[str, Any], results: list[Any], data: st.DataObject
) -> None:
    if not nodes:
        return
    landed = data.draw(st.sampled_from(nodes))
    images = [(f"c{i}", f"acme/img{i}:1", r) for i, r in enumerate(results)]
    j = engine.judge(images, tuple(scheduling.candidates(spec, nodes)), landed=landed)
    alone = engine.judge(images, (landed,))
    # What holds on its own node bounds the pod: Incompatible there is Incompatible anywhere.
    if alone.verdict is engine.Verdict.INCOMPATIBLE:
        assert j.verdict is engine.Verdict.INCOMPATIBLE
    if j.verdict is engine.Verdict.COMPATIBLE:
        assert alone.verdict is engine.Verdict.COMPATIBLE
