"""Image reference -> platforms, with the caches that keep admission fast and registries calm.

Why a layer above the client: a cluster starts the same few images thousands of times, and the
webhook has a few seconds at most. So:
  - tag -> digest is cached for `tag_ttl_seconds` (tags move; digests do not);
  - digest -> platforms is cached without expiry (content-addressed, immutable), LRU-bounded;
  - concurrent lookups of one key are merged into one registry conversation (singleflight);
  - failures are remembered for `negative_ttl_seconds`, so a broken image does not become a storm;
  - when the registry is down, the last good answer (up to `stale_max_seconds` old) is served,
    marked `stale`, instead of an error.
Everything fetched with credentials is cached under the credential identity (never the secret), so
a pod without pull secrets never reads what another pod's secret fetched.

The registry is reached through a `Registry` (the RegistryClient in production; a plain fake in the
unit tests), kept as `Resolver.transport`, and time through an injected clock: the cache logic is
tested without sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from archaudit.adapters.registry.client import Observer, RegistryClient, TagLookup
from archaudit.adapters.registry.safety import HostGuard
from archaudit.core.config import RegistrySettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import InvalidReference, Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.mirrors import RegistriesConfig
from archaudit.core.reference import ImageReference, parse

__all__ = ["CacheCounter", "Registry", "Resolution", "Resolver", "ResolverStats"]

# A registry that is down, slow or throttling: the last good answer is better than none.
# Not NOT_FOUND or AUTH: those are the registry's answer, and it may have changed on purpose.
_STALE_OK = frozenset({Reason.UNREACHABLE, Reason.TIMEOUT, Reason.REGISTRY_ERROR, Reason.RATE_LIMITED})

_K = TypeVar("_K")
_V = TypeVar("_V")


class Registry(Protocol):
    """The two registry questions the caches are built around (RegistryClient answers them).

    Not the HTTP seam (that is `archaudit.adapters.registry.transport.Transport`, under the client).
    """

    async def lookup(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> TagLookup: ...

    async def fetch(
        self,
        ref: ImageReference,
        digest: str,
        credentials: Sequence[Credential] = (),
        *,
        deadline: float | None = None,
    ) -> ImagePlatforms: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Resolution:
    """What the resolver answers: the image's platforms, and how fresh that answer is."""

    reference: ImageReference
    image: ImagePlatforms
    stale: bool = False  # the registry failed; this is the last good answer
    from_cache: bool = False  # no registry request was made for this answer


@dataclass
class CacheCounter:
    hits: int = 0
    misses: int = 0


@dataclass
class ResolverStats:
    """Plain counters, read at scrape time by metrics.py (no metric objects kept in sync by hand)."""

    tag: CacheCounter = field(default_factory=CacheCounter)  # reference (tag) -> answer, within the tag TTL
    platforms: CacheCounter = field(default_factory=CacheCounter)
    negative: CacheCounter = field(default_factory=CacheCounter)
    merged: int = 0  # lookups that joined one already in flight
    stale: int = 0  # stale answers served while a registry failed

    def as_dict(self) -> dict[str, int]:
        return {
            "tag_hits": self.tag.hits,
            "tag_misses": self.tag.misses,
            "platforms_hits": self.platforms.hits,
            "platforms_misses": self.platforms.misses,
            "negative_hits": self.negative.hits,
            "merged": self.merged,
            "stale": self.stale,
        }


class _LRU(Generic[_K, _V]):
    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._max = max(1, max_entries)

    def get(self, key: _K) -> _V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: _K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class _Answer:
    """What a reference resolved to, kept whole so that a cache hit allocates nothing."""

    digest: str
    fresh_until: float  # infinity for a digest reference: content-addressed
    stale_until: float
    resolution: Resolution  # from_cache=True, ready to hand out


@dataclass(frozen=True)
class _Failure:
    error: ResolutionError
    until: float


# (registry, repository, tag or None, digest or None, credential identity): cheaper than str(ref)
_Key = tuple[str, str, str | None, str | None, str]


def _identity(credentials: Sequence[Credential]) -> str:
    return ",".join(c.identity for c in credentials) if credentials else ""


# Pods name the same few images over and over: parse each text once (errors are not cached).
_parse_text = functools.lru_cache(maxsize=4096)(parse)


def _key(ref: ImageReference, identity: str) -> _Key:
    # with a digest the tag is ignored, as the runtime ignores it
    return (ref.registry, ref.repository, None if ref.digest else ref.tag, ref.digest, identity)


