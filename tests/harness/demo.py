"""`make demo`: a mixed-architecture cluster, a registry with sample images and archaudit, left running.

Why a module and not a script: the demo is the test harness kept alive — the same `Cluster` (real
kube-apiserver & co. with kwok's fake amd64/arm64/arm nodes) and the same registry with the same sample
images the e2e tests use, so what a newcomer pokes at is exactly what CI checks.

    python -m tests.harness.demo up       start (or reuse) everything, apply examples/, print how to use it
    python -m tests.harness.demo status   what runs; exit 1 if something died
    python -m tests.harness.demo down     stop everything and remove the state directory

The processes are detached (own sessions, logs in files) and outlive the command; their pids and
addresses are kept in `.demo/state.json` (`$ARCHAUDIT_DEMO_DIR` overrides the directory).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.harness.cluster import FAKE_NODES, REPO, Cluster, find_bin_dir
from tests.harness.procs import wait_until

DEMO_DIR = Path(os.environ.get("ARCHAUDIT_DEMO_DIR", REPO / ".demo"))
EXAMPLES = REPO / "examples"
PLACEHOLDER = "${ARCHAUDIT_REGISTRY}"  # as in `envsubst < examples/x.yaml`, so users can apply by hand
DEMO_NAMESPACE = "archaudit-demo"
STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Process:
    pid: int
    exe: str  # argv[0], checked before signalling so a recycled pid is never killed


@dataclass
class DemoState:
    """Everything `status` and `down` need after `up` has exited."""

    directory: Path
    processes: dict[str, Process]
    server: str
    registry: str
    bin_dir: str
    kubeconfig: str
    samples: dict[str, str] = field(default_factory=dict)  # sample name -> image reference
    env: dict[str, str] = field(default_factory=dict)  # extra lines for .demo/env (archaudit's URLs)

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def save(self) -> None:
        data = asdict(self)
        data["directory"] = str(self.directory)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)

    @classmethod
    def load(cls, directory: Path) -> DemoState | None:
        try:
            data = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            return None
        data["directory"] = Path(data["directory"])
        data["processes"] = {name: Process(**p) for name, p in data["processes"].items()}
        return cls(**data)

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if not alive(p)]


def alive(p: Process) -> bool:
    """The pid runs, is not a zombie, and is still the program we started."""
    try:
        stat = Path(f"/proc/{p.pid}/stat").read_text()
        argv0 = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and argv0 == p.exe


def _rel(path: Path | str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return str(path)


# --- up ---------------------------------------------------------------------------------------------


def _start(directory: Path) -> DemoState:
    from tests.harness.registry import seed_samples, start_registry  # needs aiohttp, bcrypt

    directory.mkdir(parents=True, exist_ok=True)
    bin_dir = find_bin_dir()
    print(f"starting the control plane from {bin_dir} ...", flush=True)
    cluster = Cluster(
        work_dir=directory / "cluster",
        log_dir=directory / "logs",
        bin_dir=bin_dir,
        kubeconfig=directory / "kubeconfig",
    )
    cluster.start()
    try:
        print("starting docker-registry and pushing the sample images ...", flush=True)
        registry = start_registry("plain", directory / "registry")
        try:
            samples = {name: s.reference for name, s in seed_samples(registry).items()}
        except BaseException:
            registry.stop()
            raise
    except BaseException:
        cluster.stop()
        raise
    assert registry.service.proc is not None
    processes = {name: Process(pid, str(bin_dir / name)) for name, pid in cluster.detach().items()}
    processes["docker-registry"] = Process(registry.service.proc.pid, registry.service.argv[0])
    with contextlib.suppress(FileExistsError):
        (directory / "logs" / "docker-registry.log").symlink_to(registry.service.log_path)
    state = DemoState(
        directory=directory,
        processes=processes,
        server=cluster.server,
        registry=registry.host,
        bin_dir=str(bin_dir),
        kubeconfig=str(cluster.kubeconfig),
        samples=samples,
    )
    state.save()
    return state


def _apiserver_ready(state: DemoState) -> bool:
    done = _kubectl(state, "get", "--raw", "/readyz", check=False)
    return done.returncode == 0 and done.stdout.strip() == "ok"


def _kubectl(
    state: DemoState, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(Path(state.bin_dir) / "kubectl"), "--kubeconfig", state.kubeconfig, *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=check, timeout=120)


# ======================================= ARCHAUDIT HOOK =============================================
# archaudit as a user installs it, except that it runs on this machine: the chart in url mode
# (replicaCount 0: CRD, RBAC, ServiceAccount, ValidatingWebhookConfiguration pointing at 127.0.0.1) and
# `archaudit run` detached, with the chart's environment and a token of the chart's ServiceAccount, so
# the demo exercises exactly the rights the chart grants.

RELEASE = "archaudit"
RELEASE_NAMESPACE = "archaudit"
# The example that archaudit refuses in enforce mode: its pods (the Deployment itself is warned about).
DENIED_EXAMPLE = "amd64-only-on-arm64"
TOKEN_SECONDS = 7 * 24 * 3600  # the demo's ServiceAccount token outlives any demo session
ARCHAUDIT_READY_SECONDS = 120.0
WEBHOOK_LIVE_SECONDS = 90.0
DENIAL_SECONDS = 90.0
REPORTS_SECONDS = 60.0  # the first audit pass: seconds after start-up, longer on a loaded machine


def _helm(state: DemoState, *args: str) -> str:
    from tests.harness.operator import helm

    done = helm(Path(state.bin_dir), *args, kubeconfig=Path(state.kubeconfig), home=state.directory / "helm")
    if done.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def _install_chart(state: DemoState, webhook_url: str) -> None:
    from tests.harness.operator import CHART

    _helm(
        state, "upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
        "--set", "replicaCount=0",
        "--set", f"webhook.url={webhook_url}",
        "--set-json", f"registry.insecure={json.dumps([state.registry])}",
    )  # fmt: skip


def _canary(state: DemoState) -> dict[str, object]:
    """A pod archaudit must refuse: an amd64-only image pinned to arm64 nodes (server dry run only)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "archaudit-canary", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "containers": [{"name": "main", "image": state.samples["amd64-docker"]}],
        },
    }


