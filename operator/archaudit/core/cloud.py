"""Which registries a pod's cloud identity can log in to, and what the token services answer.

On EKS, GKE and AKS the kubelet pulls from the cloud's own registry with a credential provider
(`ecr-credential-provider`, the GCP and ACR providers), not with a pull secret. archaudit runs as a pod
and has no such plugin, so it asks the same token services with the pod's own workload identity. Two
decisions here must match the kubelet's, or archaudit would judge a different set of images than the
node can pull: which hosts a provider claims (the provider's match pattern), and what is sent to the
registry (the user name each provider's registry expects with its token).

The rest is what every provider shares: how long a token may be reused (half of what is left of its
life, so it is renewed long before the registry would refuse it), and how an answer that cannot be
read is reported (by the source and the cause, never with the token).

This module contains no I/O: the adapters (archaudit.adapters.cloud) do the requests and hand the
bytes and timestamps here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from archaudit.core.credentials import Credential

__all__ = [
    "ACR_USERNAME",
    "GCP_USERNAME",
    "PROVIDERS",
    "CloudRegistry",
    "CloudToken",
    "acr_refresh_token",
    "aws_error",
    "azure_access_token",
    "azure_error",
    "cache_until",
    "ecr_token",
    "gcp_token",
    "match",
    "parse_providers",
]

AWS, GCP, AZURE = "aws", "gcp", "azure"
PROVIDERS = (AWS, GCP, AZURE)

# What each registry expects as the user name beside its token.
ECR_USERNAME = "AWS"
GCP_USERNAME = "oauth2accesstoken"
ACR_USERNAME = "00000000-0000-0000-0000-000000000000"  # ACR's "this password is a refresh token"

# ecr-credential-provider's pattern: account, "-fips" for FIPS endpoints, region, and the China partition.
_ECR = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?P<fips>-fips)?\.(?P<region>[a-z0-9][a-z0-9-]*)"
    r"\.amazonaws\.com(?P<cn>\.cn)?$"
)
# One DNS label before the suffix: "us-docker.pkg.dev", "europe-west1-docker.pkg.dev", "eu.gcr.io".
_GAR = re.compile(r"^[a-z0-9][a-z0-9-]*-docker\.pkg\.dev$")
_GCR = re.compile(r"^(?:[a-z0-9][a-z0-9-]*\.)?gcr\.io$")
_ACR = re.compile(r"^[a-z0-9][a-z0-9-]*\.azurecr\.(?P<cloud>io|cn|us)$")

# The Azure Resource Manager audience of each Azure cloud: the AAD token ACR's exchange accepts.
_AZURE_SCOPES = {
    "io": "https://management.azure.com/.default",
    "cn": "https://management.chinacloudapi.cn/.default",
    "us": "https://management.usgovcloudapi.net/.default",
}

# ACR does not say how long a refresh token lasts when it is not a JWT; its documented life is 3 hours.
_ACR_DEFAULT_LIFETIME = 3 * 3600.0


@dataclass(frozen=True)
class CloudRegistry:
    """A registry host one provider claims, with what its token request needs."""

    provider: str  # aws | gcp | azure
    host: str
    region: str = ""  # ECR: the region whose GetAuthorizationToken serves this registry
    account: str = ""  # ECR: the registry's account
    fips: bool = False  # ECR: reached through the FIPS endpoint
    scope: str = ""  # ACR: the AAD scope to exchange

    @property
    def source(self) -> str:
        """How messages name the credential source."""
        return {AWS: "ECR", GCP: "GCP metadata server", AZURE: "Azure workload identity"}[self.provider]


def match(host: str) -> CloudRegistry | None:
    """The provider that claims `host` (a registry as image references name it), or None.

    A host with a port is never a cloud registry: the providers' patterns have none, and matching one
    would send a cloud token to whatever listens there.
    """
    name = host.lower()
    if ":" in name:
        return None
    ecr = _ECR.match(name)
    if ecr is not None:
        return CloudRegistry(AWS, name, region=ecr["region"], account=ecr["account"], fips=bool(ecr["fips"]))
    if _GAR.match(name) or _GCR.match(name):
        return CloudRegistry(GCP, name)
    acr = _ACR.match(name)
    if acr is not None:
        return CloudRegistry(AZURE, name, scope=_AZURE_SCOPES[acr["cloud"]])
    return None


def parse_providers(names: Iterable[str]) -> frozenset[str]:
    """The enabled providers from configuration ("aws", "gcp", "azure"); anything else is an error."""
    wanted = {n.strip().lower() for n in names if n.strip()}
    unknown = sorted(wanted - set(PROVIDERS))
    if unknown:
        raise ValueError(f"unknown cloud credential source(s) {unknown}: use {', '.join(PROVIDERS)}")
    return frozenset(wanted)


@dataclass(frozen=True, repr=False)
class CloudToken:
    """A registry credential from a cloud identity and when it stops being valid (Unix time)."""

    credential: Credential
    expires_at: float

    def __repr__(self) -> str:
        return f"CloudToken({self.credential.identity}, expires_at={self.expires_at:.0f})"


def cache_until(token: CloudToken, now: float) -> float | None:
    """Until when `token` may be reused: half its remaining life; None when it is already expired.

    Half, as the kubelet's providers do, so that a token is renewed while the old one still works
    and a slow token service never leaves a registry without one. An expired token is not kept: it is
    used for the request in hand (the registry, not our clock, decides whether it still works) and
    asked for again the next time.
    """
    remaining = token.expires_at - now
    if remaining <= 0:
        return None
    return now + remaining / 2


def ecr_token(authorization_token: str, expires_at: dt.datetime | float) -> CloudToken:
    """GetAuthorizationToken's `authorizationToken` (base64 "AWS:<password>") as a credential."""
    try:
        decoded = base64.b64decode(authorization_token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("ECR GetAuthorizationToken: the token is not base64") from None
    username, colon, password = decoded.partition(":")
    if not colon or not password:
        raise ValueError("ECR GetAuthorizationToken: the token is not user:password")
    when = expires_at.timestamp() if isinstance(expires_at, dt.datetime) else float(expires_at)
    return CloudToken(Credential(username or ECR_USERNAME, password), when)


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: the answer is not a JSON object")
    return doc


def _lifetime(doc: dict[str, object], what: str) -> float:
    value = doc.get("expires_in")
    if isinstance(value, str) and value.isdigit():  # AAD v1 endpoints send it as a string
        value = int(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what}: the answer has no expires_in")
    return float(value)


def _token_field(doc: dict[str, object], field: str, what: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: the answer has no {field}")
    return value


def gcp_token(body: bytes, now: float) -> CloudToken:
    """The metadata server's `{"access_token", "expires_in", "token_type"}` as a registry credential."""
    what = "GCP metadata server"
    doc = _json_object(body, what)
    token = _token_field(doc, "access_token", what)
    return CloudToken(Credential(GCP_USERNAME, token), now + _lifetime(doc, what))


def azure_access_token(body: bytes, now: float) -> tuple[str, float]:
    """An AAD token endpoint's answer: (access token, expiry)."""
    what = "Azure AD token"
    doc = _json_object(body, what)
    return _token_field(doc, "access_token", what), now + _lifetime(doc, what)


def azure_error(body: bytes) -> str:
    """AAD's `error` and the first line of `error_description` (it names the AADSTS code), or ""."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    error = str(doc.get("error") or "")
    description = str(doc.get("error_description") or "").splitlines()
    return ": ".join(x for x in (error, description[0] if description else "") if x)[:300]


def acr_refresh_token(body: bytes, now: float) -> CloudToken:
    """ACR's /oauth2/exchange answer: the refresh token, valid until its JWT `exp` (else 3 hours)."""
    what = "ACR token exchange"
    doc = _json_object(body, what)
    token = _token_field(doc, "refresh_token", what)
    expires = _jwt_expiry(token)
    return CloudToken(Credential(ACR_USERNAME, token), expires or now + _ACR_DEFAULT_LIFETIME)


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (only to know when to ask again)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


def aws_error(code: str, message: str) -> str:
    """A botocore ClientError as "Code: message", also when an endpoint sent its error as XML."""
    text = message.strip()
    if text.startswith("<"):
        inner_code = re.search(r"<Code>([^<]*)</Code>", text)
        inner_message = re.search(r"<Message>([^<]*)</Message>", text)
        code = inner_code[1] if inner_code else code
        text = inner_message[1] if inner_message else re.sub(r"<[^>]*>", " ", text).strip()
    text = " ".join(text.split())
    return f"{code}: {text}"[:300] if text else code
