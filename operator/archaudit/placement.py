"""Placement glue: the mutating webhook `/mutate/pods` and the controller of its scheduling gate.

The rules are pure (core/placement.py over the one engine); this module does the I/O around them:
- `Mutation` answers a pod CREATE with a JSONPatch: the node-affinity expressions that keep the pod on
  nodes where every image runs. Cached images are answered at once, from the same caches and with the
  same memo idea as the validating webhook, so the warm path costs about what a validating review does.
  An image not resolved within `placement.budget_seconds` gets the scheduling gate instead: the pod
  is created, but not scheduled until the controller has placed it.
- `GateController` (in every replica: an ungating update is conditional on the gate still being there,
  so replicas racing for one pod cannot both apply) resolves a gated pod's images, adds the expressions
  and removes the gate in one update (allowed on gated pods, KEP-3838), and after
  `placement.gate_timeout_seconds` removes the gate anyway, with a Warning Event. Gated pods left from
  before a restart arrive with the watch's initial listing, which is the start-up sweep.

Never block, never strand: anything unexpected admits the pod unchanged (the configuration's
failurePolicy is Ignore as well), and a gated pod is let go on time whatever the registry does.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from archaudit.adapters.events import PLACEMENT
from archaudit.adapters.kube import KubeApi
from archaudit.context import Context
from archaudit.core import placement as rules
from archaudit.core import policy, scheduling, workloads
from archaudit.core.engine import ImageResult
from archaudit.core.errors import DeadlineExpiredError, ResolutionError
from archaudit.core.kubetypes import AdmissionReview
from archaudit.resolution import resolve_images

__all__ = [
    "MUTATING_WEBHOOKS",
    "GateController",
    "Mutation",
    "main",
    "placement_enabled",
    "plan",
    "release_all",
]

log = logging.getLogger(__name__)

# Served under /mutate/<id>; the chart owns the MutatingWebhookConfiguration.
MUTATING_WEBHOOKS = ("pods",)
_SECTIONS = ("containers", "initContainers")  # ephemeral containers come later, on a running pod

# (result, reason) -> metrics; reason "" unless skipped
Observer = Callable[[str, str], None]
REINVOKED = "reinvoked"  # the result counted for a reinvocation of a pod placement has seen already


def placement_enabled(ctx: Context, namespace: str) -> bool:
    """Whether placement applies in this namespace: not exempt, and its label (or the default) says on."""
    labels = ctx.namespaces.get(namespace, {})
    exempt = ctx.settings.webhook.exempt_namespaces
    if namespace in exempt or policy.IGNORE_LABEL in labels:
        return False
    return rules.namespace_enabled(labels, default=ctx.settings.placement.default == "on")


class _PlacementMemo:
    """Recent placements by everything they depend on, for the next pod of the same workload (see
    webhook._DecisionMemo: the resolution objects are keyed by identity and kept alive by the entry)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[rules.Placement, tuple[Any, ...]]] = {}

    def get(self, key: tuple[Any, ...]) -> rules.Placement | None:
        hit = self._entries.get(key)
        return None if hit is None else hit[0]

    def put(self, key: tuple[Any, ...], value: rules.Placement, keep: tuple[Any, ...]) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (value, keep)


_memo = _PlacementMemo()


def plan(ctx: Context, spec: Mapping[str, Any], images: Sequence[ImageResult]) -> rules.Placement:
    """`rules.place` over the live node map, memoized."""
    settings = ctx.settings.placement
    key = (
        scheduling.scheduling_key(spec),
        ctx.nodes.version,
        id(ctx.nodes),
        settings.prefer_architecture,
        settings.prefer_weight,
        tuple((name, image, id(result)) for name, image, result in images),
    )
    answer = _memo.get(key)
    if answer is None:
        answer = rules.place(
            spec,
            images,
            ctx.schedulable_universe(),
            prefer_architecture=settings.prefer_architecture,
            prefer_weight=settings.prefer_weight,
        )
        _memo.put(key, answer, (ctx.nodes, *(result for _n, _i, result in images)))
    return answer


