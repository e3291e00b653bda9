"""core.cloud: which hosts each provider claims, how long tokens live, what token answers mean."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from archaudit.core import cloud
from archaudit.core.cloud import CloudToken, cache_until, match, parse_providers
from archaudit.core.config import from_env
from archaudit.core.credentials import Credential


@pytest.mark.parametrize(
    ("host", "region", "account", "fips"),
    [
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "us-east-1", "123456789012", False),
        ("123456789012.dkr.ecr.eu-west-3.amazonaws.com", "eu-west-3", "123456789012", False),
        ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", "123456789012", True),
        ("123456789012.dkr.ecr-fips.us-east-2.amazonaws.com", "us-east-2", "123456789012", True),
        ("000000000000.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1", "000000000000", False),
        ("210987654321.dkr.ecr.cn-northwest-1.amazonaws.com.cn", "cn-northwest-1", "210987654321", False),
        ("123456789012.DKR.ECR.US-WEST-2.AMAZONAWS.COM", "us-west-2", "123456789012", False),
    ],
)
def test_ecr_hosts(host: str, region: str, account: str, fips: bool) -> None:
    found = match(host)
    assert found is not None
    assert (found.provider, found.region, found.account, found.fips) == ("aws", region, account, fips)
    assert found.host == host.lower()
    assert found.source == "ECR"


@pytest.mark.parametrize(
    "host",
    [
        "12345678901.dkr.ecr.us-east-1.amazonaws.com",  # 11 digits
        "1234567890123.dkr.ecr.us-east-1.amazonaws.com",  # 13 digits
        "abcdefghijkl.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",  # a port: never a cloud registry
        "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
        "evil.example/123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "x.123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.amazonaws.com",  # no region
        "123456789012.dkr.ecr-gov.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.us-east-1.amazonaws.co",
        "public.ecr.aws",  # ECR Public: Bearer, anonymous works, no GetAuthorizationToken
        "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn.evil",
        "ecr.us-east-1.amazonaws.com",
        "",
    ],
)
def test_not_ecr(host: str) -> None:
    found = match(host)
    assert found is None or found.provider != "aws"


@pytest.mark.parametrize(
    "host",
    [
        "gcr.io",
        "eu.gcr.io",
        "us.gcr.io",
        "asia.gcr.io",
        "marketplace.gcr.io",
        "us-docker.pkg.dev",
        "europe-west1-docker.pkg.dev",
        "us-central1-docker.pkg.dev",
        "GCR.IO",
    ],
)
def test_gcp_hosts(host: str) -> None:
    found = match(host)
    assert found is not None
    assert found.provider == "gcp"
    assert found.source == "GCP metadata server"


@pytest.mark.parametrize(
    "host",
    [
        "gcr.io:443",
        "a.b.gcr.io",  # one label only, as the provider matches
        "evilgcr.io",
        "gcr.io.evil.example",
        "pkg.dev",
        "docker.pkg.dev",
        "us-maven.pkg.dev",  # Artifact Registry, but not a Docker repository host
        "us.docker.pkg.dev",
        "a.us-docker.pkg.dev",
        "us-docker.pkg.dev.evil.example",
        "metadata.google.internal",
    ],
)
def test_not_gcp(host: str) -> None:
    found = match(host)
    assert found is None or found.provider != "gcp"


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("myregistry.azurecr.io", "https://management.azure.com/.default"),
        ("my-registry.azurecr.io", "https://management.azure.com/.default"),
        ("contoso.azurecr.cn", "https://management.chinacloudapi.cn/.default"),
        ("contoso.azurecr.us", "https://management.usgovcloudapi.net/.default"),
        ("MyRegistry.AzureCR.io", "https://management.azure.com/.default"),
    ],
)
def test_acr_hosts(host: str, scope: str) -> None:
    found = match(host)
    assert found is not None
    assert (found.provider, found.scope, found.host) == ("azure", scope, host.lower())


@pytest.mark.parametrize(
    "host",
    [
        "azurecr.io",
        "a.b.azurecr.io",
        "myregistry.azurecr.io:5000",
        "myregistry.azurecr.io.evil.example",
        "myregistry.azurecr.com",
        "myregistry.azurecr.de",
        "myregistry-azurecr.io",
        "docker.io",
        "ghcr.io",
        "localhost:5000",
        "127.0.0.1:5000",
        "169.254.169.254",
    ],
)
def test_not_acr(host: str) -> None:
    found = match(host)
    assert found is None or found.provider != "azure"


@pytest.mark.parametrize("host", ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "10.0.0.1:5000"])
def test_other_registries_are_nobodys(host: str) -> None:
    assert match(host) is None


def test_parse_providers() -> None:
    assert parse_providers(["aws", " GCP ", "azure"]) == {"aws", "gcp", "azure"}
    assert parse_providers([]) == frozenset()
    assert parse_providers([""]) == frozenset()
    with pytest.raises(ValueError, match="alibaba"):
        parse_providers(["aws", "alibaba"])


def test_config_default_all_and_empty_none() -> None:
    assert parse_providers(from_env({}).registry.cloud_credentials) == {"aws", "gcp", "azure"}
    env = {"ARCHAUDIT_REGISTRY_CLOUD_CREDENTIALS": ""}
    assert parse_providers(from_env(env).registry.cloud_credentials) == frozenset()
    env = {"ARCHAUDIT_REGISTRY_CLOUD_CREDENTIALS": "gcp"}
    assert from_env(env).registry.cloud_credentials == ("gcp",)
    env = {"ARCHAUDIT_REGISTRY_GCP_METADATA_URL": "http://127.0.0.1:1/token"}
    assert from_env(env).registry.gcp_metadata_url == "http://127.0.0.1:1/token"


def _token(expires_at: float) -> CloudToken:
    return CloudToken(Credential("AWS", "secret"), expires_at)


def test_cache_for_half_the_remaining_life() -> None:
    now = 1_000_000.0
    assert cache_until(_token(now + 12 * 3600), now) == now + 6 * 3600
    assert cache_until(_token(now + 60), now) == now + 30


@pytest.mark.parametrize("ago", [0.0, 1.0, 10 * 365 * 86400.0])
def test_an_expired_token_is_not_cached(ago: float) -> None:
    now = 1_000_000.0
    assert cache_until(_token(now - ago), now) is None


def test_ecr_token() -> None:
    raw = base64.b64encode(b"AWS:pass:with:colons").decode()
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    token = cloud.ecr_token(raw, when)
    assert token.credential == Credential("AWS", "pass:with:colons")
    assert token.expires_at == when.timestamp()
    assert "pass" not in repr(token)
    for bad in ("not base64!", base64.b64encode(b"nocolon").decode(), base64.b64encode(b"AWS:").decode()):
        with pytest.raises(ValueError, match="ECR GetAuthorizationToken") as info:
            cloud.ecr_token(bad, when)
        assert "nocolon" not in str(info.value)


def test_gcp_token() -> None:
    body = json.dumps({"access_token": "ya29.secret", "expires_in": 3599, "token_type": "Bearer"}).encode()
    token = cloud.gcp_token(body, 100.0)
    assert token.credential == Credential("oauth2accesstoken", "ya29.secret")
    assert token.expires_at == 3699.0
    for bad in (b"<html>", b"[]", b'{"expires_in": 10}', b'{"access_token": "x"}'):
        with pytest.raises(ValueError, match="GCP metadata server"):
            cloud.gcp_token(bad, 0.0)


def test_azure_access_token_and_error() -> None:
    assert cloud.azure_access_token(b'{"access_token": "eyJ", "expires_in": "3600"}', 10.0) == (
        "eyJ",
        3610.0,
    )
    body = json.dumps(
        {"error": "invalid_client", "error_description": "AADSTS700016: no app.\r\nTrace ID: 1"}
    ).encode()
    assert cloud.azure_error(body) == "invalid_client: AADSTS700016: no app."
    assert cloud.azure_error(b"<html>") == ""


def _jwt(claims: dict[str, object]) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.sig"


def test_acr_refresh_token_expiry_from_its_jwt() -> None:
    token = cloud.acr_refresh_token(json.dumps({"refresh_token": _jwt({"exp": 5000})}).encode(), 100.0)
    assert token.credential.username == "00000000-0000-0000-0000-000000000000"
    assert token.expires_at == 5000.0
    opaque = cloud.acr_refresh_token(b'{"refresh_token": "opaque"}', 100.0)
    assert opaque.expires_at == 100.0 + 3 * 3600
    with pytest.raises(ValueError, match="ACR token exchange"):
        cloud.acr_refresh_token(b"{}", 0.0)


def test_aws_error_json_and_xml() -> None:
    assert cloud.aws_error("AccessDeniedException", "User: arn:x is not authorized") == (
        "AccessDeniedException: User: arn:x is not authorized"
    )
    xml = (
        '<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: '
        "arn:aws:iam::1:user/ci is not authorized to perform: ecr:GetAuthorizationToken</Message>"
        "</Error></Errors></ErrorResponse>"
    )
    assert cloud.aws_error("403", xml) == (
        "AccessDenied: User: arn:aws:iam::1:user/ci is not authorized to perform: ecr:GetAuthorizationToken"
    )
    assert cloud.aws_error("Throttling", "") == "Throttling"
