"""`archaudit run` configuration and the webhook server's answer to malformed AdmissionReviews."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from archaudit import app
from archaudit.core import config
from tests.harness.certs import TestCA


def test_every_setting_has_a_flag_that_names_its_environment_variable() -> None:
    help_text = app.build_parser().format_help()
    defaults = config.Settings()
    import dataclasses

    for section in dataclasses.fields(defaults):
        for field in dataclasses.fields(getattr(defaults, section.name)):
            flag = f"--{section.name}-{field.name}".replace("_", "-")
            env = f"ARCHAUDIT_{section.name.upper()}_{field.name.upper()}"
            assert flag in help_text, flag
            assert env in help_text, env


def test_flags_override_environment_which_overrides_defaults() -> None:
    args = app.build_parser().parse_args(
        ["--webhook-port", "9443", "--cluster-platforms", "linux/arm64,linux/amd64"]
    )
    settings = app.settings_from_args(
        args, env={"ARCHAUDIT_WEBHOOK_PORT": "7443", "ARCHAUDIT_LOG_LEVEL": "DEBUG"}
    )
    assert settings.webhook.port == 9443
    assert settings.cluster.platforms == ("linux/arm64", "linux/amd64")
    assert settings.log.level == "DEBUG"
    assert settings.webhook.default_mode == config.WebhookSettings().default_mode


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="ARCHAUDIT_WEBHOOK_PORT"):
        config.from_env({"ARCHAUDIT_WEBHOOK_PORT": "eighty"})
    with pytest.raises(ValueError, match="ARCHAUDIT_AUDIT_ENABLED"):
        config.from_env({"ARCHAUDIT_AUDIT_ENABLED": "maybe"})


async def kopf_engine_never_called(data: Any, **_: Any) -> Any:
    raise AssertionError("the server must answer with archaudit's admission, not kopf's engine")


@pytest.fixture
async def webhook_url(tmp_path: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, list[Any]]]:
    """archaudit's WebhookServer on a loopback port; the admission side is a recorder that allows."""
    ca = TestCA(tmp_path)
    pair = ca.issue("webhook")
    seen: list[Any] = []

    async def fn(data: Any, **_: Any) -> Any:
        seen.append(data)
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": data["request"]["uid"], "allowed": True},
        }

    server = app.WebhookServer(
        admit=fn, addr="127.0.0.1", port=0, path="/validate", certfile=str(pair.cert), pkeyfile=str(pair.key)
    )
    gen = server(kopf_engine_never_called)
    client_config = await gen.__anext__()
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    try:
        yield client_config["url"], client_ctx, seen
    finally:
        await gen.aclose()


def review(**overrides: Any) -> dict[str, Any]:
    request = {
        "uid": "7f0b2891-916f-4ed6-b7cd-27bff1815a8c",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "userInfo": {"username": "admin"},
        "object": {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}},
    }
    request.update(overrides)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"{nope", "not JSON"),
    ("a list", b"[]", "not a JSON object"),
    ("wrong kind", json.dumps({"kind": "Pod"}).encode(), "kind must be AdmissionReview"),
    ("no request", json.dumps({"kind": "AdmissionReview"}).encode(), "request is missing"),
    (
        "no uid",
        json.dumps({"kind": "AdmissionReview", "request": {"resource": {}}}).encode(),
        "request.uid is missing",
    ),
    ("bad resource", json.dumps(review(resource="pods")).encode(), "request.resource"),
    ("no object", json.dumps(review(object=None)).encode(), "request.object is missing"),
    ("binary", bytes(range(256)), "not JSON"),
    # Hostile bodies (issue 16): a parser's recursion, a shape that explodes in memory, a uid we echo.
    ("nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    ("nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    ("millions of objects", b"[" + b"{}," * 2_000_000 + b"{}]", "JSON objects and arrays"),
    ("uid not a string", json.dumps(review(uid=[[1]])).encode(), "request.uid must be a string"),
    ("over 8 MiB", b'{"kind": "AdmissionReview", "x": "' + b"a" * (8 * 1024 * 1024) + b'"}', "larger than"),
]


