"""`/mutate/pods` (placement.Mutation): the AdmissionReview it answers, what it patches, when it gates.

The rules are tested in test_placement.py and against the real apiserver and scheduler in
tests/e2e/test_placement.py; here the wire format, the namespace switch and the budget.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch

from archaudit import placement
from archaudit.adapters.events import EventEmitter
from archaudit.adapters.resolver import Resolution
from archaudit.context import Context, NodeMap
from archaudit.core import config
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform
from archaudit.core.reference import ImageReference
from tests.unit.test_admission import node_object, review

ARM64_ONLY = ImagePlatforms(
    "sha256:" + "b" * 64,
    "application/vnd.oci.image.manifest.v1+json",
    "manifest",
    (PlatformEntry(Platform("linux", "arm64"), "sha256:" + "b" * 64),),
)


class Credentials:
    async def for_pod(
        self, namespace: str, spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential]:
        return ()

    def peek_for_pod(
        self, namespace: str, spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential] | None:
        return ()


class Resolver:
    """Cached: answers from `peek` at once; `hang`: nothing cached and the registry never answers."""

    def __init__(self, *, hang: bool = False, down: bool = False) -> None:
        self.hang = hang
        self.down = down  # the cache remembers the registry's own timeout

    async def resolve(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> Resolution:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def peek(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> Resolution | None:
        if self.down:
            raise ResolutionError(Reason.TIMEOUT, f"image {ref}: registry timeout (cached)")
        if self.hang:
            return None
        return Resolution(reference=ref, image=ARM64_ONLY)


def context(
    *, hang: bool = False, down: bool = False, default: str = "off", labels: Mapping[str, str] | None = None
) -> Context:
    nodes = NodeMap()
    nodes.replace_all([node_object("amd-1", "amd64"), node_object("arm-1", "arm64")])
    settings = dataclasses.replace(
        config.Settings(), placement=config.PlacementSettings(default=default, budget_seconds=0.05)
    )
    ctx = Context(
        settings=settings,
        resolver=Resolver(hang=hang, down=down),
        nodes=nodes,
        credentials=Credentials(),
        metrics=None,  # type: ignore[arg-type]
    )
    ctx.namespaces["ns"] = dict(labels if labels is not None else {"archaudit.io/placement": "on"})
    return ctx


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}]},
}


def mutate(
    ctx: Context, body: dict[str, Any] | None = None, **extra: Any
) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    mutation = placement.Mutation(
        lambda: ctx, observe=lambda result, reason: seen.append(f"{result}:{reason}")
    )
    data = review(obj=body or POD, **extra)
    answer = asyncio.run(mutation(data))
    assert answer["response"]["uid"] == data["request"]["uid"]
    assert answer["response"]["allowed"] is True
    return dict(answer["response"]), seen


def patched(answer: Mapping[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    assert answer["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(answer["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(body or POD, ops)
    return result


def test_a_cached_arm64_only_image_is_placed_at_once() -> None:
    answer, seen = mutate(context())
    pod = patched(answer)
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}
        ]
    }
    assert json.loads(pod["metadata"]["annotations"]["archaudit.io/placement"])["result"] == "placed"
    assert seen == ["placed:"]


def test_a_namespace_without_the_label_follows_the_default() -> None:
    answer, seen = mutate(context(labels={}))
    assert "patch" not in answer
    assert seen == []
    answer, _ = mutate(context(labels={}, default="on"))
    assert "patch" in answer
    answer, _ = mutate(context(labels={"archaudit.io/placement": "off"}, default="on"))
    assert "patch" not in answer
    answer, _ = mutate(context(labels={"archaudit.io/placement": "on", "archaudit.io/ignore": ""}))
    assert "patch" not in answer


def test_an_image_not_resolved_within_the_budget_gets_the_gate() -> None:
    answer, seen = mutate(context(hang=True))
    pod = patched(answer)
    assert pod["spec"]["schedulingGates"] == [{"name": "archaudit.io/placement"}]
    assert "affinity" not in pod["spec"]
    assert json.loads(pod["metadata"]["annotations"]["archaudit.io/placement"])["result"] == "gated"
    assert seen == ["gated:"]


def test_only_pod_create_is_mutated() -> None:
    for extra in ({"operation": "UPDATE"}, {"sub": "ephemeralcontainers", "operation": "UPDATE"}):
        answer, seen = mutate(context(), **extra)
        assert "patch" not in answer
        assert seen == []


def test_a_skipped_pod_is_counted_with_its_reason() -> None:
    bound = {**POD, "spec": {**POD["spec"], "nodeName": "amd-1"}}
    answer, seen = mutate(context(), bound)
    assert "patch" not in answer
    assert seen == ["skipped:node-name"]


def test_a_broken_context_admits_unchanged() -> None:
    def broken() -> Context:
        raise RuntimeError("boom")

    answer = asyncio.run(placement.Mutation(broken)(review(obj=POD)))
    assert answer["response"] == {"uid": review()["request"]["uid"], "allowed": True}


def test_the_server_routes_mutate_and_validate_paths() -> None:
    from archaudit import app

    async def admit(data: Mapping[str, Any], **_: Any) -> Mapping[str, Any]:
        return {}

    async def mutate_(data: Mapping[str, Any], **_: Any) -> Mapping[str, Any]:
        return {}

    routes = app._Routes(admit, mutate_)
    assert routes.find("validate/pods") is admit
    assert routes.find("pods") is admit  # a server rooted at /validate
    assert routes.find("mutate/pods") is mutate_
    assert routes.find("mutate/workloads") is None
    assert routes.find("validate/mutate") is None
    assert app._Routes(admit, None).find("mutate/pods") is None


# --- the gate controller, over a fake apiserver --------------------------------------------------------


class FakeApi:
    """patch_pod_json / read_pod / create_event as the controller calls them; `failures` patches fail."""

    def __init__(self, pod: dict[str, Any], failures: int = 0) -> None:
        self.pod = pod
        self.failures = failures
        self.patches: list[list[Any]] = []
        self.events: list[dict[str, Any]] = []

    async def patch_pod_json(self, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]) -> None:
        self.patches.append(list(ops))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("apiserver said 500")
        self.pod = jsonpatch.apply_patch(self.pod, list(ops))  # raises on a failed `test`

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pod

    async def request(self, method: str, path: str, *, body: Mapping[str, Any]) -> dict[str, Any]:
        # Only the Event emitter calls this: it creates Events (a gate released once, one Event).
        assert (method, path) == ("POST", f"/api/v1/namespaces/{self.pod['metadata']['namespace']}/events")
        self.events.append(dict(body))
        return {"metadata": {"name": f"e{len(self.events)}"}}


def gated_pod(image: str = "example.test/app:1", created: str = "2999-01-01T00:00:00Z") -> dict[str, Any]:
    body = json.loads(json.dumps(POD))
    body["metadata"].update(uid="u-1", creationTimestamp=created)
    body["spec"]["containers"][0]["image"] = image
    body["spec"]["schedulingGates"] = [{"name": "archaudit.io/placement"}]
    return body


async def release(ctx: Context, api: FakeApi) -> list[str]:
    """Run the gate controller on `api.pod`, with the real Event emitter writing to `api`."""
    seen: list[str] = []
    ctx.api = api  # type: ignore[assignment]
    ctx.events = EventEmitter(api)  # type: ignore[arg-type]
    controller = placement.GateController(ctx, observe=lambda r, why: seen.append(f"{r}:{why}"))
    assert controller.interesting(api.pod)
    controller.seen(api.pod)
    assert controller.gated()[0] == 1
    await asyncio.gather(*controller._tasks.values())
    await ctx.events.drain()  # what the emitter's worker does in its next round
    return seen


def test_the_controller_places_and_ungates_in_one_update_retrying_a_failed_one() -> None:
    api = FakeApi(gated_pod(), failures=1)
    seen = asyncio.run(release(context(), api))
    assert seen == ["placed:"]
    assert len(api.patches) == 2  # the failed one, then the same on a fresh read
    assert "schedulingGates" not in api.pod["spec"]
    expressions = api.pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert expressions["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["arm64"]
    assert api.patches[-1][0]["op"] == "test"  # conditional: another replica's ungating wins
    assert api.events == []


def test_a_pod_past_its_gate_timeout_is_let_go_with_a_warning_event() -> None:
    api = FakeApi(gated_pod(created="2000-01-01T00:00:00Z"))
    seen = asyncio.run(release(context(hang=True), api))
    assert seen == ["ungated-timeout:"]
    assert "schedulingGates" not in api.pod["spec"]
    assert "affinity" not in api.pod["spec"]
    assert (
        json.loads(api.pod["metadata"]["annotations"]["archaudit.io/placement"])["result"]
        == "ungated-timeout"
    )
    (event,) = api.events
    assert (event["type"], event["reason"]) == ("Warning", "PlacementTimeout")
    assert event["involvedObject"]["uid"] == "u-1"


def test_a_pod_ungated_by_someone_else_is_left_alone() -> None:
    api = FakeApi(gated_pod(), failures=1)
    api.pod["spec"].pop("schedulingGates")  # what the fresh read will say
    ctx = context()
    ctx.api = api  # type: ignore[assignment]
    controller = placement.GateController(ctx)

    async def run() -> None:
        controller.seen(gated_pod())
        await asyncio.gather(*controller._tasks.values())

    asyncio.run(run())
    assert len(api.patches) == 1
    controller.seen(api.pod)
    assert controller.gated() == (0, None)
    assert not controller.interesting(api.pod)


def test_the_uninstall_hook_deletes_the_webhook_first_then_releases_every_gated_pod() -> None:
    calls: list[str] = []
    other = {"metadata": {"name": "other", "namespace": "ns", "uid": "u-2"}, "spec": {"containers": []}}
    pods = {"p": gated_pod(), "other": other}
    pods["p"]["spec"]["schedulingGates"].append({"name": "someone.else/gate"})

    class Api:
        async def delete_webhook_configuration(self, name: str, *, mutating: bool = False) -> bool:
            calls.append(f"delete {name} mutating={mutating}")
            return True

        async def list_pods(self) -> list[dict[str, Any]]:
            calls.append("list")
            return list(pods.values())

        async def patch_pod_json(self, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]) -> None:
            calls.append(f"patch {name}")
            pods[name] = jsonpatch.apply_patch(pods[name], list(ops))

    released = asyncio.run(placement.release_all(Api(), configuration="archaudit"))  # type: ignore[arg-type]
    assert released == 1
    assert calls == ["delete archaudit mutating=True", "list", "patch p"]
    assert pods["p"]["spec"]["schedulingGates"] == [{"name": "someone.else/gate"}]
    assert (
        json.loads(pods["p"]["metadata"]["annotations"]["archaudit.io/placement"])["result"]
        == "ungated-uninstall"
    )


def test_a_reinvocation_of_a_gated_pod_keeps_the_gate_without_waiting_again() -> None:
    answer, _ = mutate(context(hang=True))
    gated = patched(answer)
    again, seen = mutate(context(hang=True), gated)
    assert "patch" not in again
    assert seen == ["reinvoked:"]  # counted once as gated (the first call), not twice


def test_a_reinvocation_of_a_placed_pod_is_counted_apart_and_changes_nothing() -> None:
    ctx = context()
    first, seen_first = mutate(ctx)
    again, seen_again = mutate(ctx, patched(first))
    assert "patch" not in again
    assert (seen_first, seen_again) == (["placed:"], ["reinvoked:"])


def test_a_gated_pod_is_judged_with_the_constraint_it_gets_when_ungated() -> None:
    from archaudit import webhook

    ctx = context()
    ctx.namespaces["ns"] = {"archaudit.io/placement": "on", "archaudit.io/mode": "enforce"}
    gated = gated_pod()
    plain = json.loads(json.dumps(POD))
    outcome = asyncio.run(webhook.review(ctx, obj=plain, old=None, namespace="ns", subresource=None))
    assert outcome.decision is not None
    assert outcome.decision.verdict == "AtRisk"  # unconstrained, it may land on amd-1
    outcome = asyncio.run(webhook.review(ctx, obj=gated, old=None, namespace="ns", subresource=None))
    assert outcome.decision is not None
    assert (outcome.decision.verdict, outcome.warnings) == ("Compatible", ())


def test_a_registry_known_to_be_down_is_no_reason_to_gate() -> None:
    answer, seen = mutate(context(down=True))
    assert "patch" not in answer
    assert seen == ["skipped:unresolved"]


def test_a_gated_pod_whose_image_fails_is_let_go_at_once_with_a_warning_event() -> None:
    api = FakeApi(gated_pod())
    seen = asyncio.run(release(context(down=True), api))
    assert seen == ["skipped:unresolved"]
    assert "schedulingGates" not in api.pod["spec"]
    note = json.loads(api.pod["metadata"]["annotations"]["archaudit.io/placement"])
    assert note == {"result": "skipped", "why": "an image could not be resolved (timeout)"}
    (event,) = api.events
    assert (event["type"], event["reason"]) == ("Warning", "PlacementUnresolved")
