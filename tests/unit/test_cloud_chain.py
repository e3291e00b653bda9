"""adapters.cloud.CloudCredentials: the cloud step of the chain, over a scripted token service.

The token services themselves are exercised for real in tests/integration/test_cloud_credentials.py;
here a scripted `Fetcher` pins down the step's own decisions: which images it is asked for, caching
for half a token's life, an expired token used once, one request per registry at a time, failures
remembered briefly and explained in the `auth` message, the host guard before any token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from archaudit.adapters.cloud import NONE, CloudAnswer, CloudCredentialError, CloudCredentials
from archaudit.adapters.registry.safety import HostGuard
from archaudit.core.cloud import CloudRegistry, CloudToken
from archaudit.core.config import RegistrySettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.reference import parse

ECR_IMAGE = parse("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1")
OTHER_ECR = parse("210987654321.dkr.ecr.eu-west-1.amazonaws.com/app:1")
GAR_IMAGE = parse("us-docker.pkg.dev/proj/repo/app:1")
GCR_IMAGE = parse("gcr.io/proj/app:1")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Scripted:
    """Answers tokens valid for `life` seconds from the clock, or raises `error`."""

    clock: Clock
    life: float = 3600.0
    error: str | None = None
    per_registry: bool = True
    asked: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when a request is under way
    closed: bool = False

    def cache_key(self, registry: CloudRegistry) -> str:
        return registry.host if self.per_registry else "one"

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        self.asked.append(registry.host)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise CloudCredentialError(self.error)
        n = len(self.asked)
        return CloudToken(Credential("AWS", f"token-{n}"), self.clock() + self.life)

    async def aclose(self) -> None:
        self.closed = True


def _chain(fetcher: Scripted, clock: Clock, **kwargs: object) -> CloudCredentials:
    return CloudCredentials({"aws": fetcher, "gcp": fetcher}, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_images_of_other_registries_get_nothing_without_io() -> None:
    clock = Clock()
    fetcher = Scripted(clock)
    chain = _chain(fetcher, clock)
    for text in ("nginx:1", "ghcr.io/o/r:1", "myreg.azurecr.io/x:1", "127.0.0.1:5000/x:1"):
        assert chain.peek(parse(text)) is NONE
        assert await chain.for_image(parse(text)) is NONE
    assert fetcher.asked == []  # azure is not enabled in this chain: no fetcher, no question


async def test_token_cached_for_half_its_life_then_refreshed() -> None:
    clock = Clock()
    fetcher = Scripted(clock, life=12 * 3600)
    chain = _chain(fetcher, clock)
    assert chain.peek(ECR_IMAGE) is None  # must be fetched
    first = await chain.for_image(ECR_IMAGE)
    assert first.credential == Credential("AWS", "token-1")
    clock.now += 6 * 3600 - 1
    assert chain.peek(ECR_IMAGE) == first
    assert await chain.for_image(ECR_IMAGE) == first
    assert fetcher.asked == [ECR_IMAGE.registry]
    clock.now += 2  # half its life is over: renewed while the old one would still work
    assert chain.peek(ECR_IMAGE) is None
    second = await chain.for_image(ECR_IMAGE)
    assert second.credential == Credential("AWS", "token-2")
    assert chain.fetches == 2


async def test_cached_per_registry_or_per_identity() -> None:
    clock = Clock()
    ecr = Scripted(clock)
    chain = _chain(ecr, clock)
    await chain.for_image(ECR_IMAGE)
    await chain.for_image(OTHER_ECR)
    await chain.for_image(ECR_IMAGE)
    assert ecr.asked == [ECR_IMAGE.registry, OTHER_ECR.registry]
    gcp = Scripted(clock, per_registry=False)
    one = CloudCredentials({"gcp": gcp}, clock=clock)
    await one.for_image(GAR_IMAGE)
    await one.for_image(GCR_IMAGE)
    assert gcp.asked == [GAR_IMAGE.registry]


async def test_an_expired_token_is_used_once_and_asked_for_again() -> None:
    clock = Clock()
    fetcher = Scripted(clock, life=-3600.0)  # as moto's: expired by date on arrival
    chain = _chain(fetcher, clock)
    first = await chain.for_image(ECR_IMAGE)
    assert first.credential == Credential("AWS", "token-1")
    assert chain.peek(ECR_IMAGE) is None  # not kept
    second = await chain.for_image(ECR_IMAGE)
    assert second.credential == Credential("AWS", "token-2")


async def test_one_request_per_registry_at_a_time() -> None:
    clock = Clock()
    gate = asyncio.Event()
    fetcher = Scripted(clock, gate=gate)
    chain = _chain(fetcher, clock)
    waiting = [asyncio.ensure_future(chain.for_image(ECR_IMAGE)) for _ in range(20)]
    # The request task is created by the first waiter and runs after every waiter's first step:
    # once it has started, all twenty are waiting on it.
    await fetcher.started.wait()
    gate.set()
    answers = await asyncio.gather(*waiting)
    assert {a.credential for a in answers} == {Credential("AWS", "token-1")}
    assert fetcher.asked == [ECR_IMAGE.registry]


async def test_a_caller_that_gives_up_does_not_cancel_the_request() -> None:
    clock = Clock()
    gate = asyncio.Event()
    fetcher = Scripted(clock, gate=gate)
    chain = _chain(fetcher, clock)
    impatient = asyncio.ensure_future(chain.for_image(ECR_IMAGE))
    await fetcher.started.wait()
    impatient.cancel()
    patient = asyncio.ensure_future(chain.for_image(ECR_IMAGE))
    gate.set()
    assert (await patient).credential == Credential("AWS", "token-1")
    assert impatient.cancelled()
    assert fetcher.asked == [ECR_IMAGE.registry]


async def test_failures_are_remembered_briefly_and_explain_auth_errors() -> None:
    clock = Clock()
    fetcher = Scripted(clock, error="ECR GetAuthorizationToken (us-east-1): AccessDenied: no")
    chain = _chain(fetcher, clock, failure_ttl=30.0)
    answer = await chain.for_image(ECR_IMAGE)
    assert answer == CloudAnswer(failure="ECR GetAuthorizationToken (us-east-1): AccessDenied: no")
    assert await chain.for_image(ECR_IMAGE) == answer
    assert chain.peek(ECR_IMAGE) == answer
    assert len(fetcher.asked) == 1
    clock.now += 31
    fetcher.error = None
    assert (await chain.for_image(ECR_IMAGE)).credential is not None
    assert len(fetcher.asked) == 2

    refused = ResolutionError(Reason.AUTH, "x: host refused access (HTTP 401) anonymously")
    explained = answer.explain(refused)
    assert explained.reason is Reason.AUTH
    assert explained.message.endswith("; ECR GetAuthorizationToken (us-east-1): AccessDenied: no")
    other = ResolutionError(Reason.NOT_FOUND, "x: no such tag")
    assert answer.explain(other) is other
    assert NONE.explain(refused) is refused


def test_after_puts_the_cloud_credential_last() -> None:
    secret = Credential("alice", "pw")
    token = Credential("AWS", "t")
    assert CloudAnswer(token).after([secret]) == [secret, token]
    assert CloudAnswer(token).after([token]) == [token]
    assert NONE.after([secret]) == [secret]


async def test_no_token_for_a_registry_the_guard_refuses() -> None:
    clock = Clock()
    fetcher = Scripted(clock)
    guard = HostGuard(deny=["*.amazonaws.com"])
    chain = _chain(fetcher, clock, guard=guard)
    assert await chain.for_image(ECR_IMAGE) is NONE
    assert fetcher.asked == []


async def test_from_settings_enables_what_configuration_names() -> None:
    chain = CloudCredentials.from_settings(RegistrySettings(cloud_credentials=("gcp",)))
    assert chain.providers == {"gcp"}
    none = CloudCredentials.from_settings(RegistrySettings(cloud_credentials=()))
    assert none.providers == frozenset()
    assert await none.for_image(ECR_IMAGE) is NONE
    with pytest.raises(ValueError, match="unknown cloud credential"):
        CloudCredentials.from_settings(RegistrySettings(cloud_credentials=("aws", "ibm")))
    await chain.aclose()


async def test_aclose_closes_every_fetcher() -> None:
    clock = Clock()
    fetcher = Scripted(clock)
    chain = _chain(fetcher, clock)
    await chain.aclose()
    assert fetcher.closed


async def test_without_botocore_ecr_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from archaudit.adapters.cloud.aws import EcrFetcher

    for name in [m for m in sys.modules if m == "botocore" or m.startswith("botocore.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "botocore", None)  # what an image without the aws extra has
    chain = CloudCredentials({"aws": EcrFetcher()})
    answer = await chain.for_image(ECR_IMAGE)
    assert answer == CloudAnswer(
        failure="ECR GetAuthorizationToken: botocore is not installed (install archaudit[aws])"
    )


@dataclass
class Broken:
    def cache_key(self, registry: CloudRegistry) -> str:
        return registry.host

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        raise KeyError("a secret-looking detail")

    async def aclose(self) -> None:
        return None


async def test_an_unexpected_error_is_a_failure_named_by_its_type() -> None:
    chain = CloudCredentials({"gcp": Broken()})
    answer = await chain.for_image(GAR_IMAGE)
    assert answer == CloudAnswer(failure="GCP metadata server: unexpected KeyError")
    assert chain.requests == {("gcp", "error"): 1}


def test_run_and_check_refuse_an_unknown_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from archaudit import app, cli

    monkeypatch.setenv("ARCHAUDIT_REGISTRY_CLOUD_CREDENTIALS", "aws,alibaba")
    assert app.main([]) == 2
    assert "unknown cloud credential source(s) ['alibaba']" in capsys.readouterr().err
    assert cli.main(["check", "ghcr.io/acme/api:1"]) == 2
    assert "unknown cloud credential source(s) ['alibaba']" in capsys.readouterr().err
