"""WWW-Authenticate parsing, challenge choice, token answers and the token cache (pure parts of auth.py).

The token flow itself (POST, GET fallback, anonymous) runs against the real registry and the test
token issuer in tests/integration/test_registry_auth.py.
"""

from __future__ import annotations

import base64
import json

import pytest

from archaudit.core.auth import (
    DEFAULT_TOKEN_LIFETIME,
    Challenge,
    Token,
    TokenCache,
    basic_authorization,
    parse_www_authenticate,
    pick_challenge,
    pull_scope,
    token_from_response,
)
from archaudit.core.credentials import Credential

DOCKER_HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/busybox:pull"'
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            DOCKER_HUB,
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        # quay.io style: two challenges on one line
        (
            'Basic realm="Quay", Bearer realm="https://quay.io/v2/auth",service="quay.io"',
            [
                ("basic", {"realm": "Quay"}),
                ("bearer", {"realm": "https://quay.io/v2/auth", "service": "quay.io"}),
            ],
        ),
        # scheme and parameter names are case-insensitive; spaces around "=" and after commas
        (
            'BEARER Realm = "https://r.example/token" ,  Service=reg.example',
            [("bearer", {"realm": "https://r.example/token", "service": "reg.example"})],
        ),
        # escapes in quoted strings; commas inside quotes do not split
        (
            r'Bearer realm="https://r.example/t", scope="repository:a/b:pull,push", error="say \"no\""',
            [
                (
                    "bearer",
                    {
                        "realm": "https://r.example/t",
                        "scope": "repository:a/b:pull,push",
                        "error": 'say "no"',
                    },
                )
            ],
        ),
        # GitLab's literal service name; ACR's realm path
        (
            'Bearer realm="https://gitlab.example.com/jwt/auth",service="container_registry"',
            [("bearer", {"realm": "https://gitlab.example.com/jwt/auth", "service": "container_registry"})],
        ),
        ("", []),
        ("   ,  ,", []),
        ("Basic", [("basic", {})]),
        ('Bearer realm="unterminated', [("bearer", {"realm": "unterminated"})]),
        # the first occurrence of a repeated parameter wins
        ('Bearer realm="a", realm="b"', [("bearer", {"realm": "a"})]),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, dict(c.params)) for c in parse_www_authenticate(header)]
    assert got == expected


def test_token68_then_another_challenge() -> None:
    got = parse_www_authenticate('Negotiate a87421000492aa874209af8bc028==, Basic realm="x"')
    assert [(c.scheme, c.token68, dict(c.params)) for c in got] == [
        ("negotiate", "a87421000492aa874209af8bc028==", {}),
        ("basic", "", {"realm": "x"}),
    ]


@pytest.mark.parametrize(
    "header",
    ['"', "=", "==,==", '\\"', "Bearer ====", 'Bearer realm="x",,,=,"', "\x00\x01", 'Basic realm="\\'],
)
def test_parse_never_raises_on_garbage(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert challenge.scheme == challenge.scheme.lower()


@pytest.mark.parametrize(
    ("header", "scheme"),
    [
        ('Basic realm="Quay", Bearer realm="https://quay.io/v2/auth"', "bearer"),
        ('Bearer realm="https://quay.io/v2/auth", Basic realm="Quay"', "bearer"),
        ('Basic realm="x"', "basic"),
        ('Bearer service="no-realm", Basic realm="x"', "basic"),  # a Bearer without realm is unusable
        ('Negotiate abc=, Digest realm="x"', None),
        ("", None),
    ],
)
def test_pick_prefers_bearer(header: str, scheme: str | None) -> None:
    chosen = pick_challenge(parse_www_authenticate(header))
    assert (chosen.scheme if chosen else None) == scheme


def test_basic_authorization_splits_nothing() -> None:
    value = basic_authorization(Credential("user", "pa:ss word"))
    assert value.startswith("Basic ")
    assert base64.b64decode(value[6:]).decode() == "user:pa:ss word"


def test_pull_scope() -> None:
    assert pull_scope("library/busybox") == "repository:library/busybox:pull"


@pytest.mark.parametrize(
    ("answer", "value", "lifetime"),
    [
        ({"token": "t", "access_token": "a", "expires_in": 300}, "a", 300),  # access_token wins
        ({"token": "t", "expires_in": 120}, "t", 120),
        ({"access_token": "a"}, "a", DEFAULT_TOKEN_LIFETIME),  # no expires_in: 60 s (token spec)
        ({"token": "t", "expires_in": "soon"}, "t", DEFAULT_TOKEN_LIFETIME),
        ({"token": "t", "expires_in": -5}, "t", DEFAULT_TOKEN_LIFETIME),
        ({"access_token": "", "token": "t", "expires_in": 30}, "t", 30),
    ],
)
def test_token_from_response(answer: dict[str, object], value: str, lifetime: float) -> None:
    token = token_from_response(json.dumps(answer).encode(), now=1000.0)
    assert token.value == value
    # refreshed a few seconds early, never later than the issuer said
    assert 1000.0 < token.expires_at <= 1000.0 + lifetime
    assert token.expires_at >= 1000.0 + lifetime - 5


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"token": 5}', b"\xff"])
def test_token_from_response_refuses(body: bytes) -> None:
    with pytest.raises(ValueError, match="token"):
        token_from_response(body, now=0.0)


def test_token_cache_expiry_and_bound() -> None:
    cache = TokenCache(max_entries=2)
    k1, k2, k3 = (("realm", "svc", f"repository:r{i}:pull", "") for i in range(3))
    cache.put(k1, Token("one", expires_at=100.0))
    assert cache.get(k1, now=99.0) == Token("one", 100.0)
    assert cache.get(k1, now=100.0) is None  # expired and forgotten
    assert len(cache) == 0
    cache.put(k1, Token("one", 500.0))
    cache.put(k2, Token("two", 500.0))
    cache.get(k1, now=0.0)  # k1 recently used: k2 is the one to go
    cache.put(k3, Token("three", 500.0))
    assert cache.get(k2, now=0.0) is None
    assert cache.get(k1, now=0.0) is not None
    assert cache.get(k3, now=0.0) is not None
    cache.drop(k1)
    assert cache.get(k1, now=0.0) is None


def test_token_cache_keys_include_identity() -> None:
    cache = TokenCache()
    anonymous = ("realm", "svc", "repository:r:pull", "")
    alice = ("realm", "svc", "repository:r:pull", Credential("alice", "pw").identity)
    cache.put(alice, Token("alice-token", 500.0))
    assert cache.get(anonymous, now=0.0) is None


def test_challenge_realm_property() -> None:
    assert Challenge("bearer", {"realm": "https://x/token"}).realm == "https://x/token"
    assert Challenge("basic").realm == ""
