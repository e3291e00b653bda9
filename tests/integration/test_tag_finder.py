"""The tag that fixes a blocking image, found against the real docker-registry (through a counting proxy).

Repository `fixes/app`: 1.0 and 1.1 amd64 only, 1.2 amd64+arm64, 2.0.0-rc.1 amd64+arm64+arm/v7, latest
(amd64 only); `fixes/stuck`: 1.0 and 1.1 amd64 only. The proxy's request log counts what went over the
wire: one tag list per repository per period, a few candidate tags resolved, every request observed
by the registry metrics' hook.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from archaudit.adapters.tagfinder import TagFinder
from archaudit.core import readiness
from archaudit.core.credentials import Credential
from archaudit.core.reference import ImageReference
from tests.conftest import Seeded
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import push_image, push_index

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TARGETS = readiness.target_nodes([], readiness.COMMON_TARGETS, profiles=("containerd",))
DAY = 86400.0


@dataclass
class Recorder:
    """The registry client's Observer, as the metrics adapter is: every request it is told about."""

    requests: list[tuple[str, str, int | None]] = field(default_factory=list)

    def on_request(self, registry: str, method: str, status: int | None, seconds: float) -> None:
        self.requests.append((registry, method, status))

    def on_ratelimit(self, registry: str, remaining: int) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Repos:
    app: str  # registry/repository, without tag
    stuck: str


@pytest.fixture(scope="module")
def repos(plain_registry: Seeded) -> Repos:
    registry = plain_registry.registry
    pusher = registry.pusher()
    suffix = uuid.uuid4().hex[:8]  # the session's registry is shared: fresh repositories per run
    app, stuck = f"fixes-{suffix}/app", f"fixes-{suffix}/stuck"

    def multi(repo: str, tag: str, *platforms: tuple[str, str, str]) -> None:
        kids = [push_image(pusher, repo, os_, arch, variant).descriptor() for os_, arch, variant in platforms]
        push_index(pusher, repo, kids, tag=tag)

    for tag in ("1.0", "1.1", "latest"):
        push_image(pusher, app, "linux", "amd64", tag=tag)
    multi(app, "1.2", ("linux", "amd64", ""), ("linux", "arm64", ""))
    multi(app, "2.0.0-rc.1", ("linux", "amd64", ""), ("linux", "arm64", ""), ("linux", "arm", "v7"))
    for tag in ("1.0", "1.1"):
        push_image(pusher, stuck, "linux", "amd64", tag=tag)
    return Repos(f"{registry.host}/{app}", f"{registry.host}/{stuck}")


@pytest.fixture
def proxy(plain_registry: Seeded) -> Iterator[FaultProxy]:
    p = FaultProxy(plain_registry.registry).start()
    try:
        yield p
    finally:
        p.stop()


async def anonymous(_ref: ImageReference) -> Sequence[Credential]:
    return ()


def finder_for(
    plain_registry: Seeded, proxy: FaultProxy, make: Callable[..., Any], **kw: Any
) -> tuple[TagFinder, Recorder, Clock, list[tuple[str, str]]]:
    recorder, clock, found = Recorder(), Clock(), []
    resolver = make(plain_registry, config=False, host=proxy.host, observer=recorder)
    client = resolver.transport
    finder = TagFinder(
        client,
        resolver,
        period_seconds=DAY,
        max_resolves=4,
        clock=clock,
        on_found=lambda ns, image: found.append((ns, image)),
        ratelimits=lambda: dict(client.ratelimit_remaining),
        **kw,
    )
    return finder, recorder, clock, found


