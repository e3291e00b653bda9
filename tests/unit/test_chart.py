"""The Helm chart, rendered by the real helm binary, and the GitHub workflows, linted by real actionlint.

No mocks: `helm lint` / `helm template` run against charts/archaudit with every scenario in ci/, and the
rendered objects are parsed and checked against the promises the chart makes (fail-open webhook, the
excluded namespaces, restricted pods, least-privilege RBAC, the ARCHAUDIT_* environment contract of
archaudit.core.config). Server-side validation against a real apiserver belongs to the e2e tests.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from archaudit.core import config
from archaudit.core.cloud import parse_providers
from archaudit.webhook import WORKLOAD_RESOURCES
from tests.harness.cluster import find_bin_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "archaudit"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "archaudit-system"
RELEASE = "archaudit"

Doc = dict[str, Any]


# --- the binaries -----------------------------------------------------------------------------------------


@functools.cache
def helm_and_kube_version() -> tuple[Path, str]:
    """helm from the pinned build, and the Kubernetes version of the same pins.

    A helm built with `go install` believes the cluster is Kubernetes 1.20 unless told otherwise, so
    every call names the version the project's control plane runs (part of the bin directory's name).
    """
    bin_dir = find_bin_dir()
    match = re.search(r"k8s-(v\d+\.\d+\.\d+)", bin_dir.name)
    assert match, f"cannot read the Kubernetes version from {bin_dir}"
    return bin_dir / "helm", match.group(1)


@functools.cache
def actionlint() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "build-tools.sh")], stdout=subprocess.PIPE, text=True, check=True, timeout=900
    )
    tool = Path(out.stdout.strip().splitlines()[-1]) / "actionlint"
    assert os.access(tool, os.X_OK), f"hack/build-tools.sh did not build {tool}"
    return tool


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    binary, kube_version = helm_and_kube_version()
    return subprocess.run(
        [str(binary), *args, str(chart), "--kube-version", kube_version],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CACHE_HOME": "/tmp/archaudit-helm-cache",
            "HELM_CONFIG_HOME": "/tmp/archaudit-helm",
        },
    )


def set_args(values: Mapping[str, object]) -> list[str]:
    """--set for strings (helm turns "2" and "true" into numbers and booleans), --set-json otherwise."""
    args: list[str] = []
    for key, value in values.items():
        args += (
            ["--set", f"{key}={value}"]
            if isinstance(value, str)
            else ["--set-json", f"{key}={json.dumps(value)}"]
        )
    return args


def render_result(
    *files: Path, values: Mapping[str, object] | None = None, namespace: str = NAMESPACE, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, "--namespace", namespace]
    for f in files:
        args += ["-f", str(f)]
    return helm(*args, *set_args(values or {}), chart=chart)


def render(
    *files: Path, values: Mapping[str, object] | None = None, namespace: str = NAMESPACE, chart: Path = CHART
) -> list[Doc]:
    result = render_result(*files, values=values, namespace=namespace, chart=chart)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def container(docs: Iterable[Doc]) -> Doc:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return c  # type: ignore[no-any-return]


def env_of(docs: Iterable[Doc]) -> dict[str, str]:
    """The plain-valued environment of the operator container (fieldRefs left out)."""
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


def scenario(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def fails_with(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, f"expected failure, got success:\n{result.stdout[:2000]}"
    output = result.stdout + result.stderr  # helm lint reports on stdout, helm template on stderr
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


# --- every scenario lints and renders ---------------------------------------------------------------------


def test_every_ci_scenario_is_here() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in SCENARIOS}
    assert {"defaults", "cert-manager", "url-mode", "monitoring-on", "enforce"} <= names


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    result = helm("lint", "--strict", "-f", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_template_renders_named_namespaced_objects(values: Path) -> None:
    docs = render(values)
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ClusterKopfPeering",
    }
    assert docs
    for d in docs:
        assert d["apiVersion"], d
        assert d["metadata"]["name"], d
        if d["kind"] not in cluster_scoped and d["kind"] != "ConfigMap":
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# --- the webhook configuration ----------------------------------------------------------------------------


def webhooks(docs: Iterable[Doc]) -> dict[str, Doc]:
    return {w["name"]: w for w in one(docs, "ValidatingWebhookConfiguration")["webhooks"]}


def test_webhooks_fail_open_with_a_short_timeout() -> None:
    hooks = webhooks(render())
    assert set(hooks) == {"pods.archaudit.io", "workloads.archaudit.io"}
    for hook in hooks.values():
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 5
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert "objectSelector" not in hook


def test_webhook_rules_cover_pods_and_every_workload_kind() -> None:
    hooks = webhooks(render())

    def rules(hook: str) -> set[tuple[str, str, str]]:
        return {
            (group, resource, op)
            for rule in hooks[hook]["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for op in rule["operations"]
        }

    assert rules("pods.archaudit.io") == {("", "pods", "CREATE"), ("", "pods/ephemeralcontainers", "UPDATE")}
    kinds = {
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("", "replicationcontrollers"),
    }
    assert rules("workloads.archaudit.io") == {(g, r, op) for g, r in kinds for op in ("CREATE", "UPDATE")}


def test_namespace_selector_excludes_system_release_and_ignored_namespaces() -> None:
    docs = render(values={"webhook.exemptNamespaces": "{monitoring,kube-system}"}, namespace="ops")
    for hook in webhooks(docs).values():
        expressions = hook["namespaceSelector"]["matchExpressions"]
        names = next(e for e in expressions if e["key"] == "kubernetes.io/metadata.name")
        assert names["operator"] == "NotIn"
        assert names["values"] == ["kube-system", "kube-node-lease", "ops", "monitoring"]
        assert {"key": "archaudit.io/ignore", "operator": "DoesNotExist"} in expressions
    # the operator hears of the same exemptions (the auditor has no namespaceSelector)
    assert env_of(docs)["ARCHAUDIT_WEBHOOK_EXEMPT_NAMESPACES"] == "monitoring,kube-system"


def test_service_mode_points_at_the_webhook_service_and_leaves_ca_bundle_to_the_operator() -> None:
    docs = render()
    service = one(docs, "Service", f"{RELEASE}-webhook")
    for name, hook in webhooks(docs).items():
        client = hook["clientConfig"]
        assert "url" not in client
        assert "caBundle" not in client  # tls mode self: the operator patches it in
        assert client["service"] == {
            "name": service["metadata"]["name"],
            "namespace": NAMESPACE,
            "port": 443,
            "path": "/validate/" + name.split(".")[0],
        }
    env = env_of(docs)
    assert env["ARCHAUDIT_WEBHOOK_SERVICE_NAME"] == service["metadata"]["name"]
    assert (
        env["ARCHAUDIT_WEBHOOK_CONFIGURATION_NAME"]
        == one(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    )


def test_url_mode_switches_client_config_to_the_url() -> None:
    docs = render(scenario("url-mode"))
    ca = yaml.safe_load(scenario("url-mode").read_text())["webhook"]["caBundle"]
    for name, hook in webhooks(docs).items():
        client = hook["clientConfig"]
        assert "service" not in client
        assert client["url"] == "https://127.0.0.1:8443/validate/" + name.split(".")[0]
        assert client["caBundle"] == ca
    assert one(docs, "Deployment")["spec"]["replicas"] == 0
    assert not of_kind(docs, "PodDisruptionBudget")


def test_ca_bundle_with_line_breaks_is_joined() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" * 3
    wrapped = base64.encodebytes(pem).decode()  # 76-column lines, as `base64` prints them
    assert "\n" in wrapped.strip()
    docs = render(
        values={"webhook.url": "https://10.0.0.1:8443", "webhook.caBundle": wrapped.replace("\n", " ")}
    )
    for hook in webhooks(docs).values():
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == pem


def test_url_must_be_https_without_trailing_slash() -> None:
    fails_with(render_result(values={"webhook.url": "http://127.0.0.1:8443"}), "/webhook/url")
    fails_with(render_result(values={"webhook.url": "https://127.0.0.1:8443/"}), "/webhook/url")


def test_deadline_must_stay_below_the_apiserver_timeout() -> None:
    fails_with(
        render_result(values={"webhook.timeoutSeconds": 3, "webhook.deadlineSeconds": 3.5}),
        "webhook.deadlineSeconds",
        "below webhook.timeoutSeconds",
    )
    docs = render(values={"webhook.timeoutSeconds": 10, "webhook.deadlineSeconds": 8.5})
    assert {h["timeoutSeconds"] for h in webhooks(docs).values()} == {10}
    assert config.from_env(env_of(docs)).webhook.deadline_seconds == 8.5


# --- TLS modes --------------------------------------------------------------------------------------------


def tls_volume_secret(docs: Iterable[Doc]) -> str | None:
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    found = [v["secret"]["secretName"] for v in volumes if v["name"] == "tls"]
    return found[0] if found else None


def test_tls_self_keeps_its_secret_through_a_narrow_role() -> None:
    docs = render()
    env = env_of(docs)
    assert env["ARCHAUDIT_WEBHOOK_TLS_MODE"] == "self"
    assert tls_volume_secret(docs) is None
    rules = one(docs, "Role")["rules"]
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert {v for r in secret_rules for v in r["verbs"]} == {"create", "get", "update", "patch"}
    for rule in secret_rules:
        if rule["verbs"] != ["create"]:  # RBAC cannot name the object of a create
            assert rule["resourceNames"] == [env["ARCHAUDIT_WEBHOOK_TLS_SECRET"]]


def test_tls_cert_manager_issues_mounts_and_injects() -> None:
    docs = render(scenario("cert-manager"))
    cert = one(docs, "Certificate")
    issuer = one(docs, "Issuer")
    assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert "selfSigned" in issuer["spec"]
    service = one(docs, "Service", f"{RELEASE}-webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    annotation = one(docs, "ValidatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotation["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{cert['metadata']['name']}"
    env = env_of(docs)
    assert env["ARCHAUDIT_WEBHOOK_TLS_MODE"] == "files"
    assert tls_volume_secret(docs) == cert["spec"]["secretName"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "tls")
    assert env["ARCHAUDIT_WEBHOOK_CERT_FILE"] == mount["mountPath"] + "/tls.crt"
    assert env["ARCHAUDIT_WEBHOOK_KEY_FILE"] == mount["mountPath"] + "/tls.key"
    assert not [r for r in one(docs, "Role")["rules"] if "secrets" in r["resources"]]


def test_tls_cert_manager_with_an_existing_issuer() -> None:
    docs = render(
        scenario("cert-manager"),
        values={
            "webhook.tls.certManager.issuerRef.name": "corp-ca",
            "webhook.tls.certManager.issuerRef.kind": "ClusterIssuer",
        },
    )
    assert not of_kind(docs, "Issuer")
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_tls_provided_needs_secret_and_ca_bundle() -> None:
    fails_with(render_result(values={"webhook.tls.mode": "provided"}), "webhook.tls.provided.secretName")
    fails_with(
        render_result(values={"webhook.tls.mode": "provided", "webhook.tls.provided.secretName": "mine"}),
        "webhook.caBundle",
    )
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    docs = render(
        values={
            "webhook.tls.mode": "provided",
            "webhook.tls.provided.secretName": "mine",
            "webhook.caBundle": ca,
        }
    )
    assert tls_volume_secret(docs) == "mine"
    assert env_of(docs)["ARCHAUDIT_WEBHOOK_TLS_MODE"] == "files"
    assert {h["clientConfig"]["caBundle"] for h in webhooks(docs).values()} == {ca}
    assert not of_kind(docs, "Certificate")


# --- the pod ----------------------------------------------------------------------------------------------


def test_pod_runs_restricted() -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] != "/tmp")
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert c["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "192Mi"}}
    assert c["args"] == ["run"]


def test_probes_and_ports_match_the_operator() -> None:
    c = container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"webhook": 8443, "metrics": 9102}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_services_select_the_pods_by_named_ports() -> None:
    docs = render()
    template = one(docs, "Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    for service in of_kind(docs, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


@pytest.mark.parametrize(("replicas", "pdb"), [(0, False), (1, False), (2, True), (5, True)])
def test_pdb_only_when_more_than_one_replica(replicas: int, pdb: bool) -> None:
    docs = render(values={"replicaCount": str(replicas)})
    assert one(docs, "Deployment")["spec"]["replicas"] == replicas
    found = of_kind(docs, "PodDisruptionBudget")
    assert bool(found) is pdb
    if pdb:
        selector = found[0]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
        assert found[0]["spec"]["minAvailable"] == 1


def test_default_anti_affinity_spreads_replicas_and_can_be_replaced() -> None:
    affinity = one(render(), "Deployment")["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "Exists"}]}]
        }
    }
    custom = render(values={"affinity.nodeAffinity": node_affinity})
    assert set(one(custom, "Deployment")["spec"]["template"]["spec"]["affinity"]) == {"nodeAffinity"}


def test_image_defaults_to_app_version_and_digest_pins_it() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(render())["image"] == f"ghcr.io/archaudit/archaudit:{chart['appVersion']}"
    digest = "sha256:" + "ab" * 32
    assert container(render(values={"image.digest": digest}))["image"].endswith(
        f":{chart['appVersion']}@{digest}"
    )
    fails_with(render_result(values={"image.digest": "latest"}), "/image/digest")


# --- the environment contract with archaudit.core.config ---------------------------------------------


def settings_fields() -> set[str]:
    import dataclasses

    defaults = config.Settings()
    return {
        f"ARCHAUDIT_{section.name.upper()}_{f.name.upper()}"
        for section in dataclasses.fields(defaults)
        for f in dataclasses.fields(getattr(defaults, section.name))
    }


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_every_rendered_variable_is_a_setting(values: Path) -> None:
    names = {e["name"] for e in container(render(values))["env"]}
    unknown = {n for n in names if n.startswith("ARCHAUDIT_")} - settings_fields()
    assert not unknown, f"the chart sets variables archaudit.core.config does not read: {sorted(unknown)}"


def test_rendered_environment_parses_into_the_settings_asked_for() -> None:
    docs = render(scenario("enforce"), namespace="edge")
    env = env_of(docs)
    settings = config.from_env({**env, "ARCHAUDIT_CLUSTER_NAMESPACE": "edge"})
    assert settings.webhook.default_mode == "enforce"
    assert settings.webhook.deny_unresolved is True
    assert settings.webhook.exempt_images == ("docker.io/rancher/*",)
    assert settings.webhook.exempt_namespaces == ("monitoring",)
    assert settings.webhook.deadline_seconds == 3.5
    assert settings.cluster.platforms == ("linux/arm64", "linux/arm/v7")
    assert settings.cluster.runtime_profile == "containerd"
    assert settings.cluster.containerd_pull == "transfer"
    assert settings.registry.insecure == ("registry.lan:5000",)
    assert settings.registry.deny == ("evil.example",)
    assert settings.registry.allow == ()
    assert settings.audit.resync_seconds == 300.0
    assert settings.metrics.port == 9102
    assert settings.log.level == "INFO"
    namespace_env = next(e for e in container(docs)["env"] if e["name"] == "ARCHAUDIT_CLUSTER_NAMESPACE")
    assert namespace_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_defaults_render_the_operators_own_defaults() -> None:
    """Where the chart has no reason to differ, its defaults are the operator's."""
    settings = config.from_env(env_of(render()))
    defaults = config.Settings()
    assert settings.webhook.port == defaults.webhook.port
    assert settings.webhook.default_mode == defaults.webhook.default_mode
    assert settings.webhook.deadline_seconds == defaults.webhook.deadline_seconds
    assert settings.metrics.port == defaults.metrics.port
    assert settings.registry == defaults.registry
    assert settings.cluster.platforms == defaults.cluster.platforms
    assert settings.audit.enabled == defaults.audit.enabled
    assert settings.audit.resync_seconds == defaults.audit.resync_seconds
    assert settings.events == defaults.events


