"""Which Kubernetes Events to write: one per problem, repeats counted on it, writes rate-limited.

Why this module exists: a warned admission review happens once per pod, and a workload makes pods in
bursts (a Deployment scaled to 500, a CronJob every minute). One Event per review would turn an
admission burst into an etcd write burst. client-go's recorder (`tools/record`, EventCorrelator) keeps
Events quiet with three ideas, and this module has its own version of each:

- a key per problem: (namespace, involved object, reason, message, reporting component). The first
  sight of a key creates an Event; repeats within `window` seconds of the last sight only count;
- counts are carried to the existing Event (a patch of `count`, `lastTimestamp` and `series`) at most
  every `flush_interval` seconds per key, never as new objects;
- a token bucket per (component, involved object): every write (create or patch) takes a token;
  `burst` of them, one more every `refill_seconds`. An object with many distinct problems cannot
  flood the apiserver either; an occurrence that finds no token for a create is dropped and counted.

It contains no I/O code whatsoever, and reads no clock: every call takes `now` (seconds, monotonic),
so the emitter (adapters/events.py) supplies the time and tests supply any time they like.
Memory is bounded: at most `max_keys` problems are remembered (least recently seen forgotten first).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Correlator", "EventKey", "Involved", "Observed", "TokenBucket", "Update"]


@dataclass(frozen=True)
class Involved:
    """The object an Event is about, as `involvedObject` names it."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""


@dataclass(frozen=True)
class EventKey:
    """One problem: the same key within the window is the same Event."""

    involved: Involved
    reason: str
    message: str
    component: str

    @property
    def source(self) -> tuple[str, str, str, str]:
        """What the token bucket is per: one reporting component about one object."""
        obj = self.involved
        return (self.component, obj.namespace, obj.kind, obj.name)


class Observed(enum.Enum):
    CREATE = "create"  # first sight (or first after the window): the caller creates an Event
    AGGREGATED = "aggregated"  # counted on the Event of this key; a later `due()` carries the count
    DROPPED = "dropped"  # no token left for this object: nothing is written, the occurrence is lost


@dataclass(frozen=True)
class Update:
    """A count to carry to an existing Event (the caller patches it, then calls `sent`)."""

    key: EventKey
    name: str  # the Event object's metadata.name
    count: int  # occurrences so far, the first included
    first_seen: float
    last_seen: float


class TokenBucket:
    """`burst` tokens, one more every `refill_seconds`, never above `burst`."""

    __slots__ = ("_burst", "_refill", "_stamp", "_tokens")

    def __init__(self, *, burst: int, refill_seconds: float, now: float) -> None:
        self._burst = float(burst)
        self._refill = refill_seconds
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) / self._refill)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        """Whether waiting longer would add nothing: the bucket may be forgotten."""
        return self._tokens + (now - self._stamp) / self._refill >= self._burst


@dataclass
class _Record:
    first_seen: float
    last_seen: float
    count: int = 1  # occurrences, the first included
    sent: int = 0  # the count the Event carries (0: not created yet)
    last_write: float = 0.0
    name: str = ""  # the Event's metadata.name once created


class Correlator:
    """Decides, per occurrence, whether an Event is created, counted or dropped; see the module doc."""

    def __init__(
        self,
        *,
        window: float = 600.0,
        flush_interval: float = 5.0,
        burst: int = 25,
        refill_seconds: float = 300.0,
        max_keys: int = 4096,
    ) -> None:
        if window <= 0 or flush_interval <= 0 or burst < 1 or refill_seconds <= 0 or max_keys < 1:
            raise ValueError("window, flush_interval, refill_seconds > 0; burst, max_keys >= 1")
        self.window = window
        self.flush_interval = flush_interval
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._records: OrderedDict[EventKey, _Record] = OrderedDict()
        self._buckets: dict[tuple[str, str, str, str], TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._records)

    def observe(self, key: EventKey, now: float, count: int = 1) -> Observed:
        """`count` occurrences of `key` at `now`."""
        record = self._records.get(key)
        if record is not None and now - record.last_seen <= self.window:
            # Counted on its Event; when the create is still on its way (between `observe` and
            # `created`), the count waits on the record and the next `due` carries it.
            record.count += count
            record.last_seen = now
            self._records.move_to_end(key)
            return Observed.AGGREGATED
        if not self._take(key, now):
            self._records.pop(key, None)
            return Observed.DROPPED
        self._records[key] = _Record(first_seen=now, last_seen=now, count=count, last_write=now)
        self._records.move_to_end(key)
        self._bound(now)
        return Observed.CREATE

    def created(self, key: EventKey, name: str, count: int) -> None:
        """The Event of `key` exists now, as `name`, carrying `count`."""
        record = self._records.get(key)
        if record is not None:
            record.name = name
            record.sent = max(count, 1)

    def count_of(self, key: EventKey) -> int | None:
        """Occurrences of `key` so far (None: not remembered)."""
        record = self._records.get(key)
        return record.count if record is not None else None

    def forget(self, key: EventKey) -> None:
        """The Event of `key` could not be written or is gone: the next occurrence starts afresh."""
        self._records.pop(key, None)

    def due(self, now: float) -> Iterator[Update]:
        """Counts that moved since their Event was last written, at most one write per flush interval.

        Each update yielded has taken a token; one without a token waits for a later call.
        """
        for key, record in list(self._records.items()):
            if not record.name or record.count <= record.sent:
                continue
            if now - record.last_write < self.flush_interval:
                continue
            if not self._take(key, now):
                continue
            record.last_write = now
            yield Update(key, record.name, record.count, record.first_seen, record.last_seen)

    def sent(self, key: EventKey, count: int) -> None:
        """The Event of `key` carries `count` now."""
        record = self._records.get(key)
        if record is not None:
            record.sent = max(record.sent, count)

    def pending(self) -> int:
        """Occurrences counted but not yet written to their Event."""
        return sum(r.count - r.sent for r in self._records.values() if r.name)

    def next_due(self, now: float) -> float | None:
        """Seconds until `due` may have something to write (None: nothing is waiting)."""
        waits = [
            max(record.last_write + self.flush_interval - now, 0.0)
            for record in self._records.values()
            if record.name and record.count > record.sent
        ]
        return min(waits) if waits else None

    def _take(self, key: EventKey, now: float) -> bool:
        bucket = self._buckets.get(key.source)
        if bucket is None:
            bucket = self._buckets[key.source] = TokenBucket(
                burst=self.burst, refill_seconds=self.refill_seconds, now=now
            )
        return bucket.take(now)

    def _bound(self, now: float) -> None:
        while len(self._records) > self.max_keys:
            self._records.popitem(last=False)
        if len(self._buckets) > 2 * self.max_keys:
            # A full bucket is the same as no bucket: forgetting it changes no decision.
            for source in [s for s, b in self._buckets.items() if b.full(now)]:
                del self._buckets[source]
