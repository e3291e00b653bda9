"""`archaudit run`: one process serving the admission webhook, the auditor and /metrics.

Start-up order matters for the "never take the cluster down" promise: the node and namespace maps are
listed and the TLS certificate is in place before /readyz turns green, so a replica only receives
admission traffic once it can answer correctly. Every replica serves the webhook; a Lease decides the
single replica that writes audit reports.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf

from archaudit import __version__, placement, webhook
from archaudit.adapters import certs, events, kube, metrics
from archaudit.adapters.auditstore import AuditStore
from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.placement_metrics import PlacementMetrics
from archaudit.adapters.resolver import Resolver
from archaudit.context import Context, NodeMap
from archaudit.core import config
from archaudit.core.cloud import parse_providers as cloud_providers
from archaudit.core.correlator import Correlator
from archaudit.core.credentials import Keyring, keyring_from_docker_config

__all__ = ["build_parser", "main", "resync_cluster_state", "settings_from_args"]

log = logging.getLogger("archaudit")


# --- configuration: one flag per Settings field ----------------------------------------------------


def _flag(section: str, field: str) -> str:
    return f"--{section}-{field}".replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archaudit run",
        description="Run the archaudit operator: admission webhook, auditor and metrics. Every option "
        "can also be set in the environment as ARCHAUDIT_<SECTION>_<FIELD> (flags win).",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    )
    defaults = config.Settings()
    for section in dataclasses.fields(defaults):
        group = parser.add_argument_group(f"{section.name} options")
        current = getattr(defaults, section.name)
        for f in dataclasses.fields(current):
            value = getattr(current, f.name)
            env = f"ARCHAUDIT_{section.name.upper()}_{f.name.upper()}"
            shown = ",".join(value) if isinstance(value, tuple) else value
            kind = "comma-separated list" if isinstance(value, tuple) else type(value).__name__
            group.add_argument(
                _flag(section.name, f.name),
                dest=f"{section.name}__{f.name}",
                default=None,
                metavar=kind.upper().split()[0] if not isinstance(value, bool) else "BOOL",
                help=f"{kind}; env {env}; default {shown!r}",
            )
    return parser


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> config.Settings:
    """Defaults, then environment, then flags."""
    base = config.from_env(env)
    flags = {
        f"ARCHAUDIT_{key.replace('__', '_', 1).upper()}": value
        for key, value in vars(args).items()
        if "__" in key and value is not None
    }
    return config.from_env(flags, base=base)


def configure_logging(settings: config.LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":

        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps(
                    {
                        "time": self.formatTime(record),
                        "level": record.levelname,
                        "logger": record.name,
                        "message": record.getMessage(),
                    }
                )

        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.level.upper(), handlers=[handler], force=True)
    # One access-log line per admission review costs more than the review itself at cluster scale.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    level = logging.getLevelName(settings.level.upper())
    logging.getLogger("kopf").setLevel(max(logging.INFO, level))
    # kopf says only at DEBUG when a watch starts, stops or relists after a 410 Gone: a few lines an
    # hour, and the one way to see from the log that a watch came back after an etcd compaction.
    logging.getLogger("kopf._cogs.clients.watching").setLevel(level)
    # The kubernetes client logs every response body at DEBUG, Secrets (pull credentials, the
    # webhook's keys) included: never, whatever the level (KubeApi logs request lines itself).
    logging.getLogger("kubernetes.client.rest").setLevel(logging.INFO)


# --- the webhook server: kopf's TLS server, answering with archaudit's admission ----------------------

ReviewFn = Callable[..., Awaitable[Mapping[str, Any]]]
_MAX_REVIEW_BYTES = 8 * 1024 * 1024


class WebhookServer(kopf.WebhookServer):
    """kopf's TLS webhook server (certificate files, reloaded when they change), serving `admit`.

    - Each review goes to `admit` (webhook.Admission) instead of the function kopf passes in, which is
      kopf's admission engine: see webhook.py's docstring for why.
    - Malformed AdmissionReviews get a 400 with the reason, and unknown paths a 404.
    - `listening` is set once the port accepts connections: /readyz waits for it, so a new replica is
      not sent admission traffic it would refuse.
    """

    def __init__(
        self,
        *,
        admit: ReviewFn,
        mutate: ReviewFn | None = None,
        on_drop: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.admit = admit
        self.mutate = mutate
        self.on_drop = on_drop  # a review not judged for want of memory (metrics count it)
        self.listening = asyncio.Event()
        self._context: ssl.SSLContext | None = None  # the one the listening socket hands out
        self._files_digest = ""

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        cadata, context = super()._build_ssl()
        self._context = context
        self._files_digest = self._digest()
        return cadata, context

    def reload(self) -> None:
        """Serve the certificate files as they are now, without closing the port.

        The listening socket keeps its SSLContext; a chain loaded into it is what the next handshakes
        get, while open connections keep theirs. (kopf's own answer to changed files is to stop the
        server and start it again: connections refused meanwhile, admitted unchecked.)
        """
        if self._context is None or self.certfile is None or self.pkeyfile is None:
            return
        self._context.load_cert_chain(self.certfile, self.pkeyfile, self.password)
        self._files_digest = self._digest()

    def _digest(self) -> str:
        hasher = hashlib.sha256()
        for path in (self.certfile, self.pkeyfile):
            if path is not None:
                with contextlib.suppress(OSError):
                    hasher.update(Path(path).read_bytes())
        return hasher.hexdigest()

    async def _WebhookServer__sleep_forever_or_until_ssl_files_change(self) -> None:  # noqa: N802
        # kopf's (name-mangled) wait between its restarts of the server: it returns when the files
        # change, and kopf then closes the port to open it again. Here the files (a Secret mounted by
        # the kubelet, cert-manager's renewals) are reloaded in place instead, and this never returns.
        while True:
            await asyncio.sleep(self.file_check_interval)
            if self._digest() == self._files_digest:
                continue
            try:
                self.reload()
                log.info("webhook certificate reloaded from %s", self.certfile)
            except (OSError, ssl.SSLError) as e:  # a key and certificate caught mid-update: next time
                log.warning("cannot load the changed webhook certificate files yet: %s", e)

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # kopf types WebhookFn with its TypedDicts; ours takes the same parsed JSON as plain mappings.
        routes = _Routes(self.admit, self.mutate)
        async for client_config in super().__call__(routes):  # type: ignore[arg-type]
            self.listening.set()  # kopf yields only after its site has started
            yield client_config

    async def _serve(self, fn: ReviewFn, request: Any) -> Any:  # type: ignore[override]
        try:
            return await self._judge(fn, request)
        except MemoryError:
            # Under a memory limit (a cgroup, `ulimit -v`) a large body may not fit: drop that review,
            # count it, and keep serving the others. 503 is fail-open for the apiserver (failurePolicy
            # Ignore), as archaudit being down is.
            if self.on_drop is not None:
                self.on_drop("memory")
            log.warning("admission review dropped: out of memory")
            from aiohttp import web

            return web.json_response({"error": "out of memory: not judged"}, status=503)

    @staticmethod
    async def _judge(fn: ReviewFn, request: Any) -> Any:
        from aiohttp import web

        routes = fn if isinstance(fn, _Routes) else _Routes(fn, None)
        target = routes.find(request.match_info.get("id", ""))
        if target is None:
            return web.json_response({"error": f"no webhook at {request.path}"}, status=404)
        # aiohttp's default cap is 1 MiB; an UPDATE review carries the object twice, each up to the
        # apiserver's 3 MiB request limit. Refused, it would be admitted unchecked (failurePolicy Ignore).
        request = request.clone(client_max_size=_MAX_REVIEW_BYTES)
        large = (request.content_length or _MAX_REVIEW_BYTES) > _LARGE_REVIEW_BYTES
        # Large bodies are read and parsed a few at a time: a flood of 8 MiB reviews is held back by TCP
        # flow control instead of being buffered all at once.
        async with _large_reviews() if large else contextlib.nullcontext():
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _bad_review(f"the body is larger than {_MAX_REVIEW_BYTES} bytes")
            # 8 MiB of `{},` parses into millions of dicts (hundreds of MiB): no Kubernetes object has
            # that shape, so it is refused before parsing (bytes.count is a C loop, ~1 ms per MiB).
            if body.count(b"{") + body.count(b"[") > _MAX_JSON_CONTAINERS:
                return _bad_review(f"more than {_MAX_JSON_CONTAINERS} JSON objects and arrays")
            try:
                data = json.loads(body)
            except RecursionError:  # JSON nested thousands deep: the parser's recursion limit
                return _bad_review("the body is nested too deeply")
            except (ValueError, UnicodeDecodeError):
                return _bad_review("the body is not JSON")
            del body
        problem = webhook.malformed(data)
        if problem:
            return _bad_review(problem)
        if not isinstance(data["request"]["uid"], str) or len(data["request"]["uid"]) > 256:
            return _bad_review("request.uid must be a string")  # it is echoed in the answer
        try:
            answer = await target(data)
        except Exception as e:
            # A review with the right keys but values of the wrong types (a hostile client; the
            # apiserver never sends one) must not become a 500: admitted, fail-open, and said why.
            log.warning("admission review %r could not be judged: %r", data["request"].get("uid"), e)
            answer = webhook.response(
                data, allowed=True, warnings=[f"archaudit could not judge this: {e!r}"[:500]]
            )
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")


_LARGE_REVIEW_BYTES = 1024 * 1024
_LARGE_REVIEWS_AT_ONCE = 4
_MAX_JSON_CONTAINERS = 100_000
_large_gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _large_reviews() -> asyncio.Semaphore:
    """The running loop's gate for large review bodies (one per loop: tests run several)."""
    loop = asyncio.get_running_loop()
    gate = _large_gates.get(loop)
    if gate is None:
        for old in [known for known in _large_gates if known.is_closed()]:
            del _large_gates[old]
        gate = _large_gates[loop] = asyncio.Semaphore(_LARGE_REVIEWS_AT_ONCE)
    return gate


