"""Cloud registry credentials end to end, on loopback: ECR (IRSA, EKS Pod Identity, keys), GKE, AKS.

The registry side is the real docker-registry (TLS + htpasswd) whose users are the credentials each
cloud's registry would accept: `AWS` with the password moto's GetAuthorizationToken issues,
`oauth2accesstoken` with the metadata server's access token, 00000000-... with ACR's refresh token.
The images are named as on the cloud (`<account>.dkr.ecr.us-east-1.amazonaws.com/team/app:1`) and
reached through `LoopbackHosts`, a test-only DNS for the registry client that knows those names and
nothing else; `archaudit check` (its own process) reaches them through a registries.yaml mirror.

AWS is botocore against moto in server mode (STS AssumeRoleWithWebIdentity, ECR
GetAuthorizationToken; IAM enforced in a second moto for AccessDenied). The GKE metadata server, Azure
AD and ACR's /oauth2/exchange are small fakes (tests/harness/cloud.py): external services that cannot
run here.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from archaudit.adapters import metrics
from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.cloud.aws import EcrFetcher
from archaudit.adapters.registry.aiohttp_transport import AiohttpTransport
from archaudit.adapters.registry.client import RegistryClient
from archaudit.adapters.registry.files import registries_from_file
from archaudit.adapters.registry.safety import HostGuard
from archaudit.adapters.resolver import Resolver
from archaudit.context import Context, NodeMap
from archaudit.core import reports
from archaudit.core.config import RegistrySettings, Settings
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms
from archaudit.core.reference import ImageReference
from archaudit.resolution import resolve_images
from tests.conftest import _need_registry
from tests.harness.cloud import (
    ACR_HOST,
    ACR_USERNAME,
    ECR_HOST,
    GAR_HOST,
    GCP_USERNAME,
    AzureIdentity,
    GcpMetadata,
    LoopbackHosts,
    Moto,
    PodIdentityAgent,
    ecr_password,
    moto_with_iam,
)
from tests.harness.registry import Pushed, Registry, push_image, start_registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ECR_IMAGE = f"{ECR_HOST}/team/app:1"
GAR_IMAGE = f"{GAR_HOST}/team/app:1"
ACR_IMAGE = f"{ACR_HOST}/team/app:1"
ROLE = "arn:aws:iam::123456789012:role/archaudit-ecr"


@dataclass
class Clouds:
    moto: Moto
    gcp: GcpMetadata
    azure: AzureIdentity
    agent: PodIdentityAgent
    registry: Registry
    pushed: Pushed
    ecr_password: str
    directory: Path

    @property
    def port(self) -> int:
        return int(self.registry.host.rsplit(":", 1)[1])

    def secrets(self) -> list[str]:
        """Every secret of the run: none may appear in a log line, a metric or a message."""
        return [
            self.ecr_password,
            # what GetAuthorizationToken's answer carries, and botocore would log at DEBUG
            base64.b64encode(f"AWS:{self.ecr_password}".encode()).decode(),
            self.gcp.token,
            self.azure.federated_token,
            self.azure.access_token,
            self.azure.refresh_token,
            self.agent.secret_key,
            self.agent.session_token,
            self.agent.authorization,
        ]


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    _need_registry()
    directory = tmp_path_factory.mktemp("cloud")
    moto = Moto().start()
    gcp = GcpMetadata().start()
    azure = AzureIdentity().start()
    agent = PodIdentityAgent().start()
    password = ecr_password(moto.url)
    users = {"AWS": password, GCP_USERNAME: gcp.token, ACR_USERNAME: azure.refresh_token}
    registry = start_registry(
        "basic", directory / "registry", users=users, dns=(ECR_HOST, GAR_HOST, ACR_HOST)
    )
    try:
        pushed = push_image(registry.pusher(), "team/app", "linux", "arm64", tag="1")
        yield Clouds(moto, gcp, azure, agent, registry, pushed, password, directory)
    finally:
        registry.stop()
        for server in (agent, azure, gcp, moto):
            server.stop()


_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_ECR",
    "AWS_ENDPOINT_URL_STS",
)
_AZURE_VARS = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST")


@pytest.fixture
def fakes(clouds: Clouds) -> Iterator[Clouds]:
    """The fakes answering as the real services would, whatever the previous test made them do."""

    def reset() -> None:
        clouds.gcp.status = 200
        clouds.gcp.requests.clear()
        clouds.azure.aad_error = None
        clouds.azure.aad_requests.clear()
        clouds.azure.exchange_requests.clear()

    reset()
    yield clouds
    reset()


@pytest.fixture
def cloud_env(fakes: Clouds, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No identity at all, and nothing botocore could find beyond loopback (no IMDS, no files)."""
    for name in (*_AWS_VARS, *_AZURE_VARS):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", fakes.moto.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fakes.moto.url)
    return tmp_path


