"""The tag that fixes a blocking image, looked for in the background: bounded, cached, serial.

"acme/api:1.0 blocks the move to arm64" is half an answer; "fix: 1.2 provides linux/arm64" is the
other half. Finding it costs registry requests, so this runs apart from admission and audit passes:
the auditor asks (`want`) after a pass, one search runs at a time (`run`), and the auditor is told
(`on_found`) when an answer changed so the workloads using that image are re-reported.

Bounds, each a setting (config.AuditSettings.fix_tags_*):
- one tag list per repository per period (a day by default); a failed listing is not retried for an
  hour (or the period, if shorter);
- per image and platform, the core's binary search (core.tags) resolves at most `fix_tags_max_resolves`
  candidate tags, through the shared resolver (its caches, its request caps and metrics);
- answers are kept for the period; a queue of at most `_MAX_QUEUE` searches (the next pass asks again);
- a registry whose Docker Hub `ratelimit-remaining` is low is left alone until the next period.
Whether a candidate tag provides the platform is the engine's verdict on the target nodes of that
platform (the same virtual nodes `status.runsOn` is judged on): no rule of its own here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from archaudit.core import tags
from archaudit.core.credentials import Credential
from archaudit.core.engine import Verdict, judge
from archaudit.core.errors import InvalidReference, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.reference import ImageReference, parse
from archaudit.core.scheduling import Node

__all__ = ["CredentialsFor", "FinderStats", "TagFinder", "TagLister"]

log = logging.getLogger(__name__)

_MAX_QUEUE = 1000
_FAILURE_RETRY_SECONDS = 3600.0
_LOW_RATELIMIT = 10  # pulls left in a Docker Hub window below which the finder waits
_MAX_IMAGES = 20_000  # images (and repositories) remembered; the oldest are forgotten first


@runtime_checkable
class TagLister(Protocol):
    """What the registry client offers the finder (RegistryClient.list_tags)."""

    async def list_tags(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> list[str]: ...


class _Resolver(Protocol):
    async def resolve(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> _Resolution: ...


class _Resolution(Protocol):
    @property
    def image(self) -> ImagePlatforms: ...


# The pod's pull credentials for a reference (credentials are looked up when the search runs).
CredentialsFor = Callable[[ImageReference], Awaitable[Sequence[Credential]]]


@dataclass
class FinderStats:
    tag_lists: int = 0  # tag lists fetched (successfully or not)
    resolutions: int = 0  # candidate tags resolved
    searches: int = 0  # (image, platform) searches completed


@dataclass(frozen=True)
class _Job:
    image: str  # as written in the pod
    platforms: tuple[str, ...]  # target platforms the image lacks
    targets: tuple[Node, ...]  # the target nodes (readiness.target_nodes), for the engine
    credentials: CredentialsFor
    namespace: str


@dataclass
class TagFinder:
    lister: TagLister
    resolver: _Resolver
    period_seconds: float = 86400.0
    max_resolves: int = 4
    on_found: Callable[[str, str], None] = lambda namespace, image: None  # (namespace, image)
    ratelimits: Callable[[], Mapping[str, int]] = dict
    clock: Callable[[], float] = time.monotonic
    stats: FinderStats = field(default_factory=FinderStats)
    _lists: dict[tuple[str, str], tuple[float, tuple[str, ...] | None]] = field(default_factory=dict)
    # image -> platform -> (when, tag or None, whether the tags could be listed): indexed by image,
    # since every audit reads one image's
    _answers: dict[str, dict[str, tuple[float, str | None, bool]]] = field(default_factory=dict)
    _queued: set[tuple[str, str]] = field(default_factory=set)
    _queue: asyncio.Queue[_Job] = field(default_factory=lambda: asyncio.Queue(_MAX_QUEUE))

    # --- what the auditor reads and asks, without I/O ---------------------------------------------

    def known(self, image: str) -> dict[str, str]:
        """platform -> fixing tag for `image`, as far as found (only tags, not "none found")."""
        now = self.clock()
        answers = self._answers.get(image) or {}
        return {
            p: tag
            for p, (at, tag, _) in answers.items()
            if tag is not None and now - at < self.period_seconds
        }

    def searched(self, image: str, platform: str) -> bool:
        """Whether this finder has looked through the tags for `platform` of `image` within the period.

        Until it has (a new leader, a restarted operator, a registry that would not list), "no fixing
        tag known" is no news: the auditor keeps what the stored report says (reports.reported_fixes).
        """
        at, _tag, listed = (self._answers.get(image) or {}).get(platform, (-float("inf"), None, False))
        return listed and self.clock() - at < self.period_seconds

    def want(
        self,
        namespace: str,
        image: str,
        platforms: Sequence[str],
        targets: Sequence[Node],
        credentials: CredentialsFor,
    ) -> None:
        """Queue a search for the platforms of `image` not answered within the period (or queued)."""
        now = self.clock()
        answers = self._answers.get(image) or {}
        due = tuple(
            p
            for p in platforms
            if (image, p) not in self._queued
            and now - answers.get(p, (-float("inf"), None, False))[0] >= self.period_seconds
        )
        if not due:
            return
        try:
            self._queue.put_nowait(_Job(image, due, tuple(targets), credentials, namespace))
        except asyncio.QueueFull:
            return  # the next audit pass asks again
        self._queued.update((image, p) for p in due)

    # --- the background worker ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """One search at a time until `stop`: the finder never competes with admission for a registry."""
        while not stop.is_set():
            job = await self._queue.get()
            try:
                changed = await self.search(job)
            except Exception:
                log.exception("tag finder: search for %s failed", job.image)
                changed = False
            finally:
                self._queued.difference_update((job.image, p) for p in job.platforms)
            if changed:
                self.on_found(job.namespace, job.image)

    async def drain(self) -> None:
        """Run every queued search now (tests and the CLI; the operator uses `run`)."""
        while not self._queue.empty():
            job = self._queue.get_nowait()
            try:
                if await self.search(job):
                    self.on_found(job.namespace, job.image)
            finally:
                self._queued.difference_update((job.image, p) for p in job.platforms)

    async def search(self, job: _Job) -> bool:
        """Answer each platform of `job`; True when an answer changed."""
        try:
            ref = parse(job.image)
        except InvalidReference:
            return False
        creds = await job.credentials(ref)
        listed = await self._tags_of(ref, creds)
        now = self.clock()
        changed = False
        for platform in job.platforms:
            if listed is None:
                tag = None  # the registry would not list: no answer this period
            else:
                tag = await self._search_one(ref, creds, listed, platform, job.targets)
                self.stats.searches += 1
            answers = self._answers.pop(job.image, {})  # re-inserted: the newest are kept longest
            self._answers[job.image] = answers
            before = answers.get(platform, (0.0, None, False))[1]
            answers[platform] = (now, tag, listed is not None)
            changed = changed or tag != before
        _bound(self._answers, _MAX_IMAGES)
        _bound(self._lists, _MAX_IMAGES)
        return changed

    async def _tags_of(self, ref: ImageReference, creds: Sequence[Credential]) -> tuple[str, ...] | None:
        key = (ref.registry, ref.repository)
        now = self.clock()
        cached = self._lists.get(key)
        if cached is not None:
            at, listed = cached
            keep = (
                self.period_seconds
                if listed is not None
                else min(self.period_seconds, _FAILURE_RETRY_SECONDS)
            )
            if now - at < keep:
                return listed
        if self._rate_limited(ref.registry):
            return None
        self.stats.tag_lists += 1
        try:
            found: tuple[str, ...] | None = tuple(await self.lister.list_tags(ref, creds))
        except ResolutionError as e:
            log.info("tag finder: cannot list the tags of %s/%s: %s", ref.registry, ref.repository, e)
            found = None
        self._lists[key] = (now, found)
        return found

    async def _search_one(
        self,
        ref: ImageReference,
        creds: Sequence[Credential],
        listed: Sequence[str],
        platform: str,
        targets: Sequence[Node],
    ) -> str | None:
        nodes = [n for n in targets if str(n.platform) == platform]
        if not nodes:
            return None
        search = tags.plan(ref.tag, ref.digest, listed, budget=self.max_resolves)
        while (candidate := search.next()) is not None:
            if self._rate_limited(ref.registry):
                break
            search.record(candidate, await self._provides(ref, creds, candidate, nodes))
        return search.answer

    async def _provides(
        self, ref: ImageReference, creds: Sequence[Credential], tag: str, nodes: Sequence[Node]
    ) -> bool:
        self.stats.resolutions += 1
        candidate = dataclasses.replace(ref, tag=tag, digest=None)
        try:
            image = (await self.resolver.resolve(candidate, creds)).image
        except ResolutionError:
            return False
        # The engine's verdict on the platform's target nodes, as for status.runsOn.
        return (
            judge([("candidate", str(candidate), image)], nodes, is_pod=False).verdict is Verdict.COMPATIBLE
        )

    def _rate_limited(self, registry: str) -> bool:
        # The client notes the limit under the host it talked to: Docker Hub's is not docker.io.
        seen = self.ratelimits()
        hosts = (registry, "registry-1.docker.io") if registry == "docker.io" else (registry,)
        return any(seen.get(h, _LOW_RATELIMIT) < _LOW_RATELIMIT for h in hosts)


def _bound(table: dict[Any, Any], limit: int) -> None:
    """Forget the oldest entries (dicts keep insertion order) beyond `limit`: memory stays bounded."""
    while len(table) > limit:
        del table[next(iter(table))]
