"""Admission warnings within the apiserver's limits (core/warnings.py)."""

from __future__ import annotations

from archaudit.core.warnings import ITEM_RUNES, TOTAL_RUNES, clip, fit


def test_warnings_that_fit_are_unchanged() -> None:
    warnings = ("image a provides linux/amd64 only", "image b could not be resolved")
    assert fit(warnings) == warnings


def test_two_thousand_unresolved_images_fit_with_a_count_of_the_rest() -> None:
    first = "image ghcr.io/acme/api:1.2 provides linux/amd64 only; nodes the pod can use are linux/arm64"
    unresolved = [f"image registry.example/app{i}:1 could not be resolved: not-found" for i in range(2000)]
    out = fit([first, *unresolved])
    assert out[0] == first  # the most important stays first, whole
    assert sum(map(len, out)) <= TOTAL_RUNES
    assert all(len(w) <= ITEM_RUNES for w in out)
    shown = len(out) - 2
    assert out[-1].startswith(f"... and {2000 - shown:,} more warnings")
    assert list(out[1:-1]) == unresolved[:shown]


def test_long_items_are_clipped_in_runes_not_bytes() -> None:
    long = "é" * 1000  # 2 bytes each in UTF-8: a byte count would clip at 128
    [out] = fit([long])
    assert len(out) == ITEM_RUNES
    assert out.endswith("...")
    assert out.startswith("é" * 200)


def test_many_short_items_under_the_total_are_kept() -> None:
    warnings = [f"w{i}" for i in range(100)]  # 17 x 256 would exceed the total; their real length does not
    assert fit(warnings) == tuple(warnings)


def test_one_item_over_the_total_budget_is_counted_not_lost() -> None:
    out = fit(["x" * 200] * 30)
    assert sum(map(len, out)) <= TOTAL_RUNES
    assert out[-1].startswith(f"... and {30 - (len(out) - 1)} more warnings")


def test_clip() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcdef", 5) == "ab..."
