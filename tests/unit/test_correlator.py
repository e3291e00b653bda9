"""The Event correlator (core/correlator.py): keys, window, flush interval, token bucket, bounds.

Time is a plain number handed to every call: no clock is read, nothing sleeps.
"""

from __future__ import annotations

import pytest

from archaudit.core.correlator import Correlator, EventKey, Involved, Observed, TokenBucket

DEPLOY = Involved("apps/v1", "Deployment", "shop", "web", "uid-1")


def key(message: str = "image a:1 provides linux/amd64 only", involved: Involved = DEPLOY) -> EventKey:
    return EventKey(involved, "ImageArchMismatch", message, "archaudit.io/webhook")


def created(c: Correlator, k: EventKey, now: float, name: str = "ev") -> None:
    assert c.observe(k, now) is Observed.CREATE
    c.created(k, name, 1)


def test_first_sight_creates_and_repeats_aggregate() -> None:
    c = Correlator()
    created(c, key(), 0.0)
    assert [c.observe(key(), t) for t in (0.1, 1.0, 2.0)] == [Observed.AGGREGATED] * 3
    assert c.pending() == 3


@pytest.mark.parametrize(
    "other",
    [
        key(message="image b:1 provides linux/amd64 only"),
        key(involved=Involved("apps/v1", "Deployment", "shop", "api", "uid-2")),
        key(involved=Involved("apps/v1", "Deployment", "other-ns", "web", "uid-1")),
        EventKey(DEPLOY, "OtherReason", key().message, "archaudit.io/webhook"),
        EventKey(DEPLOY, "ImageArchMismatch", key().message, "archaudit.io/auditor"),
    ],
)
def test_every_part_of_the_key_makes_its_own_event(other: EventKey) -> None:
    c = Correlator()
    created(c, key(), 0.0)
    assert c.observe(other, 0.5) is Observed.CREATE


def test_a_repeat_after_the_window_creates_a_new_event() -> None:
    c = Correlator(window=600.0)
    created(c, key(), 0.0)
    assert c.observe(key(), 600.0) is Observed.AGGREGATED  # the window runs from the last sight
    assert c.observe(key(), 1200.0) is Observed.AGGREGATED
    assert c.observe(key(), 1800.5) is Observed.CREATE


def test_repeats_before_the_create_finished_are_carried_by_the_next_update() -> None:
    c = Correlator(flush_interval=5.0)
    assert c.observe(key(), 0.0) is Observed.CREATE
    assert c.observe(key(), 0.1, count=4) is Observed.AGGREGATED
    assert list(c.due(10.0)) == []  # nothing to patch before the Event exists
    c.created(key(), "ev", 1)
    [update] = c.due(10.0)
    assert (update.name, update.count, update.first_seen, update.last_seen) == ("ev", 5, 0.0, 0.1)


def test_counts_are_written_at_most_once_per_flush_interval() -> None:
    c = Correlator(flush_interval=5.0)
    created(c, key(), 0.0)
    writes = []
    for tick in range(200):  # 20 s of one occurrence per 100 ms, `due` asked at every one
        now = tick / 10
        c.observe(key(), now)
        for update in c.due(now):
            writes.append((now, update.count))
            c.sent(update.key, update.count)
    assert [t for t, _ in writes] == [5.0, 10.0, 15.0]
    assert [n for _, n in writes] == [52, 102, 152]  # the create, then ticks 0..50, 0..100, 0..150
    assert c.next_due(19.9) == pytest.approx(0.1)


def test_next_due_is_none_when_every_count_is_written() -> None:
    c = Correlator(flush_interval=5.0)
    created(c, key(), 0.0)
    assert c.next_due(1.0) is None
    c.observe(key(), 1.0)
    assert c.next_due(1.0) == 4.0


def test_the_bucket_limits_creates_per_object_and_refills() -> None:
    c = Correlator(burst=3, refill_seconds=60.0)
    results = [c.observe(key(f"problem {i}"), 0.0) for i in range(5)]
    assert results == [Observed.CREATE] * 3 + [Observed.DROPPED] * 2
    other = Involved("apps/v1", "Deployment", "shop", "api", "uid-2")
    assert c.observe(key("problem 9", other), 0.0) is Observed.CREATE  # a bucket per object
    assert c.observe(key("problem 3"), 59.0) is Observed.DROPPED
    assert c.observe(key("problem 3"), 60.0) is Observed.CREATE


def test_patches_take_tokens_too() -> None:
    c = Correlator(burst=2, refill_seconds=100.0, flush_interval=1.0)
    created(c, key(), 0.0)  # token 1
    c.observe(key(), 1.0)
    [update] = c.due(1.0)  # token 2
    c.sent(update.key, update.count)
    c.observe(key(), 2.0)
    assert list(c.due(2.0)) == []  # no token: the count waits, it is not lost
    assert c.pending() == 1
    [update] = c.due(100.0)
    assert update.count == 3


def test_a_forgotten_key_starts_afresh() -> None:
    c = Correlator()
    created(c, key(), 0.0)
    c.forget(key())
    assert c.observe(key(), 1.0) is Observed.CREATE


def test_memory_is_bounded_least_recently_seen_first() -> None:
    c = Correlator(max_keys=3, burst=100)
    for i in range(3):
        created(c, key(f"p{i}"), float(i))
    c.observe(key("p0"), 3.0)  # p0 seen again: p1 is now the oldest
    created(c, key("p3"), 4.0)
    assert len(c) == 3
    assert c.observe(key("p0"), 5.0) is Observed.AGGREGATED
    assert c.observe(key("p1"), 5.0) is Observed.CREATE


def test_token_bucket_never_exceeds_its_burst() -> None:
    bucket = TokenBucket(burst=2, refill_seconds=1.0, now=0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(1000.5) is False
    assert bucket.take(1001.0) is True
    assert not bucket.full(1001.0)
    assert bucket.full(1003.0)


@pytest.mark.parametrize("bad", [{"window": 0}, {"burst": 0}, {"flush_interval": -1}, {"max_keys": 0}])
def test_nonsense_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="> 0"):
        Correlator(**bad)  # type: ignore[arg-type]
