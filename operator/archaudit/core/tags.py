"""Which tag of a repository would fix a blocking image: semver ordering and a bounded search.

A workload that cannot move to arm64 because `acme/api:1.0` is amd64-only is often one upgrade away
from moving: the project added arm64 in 1.2. Finding that tag costs registry requests (a tag list, then
one resolution per tag looked at), so the search here is planned to be small:

- candidates are the tags *newer* than the current one in semver order, of the same flavour (`-alpine`
  stays `-alpine`); pre-releases only when the current tag is one; non-version tags (`latest`, `main`,
  commit hashes) are never suggested;
- projects add platforms and keep them, so "provides the platform" is taken as monotonic over versions
  and the nearest newer tag is found by binary search: ~log2(n) resolutions, capped by a budget. The
  answer is always a tag that was resolved and does provide the platform; with the budget spent before
  the search converged it is the nearest such tag seen;
- an image by digest alone has no place in the order: no suggestion. `latest` (or any non-version tag)
  is not ordered either; for it the newest releases are tried, newest first, and the first that provides
  the platform is suggested (pin a version that runs there).

It contains no I/O code whatsoever.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Search", "Version", "candidates", "newest_releases", "parse_version", "plan"]

# v1, 1.2, 1.2.3, 1.2.3.4, then a pre-release or a flavour, then build metadata (ignored for order).
_VERSION = re.compile(r"^v?(\d+(?:\.\d+){0,3})(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_PRE = re.compile(r"^(?:alpha|beta|rc|pre|preview|dev|a|b)(?:[.-]?\d+)*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Version:
    """A tag read as a version: ordered by numbers, a release after its pre-releases."""

    numbers: tuple[int, ...]
    release: bool  # False for a pre-release: 1.2.0-rc.1 < 1.2.0
    pre: tuple[tuple[int, int | str], ...]  # semver's dot-separated identifiers, numbers before words
    flavour: str = field(compare=False)  # "alpine" of 1.2-alpine; "" for none
    shape: int = field(compare=False)  # how many numbers were written (1.2 is 2)

    @property
    def prerelease(self) -> bool:
        return not self.release


def parse_version(tag: str) -> Version | None:
    """`1.27.3`, `v2.0.0-rc.1`, `1.2-alpine`; None for `latest`, `main`, a commit hash."""
    match = _VERSION.match(tag)
    if match is None:
        return None
    numbers = tuple(int(n) for n in match.group(1).split("."))
    if len(numbers) == 1 and len(match.group(1)) >= 7:
        return None  # a date or a build number (20240101), not a version people pin
    numbers = numbers + (0,) * (4 - len(numbers))
    suffix = match.group(2) or ""
    if suffix and _PRE.match(suffix.split("-", 1)[0]):
        head, _, flavour = suffix.partition("-")
        pre = tuple(_identifier(part) for part in head.split("."))
        return Version(numbers, False, pre, flavour, len(match.group(1).split(".")))
    return Version(numbers, True, (), suffix, len(match.group(1).split(".")))


def _identifier(part: str) -> tuple[int, int | str]:
    # semver §11: numeric identifiers sort numerically and before alphanumeric ones
    return (0, int(part)) if part.isdigit() else (1, part)


def candidates(current: str, tags: Iterable[str]) -> list[str]:
    """Tags newer than `current`, nearest first, that could replace it (see the module docstring).

    Same flavour; releases, plus pre-releases when `current` is one. Among tags of one version, the
    more specific (1.2.0 before 1.2) comes first: it names what was checked.
    """
    mine = parse_version(current)
    if mine is None:
        return []
    found: list[tuple[Version, str]] = []
    for tag in dict.fromkeys(tags):
        v = parse_version(tag)
        if v is None or tag == current or v.flavour != mine.flavour:
            continue
        if v.prerelease and not mine.prerelease:
            continue
        if v > mine:
            found.append((v, tag))
    found.sort(key=lambda vt: (vt[0], -vt[0].shape, vt[1]))
    return [tag for _v, tag in found]


def newest_releases(tags: Iterable[str]) -> list[str]:
    """Release tags without a flavour, newest first: what to try for `latest`."""
    found = [(v, t) for t in dict.fromkeys(tags) if (v := parse_version(t)) and v.release and not v.flavour]
    found.sort(key=lambda vt: (vt[0], vt[0].shape, vt[1]), reverse=True)
    return [t for _v, t in found]


@dataclass
class Search:
    """Probe tags, learn whether each provides the platform, and end with the tag to suggest.

    `binary`: `tags` are ordered nearest first and support is monotonic (binary search for the first
    that provides); otherwise they are tried in order and the first that provides wins.
    """

    tags: Sequence[str]
    binary: bool
    budget: int  # resolutions this search may cost
    _lo: int = 0
    _hi: int = -1  # lowest index known to provide; len(tags) while none is
    _next_linear: int = 0
    _answer: str | None = None
    _done: bool = False

    def __post_init__(self) -> None:
        self._hi = len(self.tags)

    def next(self) -> str | None:
        """The next tag to resolve, or None when the search is over."""
        if self._done or self.budget <= 0:
            return None
        if self.binary:
            if self._lo >= self._hi:
                return None
            return self.tags[(self._lo + self._hi) // 2]
        if self._next_linear >= len(self.tags):
            return None
        return self.tags[self._next_linear]

    def record(self, tag: str, provides: bool) -> None:
        """What resolving `tag` (the one `next` named) showed; a failed resolution counts as no."""
        self.budget -= 1
        if self.binary:
            mid = (self._lo + self._hi) // 2
            if provides:
                self._hi = mid
                self._answer = tag
            else:
                self._lo = mid + 1
            return
        self._next_linear += 1
        if provides:
            self._answer = tag
            self._done = True

    @property
    def answer(self) -> str | None:
        """The tag to suggest (resolved, provides the platform), or None."""
        return self._answer


def plan(tag: str | None, digest: str | None, tags: Iterable[str], *, budget: int) -> Search:
    """The search for a replacement of an image written with `tag` (and maybe `digest`)."""
    if not tag:
        return Search((), binary=True, budget=0)  # by digest alone: no place in any order
    if parse_version(tag) is not None:
        return Search(candidates(tag, tags), binary=True, budget=budget)
    return Search(newest_releases(tags), binary=False, budget=budget)
