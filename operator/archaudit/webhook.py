"""Admission webhooks: answer "can this pod run where it may land?" before anything is scheduled.

Thin glue over the pure core: workloads (where the pod spec is), scheduling (which nodes it may use),
policy (the verdict and its words); the resolver does the registry I/O. Two promises shape this module:
- bounded time: every review finishes within `webhook.deadline_seconds`, below the apiserver's timeout;
- fail-open: anything unexpected admits the object with a warning. A bug here must never stop a
  cluster from creating pods.

kopf's `WebhookServer` (app.py) serves the TLS endpoint and hands each parsed AdmissionReview to
`Admission`, not to kopf's admission engine: that engine is built for mutating handlers and deep-copies
every object to compute a JSON patch even when there is none (kopf 1.45.2 `Patch.as_json_patch`), a
quarter of the CPU of a warm review. A validating webhook answers allowed / denied / warnings, so we
build that answer directly (`response`) and keep the hot path free of copies and extra tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archaudit.context import Context
from archaudit.core import placement, policy, scheduling, workloads
from archaudit.core.kubetypes import AdmissionResponse, AdmissionReview
from archaudit.core.warnings import fit as fit_warnings
from archaudit.resolution import resolve_images

__all__ = [
    "POD_WEBHOOK",
    "WEBHOOKS",
    "WORKLOAD_RESOURCES",
    "WORKLOAD_WEBHOOK",
    "Admission",
    "ReviewOutcome",
    "malformed",
    "response",
    "review",
]

log = logging.getLogger(__name__)

# Paths are fixed because the chart owns the ValidatingWebhookConfiguration: /validate/<id>.
POD_WEBHOOK = "pods"
WORKLOAD_WEBHOOK = "workloads"
WORKLOAD_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "daemonsets"),
    ("apps", "v1", "replicasets"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
    ("", "v1", "replicationcontrollers"),
)
WEBHOOKS = (POD_WEBHOOK, WORKLOAD_WEBHOOK)
_CHECKED_OPERATIONS = ("CREATE", "UPDATE")


@dataclass(frozen=True)
class ReviewOutcome:
    allowed: bool
    message: str
    warnings: tuple[str, ...]
    mode: policy.Mode
    decision: policy.Decision | None  # None when the object was not checked (exempt, off, no images)

    @property
    def label(self) -> str:
        """allowed | warned | denied, for metrics."""
        if not self.allowed:
            return "denied"
        return "warned" if self.warnings else "allowed"


def namespace_mode(ctx: Context, namespace: str) -> policy.Mode | None:
    """The namespace's mode, or None when the namespace is exempt."""
    labels = ctx.namespaces.get(namespace, {})
    raw = labels.get(policy.MODE_LABEL)
    if raw is not None and raw not in policy.Mode.__members__.values():
        log.warning("namespace %s: unknown %s=%r, using the default mode", namespace, policy.MODE_LABEL, raw)
    return policy.namespace_mode(
        namespace,
        labels,
        default=ctx.settings.webhook.default_mode,
        exempt=ctx.settings.webhook.exempt_namespaces,
    )


def images_to_check(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None, subresource: str | None
) -> list[tuple[str, str, str]]:
    """(section, container, image) of what this request adds or changes.

    CREATE checks everything. A Pod UPDATE checks only images that are new (ephemeral containers
    through the subresource, or an image field edited on a bare pod): what was already admitted is the
    auditor's business. A workload UPDATE that changes the pod template checks the whole template: a
    rollout is about to happen.
    """
    spec = workloads.pod_spec_of(obj)
    if spec is None:
        return []
    current = workloads.containers_of(spec)
    if old is None:
        return current
    old_spec = workloads.pod_spec_of(old) or {}
    if obj.get("kind") != "Pod":
        # Scaling or relabelling a workload does not roll out new images: nothing to say then.
        return current if old_spec != spec else []
    before = set(workloads.containers_of(old_spec))
    changed = [c for c in current if c not in before]
    if subresource == "ephemeralcontainers":
        changed = [c for c in changed if c[0] == "ephemeralContainers"]
    return changed