def _bad_review(reason: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": reason}, status=400)


class _Routes:
    """Which handler answers a path. Served from the root, `validate/<id>` (webhook.WEBHOOKS) and
    `mutate/<id>` (placement.MUTATING_WEBHOOKS); a server rooted at /validate sees bare ids."""

    def __init__(self, admit: ReviewFn, mutate: ReviewFn | None) -> None:
        self.admit = admit
        self.mutate = mutate

    async def __call__(self, data: Mapping[str, Any], **kwargs: Any) -> Mapping[str, Any]:
        return await self.admit(data, **kwargs)

    def find(self, route: str) -> ReviewFn | None:
        kind, _, name = route.rpartition("/")
        if kind in ("", "validate") and name in webhook.WEBHOOKS:
            return self.admit
        if kind == "mutate" and name in placement.MUTATING_WEBHOOKS:
            return self.mutate
        return None


# --- the operator ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Runtime:
    settings: config.Settings
    api: kube.KubeApi
    ctx: Context
    metrics: metrics.Metrics
    elector: kube.LeaseElector
    stop: asyncio.Event
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    server: WebhookServer | None = None
    admission: webhook.Admission | None = None
    mutation: placement.Mutation | None = None
    gates: placement.GateController | None = None

    def ready(self) -> bool:
        """Ready to be sent admission traffic; raises with the reason (the 503's text) when stale.

        Not ready while the node map and namespace labels are unconfirmed past
        `cluster.state_stale_seconds`: a replica that lost the apiserver must not keep deciding on what
        it last knew (the apiserver's Service routes to the replicas that are ready, or fails open).
        """
        if not (
            self.ctx.nodes.filled.is_set()
            and self.ctx.certificate_loaded.is_set()
            and self.server is not None
            and self.server.listening.is_set()
        ):
            return False
        problem = self.ctx.freshness.problem()
        if problem:
            raise RuntimeError(problem)
        return True


def _cluster_keyring(settings: config.Settings) -> Keyring:
    path = os.environ.get("ARCHAUDIT_DOCKER_CONFIG", "")
    if not path:
        return Keyring()
    return keyring_from_docker_config(Path(path).read_bytes())


class Backoffs:
    """Delays between retries of kopf's API requests, its watches included: capped, with jitter.

    kopf retries every request on its own schedule, 1, 1, 2, 3, 5, 8, 13 and 21 s, and a watch
    reconnects on it too. After kube-apiserver restarts (k3s does on every upgrade and reboot), a watch
    waits for its next step, up to 21 s; the attempts that meet the apiserver half-started (403 while
    its RBAC cache fills, 429 while the watch cache initialises) push it into those long steps; and once
    the schedule is used up by such errors, kopf's watcher task ends for good. Here: short steps capped
    at `cap`, each between half and all of its nominal length (so the replicas' watches do not knock
    on a recovering apiserver in lockstep), and enough of them to outlast any restart.
    A fresh iteration per request (kopf iterates it anew for each one); `len()` is kopf's "#n/N".
    """

    def __init__(
        self,
        *,
        first: float = 0.5,
        cap: float = 4.0,
        attempts: int = 90,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.first, self.cap, self.attempts, self.rng = first, cap, attempts, rng

    def __iter__(self) -> Iterator[float]:
        for i in range(self.attempts):
            yield min(self.cap, self.first * 2**i) * (0.5 + self.rng() / 2)

    def __len__(self) -> int:
        return self.attempts


def configure_watches(settings: kopf.OperatorSettings) -> None:
    """kopf's networking for watches that come back within seconds of the apiserver (issue 16)."""
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = Backoffs()
    # A TCP + TLS handshake with the apiserver takes milliseconds; one that hangs (a half-started or
    # overloaded apiserver) is abandoned after this and retried, instead of after request_timeout.
    settings.networking.connect_timeout = 5
    settings.watching.connect_timeout = 5
    settings.watching.server_timeout = 300


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    settings = rt.settings
    ctx = rt.ctx

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not get kopf's default login handlers: in-cluster service
        # account first (as load_client), then the kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # we write our own Events, deduplicated (adapters/events.py)
        configure_watches(settings)
        rt.server = settings.admission.server = await _webhook_server(rt)
        ctx.nodes.replace_all(await rt.api.list_nodes())
        ctx.namespaces.update(
            {
                ns["metadata"]["name"]: ns["metadata"].get("labels") or {}
                for ns in await rt.api.list_namespaces()
            }
        )
        ctx.namespaces_filled.set()
        ctx.freshness.confirm()
        rt.tasks.append(asyncio.create_task(_keep_cluster_state(rt), name="cluster-state"))
        rt.tasks.append(asyncio.create_task(rt.elector.run(rt.stop), name="leader-election"))
        if ctx.events is not None:
            rt.tasks.append(asyncio.create_task(ctx.events.run(rt.stop), name="events"))
        log.info(
            "archaudit %s started: %d nodes, mode %s, cloud credentials %s, event loop %s",
            __version__,
            len(ctx.nodes),
            rt.settings.webhook.default_mode,
            (",".join(sorted(ctx.cloud.providers)) if isinstance(ctx.cloud, CloudCredentials) else "")
            or "off",
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        rt.stop.set()
        for task in rt.tasks:
            task.cancel()
        # The leader releases its Lease on the way out (a standby takes over at once): let it finish.
        await asyncio.gather(*rt.tasks, return_exceptions=True)

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        name = obj.get("metadata", {}).get("name")
        if not name:
            return
        if event.get("type") == "DELETED":
            ctx.nodes.remove(name)
        else:
            ctx.nodes.upsert(obj)

    @kopf.on.event("", "v1", "namespaces", registry=registry)
    async def namespace_event(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        name = obj.get("metadata", {}).get("name")
        if not name:
            return
        labels = obj.get("metadata", {}).get("labels") or {}
        if event.get("type") == "DELETED":
            if ctx.namespaces.pop(name, None) is not None:
                ctx.namespaces_version += 1
        elif ctx.namespaces.get(name) != labels:
            ctx.namespaces[name] = labels
            ctx.namespaces_version += 1

    def on_review(kind: str, operation: str, outcome: webhook.ReviewOutcome, seconds: float) -> None:
        decision = "error" if seconds < 0 else outcome.label
        rt.metrics.observe_admission(kind, operation, outcome.mode.value, decision, max(seconds, 0.0))
        if not ctx.freshness.confirming:
            rt.metrics.observe_stale_review()

    def on_warning_event(obj: Mapping[str, Any], outcome: webhook.ReviewOutcome) -> None:
        # Synchronous and I/O-free: the emitter counts or queues the occurrence and returns.
        if ctx.events is not None:
            ctx.events.about_object(obj, outcome.warnings)

    rt.admission = webhook.Admission(
        lambda: ctx,
        on_review=on_review,
        on_warning_event=on_warning_event,
        log_denials=settings.webhook.log_denials,
    )
    _register_placement(registry, rt)
    if settings.audit.enabled:
        from archaudit import audit

        audit.register(registry, lambda: ctx)
    return registry


def _register_placement(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """`/mutate/pods` and the gate controller; the pod watch is shared with the auditor's (one stream)."""

    gates = rt.gates = placement.GateController(rt.ctx)
    observed = PlacementMetrics(rt.metrics.registry, gates.gated)
    gates.observe = observed.observe
    rt.mutation = placement.Mutation(lambda: rt.ctx, observe=observed.observe)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        registry=registry,
        id="placement-gates",
        when=lambda body, **_: gates.interesting(body),
    )
    async def pod_event(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        gates.seen(obj, deleted=event.get("type") == "DELETED")

    @kopf.on.cleanup(registry=registry, id="placement-cleanup")
    async def stop_gates(**_: Any) -> None:
        await gates.stop()


def _workload_of(store: AuditStore) -> events.OwnerOf:
    """The workload above a controller-made pod, from the auditor's owner cache (ReplicaSet, Job reads)."""

    async def owner_of(pod: Mapping[str, Any]) -> events.Involved:
        ref = await store.top_level(pod)
        return events.Involved(ref.api_version, ref.kind, ref.namespace, ref.name, ref.uid)

    return owner_of


async def _webhook_server(rt: Runtime) -> WebhookServer:
    ws = rt.settings.webhook
    if rt.admission is None:
        raise RuntimeError("build_registry() makes the admission handler before the server starts")
    admit = rt.admission
    if ws.tls_mode == "files":
        if not (ws.cert_file and ws.key_file):
            raise SystemExit("webhook.tls_mode=files needs --webhook-cert-file and --webhook-key-file")
        rt.ctx.certificate_loaded.set()
        return WebhookServer(
            admit=admit,
            on_drop=rt.metrics.observe_dropped_review,
            addr=ws.host,
            port=ws.port,
            path="",
            certfile=ws.cert_file,
            mutate=rt.mutation,
            pkeyfile=ws.key_file,
        )
    if ws.tls_mode != "self":
        raise SystemExit(f"webhook.tls_mode must be 'self' or 'files', not {ws.tls_mode!r}")
    namespace = rt.settings.cluster.namespace
    hosts = certs.dns_names(ws.service_name, namespace) + list(ws.extra_sans)
    lifetimes = lifetimes_of(ws)
    published = await _published_ca(rt.api, ws.configuration_name)
    material = await certs.ensure_secret(
        rt.api, namespace=namespace, name=ws.tls_secret, hosts=hosts, lifetimes=lifetimes, published=published
    )
    cert, key, _ca = certs.write_files(material, Path(ws.cert_dir))
    rt.tasks.append(
        asyncio.create_task(_keep_certificate(rt, material, hosts, lifetimes), name="webhook-certificate")
    )
    rt.ctx.certificate_loaded.set()
    return WebhookServer(
        admit=admit,
        mutate=rt.mutation,
        on_drop=rt.metrics.observe_dropped_review,
        addr=ws.host,
        port=ws.port,
        path="",
        certfile=str(cert),
        pkeyfile=str(key),
    )


async def resync_cluster_state(api: kube.KubeApi, ctx: Context) -> bool:
    """Re-list nodes and namespaces; repair the maps the watches keep if they differ; True if listed.

    The watches keep both maps current within milliseconds while they run. This is for when they do
    not: after a kube-apiserver restart or a 410 Gone, kopf relists, and a deletion made meanwhile never
    arrives as an event; a watch kopf gave up on never delivers again. The lists are plain
    (consistent) reads, served from the apiserver's watch cache on Kubernetes >= 1.31.
    """
    nodes_before, namespaces_before = ctx.nodes.version, ctx.namespaces_version
    try:
        nodes = (await api.request("GET", "/api/v1/nodes"))["items"]
        namespaces = (await api.request("GET", "/api/v1/namespaces"))["items"]
    except Exception as e:
        if ctx.freshness.confirming:
            log.warning("cannot confirm nodes and namespaces with the apiserver: %s", e)
        ctx.freshness.fail(str(e)[:300])
        return False
    # A watch event applied while the lists were in flight is newer than they are: keep it (the next
    # round compares again). Otherwise the lists are the truth.
    if ctx.nodes.version == nodes_before:
        ctx.nodes.replace_all(nodes)
        if ctx.nodes.version != nodes_before:
            log.warning("node map differed from the apiserver (a watch missed events); repaired")
    if ctx.namespaces_version == namespaces_before:
        fresh = {ns["metadata"]["name"]: ns["metadata"].get("labels") or {} for ns in namespaces}
        if fresh != ctx.namespaces:
            log.warning("namespace labels differed from the apiserver (a watch missed events); repaired")
            ctx.namespaces.clear()
            ctx.namespaces.update(fresh)
            ctx.namespaces_version += 1
    if not ctx.freshness.confirming:
        log.info("nodes and namespaces confirmed with the apiserver again")
    ctx.freshness.confirm()
    return True


async def _keep_cluster_state(rt: Runtime) -> None:
    every = rt.settings.cluster.state_resync_seconds
    while not rt.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), timeout=every)
        if not rt.stop.is_set():
            await resync_cluster_state(rt.api, rt.ctx)


def lifetimes_of(ws: config.WebhookSettings) -> certs.Lifetimes:
    """The self-made certificates' lifetimes; ValueError when they cannot work together."""
    return certs.Lifetimes.of_seconds(
        ws.cert_validity_seconds, ws.cert_renew_before_seconds, ws.ca_validity_seconds
    )


async def _published_ca(api: kube.KubeApi, name: str) -> bytes | None:
    """The CA PEM the apiserver trusts for our validating webhooks (None: no configuration yet)."""
    found = await api.read_webhook_configuration(name)
    if found is None:
        return None
    bundles = [h.get("clientConfig", {}).get("caBundle") or "" for h in found.get("webhooks") or []]
    try:
        return b"".join(dict.fromkeys(base64.b64decode(b) for b in bundles))
    except ValueError:
        return b""


async def _keep_certificate(
    rt: Runtime, material: certs.TLSMaterial, hosts: list[str], lifetimes: certs.Lifetimes
) -> None:
    """Renew the serving certificate and the CA without a gap, and keep our caBundle published.

    Every replica, every `lifetimes.check_every`: read the Secret; write the next rotation step when
    one is due (certs.next_material; a conditional write, so one replica wins); serve what the Secret
    holds (files rewritten, the live TLS context reloaded) and patch its caBundle into the webhook
    configurations, again whenever someone resets it (a helm upgrade does).
    """
    ws = rt.settings.webhook
    namespace, name = rt.settings.cluster.namespace, ws.configuration_name
    served = material
    retry = _CA_BUNDLE_FIRST_RETRY
    while not rt.stop.is_set():
        patched = False
        try:
            published = await _published_ca(rt.api, name)
            current, version = await certs.read_secret(rt.api, namespace=namespace, name=ws.tls_secret)
            step = certs.next_material(current, hosts, lifetimes=lifetimes, published=published)
            if step is not None:
                fresh, what = step
                stored = await certs.store(
                    rt.api, namespace=namespace, name=ws.tls_secret, material=fresh, resource_version=version
                )
                if stored:
                    log.info("webhook certificate in Secret %s/%s: %s", namespace, ws.tls_secret, what)
                current = fresh if stored else None  # lost the race: the winner's is read next round
            if current is not None and current != served:
                _serve(rt, current, served)
                served = current
            patched = await rt.api.patch_webhook_ca_bundle(name, served.ca_bundle)
            if not patched:
                log.warning("ValidatingWebhookConfiguration %s not found; retrying in %.0fs", name, retry)
        except Exception as e:
            log.warning("cannot renew the webhook certificate or patch the caBundle of %s: %s", name, e)
        try:
            # The placement webhook is optional in the chart: its absence is no warning.
            await rt.api.patch_webhook_ca_bundle(name, served.ca_bundle, mutating=True)
        except Exception as e:
            log.warning("cannot patch the caBundle of MutatingWebhookConfiguration %s: %s", name, e)
        # Until the configuration exists and carries our CA (helm may create it after this pod starts),
        # look again soon: meanwhile the apiserver cannot call us and admits everything unchecked.
        every = lifetimes.check_every
        wait, retry = (
            (every, _CA_BUNDLE_FIRST_RETRY) if patched else (min(retry, every), min(retry * 2, 60.0))
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), timeout=wait)


def _serve(rt: Runtime, current: certs.TLSMaterial, served: certs.TLSMaterial) -> None:
    """Write the Secret's material for the server and load a changed certificate into it."""
    certs.write_files(current, Path(rt.settings.webhook.cert_dir))
    if (current.cert_pem, current.key_pem) != (served.cert_pem, served.key_pem) and rt.server is not None:
        rt.server.reload()
        log.info("serving the webhook certificate valid until %s", certs.not_after(current.cert_pem))


_CA_BUNDLE_FIRST_RETRY = 1.0  # then 2, 4, ... 60 s while the configuration is missing


async def run(settings: config.Settings, *, kubeconfig: str | None = None) -> None:
    client = kube.load_client(kubeconfig)
    api = kube.KubeApi(client)
    state = metrics.MutableState()
    exported = metrics.Metrics(state)
    resolver = Resolver.from_settings(settings.registry, observer=exported)
    stats = resolver.stats
    state.resolver_cache_from = lambda: {
        name: (counter.hits, counter.misses)
        for name, counter in (
            ("tag", stats.tag),
            ("platforms", stats.platforms),
            ("negative", stats.negative),
        )
    }
    nodes = NodeMap(
        runtime_profile=settings.cluster.runtime_profile, containerd_pull=settings.cluster.containerd_pull
    )
    state.nodes_from = lambda: collections.Counter(str(n.platform) for n in nodes.all())
    credentials = kube.PullSecretCredentials(api, extra=_cluster_keyring(settings))
    cloud = CloudCredentials.from_settings(settings.registry)
    state.cloud_tokens_from = lambda: cloud.requests
    stop = asyncio.Event()
    elector = kube.LeaseElector(
        api,
        namespace=settings.cluster.namespace,
        name="archaudit-auditor",
        identity=socket.gethostname() + f"-{os.getpid()}",
    )
    # One Event writer for the webhook and the auditor; its own owner cache, off the review's path.
    quiet = settings.events
    emitter = events.EventEmitter(
        api,
        owner_of=_workload_of(AuditStore(api)),
        correlator=Correlator(
            window=quiet.window_seconds,
            flush_interval=quiet.flush_seconds,
            burst=quiet.burst,
            refill_seconds=quiet.refill_seconds,
            max_keys=quiet.max_keys,
        ),
        queue_size=quiet.queue_size,
    )
    state.events_from = lambda: emitter.stats
    ctx = Context(
        settings=settings,
        resolver=resolver,
        nodes=nodes,
        credentials=credentials,
        cloud=cloud,
        metrics=state,
        is_leader=elector.is_leader,
        api=api,
        events=emitter,
    )
    state.cluster_state_age_from = ctx.freshness.age
    rt = Runtime(settings=settings, api=api, ctx=ctx, metrics=exported, elector=elector, stop=stop)
    registry = build_registry(rt)
    runner = await metrics.start_metrics_server(
        settings.metrics.host, settings.metrics.port, exported.registry, health=lambda: True, ready=rt.ready
    )
    try:
        await kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop)
    finally:
        stop.set()
        await runner.cleanup()
        await resolver.aclose()
        await cloud.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        cloud_providers(settings.registry.cloud_credentials)
        lifetimes_of(settings.webhook)
    except ValueError as e:
        print(f"archaudit run: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    event_loop_runner()(run(settings, kubeconfig=args.kubeconfig))
    return 0


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it is installed, else asyncio's own loop (32-bit ARM has no uvloop wheels).

    asyncio's TLS is pure Python; uvloop's halves the CPU of an admission review (BENCHMARKS.md).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
