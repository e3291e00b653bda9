"""The one decision engine: can these images run on the nodes this pod (or template) may use?

Every caller asks it: the validating webhook (a pod or a workload's template at admission), the auditor
(a running pod: where it landed and where else it may land; a pending pod; the template of a workload
without pods), and whatever comes after (placement, CI checks, readiness). None keeps verdict rules of
its own, so changing what "AtRisk" means is one edit here. It contains no I/O code whatsoever.

`judge(images, candidates, landed=..., evidence=...)` answers for ONE pod: a pod runs on one node, so
every image must run on a common node. Verdicts:
- Compatible: every node the pod may use runs every image;
- AtRisk: some of those nodes run every image, others do not (or only if their containerd 2.x pulls
  locally, `Fit.AT_RISK`); the fix names a `kubernetes.io/arch` nodeSelector when one would do;
- Incompatible: no node the pod may use runs all its resolved images, the pod runs on a node that
  cannot run one of them, or the runtime said so (`evidence`: exec format error, no match for
  platform). An image that is resolved and runs nowhere makes the pod Incompatible whatever the other
  images are: no registry answer can save it;
- Unknown: an image could not be resolved (and nothing resolved proves incompatibility), or no node
  matches the pod's scheduling constraints.

Per image, `ImageCheck.verdict` and `.reason` say the same about that image alone; `worst` orders
verdicts the way reports list problems. Messages are exact and deterministic (platforms sorted), short,
and follow Kubernetes' guidance for warnings (no "Warning:" prefix, one problem each).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from archaudit.core.errors import ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.platforms import LABEL_ARCH, Fit, Platform
from archaudit.core.scheduling import Node

__all__ = [
    "ImageCheck",
    "ImageResult",
    "Judgement",
    "Reason",
    "Verdict",
    "fix",
    "judge",
    "plural",
    "worst",
]

# (container name, image reference as written, what the resolver made of it)
ImageResult = tuple[str, str, ImagePlatforms | ResolutionError]


class Verdict(enum.StrEnum):
    """The CRD's `.status.verdict` enum and the webhook's answer."""

    COMPATIBLE = "Compatible"
    INCOMPATIBLE = "Incompatible"
    AT_RISK = "AtRisk"
    UNKNOWN = "Unknown"


# Worst first: the order in which problems are told and containers listed.
SEVERITY: Mapping[Verdict, int] = {
    Verdict.INCOMPATIBLE: 0,
    Verdict.UNKNOWN: 1,
    Verdict.AT_RISK: 2,
    Verdict.COMPATIBLE: 3,
}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of `verdicts` (Compatible when there are none)."""
    return min(verdicts, key=SEVERITY.__getitem__, default=Verdict.COMPATIBLE)


class Reason(enum.StrEnum):
    """Why one image got its verdict (a report's `containers[].reason`; unresolved images carry the
    resolver's reason instead)."""

    RUNTIME_MISMATCH = "runtime-mismatch"  # the runtime said so
    NO_MATCHING_PLATFORM = "no-matching-platform"  # runs on no node the pod may use, or not where it runs
    NOT_ON_ALL_CANDIDATES = "not-on-all-candidates"
    DEPENDS_ON_PULL_MODE = "depends-on-pull-mode"
    NO_CANDIDATE_NODES = "no-candidate-nodes"


@dataclass(frozen=True)
class ImageCheck:
    """One container image against the nodes a pod may use (and the one it runs on)."""

    container: str
    image: str  # the reference text as written in the pod
    provides: tuple[Platform, ...]  # empty when unresolved (or when nothing declares a platform)
    digest: str | None  # of the top-level document; None when unresolved
    unresolved: ResolutionError | None
    fits: Mapping[str, Fit] = field(default_factory=dict, hash=False)  # node name -> Fit
    pulls: Mapping[str, str | None] = field(default_factory=dict, hash=False)  # node name -> manifest pulled
    verdict: Verdict = Verdict.COMPATIBLE  # of this image alone
    reason: str = ""  # a `Reason` value, the resolver's reason when unresolved; "" when Compatible
    result: ImagePlatforms | None = field(default=None, hash=False, compare=False)

    def fit_on(self, node: Node) -> Fit | None:
        """How this image fits `node`; None when unresolved (or `node` was not judged)."""
        return self.fits.get(node.name)