def test_event_quieting_is_set_from_values_and_checked_by_the_schema() -> None:
    docs = render(values={"events.windowSeconds": 120, "events.burst": 5, "events.queueSize": 64})
    quiet = config.from_env(env_of(docs)).events
    assert (quiet.window_seconds, quiet.burst, quiet.queue_size) == (120.0, 5, 64)
    fails_with(render_result(values={"events.flushSeconds": 0}), "/events/flushSeconds")
    fails_with(render_result(values={"events.queueSize": 0}), "/events/queueSize")
    with pytest.raises(ValueError, match="events"):
        config.from_env({"ARCHAUDIT_EVENTS_BURST": "0"})


@pytest.mark.parametrize(
    ("sources", "expected"),
    [(None, ("aws", "gcp", "azure")), ([], ()), (["gcp"], ("gcp",)), (["azure", "aws"], ("azure", "aws"))],
)
def test_cloud_credentials_each_can_be_turned_off(
    sources: list[str] | None, expected: tuple[str, ...]
) -> None:
    values = {} if sources is None else {"registry.cloudCredentials": sources}
    settings = config.from_env(env_of(render(values=values)))
    assert settings.registry.cloud_credentials == expected
    assert parse_providers(settings.registry.cloud_credentials) == set(expected)


def test_a_cloud_credential_source_must_be_known() -> None:
    fails_with(render_result(values={"registry.cloudCredentials": ["ibm"]}), "/registry/cloudCredentials/0")