def _webhook_denies(state: DemoState) -> bool:
    done = _kubectl(
        state, "create", "--dry-run=server", "-f", "-", input=json.dumps(_canary(state)), check=False
    )
    return done.returncode != 0 and "denied the request" in done.stderr


def start_archaudit(state: DemoState) -> dict[str, str]:
    """Install the chart and start `archaudit run`, or reuse the running one; return lines for .demo/env.

    Idempotent: a second `up` upgrades the release in place and keeps the running process.
    """
    from tests.harness.operator import (
        Operator,
        adopt_chart_env,
        chart_env,
        manifest_documents,
        service_account_kubeconfig,
    )

    running = state.processes.get("archaudit")
    if running is not None and alive(running) and "ARCHAUDIT_WEBHOOK_URL" in state.env:
        print("reusing the running archaudit; upgrading its chart release ...", flush=True)
        _install_chart(state, state.env["ARCHAUDIT_WEBHOOK_URL"])
        return {k: state.env[k] for k in ("ARCHAUDIT_WEBHOOK_URL", "ARCHAUDIT_METRICS_URL")}

    print("installing the archaudit chart (url mode) and starting `archaudit run` ...", flush=True)
    token_kubeconfig = state.directory / "archaudit.kubeconfig"
    logs = state.directory / "logs"
    op = Operator(kubeconfig=token_kubeconfig, log_dir=logs)
    _install_chart(state, op.url)
    manifest = manifest_documents(_helm(state, "get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE))
    service_account_kubeconfig(
        Path(state.kubeconfig),
        namespace=RELEASE_NAMESPACE,
        name=RELEASE,  # the chart's full name for release "archaudit"
        path=token_kubeconfig,
        expiration_seconds=TOKEN_SECONDS,
    )
    adopt_chart_env(op, chart_env(manifest, namespace=RELEASE_NAMESPACE))
    op.service.start()
    assert op.service.proc is not None
    # Recorded before waiting: if it never gets ready, `down` still stops it.
    state.processes["archaudit"] = Process(op.service.proc.pid, op.service.argv[0])
    state.save()
    with contextlib.suppress(FileExistsError):
        (logs / "archaudit.log").symlink_to(op.service.log_path.name)
    wait_until(op.ready, timeout=ARCHAUDIT_READY_SECONDS, what="archaudit /readyz", service=op.service)
    # The operator patches its CA into the webhook configuration; the apiserver then needs a moment.
    wait_until(
        lambda: _webhook_denies(state),
        timeout=WEBHOOK_LIVE_SECONDS,
        interval=0.5,
        what="the apiserver to call archaudit (canary pod denied)",
        service=op.service,
    )
    return {"ARCHAUDIT_WEBHOOK_URL": op.url, "ARCHAUDIT_METRICS_URL": f"{op.metrics_url}/metrics"}


def denials(state: DemoState) -> list[str]:
    """archaudit's refusals in the demo namespace, as the ReplicaSets reported them (FailedCreate)."""
    done = _kubectl(state, "get", "events", "-n", DEMO_NAMESPACE, "-o", "json", check=False)
    if done.returncode != 0:
        return []
    found = []
    for event in json.loads(done.stdout)["items"]:
        message = event.get("message") or ""
        if event.get("reason") == "FailedCreate" and "archaudit.io" in message:
            found.append(f"{event['involvedObject']['kind']}/{event['involvedObject']['name']}: {message}")
    return sorted(set(found))


def _names(state: DemoState, resource: str) -> set[str]:
    done = _kubectl(state, "get", resource, "-n", DEMO_NAMESPACE, "-o", "name", check=False)
    return {line.split("/", 1)[-1] for line in done.stdout.split()} if done.returncode == 0 else set()


def _reported(state: DemoState) -> bool:
    """Every Deployment of the demo namespace has its ImageAudit (`deployment-<name>`)."""
    wanted = {f"deployment-{name}" for name in _names(state, "deployments")}
    return bool(wanted) and wanted <= _names(state, "imageaudits")


def archaudit_report(state: DemoState) -> str:
    """What archaudit did to the examples: the denials, then its ImageAudit reports."""
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: any(DENIED_EXAMPLE in d for d in denials(state)),
            timeout=DENIAL_SECONDS,
            interval=0.5,
            what=f"archaudit to deny the pods of {DENIED_EXAMPLE}",
        )
    denied = "\n".join(f"    {d}" for d in denials(state)) or "    (none yet)"
    # The first audit pass ends a few seconds after start-up: list the reports once every example
    # workload has one, so that the demo does not print "No resources found".
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: _reported(state),
            timeout=REPORTS_SECONDS,
            interval=0.5,
            what="an ImageAudit for every example workload",
        )
    audits = _kubectl(state, "get", "imageaudits", "-A", check=False)
    table = (audits.stdout or audits.stderr).strip() or "No resources found"
    return f"  pods archaudit denied:\n{denied}\n  kubectl get imageaudits -A:\n    " + table.replace(
        "\n", "\n    "
    )


