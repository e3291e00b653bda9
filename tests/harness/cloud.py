"""The cloud side of the cloud-credential tests, all on loopback.

- `Moto`: moto in server mode, the real ECR and STS APIs botocore talks to (GetAuthorizationToken,
  AssumeRoleWithWebIdentity), in a thread; `moto_with_iam()` starts another one in a process with
  IAM enforced, for AccessDenied.
- `PodIdentityAgent`: the EKS Pod Identity agent's container-credentials endpoint (the agent is a
  node daemon; this serves its documented JSON and checks the authorization token).
- `GcpMetadata`, `AzureIdentity`: small fakes of the GKE metadata server and of Azure AD + ACR's
  `/oauth2/exchange`. They are external cloud services that cannot run here; each checks what the
  real one checks (the Metadata-Flavor header; the client assertion, grant types and service) and
  records what it was sent.
- `LoopbackHosts`: test-only DNS for the registry client: the cloud registry names the tests use map
  to the real docker-registry's loopback port, and every other name fails, so no test can reach
  beyond 127.0.0.1 even when a flow falls back to another endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.abc
from aiohttp import web

from tests.harness.procs import Service, free_port, wait_until
from tests.harness.registry import BackgroundApp

ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ECR_ACCOUNT = "123456789012"
GAR_HOST = "europe-west1-docker.pkg.dev"
ACR_HOST = "archaudittest.azurecr.io"
ACR_USERNAME = "00000000-0000-0000-0000-000000000000"
GCP_USERNAME = "oauth2accesstoken"


class LoopbackHosts(aiohttp.abc.AbstractResolver):
    """Resolves the mapped names to 127.0.0.1:<port>; any other name is an error, never a lookup."""

    def __init__(self, mapping: Mapping[str, int]) -> None:
        self.mapping = {k.lower(): v for k, v in mapping.items()}
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        self.asked.append(host)
        target = self.mapping.get(host.lower())
        if target is None:
            raise OSError(f"{host} is not mapped to loopback (tests never leave 127.0.0.1)")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": target,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# AWS


class Moto:
    """moto's server in a thread of this process on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> Moto:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()


def ecr_password(endpoint: str, *, account: str = ECR_ACCOUNT, region: str = "us-east-1") -> str:
    """The password moto's GetAuthorizationToken hands out for `account`: what htpasswd must accept.

    Asked of moto itself (with throwaway keys), decoded from its `AWS:<password>` token.
    """
    import botocore.session

    session = botocore.session.Session()
    client = session.create_client(
        "ecr",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="AKIAHARNESS",
        aws_secret_access_key="harness-secret",
    )
    try:
        data = client.get_authorization_token(registryIds=[account])["authorizationData"][0]
    finally:
        client.close()
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    assert user == "AWS", user
    return password


@dataclass
class IamMoto:
    """moto in its own process with IAM enforced: credentials without a policy get AccessDenied."""

    service: Service
    url: str
    access_key: str
    secret_key: str

    def stop(self) -> None:
        self.service.stop()


def moto_with_iam(directory: Path) -> IamMoto:
    """A moto server enforcing IAM, with one user `ci` that may do nothing; its keys are returned.

    INITIAL_NO_AUTH_ACTION_COUNT=2 lets the two set-up calls (CreateUser, CreateAccessKey) through
    unsigned-by-policy; every later request is checked against IAM.
    """
    import botocore.session

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="2")
    service = Service(
        "moto-iam",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        directory,
        env=env,
    )
    service.start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(answers, timeout=60, what="moto (IAM enforced)", service=service)
    iam = botocore.session.Session().create_client(
        "iam",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIAHARNESS",
        aws_secret_access_key="harness-secret",
    )
    try:
        iam.create_user(UserName="ci")
        key = iam.create_access_key(UserName="ci")["AccessKey"]
    finally:
        iam.close()
    return IamMoto(service, url, key["AccessKeyId"], key["SecretAccessKey"])


