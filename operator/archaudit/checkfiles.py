"""`archaudit check -f`: judge rendered manifests in CI, as the webhook would judge them at `kubectl apply`.

Kyverno, Gatekeeper and conftest check manifests before they reach a cluster, but none of them knows
what a node's runtime will pull. This module gives CI the webhook's answer: the same reading of each
object (core.manifest_objects), the same candidate nodes (core.scheduling.candidates), the same verdict
and words (core.policy.decide over core.engine.judge) and the same path to the registry
(archaudit.resolution.resolve_images, one resolver, every distinct image once and concurrently). The
cluster is either `--platform` (one node per platform, as the chart's `cluster.platforms`) or `--nodes`
(`kubectl get nodes -o yaml`: labels, taints, cordon and runtime versions count as in the cluster).

What is here is only glue: reading files, choosing nodes, and rendering text, JSON, SARIF or GitHub
workflow commands. Exit codes (DESIGN.md): 0 nothing fails, 1 something Incompatible (or what
`--fail-on` adds), 2 an input could not be read (the rest is still judged and printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archaudit import __version__
from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.resolver import Resolver
from archaudit.core import config, policy, scheduling
from archaudit.core.credentials import Credential, Keyring
from archaudit.core.engine import SEVERITY, Verdict, plural
from archaudit.core.errors import UsageError
from archaudit.core.manifest_objects import (
    Document,
    DocumentError,
    Target,
    load_documents,
    namespace_labels,
    objects_of,
    placed_objects,
    target_of,
)
from archaudit.core.mirrors import RegistriesConfig
from archaudit.core.reference import ImageReference
from archaudit.core.scheduling import Node

__all__ = ["FORMATS", "add_arguments", "check_files"]

FORMATS = ("text", "json", "sarif", "github")
FAIL_ON = ("incompatible", "at-risk", "unknown")
SKIPPED = "Skipped"  # not judged: the webhook would not look at it (mode off, ignored, all exempt)
STDIN = "-"
_SUFFIXES = (".yaml", ".yml", ".json")
_SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_RULES = {  # verdict -> (SARIF rule id, level, short description)
    Verdict.INCOMPATIBLE: ("archaudit/incompatible", "error", "No node the pods can use runs all images"),
    Verdict.AT_RISK: ("archaudit/at-risk", "warning", "Some nodes the pods can use cannot run an image"),
    Verdict.UNKNOWN: ("archaudit/unknown", "warning", "An image could not be checked, or no node matches"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the manifest form of `archaudit check` (the image form's stay in cli.py)."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        default=[],
        metavar="PATH",
        help="manifests to judge instead of IMAGE: a file, a directory (recursive: .yaml, .yml, .json) "
        "or - for stdin; multi-document YAML, List kinds and `helm template` output (repeatable)",
    )
    parser.add_argument(
        "--nodes",
        metavar="FILE",
        help="with -f: the cluster's nodes, as `kubectl get nodes -o yaml` (or json) prints them",
    )
    parser.add_argument(
        "--fail-on",
        action="append",
        default=[],
        choices=FAIL_ON,
        help="with -f: exit 1 for this verdict too (Incompatible always fails; repeatable)",
    )
    parser.add_argument(
        "--helm-source-root",
        default="",
        metavar="DIR",
        help="with -f: the directory holding the chart, so that annotations and SARIF point at "
        "DIR/<chart>/templates/... (helm's `# Source:` paths start at the chart's name)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="with -f: the namespace of objects that name none (default: default, as kubectl apply)",
    )


# --- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """An object and where it came from: `file` as read (- for stdin), `line` there, `source` for people."""

    obj: Mapping[str, Any]
    file: str
    line: int
    source: str  # helm's `# Source:` path when present, else `file`
    location: str  # what annotations and SARIF point at: `source`, under --helm-source-root for helm's

    @property
    def has_line(self) -> bool:
        """Whether `line` is a line of `location` (helm's templates have other lines than its output)."""
        return self.location == self.file != STDIN


@dataclass
class Inputs:
    objects: list[Placed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: why", one per problem


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
    return [p]


def read_inputs(paths: Sequence[str], stdin: Any = None, *, helm_root: str = "") -> Inputs:
    """Every object of every path, in order; errors are collected so the rest is still judged."""
    inputs = Inputs()
    for path in paths:
        if path == STDIN:
            text = (stdin or sys.stdin).read()
            _add(inputs, STDIN, text, as_json=False, helm_root=helm_root)
            continue
        if not Path(path).exists():
            inputs.errors.append(f"{path}: no such file or directory")
            continue
        for file in _files(path):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                inputs.errors.append(f"{file}: {getattr(e, 'strerror', None) or e}")
                continue
            _add(inputs, str(file), text, as_json=file.suffix.lower() == ".json", helm_root=helm_root)
    return inputs


def _add(inputs: Inputs, name: str, text: str, *, as_json: bool, helm_root: str) -> None:
    for doc in load_documents(text, as_json=as_json):
        if isinstance(doc, DocumentError):
            inputs.errors.append(
                f"{name}:{doc.line}: malformed {'JSON' if as_json else 'YAML'}: {doc.message}"
            )
            continue
        assert isinstance(doc, Document)
        source = doc.helm_source or name
        location = str(Path(helm_root) / source) if doc.helm_source and helm_root else source
        for obj, line in placed_objects(doc):
            inputs.objects.append(Placed(obj, name, line, source, location))


def read_nodes(path: str, settings: config.ClusterSettings, runtime: str | None) -> list[Node]:
    """The nodes of a `kubectl get nodes -o yaml|json` file, read as the operator reads them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--nodes {path}: {getattr(e, 'strerror', None) or e}") from None
    nodes: list[Node] = []
    for doc in load_documents(text, as_json=path.endswith(".json")):
        if isinstance(doc, DocumentError):
            raise UsageError(f"--nodes {path}:{doc.line}: {doc.message}")
        for obj in objects_of(doc.obj):
            if obj.get("kind") != "Node":
                continue
            try:
                nodes.append(
                    scheduling.node_from_object(
                        obj,
                        runtime_profile=runtime or settings.runtime_profile,
                        containerd_pull=settings.containerd_pull,
                    )
                )
            except ValueError as e:
                # As the operator's node map: a node it cannot read is left out, and said so.
                name = obj.get("metadata", {}).get("name")
                print(f"archaudit: warning: --nodes {path}: node {name} ignored: {e}", file=sys.stderr)
    if not nodes:
        raise UsageError(f"--nodes {path}: no Node objects")
    return nodes


# --- judging ----------------------------------------------------------------------------------------


class _Keyring:
    """The CLI's pull credentials: the docker config's, for every image (there are no pods to ask)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    async def for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return self._keyring.lookup(image)

    def peek_for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return self._keyring.lookup(image)


@dataclass(frozen=True)
class Result:
    placed: Placed
    target: Target
    verdict: str  # a Verdict, or SKIPPED
    message: str
    mode: str  # the namespace's mode; "" when the namespace is exempt
    decision: policy.Decision | None = None
    nodes: tuple[str, ...] = ()  # the candidates: what CI needs to see why a taint or cordon mattered


@dataclass(frozen=True)
class _Planned:
    """An object before its images are resolved: what the webhook would look at, or why not."""

    placed: Placed
    target: Target
    mode: policy.Mode | None
    entries: tuple[tuple[str, str, str], ...]  # the images to judge: not exempt
    skip: str | None  # why it is not judged at all


def _plan(
    targets: Sequence[tuple[Placed, Target]],
    namespaces: Mapping[str, Mapping[str, str]],
    settings: config.WebhookSettings,
) -> list[_Planned]:
    out = []
    for placed, target in targets:
        mode = policy.namespace_mode(
            target.namespace,
            namespaces.get(target.namespace, {}),
            default=settings.default_mode,
            exempt=settings.exempt_namespaces,
        )
        entries = tuple(e for e in target.images if not policy.image_exempt(e[2], settings.exempt_images))
        out.append(_Planned(placed, target, mode, entries, _skip_reason(target, mode, entries)))
    return out


def _decide_each(
    planned: Sequence[_Planned],
    resolved: Mapping[str, Any],
    nodes: Sequence[Node],
    settings: config.WebhookSettings,
) -> list[Result]:
    out = []
    for plan in planned:
        placed, target, mode = plan.placed, plan.target, plan.mode
        if plan.skip is not None:
            out.append(Result(placed, target, SKIPPED, plan.skip, mode.value if mode else ""))
            continue
        assert mode is not None
        images = [(name, image, resolved[image]) for _section, name, image in plan.entries]
        # The webhook's own function: candidates from the scheduling view, then the decision.
        decision, candidates = policy.decide_for_spec(
            target.scheduling_spec,
            images,
            nodes,
            mode=mode,
            is_pod=target.is_pod,
            deny_unresolved=settings.deny_unresolved,
        )
        # audit mode keeps the message; off was skipped above, so there is always one to show.
        names = tuple(n.name for n in candidates)
        out.append(
            Result(placed, target, decision.verdict.value, decision.message, mode.value, decision, names)
        )
    return out


def _skip_reason(target: Target, mode: policy.Mode | None, entries: Sequence[Any]) -> str | None:
    if mode is None:
        return f"not checked: namespace {target.namespace} is exempt ({policy.IGNORE_LABEL} or configured)"
    if mode is policy.Mode.OFF:
        return f"not checked: namespace {target.namespace} has {policy.MODE_LABEL}=off"
    if target.controlled:
        return "not checked: made by a controller, judged at its owner"
    if not target.images:
        return "not checked: no container names an image"
    if not entries:
        return "not checked: every image is exempt"
    return None


def _deadline(settings: config.RegistrySettings) -> float:
    # The resolver bounds each image by timeout_seconds and all run at once; the margin covers the
    # registry client's per-host queue when one registry serves many images.
    return settings.timeout_seconds * 3 + 1.0


async def check_files(
    args: argparse.Namespace,
    settings: config.Settings,
    *,
    registry_settings: config.RegistrySettings,
    registries: RegistriesConfig,
    keyring: Keyring,
    stdin: Any = None,
) -> tuple[int, str]:
    """Run `archaudit check -f`; returns (exit code, output). Input errors go to stderr, exit 2."""
    nodes = _nodes(args, settings)
    inputs = read_inputs(args.files, stdin, helm_root=args.helm_source_root)
    placed_targets: list[tuple[Placed, Target]] = []
    ignored: Counter[str] = Counter()
    for placed in inputs.objects:
        target = target_of(placed.obj, default_namespace=args.namespace)
        if target is None:
            ignored[str(placed.obj.get("kind") or "(no kind)")] += 1
        else:
            placed_targets.append((placed, target))
    namespaces = namespace_labels(p.obj for p in inputs.objects)
    planned = _plan(placed_targets, namespaces, settings.webhook)
    # Only what will be judged goes to a registry: not a namespace that is off, not an exempt image.
    images = list(
        dict.fromkeys(image for p in planned if p.skip is None for _section, _name, image in p.entries)
    )
    # Imported here: the context and metrics pull in the kubernetes client and aiohttp's server
    # (~0.7 s), which only -f needs; `archaudit check IMAGE` stays as quick to start as before.
    from archaudit.adapters.metrics import MutableState
    from archaudit.context import Context, NodeMap
    from archaudit.resolution import resolve_images

    # The operator's chain: the docker config's credentials, then the user's cloud identity.
    cloud = CloudCredentials.from_settings(registry_settings)
    resolver = Resolver.from_settings(
        registry_settings, registries=registries, insecure=args.insecure_registry
    )
    try:
        ctx = Context(
            settings=settings,
            resolver=resolver,
            nodes=NodeMap(),
            credentials=_Keyring(keyring),
            cloud=cloud,
            metrics=MutableState(),
        )
        resolved = await resolve_images(ctx, "", {}, images, _deadline(registry_settings))
    finally:
        await resolver.aclose()
        await cloud.aclose()
    results = _decide_each(planned, resolved, nodes, settings.webhook)
    for error in inputs.errors:
        print(f"archaudit: error: {error}", file=sys.stderr)
    code = _exit_code(results, set(args.fail_on), errors=bool(inputs.errors))
    summary = _summary(results, ignored, len(images), inputs.errors)
    return code, _render(args.output, results, summary)


def _nodes(args: argparse.Namespace, settings: config.Settings) -> list[Node]:
    if not args.platform and not args.nodes:
        raise UsageError("-f needs the cluster to judge against: --platform P (repeatable) or --nodes FILE")
    nodes = read_nodes(args.nodes, settings.cluster, args.runtime) if args.nodes else []
    try:
        # As the chart's cluster.platforms: nodes of these platforms, beside the real ones if any.
        nodes += scheduling.virtual_nodes(args.platform, profiles=(args.runtime or "containerd",))
    except ValueError as e:
        raise UsageError(f"--platform: {e}") from None
    return nodes


def _exit_code(results: Sequence[Result], fail_on: set[str], *, errors: bool) -> int:
    if errors:
        return 2
    failing = {Verdict.INCOMPATIBLE.value}
    if "at-risk" in fail_on:
        failing.add(Verdict.AT_RISK.value)
    if "unknown" in fail_on:
        failing.add(Verdict.UNKNOWN.value)
    return 1 if any(r.verdict in failing for r in results) else 0


def _summary(
    results: Sequence[Result], ignored: Counter[str], images: int, errors: Sequence[str]
) -> dict[str, Any]:
    verdicts = Counter(r.verdict for r in results)
    return {
        "objects": len(results),
        "verdicts": {v.value: verdicts[v.value] for v in sorted(Verdict, key=SEVERITY.__getitem__)}
        | {SKIPPED: verdicts[SKIPPED]},
        "images": images,
        "ignored": sum(ignored.values()),
        "ignoredKinds": dict(sorted(ignored.items())),
        "errors": list(errors),
    }


# --- rendering --------------------------------------------------------------------------------------


def _render(fmt: str, results: Sequence[Result], summary: Mapping[str, Any]) -> str:
    if fmt == "json":
        return json.dumps({"objects": [object_json(r) for r in results], "summary": summary}, indent=2)
    if fmt == "sarif":
        return json.dumps(sarif(results), indent=2)
    if fmt == "github":
        return github(results, summary)
    return text(results, summary)


def object_json(r: Result) -> dict[str, Any]:
    t = r.target
    images = []
    for section, container, image in t.images:
        check = next((c for c in (r.decision.images if r.decision else ()) if c.container == container), None)
        images.append(
            {
                "section": section,
                "container": container,
                "image": image,
                "verdict": check.verdict.value if check else SKIPPED,
                "reason": check.reason if check else "",
                "digest": check.digest if check else None,
                "platforms": [str(p) for p in check.provides] if check else [],
            }
        )
    return {
        "kind": t.kind,
        "namespace": t.namespace,
        "name": t.name,
        "source": r.placed.source,
        "verdict": r.verdict,
        "message": r.message,
        "images": images,
        "file": r.placed.file,
        "line": r.placed.line,
        "mode": r.mode,
        "allowed": r.decision.allowed if r.decision else True,
        "fix": r.decision.fix if r.decision else None,
        "nodes": list(r.nodes),
        "warnings": list(r.decision.warnings) if r.decision else [],
    }


def _object_name(t: Target) -> str:
    return f"{t.kind}/{t.namespace}/{t.name}"


def _where(p: Placed) -> str:
    # A helm template path has no line of ours; a file does.
    return f"{p.file}:{p.line}" if p.has_line else p.location


def _totals(summary: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items() if n)
    objects, images = plural(summary["objects"], "object"), plural(summary["images"], "image")
    return f"{objects} ({counts or 'none'}), {images}"


def text(results: Sequence[Result], summary: Mapping[str, Any]) -> str:
    rows = [("OBJECT", "SOURCE", "VERDICT", "MESSAGE")]
    rows += [(_object_name(r.target), _where(r.placed), r.verdict, r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    tail = _totals(summary)
    if summary["ignored"]:
        kinds = ", ".join(f"{k} {n}" for k, n in summary["ignoredKinds"].items())
        tail += f"; {plural(summary['ignored'], 'other object')} ignored ({kinds})"
    return "\n".join([*(line.rstrip() for line in lines), "", tail])


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github(results: Sequence[Result], summary: Mapping[str, Any]) -> str:
    """GitHub Actions workflow commands: one annotation per object that is not Compatible."""
    lines = []
    for r in results:
        if r.verdict in (Verdict.COMPATIBLE.value, SKIPPED):
            continue
        level = "error" if r.verdict == Verdict.INCOMPATIBLE.value else "warning"
        props = [f"file={_escape_property(r.placed.location)}"] if r.placed.location != STDIN else []
        if r.placed.has_line:
            props.append(f"line={r.placed.line}")
        props.append(f"title={_escape_property(f'archaudit {r.verdict}: {_object_name(r.target)}')}")
        lines.append(f"::{level} {','.join(props)}::{_escape_data(r.message)}")
    lines.append(f"archaudit: {_totals(summary)}")
    return "\n".join(lines)


def sarif(results: Sequence[Result]) -> dict[str, Any]:
    """A SARIF 2.1.0 log for GitHub code scanning: one result per object that is not Compatible."""
    rules = [
        {
            "id": rule_id,
            "name": verdict.value,
            "shortDescription": {"text": words},
            "defaultConfiguration": {"level": level},
        }
        for verdict, (rule_id, level, words) in _RULES.items()
    ]
    index = {verdict.value: i for i, verdict in enumerate(_RULES)}
    out = []
    for r in results:
        if r.verdict not in index:
            continue
        rule_id, level, _words = _RULES[Verdict(r.verdict)]
        physical: dict[str, Any] = {"artifactLocation": {"uri": r.placed.location}}
        if r.placed.has_line:
            physical["region"] = {"startLine": r.placed.line}
        logical = [{"fullyQualifiedName": _object_name(r.target), "kind": "object"}]
        # stdin without helm's `# Source:` has no file to point at; the object's name still says which
        location: dict[str, Any] = {"logicalLocations": logical}
        if r.placed.location != STDIN:
            location = {"physicalLocation": physical, **location}
        out.append(
            {
                "ruleId": rule_id,
                "ruleIndex": index[r.verdict],
                "level": level,
                "message": {"text": f"{_object_name(r.target)}: {r.message}"},
                "locations": [location],
                "partialFingerprints": {"archaudit/object": _object_name(r.target)},
            }
        )
    return {
        "$schema": _SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "archaudit",
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "results": out,
            }
        ],
    }
