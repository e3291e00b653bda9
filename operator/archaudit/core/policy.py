"""The verdict on a pod's images against the nodes it may use, and the words that explain it.

One function serves the webhook and the auditor: given every image's resolution and the candidate nodes,
`evaluate` says whether all images run together on the candidates (a pod runs on ONE node, so every
image must run on a common node), and `decide` applies the namespace's mode as Pod Security Admission
does: Pods are denied in enforce mode, workloads only warned, because a warning on a Deployment is
useful while a denial of it would block unrelated rollouts.

Verdicts:
- Compatible: every candidate node runs every image;
- AtRisk: some candidates run every image, but others do not (or only if their containerd 2.x pulls
  locally, `Fit.AT_RISK`): a warning naming the fix when a nodeSelector on kubernetes.io/arch would do;
- Incompatible: no candidate runs every resolved image. An image that is resolved and runs on no
  candidate makes the pod Incompatible whatever the other images are: no registry answer can save it;
- Unknown: an image could not be resolved (and nothing resolved proves incompatibility), or no node
  matches the pod's scheduling constraints.

Messages are exact and deterministic (platforms sorted), short, and follow Kubernetes' guidance for
warnings (no "Warning:" prefix, one problem each). Pure: no I/O.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from archaudit.core.errors import InvalidReference, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.platforms import LABEL_ARCH, Fit, Platform
from archaudit.core.reference import parse as parse_reference
from archaudit.core.scheduling import Node

__all__ = [
    "Decision",
    "Evaluation",
    "ImageCheck",
    "ImageResult",
    "Mode",
    "Verdict",
    "decide",
    "evaluate",
]

# (container name, image reference as written, what the resolver made of it)
ImageResult = tuple[str, str, ImagePlatforms | ResolutionError]


class Mode(enum.StrEnum):
    ENFORCE = "enforce"  # deny Pods that cannot run; warn on workloads
    WARN = "warn"  # admit with warnings
    AUDIT = "audit"  # admit silently; the verdict is only recorded (metrics, ImageAudits)
    OFF = "off"  # do nothing


class Verdict(enum.StrEnum):
    COMPATIBLE = "Compatible"
    INCOMPATIBLE = "Incompatible"
    AT_RISK = "AtRisk"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ImageCheck:
    """One container image against the candidate nodes."""

    container: str
    image: str  # the reference text as written in the pod
    provides: tuple[Platform, ...]  # empty when unresolved (or when nothing declares a platform)
    digest: str | None  # of the top-level document; None when unresolved
    unresolved: ResolutionError | None
    fits: Mapping[str, Fit] = field(default_factory=dict, hash=False)  # node name -> Fit
    pulls: Mapping[str, str | None] = field(default_factory=dict, hash=False)  # node name -> manifest pulled

    def fit_on(self, node: Node) -> Fit | None:
        """How this image fits `node`; None when unresolved (or `node` was not a candidate)."""
        return self.fits.get(node.name)


@dataclass(frozen=True)
class Evaluation:
    """The verdict and its words, before the mode is applied (what the auditor records)."""

    verdict: Verdict
    message: str
    warnings: tuple[str, ...]  # one per problem, each self-contained; () when Compatible
    images: tuple[ImageCheck, ...]
    usable_nodes: tuple[str, ...]  # candidates on which every image RUNS (none while one is unresolved)
    fix: str | None
    candidates: tuple[str, ...]


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


def evaluate(images: Sequence[ImageResult], nodes: Sequence[Node], *, is_pod: bool = True) -> Evaluation:
    """Check every image on every candidate node and give the verdict, with no mode applied.

    `is_pod` only changes the words ("this pod" or "its pods").
    """
    checks = tuple(_check(container, image, result, nodes) for container, image, result in images)
    words = _Words(is_pod)
    names = tuple(n.name for n in nodes)
    if not nodes:
        message = f"no node matches {words.possessive} scheduling constraints"
        return Evaluation(Verdict.UNKNOWN, message, (message,), checks, (), None, names)
    resolved = [c for c in checks if c.unresolved is None]
    unresolved = [c for c in checks if c.unresolved is not None]
    usable = () if unresolved else tuple(sorted(n.name for n in nodes if _all_fit(resolved, n, {Fit.RUNS})))
    possible = [n for n in nodes if _all_fit(resolved, n, {Fit.RUNS, Fit.AT_RISK})]
    if not possible:
        verdict = Verdict.INCOMPATIBLE
    elif unresolved:
        verdict = Verdict.UNKNOWN
    elif len(usable) == len(nodes):
        verdict = Verdict.COMPATIBLE
    else:
        verdict = Verdict.AT_RISK
    if verdict is Verdict.COMPATIBLE:
        message = f"all images run on every node {words.subject} can use ({_platforms(nodes)})"
        return Evaluation(verdict, message, (), checks, usable, None, names)
    fix = _fix(nodes, set(usable)) if verdict is Verdict.AT_RISK else None
    message, warnings = _explain(
        checks, nodes, words, fix, common_node_missing=_no_common_node(checks, nodes)
    )
    return Evaluation(verdict, message, warnings, checks, usable, fix, names)


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
    ev = evaluate(images, candidates, is_pod=is_pod)
    denied = mode is Mode.ENFORCE and is_pod and _deniable(ev, deny_unresolved=deny_unresolved)
    message, warnings = ev.message, ev.warnings
    if mode is Mode.OFF:
        message, warnings = "", ()
    elif mode is Mode.AUDIT or denied:
        warnings = ()
    elif mode is Mode.ENFORCE and not is_pod and ev.verdict is Verdict.INCOMPATIBLE:
        warnings = (*warnings, "its pods will be denied: archaudit enforces in this namespace")
    return Decision(ev.verdict, not denied, message, warnings, ev.images, ev.usable_nodes, ev.fix)


def _deniable(ev: Evaluation, *, deny_unresolved: bool) -> bool:
    if ev.verdict is Verdict.INCOMPATIBLE:
        return True
    unresolved = any(c.unresolved is not None for c in ev.images)
    return ev.verdict is Verdict.UNKNOWN and deny_unresolved and unresolved and bool(ev.candidates)


# --- the checks -------------------------------------------------------------------------------------


def _check(
    container: str, image: str, result: ImagePlatforms | ResolutionError, nodes: Sequence[Node]
) -> ImageCheck:
    if isinstance(result, ResolutionError):
        return ImageCheck(container, image, (), None, result)
    fits: dict[str, Fit] = {}
    pulls: dict[str, str | None] = {}
    # Clusters have many nodes but few kinds of node: judge each (platform, runtime profiles) once.
    seen: dict[tuple[Platform, tuple[str, ...]], tuple[Fit, str | None]] = {}
    for node in nodes:
        kind = (node.platform, node.profiles)
        answer = seen.get(kind)
        if answer is None:
            answer = seen[kind] = result.runnable(node.platform, node.profiles)
        fits[node.name], pulls[node.name] = answer
    return ImageCheck(container, image, result.platforms, result.digest, None, fits, pulls)


def _all_fit(checks: Sequence[ImageCheck], node: Node, accepted: set[Fit]) -> bool:
    return all(c.fits.get(node.name) in accepted for c in checks)


def _no_common_node(checks: Sequence[ImageCheck], nodes: Sequence[Node]) -> bool:
    """Every resolved image runs somewhere, but no candidate runs them all."""
    resolved = [c for c in checks if c.unresolved is None]
    somewhere = all(any(c.fits[n.name] is not Fit.NO for n in nodes) for c in resolved)
    together = any(_all_fit(resolved, n, {Fit.RUNS, Fit.AT_RISK}) for n in nodes)
    return bool(resolved) and somewhere and not together


def _fix(nodes: Sequence[Node], usable: set[str]) -> str | None:
    """A nodeSelector on kubernetes.io/arch that leaves only usable candidates, if one exists.

    An architecture qualifies when every candidate labelled with it is usable; linux/arm/v6 and
    linux/arm/v7 nodes share `arm`, so such a mix gets no suggestion.
    """
    by_arch: dict[str, list[Node]] = {}
    for node in nodes:
        arch = node.labels.get(LABEL_ARCH)
        if arch:
            by_arch.setdefault(arch, []).append(node)
    good = sorted(arch for arch, group in by_arch.items() if all(n.name in usable for n in group))
    if not good:
        return None
    if len(good) == 1:
        return f"add nodeSelector {LABEL_ARCH}={good[0]}"
    return f"require node affinity {LABEL_ARCH} In ({', '.join(good)})"


# --- the words --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Words:
    is_pod: bool

    @property
    def subject(self) -> str:
        return "this pod" if self.is_pod else "its pods"

    @property
    def possessive(self) -> str:
        return "this pod's" if self.is_pod else "the pod template's"


def _explain(
    checks: Sequence[ImageCheck],
    nodes: Sequence[Node],
    words: _Words,
    fix: str | None,
    *,
    common_node_missing: bool,
) -> tuple[str, tuple[str, ...]]:
    """(message, warnings) naming each image that does not run on every candidate, then the unresolved."""
    context = f"nodes {words.subject} can use are {_platforms(nodes)}"
    # clause -> whether it needs the candidates' platforms beside it; dict: an image used twice, told once
    placed: dict[str, bool] = {}
    for check in checks:
        clause = _resolved_clause(check, nodes) if check.unresolved is None else None
        if clause is not None:
            placed.setdefault(*clause)
    unresolved = dict.fromkeys(
        _unresolved_clause(c, c.unresolved) for c in checks if c.unresolved is not None
    )
    parts = [*placed, *([context] if any(placed.values()) else []), *unresolved]
    if fix:
        parts.append(f"fix: {fix}")
    message = "; ".join(parts)
    if common_node_missing:
        message = f"no node {words.subject} can use runs all of its images: {message}"
        return message, (message,)
    suffix = f"; fix: {fix}" if fix else ""
    warnings = [f"{c}; {context}{suffix}" if needs else f"{c}{suffix}" for c, needs in placed.items()]
    return message, (*warnings, *unresolved)


def _resolved_clause(check: ImageCheck, nodes: Sequence[Node]) -> tuple[str, bool] | None:
    """(clause, needs context) for an image that does not run on every candidate, else None."""
    cannot = [n for n in nodes if check.fits[n.name] is Fit.NO]
    unsure = [n for n in nodes if check.fits[n.name] is Fit.AT_RISK]
    if not cannot and not unsure:
        return None
    clause = f"image {check.image} provides {_provides(check.provides)}"
    if unsure:
        clause += f"; {_platforms(unsure)} nodes run it only if their containerd pulls locally"
    return clause, bool(cannot)


def _unresolved_clause(check: ImageCheck, error: ResolutionError) -> str:
    return f"image {check.image} could not be checked ({error.reason.value}): {_detail(check.image, error)}"


def _detail(image: str, error: ResolutionError) -> str:
    # Resolver messages often start with the image already; say it once.
    for prefix in (f"image {image}: ", f"image {image!r}: "):
        if error.message.startswith(prefix):
            return error.message[len(prefix) :]
    return error.message


def _provides(platforms: Sequence[Platform]) -> str:
    names = sorted({str(p) for p in platforms})
    if not names:
        return "no platform"
    return f"{', '.join(names)} only"


def _platforms(nodes: Sequence[Node]) -> str:
    return ", ".join(sorted({str(n.platform) for n in nodes}))


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