def irsa(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """What the EKS pod identity webhook injects for IRSA: a role and a projected token file."""
    token = directory / "eks.amazonaws.com" / "token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXJjaGF1ZGl0In0.c2ln")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))


def azure_identity(monkeypatch: pytest.MonkeyPatch, clouds: Clouds, directory: Path) -> None:
    """What the Azure workload identity webhook injects into a pod labelled azure.workload.identity/use."""
    token = directory / "azure-identity-token"
    token.write_text(clouds.azure.federated_token)
    monkeypatch.setenv("AZURE_CLIENT_ID", clouds.azure.client_id)
    monkeypatch.setenv("AZURE_TENANT_ID", clouds.azure.tenant)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", clouds.azure.authority)


class PullSecrets:
    """The pod's pull secrets (the kube adapter's part of the chain), fixed for the test."""

    def __init__(self, credentials: Sequence[Credential] = ()) -> None:
        self.credentials = list(credentials)

    async def for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return self.credentials

    def peek_for_pod(
        self, namespace: str, pod_spec: Mapping[str, Any], image: ImageReference
    ) -> list[Credential]:
        return self.credentials


@dataclass
class Run:
    ctx: Context
    resolver: Resolver
    cloud: CloudCredentials
    exported: metrics.Metrics
    hosts: LoopbackHosts

    async def resolve(self, *images: str) -> dict[str, ImagePlatforms | ResolutionError]:
        return await resolve_images(self.ctx, "shop", {}, list(images), 30.0)

    async def close(self) -> None:
        await self.resolver.aclose()
        await self.cloud.aclose()


def _registries(clouds: Clouds) -> Path:
    path = clouds.directory / "cloud-registries.yaml"
    tls = {"tls": {"ca_file": str(clouds.registry.ca_file)}}
    path.write_text(yaml.safe_dump({"configs": {h: tls for h in (ECR_HOST, GAR_HOST, ACR_HOST)}}))
    return path


def make_run(
    clouds: Clouds,
    *,
    settings: RegistrySettings | None = None,
    cloud: CloudCredentials | None = None,
    pull_secrets: Sequence[Credential] = (),
) -> Run:
    """The operator's resolution path (pull secrets, cloud step, resolver, client, metrics)."""
    settings = settings or RegistrySettings(
        gcp_metadata_url=clouds.gcp.url, azure_exchange_url=clouds.azure.exchange_url, timeout_seconds=20.0
    )
    state = metrics.MutableState()
    exported = metrics.Metrics(state)
    guard = HostGuard()
    hosts = LoopbackHosts({h: clouds.port for h in (ECR_HOST, GAR_HOST, ACR_HOST)})
    transport = AiohttpTransport(guard, resolver=hosts, observer=exported)
    client = RegistryClient(
        settings,
        registries=registries_from_file(_registries(clouds)),
        guard=guard,
        observer=exported,
        transport=transport,
    )
    resolver = Resolver(client, timeout_seconds=settings.timeout_seconds)
    cloud = cloud or CloudCredentials.from_settings(settings)
    state.cloud_tokens_from = lambda: cloud.requests  # as app.run wires it
    ctx = Context(
        settings=Settings(registry=settings),
        resolver=resolver,
        nodes=NodeMap(),
        credentials=PullSecrets(pull_secrets),
        cloud=cloud,
        metrics=state,
    )
    return Run(ctx, resolver, cloud, exported, hosts)


