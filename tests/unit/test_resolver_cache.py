"""Resolver cache logic, with an in-process transport (I/O injection) and an injected clock.

The HTTP side is tested against the real registry in tests/integration; here only the decisions:
what is cached, for how long, under which key, what is merged, what is served stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from archaudit.adapters.registry.client import TagLookup
from archaudit.adapters.resolver import Resolver
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, PlatformEntry
from archaudit.core.platforms import Platform
from archaudit.core.reference import ImageReference


def _image(digest: str, platform: str = "linux/amd64") -> ImagePlatforms:
    return ImagePlatforms(
        digest,
        "application/vnd.oci.image.manifest.v1+json",
        "manifest",
        (PlatformEntry(Platform.parse(platform), digest),),
    )


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeTransport:
    """Tags and manifests in dicts; counts calls; can fail or hold calls until released."""

    tags: dict[str, str] = field(default_factory=dict)  # "repo:tag" -> digest
    images: dict[str, ImagePlatforms] = field(default_factory=dict)
    error: ResolutionError | None = None
    lookups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fetches: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None  # lookups wait for it
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when a lookup arrives
    by_get: bool = False  # answer lookups as a GET by tag would (with the image)

    async def lookup(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> TagLookup:
        self.lookups.append((str(ref), tuple(c.identity for c in credentials)))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        digest = self.tags.get(f"{ref.repository}:{ref.tag}")
        if digest is None:
            raise ResolutionError(Reason.NOT_FOUND, f"{ref}: no such tag")
        return TagLookup(digest, self.images[digest] if self.by_get else None)

    async def fetch(
        self,
        ref: ImageReference,
        digest: str,
        credentials: Sequence[Credential] = (),
        *,
        deadline: float | None = None,
    ) -> ImagePlatforms:
        self.fetches.append(digest)
        if self.error is not None:
            raise self.error
        return self.images[digest]

    async def aclose(self) -> None:
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def transport() -> FakeTransport:
    t = FakeTransport()
    for i in range(1, 4):
        t.tags[f"library/app:v{i}"] = _digest(i)
        t.images[_digest(i)] = _image(_digest(i))
    return t


@pytest.fixture
def resolver(transport: FakeTransport, clock: Clock) -> Resolver:
    return Resolver(
        transport,
        tag_ttl_seconds=300,
        negative_ttl_seconds=30,
        stale_max_seconds=3600,
        cache_size=100,
        clock=clock,
    )


async def test_first_lookup_asks_then_cache_answers(resolver: Resolver, transport: FakeTransport) -> None:
    first = await resolver.resolve("app:v1")
    second = await resolver.resolve("docker.io/library/app:v1")
    assert first.image.digest == _digest(1)
    assert not first.from_cache
    assert second.image == first.image
    assert second.from_cache
    assert not second.stale
    assert len(transport.lookups) == 1
    assert transport.fetches == [_digest(1)]
    assert (resolver.stats.tag.hits, resolver.stats.tag.misses) == (1, 1)
    assert (resolver.stats.platforms.hits, resolver.stats.platforms.misses) == (0, 1)


async def test_expired_tag_asks_again_but_reuses_digest(
    resolver: Resolver, transport: FakeTransport, clock: Clock
) -> None:
    await resolver.resolve("app:v1")
    clock.now += 299
    await resolver.resolve("app:v1")
    assert len(transport.lookups) == 1
    clock.now += 2  # past the 300 s tag TTL
    again = await resolver.resolve("app:v1")
    assert len(transport.lookups) == 2
    assert transport.fetches == [_digest(1)]  # digest -> platforms is immutable: not fetched again
    assert not again.from_cache


async def test_moved_tag_is_seen_after_ttl(
    resolver: Resolver, transport: FakeTransport, clock: Clock
) -> None:
    assert (await resolver.resolve("app:v1")).image.digest == _digest(1)
    transport.tags["library/app:v1"] = _digest(2)
    assert (await resolver.resolve("app:v1")).image.digest == _digest(1)  # within TTL: old answer
    clock.now += 301
    assert (await resolver.resolve("app:v1")).image.digest == _digest(2)


async def test_digest_reference_skips_the_tag_lookup(resolver: Resolver, transport: FakeTransport) -> None:
    ref = f"app@{_digest(3)}"
    assert (await resolver.resolve(ref)).image.digest == _digest(3)
    assert (await resolver.resolve(ref)).from_cache
    assert transport.lookups == []
    assert transport.fetches == [_digest(3)]


async def test_get_by_tag_answer_needs_no_fetch(resolver: Resolver, transport: FakeTransport) -> None:
    transport.by_get = True
    result = await resolver.resolve("app:v2")
    assert result.image.digest == _digest(2)
    assert transport.fetches == []


async def test_concurrent_lookups_are_merged(resolver: Resolver, transport: FakeTransport) -> None:
    transport.gate = asyncio.Event()
    callers = [asyncio.ensure_future(resolver.resolve("app:v1")) for _ in range(50)]
    # the shared lookup task is scheduled after every caller's first step: when it reaches the
    # transport, all 50 callers have either started it or joined it
    await transport.started.wait()
    assert resolver.stats.merged == 49
    transport.gate.set()
    results = await asyncio.gather(*callers)
    assert {r.image.digest for r in results} == {_digest(1)}
    assert len(transport.lookups) == 1
    assert len(transport.fetches) == 1


async def test_a_caller_giving_up_does_not_cancel_the_others(
    resolver: Resolver, transport: FakeTransport
) -> None:
    transport.gate = asyncio.Event()
    impatient = asyncio.ensure_future(resolver.resolve("app:v1"))
    patient = asyncio.ensure_future(resolver.resolve("app:v1"))
    await transport.started.wait()
    assert resolver.stats.merged == 1
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    transport.gate.set()
    assert (await patient).image.digest == _digest(1)


async def test_failures_are_remembered_briefly(
    resolver: Resolver, transport: FakeTransport, clock: Clock
) -> None:
    transport.error = ResolutionError(Reason.NOT_FOUND, "no such tag")
    for _ in range(3):
        with pytest.raises(ResolutionError) as info:
            await resolver.resolve("app:v9")
        assert info.value.reason is Reason.NOT_FOUND
    assert len(transport.lookups) == 1
    assert resolver.stats.negative.hits == 2
    clock.now += 31
    transport.error = None
    transport.tags["library/app:v9"] = _digest(1)
    assert (await resolver.resolve("app:v9")).image.digest == _digest(1)
    assert len(transport.lookups) == 2


@pytest.mark.parametrize(
    "reason", [Reason.UNREACHABLE, Reason.TIMEOUT, Reason.REGISTRY_ERROR, Reason.RATE_LIMITED]
)
async def test_stale_answer_while_registry_is_down(
    resolver: Resolver, transport: FakeTransport, clock: Clock, reason: Reason
) -> None:
    await resolver.resolve("app:v1")
    clock.now += 301
    transport.error = ResolutionError(reason, "registry down")
    stale = await resolver.resolve("app:v1")
    assert stale.stale
    assert stale.image.digest == _digest(1)
    again = await resolver.resolve("app:v1")  # from the negative cache, still stale
    assert again.stale
    assert len(transport.lookups) == 2
    assert resolver.stats.stale == 2


@pytest.mark.parametrize("reason", [Reason.NOT_FOUND, Reason.AUTH])
async def test_no_stale_answer_when_the_registry_says_no(
    resolver: Resolver, transport: FakeTransport, clock: Clock, reason: Reason
) -> None:
    await resolver.resolve("app:v1")
    clock.now += 301
    transport.error = ResolutionError(reason, "gone")
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve("app:v1")
    assert info.value.reason is reason


async def test_stale_has_a_limit(resolver: Resolver, transport: FakeTransport, clock: Clock) -> None:
    await resolver.resolve("app:v1")
    clock.now += 3601
    transport.error = ResolutionError(Reason.UNREACHABLE, "down")
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve("app:v1")
    assert info.value.reason is Reason.UNREACHABLE


async def test_credential_identity_is_part_of_every_key(resolver: Resolver, transport: FakeTransport) -> None:
    alice = Credential("alice", "secret-a")
    bob = Credential("bob", "secret-b")
    await resolver.resolve("app:v1", [alice])
    await resolver.resolve("app:v1", [alice])
    await resolver.resolve("app:v1")
    await resolver.resolve("app:v1", [bob])
    assert [ids for _, ids in transport.lookups] == [(alice.identity,), (), (bob.identity,)]
    assert len(transport.fetches) == 3  # the anonymous pod does not read what alice's secret fetched


async def test_cache_is_bounded(transport: FakeTransport, clock: Clock) -> None:
    small = Resolver(transport, cache_size=2, clock=clock)
    for i in (1, 2, 3):
        await small.resolve(f"app@{_digest(i)}")
    await small.resolve(f"app@{_digest(3)}")
    assert transport.fetches == [_digest(1), _digest(2), _digest(3)]
    await small.resolve(f"app@{_digest(1)}")  # evicted: fetched again
    assert transport.fetches[-1] == _digest(1)
    assert len(transport.fetches) == 4
    assert small.cache_sizes()["platforms"] == 2


async def test_invalid_reference_is_a_resolution_error(resolver: Resolver) -> None:
    with pytest.raises(ResolutionError) as info:
        await resolver.resolve("docker.io/Library/app:v1")
    assert info.value.reason is Reason.INVALID_REFERENCE


async def test_resolve_many_returns_errors_in_place(resolver: Resolver, transport: FakeTransport) -> None:
    results = await resolver.resolve_many(["app:v1", "app:nope", "app:v2"])
    first, missing, third = results
    assert not isinstance(first, ResolutionError)
    assert first.image.digest == _digest(1)
    assert isinstance(missing, ResolutionError)
    assert missing.reason is Reason.NOT_FOUND
    assert not isinstance(third, ResolutionError)
    assert third.image.digest == _digest(2)
