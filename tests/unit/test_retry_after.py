"""Retry-After as registries send it: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3)."""

from __future__ import annotations

import pytest

from archaudit.adapters.registry.client import retry_after

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),  # never a negative wait
        ("Tue, 14 Nov 2023 22:15:20 GMT", 120.0),  # IMF-fixdate, two minutes after NOW
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # obsolete RFC 850 form
        ("Tue Nov 14 22:13:50 2023", 30.0),  # obsolete asctime form, GMT by definition
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past: go now
    ],
)
def test_delay_seconds_and_http_dates(header: str, seconds: float) -> None:
    assert retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [None, "", "soon", "Tue, 99 Nov 2023 25:61:00 GMT"])
def test_absent_or_unreadable_means_use_your_own_backoff(header: str | None) -> None:
    assert retry_after(header, now=NOW) is None