@dataclass(frozen=True)
class Judgement:
    """The verdict on one pod (or template) and its words, before any mode is applied."""

    verdict: Verdict
    message: str
    warnings: tuple[str, ...]  # one per problem, each self-contained; () when Compatible
    images: tuple[ImageCheck, ...]
    usable_nodes: tuple[str, ...]  # judged nodes on which every image RUNS (none while one is unresolved)
    fix: str | None
    candidates: tuple[str, ...]  # the nodes the pod may use, by name
    landed: str | None = None  # the node it runs on, if any


def judge(
    images: Sequence[ImageResult],
    candidates: Sequence[Node],
    *,
    landed: Node | None = None,
    evidence: Collection[str] = (),
    is_pod: bool = True,
) -> Judgement:
    """Check every image on every node the pod may use (and the one it runs on) and give the verdict.

    `landed` is the node a running pod is on: it counts as a node the pod may use (it is there), and an
    image that cannot run on it makes the pod Incompatible. `evidence` names containers the runtime
    reported an exec format or platform-match error for. `is_pod` only changes the words ("this pod"
    or "its pods").
    """
    nodes = list(candidates)
    if landed is not None and all(n.name != landed.name for n in nodes):
        nodes.append(landed)
    checks = tuple(
        _check(container, image, result, nodes, landed=landed, evidence=container in evidence)
        for container, image, result in images
    )
    words = _Words(is_pod)
    names = tuple(n.name for n in candidates)
    where = landed.name if landed is not None else None
    if not nodes:
        message = f"no node matches {words.possessive} scheduling constraints"
        return Judgement(Verdict.UNKNOWN, message, (message,), checks, (), None, names, where)
    resolved = [c for c in checks if c.unresolved is None]
    unresolved = [c for c in checks if c.unresolved is not None]
    usable = () if unresolved else tuple(sorted(n.name for n in nodes if _all_fit(resolved, n, {Fit.RUNS})))
    possible = [n for n in nodes if _all_fit(resolved, n, {Fit.RUNS, Fit.AT_RISK})]
    misplaced = landed is not None and not _all_fit(resolved, landed, {Fit.RUNS, Fit.AT_RISK})
    if not possible or misplaced or any(c.verdict is Verdict.INCOMPATIBLE for c in checks):
        verdict = Verdict.INCOMPATIBLE
    elif unresolved:
        verdict = Verdict.UNKNOWN
    elif len(usable) == len(nodes):
        verdict = Verdict.COMPATIBLE
    else:
        verdict = Verdict.AT_RISK
    if verdict is Verdict.COMPATIBLE:
        message = f"all images run on every node {words.subject} can use ({_platforms(nodes)})"
        return Judgement(verdict, message, (), checks, usable, None, names, where)
    suggestion = fix(nodes, set(usable)) if verdict in (Verdict.AT_RISK, Verdict.INCOMPATIBLE) else None
    message, warnings = _explain(
        checks, nodes, words, suggestion, common_node_missing=_no_common_node(checks, nodes)
    )
    return Judgement(verdict, message, warnings, checks, usable, suggestion, names, where)


# --- the checks -------------------------------------------------------------------------------------


def _check(
    container: str,
    image: str,
    result: ImagePlatforms | ResolutionError,
    nodes: Sequence[Node],
    *,
    landed: Node | None,
    evidence: bool,
) -> ImageCheck:
    if isinstance(result, ResolutionError):
        verdict = Verdict.INCOMPATIBLE if evidence else Verdict.UNKNOWN
        reason = Reason.RUNTIME_MISMATCH.value if evidence else result.reason.value
        return ImageCheck(container, image, (), None, result, verdict=verdict, reason=reason)
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
    verdict, reason = _image_verdict(fits, landed=landed, evidence=evidence)
    return ImageCheck(
        container, image, result.platforms, result.digest, None, fits, pulls, verdict, reason, result
    )