@pytest.mark.parametrize(("case", "body", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_review_gets_400_with_a_reason(
    webhook_url: tuple[str, ssl.SSLContext, list[Any]], case: str, body: bytes, expected: str
) -> None:
    url, ctx, seen = webhook_url
    async with aiohttp.ClientSession() as session, session.post(f"{url}/pods", data=body, ssl=ctx) as resp:
        assert resp.status == 400, case
        assert expected in (await resp.json())["error"]
    assert seen == []  # never reached the handlers


async def test_a_review_the_handler_chokes_on_is_admitted_not_a_500(tmp_path: Path) -> None:
    # Keys all there, values of the wrong types: whatever breaks inside is answered fail-open.
    ca = TestCA(tmp_path)
    pair = ca.issue("webhook")

    async def choke(data: Any, **_: Any) -> Any:
        return data["request"]["object"]["spec"]["containers"][0]["image"]  # spec is 5: TypeError

    server = app.WebhookServer(
        admit=choke,
        addr="127.0.0.1",
        port=0,
        path="/validate",
        certfile=str(pair.cert),
        pkeyfile=str(pair.key),
    )
    gen = server(kopf_engine_never_called)
    url = (await gen.__anext__())["url"]
    body = review(object={"kind": "Pod", "metadata": "x", "spec": 5})
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/pods", json=body, ssl=ssl.create_default_context(cafile=str(ca.cert_path))
            ) as resp,
        ):
            assert resp.status == 200
            answer = (await resp.json())["response"]
    finally:
        await gen.aclose()
    assert answer["allowed"] is True
    assert answer["uid"] == body["request"]["uid"]
    assert "could not judge" in answer["warnings"][0]


async def test_well_formed_review_reaches_the_handlers(
    webhook_url: tuple[str, ssl.SSLContext, list[Any]],
) -> None:
    url, ctx, seen = webhook_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/pods", json=review(), ssl=ctx) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["response"]["allowed"] is True
    assert len(seen) == 1


async def test_a_review_of_a_large_object_is_read_whole(
    webhook_url: tuple[str, ssl.SSLContext, list[Any]],
) -> None:
    # An UPDATE of a big pod: object and oldObject, 1.5 MiB each (etcd's object limit).
    big = {"kind": "Pod", "metadata": {"name": "p", "annotations": {"a": "x" * 1_500_000}}, "spec": {}}
    body = review(operation="UPDATE", object=big, oldObject=big)
    url, ctx, seen = webhook_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/pods", json=body, ssl=ctx) as resp,
    ):
        assert resp.status == 200
    assert len(seen) == 1


async def test_unknown_webhook_path_is_404(webhook_url: tuple[str, ssl.SSLContext, list[Any]]) -> None:
    url, ctx, seen = webhook_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/mutate", json=review(), ssl=ctx) as resp,
    ):
        assert resp.status == 404
        assert "/validate/mutate" in (await resp.json())["error"]
    assert seen == []


async def test_server_keeps_serving_after_garbage(webhook_url: tuple[str, ssl.SSLContext, list[Any]]) -> None:
    url, ctx, _seen = webhook_url
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *[session.post(f"{url}/pods", data=b"\x00" * 1000, ssl=ctx) for _ in range(20)]
        )
        assert {r.status for r in results} == {400}
        async with session.post(f"{url}/pods", json=review(), ssl=ctx) as resp:
            assert resp.status == 200


async def test_listening_is_set_only_once_the_port_accepts_connections(tmp_path: Path) -> None:
    pair = TestCA(tmp_path).issue("webhook")

    async def fn(data: Any, **_: Any) -> Any:
        return {}

    server = app.WebhookServer(
        admit=fn, addr="127.0.0.1", port=0, path="/validate", certfile=str(pair.cert), pkeyfile=str(pair.key)
    )
    assert not server.listening.is_set()
    gen = server(kopf_engine_never_called)
    config = await gen.__anext__()
    try:
        assert server.listening.is_set()
        port = int(config["url"].rsplit(":", 1)[1].split("/", 1)[0])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    finally:
        await gen.aclose()


def test_the_operator_runs_on_uvloop_where_it_is_installed() -> None:
    # pyproject installs uvloop everywhere but 32-bit ARM; there, asyncio's loop is the fallback.
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed on this platform (32-bit ARM)")
    assert app.event_loop_runner() is uvloop.run


