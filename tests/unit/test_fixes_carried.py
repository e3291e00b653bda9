"""A takeover writes nothing when nothing changed: fixing tags are carried until the finder has looked.

A new leader's tag finder (or a restarted operator's) has searched nothing yet. Had the auditor taken
its silence for "no fixing tag", every report naming one would be written without it, then written
again once the finder found the same tag: two writes per report for no news (the leader-kill fault
case counts them). The rule: for a platform the finder has not searched within its period, the stored
report's tag stands; a platform it has searched is its word.
"""

from __future__ import annotations

from collections.abc import Sequence

from archaudit.adapters.tagfinder import TagFinder
from archaudit.core import reports
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.reference import ImageReference
from tests.unit.test_reports_readiness import AMD_ONLY, TARGETS, build_pods

IMAGE = "acme/api:1.0"


def test_the_finder_decides_only_the_platforms_it_searched() -> None:
    stored = {"linux/arm64": "1.2", "linux/arm/v7": "2.0"}

    def nothing_searched(_platform: str) -> bool:
        return False

    assert reports.reported_fixes({}, stored, nothing_searched) == stored
    # arm64 searched: its answer (here: none found) replaces the stored one; arm/v7 not yet: kept.
    assert reports.reported_fixes({}, stored, lambda p: p == "linux/arm64") == {"linux/arm/v7": "2.0"}
    assert reports.reported_fixes({"linux/arm64": "1.3"}, stored, lambda p: p == "linux/arm64") == {
        "linux/arm64": "1.3",
        "linux/arm/v7": "2.0",
    }
    assert reports.reported_fixes({}, {}, nothing_searched) == {}


def test_stored_fixes_are_read_from_the_reports_containers() -> None:
    written = build_pods({IMAGE: AMD_ONLY}, fixes={IMAGE: {"linux/arm64": "1.2"}})
    assert reports.stored_fixes(written.status, IMAGE) == {"linux/arm64": "1.2"}
    assert reports.stored_fixes(written.status, "acme/other:1") == {}
    assert reports.stored_fixes(None, IMAGE) == {}


def test_a_new_leader_that_has_not_searched_computes_the_stored_report() -> None:
    # The old leader wrote this after its finder found 1.2 for arm64.
    stored = build_pods({IMAGE: AMD_ONLY}, fixes={IMAGE: {"linux/arm64": "1.2"}}).status
    # The new leader: its finder has searched nothing.
    carried = reports.reported_fixes({}, reports.stored_fixes(stored, IMAGE), lambda _p: False)
    again = build_pods({IMAGE: AMD_ONLY}, fixes={IMAGE: carried}, previous=stored)
    assert again.fingerprint == stored["fingerprint"]  # unchanged: nothing is written
    # What it computed before the rule: a different report, written (and written back later).
    silent = build_pods({IMAGE: AMD_ONLY}, fixes={IMAGE: {}}, previous=stored)
    assert silent.fingerprint != stored["fingerprint"]


class Lister:
    def __init__(self, tags: list[str] | None) -> None:
        self.tags = tags

    async def list_tags(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> list[str]:
        if self.tags is None:
            raise ResolutionError(Reason.TIMEOUT, "the registry would not list")
        return self.tags


class Resolver:
    async def resolve(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> object:
        raise ResolutionError(Reason.NOT_FOUND, "no such tag")


async def anonymous(_ref: ImageReference) -> Sequence[Credential]:
    return ()


async def test_searched_means_the_tags_were_looked_through_within_the_period() -> None:
    now = [1000.0]
    lister = Lister(None)
    finder = TagFinder(lister, Resolver(), period_seconds=100.0, clock=lambda: now[0])  # type: ignore[arg-type]
    image = "registry.example/acme/api:1.0"
    assert not finder.searched(image, "linux/arm64")
    finder.want("ns", image, ["linux/arm64"], TARGETS, anonymous)
    await finder.drain()
    assert not finder.searched(image, "linux/arm64")  # the listing failed: no word on it
    lister.tags = ["1.0", "1.1"]
    now[0] += 100.0
    finder.want("ns", image, ["linux/arm64"], TARGETS, anonymous)
    await finder.drain()
    assert finder.searched(image, "linux/arm64")
    assert finder.known(image) == {}  # searched, and none found: the stored tag is dropped
    now[0] += 100.0
    assert not finder.searched(image, "linux/arm64")  # the period is over