class Resolver:
    """Cached, merged, stale-tolerant image resolution. One per process; share it."""

    def __init__(
        self,
        transport: Registry,
        *,
        tag_ttl_seconds: float = 300.0,
        negative_ttl_seconds: float = 30.0,
        stale_max_seconds: float = 86400.0,
        cache_size: int = 10000,
        timeout_seconds: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.tag_ttl = tag_ttl_seconds
        self.negative_ttl = negative_ttl_seconds
        self.stale_max = stale_max_seconds
        self.timeout = timeout_seconds
        self.clock = clock
        self.stats = ResolverStats()
        self._answers: _LRU[_Key, _Answer] = _LRU(cache_size)
        self._platforms: _LRU[tuple[str, str], ImagePlatforms] = _LRU(cache_size)
        self._failures: _LRU[_Key, _Failure] = _LRU(cache_size)
        self._inflight: dict[_Key, asyncio.Task[Resolution]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: RegistrySettings,
        *,
        observer: Observer | None = None,
        registries: RegistriesConfig | None = None,
        guard: HostGuard | None = None,
        insecure: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> Resolver:
        client = RegistryClient(
            settings, registries=registries, guard=guard, observer=observer, insecure=insecure
        )
        return cls(
            client,
            tag_ttl_seconds=settings.tag_ttl_seconds,
            negative_ttl_seconds=settings.negative_ttl_seconds,
            stale_max_seconds=settings.stale_max_seconds,
            cache_size=settings.cache_size,
            timeout_seconds=settings.timeout_seconds,
            clock=clock,
        )

    def cache_sizes(self) -> dict[str, int]:
        return {
            "tag": len(self._answers),
            "platforms": len(self._platforms),
            "negative": len(self._failures),
        }

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self.transport.aclose()

    # -- resolution

    async def resolve(self, ref: ImageReference | str, credentials: Sequence[Credential] = ()) -> Resolution:
        """The platforms of `ref` as `credentials` (pull secrets, in order) may see them."""
        if isinstance(ref, str):
            try:
                ref = _parse_text(ref)
            except InvalidReference as e:
                raise ResolutionError(Reason.INVALID_REFERENCE, f"image {ref!r}: {e}") from None
        identity = _identity(credentials)
        key = _key(ref, identity)
        cached = self._cached(ref, key, identity)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is not None:
            self.stats.merged += 1
        else:
            task = asyncio.ensure_future(self._load(ref, credentials, key, identity))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        # shielded: a caller that gives up (the webhook's deadline) does not cancel the others' lookup
        return await asyncio.shield(task)

    def peek(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> Resolution | None:
        """The cached answer for `ref` without any await, or None (then call `resolve`).

        The warm admission path: no task, no await, no registry. Raises a remembered failure as
        `resolve` would.
        """
        identity = _identity(credentials)
        return self._cached(ref, _key(ref, identity), identity)

    async def resolve_many(
        self, refs: Iterable[ImageReference | str], credentials: Sequence[Credential] = ()
    ) -> list[Resolution | ResolutionError]:
        """Each reference resolved concurrently; failures are returned in place, not raised."""

        async def one(ref: ImageReference | str) -> Resolution | ResolutionError:
            try:
                return await self.resolve(ref, credentials)
            except ResolutionError as e:
                return e

        return list(await asyncio.gather(*(one(r) for r in refs)))

    def _landed(self, key: _Key, task: asyncio.Task[Resolution]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left waiting for it

    def _cached(self, ref: ImageReference, key: _Key, identity: str) -> Resolution | None:
        """An answer without any await, or None. Raises a remembered failure. The hot path."""
        now = self.clock()
        answer = self._answers.get(key)
        if answer is not None and answer.fresh_until > now:
            self.stats.tag.hits += 1
            return answer.resolution
        self.stats.tag.misses += 1
        if ref.digest is not None:
            image = self._platforms.get((ref.digest, identity))
            if image is not None:
                self.stats.platforms.hits += 1
                return self._remember(ref, key, image, now).resolution
        failure = self._failures.get(key)
        if failure is not None:
            if failure.until > now:
                self.stats.negative.hits += 1
                return self._stale_or_raise(key, failure.error, now)
            self._failures.pop(key)
        return None

    def _remember(self, ref: ImageReference, key: _Key, image: ImagePlatforms, now: float) -> _Answer:
        if ref.digest is not None:
            fresh = stale = float("inf")
        else:
            fresh, stale = now + self.tag_ttl, now + self.stale_max
        answer = _Answer(image.digest, fresh, stale, Resolution(ref, image, stale=False, from_cache=True))
        self._answers.put(key, answer)
        return answer

    async def _load(
        self, ref: ImageReference, credentials: Sequence[Credential], key: _Key, identity: str
    ) -> Resolution:
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            digest = ref.digest
            if digest is None:
                found = await self.transport.lookup(ref, credentials, deadline=deadline)
                digest = found.digest
                if found.image is not None:
                    self._platforms.put((digest, identity), found.image)
            image = self._platforms.get((digest, identity))
            if image is None:
                self.stats.platforms.misses += 1
                image = await self.transport.fetch(ref, digest, credentials, deadline=deadline)
                self._platforms.put((digest, identity), image)
            else:
                self.stats.platforms.hits += 1  # the tag moved back, or another tag has this digest
        except ResolutionError as e:
            now = self.clock()
            self._failures.put(key, _Failure(e, now + self.negative_ttl))
            return self._stale_or_raise(key, e, now)
        self._failures.pop(key)
        self._remember(ref, key, image, self.clock())
        return Resolution(ref, image, stale=False, from_cache=False)

    def _stale_or_raise(self, key: _Key, error: ResolutionError, now: float) -> Resolution:
        if error.reason in _STALE_OK:
            answer = self._answers.get(key)
            if answer is not None and answer.stale_until > now:
                self.stats.stale += 1
                return replace(answer.resolution, stale=True)
        raise ResolutionError(error.reason, error.message)
