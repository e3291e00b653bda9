"""The Helm chart installed on the real kube-apiserver, and `archaudit run` working with what it grants.

`helm template` proves the chart renders; only the apiserver proves the objects are valid (schemas,
RBAC escalation checks, webhook configuration validation, PodSecurity). The operator runs out of cluster
(url mode, replicaCount 0) but with the chart's environment and a token of the chart's ServiceAccount,
so every API call it makes is authorized by the chart's RBAC: a missing rule is a 403 here.

The release tests share one install (module fixture) and run in file order: the uninstall is last.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import Seeded
from tests.harness.cluster import Cluster
from tests.harness.kube import HARNESS_KUBELET, create_namespace, run_pod_here
from tests.harness.operator import (
    CHART,
    Operator,
    adopt_chart_env,
    chart_env,
    forbidden_lines,
    helm,
    helm_process,
    manifest_documents,
    service_account_kubeconfig,
    wait_until_denied,
)
from tests.harness.procs import wait_until

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "chart-e2e"
FULLNAME = f"{RELEASE}-archaudit"
RELEASE_NAMESPACE = "archaudit-chart-e2e"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
# API groups the test cluster does not serve, and why; objects of these kinds must be refused with
# "no matches for kind" (and nothing else), every other object must be accepted.
EXTERNAL_GROUPS = {
    "cert-manager.io": "cert-manager is not installed",
    "monitoring.coreos.com": "the Prometheus Operator is not installed",
    "kopf.dev": "its CRD is in the same rendering, and a dry run creates no CRD",
}
ARM64_ONLY = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}

Doc = dict[str, Any]


def pod(name: str, image: str, **spec: Any) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}], **spec},
    }


def group_of(doc: Doc) -> str:
    api_version = str(doc["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def served_groups(cluster: Cluster) -> set[str]:
    return {g["name"] for g in cluster.get("/apis")["groups"]} | {""}


def kube_version(cluster: Cluster) -> str:
    return str(cluster.get("/version")["gitVersion"])


def run_helm(cluster: Cluster, home: Path, *args: str) -> str:
    done = helm(cluster.bin_dir, *args, kubeconfig=cluster.kubeconfig, home=home)
    assert done.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{done.stderr}"
    return done.stdout


def template(cluster: Cluster, home: Path, release: str, namespace: str, *values: str) -> list[Doc]:
    out = run_helm(
        cluster, home, "template", release, str(CHART), "-n", namespace,
        "--kube-version", kube_version(cluster), *values,
    )  # fmt: skip
    return manifest_documents(out)


def dry_run(cluster: Cluster, namespace: str, docs: Sequence[Doc]) -> tuple[int, str, str]:
    done = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(_list(docs)), check=False
    )
    return done.returncode, done.stdout, done.stderr


def _list(docs: Sequence[Doc]) -> Doc:
    return {"apiVersion": "v1", "kind": "List", "items": list(docs)}


# --- every CI scenario, validated by the apiserver ------------------------------------------------------


@pytest.mark.parametrize("values", SCENARIOS, ids=[p.name.removesuffix("-values.yaml") for p in SCENARIOS])
def test_every_scenario_is_accepted_by_the_apiserver(
    cluster: Cluster, namespace: str, values: Path, tmp_path: Path
) -> None:
    release = f"ci-{values.name.removesuffix('-values.yaml')}"
    docs = template(cluster, tmp_path / "helm", release, namespace, "-f", str(values))
    served = served_groups(cluster)
    unserved = [d for d in docs if group_of(d) not in served]
    accepted = [d for d in docs if group_of(d) in served]
    strays = {f"{d['apiVersion']} {d['kind']}" for d in unserved if group_of(d) not in EXTERNAL_GROUPS}
    assert not strays, f"kinds the apiserver does not know and no known add-on provides: {strays}"

    code, out, err = dry_run(cluster, namespace, accepted)
    assert code == 0, err
    answered = [line for line in out.splitlines() if line.endswith("(server dry run)")]
    assert len(answered) == len(accepted), out

    for doc in unserved:
        print(f"{doc['kind']} {doc['metadata']['name']}: expected unknown, {EXTERNAL_GROUPS[group_of(doc)]}")
        code, out, err = dry_run(cluster, namespace, [doc])
        assert code != 0, f"{doc['kind']} accepted although {group_of(doc)} is not served"
        assert f'no matches for kind "{doc["kind"]}"' in err, err


# --- one release in url mode, the operator as its ServiceAccount -----------------------------------------


@dataclass
class Release:
    cluster: Cluster
    helm_home: Path
    operator: Operator
    values: list[str]
    installed: bool = True

    def helm(self, *args: str) -> str:
        return run_helm(self.cluster, self.helm_home, *args)

    def manifest(self) -> list[Doc]:
        return manifest_documents(self.helm("get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE))

    def webhook_configuration(self) -> Any:
        return client.AdmissionregistrationV1Api(self.cluster.admin).read_validating_webhook_configuration(
            FULLNAME
        )

    def operator_ca_bundle(self) -> str:
        secret = client.CoreV1Api(self.cluster.admin).read_namespaced_secret(
            f"{FULLNAME}-webhook-tls", RELEASE_NAMESPACE
        )
        return str(secret.data["ca.crt"])

    def ca_bundles(self) -> set[str]:
        """The caBundle of every webhook (base64 PEM, as in the Secret's ca.crt)."""
        return {str(h.client_config.ca_bundle) for h in self.webhook_configuration().webhooks}

    def log(self) -> str:
        return self.operator.service.log_path.read_text(errors="replace")


def adopt_existing_crd(cluster: Cluster) -> None:
    """A CRD applied before the chart (by hand, or by another test module) is adopted, as docs/chart.md
    tells users to do: helm refuses to take over objects without its ownership labels."""
    crd = "crd/imageaudits.archaudit.io"
    if cluster.kubectl("get", crd, "--ignore-not-found", "-o", "name").stdout.strip():
        cluster.kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate",
            "--overwrite",
            crd,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={RELEASE_NAMESPACE}",
        )


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, plain_registry: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    work = tmp_path_factory.mktemp("chart-install")
    create_namespace(cluster.admin, RELEASE_NAMESPACE, labels=RESTRICTED)
    token_kubeconfig = work / "serviceaccount.kubeconfig"
    op = Operator(kubeconfig=token_kubeconfig, log_dir=work / "logs")
    # The operator may reach the seeded registry only: the auditor sees every pod of the shared
    # cluster, and their images must not send it off the machine.
    registry = plain_registry.registry.host
    values = [
        "--set", "replicaCount=0",
        "--set", f"webhook.url={op.url}",
        "--set-json", f'registry.insecure=["{registry}"]',
        "--set-json", 'registry.allow=["127.0.0.1"]',
        # Its hook Job's pod is run by the test (run_pod_here), not completed unrun by kwok.
        "--set-json", f'podLabels={{"{HARNESS_KUBELET[0]}":"{HARNESS_KUBELET[1]}"}}',
    ]  # fmt: skip
    r = Release(cluster, work / "helm", op, values)
    adopt_existing_crd(cluster)
    r.helm("install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *values)
    try:
        service_account_kubeconfig(
            cluster.kubeconfig, namespace=RELEASE_NAMESPACE, name=FULLNAME, path=token_kubeconfig
        )
        adopt_chart_env(op, chart_env(r.manifest(), namespace=RELEASE_NAMESPACE))
        op.start(timeout=120)
        _wait_for_denial(cluster, plain_registry, op)
        yield r
    finally:
        op.stop()
        if r.installed:
            helm(cluster.bin_dir, "uninstall", RELEASE, "-n", RELEASE_NAMESPACE,
                 kubeconfig=cluster.kubeconfig, home=r.helm_home)  # fmt: skip
        client.CoreV1Api(cluster.admin).delete_namespace(RELEASE_NAMESPACE)


def _wait_for_denial(cluster: Cluster, registry: Seeded, op: Operator) -> None:
    """The apiserver picks the caBundle patch up after a moment: wait until a canary is denied."""
    canary_ns = f"{RELEASE}-canary"
    create_namespace(cluster.admin, canary_ns)
    bad = pod("canary", registry.samples["amd64-docker"].reference, **ARM64_ONLY)
    try:
        wait_until_denied(
            cluster.admin, canary_ns, bad, service=op.service, what="the chart's webhook to deny a canary"
        )
    finally:
        client.CoreV1Api(cluster.admin).delete_namespace(canary_ns)


def test_the_operator_runs_as_the_chart_service_account(cluster: Cluster, release: Release) -> None:
    assert release.operator.service.env is not None
    kubeconfig = release.operator.service.env["KUBECONFIG"]

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", kubeconfig, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    whoami = kubectl("auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}"
    )
    # The token carries the chart's rights and no more: Secrets may be read one by one, never listed.
    refused = kubectl("get", "secrets", "-A")
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower(), refused.stderr


