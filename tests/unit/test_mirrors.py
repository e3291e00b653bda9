"""k3s registries.yaml: which endpoints containerd tries for an image, in which order, with what."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from archaudit.adapters.registry.files import registries_from_file
from archaudit.core.credentials import Credential
from archaudit.core.mirrors import EMPTY, Endpoint, RegistriesConfig, TLSConfig
from archaudit.core.reference import parse

DOCS_EXAMPLE = """
mirrors:
  docker.io:
    endpoint: ["https://mirror.example:5000"]
    rewrite:
      "^rancher/(.*)": "mirror/rancher/$1"
  "*":
    endpoint: ["http://catchall.example"]
configs:
  "mirror.example:5000":
    auth: {username: u, password: p}
    tls: {ca_file: /etc/ca.pem, insecure_skip_verify: false}
"""


def urls(endpoints: list[Endpoint]) -> list[str]:
    return [e.url("manifests", "latest") for e in endpoints]


def test_no_config_gives_the_default_endpoint_only() -> None:
    assert urls(EMPTY.endpoints_for(parse("busybox"))) == [
        "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
    ]
    assert urls(EMPTY.endpoints_for(parse("ghcr.io/a/b"))) == ["https://ghcr.io/v2/a/b/manifests/latest"]
    (default,) = EMPTY.endpoints_for(parse("localhost:5000/a"))
    assert (default.scheme, default.host, default.repository) == ("https", "localhost:5000", "a")
    assert not default.is_mirror
    assert default.ns is None
    assert default.credential is None
    assert default.tls == TLSConfig()


def test_docker_hub_default_base_url() -> None:
    (default,) = EMPTY.endpoints_for(parse("busybox"))
    assert default.base_url == "https://registry-1.docker.io"
    assert default.api_url == "https://registry-1.docker.io/v2"


def test_mirrors_in_order_then_the_default_with_rewrite_and_ns() -> None:
    config = RegistriesConfig.load(DOCS_EXAMPLE)
    mirror, default = config.endpoints_for(parse("rancher/pause:3.6"))
    assert (
        mirror.url("manifests", "3.6")
        == "https://mirror.example:5000/v2/mirror/rancher/pause/manifests/3.6?ns=docker.io"
    )
    assert mirror.is_mirror
    assert mirror.ns == "docker.io"
    assert mirror.credential == Credential("u", "p")
    assert mirror.tls == TLSConfig(ca_file="/etc/ca.pem")
    # rewrites never apply to the default endpoint, and it gets no ns
    assert default.url("manifests", "3.6") == "https://registry-1.docker.io/v2/rancher/pause/manifests/3.6"
    assert default.credential is None


def test_rewrite_only_when_the_pattern_matches() -> None:
    config = RegistriesConfig.load(DOCS_EXAMPLE)
    mirror, _ = config.endpoints_for(parse("busybox"))
    assert mirror.repository == "library/busybox"


def test_wildcard_mirror_for_registries_without_their_own() -> None:
    config = RegistriesConfig.load(DOCS_EXAMPLE)
    assert urls(config.endpoints_for(parse("ghcr.io/a/b"))) == [
        "http://catchall.example/v2/a/b/manifests/latest?ns=ghcr.io",
        "https://ghcr.io/v2/a/b/manifests/latest",
    ]


def test_several_endpoints_keep_their_order() -> None:
    config = RegistriesConfig.load(
        """
mirrors:
  quay.io:
    endpoint: ["https://one.example", "two.example:8443", "http://three.example:8080/"]
"""
    )
    assert [(e.scheme, e.host) for e in config.endpoints_for(parse("quay.io/a/b"))] == [
        ("https", "one.example"),
        ("https", "two.example:8443"),  # no scheme: https
        ("http", "three.example:8080"),
        ("https", "quay.io"),
    ]


def test_endpoint_with_a_path_uses_it_as_the_api_root() -> None:
    config = RegistriesConfig.load(
        """
mirrors:
  docker.io:
    endpoint: ["https://proxy.example/artifactory/api/docker/hub/v2", "https://proxy.example/root"]
"""
    )
    first, second, _ = config.endpoints_for(parse("busybox"))
    assert first.url("blobs", "sha256:00") == (
        "https://proxy.example/artifactory/api/docker/hub/v2/library/busybox/blobs/sha256:00?ns=docker.io"
    )
    assert first.base_url == "https://proxy.example/artifactory/api/docker/hub"
    assert second.api_url == "https://proxy.example/root"
    assert first.host == second.host == "proxy.example"


def test_mirror_endpoints_that_are_the_default_are_ignored() -> None:
    config = RegistriesConfig.load(
        """
mirrors:
  docker.io:
    endpoint: ["https://registry-1.docker.io", "https://mirror.example", "https://index.docker.io/v2"]
    rewrite: {"^library/(.*)": "x/$1"}
  registry.example.com:
    endpoint: ["https://registry.example.com/v2", "https://registry.example.com:443"]
    rewrite: {"^(.*)$": "mirrored/$1"}
"""
    )
    assert urls(config.endpoints_for(parse("busybox"))) == [
        "https://mirror.example/v2/x/busybox/manifests/latest?ns=docker.io",
        "https://registry-1.docker.io/v2/library/busybox/manifests/latest",
    ]
    # k3s's documented trick: the same host with an explicit port is a mirror, so rewrites apply
    assert urls(config.endpoints_for(parse("registry.example.com/app"))) == [
        "https://registry.example.com:443/v2/mirrored/app/manifests/latest?ns=registry.example.com",
        "https://registry.example.com/v2/app/manifests/latest",
    ]


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("mirror/$1/$2", "mirror/team/app"),
        ("mirror/${1}x/$2", "mirror/teamx/app"),
        ("mirror/$1x", "mirror/"),  # Go reads $1x as the (missing) group named "1x"
        ("$org-mirror/$rest", "team-mirror/app"),
        ("cost$$/$2", "cost$/app"),
        ("$9/$1/$2", "/team/app"),  # a missing group expands to nothing
    ],
)
def test_rewrite_replacements_follow_go_syntax(replacement: str, expected: str) -> None:
    config = RegistriesConfig.load(
        f"""
