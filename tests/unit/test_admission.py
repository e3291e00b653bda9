"""The AdmissionReview protocol of webhook.Admission: what it judges, how it answers, how it fails open.

The verdicts themselves are tested against the real apiserver and registry in tests/e2e/test_webhook.py;
here the wire format and the promises that must hold whatever the registry does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from archaudit import webhook
from archaudit.context import Context, NodeMap
from archaudit.core import policy
from archaudit.core.config import Settings
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform

UID = "c6f3f0e1-6d3e-4c55-9c55-0d1e1d0a4f00"


def review(
    *,
    resource: tuple[str, str, str] = ("", "v1", "pods"),
    operation: str = "CREATE",
    sub: str | None = None,
    obj: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    group, version, plural = resource
    request: dict[str, Any] = {
        "uid": UID,
        "resource": {"group": group, "version": version, "resource": plural},
        "operation": operation,
        "userInfo": {"username": "alice"},
        "object": obj if obj is not None else {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}},
        **extra,
    }
    if sub:
        request["subResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def exploding_context() -> Context:
    raise RuntimeError("the context is broken")


@pytest.mark.parametrize(
    ("resource", "operation", "sub", "checked"),
    [
        (("", "v1", "pods"), "CREATE", None, True),
        (("", "v1", "pods"), "UPDATE", None, True),
        (("", "v1", "pods"), "UPDATE", "ephemeralcontainers", True),
        (("", "v1", "pods"), "UPDATE", "status", False),
        (("", "v1", "pods"), "DELETE", None, False),
        (("", "v1", "pods"), "CONNECT", "exec", False),
        (("apps", "v1", "deployments"), "CREATE", None, True),
        (("apps", "v1", "deployments"), "UPDATE", "scale", False),
        (("batch", "v1", "cronjobs"), "UPDATE", None, True),
        (("", "v1", "replicationcontrollers"), "CREATE", None, True),
        (("", "v1", "configmaps"), "CREATE", None, False),
        (("apps", "v1beta1", "deployments"), "CREATE", None, False),
    ],
)
async def test_what_is_judged_and_what_is_admitted_untouched(
    resource: tuple[str, str, str], operation: str, sub: str | None, checked: bool
) -> None:
    # A context that explodes tells apart "judged" (fail-open warning) from "not ours" (plain allow).
    calls: list[tuple[str, str, float]] = []
    admit = webhook.Admission(exploding_context, on_review=lambda k, o, _out, s: calls.append((k, o, s)))
    answer = (await admit(review(resource=resource, operation=operation, sub=sub)))["response"]
    assert answer["allowed"] is True
    assert bool(answer.get("warnings")) is checked
    assert len(calls) == int(checked)


async def test_a_failing_review_admits_with_a_warning_and_counts_an_error() -> None:
    calls: list[float] = []
    admit = webhook.Admission(exploding_context, on_review=lambda _k, _o, _out, s: calls.append(s))
    answer = await admit(review())
    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": UID,
            "allowed": True,
            "warnings": ["archaudit could not check the images (RuntimeError); admitted unchecked"],
        },
    }
    assert calls == [-1.0]


def test_a_denial_carries_403_and_the_message() -> None:
    answer = webhook.response(review(), allowed=False, message="image x provides linux/amd64 only")
    assert answer["response"] == {
        "uid": UID,
        "allowed": False,
        "status": {"code": 403, "reason": "Forbidden", "message": "image x provides linux/amd64 only"},
    }


def test_warnings_go_out_as_given_and_the_api_version_is_echoed() -> None:
    sent = review()
    sent["apiVersion"] = "admission.k8s.io/v1beta1"
    answer = webhook.response(sent, allowed=True, warnings=("one", "two"))
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"] == {"uid": UID, "allowed": True, "warnings": ["one", "two"]}


def test_thousands_of_warnings_are_fitted_to_what_the_apiserver_passes_on() -> None:
    many = [f"image registry.example/app{i}:1 could not be resolved (not-found)" for i in range(2000)]
    warnings = webhook.response(review(), allowed=True, warnings=many)["response"]["warnings"]
    assert warnings[0] == many[0]
    assert sum(map(len, warnings)) <= 4096
    assert all(len(w) <= 256 for w in warnings)
    assert warnings[-1].startswith(f"... and {2000 - (len(warnings) - 1):,} more warnings")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "not a JSON object"),
        ({"kind": "Pod"}, "kind must be AdmissionReview"),
        ({"kind": "AdmissionReview"}, "request is missing"),
        ({"kind": "AdmissionReview", "request": {"uid": "u"}}, "request.resource is missing"),
        (review(object=None), "request.object is missing"),
    ],
)
def test_malformed_names_the_problem(data: Any, problem: str) -> None:
    assert problem in (webhook.malformed(data) or "")


def test_a_well_formed_review_is_not_malformed() -> None:
    assert webhook.malformed(review()) is None
    assert webhook.malformed(review(operation="DELETE", object=None, oldObject={"kind": "Pod"})) is None


# --- the decision memo: reused for the next pod of a workload, never across a change that matters ---

ARM64_ONLY = ImagePlatforms(
    "sha256:" + "a" * 64,
    "application/vnd.oci.image.manifest.v1+json",
    "manifest",
    (PlatformEntry(Platform("linux", "arm64"), "sha256:" + "a" * 64),),
)


def node_object(name: str, arch: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch}},
        "status": {"nodeInfo": {"operatingSystem": "linux", "architecture": arch}},
    }


def context_with(*nodes: tuple[str, str]) -> Context:
    node_map = NodeMap()
    node_map.replace_all(node_object(name, arch) for name, arch in nodes)
    return Context(settings=Settings(), resolver=None, nodes=node_map, credentials=None, metrics=None)  # type: ignore[arg-type]


def decide(ctx: Context, spec: Mapping[str, Any] | None = None) -> policy.Decision:
    images = [("app", "example.test/app:1", ARM64_ONLY)]
    return webhook._decide(ctx, spec or {}, images, mode=policy.Mode.ENFORCE, is_pod=True)


def test_the_next_pod_of_a_workload_reuses_the_decision() -> None:
    ctx = context_with(("amd-1", "amd64"))
    first = decide(ctx)
    assert first.verdict is policy.Verdict.INCOMPATIBLE
    assert decide(ctx) is first


def test_a_node_change_is_seen_by_the_next_review() -> None:
    ctx = context_with(("amd-1", "amd64"))
    assert decide(ctx).verdict is policy.Verdict.INCOMPATIBLE
    ctx.nodes.upsert(node_object("arm-1", "arm64"))
    assert decide(ctx).verdict is policy.Verdict.AT_RISK
    ctx.nodes.remove("amd-1")
    assert decide(ctx).verdict is policy.Verdict.COMPATIBLE


def test_other_constraints_get_their_own_decision() -> None:
    ctx = context_with(("amd-1", "amd64"), ("arm-1", "arm64"))
    assert decide(ctx).verdict is policy.Verdict.AT_RISK
    assert decide(ctx, {"nodeSelector": {"kubernetes.io/arch": "arm64"}}).verdict is policy.Verdict.COMPATIBLE


def test_a_heartbeat_does_not_move_the_node_map() -> None:
    ctx = context_with(("amd-1", "amd64"))
    version = ctx.nodes.version
    beat = node_object("amd-1", "amd64")
    beat["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": "now"}]
    ctx.nodes.upsert(beat)
    assert ctx.nodes.version == version
    ctx.nodes.upsert(node_object("amd-1", "arm64"))
    assert ctx.nodes.version == version + 1
