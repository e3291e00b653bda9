"""ACR: Azure workload identity -> an AAD access token -> the registry's refresh token.

The flow the ACR credential provider follows, in two form POSTs: the projected service account token
(AZURE_FEDERATED_TOKEN_FILE, re-read every time: the kubelet rotates it) is the client assertion of an
AAD client-credentials grant for the Azure Resource Manager audience; ACR's `/oauth2/exchange` turns
that access token into a refresh token, which the registry takes as the password of the user
00000000-0000-0000-0000-000000000000 in its ordinary token flow.

Plain aiohttp, not azure-identity + msal: two POSTs, and those libraries would bring requests, msal's
caches and a dozen modules for them. The environment variables are the ones the workload identity
webhook injects into a pod labelled azure.workload.identity/use=true.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp.abc

from archaudit.adapters.cloud import CloudCredentialError
from archaudit.adapters.cloud.http import TokenHttp
from archaudit.adapters.registry.safety import HostGuard
from archaudit.core import cloud
from archaudit.core.cloud import CloudRegistry, CloudToken
from archaudit.core.credentials import Credential

__all__ = ["AzureFetcher"]

_WHAT = "Azure workload identity"
_DEFAULT_AUTHORITY = "https://login.microsoftonline.com/"
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class _Identity:
    client_id: str
    tenant_id: str
    token_file: str
    authority: str


def _identity(env: Mapping[str, str]) -> _Identity:
    names = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE")
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise CloudCredentialError(
            f"{_WHAT}: {', '.join(missing)} not set (label the pod azure.workload.identity/use=true and "
            "annotate its service account with azure.workload.identity/client-id)"
        )
    authority = env.get("AZURE_AUTHORITY_HOST") or _DEFAULT_AUTHORITY
    return _Identity(
        env["AZURE_CLIENT_ID"], env["AZURE_TENANT_ID"], env["AZURE_FEDERATED_TOKEN_FILE"], authority
    )


class AzureFetcher:
    """A refresh token per ACR registry, from one AAD token per audience."""

    def __init__(
        self,
        exchange_url: str,
        *,
        timeout: float = 3.0,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        guard: HostGuard | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        """`guard` (and `resolver`, DNS under it) apply to the exchange when its URL names the image's
        registry (`{registry}`): that host comes from an image, not from configuration."""
        self.exchange_url = exchange_url
        self.env = os.environ if env is None else env
        self.clock = clock
        self.http = TokenHttp(timeout=timeout)
        to_registry = "{registry}" in exchange_url
        self.exchange_http = (
            TokenHttp(timeout=timeout, guard=guard or HostGuard(), resolver=resolver)
            if to_registry
            else self.http
        )
        self._aad: dict[str, tuple[str, float]] = {}  # scope -> (access token, reuse until)

    def cache_key(self, registry: CloudRegistry) -> str:
        return registry.host

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        identity = _identity(self.env)
        access_token = await self._aad_token(identity, registry.scope)
        url = self.exchange_url.replace("{registry}", registry.host)
        what = f"ACR token exchange at {registry.host}"
        status, body = await self.exchange_http.request(
            what,
            "POST",
            url,
            form={
                "grant_type": "access_token",
                "service": registry.host,
                "tenant": identity.tenant_id,
                "access_token": access_token,
            },
        )
        if status != 200:
            if status in (401, 403):
                self._aad.pop(registry.scope, None)  # maybe revoked: a fresh one next time
            raise CloudCredentialError(
                f"{what}: HTTP {status}"
                + (
                    " (does the identity have the AcrPull role on this registry?)"
                    if status in (401, 403)
                    else ""
                )
            )
        try:
            return cloud.acr_refresh_token(body, self.clock())
        except ValueError as e:
            raise CloudCredentialError(f"{e} ({registry.host})") from None

    async def _aad_token(self, identity: _Identity, scope: str) -> str:
        now = self.clock()
        cached = self._aad.get(scope)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            # a small file on a tmpfs the kubelet writes: not worth a thread
            assertion = Path(identity.token_file).read_text().strip()  # noqa: ASYNC240
        except OSError as e:
            raise CloudCredentialError(
                f"{_WHAT}: cannot read AZURE_FEDERATED_TOKEN_FILE {identity.token_file} ({e.strerror or e})"
            ) from None
        authority = identity.authority if identity.authority.endswith("/") else identity.authority + "/"
        url = urllib.parse.urljoin(authority, f"{urllib.parse.quote(identity.tenant_id)}/oauth2/v2.0/token")
        what = f"Azure AD token (tenant {identity.tenant_id}, client {identity.client_id})"
        status, body = await self.http.request(
            what,
            "POST",
            url,
            form={
                "grant_type": "client_credentials",
                "client_id": identity.client_id,
                "client_assertion_type": _ASSERTION_TYPE,
                "client_assertion": assertion,
                "scope": scope,
            },
        )
        if status != 200:
            cause = cloud.azure_error(body)
            raise CloudCredentialError(f"{what}: HTTP {status}" + (f": {cause}" if cause else ""))
        try:
            token, expires_at = cloud.azure_access_token(body, now)
        except ValueError as e:
            raise CloudCredentialError(str(e)) from None
        until = cloud.cache_until(CloudToken(Credential("", token), expires_at), now)
        if until is not None:
            self._aad[scope] = (token, until)
        return token

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.exchange_http.aclose()
