"""A real Kubernetes control plane on loopback, with fake mixed-architecture nodes, for e2e tests and demo.

Why: admission webhooks, RBAC, scheduling on taints/selectors and garbage collection only behave like a
cluster when a real kube-apiserver, kube-scheduler and kube-controller-manager run them. There is no
Docker here, so this is envtest's recipe plus kwok: the Go-built binaries (hack/build-cluster-bins.sh)
run as plain processes on free 127.0.0.1 ports, and kwok plays the kubelet of Node objects we create
with the architectures, taints and container runtimes a mixed cluster has.

Every process goes through `tests.harness.procs.Service` (own log file, own process group), so `stop()`
— also called when `start()` fails half-way — leaves nothing running.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.certs import KeyPair, TestCA, rsa_keypair
from tests.harness.procs import Service, free_port, wait_until

__all__ = [
    "FAKE_NODES",
    "KWOK_ANNOTATION",
    "Cluster",
    "FakeNode",
    "KubectlError",
    "MissingBinariesError",
    "find_bin_dir",
]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-cluster-bins.sh"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"  # apart from the service range, so pod IPs kwok hands out never clash
NODE_LEASE_SECONDS = 40  # what a kubelet uses (kwok renews a node Lease this long)

# On 2 busy cores a cold kube-apiserver needs up to a minute to install its post-start hooks.
APISERVER_READY_SECONDS = 120.0
COMPONENT_READY_SECONDS = 90.0
NODES_READY_SECONDS = 90.0


class MissingBinariesError(RuntimeError):
    """The control-plane binaries are not there and could not be built."""


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr (CalledProcessError's does not)."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip() or stdout.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class FakeNode:
    """One kwok-managed node as a mixed-architecture cluster has them."""

    name: str
    arch: str
    address: str = ""  # InternalIP; FAKE_NODES use TEST-NET-1 (192.0.2.0/24), never routed
    runtime: str = "containerd://2.1.4"
    os: str = "linux"
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    unschedulable: bool = False
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"

    def manifest(self, kubelet_version: str) -> dict[str, Any]:
        labels = {
            "kubernetes.io/arch": self.arch,
            "kubernetes.io/os": self.os,
            "kubernetes.io/hostname": self.name,
            "type": "kwok",
            **self.labels,
        }
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        spec: dict[str, Any] = {"taints": [dict(t) for t in self.taints]}
        if self.unschedulable:
            spec["unschedulable"] = True
        # Node create keeps status (unlike most kinds), so the node is born with the facts a kubelet
        # would report; kwok's node-initialize stage keeps what is set and only adds conditions.
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            },
            "spec": spec,
            "status": {
                "addresses": [
                    *([{"type": "InternalIP", "address": self.address}] if self.address else []),
                    {"type": "Hostname", "address": self.name},
                ],
                "allocatable": resources,
                "capacity": resources,
                "nodeInfo": {
                    "architecture": self.arch,
                    "operatingSystem": self.os,
                    "containerRuntimeVersion": self.runtime,
                    "kubeletVersion": kubelet_version,
                    "kubeProxyVersion": kubelet_version,
                    "kernelVersion": "6.12.0-kwok",
                    "osImage": "kwok fake node",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                },
            },
        }


ARM64_TAINT = {
    "key": "kubernetes.io/arch",
    "value": "arm64",
    "effect": "NoSchedule",
}  # as GKE taints Arm nodes

FAKE_NODES: tuple[FakeNode, ...] = (
    FakeNode("amd64-1", "amd64", "192.0.2.11"),
    FakeNode("amd64-2", "amd64", "192.0.2.12"),
    FakeNode("arm64-1", "arm64", "192.0.2.21"),
    FakeNode("arm64-tainted", "arm64", "192.0.2.22", taints=(ARM64_TAINT,)),
    # A Raspberry Pi 2/3 on 32-bit k3s: the old containerd that matches platforms loosely.
    FakeNode(
        "arm-1",
        "arm",
        "192.0.2.31",
        runtime="containerd://1.7.27-k3s1",
        labels={"archaudit.io/variant": "v7"},
        cpu="4",
        memory="1Gi",
    ),
    FakeNode("cordoned-1", "amd64", "192.0.2.13", unschedulable=True),
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def find_bin_dir() -> Path:
    """The directory with the pinned binaries: $ARCHAUDIT_BIN_DIR, else what the build script prints.

    The script is idempotent and answers in well under a second when everything is cached.
    """
    env = os.environ.get("ARCHAUDIT_BIN_DIR")
    if env:
        bin_dir = Path(env)
    else:
        try:
            out = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise MissingBinariesError(f"{BUILD_SCRIPT} failed ({e}); see its log above") from e
        lines = out.stdout.strip().splitlines()
        if not lines:
            raise MissingBinariesError(f"{BUILD_SCRIPT} printed no directory")
        bin_dir = Path(lines[-1])
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise MissingBinariesError(f"{bin_dir} lacks {', '.join(missing)}: run `make bins`")
    if not (bin_dir / "kwok-stages.yaml").is_file():
        raise MissingBinariesError(f"{bin_dir}/kwok-stages.yaml is missing: run `make bins`")
    return bin_dir


def _kubeconfig(server: str, ca: Path, client: KeyPair, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "archaudit", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [
            {"name": user, "user": {"client-certificate": str(client.cert), "client-key": str(client.key)}}
        ],
        "contexts": [{"name": "archaudit", "context": {"cluster": "archaudit", "user": user}}],
        "current-context": "archaudit",
    }


@dataclass(frozen=True)
class _Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> _Ports:
        # free_port() twice in a row may hand out the same port: insist on distinct ones
        ports: list[int] = []
        while len(ports) < len(dataclasses.fields(cls)):
            if (port := free_port()) not in ports:
                ports.append(port)
        return cls(*ports)


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, and the fake nodes.

    `with Cluster() as c:` or `c.start()` / `c.stop()`. `work_dir` (a temp dir by default, removed on
    stop) holds certificates, kubeconfigs and etcd's data; `log_dir` (inside it by default) one log per
    process; `kubeconfig` (in work_dir by default) the admin kubeconfig. `detach()` hands the processes
    over to whoever keeps the returned pids (the demo).
    """

    def __init__(
        self,
        *,
        work_dir: Path | None = None,
        log_dir: Path | None = None,
        bin_dir: Path | None = None,
        nodes: Sequence[FakeNode] = FAKE_NODES,
        kubeconfig: Path | None = None,
    ) -> None:
        self._own_work_dir = work_dir is None
        self.work_dir = (
            work_dir if work_dir is not None else Path(tempfile.mkdtemp(prefix="archaudit-cluster-"))
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir if log_dir is not None else self.work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._bin_dir = bin_dir
        self.nodes = tuple(nodes)
        self.ports = _Ports.pick()
        self.services: list[Service] = []
        self.kubeconfig = kubeconfig if kubeconfig is not None else self.work_dir / "kubeconfig"
        self.server = f"https://127.0.0.1:{self.ports.apiserver}"
        self._pki = self.work_dir / "pki"
        self._ca: TestCA | None = None
        self._admin_pair: KeyPair | None = None
        self._api_client: Any = None
        self._detached = False
        self._failed = False  # a failed start keeps its logs for the error report

    # --- public surface -------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    @property
    def ca_pem(self) -> bytes:
        if self._ca is None:
            raise RuntimeError("cluster not started")
        return self._ca.pem

    @property
    def ca_path(self) -> Path:
        if self._ca is None:
            raise RuntimeError("cluster not started")
        return self._ca.cert_path

    @property
    def admin(self) -> Any:
        """A `kubernetes.client.ApiClient` authenticated as a cluster admin (system:masters)."""
        if self._api_client is None:
            from kubernetes import config  # imported late: only the e2e side needs the client

            self._api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
        return self._api_client

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as admin; raise KubectlError on failure if `check`."""
        argv = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise KubectlError(args, done.returncode, done.stdout, done.stderr)
        return done

    def get(self, path: str, *, pair: KeyPair | None = None, timeout: float = 10.0) -> Any:
        """GET an apiserver path as admin (or as `pair`), parsed JSON."""
        with self._open(self.server + path, pair=pair, timeout=timeout) as resp:
            return json.loads(resp.read())

    def text(self, path: str, *, timeout: float = 10.0) -> str:
        """GET an apiserver path as admin, as text (`/metrics`)."""
        with self._open(self.server + path, timeout=timeout) as resp:
            return str(resp.read().decode())

    def issue_client_cert(self, user: str, groups: Sequence[str] = ()) -> KeyPair:
        """A client certificate the apiserver authenticates as `user` in `groups` (one O per group)."""
        if self._ca is None:
            raise RuntimeError("cluster not started")
        # TestCA takes a single organisation; more groups are not needed by any test yet.
        org = groups[0] if groups else None
        return self._ca.issue(user, org=org, client=True, server=False)

    def pids(self) -> dict[str, int]:
        return {s.name: s.proc.pid for s in self.services if s.proc is not None}

    def tails(self, lines: int = 40) -> str:
        """The last lines of every component's log, for a failing test's report."""
        return "\n".join(s.tail(lines) for s in self.services)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Cluster:
        try:
            self._write_pki_and_kubeconfigs()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._create_nodes()
        except BaseException:
            self._failed = True
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (newest first) and drop the work dir if we made it. Safe to call twice."""
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None
        if not self._detached:
            for svc in reversed(self.services):
                svc.stop()
        if self._own_work_dir and not self._detached and not self._failed:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def service(self, name: str) -> Service:
        """The running component called `name` (etcd, kube-apiserver, kwok, ...)."""
        found = [s for s in self.services if s.name == name]
        if not found:
            raise KeyError(f"no component {name!r} in this cluster")
        return found[0]

    def kill_apiserver(self) -> None:
        """SIGKILL kube-apiserver: its clients' connections drop, nothing is announced (a k3s restart).

        etcd keeps running with all the data, so `start_apiserver_again()` brings the same cluster back.
        """
        self.service("kube-apiserver").kill()

    def start_apiserver_again(self, *, timeout: float = APISERVER_READY_SECONDS) -> float:
        """Start the killed kube-apiserver on the same port, certificates and etcd; wait for /readyz.

        Returns `time.monotonic()` of the moment /readyz answered 200: the "apiserver is back" instant
        recovery times are measured from.
        """
        svc = self.service("kube-apiserver")
        if svc.alive():
            raise RuntimeError("kube-apiserver is running; kill_apiserver() first")
        svc.start()
        wait_until(lambda: self._ok("/readyz"), timeout=timeout, what="kube-apiserver /readyz", service=svc)
        return time.monotonic()

    def restart_controllers(self, *, timeout: float = COMPONENT_READY_SECONDS) -> None:
        """Stop and start kube-controller-manager, kube-scheduler and kwok, and wait for their healthz.

        After kube-apiserver restarts twice within two minutes (two fault cases in a row), their
        client-go reflectors have backed off as far as 30 s (doubled by jitter) on the 403s a restarting
        apiserver answers, and keep those steps: new namespaces wait a minute for a ServiceAccount.
        Fresh processes list and watch at once, as after a reboot.
        """
        urls = {
            "kube-controller-manager": f"https://127.0.0.1:{self.ports.controller_manager}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{self.ports.scheduler}/healthz",
            "kwok": f"http://127.0.0.1:{self.ports.kwok}/healthz",
        }
        for name in urls:
            self.service(name).stop()
        for name, url in urls.items():
            svc = self.service(name).start()
            wait_until(
                functools.partial(self._url_ok, url), timeout=timeout, what=f"{name} {url}", service=svc
            )

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd}"

    def etcd(self, call: str, body: Mapping[str, Any]) -> Any:
        """One call of etcd's v3 API through its JSON gateway on the client URL (`kv/put`, `kv/range`,
        `kv/compaction`, ...): what etcdctl does, without building etcdctl. Keys and values are base64,
        int64 fields decimal strings, as the gateway's JSON mapping of the protobuf says."""
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/{call}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with self._open_request(request, timeout=30.0) as resp:
            return json.loads(resp.read())

    def etcd_revision(self) -> int:
        """etcd's current revision (what the next compaction can go up to)."""
        return int(self.etcd("kv/range", {"key": _b64("/")})["header"]["revision"])

    def compact_etcd(self, revision: int) -> None:
        """Compact etcd's history up to `revision`, physically: a watch or read from before it gets
        `410 Gone` from kube-apiserver (etcd: "required revision has been compacted")."""
        self.etcd("kv/compaction", {"revision": str(revision), "physical": True})

    def etcd_writes(self, key: str, *, since: int) -> list[tuple[int, bytes]]:
        """The writes of `key` after revision `since` (not compacted away), oldest first: (revision, value).

        Walks back from the newest value through each previous one (a range read at the revision just
        before a write gives the value it replaced). A deletion ends the walk.
        """
        writes: list[tuple[int, bytes]] = []
        at: int | None = None
        while True:
            body: dict[str, Any] = {"key": _b64(key)}
            if at is not None:
                body["revision"] = str(at)
            kvs = self.etcd("kv/range", body).get("kvs") or []
            if not kvs:
                break
            modified = int(kvs[0]["mod_revision"])
            if modified <= since:
                break
            writes.append((modified, base64.b64decode(kvs[0].get("value", ""))))
            at = modified - 1
        return writes[::-1]

    def detach(self) -> dict[str, int]:
        """Leave the processes running after this Python process exits; return their pids by name."""
        self._detached = True
        return self.pids()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- steps ----------------------------------------------------------------------------------

    def _write_pki_and_kubeconfigs(self) -> None:
        self._ca = ca = TestCA(self._pki, name="cluster-ca")
        self._serving = ca.issue("kube-apiserver", dns=("localhost", "kubernetes", "kubernetes.default.svc"))
        self._kcm_serving = ca.issue("kube-controller-manager-serving")
        self._scheduler_serving = ca.issue("kube-scheduler-serving")
        self._sa = rsa_keypair(self._pki, "service-account")
        # The aggregation layer's front-proxy identity: without a requestheader CA every component that
        # delegates authentication logs an error each second; aggregated APIs need it anyway.
        self._front_proxy = ca.issue("front-proxy-client", client=True, server=False)
        self._admin_pair = self.issue_client_cert("admin", ["system:masters"])
        # Component identities as kubeadm names them, so the bootstrap RBAC roles apply to them.
        # kwok plays every kubelet and patches status of nodes and pods: an admin identity.
        clients = {
            "kube-controller-manager": self.issue_client_cert("system:kube-controller-manager"),
            "kube-scheduler": self.issue_client_cert("system:kube-scheduler"),
            "kwok": self.issue_client_cert("kwok", ["system:masters"]),
        }
        self._component_kubeconfigs: dict[str, Path] = {}
        for name, pair in clients.items():
            path = self.work_dir / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(_kubeconfig(self.server, ca.cert_path, pair, name)))
            self._component_kubeconfigs[name] = path
        self.kubeconfig.write_text(
            yaml.safe_dump(_kubeconfig(self.server, ca.cert_path, self._admin_pair, "admin"))
        )

    def _service(self, name: str, argv: Sequence[str]) -> Service:
        svc = Service(name, [str(self.bin_dir / argv[0]), *argv[1:]], self.log_dir)
        self.services.append(svc)
        return svc.start()

    def _start_etcd(self) -> None:
        p = self.ports
        client, peer = f"http://127.0.0.1:{p.etcd}", f"http://127.0.0.1:{p.etcd_peer}"
        svc = self._service(
            "etcd",
            [
                "etcd",
                "--name=default",
                f"--data-dir={self.work_dir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",  # throwaway data; fsync dominates start-up on a busy disk
                "--log-level=warn",
            ],
        )
        wait_until(
            lambda: self._plain_json(f"{client}/health").get("health") == "true",
            timeout=COMPONENT_READY_SECONDS,
            what="etcd /health",
            service=svc,
        )

    def _start_apiserver(self) -> None:
        pki = self._pki
        assert self._ca is not None
        svc = self._service(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self._ca.cert_path}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={self._sa.cert}",
                f"--service-account-signing-key-file={self._sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",  # no kubernetes Endpoints to keep for a loopback IP
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={self._ca.cert_path}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self._front_proxy.cert}",
                f"--proxy-client-key-file={self._front_proxy.key}",
                # default admission chain kept on purpose: it holds the webhook plugins and PodSecurity
            ],
        )
        wait_until(
            lambda: self._ok("/readyz"),
            timeout=APISERVER_READY_SECONDS,
            what="kube-apiserver /readyz",
            service=svc,
        )

    def _start_controllers(self) -> None:
        assert self._ca is not None
        kcm_kc = self._component_kubeconfigs["kube-controller-manager"]
        kcm = self._service(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.controller_manager}",
                f"--tls-cert-file={self._kcm_serving.cert}",
                f"--tls-private-key-file={self._kcm_serving.key}",
                "--leader-elect=false",
                "--controllers=*",
                # Each controller acts as its own service account, as kubeadm sets it up: RBAC
                # problems show up here the way they would in a real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self._sa.key}",
                f"--root-ca-file={self._ca.cert_path}",
                f"--cluster-signing-cert-file={self._ca.cert_path}",
                f"--cluster-signing-key-file={self._ca.key_path}",
            ],
        )
        sched_kc = self._component_kubeconfigs["kube-scheduler"]
        sched = self._service(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.scheduler}",
                f"--tls-cert-file={self._scheduler_serving.cert}",
                f"--tls-private-key-file={self._scheduler_serving.key}",
                "--leader-elect=false",
            ],
        )
        kwok = self._service(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={self._component_kubeconfigs['kwok']}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
                f"--cidr={POD_CIDR}",
                # A Lease per node renewed as kubelets do. Without it (kwok's default) the node
                # lifecycle controller sees every node miss its grace period between kwok's rare status
                # heartbeats: nodes flap to Unknown and back, and their pods with them.
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
            ],
        )
        for svc, url in (
            (kcm, f"https://127.0.0.1:{self.ports.controller_manager}/healthz"),
            (sched, f"https://127.0.0.1:{self.ports.scheduler}/healthz"),
            (kwok, f"http://127.0.0.1:{self.ports.kwok}/healthz"),
        ):
            wait_until(
                functools.partial(self._url_ok, url),
                timeout=COMPONENT_READY_SECONDS,
                what=f"{svc.name} {url}",
                service=svc,
            )

    def _create_nodes(self) -> None:
        if not self.nodes:
            return
        version = str(self.get("/version")["gitVersion"])
        for node in self.nodes:
            self.kubectl("create", "-f", "-", input=json.dumps(node.manifest(version)))
        kwok = next(s for s in self.services if s.name == "kwok")
        wait_until(
            self._nodes_settled,
            timeout=NODES_READY_SECONDS,
            what=f"nodes {', '.join(n.name for n in self.nodes)} Ready without not-ready taints",
            service=kwok,
        )
        # Pods need the namespace's default ServiceAccount (ServiceAccount admission); the controller
        # manager creates it shortly after start.
        wait_until(
            lambda: self._ok("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=COMPONENT_READY_SECONDS,
            what="default ServiceAccount in namespace default",
        )

    def _nodes_settled(self) -> bool:
        """Every fake node Ready, and the node lifecycle controller's start-up taints gone."""
        items = {n["metadata"]["name"]: n for n in self.get("/api/v1/nodes")["items"]}
        for want in self.nodes:
            node = items.get(want.name)
            if node is None:
                return False
            ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                return False
            extra = [t for t in node["spec"].get("taints", []) if t["key"].startswith("node.kubernetes.io/")]
            # cordoned nodes keep node.kubernetes.io/unschedulable: that one is expected
            if any(t["key"] != "node.kubernetes.io/unschedulable" for t in extra):
                return False
        return True

    # --- HTTP to the components -----------------------------------------------------------------

    def _ssl_context(self, pair: KeyPair | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        pair = pair or self._admin_pair
        if pair is not None:
            ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    @contextlib.contextmanager
    def _open(self, url: str, *, pair: KeyPair | None = None, timeout: float = 10.0) -> Iterator[Any]:
        # An explicit empty ProxyHandler: loopback must never go through an HTTP(S)_PROXY from the env.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context(pair)))
        opener = urllib.request.build_opener(*handlers)
        with opener.open(url, timeout=timeout) as resp:
            yield resp

    @contextlib.contextmanager
    def _open_request(self, request: urllib.request.Request, *, timeout: float) -> Iterator[Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as resp:
            yield resp

    def _plain_json(self, url: str) -> Any:
        with self._open(url, timeout=5.0) as resp:
            return json.loads(resp.read())

    def _url_ok(self, url: str) -> bool:
        with self._open(url, timeout=5.0) as resp:
            return bool(resp.status == 200)

    def _ok(self, path: str) -> bool:
        return self._url_ok(self.server + path)
