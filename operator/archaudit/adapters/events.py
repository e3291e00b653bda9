"""The one writer of archaudit's Kubernetes Events, for the webhook and the auditor alike.

Why this module exists: a warned admission review must cost what an allowed one costs, and a burst of
warned pods (a Deployment scaled to 500 replicas, a CronJob every minute) must not become a burst of
etcd writes. So the review never waits on an Event, and most reviews cause no write at all:

- `about_object` / `about` are synchronous and never raise. A problem already waiting in the queue is
  only counted (a dict lookup); a new one is queued; a full queue drops the occurrence and counts it;
- one worker task takes the whole queue at once, then pauses `linger` (0.1 s) so that repeats
  gather as counts on the entries of the next round (its cost is per problem and round, not per
  review). For each problem it finds the involved object (a pod made by a
  controller is reported on its workload: the ReplicaSet's Deployment, the Job's CronJob, read through
  the owner cache; a named bare pod on itself; a pod without a name yet on nothing, since that name
  would never exist), and asks the correlator (core/correlator.py) what to write: create one Event at
  first sight, count repeats on it, patch the count at most every few seconds, rate-limited per object;
- every API failure (forbidden, timeout, apiserver down) is logged at DEBUG and stays here: an Event
  is a courtesy, never a reason to slow or fail anything. A create the apiserver did not answer
  (down, restarting, timeout, 429, 5xx) is tried again, as client-go's recorder does (12 tries):
  after 1, 2, 4 ... 30 s, so an Event about a problem seen just before an apiserver restart is not
  lost (the auditor sees the problem once and does not announce it again). Repeats seen meanwhile are
  counted on the pending create. A refusal (403, 422, a namespace that is gone) is final.

`stats` holds the outcome of every occurrence (emitted | aggregated | dropped | failed), plus
`retried` (create attempts made again); metrics.py reads it at scrape time as
`archaudit_events_total{result}` and `archaudit_event_write_retries_total`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from archaudit.adapters.kube import KubeApi
from archaudit.core import reports
from archaudit.core.correlator import Correlator, EventKey, Involved, Observed
from archaudit.core.warnings import clip

__all__ = [
    "AUDITOR",
    "PLACEMENT",
    "REASON",
    "RESULTS",
    "WEBHOOK",
    "EventEmitter",
    "Involved",
    "immediate_subject",
]

log = logging.getLogger(__name__)

REASON = reports.EVENT_REASON  # "ImageArchMismatch": the one reason, named in core
WEBHOOK = "archaudit.io/webhook"
AUDITOR = "archaudit.io/auditor"
PLACEMENT = "archaudit.io/placement"
RESULTS = ("emitted", "aggregated", "dropped", "failed")
RETRIED = "retried"
RETRY_TRIES = 12  # client-go's maxTriesPerEvent
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# Answers that say "not now" rather than "no": the same create may succeed later.
_TRANSIENT_STATUS = frozenset({0, 408, 429, 500, 502, 503, 504})
_MESSAGE_RUNES = 1024  # what `kubectl describe` shows in full; the ImageAudit has the rest
_SOURCE = {WEBHOOK: "archaudit-webhook", AUDITOR: "archaudit-auditor"}

# (kind, namespace, name, uid, apiVersion) of what an occurrence names before any lookup
_Subject = tuple[str, str, str, str, str]
OwnerOf = Callable[[Mapping[str, Any]], Awaitable[Involved | None]]


def immediate_subject(obj: Mapping[str, Any]) -> _Subject | None:
    """What the admitted object names without I/O: its controller, or itself; None if it has no name.

    A pod from a ReplicaSet or Job has `generateName` and a controller reference at admission: its
    own name says nothing a person can look up later, its controller does.
    """
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("name"):
            kind, owner = str(ref.get("kind", "")), str(ref["name"])
            return (kind, namespace, owner, str(ref.get("uid", "")), str(ref.get("apiVersion", "")))
    own = meta.get("name")
    if not own:
        return None
    return (
        str(obj.get("kind", "")),
        namespace,
        str(own),
        str(meta.get("uid") or ""),
        str(obj.get("apiVersion", "")),
    )


@dataclass
class _Waiting:
    """Occurrences of one problem counted while it waits in the queue."""

    involved: Involved | None  # known already (the auditor's workload), or None: look it up
    subject: _Subject
    obj: Mapping[str, Any] | None
    messages: tuple[str, ...]
    component: str
    count: int = 1
    reason: str = REASON


@dataclass
class _Retry:
    """A create that was not answered, to be tried again at `due` (monotonic seconds)."""

    key: EventKey
    count: int
    tries: int
    due: float


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return (error.status or 0) in _TRANSIENT_STATUS
    # urllib3/socket errors: connection refused or reset, timeouts — the apiserver is away, not saying no.
    return isinstance(error, (OSError, TimeoutError)) or type(error).__module__.startswith("urllib3")


def _now_text(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


class EventEmitter:
    """A bounded queue, one worker, one correlator; see the module docstring.

    `owner_of(pod)` finds the workload of a controller-made pod (audit store's owner cache); it may
    raise or return None, and the controller the pod names is used then. `clock` is monotonic seconds
    for the correlator, `wall` the timestamps written into Events.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        owner_of: OwnerOf | None = None,
        correlator: Correlator | None = None,
        queue_size: int = 1024,
        linger: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        instance: str | None = None,
    ) -> None:
        self.api = api
        self.owner_of = owner_of
        self.correlator = correlator or Correlator()
        self.stats: Counter[str] = Counter(dict.fromkeys((*RESULTS, RETRIED), 0))
        self._clock = clock
        self._wall = wall
        self._instance = (instance or socket.gethostname())[:128]
        self.queue_size = queue_size
        self.linger = linger
        # The bounded queue: distinct problems waiting for the worker, each with its count so far.
        self._waiting: dict[tuple[Any, ...], _Waiting] = {}
        # Creates to try again (bounded by `queue_size` too): one per problem.
        self._retries: dict[EventKey, _Retry] = {}
        self._arrived = asyncio.Event()

    # --- the hot path: synchronous, no I/O, never raises ------------------------------------------

    def about_object(
        self,
        obj: Mapping[str, Any],
        messages: Sequence[str],
        *,
        component: str = WEBHOOK,
        reason: str = REASON,
    ) -> None:
        """An admitted object has these warnings (or, with `reason`, another Warning of archaudit's
        about it): one occurrence of its problem."""
        try:
            subject = immediate_subject(obj)
            if subject is None:
                self.stats["dropped"] += 1
                return
            texts = messages if isinstance(messages, tuple) else tuple(messages)
            token = (component, subject, texts, reason)
            waiting = self._waiting.get(token)
            if waiting is not None:  # the common case of a burst: one dict lookup, one addition
                waiting.count += 1
                return
            self._add(token, _Waiting(None, subject, obj, texts, component, reason=reason))
        except Exception:  # a bug here must not reach the review
            log.exception("event emitter: could not queue an occurrence")

    def about(self, involved: Involved, messages: Sequence[str], *, component: str = AUDITOR) -> None:
        """A problem of an object whose identity is known (the auditor's workload)."""
        try:
            subject = (involved.kind, involved.namespace, involved.name, involved.uid, involved.api_version)
            token = (component, subject, tuple(messages))
            waiting = self._waiting.get(token)
            if waiting is not None:
                waiting.count += 1
                return
            self._add(token, _Waiting(involved, subject, None, token[2], component))
        except Exception:
            log.exception("event emitter: could not queue an occurrence")

    def _add(self, token: tuple[Any, ...], item: _Waiting) -> None:
        if len(self._waiting) >= self.queue_size:
            self.stats["dropped"] += 1
            return
        self._waiting[token] = item
        self._arrived.set()

    def queued(self) -> int:
        """Distinct problems waiting for the worker (never more than the queue size)."""
        return len(self._waiting)

    def retrying(self) -> int:
        """Problems whose Event create waits to be tried again (never more than the queue size)."""
        return len(self._retries)

    # --- the worker -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write Events until `stop` is set; then carry the last counts and return."""
        while not stop.is_set():
            if not self._waiting:
                await _first_of(stop, self._arrived, within=self._next_wake())
            await self.drain()
            # Repeats of the problems just handled gather in `_waiting` meanwhile (a count on one
            # entry): the worker's cost is per problem and pause, not per review.
            await _first_of(stop, within=self.linger)
        await self._guarded(self._flush(final=True))

    async def drain(self) -> None:
        """One round of the worker: write what is queued now, and the counts that are due."""
        batch, self._waiting = self._waiting, {}
        self._arrived.clear()
        for item in batch.values():
            await self._guarded(self._handle(item))
        await self._guarded(self._retry_due())
        await self._guarded(self._flush())

    def _next_wake(self) -> float | None:
        """Seconds until a count is due or a create is to be tried again (None: nothing waits)."""
        now = self._clock()
        waits = [max(r.due - now, 0.0) for r in self._retries.values()]
        due = self.correlator.next_due(now)
        if due is not None:
            waits.append(due)
        return min(waits) if waits else None

    async def _retry_due(self) -> None:
        now = self._clock()
        for retry in [r for r in self._retries.values() if r.due <= now]:
            del self._retries[retry.key]
            self.stats[RETRIED] += 1
            # Occurrences counted on the pending create meanwhile go with it.
            count = max(retry.count, self.correlator.count_of(retry.key) or 0)
            await self._create(retry.key, count, tries=retry.tries)

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:  # the worker outlives any one bad Event
            log.exception("event emitter: unexpected error")

    async def _handle(self, item: _Waiting) -> None:
        involved = item.involved or await self._involved(item)
        message = clip("; ".join(item.messages), _MESSAGE_RUNES)
        key = EventKey(involved, item.reason, message, item.component)
        observed = self.correlator.observe(key, self._clock(), item.count)
        if observed is Observed.DROPPED:
            self.stats["dropped"] += item.count
            return
        if observed is Observed.AGGREGATED:
            self.stats["aggregated"] += item.count
            return
        self.stats["aggregated"] += item.count - 1
        await self._create(key, item.count)

    async def _involved(self, item: _Waiting) -> Involved:
        kind, namespace, name, uid, api_version = item.subject
        immediate = Involved(api_version, kind, namespace, name, uid)
        if item.obj is None or self.owner_of is None or kind not in ("ReplicaSet", "Job"):
            return immediate
        try:
            found = await self.owner_of(item.obj)
        except Exception as e:  # cannot read the owner (RBAC, apiserver away): the controller is real too
            log.debug("event emitter: owner of %s/%s not found: %s", namespace, name, e)
            return immediate
        return found or immediate

    async def _create(self, key: EventKey, count: int, *, tries: int = 1) -> None:
        obj = key.involved
        now = _now_text(self._wall())
        body = {
            "metadata": {"generateName": f"{obj.name[:200]}.", "namespace": obj.namespace},
            "involvedObject": {
                "apiVersion": obj.api_version,
                "kind": obj.kind,
                "name": obj.name,
                "namespace": obj.namespace,
                **({"uid": obj.uid} if obj.uid else {}),
            },
            "reason": key.reason,
            "type": "Warning",
            "message": key.message,
            "source": {"component": _SOURCE.get(key.component, key.component)},
            "reportingComponent": key.component,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
        }
        try:
            created = await self.api.request("POST", f"{_events(obj.namespace)}", body=body)
        except Exception as e:
            log.debug(
                "event emitter: cannot create an Event on %s %s/%s (try %d): %s",
                obj.kind,
                obj.namespace,
                obj.name,
                tries,
                e,
            )
            if _transient(e) and tries < RETRY_TRIES and len(self._retries) < self.queue_size:
                # The correlator keeps the key: repeats meanwhile are counted, not created again.
                wait = min(RETRY_FIRST_SECONDS * 2 ** (tries - 1), RETRY_MAX_SECONDS)
                self._retries[key] = _Retry(key, count, tries + 1, self._clock() + wait)
                return
            self.correlator.forget(key)
            self.stats["failed"] += 1
            return
        self.stats["emitted"] += 1
        self.correlator.created(key, str((created.get("metadata") or {}).get("name", "")), count)

    async def _flush(self, *, final: bool = False) -> None:
        now = self._clock()
        for update in list(self.correlator.due(now if not final else now + self.correlator.flush_interval)):
            obj = update.key.involved
            patch = {"count": update.count, "lastTimestamp": _now_text(self._wall())}
            try:
                await self.api.request(
                    "PATCH",
                    f"{_events(obj.namespace)}/{_quote(update.name)}",
                    body=patch,
                    content_type="application/merge-patch+json",
                )
            except ApiException as e:
                self.stats["failed"] += 1
                if e.status == 404:  # expired (the apiserver's --event-ttl): the next sight creates anew
                    self.correlator.forget(update.key)
                log.debug("event emitter: cannot update Event %s/%s: %s", obj.namespace, update.name, e)
                continue
            except Exception as e:
                self.stats["failed"] += 1
                log.debug("event emitter: cannot update Event %s/%s: %s", obj.namespace, update.name, e)
                continue
            self.correlator.sent(update.key, update.count)


async def _first_of(*events: asyncio.Event, within: float | None) -> None:
    """Return when one of `events` is set or after `within` seconds (None: no limit)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _events(namespace: str) -> str:
    return f"/api/v1/namespaces/{_quote(namespace)}/events"
