"""The Event emitter's hot path (adapters/events.py): what a review costs and what it may lose.

Only the synchronous side is exercised here; no worker runs, so nothing reaches an API. The writes
themselves are tested against the real apiserver (tests/e2e/test_events.py).
"""

from __future__ import annotations

from typing import Any

import kubernetes

from archaudit.adapters.events import EventEmitter, immediate_subject
from archaudit.adapters.kube import KubeApi


def emitter(queue_size: int = 1024) -> EventEmitter:
    # An ApiClient that is never called: the hot path does no I/O (no worker is started).
    return EventEmitter(KubeApi(kubernetes.client.ApiClient()), queue_size=queue_size)


def pod(name: str = "", owner: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"namespace": "shop", **meta}
    if name:
        metadata["name"] = name
    if owner:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}


RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9f", "uid": "u-rs", "controller": True}


def test_a_controller_made_pod_names_its_controller() -> None:
    subject = immediate_subject(pod(generateName="web-5d9f-", owner=RS))
    assert subject == ("ReplicaSet", "shop", "web-5d9f", "u-rs", "apps/v1")


def test_an_owner_that_is_not_the_controller_is_not_the_subject() -> None:
    not_controller = {**RS, "controller": False}
    assert immediate_subject(pod("solo", not_controller)) == ("Pod", "shop", "solo", "", "v1")


def test_a_pod_without_a_name_or_controller_has_no_subject() -> None:
    assert immediate_subject(pod(generateName="adhoc-")) is None


def test_repeats_of_a_queued_problem_are_counted_on_one_entry() -> None:
    e = emitter()
    for i in range(500):  # 500 pods of one ReplicaSet, the same warning
        e.about_object(pod(generateName="web-5d9f-", owner=RS, uid=f"pod-{i}"), ("image a: amd64 only",))
    assert e.queued() == 1
    assert [w.count for w in e._waiting.values()] == [500]


def test_a_different_message_or_object_is_a_different_problem() -> None:
    e = emitter()
    e.about_object(pod("a"), ("image a: amd64 only",))
    e.about_object(pod("a"), ("image b: amd64 only",))
    e.about_object(pod("b"), ("image a: amd64 only",))
    assert e.queued() == 3


def test_a_full_queue_drops_and_counts_new_problems_but_still_counts_queued_ones() -> None:
    e = emitter(queue_size=2)
    for name in ("a", "b", "c", "d"):
        e.about_object(pod(name), ("w",))
    e.about_object(pod("a"), ("w",))  # already queued: counted, not dropped
    assert e.queued() == 2
    assert e.stats["dropped"] == 2
    assert sorted(w.count for w in e._waiting.values()) == [1, 2]


def test_an_unnamed_pod_is_dropped_not_attached_to_a_name_that_will_not_exist() -> None:
    e = emitter()
    e.about_object(pod(generateName="adhoc-"), ("w",))
    assert e.queued() == 0
    assert e.stats["dropped"] == 1


def test_a_malformed_object_never_raises_into_the_review() -> None:
    e = emitter()
    e.about_object({"metadata": {"ownerReferences": ["not a mapping"]}}, ("w",))
    assert e.queued() == 0