def test_watch_retries_are_short_capped_jittered_and_outlast_a_restart() -> None:
    # The schedule kopf's watches reconnect on after the apiserver went away (issue 16).
    low = list(app.Backoffs(rng=lambda: 0.0))
    high = list(app.Backoffs(rng=lambda: 1.0))
    assert len(app.Backoffs()) == len(low) == len(high)
    assert high[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(high) == 4.0  # never the 13 s or 21 s steps
    assert low[:4] == [0.25, 0.5, 1.0, 2.0]  # jitter: between half and all of each step
    assert sum(low) > 120  # still retrying minutes later: kopf's watcher must not give up and die
    fresh = app.Backoffs()
    assert list(fresh) != list(fresh)  # a new draw for every request, not one shared sequence


def test_kopf_settings_for_watches() -> None:
    import kopf

    settings = kopf.OperatorSettings()
    app.configure_watches(settings)
    assert isinstance(settings.networking.error_backoffs, app.Backoffs)
    assert settings.watching.connect_timeout == settings.networking.connect_timeout == 5
    assert settings.watching.server_timeout == 300


# --- the node map and namespace labels, confirmed against the apiserver (issue 16) ----------------


class FakeLister:
    """The two lists `resync_cluster_state` asks for; `during` runs while a list is "in flight"."""

    def __init__(self, nodes: list[dict[str, Any]], namespaces: list[dict[str, Any]]) -> None:
        self.items = {"/api/v1/nodes": nodes, "/api/v1/namespaces": namespaces}
        self.down = False
        self.during: Any = None

    async def request(self, method: str, path: str, **_: Any) -> Any:
        if self.down:
            raise ConnectionRefusedError("connect call failed ('127.0.0.1', 6443)")
        if self.during is not None:
            self.during()
        return {"items": self.items[path]}


def _node(name: str, arch: str = "arm64") -> dict[str, Any]:
    from tests.harness.cluster import FakeNode

    return FakeNode(name, arch).manifest("v1.36.3")


def _namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def _context() -> Any:
    from archaudit.context import Context, NodeMap

    return Context(settings=config.Settings(), resolver=None, nodes=NodeMap(), credentials=None, metrics=None)  # type: ignore[arg-type]


async def test_resync_repairs_what_the_watches_missed_and_confirms() -> None:
    ctx = _context()
    ctx.nodes.replace_all([_node("gone"), _node("kept")])
    ctx.namespaces.update({"old": {}, "shop": {"archaudit.io/mode": "enforce"}})
    lister = FakeLister(
        [_node("kept"), _node("new", "amd64")], [_namespace("shop", **{"archaudit.io/mode": "warn"})]
    )
    assert await app.resync_cluster_state(lister, ctx)  # type: ignore[arg-type]
    assert sorted(n.name for n in ctx.nodes.all()) == ["kept", "new"]  # a deletion no event announced
    assert ctx.namespaces == {"shop": {"archaudit.io/mode": "warn"}}
    assert ctx.freshness.confirming
    assert ctx.freshness.problem() is None


async def test_resync_never_undoes_a_watch_event_newer_than_its_lists() -> None:
    ctx = _context()
    ctx.nodes.replace_all([_node("a")])
    lister = FakeLister([_node("a")], [])
    # The node watch delivers "b" while the lists are in flight: the older list must not remove it.
    lister.during = lambda: ctx.nodes.upsert(_node("b"))
    assert await app.resync_cluster_state(lister, ctx)  # type: ignore[arg-type]
    assert ctx.nodes.get("b") is not None


async def test_readiness_tells_the_truth_when_the_apiserver_is_gone() -> None:
    from archaudit.context import StateFreshness

    now = [1000.0]
    ctx = _context()
    ctx.freshness = StateFreshness(stale_after=30, clock=lambda: now[0])
    ctx.nodes.replace_all([_node("a")])
    ctx.certificate_loaded.set()
    server = app.WebhookServer(admit=lambda *a: None, addr="127.0.0.1", port=0, path="/validate")  # type: ignore[arg-type, return-value]
    server.listening.set()
    rt = app.Runtime(
        settings=ctx.settings,
        api=None,
        ctx=ctx,
        metrics=None,
        elector=None,
        stop=asyncio.Event(),
        server=server,
    )  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not listed yet"):
        rt.ready()
    ctx.freshness.confirm()
    assert rt.ready()
    lister = FakeLister([], [])
    lister.down = True
    assert not await app.resync_cluster_state(lister, ctx)  # type: ignore[arg-type]
    assert not ctx.freshness.confirming  # reviews from now on are counted as answered on stale state
    now[0] += 29
    assert rt.ready()  # within the bound: still deciding on what it last knew
    now[0] += 2
    with pytest.raises(RuntimeError, match=r"not confirmed for 31s \(bound 30s\): .*connect call failed"):
        rt.ready()
    assert len(ctx.nodes) == 1  # what it knew is kept, not dropped


async def test_a_review_that_does_not_fit_in_memory_is_dropped_counted_and_the_server_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("webhook")
    dropped: list[str] = []

    async def fn(data: Any, **_: Any) -> Any:
        return {"response": {"uid": data["request"]["uid"], "allowed": True}}

    server = app.WebhookServer(
        admit=fn,
        on_drop=dropped.append,
        addr="127.0.0.1",
        port=0,
        path="/validate",
        certfile=str(pair.cert),
        pkeyfile=str(pair.key),
    )
    gen = server(kopf_engine_never_called)
    url = (await gen.__anext__())["url"]
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    real_loads = json.loads

    def out_of_memory(body: Any, **kwargs: Any) -> Any:
        if isinstance(body, bytes) and b"huge" in body:
            raise MemoryError
        return real_loads(body, **kwargs)

    monkeypatch.setattr(app.json, "loads", out_of_memory)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{url}/pods", data=json.dumps(review(name="huge")).encode(), ssl=ctx
            ) as resp:
                assert resp.status == 503  # fail-open for the apiserver, like archaudit being down
            async with session.post(f"{url}/pods", json=review(), ssl=ctx) as resp:
                assert resp.status == 200  # the next review is judged as ever
    finally:
        await gen.aclose()
    assert dropped == ["memory"]


