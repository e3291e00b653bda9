"""ECR: `GetAuthorizationToken` with botocore's standard credential chain.

Why botocore and not a hand-written SigV4 client: the pod's AWS identity comes in several shapes
(IRSA's web identity token file + role, EKS Pod Identity's container credentials endpoint, plain
keys, a profile), each with its own refresh rules; botocore's chain is what every AWS tool and the
`ecr-credential-provider` itself follow, so archaudit finds the identity wherever the pod has it.

Why it is imported here, inside the call: it is an optional extra (`archaudit[aws]`), and importing it
costs some 20 MiB that a cluster without ECR images should not pay. The calls block, so they run in a
worker thread; one botocore session is shared (its credentials refresh themselves) and one client
per region is kept, both made under a lock, since botocore sessions are not thread-safe to build from.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from archaudit.adapters.cloud import CloudCredentialError
from archaudit.core import cloud
from archaudit.core.cloud import CloudRegistry, CloudToken

__all__ = ["EcrFetcher"]

_WHAT = "ECR GetAuthorizationToken"


class EcrFetcher:
    """The ECR token of one registry's region, from whatever identity botocore's chain finds."""

    def __init__(self, *, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[tuple[str, bool], Any] = {}

    def cache_key(self, registry: CloudRegistry) -> str:
        return registry.host

    async def fetch(self, registry: CloudRegistry) -> CloudToken:
        # Bounded here too: the credential chain's own requests (STS, the Pod Identity agent) have
        # botocore's longer timeouts, and every ECR image waits on this one request.
        budget = self.timeout * 3
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._fetch_now, registry), budget)
        except TimeoutError:
            raise CloudCredentialError(
                f"{_WHAT} ({registry.region}): no answer within {budget:g}s{_identity_hint()}"
            ) from None

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _client(self, registry: CloudRegistry) -> Any:
        import botocore.config
        import botocore.session

        # botocore logs request and response bodies at DEBUG, and these carry the STS keys and the ECR
        # token: whatever archaudit's own log level, botocore's stays at WARNING.
        botocore_log = logging.getLogger("botocore")
        botocore_log.setLevel(max(botocore_log.level, logging.WARNING))
        key = (registry.region, registry.fips)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if self._session is None:
                    self._session = botocore.session.get_session()
                config = botocore.config.Config(
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"max_attempts": 1},
                    use_fips_endpoint=registry.fips,
                    user_agent_extra="archaudit",
                )
                client = self._session.create_client("ecr", region_name=registry.region, config=config)
                self._clients[key] = client
            return client

    def _fetch_now(self, registry: CloudRegistry) -> CloudToken:
        try:
            import botocore.exceptions
        except ImportError:
            raise CloudCredentialError(
                f"{_WHAT}: botocore is not installed (install archaudit[aws])"
            ) from None
        where = f"{_WHAT} ({registry.region})"
        try:
            answer = self._client(registry).get_authorization_token()
        except botocore.exceptions.ClientError as e:
            error = e.response.get("Error", {})
            cause = cloud.aws_error(str(error.get("Code", "")), str(error.get("Message", "")))
            raise CloudCredentialError(f"{where}: {cause}{_identity_hint()}") from None
        except botocore.exceptions.NoCredentialsError:
            raise CloudCredentialError(
                f"{where}: no AWS credentials (give archaudit's service account an IAM role: IRSA or "
                "EKS Pod Identity)"
            ) from None
        except botocore.exceptions.BotoCoreError as e:
            raise CloudCredentialError(f"{where}: {type(e).__name__}: {e}"[:400]) from None
        data = answer.get("authorizationData") or []
        if not data:
            raise CloudCredentialError(f"{where}: the answer has no authorizationData")
        try:
            return cloud.ecr_token(data[0]["authorizationToken"], data[0]["expiresAt"])
        except (KeyError, TypeError, ValueError) as e:
            raise CloudCredentialError(f"{where}: unreadable answer ({e})") from None


def _identity_hint() -> str:
    """Which identity was used, when AWS's message does not say (a role ARN is not a secret)."""
    role = os.environ.get("AWS_ROLE_ARN")
    if role:
        return f" (role {role})"
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return " (EKS Pod Identity)"
    return ""
