"""`archaudit run`: one process serving the admission webhook, the auditor and /metrics.

Start-up order matters for the "never take the cluster down" promise: the node and namespace maps are
listed and the TLS certificate is in place before /readyz turns green, so a replica only receives
admission traffic once it can answer correctly. Every replica serves the webhook; a Lease decides the
single replica that writes audit reports.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf

from archaudit import __version__, placement, webhook
from archaudit.adapters import certs, events, kube, metrics
from archaudit.adapters.auditstore import AuditStore
from archaudit.adapters.placement_metrics import PlacementMetrics
from archaudit.adapters.resolver import Resolver
from archaudit.context import Context, NodeMap
from archaudit.core import config
from archaudit.core.credentials import Keyring, keyring_from_docker_config

__all__ = ["build_parser", "main", "settings_from_args"]

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
    logging.getLogger("kopf").setLevel(max(logging.INFO, logging.getLevelName(settings.level.upper())))


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

    def __init__(self, *, admit: ReviewFn, mutate: ReviewFn | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admit = admit
        self.mutate = mutate
        self.listening = asyncio.Event()

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # kopf types WebhookFn with its TypedDicts; ours takes the same parsed JSON as plain mappings.
        routes = _Routes(self.admit, self.mutate)
        async for client_config in super().__call__(routes):  # type: ignore[arg-type]
            self.listening.set()  # kopf yields only after its site has started
            yield client_config

    @staticmethod
    async def _serve(fn: ReviewFn, request: Any) -> Any:
        from aiohttp import web

        routes = fn if isinstance(fn, _Routes) else _Routes(fn, None)
        target = routes.find(request.match_info.get("id", ""))
        if target is None:
            return web.json_response({"error": f"no webhook at {request.path}"}, status=404)
        # aiohttp's default cap is 1 MiB; an UPDATE review carries the object twice, each up to the
        # apiserver's 3 MiB request limit. Refused, it would be admitted unchecked (failurePolicy Ignore).
        request = request.clone(client_max_size=_MAX_REVIEW_BYTES)
        try:
            data = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "the body is not JSON"}, status=400)
        problem = webhook.malformed(data)
        if problem:
            return web.json_response({"error": problem}, status=400)
        answer = await target(data)
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")


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
        return (
            self.ctx.nodes.filled.is_set()
            and self.ctx.certificate_loaded.is_set()
            and self.server is not None
            and self.server.listening.is_set()
        )


def _cluster_keyring(settings: config.Settings) -> Keyring:
    path = os.environ.get("ARCHAUDIT_DOCKER_CONFIG", "")
    if not path:
        return Keyring()
    return keyring_from_docker_config(Path(path).read_bytes())


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
        settings.networking.request_timeout = 30
        settings.watching.server_timeout = 300
        rt.server = settings.admission.server = await _webhook_server(rt)
        ctx.nodes.replace_all(await rt.api.list_nodes())
        ctx.namespaces.update(
            {
                ns["metadata"]["name"]: ns["metadata"].get("labels") or {}
                for ns in await rt.api.list_namespaces()
            }
        )
        ctx.namespaces_filled.set()
        rt.tasks.append(asyncio.create_task(rt.elector.run(rt.stop), name="leader-election"))
        if ctx.events is not None:
            rt.tasks.append(asyncio.create_task(ctx.events.run(rt.stop), name="events"))
        log.info(
            "archaudit %s started: %d nodes, mode %s, event loop %s",
            __version__,
            len(ctx.nodes),
            rt.settings.webhook.default_mode,
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
        if event.get("type") == "DELETED":
            ctx.namespaces.pop(name, None)
        else:
            ctx.namespaces[name] = obj.get("metadata", {}).get("labels") or {}

    def on_review(kind: str, operation: str, outcome: webhook.ReviewOutcome, seconds: float) -> None:
        decision = "error" if seconds < 0 else outcome.label
        rt.metrics.observe_admission(kind, operation, outcome.mode.value, decision, max(seconds, 0.0))

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
    material = await certs.ensure_secret(rt.api, namespace=namespace, name=ws.tls_secret, hosts=hosts)
    cert, key, _ca = certs.write_files(material, Path(ws.cert_dir))
    rt.tasks.append(asyncio.create_task(_keep_ca_bundle(rt, material), name="ca-bundle"))
    rt.ctx.certificate_loaded.set()
    return WebhookServer(
        admit=admit,
        mutate=rt.mutation,
        addr=ws.host,
        port=ws.port,
        path="",
        certfile=str(cert),
        pkeyfile=str(key),
    )


async def _keep_ca_bundle(rt: Runtime, material: certs.TLSMaterial) -> None:
    """Patch our caBundle into the webhook configuration, and again whenever someone resets it."""
    name = rt.settings.webhook.configuration_name
    while not rt.stop.is_set():
        try:
            if not await rt.api.patch_webhook_ca_bundle(name, material.ca_bundle):
                log.warning("ValidatingWebhookConfiguration %s not found; will retry", name)
        except Exception as e:
            log.warning("cannot patch the caBundle of %s: %s", name, e)
        try:
            # The placement webhook is optional in the chart: its absence is no warning.
            await rt.api.patch_webhook_ca_bundle(name, material.ca_bundle, mutating=True)
        except Exception as e:
            log.warning("cannot patch the caBundle of MutatingWebhookConfiguration %s: %s", name, e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), timeout=60)


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
    stop = asyncio.Event()
    elector = kube.LeaseElector(
        api,
        namespace=settings.cluster.namespace,
        name="archaudit-auditor",
        identity=socket.gethostname() + f"-{os.getpid()}",
    )
    # One Event writer for the webhook and the auditor; its own owner cache, off the review's path.
    emitter = events.EventEmitter(api, owner_of=_workload_of(AuditStore(api)))
    state.events_from = lambda: emitter.stats
    ctx = Context(
        settings=settings,
        resolver=resolver,
        nodes=nodes,
        credentials=credentials,
        metrics=state,
        is_leader=elector.is_leader,
        api=api,
        events=emitter,
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
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