def test_debug_logging_never_includes_the_kubernetes_clients_response_bodies() -> None:
    """kubernetes.client.rest logs whole response bodies at DEBUG: Secrets with pull credentials."""
    import logging

    names = ("", "aiohttp.access", "kopf", "kubernetes.client.rest")
    levels = {name: logging.getLogger(name).level for name in names}
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        app.configure_logging(config.LogSettings(level="DEBUG"))
        assert root.isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("kubernetes.client.rest").isEnabledFor(logging.DEBUG)
    finally:  # leave logging as pytest set it up
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_a_new_certificate_is_served_without_closing_the_port(tmp_path: Path) -> None:
    """Self-TLS rotation and changed files (cert-manager) load into the live TLS context: new
    handshakes get the new chain while open connections carry on (kopf itself would restart the
    server: the port closed meanwhile, and every open connection cut)."""
    from archaudit.adapters import certs

    async def fn(data: Any, **_: Any) -> Any:
        return {"response": {"uid": data["request"]["uid"], "allowed": True}}

    first = certs.issue(["127.0.0.1"])
    cert, key, _ca = certs.write_files(first, tmp_path)
    server = app.WebhookServer(
        admit=fn,
        addr="127.0.0.1",
        port=0,
        path="/validate",
        certfile=str(cert),
        pkeyfile=str(key),
        file_check_interval=0.05,
    )
    gen = server(kopf_engine_never_called)
    url = (await gen.__anext__())["url"]
    # Resumed at once, as kopf's admission engine does: the server then waits for changed files.
    serving = asyncio.ensure_future(gen.__anext__())

    contexts: dict[bytes, ssl.SSLContext] = {}

    def trusting(material: certs.TLSMaterial) -> ssl.SSLContext:
        # One context per CA: aiohttp pools connections by it, so the kept connection is reused.
        found = contexts.get(material.ca_pem)
        if found is None:
            found = contexts[material.ca_pem] = ssl.create_default_context(cadata=material.ca_pem.decode())
        return found

    async def answered(session: aiohttp.ClientSession, material: certs.TLSMaterial) -> bool:
        try:
            async with session.post(f"{url}/pods", json=review(), ssl=trusting(material)) as resp:
                return resp.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    try:
        async with aiohttp.ClientSession() as kept:  # one keep-alive connection through it all
            assert await answered(kept, first)
            second = certs.issue(["127.0.0.1"])
            certs.write_files(second, tmp_path)
            server.reload()  # what the rotation loop does after writing the files
            async with aiohttp.ClientSession() as fresh:
                assert await answered(fresh, second)
            async with aiohttp.ClientSession() as stale:
                assert not await answered(stale, first)  # a new handshake gets the new chain only
            third = certs.issue(["127.0.0.1"])
            certs.write_files(third, tmp_path)  # no reload call: the file check notices
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                async with aiohttp.ClientSession() as fresh:
                    if await answered(fresh, third):
                        break
                assert asyncio.get_running_loop().time() < deadline, "changed files never served"
                await asyncio.sleep(0.05)  # poll interval of a bounded wait
            # Still the first connection: had the server restarted, this would need a new handshake,
            # which the first CA no longer passes.
            assert await answered(kept, first)
            assert kept.connector is not None
            assert len(kept.connector._conns) == 1  # type: ignore[attr-defined]
            assert not serving.done()  # kopf's loop never came round to restart the server
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await serving
        await gen.aclose()


def test_certificate_lifetimes_that_cannot_work_stop_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    # Renewed earlier than it lives: every check would renew it again.
    assert (
        app.main(["--webhook-cert-validity-seconds", "60", "--webhook-cert-renew-before-seconds", "60"]) == 2
    )
    assert "renew_before < cert validity" in capsys.readouterr().err
