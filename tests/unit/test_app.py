"""`archaudit run` configuration and the webhook server's answer to malformed AdmissionReviews."""

from __future__ import annotations

import asyncio
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