async def review(
    ctx: Context,
    *,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    namespace: str,
    subresource: str | None,
    started: float | None = None,
) -> ReviewOutcome:
    """Decide on one admission request. Pure of kopf, so it is tested directly."""
    started = time.monotonic() if started is None else started
    mode = namespace_mode(ctx, namespace)
    if mode is None or mode is policy.Mode.OFF:
        return ReviewOutcome(True, "", (), mode or policy.Mode.OFF, None)
    is_pod = obj.get("kind") == "Pod"
    if not is_pod and workloads.controller_of(obj) is not None:
        # A ReplicaSet made by a Deployment (a Job by a CronJob): its template was judged at the owner,
        # and its pods are judged one by one; a second warning would go to a controller nobody reads.
        return ReviewOutcome(True, "", (), mode, None)
    exempt = ctx.settings.webhook.exempt_images
    entries = [e for e in images_to_check(obj, old, subresource) if not policy.image_exempt(e[2], exempt)]
    if not entries:
        return ReviewOutcome(True, "", (), mode, None)
    spec = workloads.pod_spec_of(obj) or {}
    remaining = ctx.settings.webhook.deadline_seconds - (time.monotonic() - started)
    resolved = await resolve_images(ctx, namespace, spec, [e[2] for e in entries], remaining)
    images = [(name, image, resolved[image]) for _section, name, image in entries]
    # The scheduling view adds what controllers add to pods (a DaemonSet's tolerations, for example).
    scheduling_spec = workloads.scheduling_spec_of(obj) or spec
    if is_pod and old is None and placement.has_gate(spec):
        scheduling_spec = _as_ungated(ctx, obj, scheduling_spec, images)
    decision = _decide(ctx, scheduling_spec, images, mode=mode, is_pod=is_pod)
    return ReviewOutcome(decision.allowed, decision.message, decision.warnings, mode, decision)


def _as_ungated(
    ctx: Context, pod: Mapping[str, Any], spec: Mapping[str, Any], images: Sequence[policy.ImageResult]
) -> Mapping[str, Any]:
    """A pod created with placement's gate is judged with the constraint placement gives it when the
    gate is removed (when its images are known by now), not as the unconstrained pod it is for a moment."""
    settings = ctx.settings.placement
    base = placement.original_spec(spec, placement.previous(pod))
    answer = placement.place(
        base,
        images,
        ctx.schedulable_universe(),
        prefer_architecture=settings.prefer_architecture,
        prefer_weight=settings.prefer_weight,
    )
    return placement.constrained_spec(base, answer) if answer.result is placement.Result.PLACED else spec


