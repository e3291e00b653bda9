"""One path from a pod's image texts to their platforms, for the webhook and the auditor alike.

Both ask the same question with the same credentials, in the kubelet's order (the pod's
imagePullSecrets, then its service account's, then the cloud identity for the cloud's own registries,
anonymous only when there is none) and the same caches; they differ only in how long they may
wait. Cached answers are taken without a task, so a warm admission review never leaves the caller's
frame; what is not cached is resolved concurrently (a 5-image pod costs one round trip, not five)
within the deadline. Every failure becomes a `ResolutionError` with its reason: nothing here raises
into a review or an audit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from archaudit.adapters.cloud import NONE as NO_CLOUD
from archaudit.context import Context
from archaudit.core.errors import DeadlineExpiredError, InvalidReference, Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.reference import ImageReference
from archaudit.core.reference import parse as parse_reference

__all__ = ["DeadlineExpiredError", "Resolved", "resolve_images"]

log = logging.getLogger(__name__)

Resolved = ImagePlatforms | ResolutionError


async def _resolve_one(
    ctx: Context, namespace: str, spec: Mapping[str, Any], ref: ImageReference
) -> ImagePlatforms | ResolutionError:
    cloud = NO_CLOUD
    try:
        creds = await ctx.credentials.for_pod(namespace, spec, ref)
        if ctx.cloud is not None:
            cloud = await ctx.cloud.for_image(ref)
        resolution = await ctx.resolver.resolve(ref, cloud.after(creds))
    except ResolutionError as e:
        return cloud.explain(e)
    result: ImagePlatforms = resolution.image
    return result


def _cached(
    ctx: Context, namespace: str, spec: Mapping[str, Any], ref: ImageReference
) -> ImagePlatforms | ResolutionError | None:
    """The answer if credentials and platforms are both cached: no task, no await."""
    creds = ctx.credentials.peek_for_pod(namespace, spec, ref)
    if creds is None:
        return None
    cloud = NO_CLOUD if ctx.cloud is None else ctx.cloud.peek(ref)
    if cloud is None:
        return None
    try:
        hit = ctx.resolver.peek(ref, cloud.after(creds))
    except ResolutionError as e:
        return cloud.explain(e)
    return None if hit is None else hit.image


async def resolve_images(
    ctx: Context, namespace: str, spec: Mapping[str, Any], images: Sequence[str], deadline: float
) -> dict[str, ImagePlatforms | ResolutionError]:
    """Every unique image at once (a 5-image pod costs one round trip, not five), within the deadline.

    Cached answers are taken first without a task: a warm review never leaves this function's frame.
    """
    results: dict[str, ImagePlatforms | ResolutionError] = {}
    misses: dict[str, ImageReference] = {}
    for image in dict.fromkeys(images):
        try:
            ref = _parse(image)
        except InvalidReference as e:
            results[image] = ResolutionError(Reason.INVALID_REFERENCE, f"image {image!r}: {e}")
            continue
        hit = _cached(ctx, namespace, spec, ref)
        if hit is None:
            misses[image] = ref
        else:
            results[image] = hit
    if not misses:
        return results
    tasks = {
        img: asyncio.ensure_future(_resolve_one(ctx, namespace, spec, ref)) for img, ref in misses.items()
    }
    done, pending = await asyncio.wait(tasks.values(), timeout=max(deadline, 0.0))
    for task in pending:
        task.cancel()
    for img, task in tasks.items():
        if task in done and not task.cancelled() and task.exception() is None:
            results[img] = task.result()
        elif task in done and task.exception() is not None:
            exc = task.exception()
            # A bug or an apiserver error reading pull secrets: say so, and keep answering.
            log.error("resolving %s failed unexpectedly: %r", img, exc)
            results[img] = ResolutionError(
                Reason.REGISTRY_ERROR, f"image {img}: internal error ({type(exc).__name__})"
            )
        else:
            results[img] = DeadlineExpiredError(
                Reason.TIMEOUT, f"image {img}: the registry did not answer within {deadline:.1f}s"
            )
    return {img: results[img] for img in dict.fromkeys(images)}


# Pods name the same few images over and over: parse each text once (errors are not cached).
_parse = functools.lru_cache(maxsize=4096)(parse_reference)