def test_the_operator_patches_the_chart_webhook_and_denies(
    cluster: Cluster, release: Release, plain_registry: Seeded, namespace: str
) -> None:
    assert release.ca_bundles() == {release.operator_ca_bundle()}
    assert base64.b64decode(release.operator_ca_bundle()).startswith(b"-----BEGIN CERTIFICATE-----")

    image = plain_registry.samples["amd64-docker"].reference
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(cluster.admin).create_namespaced_pod(namespace, pod("amd", image, **ARM64_ONLY))
    assert denied.value.status == 403
    assert json.loads(denied.value.body)["message"] == (
        'admission webhook "pods.archaudit.io" denied the request: '
        f"image {image} provides linux/amd64 only; nodes this pod can use are linux/arm64"
    )
    client.CoreV1Api(cluster.admin).create_namespaced_pod(
        namespace, pod("multi", plain_registry.samples["multiarch"].reference, **ARM64_ONLY)
    )
    # The auditor's writes go through the chart's RBAC too: wait for its report on the admitted pod.
    custom = client.CustomObjectsApi(cluster.admin)
    wait_until(
        lambda: [
            a
            for a in custom.list_namespaced_custom_object(
                "archaudit.io", "v1alpha1", namespace, "imageaudits"
            )["items"]
            if a.get("status")
        ],
        timeout=90,
        what=f"an ImageAudit with a status in {namespace}",
        service=release.operator.service,
    )
    assert forbidden_lines(release.log()) == [], release.operator.tail()