@pytest.mark.parametrize(
    ("annotations", "pod_labels"),
    [
        ({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/archaudit-ecr"}, {}),
        ({"iam.gke.io/gcp-service-account": "archaudit@my-project.iam.gserviceaccount.com"}, {}),
        (
            {"azure.workload.identity/client-id": "1b2c3d4e-0000-0000-0000-000000000002"},
            {"azure.workload.identity/use": "true"},
        ),
    ],
)
def test_workload_identity_annotations_and_labels(
    annotations: dict[str, str], pod_labels: dict[str, str]
) -> None:
    docs = render(
        values={
            "serviceAccount.annotations": annotations,
            "serviceAccount.labels": {"team": "platform"},
            "podLabels": pod_labels,
        }
    )
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == annotations
    assert account["metadata"]["labels"]["team"] == "platform"
    assert account["metadata"]["labels"]["app.kubernetes.io/name"] == "archaudit"
    pod = one(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= pod_labels.items()
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_extra_env_is_appended() -> None:
    docs = render(values={"extraEnv[0].name": "ARCHAUDIT_REGISTRY_CACHE_SIZE", "extraEnv[0].value": "500"})
    assert config.from_env(env_of(docs)).registry.cache_size == 500


def test_registries_yaml_is_a_mounted_secret() -> None:
    docs = render(scenario("enforce"))
    assert not [c for c in of_kind(docs, "ConfigMap") if "registries" in c["metadata"]["name"]]
    secret = one(docs, "Secret")
    content = yaml.safe_load(secret["stringData"]["registries.yaml"])
    assert content["mirrors"]["docker.io"]["endpoint"] == ["https://mirror.lan:5000"]
    path = Path(env_of(docs)["ARCHAUDIT_REGISTRY_REGISTRIES_FILE"])
    c = container(docs)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "registries")
    assert mount["readOnly"] is True
    assert path.parent == Path(mount["mountPath"])
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "registries"
    )
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "registries.yaml", "path": path.name}]