# =====================================================================================================


def _apply_examples(state: DemoState) -> list[str]:
    """Apply examples/*.yaml with the registry filled in; a denial by archaudit is a result, not an error."""
    outcomes = []
    for template in sorted(EXAMPLES.glob("*.yaml")):
        manifest = template.read_text().replace(PLACEHOLDER, state.registry)
        done = _kubectl(state, "apply", "-f", "-", input=manifest, check=False)
        if done.returncode != 0 and "denied the request" not in done.stderr:
            raise RuntimeError(f"kubectl apply {template.name} failed: {done.stderr.strip()}")
        said = (done.stdout + done.stderr).strip().replace("\n", "\n    ")
        outcomes.append(f"  {template.name}:\n    {said}")
        if template.name.startswith("00-"):
            # The namespace's placement label must reach the apiserver's webhook selector and archaudit's
            # namespace watch before the Deployments' pods are created.
            wait_until(
                lambda: _placement_live(state),
                timeout=WEBHOOK_LIVE_SECONDS,
                interval=0.5,
                what=f"placement live in namespace {DEMO_NAMESPACE}",
            )
    return outcomes


def _placement_live(state: DemoState) -> bool:
    """A server dry run of an arm64-only pod in the demo namespace comes back placed."""
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "archaudit-placement-probe", "namespace": DEMO_NAMESPACE},
        "spec": {"containers": [{"name": "main", "image": state.samples["arm64-oci"]}]},
    }
    done = _kubectl(
        state, "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe), check=False
    )
    return done.returncode == 0 and "archaudit.io/placement" in done.stdout


def _write_env(state: DemoState) -> Path:
    q = shlex.quote
    lines = [
        "# source me: the demo's cluster, tools and registry (written by `make demo`)",
        f"export KUBECONFIG={q(state.kubeconfig)}",
        f'export PATH={q(state.bin_dir)}:{q(str(REPO / ".venv" / "bin"))}:"$PATH"',
        f"export ARCHAUDIT_REGISTRY={q(state.registry)}",
        *(f"export {k}={q(v)}" for k, v in sorted(state.env.items())),
    ]
    path = state.directory / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def up(directory: Path = DEMO_DIR) -> DemoState:
    state = DemoState.load(directory)
    if state is not None and not state.dead() and _apiserver_ready(state):
        print(f"reusing the running demo in {_rel(directory)}", flush=True)
    else:
        if state is not None:
            why = ", ".join(state.dead()) or "apiserver not ready"
            print(f"the demo in {_rel(directory)} is broken ({why}); starting it afresh", flush=True)
        down(directory, quiet=True)
        state = _start(directory)
    state.env.update(start_archaudit(state))
    state.save()
    env_file = _write_env(state)
    outcomes = _apply_examples(state)
    print(_usage(state, env_file, outcomes, archaudit_report(state)))
    return state


