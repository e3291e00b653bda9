"""What the kopf handlers share: settings, the resolver, the live node map, credentials, metrics state.

One `Context` is built at start-up by app.py and handed to webhook.py and audit.py, so neither reaches
for globals and both see the same node map and caches. Leadership (which replica audits) is a plain
callable here; app.py decides it with a coordination.k8s.io Lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from archaudit.adapters.cloud import CloudAnswer
from archaudit.adapters.events import EventEmitter
from archaudit.adapters.kube import KubeApi
from archaudit.adapters.metrics import MutableState
from archaudit.adapters.resolver import Resolution
from archaudit.core.config import Settings
from archaudit.core.credentials import Credential
from archaudit.core.reference import ImageReference
from archaudit.core.scheduling import Node, node_from_object, virtual_nodes

__all__ = ["CloudSource", "Context", "CredentialSource", "ImageResolver", "NodeMap", "StateFreshness"]

log = logging.getLogger(__name__)


class CredentialSource(Protocol):
    """Pull credentials for a pod: its imagePullSecrets, then its service account's (kube.py)."""

    async def for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential]: ...

    def peek_for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> Sequence[Credential] | None:
        """`for_pod` if it is known without I/O, else None."""


class CloudSource(Protocol):
    """The cloud identity step, after the pull secrets (adapters.cloud.CloudCredentials)."""

    async def for_image(self, ref: ImageReference) -> CloudAnswer: ...

    def peek(self, ref: ImageReference) -> CloudAnswer | None:
        """`for_image` if it is known without I/O, else None."""


class ImageResolver(Protocol):
    """Image -> platforms, with the caches (adapters.resolver.Resolver)."""

    async def resolve(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> Resolution: ...

    def peek(self, ref: ImageReference, credentials: Sequence[Credential] = ()) -> Resolution | None:
        """The cached answer, without I/O, or None (raises the cached ResolutionError)."""


class NodeMap:
    """The live set of nodes, kept by a node watch; small values only (scheduling.Node)."""

    def __init__(self, *, runtime_profile: str = "", containerd_pull: str = "") -> None:
        self._nodes: dict[str, Node] = {}
        self._runtime_profile = runtime_profile
        self._containerd_pull = containerd_pull
        self.filled = asyncio.Event()  # set once the initial listing is in
        # Moves whenever a node is added, removed or changed in a way archaudit sees (not heartbeats):
        # answers computed from the node map stay valid while it stands still.
        self.version = 0

    def _node(self, obj: Mapping[str, Any]) -> Node | None:
        try:
            return node_from_object(
                obj, runtime_profile=self._runtime_profile, containerd_pull=self._containerd_pull
            )
        except ValueError as e:
            # A node without os/arch labels or nodeInfo cannot be judged; it must not break the map.
            log.warning("node %s ignored: %s", obj.get("metadata", {}).get("name"), e)
            return None

    def upsert(self, obj: Mapping[str, Any]) -> Node | None:
        node = self._node(obj)
        if node is not None and self._nodes.get(node.name) != node:
            self._nodes[node.name] = node
            self.version += 1
        return node

    def remove(self, name: str) -> None:
        if self._nodes.pop(name, None) is not None:
            self.version += 1

    def replace_all(self, objs: Iterable[Mapping[str, Any]]) -> None:
        fresh = {}
        for obj in objs:
            node = self._node(obj)
            if node is not None:
                fresh[node.name] = node
        if fresh != self._nodes:
            self._nodes = fresh
            self.version += 1
        self.filled.set()

    def get(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def __len__(self) -> int:
        return len(self._nodes)

    def all(self) -> list[Node]:
        return list(self._nodes.values())


class StateFreshness:
    """When the node map and namespace labels were last confirmed to match the apiserver.

    kopf does not say when a watch is down (it retries inside), so the proof is a periodic re-list
    (app.py): `confirm()` after one that succeeded, `fail()` after one that did not. Readiness and the
    stale-state metrics read it; "confirming" is False from the first failed re-list to the next good one.
    """

    def __init__(self, *, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self.confirmed_at: float | None = None
        self.failing_since: float | None = None
        self.last_error = ""

    def confirm(self) -> None:
        self.confirmed_at = self._clock()
        self.failing_since = None
        self.last_error = ""

    def fail(self, error: str) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = error

    @property
    def confirming(self) -> bool:
        """The last re-list succeeded (or none failed since the start)."""
        return self.failing_since is None

    def age(self) -> float | None:
        """Seconds since the last confirmation; None before the first."""
        return None if self.confirmed_at is None else self._clock() - self.confirmed_at

    def problem(self) -> str | None:
        """Why the state is stale past the bound, or None while it is fresh enough to decide on."""
        age = self.age()
        if age is None:
            return "nodes and namespaces not listed yet"
        if age <= self.stale_after:
            return None
        why = f": {self.last_error}" if self.last_error else ""
        return f"nodes and namespaces not confirmed for {age:.0f}s (bound {self.stale_after:.0f}s){why}"


@dataclass
class Context:
    settings: Settings
    resolver: ImageResolver
    nodes: NodeMap
    credentials: CredentialSource
    metrics: MutableState
    is_leader: Callable[[], bool] = lambda: True
    # The pod's cloud identity for ECR / Artifact Registry / ACR images, tried after the pull secrets.
    cloud: CloudSource | None = None
    api: KubeApi | None = None  # shared, so the auditor does not build a second client
    events: EventEmitter | None = None  # the one writer of Events (webhook and auditor)
    extra_nodes: list[Node] = field(default_factory=list)
    # namespace -> its labels (archaudit.io/mode, archaudit.io/ignore), kept by a namespace watch
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    namespaces_filled: asyncio.Event = field(default_factory=asyncio.Event)
    # Moves on every namespace change the watch applies (as NodeMap.version does for nodes).
    namespaces_version: int = 0
    certificate_loaded: asyncio.Event = field(default_factory=asyncio.Event)
    freshness: StateFreshness = field(init=False)

    def __post_init__(self) -> None:
        self.freshness = StateFreshness(stale_after=self.settings.cluster.state_stale_seconds)
        forced = self.settings.cluster.runtime_profile
        self.extra_nodes = virtual_nodes(
            self.settings.cluster.platforms, profiles=(forced,) if forced else ("containerd",)
        )

    def schedulable_universe(self) -> list[Node]:
        """Real nodes plus the configured cluster platforms of nodes that do not exist yet."""
        return self.nodes.all() + self.extra_nodes
