"""Pull-secret credentials: what the kubelet reads, which keys match an image, in which order."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from archaudit.core.credentials import (
    Credential,
    CredentialsError,
    Keyring,
    keyring_from_docker_config,
    keyring_from_dockercfg,
    keyring_from_secret,
)
from archaudit.core.reference import parse


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def cred(n: int | str) -> Credential:
    return Credential(f"user{n}", f"pass{n}")


def matches(keys: list[str], image: str) -> list[str]:
    """The keys whose credentials `image` gets, in lookup order (each key gets its own credential)."""
    ring = Keyring((key, Credential(key, "pw")) for key in keys)
    return [c.username for c in ring.lookup(parse(image))]


# -- Credential: secrets stay inside


def test_repr_and_str_never_show_the_secret() -> None:
    c = Credential("alice-the-user", "s3cret-password")
    for text in (repr(c), str(c), f"{c}", repr([c]), repr({"c": c})):
        assert "s3cret-password" not in text
        assert "alice-the-user" not in text
        assert c.identity in text


def test_identity_is_stable_and_distinguishes_credentials() -> None:
    assert Credential("u", "p").identity == Credential("u", "p").identity
    assert Credential("u", "p").identity != Credential("u", "q").identity
    # the separator matters: ("ab", "c") and ("a", "bc") are different credentials
    assert Credential("ab", "c").identity != Credential("a", "bc").identity
    assert Credential("u", "p").identity.startswith("cred:")


def test_identity_does_not_contain_the_password() -> None:
    c = Credential("user", "a-long-password-value")
    assert "a-long-password-value" not in c.identity
    assert "user" not in c.identity


# -- key matching (kubelet URLsMatch)


@pytest.mark.parametrize(
    ("key", "image", "matched"),
    [
        ("registry.example.com", "registry.example.com/team/app", True),
        ("https://registry.example.com", "registry.example.com/team/app", True),
        ("http://registry.example.com/v2/", "registry.example.com/team/app", True),
        ("registry.example.com/v1/", "registry.example.com/team/app", True),
        ("registry.example.com/team", "registry.example.com/team/app", True),
        ("registry.example.com/v2/team", "registry.example.com/team/app", True),
        ("registry.example.com/other", "registry.example.com/team/app", False),
        # a path is a string prefix, as in the kubelet (not component-wise)
        ("registry.example.com/te", "registry.example.com/team/app", True),
        ("*.example.com", "registry.example.com/team/app", True),
        ("*.example.com", "example.com/team/app", False),  # label counts differ
        ("*.example.com", "a.registry.example.com/team/app", False),  # * is exactly one label
        ("*.*.com", "registry.example.com/app", True),
        ("reg*.example.com", "registry.example.com/app", True),
        ("registry.example.com", "registry.example.com:5000/app", False),  # ports must match
        ("registry.example.com:5000", "registry.example.com/app", False),
        ("registry.example.com:5000", "registry.example.com:5000/app", True),
        ("*.example.com:5000", "registry.example.com:5000/app", True),
        ("localhost:5000", "localhost:5000/app", True),
        ("localhost", "localhost:5000/app", False),
        ("docker.io", "busybox", True),
        ("docker.io/library", "busybox", True),
        ("docker.io/library", "someone/app", False),
        ("ghcr.io", "docker.io/library/busybox", False),
        ("quay.io", "registry.example.com/quay.io/app", False),
    ],
)
def test_key_matching(key: str, image: str, matched: bool) -> None:
    assert matches([key], image) == ([key] if matched else [])


def test_more_specific_keys_first() -> None:
    keys = [
        "registry.example.com",
        "registry.example.com/team/app",
        "*.example.com",
        "registry.example.com/team",
    ]
    assert matches(keys, "registry.example.com/team/app") == [
        "registry.example.com/team/app",
        "registry.example.com/team",
        "registry.example.com",
        "*.example.com",
    ]


def test_keys_that_normalize_alike_keep_every_credential_in_order() -> None:
    ring = Keyring(
        [
            ("https://registry.example.com", cred(1)),
            ("registry.example.com/v2/", cred(2)),
            ("registry.example.com", cred(3)),
        ]
    )
    assert ring.lookup(parse("registry.example.com/app")) == [cred(1), cred(2), cred(3)]
    assert len(ring) == 3


def test_docker_hub_falls_back_to_the_docker_login_key() -> None:
    for key in ("https://index.docker.io/v1/", "index.docker.io", "https://index.docker.io/v2/"):
        assert matches([key], "busybox") == [key]
        assert matches([key], "docker.io/someone/app") == [key]
        assert matches([key], "ghcr.io/someone/app") == []


def test_docker_hub_login_key_only_when_nothing_else_matches() -> None:
    # the kubelet's order: a docker.io key wins and the index.docker.io fallback is not added
    assert matches(["docker.io", "https://index.docker.io/v1/"], "busybox") == ["docker.io"]
    assert matches(["docker.io/other", "https://index.docker.io/v1/"], "busybox") == [
        "https://index.docker.io/v1/"
    ]


def test_added_keyrings_keep_the_left_matches_first() -> None:
    pod_secrets = Keyring([("registry.example.com", cred("pod"))])
    cluster = Keyring([("registry.example.com/team/app", cred("cluster"))])
    image = parse("registry.example.com/team/app")
    assert (pod_secrets + cluster).lookup(image) == [cred("pod"), cred("cluster")]
    assert (cluster + pod_secrets).lookup(image) == [cred("cluster"), cred("pod")]
    assert len(pod_secrets + cluster) == 2
    assert len(Keyring() + Keyring()) == 0


def test_the_same_credential_is_returned_once() -> None:
    ring = Keyring([("registry.example.com", cred(1))]) + Keyring([("*.example.com", cred(1))])
    assert ring.lookup(parse("registry.example.com/app")) == [cred(1)]


def test_unparsable_keys_are_skipped() -> None:
    ring = Keyring([("registry.example.com:notaport", cred(1)), ("registry.example.com", cred(2))])
    assert ring.lookup(parse("registry.example.com/app")) == [cred(2)]


def test_keyring_repr_has_no_secrets() -> None:
    ring = Keyring([("registry.example.com", Credential("someone", "hunter2"))])
    assert "hunter2" not in repr(ring)
    assert "someone" not in repr(ring)


# -- reading docker configs


def test_docker_config_username_and_password() -> None:
    config = {"auths": {"registry.example.com": {"username": "u", "password": "p", "email": "x@y"}}}
    for form in (config, json.dumps(config), json.dumps(config).encode()):
        assert keyring_from_docker_config(form).lookup(parse("registry.example.com/a")) == [
            Credential("u", "p")
        ]


def test_auth_overrides_username_and_password_and_splits_at_the_first_colon() -> None:
    config = {
        "auths": {
            "r.example.com": {"username": "ignored", "password": "ignored", "auth": b64("u:p:with:colons")}
        }
    }
    assert keyring_from_docker_config(config).lookup(parse("r.example.com/a")) == [
        Credential("u", "p:with:colons")
    ]


def test_auth_without_padding_is_accepted() -> None:
    token = b64("user:pw").rstrip("=")
    assert b64("user:pw") != token, "the test needs a value whose base64 is padded"
    config = {"auths": {"r.example.com": {"auth": token}}}
    assert keyring_from_docker_config(config).lookup(parse("r.example.com/a")) == [Credential("user", "pw")]


def test_other_fields_are_ignored() -> None:
    config = {"auths": {"r.example.com": {"identitytoken": "t", "registrytoken": "t"}}}
    assert len(keyring_from_docker_config(config)) == 0


def test_config_without_auths_is_empty() -> None:
    assert len(keyring_from_docker_config({"credsStore": "desktop"})) == 0


def test_dockercfg_is_the_map_alone() -> None:
    data = json.dumps({"https://r.example.com": {"auth": b64("u:p"), "email": "e"}})
    assert keyring_from_dockercfg(data).lookup(parse("r.example.com/a")) == [Credential("u", "p")]


@pytest.mark.parametrize(
    "document",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        {"auths": []},
        {"auths": {"r.example.com": "a-string"}},
        {"auths": {"r.example.com": {"username": 7}}},
        {"auths": {"r.example.com": {"auth": "!!!not-base64-hunter2!!!"}}},
        {"auths": {"r.example.com": {"auth": b64("no-colon-hunter2")}}},
    ],
)
def test_malformed_docker_configs_raise_without_secret_material(document: Any) -> None:
    with pytest.raises(CredentialsError) as caught:
        keyring_from_docker_config(document)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


# -- Kubernetes secrets


def secret(kind: str, data: dict[str, str], name: str = "pull") -> dict[str, Any]:
    return {"type": kind, "metadata": {"name": name, "namespace": "team"}, "data": data}


def test_dockerconfigjson_secret() -> None:
    body = json.dumps({"auths": {"ghcr.io": {"auth": b64("me:token")}}})
    ring = keyring_from_secret(secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(body)}))
    assert ring.lookup(parse("ghcr.io/me/app")) == [Credential("me", "token")]


def test_dockercfg_secret() -> None:
    body = json.dumps({"ghcr.io": {"username": "me", "password": "token"}})
    ring = keyring_from_secret(secret("kubernetes.io/dockercfg", {".dockercfg": b64(body)}))
    assert ring.lookup(parse("ghcr.io/me/app")) == [Credential("me", "token")]


@pytest.mark.parametrize(
    "obj",
    [
        secret("Opaque", {".dockerconfigjson": b64('{"auths": {"ghcr.io": {"auth": "dTpw"}}}')}),
        secret("kubernetes.io/dockerconfigjson", {".dockercfg": b64('{"ghcr.io": {"auth": "dTpw"}}')}),
        secret(
            "kubernetes.io/dockercfg", {".dockerconfigjson": b64('{"auths": {"ghcr.io": {"auth": "dTpw"}}}')}
        ),
        secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": ""}),
        {"type": "kubernetes.io/dockerconfigjson", "metadata": {"name": "no-data"}},
    ],
)
def test_secrets_the_kubelet_ignores_give_an_empty_keyring(obj: dict[str, Any]) -> None:
    assert len(keyring_from_secret(obj)) == 0


@pytest.mark.parametrize(
    "data",
    [
        "not base64 hunter2!",
        b64("{not json hunter2"),
        b64(json.dumps({"auths": {"ghcr.io": {"auth": b64("hunter2")}}})),
    ],
)
def test_malformed_pull_secrets_raise_naming_the_secret_only(data: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        keyring_from_secret(
            secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": data}, name="regcred")
        )
    message = str(caught.value)
    assert "team/regcred" in message
    assert "hunter2" not in message