def test_registries_from_an_existing_secret() -> None:
    docs = render(values={"registry.existingSecret": "k3s-registries"})
    assert not of_kind(docs, "Secret")
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "registries"
    )
    assert volume["secret"]["secretName"] == "k3s-registries"
    assert "ARCHAUDIT_REGISTRY_REGISTRIES_FILE" in env_of(docs)
    assert "ARCHAUDIT_REGISTRY_REGISTRIES_FILE" not in env_of(render())


def test_registries_yaml_must_be_yaml() -> None:
    fails_with(
        render_result(values={"registry.registriesYaml": "mirrors: [unclosed"}), "registry.registriesYaml"
    )


# --- schema: typos and bad values fail --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("webhok.mode", "additional properties 'webhok' not allowed"),
        ("webhook.mdoe", "additional properties 'mdoe' not allowed"),
        ("webhook.tls.certmanager.duration", "additional properties 'certmanager' not allowed"),
        ("resources.requests.cpus", "additional properties 'cpus' not allowed"),
        ("serviceMonitor.enable", "additional properties 'enable' not allowed"),
    ],
)
def test_a_values_typo_fails_lint_and_template(key: str, where: str) -> None:
    fails_with(helm("lint", "--set", f"{key}=x"), where)
    fails_with(render_result(values={key: "x"}), where)


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("webhook.mode", "block", "/webhook/mode"),
        ("webhook.tls.mode", "letsencrypt", "/webhook/tls/mode"),
        ("webhook.failurePolicy", "ignore", "/webhook/failurePolicy"),
        ("cluster.runtimeProfile", "docker", "/cluster/runtimeProfile"),
        ("cluster.platforms[0]", "arm64", "/cluster/platforms/0"),
        ("replicaCount", "-1", "/replicaCount"),
    ],
)
def test_a_bad_value_fails_naming_the_key(key: str, value: str, where: str) -> None:
    fails_with(render_result(values={key: value}), where)