def _entries(ctx: Context, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    exempt = ctx.settings.webhook.exempt_images
    return [
        (name, image)
        for section, name, image in workloads.containers_of(spec)
        if section in _SECTIONS and not policy.image_exempt(image, exempt)
    ]


def _timed_out(result: object) -> bool:
    """Still being resolved when the deadline passed; a registry's own failure (or a cached one, while
    the registry is known to be down) is an answer, and gating the pod for it would only delay it."""
    return isinstance(result, DeadlineExpiredError)


async def mutate(
    ctx: Context, pod: Mapping[str, Any], namespace: str
) -> tuple[list[dict[str, Any]], str, str]:
    """(JSONPatch operations, result, skip reason) for one pod CREATE in a placement namespace."""
    if rules.has_gate(pod.get("spec") or {}):
        # A reinvocation of a pod gated earlier in this request: the controller judges every image the
        # pod has when it removes the gate; waiting for the registry again here would only add latency.
        return [], rules.Result.GATED.value, ""
    spec = rules.original_spec(pod.get("spec") or {}, rules.previous(pod))
    skip = rules.skip_reason(pod, spec)
    if skip is not None:
        return [], rules.Result.SKIPPED.value, skip.value
    entries = _entries(ctx, spec)
    if not entries:
        return [], rules.Result.SKIPPED.value, rules.Skip.NO_IMAGES.value
    budget = ctx.settings.placement.budget_seconds
    resolved = await resolve_images(ctx, namespace, spec, [image for _n, image in entries], budget)
    if any(_timed_out(r) for r in resolved.values()):
        # Not known in time: create the pod gated; the controller places it and lets it go.
        gated = rules.Placement(rules.Result.GATED, "", why=f"an image was not resolved within {budget:g}s")
        ops = rules.add_gate(pod.get("spec") or {}) + rules.patch(pod, gated)
        return ops, rules.Result.GATED.value, ""
    answer = plan(ctx, spec, [(name, image, resolved[image]) for name, image in entries])
    return rules.patch(pod, answer), answer.result.value, answer.reason


def response(review: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> AdmissionReview:
    """Allowed, with the patch when there is one (`patchType: JSONPatch`, base64 of the JSON)."""
    answer: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if ops:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(list(ops), separators=(",", ":")).encode()).decode()
    return {
        "apiVersion": review.get("apiVersion") or "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": answer,  # type: ignore[typeddict-item]
    }


class Mutation:
    """`/mutate/pods` as one callable for the server; `observe(result, reason)` feeds metrics."""

    def __init__(self, ctx_getter: Callable[[], Context], *, observe: Observer | None = None) -> None:
        self.ctx_getter = ctx_getter
        self.observe = observe

    async def __call__(self, data: Mapping[str, Any], **_: Any) -> AdmissionReview:
        request = data["request"]
        res = request["resource"]
        pod = request.get("object")
        if (
            request["operation"] != "CREATE"
            or (res["group"], res["version"], res["resource"]) != ("", "v1", "pods")
            or request.get("subResource")
            or not isinstance(pod, Mapping)
        ):
            return response(data, [])
        namespace = str(pod.get("metadata", {}).get("namespace") or request.get("namespace") or "")
        try:
            ctx = self.ctx_getter()
            if not placement_enabled(ctx, namespace):
                return response(data, [])
            # The apiserver reinvokes us when a later webhook changed the pod (reinvocationPolicy
            # IfNeeded); our annotation or gate says we saw this pod already. Counted apart, so that
            # placements_total counts each pod once.
            again = rules.previous(pod) is not None or rules.has_gate(pod.get("spec") or {})
            ops, result, reason = await mutate(ctx, pod, namespace)
        except Exception:  # never block: a bug here admits the pod as it is
            log.exception("placement of a pod in %s failed; admitted unchanged", namespace)
            result, reason, ops, again = "error", "", [], False
        if self.observe is not None:
            if again:
                self.observe(REINVOKED, "")
            else:
                self.observe(result, reason)
        return response(data, ops)


# --- the gate controller ---------------------------------------------------------------------------


def _created_at(pod: Mapping[str, Any]) -> float:
    raw = pod.get("metadata", {}).get("creationTimestamp")
    try:
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def ungate_patch(pod: Mapping[str, Any], answer: rules.Placement) -> list[dict[str, Any]]:
    """One update: the placement's expressions, the annotation, and the gate list without ours. The
    `test` makes it conditional: if another replica ungated the pod first, the apiserver refuses it."""
    spec = pod.get("spec") or {}
    gates = rules.remove_gate(spec)
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/spec/schedulingGates", "value": spec.get("schedulingGates")},
        *rules.patch(pod, answer),
    ]
    if gates:
        ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": gates})
    else:
        ops.append({"op": "remove", "path": "/spec/schedulingGates"})
    return ops