@dataclass
class PodIdentityAgent:
    """The container-credentials endpoint of the EKS Pod Identity agent, on loopback."""

    authorization: str = field(default_factory=lambda: "pod-identity-" + uuid.uuid4().hex)
    access_key: str = "ASIAPODIDENTITY0001"
    secret_key: str = field(default_factory=lambda: "pod-identity-secret-" + uuid.uuid4().hex)
    session_token: str = field(default_factory=lambda: "pod-identity-session-" + uuid.uuid4().hex)
    requests: int = 0
    refused: int = 0
    _server: BackgroundApp | None = None

    async def _credentials(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.authorization:
            self.refused += 1
            return web.json_response({"message": "bad authorization token"}, status=401)
        self.requests += 1
        return web.json_response(
            {
                "AccessKeyId": self.access_key,
                "SecretAccessKey": self.secret_key,
                "Token": self.session_token,
                "AccountId": ECR_ACCOUNT,
                "Expiration": "2099-01-01T00:00:00Z",
            }
        )

    def start(self) -> PodIdentityAgent:
        app = web.Application()
        app.router.add_get("/v1/credentials", self._credentials)
        self._server = BackgroundApp(app, "pod-identity-agent").start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self._server.host}/v1/credentials"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


# --------------------------------------------------------------------------------------------------
# GCP


@dataclass
class GcpMetadata:
    """The GKE metadata server's token endpoint: refuses requests without `Metadata-Flavor: Google`."""

    token: str = field(default_factory=lambda: "ya29.test-" + uuid.uuid4().hex)
    expires_in: int = 3599
    status: int = 200
    requests: list[Mapping[str, str]] = field(default_factory=list)
    _server: BackgroundApp | None = None

    PATH = "/computeMetadata/v1/instance/service-accounts/default/token"

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        if self.status != 200:
            return web.Response(status=self.status, text="not found")
        return web.json_response(
            {"access_token": self.token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def start(self) -> GcpMetadata:
        app = web.Application()
        app.router.add_get(self.PATH, self._token)
        self._server = BackgroundApp(app, "gcp-metadata").start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self._server.host}{self.PATH}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


# --------------------------------------------------------------------------------------------------
# Azure


def _jwt(claims: Mapping[str, Any], *, header: Mapping[str, str] | None = None, sig: int = 32) -> str:
    def part(doc: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex[:sig]}"


def _refresh_token() -> str:
    # Real ones are long; the test registry's htpasswd (bcrypt) takes 72 bytes at most.
    token = _jwt({"exp": 4102444800}, header={"alg": "none"}, sig=12)
    assert len(token) <= 72, token
    return token


@dataclass
class AzureIdentity:
    """Azure AD's token endpoint and ACR's /oauth2/exchange, as the ACR flow meets them."""

    tenant: str = "72f988bf-0000-0000-0000-000000000001"
    client_id: str = "1b2c3d4e-0000-0000-0000-000000000002"
    federated_token: str = field(default_factory=lambda: _jwt({"sub": "system:serviceaccount:a:b"}))
    access_token: str = field(default_factory=lambda: _jwt({"aud": "https://management.azure.com"}))
    refresh_token: str = field(default_factory=_refresh_token)
    aad_error: tuple[int, Mapping[str, str]] | None = None
    aad_requests: list[Mapping[str, str]] = field(default_factory=list)
    exchange_requests: list[Mapping[str, str]] = field(default_factory=list)
    _server: BackgroundApp | None = None

    async def _aad(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.aad_requests.append(form)
        if self.aad_error is not None:
            return web.json_response(dict(self.aad_error[1]), status=self.aad_error[0])
        ok = (
            request.match_info["tenant"] == self.tenant
            and form.get("grant_type") == "client_credentials"
            and form.get("client_id") == self.client_id
            and form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            and form.get("client_assertion") == self.federated_token
            and form.get("scope") == "https://management.azure.com/.default"
        )
        if not ok:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS700213: no matching federated identity",
                },
                status=401,
            )
        return web.json_response(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": self.access_token}
        )

    async def _exchange(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.exchange_requests.append(form)
        ok = (
            form.get("grant_type") == "access_token"
            and form.get("access_token") == self.access_token
            and form.get("service") == ACR_HOST
            and form.get("tenant") == self.tenant
        )
        if not ok:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        return web.json_response({"refresh_token": self.refresh_token})

    def start(self) -> AzureIdentity:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._aad)
        app.router.add_post("/oauth2/exchange", self._exchange)
        self._server = BackgroundApp(app, "azure-identity").start()
        return self

    @property
    def authority(self) -> str:
        assert self._server is not None
        return f"http://{self._server.host}/"

    @property
    def exchange_url(self) -> str:
        assert self._server is not None
        return f"http://{self._server.host}/oauth2/exchange"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