def test_every_object_in_the_schema_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_by_design = {"affinity", "tolerations", "topologySpreadConstraints", "extraEnv", "global"}

    def walk(node: Mapping[str, Any], path: str) -> Iterable[str]:
        if (
            node.get("type") == "object"
            and "properties" in node
            and node.get("additionalProperties") is not False
        ):
            yield path
        for name, child in node.get("properties", {}).items():
            if name not in open_by_design:
                yield from walk(child, f"{path}.{name}")

    assert list(walk(schema, "$")) == []
    for name, definition in schema["definitions"].items():
        assert list(walk(definition, f"#/definitions/{name}")) == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


# --- CRD --------------------------------------------------------------------------------------------------


def test_crd_is_kept_on_uninstall_and_has_the_contracted_names() -> None:
    docs = render()
    crd = one(docs, "CustomResourceDefinition", "imageaudits.archaudit.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = crd["spec"]
    assert spec["group"] == "archaudit.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ImageAudit"
    assert spec["names"]["plural"] == "imageaudits"
    assert spec["names"]["shortNames"] == ["ia"]
    assert spec["names"]["categories"] == ["archaudit"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Workload",
        "Verdict",
        "Images",
        "Incompatible",
        "Node Platforms",
        "Age",
        "Message",
        "Last Checked",
        "Runs On",
    ]
    assert {n for n, c in columns.items() if c.get("priority") == 1} == {"Message", "Last Checked", "Runs On"}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in columns.values():
        field = column["jsonPath"].split(".")[-1]
        if column["jsonPath"].startswith(".status."):
            assert field in status, column
    assert status["verdict"]["enum"] == ["Compatible", "Incompatible", "AtRisk", "Unknown"]
    assert status["containers"]["maxItems"] == 100
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_schema_is_structural() -> None:
    """Every node says its type, unless it explicitly preserves unknown fields (apiserver rule)."""
    crd = one(render(), "CustomResourceDefinition")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def untyped(node: Mapping[str, Any], path: str) -> Iterable[str]:
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            yield path
        for name, child in node.get("properties", {}).items():
            yield from untyped(child, f"{path}.{name}")
        if "items" in node:
            yield from untyped(node["items"], f"{path}[]")

    assert list(untyped(schema, "$")) == []


def test_crd_install_can_be_turned_off() -> None:
    assert not of_kind(render(values={"crds.install": "false"}), "CustomResourceDefinition")


def test_image_audits_aggregate_into_the_default_roles() -> None:
    docs = render()
    view = one(docs, "ClusterRole", f"{RELEASE}-view")
    edit = one(docs, "ClusterRole", f"{RELEASE}-edit")
    for role, tiers in ((view, {"view", "edit", "admin"}), (edit, {"edit", "admin"})):
        labels = role["metadata"]["labels"]
        assert {
            k.rsplit("-", 1)[-1] for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")
        } == tiers
        assert all(labels[f"rbac.authorization.k8s.io/aggregate-to-{t}"] == "true" for t in tiers)
        assert {r for rule in role["rules"] for r in rule["resources"]} == {"imageaudits"}
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    names = {
        r["metadata"]["name"]
        for r in of_kind(render(values={"rbac.aggregateToDefaultRoles": "false"}), "ClusterRole")
    }
    assert names.isdisjoint({f"{RELEASE}-view", f"{RELEASE}-edit"})


# --- RBAC -------------------------------------------------------------------------------------------------


# The auditor watches every workload kind the webhook checks (reports for workloads without pods).
WORKLOAD_RESOURCES_READ = [(group, resource) for group, _version, resource in WORKLOAD_RESOURCES]


def grants(rules: Sequence[Doc]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_rbac_is_least_privilege() -> None:
    docs = render()
    main = one(docs, "ClusterRole", RELEASE)
    granted = grants(main["rules"])
    assert not [g for g in granted if "*" in g]
    # Exactly what the code calls (kopf's watches, kube.py, auditstore.py); the e2e chart test runs the
    # operator with this role's token, so a missing rule fails there and an extra one fails here.
    assert granted == {
        *{("", "nodes", v) for v in ("get", "list", "watch")},
        *{("", "pods", v) for v in ("get", "list", "watch")},
        *{("", "namespaces", v) for v in ("get", "list", "watch")},
        *{("", "events", v) for v in ("get", "list", "watch", "create", "patch")},
        *{
            (group, resource, verb)
            for group, resource in [*WORKLOAD_RESOURCES_READ]
            for verb in ("get", "list", "watch")
        },
        *{("archaudit.io", "imageaudits", v) for v in ("get", "list", "create")},
        ("archaudit.io", "imageaudits/status", "patch"),
        ("", "serviceaccounts", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
        # placement: its webhook's caBundle, and ungating pods
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "delete"),  # pre-delete hook
        ("", "pods", "patch"),
    }
    webhook_rule = next(r for r in main["rules"] if "validatingwebhookconfigurations" in r["resources"])
    assert webhook_rule["resourceNames"] == [one(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]]
    assert set(webhook_rule["verbs"]) == {"get", "patch"}
    assert not [g for g in granted if g[1] == "secrets"]  # secrets: only in their own role below
    assert ("", "pods/status", "patch") not in granted
    pull = one(docs, "ClusterRole", f"{RELEASE}-pull-secrets")
    assert grants(pull["rules"]) == {("", "secrets", "get")}
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {
            "kind": "ServiceAccount",
            "name": one(docs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    lease_rules = [r for r in one(docs, "Role")["rules"] if "leases" in r["resources"]]
    assert all(r.get("resourceNames") or r["verbs"] == ["create"] for r in lease_rules)


def test_reading_pull_secrets_can_be_turned_off() -> None:
    docs = render(values={"rbac.readPullSecrets": "false"})
    assert not [r for r in of_kind(docs, "ClusterRole") if ("", "secrets", "get") in grants(r["rules"])]
    assert not [
        b for b in of_kind(docs, "ClusterRoleBinding") if b["metadata"]["name"].endswith("pull-secrets")
    ]


def test_no_kopf_peering_objects() -> None:
    """Leadership is a coordination.k8s.io Lease: nothing of kopf's peering is installed or granted."""
    docs = render()
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev") or "kopf" in d["metadata"]["name"]]
    assert not [r for r in one(docs, "ClusterRole", RELEASE)["rules"] if "kopf.dev" in r.get("apiGroups", [])]


def chart_copy(tmp_path: Path, rules: str | None, dashboard: str | None) -> Path:
    """The chart with stand-in files/: tests the templates apart from the real rules and dashboard."""
    copy = tmp_path / "archaudit"
    shutil.copytree(CHART, copy)
    for name, content in (("prometheus-rules.yaml", rules), ("dashboard.json", dashboard)):
        target = copy / "files" / name
        target.unlink(missing_ok=True)
        if content is not None:
            target.write_text(content)
    return copy


STAND_IN_RULES = """\
groups:
  - name: stand-in
    rules:
      - alert: StandIn
        expr: archaudit_up == 0
        annotations:
          summary: "{{ $labels.namespace }} has {{ $value }}"
"""


def test_monitoring_objects_wrap_the_files_verbatim(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, STAND_IN_RULES, '{"title": "stand-in"}')
    docs = render(scenario("monitoring-on"), chart=chart)
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(STAND_IN_RULES)["groups"]  # {{ }} not evaluated by helm
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(next(iter(dashboard["data"].values()))) == {"title": "stand-in"}
    monitor = one(docs, "ServiceMonitor")
    metrics = one(docs, "Service", f"{RELEASE}-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert not (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= one(docs, "Service", f"{RELEASE}-webhook")["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert endpoint["honorLabels"] is True
    labelled = render(
        values={
            "dashboard.enabled": "true",
            "dashboard.label": "grafana_dash",
            "dashboard.labelValue": "yes",
        },
        chart=chart,
    )
    assert one(labelled, "ConfigMap")["metadata"]["labels"]["grafana_dash"] == "yes"


def test_monitoring_is_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_missing_monitoring_files_fail_only_when_enabled(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, None, None)
    assert render(chart=chart)
    fails_with(
        render_result(values={"prometheusRule.enabled": "true"}, chart=chart),
        "files/prometheus-rules.yaml is missing",
    )
    fails_with(
        render_result(values={"dashboard.enabled": "true"}, chart=chart), "files/dashboard.json is missing"
    )
    not_rules = chart_copy(tmp_path / "b", "just: text\n", "{}")
    fails_with(render_result(values={"prometheusRule.enabled": "true"}, chart=not_rules), "groups")


def test_the_real_rules_and_dashboard_render() -> None:
    docs = render(scenario("monitoring-on"))
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    dashboard = json.loads(next(iter(one(docs, "ConfigMap")["data"].values())))
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())


# --- NOTES.txt --------------------------------------------------------------------------------------------


def test_notes_tell_the_next_commands(tmp_path: Path) -> None:
    # `helm template` leaves NOTES.txt out, and renders every template as YAML: a copy of the chart
    # renders the notes through `tpl` into a string, the way helm install renders them.
    copy = tmp_path / "archaudit"
    shutil.copytree(CHART, copy)
    shutil.copy(copy / "templates" / "NOTES.txt", copy / "files" / "notes-under-test.txt")
    (copy / "templates" / "notes-under-test.yaml").write_text(
        'notes: {{ tpl (.Files.Get "files/notes-under-test.txt") . | toJson }}\n'
    )
    result = helm(
        "template",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--show-only",
        "templates/notes-under-test.yaml",
        chart=copy,
    )
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["notes"]
    assert "kubectl get imageaudits -A" in notes
    assert "--dry-run=server" in notes
    assert f"port-forward svc/{RELEASE}-metrics 9102:9102" in notes
    assert f"-n {NAMESPACE} rollout status deployment/{RELEASE}" in notes


# --- workflows --------------------------------------------------------------------------------------------


def test_workflows_pass_actionlint() -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {w.name for w in workflows} >= {"test.yml", "release.yml"}
    if shutil.which("shellcheck") is None:
        print("note: shellcheck not installed; actionlint checks the workflows without their run: scripts")
    result = subprocess.run(
        [str(actionlint()), "-no-color", "-oneline", *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_release_builds_every_platform_and_checks_each() -> None:
    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    platforms = release["env"]["PLATFORMS"].split(",")
    assert platforms == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert release["jobs"]["verify"]["strategy"]["matrix"]["platform"] == platforms
    build = next(s for s in release["jobs"]["image"]["steps"] if s.get("id") == "build")["with"]
    assert build["sbom"] is True
    assert build["provenance"] == "mode=max"


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    doc = (REPO / "docs" / "chart.md").read_text()
    free_form = {"resources", "nodeSelector", "webhook.tls.certManager.issuerRef"}

    def keys(node: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict) and value and key not in free_form:
                yield from keys(value, key + ".")
            else:
                yield key

    undocumented = [k for k in keys(values) if f"`{k}`" not in doc]
    assert not undocumented, f"docs/chart.md lacks {undocumented}"


# --- placement: the mutating webhook ------------------------------------------------------------------


def test_placement_webhook_is_pod_create_only_fail_open_reinvoked_and_opt_in() -> None:
    docs = render(values={"webhook.exemptNamespaces": "{monitoring}"}, namespace="ops")
    config = one(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == one(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    (hook,) = config["webhooks"]
    assert hook["name"] == "placement.archaudit.io"
    assert (hook["failurePolicy"], hook["reinvocationPolicy"], hook["sideEffects"]) == (
        "Ignore",
        "IfNeeded",
        "None",
    )
    assert hook["timeoutSeconds"] < 5
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"]["path"] == "/mutate/pods"
    expressions = hook["namespaceSelector"]["matchExpressions"]
    # The validating webhooks' exclusions, then the opt-in: default off calls only labelled namespaces.
    validating = webhooks(docs)["pods.archaudit.io"]["namespaceSelector"]["matchExpressions"]
    assert expressions[: len(validating)] == validating
    assert expressions[len(validating) :] == [
        {"key": "archaudit.io/placement", "operator": "In", "values": ["on"]}
    ]
    assert env_of(docs)["ARCHAUDIT_PLACEMENT_DEFAULT"] == "off"
    on = one(render(values={"placement.default": "on"}), "MutatingWebhookConfiguration")["webhooks"][0]
    assert on["namespaceSelector"]["matchExpressions"][-1] == {
        "key": "archaudit.io/placement",
        "operator": "NotIn",
        "values": ["off"],
    }


def test_placement_settings_reach_the_operator_and_can_be_turned_off() -> None:
    values = {
        "placement.preferArchitecture": "arm64",
        "placement.budgetSeconds": 1.5,
        "placement.gateTimeoutSeconds": 20,
    }
    settings = config.from_env(env_of(render(values=values)))
    assert settings.placement.prefer_architecture == "arm64"
    assert settings.placement.budget_seconds == 1.5
    assert settings.placement.gate_timeout_seconds == 20.0
    assert config.from_env(env_of(render())).placement == config.PlacementSettings()
    docs = render(values={"placement.enabled": "false"})
    assert not of_kind(docs, "MutatingWebhookConfiguration")
    assert ("", "pods", "patch") not in grants(one(docs, "ClusterRole", RELEASE)["rules"])
    fails_with(render_result(values={"placement.timeoutSeconds": 5}), "/placement/timeoutSeconds")
    fails_with(render_result(values={"placement.default": "yes"}), "/placement/default")


def test_uninstall_releases_gated_pods_in_a_pre_delete_hook_as_the_operator() -> None:
    docs = render()
    job = one(docs, "Job", f"{RELEASE}-release-gates")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    (main,) = pod_spec["containers"]
    assert main["command"] == ["python", "-m", "archaudit.placement", "release-gates"]
    assert main["args"] == ["--configuration", one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    rule = next(
        r
        for r in one(docs, "ClusterRole", RELEASE)["rules"]
        if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert rule["resourceNames"] == [RELEASE]
    assert not of_kind(render(values={"placement.uninstallHook": False}), "Job")
    # podLabels go on every pod the chart makes (policies that require a label must admit the hook too)
    labelled = render(values={"podLabels": {"team": "platform"}})
    hook_labels = one(labelled, "Job")["spec"]["template"]["metadata"]["labels"]
    assert hook_labels["team"] == "platform"
    assert one(labelled, "Deployment")["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert not of_kind(render(values={"placement.enabled": False}), "Job")
