"""Registry credentials from the pod's own cloud identity: ECR, Artifact Registry / GCR, ACR.

The kubelet pulls from a cloud's registry with a credential provider plugin after the pod's pull
secrets; archaudit cannot run that plugin (it needs the node's role and files on the host), so this
package asks the same token services with archaudit's own workload identity (IRSA or EKS Pod
Identity, GKE workload identity, Azure workload identity). `CloudCredentials` is that step of the
chain: for an image whose registry a provider claims (core.cloud.match) it answers one credential,
or why there is none.

    aws     GetAuthorizationToken through botocore's standard credential chain; botocore is an
            optional extra, imported on the first ECR image only and called in a worker thread
    gcp     the metadata server's access token (plain aiohttp)
    azure   the federated token -> an AAD token -> ACR's /oauth2/exchange refresh token (plain aiohttp)

The token endpoints are archaudit's configuration (and the SDK's environment), never taken from an
image name: the image only decides whether a provider is asked, by matching its pattern. Tokens are
cached per registry for half their remaining life, one request at a time per registry; failures are
remembered for a short while, so a cluster without that cloud's identity does not ask on every image.
Nothing here logs or formats a token: messages name the source and the cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from archaudit.adapters.registry.safety import HostGuard
from archaudit.core import cloud
from archaudit.core.cloud import CloudRegistry, CloudToken
from archaudit.core.config import RegistrySettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.reference import ImageReference

__all__ = ["NONE", "CloudAnswer", "CloudCredentialError", "CloudCredentials", "Fetcher"]

log = logging.getLogger(__name__)


class CloudCredentialError(Exception):
    """A token service refused or failed; the message names the source and the cause, no secret."""


class Fetcher(Protocol):
    """One provider's token request."""

    def cache_key(self, registry: CloudRegistry) -> str:
        """Registries that share a token share a key (one GCP token serves every GCP registry)."""

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        """A fresh token; raises CloudCredentialError."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class CloudAnswer:
    """The cloud step's answer for one image: a credential, or the reason there is none."""

    credential: Credential | None = None
    failure: str | None = None  # "ECR GetAuthorizationToken: AccessDenied: ..." (for the auth message)

    def after(self, credentials: Sequence[Credential]) -> Sequence[Credential]:
        """The chain so far (pull secrets) with this credential after it: the kubelet's order."""
        if self.credential is None or self.credential in credentials:
            return credentials
        return [*credentials, self.credential]

    def explain(self, error: ResolutionError) -> ResolutionError:
        """A refusal says why the cloud identity gave no credential: that is what there is to fix."""
        if error.reason is not Reason.AUTH or self.failure is None:
            return error
        return ResolutionError(Reason.AUTH, f"{error.message}; {self.failure}")


NONE = CloudAnswer()


@dataclass(frozen=True)
class _Cached:
    token: CloudToken
    until: float


@dataclass(frozen=True)
class _Failed:
    message: str
    until: float