class _DecisionMemo:
    """The decisions of recent reviews, for the next pod of the same workload.

    Candidates and verdict cost time in proportion to the number of nodes (~14 ms per review at 1,000
    nodes); the pods of one workload ask the same question over and over. The key holds everything
    the decision depends on: the scheduling constraints, the node map's version, the mode, and the
    exact resolution objects (by identity: the resolver hands out the same object while its answer
    stands; the entry keeps them alive so that an identity is never reused).
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[policy.Decision, tuple[Any, ...]]] = {}

    def get(self, key: tuple[Any, ...]) -> policy.Decision | None:
        hit = self._entries.get(key)
        return None if hit is None else hit[0]

    def put(self, key: tuple[Any, ...], decision: policy.Decision, keep: tuple[Any, ...]) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()  # a cluster with this many distinct pods at once: start over
        self._entries[key] = (decision, keep)


_memo = _DecisionMemo()


def _decide(
    ctx: Context,
    scheduling_spec: Mapping[str, Any],
    images: Sequence[policy.ImageResult],
    *,
    mode: policy.Mode,
    is_pod: bool,
) -> policy.Decision:
    deny_unresolved = ctx.settings.webhook.deny_unresolved
    key = (
        scheduling.scheduling_key(scheduling_spec),
        ctx.nodes.version,
        id(ctx.nodes),
        mode,
        is_pod,
        deny_unresolved,
        tuple((name, image, id(result)) for name, image, result in images),
    )
    decision = _memo.get(key)
    if decision is None:
        decision, _candidates = policy.decide_for_spec(
            scheduling_spec,
            images,
            ctx.schedulable_universe(),
            mode=mode,
            is_pod=is_pod,
            deny_unresolved=deny_unresolved,
        )
        _memo.put(key, decision, (ctx.nodes, *(result for _n, _i, result in images)))
    return decision


def _fail_open_warning(exc: BaseException) -> str:
    return f"archaudit could not check the images ({type(exc).__name__}); admitted unchecked"


# --- the AdmissionReview protocol -----------------------------------------------------------------


def malformed(data: Any) -> str | None:
    """Why `data` is not an AdmissionReview we can answer, or None.

    The apiserver never sends these; anything else that reaches the port might, and it gets a 400 with
    the reason instead of a stack trace.
    """
    if not isinstance(data, dict):
        return "the body is not a JSON object"
    if data.get("kind") != "AdmissionReview":
        return "kind must be AdmissionReview"
    req = data.get("request")
    if not isinstance(req, dict):
        return "request is missing"
    for key in ("uid", "resource", "operation", "userInfo"):
        if key not in req:
            return f"request.{key} is missing"
    resource = req.get("resource")
    if not isinstance(resource, dict) or not all(k in resource for k in ("group", "version", "resource")):
        return "request.resource must have group, version and resource"
    if not isinstance(req.get("object"), dict) and not isinstance(req.get("oldObject"), dict):
        return "request.object is missing"
    return None


def response(
    review_: Mapping[str, Any], *, allowed: bool, message: str = "", warnings: Sequence[str] = ()
) -> AdmissionReview:
    """The AdmissionReview answer; a denial carries HTTP 403 and the message the user sees.

    Warnings are fitted to what the apiserver passes on (core/warnings.py): most important first.
    """
    answer: AdmissionResponse = {"uid": review_["request"]["uid"], "allowed": allowed}
    if warnings:
        answer["warnings"] = list(fit_warnings(warnings))
    if not allowed:
        answer["status"] = {"code": 403, "reason": "Forbidden", "message": message}
    return {
        "apiVersion": review_.get("apiVersion") or "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": answer,
    }


def _checked(request: Mapping[str, Any]) -> bool:
    """Whether this request is ours to judge: pod and workload CREATE/UPDATE, and ephemeral containers.

    Everything else the configuration might send (another resource, /status, DELETE) is admitted as is.
    """
    if request["operation"] not in _CHECKED_OPERATIONS:
        return False
    res = request["resource"]
    gvr = (res["group"], res["version"], res["resource"])
    subresource = request.get("subResource") or None
    if gvr == ("", "v1", "pods"):
        return subresource in (None, "ephemeralcontainers")
    return gvr in WORKLOAD_RESOURCES and subresource is None


class Admission:
    """Both webhooks (`/validate/pods`, `/validate/workloads`) as one callable for the server.

    `on_review(kind, operation, outcome, seconds)` feeds metrics (seconds < 0: the review failed and the
    object was admitted unchecked); `on_warning_event(obj, outcome)` emits a Kubernetes Event about a
    warned object (never for dry-run requests); `log_denials` logs each denial at INFO.
    """

    def __init__(
        self,
        ctx_getter: Callable[[], Context],
        *,
        on_review: Callable[[str, str, ReviewOutcome, float], None] | None = None,
        on_warning_event: Callable[[Mapping[str, Any], ReviewOutcome], None] | None = None,
        log_denials: bool = False,
    ) -> None:
        self.ctx_getter = ctx_getter
        self.on_review = on_review
        self.on_warning_event = on_warning_event
        self.log_denials = log_denials

    async def __call__(self, data: Mapping[str, Any], **_: Any) -> AdmissionReview:
        """Answer one well-formed AdmissionReview (see `malformed`)."""
        request = data["request"]
        if not _checked(request):
            return response(data, allowed=True)
        started = time.monotonic()
        obj = request.get("object") or request.get("oldObject") or {}
        old = request.get("oldObject") if request.get("object") else None
        operation = str(request["operation"])
        kind = str(obj.get("kind") or request.get("kind", {}).get("kind", ""))
        namespace = str(obj.get("metadata", {}).get("namespace") or request.get("namespace") or "")
        try:
            outcome = await review(
                self.ctx_getter(),
                obj=obj,
                old=old,
                namespace=namespace,
                subresource=request.get("subResource") or None,
                started=started,
            )
        except Exception as e:  # fail-open: see the module docstring
            log.exception("admission review of %s %s/%s failed", kind, namespace, _name(obj))
            if self.on_review is not None:
                self.on_review(kind, operation, ReviewOutcome(True, "", (), policy.Mode.OFF, None), -1.0)
            return response(data, allowed=True, warnings=[_fail_open_warning(e)])
        if self.on_review is not None:
            self.on_review(kind, operation, outcome, time.monotonic() - started)
        warned = outcome.warnings and outcome.allowed and not request.get("dryRun")
        if warned and self.on_warning_event is not None:
            self.on_warning_event(obj, outcome)
        if not outcome.allowed and self.log_denials:
            log.info("denied %s %s/%s: %s", kind, namespace, _name(obj), outcome.message)
        return response(data, allowed=outcome.allowed, message=outcome.message, warnings=outcome.warnings)


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata", {})
    return str(meta.get("name") or meta.get("generateName") or "")