def _image_verdict(fits: Mapping[str, Fit], *, landed: Node | None, evidence: bool) -> tuple[Verdict, str]:
    if evidence:
        return Verdict.INCOMPATIBLE, Reason.RUNTIME_MISMATCH.value
    if not fits:
        return Verdict.UNKNOWN, Reason.NO_CANDIDATE_NODES.value
    if landed is not None and fits.get(landed.name) is Fit.NO:
        return Verdict.INCOMPATIBLE, Reason.NO_MATCHING_PLATFORM.value
    values = set(fits.values())
    if values == {Fit.NO}:
        return Verdict.INCOMPATIBLE, Reason.NO_MATCHING_PLATFORM.value
    if Fit.NO in values:
        return Verdict.AT_RISK, Reason.NOT_ON_ALL_CANDIDATES.value
    if Fit.AT_RISK in values:
        return Verdict.AT_RISK, Reason.DEPENDS_ON_PULL_MODE.value
    return Verdict.COMPATIBLE, ""


def _all_fit(checks: Sequence[ImageCheck], node: Node, accepted: set[Fit]) -> bool:
    return all(c.fits.get(node.name) in accepted for c in checks)


def _no_common_node(checks: Sequence[ImageCheck], nodes: Sequence[Node]) -> bool:
    """Every resolved image runs somewhere, but no node runs them all."""
    resolved = [c for c in checks if c.unresolved is None]
    somewhere = all(any(c.fits[n.name] is not Fit.NO for n in nodes) for c in resolved)
    together = any(_all_fit(resolved, n, {Fit.RUNS, Fit.AT_RISK}) for n in nodes)
    return bool(resolved) and somewhere and not together


def fix(nodes: Iterable[Node], usable: Collection[str]) -> str | None:
    """A nodeSelector on kubernetes.io/arch that leaves only usable nodes, if one exists.

    An architecture qualifies when every node labelled with it is usable; linux/arm/v6 and
    linux/arm/v7 nodes share `arm`, so such a mix gets no suggestion.
    """
    nodes = list(nodes)
    by_arch: dict[str, list[Node]] = {}
    for node in nodes:
        arch = node.labels.get(LABEL_ARCH)
        if arch:
            by_arch.setdefault(arch, []).append(node)
    good = sorted(arch for arch, group in by_arch.items() if all(n.name in usable for n in group))
    if not good or all(n.name in usable for n in nodes):
        return None  # nothing to exclude, or no label that would
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
    suggestion: str | None,
    *,
    common_node_missing: bool,
) -> tuple[str, tuple[str, ...]]:
    """(message, warnings) naming each image that does not run on every node, then the unresolved."""
    context = f"nodes {words.subject} can use are {_platforms(nodes)}"
    # clause -> whether it needs the nodes' platforms beside it; dict: an image used twice, told once
    placed: dict[str, bool] = {}
    for check in checks:
        clause = _resolved_clause(check, nodes) if check.unresolved is None else None
        if clause is None and check.reason == Reason.RUNTIME_MISMATCH:
            clause = (f"the runtime reported that image {check.image} does not run on its node", False)
        if clause is not None:
            placed.setdefault(*clause)
    unresolved = dict.fromkeys(
        _unresolved_clause(c, c.unresolved) for c in checks if c.unresolved is not None
    )
    parts = [*placed, *([context] if any(placed.values()) else []), *unresolved]
    if suggestion:
        parts.append(f"fix: {suggestion}")
    message = "; ".join(parts)
    if common_node_missing:
        message = f"no node {words.subject} can use runs all of its images: {message}"
        return message, (message,)
    suffix = f"; fix: {suggestion}" if suggestion else ""
    warnings = [f"{c}; {context}{suffix}" if needs else f"{c}{suffix}" for c, needs in placed.items()]
    return message, (*warnings, *unresolved)


def _resolved_clause(check: ImageCheck, nodes: Sequence[Node]) -> tuple[str, bool] | None:
    """(clause, needs context) for an image that does not run on every node, else None."""
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


def plural(n: int, noun: str) -> str:
    """`1 image`, `2 images`: counts in messages read as English."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
