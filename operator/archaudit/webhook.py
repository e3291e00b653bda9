"""Admission handlers: answer "can this pod run where it may land?" before anything is scheduled.

Thin glue over the pure core: workloads (where the pod spec is), scheduling (which nodes it may use),
policy (the verdict and its words); the resolver does the registry I/O. Two promises shape this module:
- bounded time: every review finishes within `webhook.deadline_seconds`, below the apiserver's timeout;
- fail-open: anything unexpected admits the object with a warning. A bug here must never stop a
  cluster from creating pods (kopf would answer 500 = denied for an escaping exception).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from archaudit import policy, scheduling, workloads
from archaudit.context import Context
from archaudit.errors import InvalidReference, Reason, ResolutionError
from archaudit.manifests import ImagePlatforms
from archaudit.reference import parse as parse_reference

__all__ = ["POD_WEBHOOK", "WORKLOAD_RESOURCES", "WORKLOAD_WEBHOOK", "ReviewOutcome", "register", "review"]

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


async def _resolve_one(
    ctx: Context, namespace: str, spec: Mapping[str, Any], image: str
) -> ImagePlatforms | ResolutionError:
    try:
        ref = parse_reference(image)
    except InvalidReference as e:
        return ResolutionError(Reason.INVALID_REFERENCE, f"image {image!r}: {e}")
    try:
        creds = await ctx.credentials.for_pod(namespace, spec, ref)
        resolution = await ctx.resolver.resolve(ref, creds)
    except ResolutionError as e:
        return e
    result: ImagePlatforms = resolution.image
    return result


async def resolve_images(
    ctx: Context, namespace: str, spec: Mapping[str, Any], images: Sequence[str], deadline: float
) -> dict[str, ImagePlatforms | ResolutionError]:
    """Every unique image at once (a 5-image pod costs one round trip, not five), within the deadline."""
    unique = list(dict.fromkeys(images))
    tasks = {img: asyncio.ensure_future(_resolve_one(ctx, namespace, spec, img)) for img in unique}
    done, pending = await asyncio.wait(tasks.values(), timeout=max(deadline, 0.0))
    for task in pending:
        task.cancel()
    results: dict[str, ImagePlatforms | ResolutionError] = {}
    for img, task in tasks.items():
        if task in done and not task.cancelled() and task.exception() is None:
            results[img] = task.result()
        elif task in done and task.exception() is not None:
            exc = task.exception()
            log.error("resolving %s failed unexpectedly: %r", img, exc)
            results[img] = ResolutionError(Reason.REGISTRY_ERROR, f"image {img}: internal error ({exc!r})")
        else:
            results[img] = ResolutionError(
                Reason.TIMEOUT, f"image {img}: the registry did not answer within {deadline:.1f}s"
            )
    return results


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
    # The scheduling view adds what controllers add to pods (a DaemonSet's tolerations, for example).
    candidates = scheduling.candidates(workloads.scheduling_spec_of(obj) or spec, ctx.schedulable_universe())
    remaining = ctx.settings.webhook.deadline_seconds - (time.monotonic() - started)
    resolved = await resolve_images(ctx, namespace, spec, [e[2] for e in entries], remaining)
    images = [(name, image, resolved[image]) for _section, name, image in entries]
    decision = policy.decide(
        images,
        candidates,
        mode=mode,
        is_pod=is_pod,
        deny_unresolved=ctx.settings.webhook.deny_unresolved,
    )
    return ReviewOutcome(decision.allowed, decision.message, decision.warnings, mode, decision)


def _fail_open_warning(exc: BaseException) -> str:
    return f"archaudit could not check the images ({type(exc).__name__}); admitted unchecked"


def register(
    registry: kopf.OperatorRegistry,
    ctx_getter: Callable[[], Context],
    *,
    on_review: Callable[[str, str, ReviewOutcome, float], None] | None = None,
    on_warning_event: Callable[[Mapping[str, Any], ReviewOutcome], None] | None = None,
) -> None:
    """Add the pod and workload admission handlers to `registry`.

    `on_review(kind, operation, outcome, seconds)` feeds metrics; `on_warning_event(obj, outcome)`
    emits a Kubernetes Event about a warned object (never for dry-run requests).
    """

    async def handle(
        body: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        operation: str,
        subresource: str | None,
        dryrun: bool,
        warnings: list[str],
    ) -> None:
        started = time.monotonic()
        kind = str(body.get("kind", ""))
        namespace = str(body.get("metadata", {}).get("namespace") or "")
        if subresource not in (None, "ephemeralcontainers"):
            return
        try:
            outcome = await review(
                ctx_getter(), obj=body, old=old, namespace=namespace, subresource=subresource, started=started
            )
        except Exception as e:  # fail-open: see the module docstring
            log.exception("admission review of %s %s/%s failed", kind, namespace, _name(body))
            warnings.append(_fail_open_warning(e))
            if on_review is not None:
                on_review(kind, operation, ReviewOutcome(True, "", (), policy.Mode.OFF, None), -1.0)
            return
        warnings.extend(outcome.warnings)
        if on_review is not None:
            on_review(kind, operation, outcome, time.monotonic() - started)
        if outcome.warnings and outcome.allowed and not dryrun and on_warning_event is not None:
            on_warning_event(body, outcome)
        if not outcome.allowed:
            log.info("denied %s %s/%s: %s", kind, namespace, _name(body), outcome.message)
            raise kopf.AdmissionError(outcome.message, code=403)

    @kopf.on.validate(
        "", "v1", "pods", id=POD_WEBHOOK, operations=["CREATE", "UPDATE"], subresource="*", registry=registry
    )
    async def validate_pod(
        *,
        body: kopf.Body,
        subresource: str | None,
        dryrun: bool,
        warnings: list[str],
        old: kopf.BodyEssence | None = None,
        operation: str = "",
        **_: Any,
    ) -> None:
        await handle(body, old, operation, subresource, dryrun, warnings)

    for group, version, plural in WORKLOAD_RESOURCES:

        @kopf.on.validate(
            group, version, plural, id=WORKLOAD_WEBHOOK, operations=["CREATE", "UPDATE"], registry=registry
        )
        async def validate_workload(
            *,
            body: kopf.Body,
            dryrun: bool,
            warnings: list[str],
            old: kopf.BodyEssence | None = None,
            operation: str = "",
            **_: Any,
        ) -> None:
            await handle(body, old, operation, None, dryrun, warnings)


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata", {})
    return str(meta.get("name") or meta.get("generateName") or "")