mirrors:
  ghcr.io:
    endpoint: ["https://m.example"]
    rewrite: {{"^(?P<org>[a-z]+)/(?P<rest>.*)$": "{replacement}"}}
"""
    )
    assert config.endpoints_for(parse("ghcr.io/team/app"))[0].repository == expected


def test_first_matching_rewrite_wins() -> None:
    config = RegistriesConfig.load(
        """
mirrors:
  ghcr.io:
    endpoint: ["https://m.example"]
    rewrite:
      "^nomatch/(.*)": "a/$1"
      "^team/(.*)": "b/$1"
      "^(.*)": "c/$1"
"""
    )
    assert config.endpoints_for(parse("ghcr.io/team/app"))[0].repository == "b/app"


def test_configs_by_host_wildcard_and_empty_entry() -> None:
    auth = base64.b64encode(b"robot:tok:en").decode()
    config = RegistriesConfig.load(
        f"""
mirrors:
  "*":
    endpoint: ["https://mirror.example"]
configs:
  "mirror.example": {{auth: {{auth: "{auth}"}}}}
  "docker.io":
  "ghcr.io": {{tls: {{insecure_skip_verify: true}}}}
  "*": {{tls: {{ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem}}}}
"""
    )
    mirror, hub = config.endpoints_for(parse("busybox"))
    assert mirror.credential == Credential("robot", "tok:en")
    # an empty "docker.io" entry hides "*" (the k3s docs' own example)
    assert hub.tls == TLSConfig()
    _, ghcr = config.endpoints_for(parse("ghcr.io/a/b"))
    assert ghcr.tls == TLSConfig(insecure_skip_verify=True)
    _, quay = config.endpoints_for(parse("quay.io/a/b"))
    assert quay.tls == TLSConfig(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem")


def test_docker_hub_default_endpoint_takes_configs_by_registry_name_or_host() -> None:
    for key in ("docker.io", "registry-1.docker.io"):
        config = RegistriesConfig.load(f'configs: {{"{key}": {{auth: {{username: hub, password: pw}}}}}}')
        (hub,) = config.endpoints_for(parse("busybox"))
        assert hub.credential == Credential("hub", "pw"), key


@pytest.mark.parametrize(
    ("insecure", "registry", "scheme"),
    [
        (["localhost:5000"], "localhost:5000", "http"),
        (["localhost"], "localhost:5000", "http"),  # a bare host: every port
        (["localhost:5001"], "localhost:5000", "https"),
        (["registry.local"], "registry.local", "http"),
        (["other.local"], "registry.local", "https"),
        ([], "localhost:5000", "https"),  # never a silent downgrade
    ],
)
def test_insecure_registries_use_http_for_their_default_endpoint(
    insecure: list[str], registry: str, scheme: str
) -> None:
    (default,) = EMPTY.endpoints_for(parse(f"{registry}/app"), insecure)
    assert default.scheme == scheme
    assert default.base_url == f"{scheme}://{registry}"


def test_insecure_does_not_change_mirror_endpoints() -> None:
    config = RegistriesConfig.load('mirrors: {"localhost:5000": {endpoint: ["https://m.example"]}}')
    mirror, default = config.endpoints_for(parse("localhost:5000/app"), ["localhost:5000", "m.example"])
    assert (mirror.scheme, default.scheme) == ("https", "http")


def test_empty_document_is_empty() -> None:
    assert RegistriesConfig.load("") == EMPTY
    assert RegistriesConfig.load("mirrors: {}\nconfigs:\n") == EMPTY


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mirrors: [a, b]", "mirrors"),
        ("- a\n- b", "registries.yaml"),
        ("mirrors: {docker.io: {endpoint: https://x}}", "mirrors.docker.io.endpoint"),
        ("mirrors: {docker.io: {endpoint: [ftp://x]}}", "mirrors.docker.io.endpoint[0]"),
        ("mirrors: {docker.io: {endpoint: ['https://x:port']}}", "mirrors.docker.io.endpoint[0]"),
        ("mirrors: {docker.io: {endpoint: [x], rewrite: {'(': y}}}", "mirrors.docker.io.rewrite"),
        ("configs: {x: {tls: {insecure_skip_verify: maybe}}}", "configs.x.tls.insecure_skip_verify"),
        ("configs: {x: {auth: {auth: '!!'}}}", "configs.x.auth"),
        ("mirror: {}", "unknown top-level"),
        ("mirrors: {a: [b", "not valid YAML"),
    ],
)
def test_bad_shapes_say_where(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        RegistriesConfig.load(text)


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "registries.yaml"
    path.write_text(DOCS_EXAMPLE)
    assert registries_from_file(path) == RegistriesConfig.load(DOCS_EXAMPLE)
    path.write_text("mirrors: 3")
    with pytest.raises(ValueError, match=r"registries\.yaml: mirrors"):
        registries_from_file(str(path))
    with pytest.raises(FileNotFoundError):
        registries_from_file(tmp_path / "missing.yaml")


def test_endpoint_repr_has_no_credential() -> None:
    config = RegistriesConfig.load(DOCS_EXAMPLE)
    mirror, _ = config.endpoints_for(parse("busybox"))
    assert mirror.credential is not None
    assert "'p'" not in repr(mirror)
    assert "password" not in repr(mirror)