def test_the_chart_pod_passes_restricted_pod_security(cluster: Cluster, release: Release) -> None:
    """The release namespace enforces PodSecurity `restricted`: the chart's own pod must get in."""
    core = client.CoreV1Api(cluster.admin)
    # First prove the namespace really enforces: a pod without a securityContext is refused.
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(
            RELEASE_NAMESPACE, pod("plain", "registry.example/pause:3.10"), dry_run="All"
        )
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]

    (deployment,) = [d for d in release.manifest() if d["kind"] == "Deployment"]
    probe = f"{FULLNAME}-psa-probe"
    deployment["metadata"]["name"] = probe
    deployment["spec"]["replicas"] = 1
    for labels in (
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    ):
        labels["archaudit.test/probe"] = "psa"
    apps = client.AppsV1Api(cluster.admin)
    apps.create_namespaced_deployment(RELEASE_NAMESPACE, deployment)
    try:

        def outcome() -> tuple[list[Any], list[str]] | None:
            """The probe's pods, or the ReplicaSet's FailedCreate messages (PodSecurity's refusal)."""
            pods = core.list_namespaced_pod(
                RELEASE_NAMESPACE, label_selector="archaudit.test/probe=psa"
            ).items
            events = core.list_namespaced_event(RELEASE_NAMESPACE).items
            failed = [str(e.message) for e in events if e.reason == "FailedCreate"]
            return (list(pods), failed) if pods or failed else None

        result = wait_until(
            outcome, timeout=90, what="the chart's pod, or its refusal, in a restricted namespace"
        )
        pods, failed = cast(tuple[list[Any], list[str]], result)
        assert failed == []
        assert len(pods) == 1
    finally:
        apps.delete_namespaced_deployment(probe, RELEASE_NAMESPACE, propagation_policy="Foreground")


