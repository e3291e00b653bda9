"""From manifest text (`helm template`, `kustomize build`, a directory of YAML) to what admission judges.

`archaudit check -f` promises CI the decision the webhook would make when these objects are applied.
So the webhook's reading of an object is kept here, where both can reach it: which kinds are admitted
(Pod and the workload kinds its validating rules cover), which containers count, the scheduling view of
the pod spec (a DaemonSet's controller tolerations included) and the rule that objects made by a
controller are judged at their owner. The text side keeps what CI needs to point at a line: the first
line of each document, and helm's `# Source:` comment naming the template it came from.

Pure: text in, plain values out; no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from archaudit.core import workloads

__all__ = [
    "ADMITTED_KINDS",
    "Document",
    "DocumentError",
    "Target",
    "load_documents",
    "namespace_labels",
    "objects_of",
    "placed_objects",
    "target_of",
]

# The kinds the validating webhooks see (webhook.WORKLOAD_RESOURCES plus pods; a test keeps them equal).
# PodTemplate has a pod spec but is never admitted as a pod, so it is not judged.
ADMITTED_KINDS = (
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
)

# helm writes `# Source: <chart>/templates/<file>` above every document it renders.
_SOURCE = re.compile(r"^#\s*Source:\s*(?P<path>\S.*?)\s*$")
# A document marker at column 0 (YAML 1.1 §9.2): `---` alone or followed by a space and content.
_MARKER = re.compile(r"^---(?:[ \t]|$)")
_END = re.compile(r"^\.\.\.[ \t]*$")


@dataclass(frozen=True)
class Document:
    """One object as written, and where: `line` is 1-based in the text it came from."""

    obj: Mapping[str, Any]
    line: int
    helm_source: str | None  # the `# Source:` path when helm rendered it
    item_lines: tuple[int, ...] = ()  # of each entry of `items` in a List, so each object has its line


@dataclass(frozen=True)
class DocumentError:
    """A document that does not parse: where, and why (the parser's words)."""

    line: int
    message: str


def load_documents(text: str, *, as_json: bool = False) -> list[Document | DocumentError]:
    """Every document of a YAML stream (or one JSON text), in order; `List` kinds stay whole.

    A malformed document is a `DocumentError` and the others are still returned: one bad template
    must not hide the verdicts of the rest. Empty documents (helm renders many) are dropped.
    """
    if as_json:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            return [DocumentError(e.lineno, e.msg)]
        return [_document(value, 1, None)]
    out: list[Document | DocumentError] = []
    for start, chunk in _chunks(text):
        source = next((m.group("path") for m in map(_SOURCE.match, chunk.splitlines()) if m), None)
        loader = yaml.SafeLoader(chunk)
        try:
            # The node first, then the value from it: one parse gives both the object and its lines.
            node = loader.get_single_node()
            value = None if node is None else loader.construct_document(node)
        except yaml.YAMLError as e:
            out.append(_yaml_error(e, start, chunk.count("\n") or 1))
            continue
        finally:
            loader.dispose()
        if value is None:
            continue
        lines = tuple(start + item.start_mark.line + 1 for item in _items_node(node))
        out.append(_document(value, start + _first_content_line(chunk), source, lines))
    return out


def _items_node(node: yaml.Node | None) -> list[yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return []


def _document(
    value: object, line: int, source: str | None, item_lines: tuple[int, ...] = ()
) -> Document | DocumentError:
    if not isinstance(value, Mapping):
        return DocumentError(line, f"a document must be an object (a mapping), not {type(value).__name__}")
    return Document(value, line, source, item_lines)


def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """(0-based line of the chunk's first line, chunk) split at document markers.

    The marker line is kept in its chunk (a `--- {inline: doc}` is legal), so yaml's own line numbers
    plus the chunk's start are lines of the whole text.
    """
    lines = text.splitlines(keepends=True)
    start = 0
    for i, line in enumerate(lines):
        if i > start and _MARKER.match(line):
            yield start, "".join(lines[start:i])
            start = i
        elif _END.match(line):
            yield start, "".join(lines[start:i])
            start = i + 1
    if start < len(lines):
        yield start, "".join(lines[start:])


def _first_content_line(chunk: str) -> int:
    """1-based line, within the chunk, of its first line that is not blank, a comment or a marker."""
    for i, line in enumerate(chunk.splitlines()):
        bare = line.strip()
        if bare and not bare.startswith("#") and bare != "---":
            return i + 1
    return 1


def _yaml_error(error: yaml.YAMLError, start: int, lines: int) -> DocumentError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    # "got '<stream end>'" points past the chunk, at the next document's marker: name the last line.
    line = start + min(mark.line + 1 if mark is not None else 1, lines)
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    words = ", ".join(str(p) for p in (context, problem) if p) or str(error).splitlines()[0]
    return DocumentError(line, words)


def objects_of(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The object itself, or the items of a `List` (`kubectl get -o yaml`, `v1/List`, `PodList`...)."""
    kind = str(obj.get("kind", ""))
    items = obj.get("items")
    if kind.endswith("List") and isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping):
                yield from objects_of(item)
        return
    yield obj


def placed_objects(doc: Document) -> Iterator[tuple[Mapping[str, Any], int]]:
    """`objects_of(doc.obj)` with the line of each: a List's entries have their own lines."""
    items = doc.obj.get("items")
    if not (str(doc.obj.get("kind", "")).endswith("List") and isinstance(items, list)):
        yield doc.obj, doc.line
        return
    for i, item in enumerate(items):
        line = doc.item_lines[i] if i < len(doc.item_lines) else doc.line
        if isinstance(item, Mapping):
            for obj in objects_of(item):
                yield obj, line


def namespace_labels(objs: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    """name -> labels of the Namespace objects among `objs` (their `archaudit.io/mode` applies)."""
    out: dict[str, Mapping[str, str]] = {}
    for obj in objs:
        if obj.get("kind") == "Namespace":
            metadata = _mapping(obj.get("metadata"))
            labels = {str(k): str(v) for k, v in _mapping(metadata.get("labels")).items()}
            out[str(metadata.get("name", ""))] = labels
    return out


@dataclass(frozen=True)
class Target:
    """What the webhook judges of one object on CREATE."""

    kind: str
    namespace: str
    name: str
    is_pod: bool
    images: tuple[tuple[str, str, str], ...]  # (section, container, image), as workloads.containers_of
    pod_spec: Mapping[str, Any]
    scheduling_spec: Mapping[str, Any]  # what the scheduler will see (workloads.scheduling_spec_of)
    controlled: bool  # has a controller ownerReference: judged at its owner, not here


def target_of(obj: Mapping[str, Any], *, default_namespace: str) -> Target | None:
    """The admission view of `obj`, or None when the webhook never sees its kind."""
    kind = str(obj.get("kind", ""))
    if kind not in ADMITTED_KINDS:
        return None
    metadata = _mapping(obj.get("metadata"))
    spec = workloads.pod_spec_of(obj) or {}
    return Target(
        kind=kind,
        namespace=str(metadata.get("namespace") or default_namespace),
        name=str(metadata.get("name") or metadata.get("generateName") or ""),
        is_pod=kind == "Pod",
        images=tuple(workloads.containers_of(spec)),
        pod_spec=spec,
        scheduling_spec=workloads.scheduling_spec_of(obj) or spec,
        controlled=workloads.controller_of(obj) is not None,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