class CloudCredentials:
    """The cloud identity step of the credential chain, for the providers configuration enables."""

    def __init__(
        self,
        fetchers: Mapping[str, Fetcher],
        *,
        guard: HostGuard | None = None,
        failure_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetchers = dict(fetchers)
        self.guard = guard
        self.failure_ttl = failure_ttl
        self.clock = clock  # wall time: token expiries are wall times
        # (source, ok|error) -> token requests made: metrics read it at scrape time (never the tokens)
        self.requests: dict[tuple[str, str], int] = {}
        self._tokens: dict[str, _Cached] = {}
        self._failures: dict[str, _Failed] = {}
        self._inflight: dict[str, asyncio.Task[CloudAnswer]] = {}

    @classmethod
    def from_settings(cls, settings: RegistrySettings, *, guard: HostGuard | None = None) -> CloudCredentials:
        """The sources `registry.cloud_credentials` names; the environment configures each one."""
        enabled = cloud.parse_providers(settings.cloud_credentials)
        if guard is None:
            guard = HostGuard(
                allow=settings.allow,
                deny=settings.deny,
                refuse_loopback=settings.refuse_loopback,
                refuse_private=settings.refuse_private,
            )
        fetchers: dict[str, Fetcher] = {}
        # Each provider module is imported only when enabled; botocore only at the first ECR image.
        if cloud.AWS in enabled:
            from archaudit.adapters.cloud.aws import EcrFetcher

            fetchers[cloud.AWS] = EcrFetcher(timeout=settings.cloud_timeout_seconds)
        if cloud.GCP in enabled:
            from archaudit.adapters.cloud.gcp import GcpFetcher

            fetchers[cloud.GCP] = GcpFetcher(
                settings.gcp_metadata_url, timeout=settings.cloud_timeout_seconds
            )
        if cloud.AZURE in enabled:
            from archaudit.adapters.cloud.azure import AzureFetcher

            fetchers[cloud.AZURE] = AzureFetcher(
                settings.azure_exchange_url, timeout=settings.cloud_timeout_seconds, guard=guard
            )
        return cls(fetchers, guard=guard, failure_ttl=settings.cloud_failure_ttl_seconds)

    @property
    def fetches(self) -> int:
        """Token requests made so far, whatever their result."""
        return sum(self.requests.values())

    @property
    def providers(self) -> frozenset[str]:
        return frozenset(self.fetchers)

    def _claim(self, ref: ImageReference) -> tuple[CloudRegistry, Fetcher] | None:
        registry = cloud.match(ref.registry)
        if registry is None:
            return None
        fetcher = self.fetchers.get(registry.provider)
        if fetcher is None:
            return None
        # A registry the host guard refuses gets no token: the client reports it refused anyway, and a
        # token must not be fetched (or sent) for a registry archaudit may not talk to.
        if self.guard is not None and self.guard.refusal(registry.host) is not None:
            return None
        return registry, fetcher

    def peek(self, ref: ImageReference) -> CloudAnswer | None:
        """The answer without I/O, or None when a token must be fetched (the warm admission path)."""
        claimed = self._claim(ref)
        if claimed is None:
            return NONE
        registry, fetcher = claimed
        return self._known(fetcher.cache_key(registry))

    def _known(self, key: str) -> CloudAnswer | None:
        now = self.clock()
        cached = self._tokens.get(key)
        if cached is not None and cached.until > now:
            return CloudAnswer(cached.token.credential)
        failed = self._failures.get(key)
        if failed is not None and failed.until > now:
            return CloudAnswer(failure=failed.message)
        return None

    async def for_image(self, ref: ImageReference) -> CloudAnswer:
        """The credential of the provider that claims `ref`'s registry, or why there is none."""
        claimed = self._claim(ref)
        if claimed is None:
            return NONE
        registry, fetcher = claimed
        key = fetcher.cache_key(registry)
        known = self._known(key)
        if known is not None:
            return known
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, registry, fetcher))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        # shielded: a review that gives up must not cancel the request the next review will need
        return await asyncio.shield(task)

    def _landed(self, key: str, task: asyncio.Task[CloudAnswer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left waiting for it

    async def _fetch(self, key: str, registry: CloudRegistry, fetcher: Fetcher) -> CloudAnswer:
        try:
            try:
                token = await fetcher.fetch(registry)
            except (CloudCredentialError, asyncio.CancelledError):
                raise
            except Exception as e:
                # A bug or an SDK surprise: named by its type only (its text might quote a request).
                raise CloudCredentialError(f"{registry.source}: unexpected {type(e).__name__}") from None
        except CloudCredentialError as e:
            self._count(registry.provider, "error")
            message = str(e)
            if key not in self._failures:
                log.warning("no cloud credentials for %s: %s", registry.host, message)
            self._failures[key] = _Failed(message, self.clock() + self.failure_ttl)
            self._tokens.pop(key, None)
            return CloudAnswer(failure=message)
        self._count(registry.provider, "ok")
        now = self.clock()
        if self._failures.pop(key, None) is not None:
            log.info("%s credentials for %s available again", registry.source, registry.host)
        until = cloud.cache_until(token, now)
        if until is None:
            # Expired on arrival (a clock behind the issuer's, or an issuer that says so): used for
            # this image, asked for again next time, never kept.
            log.warning(
                "%s gave a token for %s that expired %.0fs ago; using it once, not caching it",
                registry.source,
                registry.host,
                now - token.expires_at,
            )
            self._tokens.pop(key, None)
        else:
            self._tokens[key] = _Cached(token, until)
        return CloudAnswer(token.credential)

    def _count(self, source: str, result: str) -> None:
        self.requests[source, result] = self.requests.get((source, result), 0) + 1

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        for fetcher in self.fetchers.values():
            await fetcher.aclose()