def test_upgrade_keeps_the_webhook_and_its_ca_bundle(release: Release) -> None:
    before = chart_env(release.manifest(), namespace=RELEASE_NAMESPACE)
    assert before["ARCHAUDIT_WEBHOOK_DEFAULT_MODE"] == "enforce"
    release.helm(
        "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *release.values, "--set", "webhook.mode=warn"
    )

    after = chart_env(release.manifest(), namespace=RELEASE_NAMESPACE)
    assert after == {**before, "ARCHAUDIT_WEBHOOK_DEFAULT_MODE": "warn"}
    status = json.loads(release.helm("status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json"))
    assert (status["version"], status["info"]["status"]) == (2, "deployed")
    # The chart renders no caBundle in self mode; helm's three-way merge keeps the operator's patch.
    assert release.ca_bundles() == {release.operator_ca_bundle()}


def test_uninstall_releases_gated_pods_removes_the_webhook_and_keeps_the_crd(
    cluster: Cluster, release: Release, plain_registry: Seeded, namespace: str
) -> None:
    """Last in the module: it removes the release the other tests use.

    helm uninstall runs the pre-delete hook Job (`python -m archaudit.placement release-gates`, as the
    chart's ServiceAccount) and waits for it; the test plays that pod's kubelet (run_pod_here), so
    the Job's command really runs, authorized by the chart's RBAC, and helm goes on only once the Job
    controller has seen it succeed. A pod gated by archaudit must not be left behind.
    """
    assert forbidden_lines(release.log()) == [], release.operator.tail()
    hooks = manifest_documents(release.helm("get", "hooks", RELEASE, "-n", RELEASE_NAMESPACE))
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    release.operator.stop()  # its gate controller would release the pod before the hook could
    core = client.CoreV1Api(cluster.admin)
    gated = pod("gated", plain_registry.samples["multiarch"].reference)
    gated["spec"]["schedulingGates"] = [{"name": "archaudit.io/placement"}]
    core.create_namespaced_pod(namespace, gated)

    work = release.helm_home.parent
    uninstall = helm_process(
        cluster.bin_dir, "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "120s",
        kubeconfig=cluster.kubeconfig, home=release.helm_home,
    )  # fmt: skip
    try:
        hook = run_pod_here(
            cluster.admin,
            RELEASE_NAMESPACE,
            "app.kubernetes.io/component=placement-uninstall",
            kubeconfig_for=lambda sa: service_account_kubeconfig(
                cluster.kubeconfig, namespace=RELEASE_NAMESPACE, name=sa, path=work / "hook.kubeconfig"
            ),
        )
        _out, err = uninstall.communicate(timeout=120)
    finally:
        if uninstall.poll() is None:
            uninstall.kill()
    assert hook.returncode == 0, hook.stderr
    assert "1 pod(s) released" in hook.stdout, hook.stdout
    assert uninstall.returncode == 0, err
    release.installed = False
    assert not core.read_namespaced_pod("gated", namespace).spec.scheduling_gates

    admission = client.AdmissionregistrationV1Api(cluster.admin)
    left = [w.metadata.name for w in admission.list_validating_webhook_configuration().items]
    assert FULLNAME not in left
    crd = client.ApiextensionsV1Api(cluster.admin).read_custom_resource_definition("imageaudits.archaudit.io")
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"

    rbac = client.RbacAuthorizationV1Api(cluster.admin)
    core = client.CoreV1Api(cluster.admin)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert [
        r.metadata.name for r in rbac.list_cluster_role().items if r.metadata.name.startswith(FULLNAME)
    ] == []
    assert rbac.list_namespaced_role(RELEASE_NAMESPACE, label_selector=selector).items == []
    assert rbac.list_namespaced_role_binding(RELEASE_NAMESPACE, label_selector=selector).items == []
    assert core.list_namespaced_service(RELEASE_NAMESPACE, label_selector=selector).items == []
    assert core.list_namespaced_service_account(RELEASE_NAMESPACE, label_selector=selector).items == []
    assert client.AppsV1Api(cluster.admin).list_namespaced_deployment(RELEASE_NAMESPACE).items == []