async def test_the_nearest_newer_tag_that_provides_the_platform(
    plain_registry: Seeded, proxy: FaultProxy, repos: Repos, resolver_factory: Callable[..., Any]
) -> None:
    finder, recorder, clock, found = finder_for(plain_registry, proxy, resolver_factory)
    images = {
        "app:1.0": proxy.ref(f"{repos.app}:1.0"),
        "app:1.1": proxy.ref(f"{repos.app}:1.1"),
        "app:latest": proxy.ref(f"{repos.app}:latest"),
        "stuck:1.0": proxy.ref(f"{repos.stuck}:1.0"),
    }
    for image in images.values():
        finder.want("shop", image, ["linux/arm64", "linux/arm/v7"], TARGETS, anonymous)
    await finder.drain()

    assert finder.known(images["app:1.0"]) == {"linux/arm64": "1.2"}  # arm/v7 only in a pre-release
    assert finder.known(images["app:1.1"]) == {"linux/arm64": "1.2"}
    assert finder.known(images["app:latest"]) == {"linux/arm64": "1.2"}  # pin the newest that runs
    assert finder.known(images["stuck:1.0"]) == {}  # none exists
    assert sorted(found) == sorted(("shop", images[k]) for k in ("app:1.0", "app:1.1", "app:latest"))

    tag_lists = [s for s in proxy.requests() if "/tags/list" in s.path]
    assert len(tag_lists) == 2, tag_lists  # one per repository, for 4 images and 2 platforms each
    assert len(recorder.requests) == len(proxy.requests())  # every request reaches the registry metrics
    assert finder.stats.resolutions <= 4 * 2 * 4  # the budget: 4 per image and platform
    manifests = len(proxy.requests(kind="manifests"))
    print(f"requests: {len(proxy.requests())} total, {len(tag_lists)} tag lists, {manifests} manifests")

    # Within the period: asked again, nothing goes to the registry.
    before = len(proxy.requests())
    for image in images.values():
        finder.want("shop", image, ["linux/arm64"], TARGETS, anonymous)
    await finder.drain()
    assert len(proxy.requests()) == before

    # A day later the lists are fetched again, once per repository.
    clock.now += DAY
    for image in images.values():
        finder.want("shop", image, ["linux/arm64"], TARGETS, anonymous)
    await finder.drain()
    assert len([s for s in proxy.requests() if "/tags/list" in s.path]) == 4
    assert finder.known(images["app:1.0"]) == {"linux/arm64": "1.2"}


async def test_a_prerelease_may_move_to_a_newer_prerelease_or_release(
    plain_registry: Seeded, proxy: FaultProxy, repos: Repos, resolver_factory: Callable[..., Any]
) -> None:
    finder, _recorder, _clock, _found = finder_for(plain_registry, proxy, resolver_factory)
    image = proxy.ref(f"{repos.app}:2.0.0-rc.0")  # not in the registry; its place in the order is enough
    finder.want("shop", image, ["linux/arm/v7"], TARGETS, anonymous)
    await finder.drain()
    assert finder.known(image) == {"linux/arm/v7": "2.0.0-rc.1"}


async def test_a_low_rate_limit_stops_the_search(
    plain_registry: Seeded, proxy: FaultProxy, repos: Repos, resolver_factory: Callable[..., Any]
) -> None:
    proxy.set("ratelimit")
    proxy.ratelimit_remaining = "3;w=21600"  # Docker Hub's header: 3 pulls left in the window
    finder, _recorder, _clock, _found = finder_for(plain_registry, proxy, resolver_factory)
    image = proxy.ref(f"{repos.app}:1.0")
    finder.want("shop", image, ["linux/arm64"], TARGETS, anonymous)
    await finder.drain()
    # The proxy adds the header to manifest answers: the first resolution learns the limit and the
    # search stops there (unlimited, the binary search over [1.1, 1.2] resolves both). What it did
    # verify is still an answer: 1.2 was resolved and provides linux/arm64.
    assert finder.stats.tag_lists == 1
    assert finder.stats.resolutions == 1
    assert finder.known(image) == {"linux/arm64": "1.2"}
    assert {s.path.split("/manifests/")[1] for s in proxy.requests(kind="manifests")} <= {"1.2"} | {
        s.path.split("/manifests/")[1] for s in proxy.requests(kind="manifests") if "sha256:" in s.path
    }