async def resolve_once(clouds: Clouds, image: str) -> ImagePlatforms | ResolutionError:
    """`image` through a fresh resolution path (default settings), closed afterwards."""
    run = make_run(clouds)
    try:
        return (await run.resolve(image))[image]
    finally:
        await run.close()


def _image(result: ImagePlatforms | ResolutionError) -> ImagePlatforms:
    assert isinstance(result, ImagePlatforms), result
    return result


def _error(result: ImagePlatforms | ResolutionError) -> ResolutionError:
    assert isinstance(result, ResolutionError), result
    return result


# -- ECR


async def test_ecr_with_irsa(clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    irsa(monkeypatch, cloud_env)
    run = make_run(clouds)
    try:
        result = await run.resolve(ECR_IMAGE)
    finally:
        await run.close()
    image = _image(result[ECR_IMAGE])
    assert image.digest == clouds.pushed.digest
    assert [str(p) for p in image.platforms] == ["linux/arm64"]
    assert run.cloud.fetches == 1
    assert ECR_HOST in run.hosts.asked  # reached by its ECR name, through the test's loopback DNS


async def test_ecr_without_any_identity_says_so(clouds: Clouds, cloud_env: Path) -> None:
    error = _error(await resolve_once(clouds, ECR_IMAGE))
    assert error.reason is Reason.AUTH
    assert "anonymously" in error.message  # the chain went on to anonymous, as the kubelet does
    assert "ECR GetAuthorizationToken (us-east-1): no AWS credentials" in error.message


async def test_ecr_with_eks_pod_identity(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = cloud_env / "eks-pod-identity-token"
    token_file.write_text(clouds.agent.authorization)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", clouds.agent.url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    before = clouds.agent.requests
    image = _image(await resolve_once(clouds, ECR_IMAGE))
    assert image.digest == clouds.pushed.digest
    assert clouds.agent.requests == before + 1
    assert clouds.agent.refused == 0


async def test_ecr_expired_token_is_used_once_and_fetched_again(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto's token expired in 2015: it is used (the registry accepts it) and never cached."""
    irsa(monkeypatch, cloud_env)
    run = make_run(clouds)
    try:
        first = await run.resolve(ECR_IMAGE)
        assert run.cloud.peek(run_ref(ECR_IMAGE)) is None
        second = await run.resolve(ECR_IMAGE)
    finally:
        await run.close()
    assert _image(first[ECR_IMAGE]).digest == _image(second[ECR_IMAGE]).digest == clouds.pushed.digest
    assert run.cloud.fetches == 2


def run_ref(text: str) -> ImageReference:
    from archaudit.core.reference import parse

    return parse(text)


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _moto_expiry(clouds: Clouds) -> float:
    import botocore.session

    client = botocore.session.Session().create_client(
        "ecr",
        region_name="us-east-1",
        endpoint_url=clouds.moto.url,
        aws_access_key_id="AKIATEST",
        aws_secret_access_key="test-secret",
    )
    try:
        when: dt.datetime = client.get_authorization_token()["authorizationData"][0]["expiresAt"]
    finally:
        client.close()
    return when.timestamp()


async def test_ecr_token_cached_for_half_its_life_then_refreshed(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    irsa(monkeypatch, cloud_env)
    expiry = _moto_expiry(clouds)
    clock = WallClock(expiry - 12 * 3600)  # as if ECR's 12-hour token had just been issued
    cloud = CloudCredentials({"aws": EcrFetcher(timeout=10.0)}, clock=clock)
    run = make_run(clouds, cloud=cloud)
    ref = run_ref(ECR_IMAGE)
    try:
        assert _image((await run.resolve(ECR_IMAGE))[ECR_IMAGE]).digest == clouds.pushed.digest
        clock.now += 6 * 3600 - 1
        assert cloud.peek(ref) is not None  # still cached: no request
        assert _image((await run.resolve(ECR_IMAGE))[ECR_IMAGE]).digest == clouds.pushed.digest
        assert cloud.fetches == 1
        clock.now += 2  # half its life gone: renewed before it expires
        assert cloud.peek(ref) is None
        assert _image((await run.resolve(ECR_IMAGE))[ECR_IMAGE]).digest == clouds.pushed.digest
        assert cloud.fetches == 2
    finally:
        await run.close()


async def test_ecr_access_denied_names_the_source_and_the_cause(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    iam = moto_with_iam(cloud_env / "moto-iam")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", iam.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam.secret_key)
        caplog.set_level(logging.DEBUG)
        run = make_run(clouds)
        try:
            error = _error((await run.resolve(ECR_IMAGE))[ECR_IMAGE])
        finally:
            await run.close()
    finally:
        iam.stop()
    assert error.reason is Reason.AUTH
    assert "ECR GetAuthorizationToken (us-east-1): AccessDenied: User: arn:aws:iam::" in error.message
    assert "is not authorized to perform: ecr:GetAuthorizationToken" in error.message
    assert "Traceback" not in error.message
    assert "Traceback" not in caplog.text
    for secret in (iam.secret_key, *clouds.secrets()):
        assert secret not in error.message
        assert secret not in caplog.text


async def test_pull_secrets_come_first_then_the_cloud_identity(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    irsa(monkeypatch, cloud_env)
    wrong = Credential("AWS", "an-old-pull-secret")
    run = make_run(clouds, pull_secrets=[wrong])
    try:
        image = _image((await run.resolve(ECR_IMAGE))[ECR_IMAGE])
    finally:
        await run.close()
    assert image.digest == clouds.pushed.digest
    assert run.cloud.fetches == 1


async def test_a_source_turned_off_is_not_asked(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    irsa(monkeypatch, cloud_env)
    settings = RegistrySettings(cloud_credentials=("gcp", "azure"), gcp_metadata_url=clouds.gcp.url)
    run = make_run(clouds, settings=settings)
    try:
        error = _error((await run.resolve(ECR_IMAGE))[ECR_IMAGE])
    finally:
        await run.close()
    assert error.reason is Reason.AUTH
    assert "ECR" not in error.message
    assert run.cloud.fetches == 0


# -- GKE


async def test_gke_workload_identity(clouds: Clouds, cloud_env: Path) -> None:
    run = make_run(clouds)
    try:
        results = await run.resolve(GAR_IMAGE, "gcr.io/team/app:1")
    finally:
        await run.close()
    assert _image(results[GAR_IMAGE]).digest == clouds.pushed.digest
    assert all(r.get("Metadata-Flavor") == "Google" for r in clouds.gcp.requests)
    assert len(clouds.gcp.requests) == 1  # one token for every GCP registry (gcr.io is not mapped here)
    assert _error(results["gcr.io/team/app:1"]).reason is Reason.UNREACHABLE


async def test_gke_metadata_failure_is_an_auth_reason(clouds: Clouds, cloud_env: Path) -> None:
    clouds.gcp.status = 404
    error = _error(await resolve_once(clouds, GAR_IMAGE))
    assert error.reason is Reason.AUTH
    assert error.message.endswith(
        "; GCP metadata server: HTTP 404 (is GKE workload identity enabled for archaudit's service account?)"
    )


async def test_gke_metadata_unreachable(clouds: Clouds, cloud_env: Path) -> None:
    settings = RegistrySettings(gcp_metadata_url="http://127.0.0.1:9/token", cloud_credentials=("gcp",))
    run = make_run(clouds, settings=settings)
    try:
        error = _error((await run.resolve(GAR_IMAGE))[GAR_IMAGE])
    finally:
        await run.close()
    assert error.reason is Reason.AUTH
    assert "GCP metadata server: cannot reach 127.0.0.1:9" in error.message


# -- AKS


async def test_aks_workload_identity(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure_identity(monkeypatch, clouds, cloud_env)
    image = _image(await resolve_once(clouds, ACR_IMAGE))
    assert image.digest == clouds.pushed.digest
    [aad] = clouds.azure.aad_requests
    assert aad["client_assertion"] == clouds.azure.federated_token
    [exchange] = clouds.azure.exchange_requests
    assert (exchange["grant_type"], exchange["service"]) == ("access_token", ACR_HOST)


async def test_aks_aad_refusal_names_the_tenant_and_the_aadsts_code(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure_identity(monkeypatch, clouds, cloud_env)
    clouds.azure.aad_error = (
        400,
        {
            "error": "invalid_client",
            "error_description": "AADSTS700016: Application with identifier 'x' was not found.\r\nTrace: 1",
        },
    )
    error = _error(await resolve_once(clouds, ACR_IMAGE))
    assert error.reason is Reason.AUTH
    assert (
        f"Azure AD token (tenant {clouds.azure.tenant}, client {clouds.azure.client_id}): HTTP 400: "
        "invalid_client: AADSTS700016: Application with identifier 'x' was not found." in error.message
    )
    assert clouds.azure.exchange_requests == []


async def test_aks_without_workload_identity(clouds: Clouds, cloud_env: Path) -> None:
    error = _error(await resolve_once(clouds, ACR_IMAGE))
    assert error.reason is Reason.AUTH
    assert (
        "Azure workload identity: AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE not set"
        in (error.message)
    )


# -- nothing secret anywhere


async def test_no_credential_in_logs_metrics_or_messages(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore logs response bodies at DEBUG: it must stay quiet
    irsa(monkeypatch, cloud_env)
    azure_identity(monkeypatch, clouds, cloud_env)
    run = make_run(clouds, pull_secrets=[Credential("AWS", "stale-pull-secret-password")])
    try:
        good = await run.resolve(ECR_IMAGE, GAR_IMAGE, ACR_IMAGE)
        clouds.gcp.status = 500
        clouds.azure.aad_error = (401, {"error": "invalid_client", "error_description": "AADSTS7000215: bad"})
        bad = make_run(clouds)
        try:
            failed = await bad.resolve(f"{GAR_HOST}/team/other:1", f"{ACR_HOST}/team/other:1")
        finally:
            await bad.close()
        exposition = (
            generate_latest(run.exported.registry).decode() + generate_latest(bad.exported.registry).decode()
        )
    finally:
        await run.close()
    assert all(isinstance(r, ImagePlatforms) for r in good.values()), good
    assert all(isinstance(r, ResolutionError) and r.reason is Reason.AUTH for r in failed.values()), failed
    assert "archaudit_registry_requests_total" in exposition  # the run did talk to the registry
    assert 'archaudit_cloud_token_requests_total{result="ok",source="aws"} 1.0' in exposition
    assert 'archaudit_cloud_token_requests_total{result="error",source="gcp"} 1.0' in exposition
    messages = " ".join(str(r) for r in failed.values())
    for secret in (*clouds.secrets(), "stale-pull-secret-password"):
        assert secret not in caplog.text
        assert secret not in exposition
        assert secret not in messages


# -- archaudit check, in its own process with the user's environment


def _cli_env(clouds: Clouds, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_", "ARCHAUDIT_"))}
    (home / "aws").write_text("")
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "aws"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID="AKIACIRUNNER0001",
        AWS_SECRET_ACCESS_KEY="ci-runner-secret-key",
        AWS_ENDPOINT_URL_ECR=clouds.moto.url,
        ARCHAUDIT_REGISTRY_GCP_METADATA_URL=clouds.gcp.url,
        ARCHAUDIT_REGISTRY_AZURE_EXCHANGE_URL=clouds.azure.exchange_url,
        AZURE_CLIENT_ID=clouds.azure.client_id,
        AZURE_TENANT_ID=clouds.azure.tenant,
        AZURE_FEDERATED_TOKEN_FILE=str(home / "azure-token"),
        AZURE_AUTHORITY_HOST=clouds.azure.authority,
    )
    (home / "azure-token").write_text(clouds.azure.federated_token)
    return env


def _mirrors(clouds: Clouds, path: Path) -> Path:
    """registries.yaml: every cloud registry mirrored by the loopback registry (its CA trusted)."""
    endpoint = f"https://{clouds.registry.host}"
    path.write_text(
        yaml.safe_dump(
            {
                "mirrors": {h: {"endpoint": [endpoint]} for h in (ECR_HOST, GAR_HOST, ACR_HOST)},
                "configs": {clouds.registry.host: {"tls": {"ca_file": str(clouds.registry.ca_file)}}},
            }
        )
    )
    return path


# `archaudit` in its own process, whose name lookups answer for loopback names only: should a mirror
# fail, the fallback to a cloud registry's real name fails here, before any DNS packet leaves.
_LOOPBACK_ONLY = """
import runpy, socket, sys
_lookup = socket.getaddrinfo
def _loopback_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        raise socket.gaierror(socket.EAI_NONAME, f"test: no DNS for {host!r} (loopback only)")
    return _lookup(host, *args, **kwargs)
socket.getaddrinfo = _loopback_only
sys.argv = ["archaudit", *sys.argv[1:]]
runpy.run_module("archaudit", run_name="__main__")
"""


def _archaudit(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LOOPBACK_ONLY, *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=120,
        check=False,
    )


def test_check_uses_the_chain_with_the_users_environment(fakes: Clouds, tmp_path: Path) -> None:
    clouds = fakes
    env = _cli_env(clouds, tmp_path)
    registries = _mirrors(clouds, tmp_path / "registries.yaml")
    done = _archaudit(["check", ECR_IMAGE, "--registries", str(registries), "-o", "json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == clouds.pushed.digest

    manifest = tmp_path / "app.yaml"
    containers = [
        {"name": f"c{i}", "image": image} for i, image in enumerate((ECR_IMAGE, GAR_IMAGE, ACR_IMAGE))
    ]
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app"},
                "spec": {"containers": containers},
            }
        )
    )
    files = _archaudit(
        [
            "check",
            "-f",
            str(manifest),
            "--registries",
            str(registries),
            "--platform",
            "linux/arm64",
            "-o",
            "json",
        ],
        env,
    )
    assert files.returncode == 0, files.stdout + files.stderr
    [obj] = json.loads(files.stdout)["objects"]
    assert obj["verdict"] == "Compatible", obj
    for secret in (*clouds.secrets(), "ci-runner-secret-key"):
        assert secret not in done.stdout + done.stderr + files.stdout + files.stderr


# -- memory: no botocore without an ECR image

_PROBE = """
import asyncio, json, sys
import archaudit.app  # what `archaudit run` imports
from archaudit.adapters.cloud import CloudCredentials
from archaudit.adapters.resolver import Resolver
from archaudit.context import Context, NodeMap
from archaudit.adapters.metrics import MutableState
from archaudit.core import reports
from archaudit.core.config import RegistrySettings, Settings
from archaudit.core.reference import parse
from archaudit.resolution import resolve_images

class NoSecrets:
    async def for_pod(self, namespace, spec, image):
        return []
    def peek_for_pod(self, namespace, spec, image):
        return []

async def main(image, ecr):
    settings = RegistrySettings(insecure=(image.split("/")[0],))
    cloud = CloudCredentials.from_settings(settings)  # as `archaudit run` builds it: every source on
    resolver = Resolver.from_settings(settings)
    ctx = Context(settings=Settings(registry=settings), resolver=resolver, nodes=NodeMap(),
                  credentials=NoSecrets(), cloud=cloud, metrics=MutableState())
    results = await resolve_images(ctx, "default", {}, [image], 20.0)
    if ecr:
        await cloud.for_image(parse(ecr))
    await resolver.aclose()
    await cloud.aclose()
    ok = all(not isinstance(r, Exception) for r in results.values())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "botocore")[:3]
    print(json.dumps({"resolved": ok, "botocore": loaded}))

asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
"""


def _probe(args: Sequence[str], tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ARCHAUDIT_"))}
    (tmp_path / "aws").write_text("")
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "aws"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_an_ecr_image_botocore_is_never_imported(plain_registry: Any, tmp_path: Path) -> None:
    image = plain_registry.samples["multiarch"].reference
    assert _probe([image], tmp_path) == {"resolved": True, "botocore": []}
    # The same process meeting an ECR image does import it: the probe can see an import.
    with_ecr = _probe([image, ECR_IMAGE], tmp_path)
    assert with_ecr["resolved"] is True
    assert with_ecr["botocore"] != []


async def test_concurrent_images_of_one_registry_share_one_token(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    irsa(monkeypatch, cloud_env)
    expiry = _moto_expiry(clouds)
    cloud = CloudCredentials({"aws": EcrFetcher(timeout=10.0)}, clock=WallClock(expiry - 3600))
    run = make_run(clouds, cloud=cloud)
    images = [f"{ECR_HOST}/team/app:1", f"{ECR_HOST}/team/app@{clouds.pushed.digest}"]
    try:
        results = await asyncio.gather(*(run.resolve(i) for i in images))
    finally:
        await run.close()
    assert all(isinstance(r, ImagePlatforms) for result in results for r in result.values())
    assert cloud.fetches == 1


async def test_admission_warnings_events_and_reports_carry_no_credential(
    clouds: Clouds, cloud_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The webhook's answer, the Event it asks for and the ImageAudit status, for a pod with one image
    resolved with a cloud token and one whose cloud identity was refused."""
    from archaudit import webhook

    caplog.set_level(logging.DEBUG)
    irsa(monkeypatch, cloud_env)
    clouds.gcp.status = 403  # the GAR image: its identity fails, and the review says why
    run = make_run(clouds, pull_secrets=[Credential("AWS", "stale-pull-secret-password")])
    run.ctx.nodes.replace_all(
        [
            {
                "metadata": {
                    "name": "graviton-1",
                    "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"},
                },
                "status": {"nodeInfo": {"containerRuntimeVersion": "containerd://1.7.20"}},
            }
        ]
    )
    run.ctx.namespaces["shop"] = {"archaudit.io/mode": "warn"}
    run.ctx.namespaces_filled.set()
    events: list[Any] = []
    admission = webhook.Admission(
        lambda: run.ctx, on_warning_event=lambda obj, outcome: events.append((obj, outcome.warnings))
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": ECR_IMAGE}, {"name": "b", "image": GAR_IMAGE}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6f3c1e2a-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "alice"},
            "object": pod,
        },
    }
    try:
        # the first review may run out of the webhook's deadline while tokens are fetched; the
        # second is answered from what the first resolved
        await admission(review)
        answer = await admission(review)
        resolved = await run.resolve(ECR_IMAGE, GAR_IMAGE)
    finally:
        await run.close()
    # The ImageAudit the auditor would write for a Deployment of that pod template (scaled to 0).
    audit = reports.build(
        reports.WorkloadRef("apps/v1", "Deployment", "api", "uid-1", "shop"),
        [],
        resolved,
        now="2026-12-01T00:00:00Z",
        template=reports.TemplateFacts(
            (reports.Container("a", ECR_IMAGE), reports.Container("b", GAR_IMAGE)),
            tuple(run.ctx.nodes.all()),
            why="scaled to 0",
        ),
    )
    assert audit.unresolved == {GAR_IMAGE: "auth"}
    text = json.dumps(answer) + json.dumps(events, default=str) + json.dumps(audit.status, default=str)
    assert "GCP metadata server: HTTP 403" in json.dumps(audit.status)
    assert answer["response"]["allowed"] is True
    warnings = " ".join(answer["response"].get("warnings", []))
    assert GAR_HOST in warnings
    assert "GCP metadata server: HTTP 403" in warnings
    assert ECR_HOST not in warnings  # resolved with the cloud credential: nothing to warn about
    assert events  # a warned pod gets an Event, with the same text
    for secret in (*clouds.secrets(), "stale-pull-secret-password"):
        assert secret not in text
        assert secret not in caplog.text