def _usage(state: DemoState, env_file: Path, outcomes: Sequence[str], report: str) -> str:
    nodes = ", ".join(f"{n.name} ({n.arch})" for n in FAKE_NODES)
    samples = "\n".join(f"    {name:13} {ref}" for name, ref in sorted(state.samples.items()))
    webhook = state.env.get("ARCHAUDIT_WEBHOOK_URL", "(not started)")
    metrics = state.env.get("ARCHAUDIT_METRICS_URL", "(not started)")
    return f"""
archaudit demo is running (state, certificates and logs in {_rel(state.directory)}/):
  control plane  {state.server}  etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
  fake nodes     {nodes}
  registry       http://{state.registry}  (plain HTTP, loopback only) with the sample images:
{samples}
  archaudit      webhook {webhook}, metrics {metrics}
                 (chart release {RELEASE} in namespace {RELEASE_NAMESPACE}, url mode; the process runs here)
  examples applied to namespace {DEMO_NAMESPACE}:
{chr(10).join(outcomes)}
{report}

Use it:
  source {_rel(env_file)}
  kubectl get nodes -L kubernetes.io/arch
  kubectl -n {DEMO_NAMESPACE} get pods -o wide
  archaudit check $ARCHAUDIT_REGISTRY/samples/multiarch:1.0 --insecure-registry $ARCHAUDIT_REGISTRY \\
      --platform linux/arm/v7
  kubectl get imageaudits -A
  kubectl -n {DEMO_NAMESPACE} get events --field-selector reason=FailedCreate
  curl -s $ARCHAUDIT_METRICS_URL | grep ^archaudit_
  tail -f {_rel(state.directory / "logs")}/archaudit.log {_rel(state.directory / "logs")}/kube-scheduler.log

  make demo        # again: reuses what runs
  make demo-down   # stops everything and removes {_rel(state.directory)}/
"""


# --- down / status ------------------------------------------------------------------------------------


def _signal_group(p: Process, sig: signal.Signals) -> None:
    if alive(p):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)  # each process leads its own group (start_new_session)


# Clients before servers: kube-apiserver lingers for half a minute in shutdown when etcd goes first.
STOP_ORDER = (
    ("docker-registry", "kwok", "kube-scheduler", "kube-controller-manager"),
    ("kube-apiserver",),
    ("etcd",),
)


def _all_gone(group: Sequence[Process]) -> bool:
    return not any(alive(p) for p in group)


def _stop(processes: dict[str, Process]) -> None:
    """SIGTERM, wait with a deadline, SIGKILL what is left; one stage of STOP_ORDER at a time."""
    later = {n for stage in STOP_ORDER for n in stage}
    stages = [*STOP_ORDER, tuple(n for n in processes if n not in later)]  # archaudit & co.: first
    for stage in [stages[-1], *stages[:-1]]:
        group = [processes[n] for n in stage if n in processes and alive(processes[n])]
        for p in group:
            _signal_group(p, signal.SIGTERM)
        try:
            wait_until(functools.partial(_all_gone, group), timeout=STOP_SECONDS, what=f"{stage} to exit")
        except TimeoutError:
            for p in group:
                _signal_group(p, signal.SIGKILL)
            wait_until(functools.partial(_all_gone, group), timeout=10, what=f"{stage} to die")


def down(directory: Path = DEMO_DIR, *, quiet: bool = False) -> None:
    """Stop every process the demo started (only those: checked by pid and program) and remove its dir."""
    state = DemoState.load(directory)
    if state is not None:
        running = {n: p for n, p in state.processes.items() if alive(p)}
        _stop(running)
        if not quiet and running:
            print(f"stopped {', '.join(running)}")
    if directory.exists():
        shutil.rmtree(directory)
        if not quiet:
            print(f"removed {_rel(directory)}/")
    elif not quiet and state is None:
        print("no demo is running")


def status(directory: Path = DEMO_DIR) -> int:
    state = DemoState.load(directory)
    if state is None:
        print("no demo is running (make demo starts one)")
        return 1
    for name, p in state.processes.items():
        print(f"  {name:24} pid {p.pid:<8} {'running' if alive(p) else 'DEAD'}")
    ready = _apiserver_ready(state)
    print(f"  apiserver {state.server}: {'ready' if ready else 'NOT READY'}")
    print(f"  registry  http://{state.registry}: {'answers' if _registry_answers(state) else 'NO ANSWER'}")
    print(f"  env       source {_rel(directory / 'env')}")
    return 0 if ready and not state.dead() else 1


def _registry_answers(state: DemoState) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{state.registry}/v2/", timeout=5) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def main(argv: Sequence[str] | None = None, directory: Path = DEMO_DIR) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "up"
    started = time.monotonic()
    if command == "up":
        up(directory)
        print(f"(ready in {time.monotonic() - started:.0f} s)")
        return 0
    if command == "down":
        down(directory)
        return 0
    if command == "status":
        return status(directory)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
