"""What admission does with the engine's verdict: the namespace's mode, exemptions, allow or deny.

The verdict comes from the one engine (`engine.judge`); `decide` applies the namespace's mode to it as
Pod Security Admission does: Pods are denied in enforce mode, workloads only warned, because a warning
on a Deployment is useful while a denial of it would block unrelated rollouts.

Pure: no I/O.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archaudit.core.engine import ImageCheck, ImageResult, Judgement, Verdict, judge
from archaudit.core.errors import InvalidReference
from archaudit.core.reference import parse as parse_reference
from archaudit.core.scheduling import Node
from archaudit.core.scheduling import candidates as candidates_of

# The engine's names, for callers that read a Decision (one definition of each, in the engine).
Evaluation = Judgement
evaluate = judge

__all__ = [
    "Decision",
    "Evaluation",
    "ImageCheck",
    "ImageResult",
    "Mode",
    "Verdict",
    "decide",
    "decide_for_spec",
    "evaluate",
]


class Mode(enum.StrEnum):
    ENFORCE = "enforce"  # deny Pods that cannot run; warn on workloads
    WARN = "warn"  # admit with warnings
    AUDIT = "audit"  # admit silently; the verdict is only recorded (metrics, ImageAudits)
    OFF = "off"  # do nothing


@dataclass(frozen=True)
class Decision:
    """The answer to one admission request."""

    verdict: Verdict
    allowed: bool  # after the mode and the object kind (Pod or workload)
    message: str  # the one human sentence: the denial message or the Event message
    warnings: tuple[str, ...]  # what the client prints; () when denied (the message says it) or silent
    images: tuple[ImageCheck, ...]
    usable_nodes: tuple[str, ...]
    fix: str | None  # e.g. "add nodeSelector kubernetes.io/arch=amd64"


def decide(
    images: Sequence[ImageResult],
    candidates: Sequence[Node],
    *,
    mode: Mode,
    is_pod: bool,
    deny_unresolved: bool = False,
) -> Decision:
    """The admission answer for `images` on `candidates` under `mode`.

    Denied only in enforce mode, only for Pods, and only when Incompatible, or Unknown because of an
    unresolved image with `deny_unresolved` (a pod that matches no node is never denied for it: it stays
    Pending, which says so already). Workloads in enforce mode are warned, and told their pods will be
    denied. Warn mode warns, audit mode records only (the message, no warnings), off says nothing.
    """
    ev = judge(images, candidates, is_pod=is_pod)
    denied = mode is Mode.ENFORCE and is_pod and _deniable(ev, deny_unresolved=deny_unresolved)
    message, warnings = ev.message, ev.warnings
    if mode is Mode.OFF:
        message, warnings = "", ()
    elif mode is Mode.AUDIT or denied:
        warnings = ()
    elif mode is Mode.ENFORCE and not is_pod and ev.verdict is Verdict.INCOMPATIBLE:
        warnings = (*warnings, "its pods will be denied: archaudit enforces in this namespace")
    return Decision(ev.verdict, not denied, message, warnings, ev.images, ev.usable_nodes, ev.fix)


def decide_for_spec(
    scheduling_spec: Mapping[str, Any],
    images: Sequence[ImageResult],
    nodes: Sequence[Node],
    *,
    mode: Mode,
    is_pod: bool,
    deny_unresolved: bool = False,
) -> tuple[Decision, tuple[Node, ...]]:
    """The admission answer for a pod spec (or template) among `nodes`, and the nodes it may use.

    What the webhook answers and what `archaudit check -f` prints: one function, so they cannot differ.
    """
    candidates = tuple(candidates_of(scheduling_spec, nodes))
    decision = decide(images, candidates, mode=mode, is_pod=is_pod, deny_unresolved=deny_unresolved)
    return decision, candidates


def _deniable(ev: Judgement, *, deny_unresolved: bool) -> bool:
    if ev.verdict is Verdict.INCOMPATIBLE:
        return True
    unresolved = any(c.unresolved is not None for c in ev.images)
    return ev.verdict is Verdict.UNKNOWN and deny_unresolved and unresolved and bool(ev.candidates)


# --- which namespaces and images are checked at all ------------------------------------------------

MODE_LABEL = "archaudit.io/mode"  # as Pod Security Admission's pod-security.kubernetes.io/enforce
IGNORE_LABEL = "archaudit.io/ignore"


def namespace_mode(
    name: str, labels: Mapping[str, str], *, default: str, exempt: Collection[str] = ()
) -> Mode | None:
    """The mode of a namespace, or None when it is exempt (listed, or labelled archaudit.io/ignore).

    An unknown label value falls back to the default: a typo must not switch enforcement off.
    """
    if name in exempt or IGNORE_LABEL in labels:
        return None
    try:
        return Mode(labels.get(MODE_LABEL, default))
    except ValueError:
        return Mode(default)


def image_exempt(image: str, patterns: Sequence[str]) -> bool:
    """Does an fnmatch pattern match the image as written or in its normalized form?"""
    if not patterns:
        return False
    try:
        normalized = str(parse_reference(image))
    except InvalidReference:
        normalized = image
    return any(fnmatch.fnmatchcase(normalized, p) or fnmatch.fnmatchcase(image, p) for p in patterns)
