"""The tag that fixes a blocking image: semver order, candidates, and the bounded search."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archaudit.core import tags
from archaudit.core.tags import Search, candidates, parse_version, plan

REPO_TAGS = ["1.0", "1.1", "1.2", "2.0.0-rc.1", "latest"]


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0", "1.1"),
        ("1.9", "1.10"),  # numbers, not strings
        ("1.2.0-rc.1", "1.2.0"),  # a release after its pre-releases
        ("1.2.0-rc.2", "1.2.0-rc.10"),
        ("1.2.0-alpha", "1.2.0-beta"),
        ("v1.2", "1.3"),
        ("1.2", "1.2.1"),
    ],
)
def test_semver_order(older: str, newer: str) -> None:
    a, b = parse_version(older), parse_version(newer)
    assert a is not None
    assert b is not None
    assert a < b


@pytest.mark.parametrize("tag", ["latest", "main", "stable", "3f2a9c1", "20240101", "sha-1234"])
def test_non_versions(tag: str) -> None:
    assert parse_version(tag) is None


def test_candidates_nearest_first_releases_only_for_a_release() -> None:
    assert candidates("1.0", REPO_TAGS) == ["1.1", "1.2"]
    assert candidates("1.1", REPO_TAGS) == ["1.2"]
    assert candidates("1.2", REPO_TAGS) == []


def test_candidates_include_prereleases_only_from_a_prerelease() -> None:
    assert candidates("2.0.0-rc.0", [*REPO_TAGS, "2.0.0"]) == ["2.0.0-rc.1", "2.0.0"]


def test_candidates_keep_the_flavour() -> None:
    found = candidates("1.0-alpine", ["1.1", "1.1-alpine", "1.2-slim", "1.3-alpine"])
    assert found == ["1.1-alpine", "1.3-alpine"]


def test_more_specific_tag_first_at_equal_versions() -> None:
    assert candidates("1.0", ["1.1", "1.1.0"]) == ["1.1.0", "1.1"]


def run(search: Search, providing: Collection[str]) -> tuple[str | None, list[str]]:
    probed = []
    while (tag := search.next()) is not None:
        probed.append(tag)
        search.record(tag, tag in providing)
    return search.answer, probed


def test_binary_search_finds_the_nearest_providing_tag() -> None:
    answer, probed = run(plan("1.0", None, REPO_TAGS, budget=4), {"1.2", "2.0.0-rc.1"})
    assert answer == "1.2"
    assert len(probed) <= 2


def test_no_fixing_tag_gives_none() -> None:
    answer, probed = run(plan("1.0", None, REPO_TAGS, budget=4), set())
    assert answer is None
    assert probed  # it did look


def test_digest_alone_is_not_searched() -> None:
    answer, probed = run(plan(None, "sha256:" + "0" * 64, REPO_TAGS, budget=4), {"1.2"})
    assert (answer, probed) == (None, [])


def test_latest_tries_the_newest_releases_first() -> None:
    answer, probed = run(plan("latest", None, REPO_TAGS, budget=4), {"1.1", "1.2"})
    assert answer == "1.2"
    assert probed == ["1.2"]  # never the pre-release


def test_budget_caps_the_resolutions() -> None:
    many = [f"1.{i}" for i in range(1000)]
    answer, probed = run(plan("1.0", None, many, budget=3), {f"1.{i}" for i in range(700, 1000)})
    assert len(probed) == 3
    assert answer in {f"1.{i}" for i in range(700, 1000)}  # a tag seen to provide


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=320))
def test_binary_search_is_exact_on_monotonic_support(n: int, first: int) -> None:
    ordered: Sequence[str] = [f"2.{i}" for i in range(1, n + 1)]
    providing = set(ordered[first:])
    answer, probed = run(Search(ordered, binary=True, budget=12), providing)
    assert answer == (ordered[first] if first < n else None)
    assert len(probed) <= 10  # log2(300) + 1


def test_all_exported() -> None:
    assert set(tags.__all__) <= set(dir(tags))