class GateController:
    """Places gated pods and lets them go: one task per gated pod, in every replica.

    `observe(result, reason)` feeds the placement metrics; `gated()` (pods gated now and the oldest
    gate's creation time) is read by the metrics at scrape time.
    """

    def __init__(self, ctx: Context, *, observe: Observer | None = None) -> None:
        self.ctx = ctx
        self.observe = observe
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._gated: dict[str, float] = {}  # uid -> creation time of pods gated now

    def gated(self) -> tuple[int, float | None]:
        return len(self._gated), min(self._gated.values(), default=None)

    def interesting(self, pod: Mapping[str, Any]) -> bool:
        """Whether a pod event concerns the controller: a pod with our gate, or one it still counts.
        Everything else is filtered before kopf runs (and logs) a handler for it."""
        if rules.has_gate(pod.get("spec") or {}):
            return True
        return str(pod.get("metadata", {}).get("uid") or "") in self._gated

    def seen(self, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A pod event from the watch: start working on a pod that carries our gate."""
        uid = str(pod.get("metadata", {}).get("uid") or "")
        if not uid:
            return
        if deleted or not rules.has_gate(pod.get("spec") or {}):
            self._gated.pop(uid, None)
            task = self._tasks.pop(uid, None)
            if task is not None and deleted:
                task.cancel()
            return
        self._gated[uid] = _created_at(pod)
        if uid not in self._tasks:
            task = asyncio.create_task(self._release(pod), name=f"placement-gate-{uid}")
            self._tasks[uid] = task
            task.add_done_callback(functools.partial(self._done, uid))

    def _done(self, uid: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(uid, None)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _release(self, pod: Mapping[str, Any]) -> None:
        ctx = self.ctx
        meta = pod.get("metadata", {})
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        deadline = _created_at(pod) + ctx.settings.placement.gate_timeout_seconds
        try:
            spec = rules.original_spec(pod.get("spec") or {}, rules.previous(pod))
            entries = _entries(ctx, spec)
            resolved = await resolve_images(
                ctx, namespace, spec, [image for _n, image in entries], max(deadline - time.time(), 0.0)
            )
            if any(_timed_out(r) for r in resolved.values()) or time.time() >= deadline:
                await self._timeout(pod)
                return
            failed = sorted(
                {f"{r.reason.value}" for r in resolved.values() if isinstance(r, ResolutionError)}
            )
            if failed:
                await self._unresolved(pod, failed)
                return
            answer = plan(ctx, spec, [(n, image, resolved[image]) for n, image in entries])
            if answer.result is rules.Result.SKIPPED:
                answer = rules.Placement(rules.Result.SKIPPED, answer.reason)
            await self._patch(pod, answer)
            if self.observe is not None:
                self.observe(answer.result.value, answer.reason)
            log.info("placed gated pod %s/%s: %s", namespace, name, answer.result.value)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("placing gated pod %s/%s failed; removing the gate", namespace, name)
            await self._timeout(pod)

    async def _unresolved(self, pod: Mapping[str, Any], reasons: Sequence[str]) -> None:
        """The registry answered with a failure: let the pod go unplaced now, rather than at the timeout."""
        why = f"an image could not be resolved ({', '.join(reasons)})"
        if not await self._patch(pod, rules.Placement(rules.Result.SKIPPED, rules.Skip.UNRESOLVED), note=why):
            return
        if self.observe is not None:
            self.observe(rules.Result.SKIPPED.value, rules.Skip.UNRESOLVED.value)
        message = f"archaudit could not place this pod: {why}; scheduling gate {rules.GATE} removed"
        await self._emit(pod, "PlacementUnresolved", message)

    async def _emit(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        # Through the one deduplicating emitter: a registry outage that lets many pods go at once makes
        # one Event per workload and problem, counted, not one write per pod.
        emitter = self.ctx.events
        if emitter is not None:
            emitter.about_object(pod, (message,), component=PLACEMENT, reason=reason)

    async def _timeout(self, pod: Mapping[str, Any]) -> None:
        timeout = self.ctx.settings.placement.gate_timeout_seconds
        # Let go unchanged; the annotation says why it was not placed.
        result = rules.Result.UNGATED_TIMEOUT
        if not await self._patch(pod, rules.Placement(result, ""), note=f"not placed within {timeout:g}s"):
            return
        if self.observe is not None:
            self.observe(result.value, "")
        message = (
            f"archaudit could not resolve this pod's images within {timeout:g}s; scheduling gate "
            f"{rules.GATE} removed without placement"
        )
        await self._emit(pod, "PlacementTimeout", message)

    async def _patch(self, pod: Mapping[str, Any], answer: rules.Placement, *, note: str = "") -> bool:
        """Place and ungate in one update; True when this replica removed the gate.

        A failed update is retried on a fresh read of the pod (backing off up to 5 s) until it applies
        or the pod is gone or ungated by someone else (another replica: its `test` made ours fail): a
        gate is never left behind because one request failed.
        """
        api = self.ctx.api
        if api is None:
            return False
        meta = pod.get("metadata", {})
        namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), meta.get("uid")
        current = pod
        for attempt in itertools.count():
            ops = ungate_patch(current, answer)
            if note:
                ops = [op for op in ops if not op["path"].startswith("/metadata/annotations")]
                ops.extend(_result_annotation(current, answer.result.value, note))
            try:
                await api.patch_pod_json(namespace, name, ops)
                return True
            except Exception as e:
                level = logging.WARNING if attempt >= 2 else logging.DEBUG
                log.log(level, "ungating %s/%s (attempt %d): %s", namespace, name, attempt + 1, e)
            await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
            try:
                fresh = await api.read_pod(namespace, name)
            except Exception as e:
                log.debug("reading %s/%s: %s", namespace, name, e)
                continue
            if (
                fresh is None
                or fresh.get("metadata", {}).get("uid") != uid
                or not rules.has_gate(fresh["spec"])
            ):
                return False
            current = fresh
        return False  # unreachable: itertools.count() never ends


def _result_annotation(pod: Mapping[str, Any], result: str, why: str) -> list[dict[str, Any]]:
    value = json.dumps({"result": result, "why": why}, sort_keys=True, separators=(",", ":"))
    path = "/metadata/annotations/" + rules.ANNOTATION.replace("~", "~0").replace("/", "~1")
    if "annotations" not in (pod.get("metadata") or {}):
        return [{"op": "add", "path": "/metadata/annotations", "value": {rules.ANNOTATION: value}}]
    return [{"op": "add", "path": path, "value": value}]


# --- helm uninstall: the pre-delete hook ------------------------------------------------------------


async def release_all(api: KubeApi, *, configuration: str) -> int:
    """Delete the MutatingWebhookConfiguration (no new gates from here on), then remove archaudit's gate
    from every pod that still has it: uninstalling never leaves a pod SchedulingGated. Returns how many
    pods were released. Pods are released unchanged (no placement): the operator is going away."""
    await api.delete_webhook_configuration(configuration, mutating=True)
    released = 0
    for pod in await api.list_pods():
        spec = pod.get("spec") or {}
        if not rules.has_gate(spec):
            continue
        meta = pod.get("metadata", {})
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/spec/schedulingGates", "value": spec.get("schedulingGates")}
        ]
        gates = rules.remove_gate(spec)
        ops.append(
            {"op": "replace", "path": "/spec/schedulingGates", "value": gates}
            if gates
            else {"op": "remove", "path": "/spec/schedulingGates"}
        )
        ops.extend(_result_annotation(pod, "ungated-uninstall", "archaudit was uninstalled"))
        try:
            await api.patch_pod_json(str(meta.get("namespace")), str(meta.get("name")), ops)
        except Exception as e:  # ungated meanwhile (the operator is still running), or deleted
            log.info("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
            continue
        released += 1
    return released


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m archaudit.placement release-gates --configuration NAME [--kubeconfig FILE]`: the
    chart's pre-delete hook (in-cluster: the operator's ServiceAccount)."""
    import argparse

    from archaudit.adapters import kube

    parser = argparse.ArgumentParser(prog="python -m archaudit.placement")
    parser.add_argument("command", choices=["release-gates"])
    parser.add_argument("--configuration", required=True, help="the MutatingWebhookConfiguration to delete")
    parser.add_argument("--kubeconfig", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    api = kube.KubeApi(kube.load_client(args.kubeconfig))
    released = asyncio.run(release_all(api, configuration=args.configuration))
    print(f"MutatingWebhookConfiguration {args.configuration} deleted; {released} pod(s) released")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
